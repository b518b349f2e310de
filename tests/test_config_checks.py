"""A mistake in the configuration is caught at launch, before any work: one line per problem
naming the key, exit 1, no traceback, no run folder, no job (the schema, pipeline/core/schema.py,
and the rules beside it, pipeline/orchestration/checks.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.commands.cli import run_job
from pipeline.commands.launch import main as launch_main
from pipeline.core.config import load_config
from pipeline.orchestration.checks import config_problems
from tests.test_slurm import slurm_cluster  # noqa: F401  (the fixture)

# (overrides, the key the message must name); at least one per config group
BAD = [
    (["train.epochs=abc"], "train.epochs"),
    (["train.epochs=-1"], "train.epochs"),
    (["train.epochs=0"], "train.epochs"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.batch_size=1"], "train.batch_size"),
    (["train.image_size=[64]"], "train.image_size"),
    (["train.image_size=[64,0]"], "train.image_size"),
    (["train.lr=0"], "train.lr"),
    (["train.lr=fast"], "train.lr"),
    (["train.weight_decay=-0.1"], "train.weight_decay"),
    (["train.scheduler=linear"], "train.scheduler"),
    (["train.center_crop=[0.5]"], "train.center_crop"),
    (["train.center_crop=[0,1]"], "train.center_crop"),
    (["train.loss.ce=-1"], "train.loss"),
    (["+train.loss.dice=1"], "train.loss"),
    (["train.loss.ce=0"], "train.loss"),
    (["train.label_smoothing=1"], "train.label_smoothing"),
    (["train.focal_gamma=-1"], "train.focal_gamma"),
    (["train.balanced_sampling=maybe"], "train.balanced_sampling"),
    (["train.drop_ages=[30,20]"], "train.drop_ages"),
    (["train.augment.color_jitter=2"], "train.augment.color_jitter"),
    (["train.augment.mixup_prob=-0.1"], "train.augment.mixup_prob"),
    (["train.early_stopping_patience=0"], "train.early_stopping_patience"),
    (["train.eval_batch_size=0"], "train.eval_batch_size"),
    (["train.device=tpu"], "train.device"),
    (["train.precision=fp8"], "train.precision"),
    (["train.precision=fp16", "train.device=cpu"], "train.precision"),
    (["train.num_threads=0"], "train.num_threads"),
    (["train.gpu_memory_budget=1.5"], "train.gpu_memory_budget"),
    (["train.compile=yes"], "train.compile"),
    (["model.arch=resnet99"], "model.arch"),
    (["model.task=colour"], "model.task"),
    (["model.mask_groups=[wear]"], "model.mask_groups"),
    (["model.freeze=3"], "model.freeze"),
    (["data.val_fraction=0.7"], "data.val_fraction"),
    (["data.val_fraction=0"], "data.val_fraction"),
    (["data.age_thresholds.young_below=70"], "data.age_thresholds"),
    (["data.max_bad_fraction=2"], "data.max_bad_fraction"),
    (["data.shard_mb=0"], "data.shard_mb"),
    (["store.workers=0"], "store.workers"),
    (["store.keep_checkpoints=0"], "store.keep_checkpoints"),
    (["tracking.mode=loud"], "tracking.mode"),
    (["seed=-3"], "seed"),
    (["model_name=nosuch"], "model_name"),
    (["suite.vote.top_k=0"], "suite.vote.top_k"),
    (["suite.vote.method=median"], "suite.vote.method"),
    (["suite=seed", "suite.candidates.per_task.mask=nosuch"], "per_task"),
    (["+suite.models.single.train.epochs=3"], "suite model 'single'"),
    (["+suite.models.single.train.lr=-1"], "suite.models.single.train.lr"),
    (["+suite.models.single.arch=resnet99"], "suite.models.single.arch"),
    (["slurm.container.runtime=docker"], "slurm.container.runtime"),
    (["k8s.poll_seconds=-1"], "k8s.poll_seconds"),
    (["+train.augment.blur=0.3"], "train.augment.blur=0.3: unknown key"),
    (["+model.pretrained=true"], "model.pretrained=true: unknown key"),
    (["+data.age_thresholds.middle=45"], "data.age_thresholds.middle"),
    (["k8s.backoff_limit=-2"], "k8s.backoff_limit"),
    # issue 24: frozen layers without pretrained weights would stay random
    (["model.freeze=[layer1,layer2]"], "model.freeze=['layer1', 'layer2'] with model.weights=null"),
    (["suite=seed", "+suite.models.single.freeze=[layer1]"], "suite.models.single.freeze"),
    (["train.augment.cutmix_cut_range=[0.5,0.2]"], "train.augment.cutmix_cut_range"),
    (
        [
            "suite=seed",
            "+suite.models.single_lb.train.augment.cutmix_cut_range=[0.1,0.2]",
            "+suite.models.single_lb.train.center_crop=[0.586,0.521]",
        ],
        "cut range lies above the crop",
    ),
]


@pytest.mark.parametrize(("overrides", "key"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_value_stops_the_launch_before_any_work(
    overrides: list[str], key: str, tiny_dataset: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    store = tmp_path / "store"
    code = launch_main([f"data.root={tiny_dataset}", f"store.root={store}", *overrides])
    out, err = capsys.readouterr()
    assert code == 1, out
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: the configuration has 1 problem"), err
    assert len(lines) == 2 and key in lines[1], err  # one line per problem, naming the key
    assert "Traceback" not in err and not store.exists()  # no run folder, nothing read


def test_every_problem_is_reported_at_once(tmp_path: Path, capsys) -> None:
    bad = ["train.epochs=abc", "train.batch_size=0", "model.arch=resnet99", "data.val_fraction=2"]
    code = launch_main([f"store.root={tmp_path / 'store'}", *bad])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: the configuration has 4 problems:")
    lines = err.strip().splitlines()[1:]
    assert [line.split("=")[0].strip() for line in lines] == [
        "data.val_fraction", "train.epochs", "train.batch_size", "model.arch",
    ]  # fmt: skip
    assert "train.epochs='abc': must be a whole number >= 1" in err
    assert "closest: resnet50" in err  # what is valid, without 80 names on one line


def test_the_packaged_configs_are_valid() -> None:
    for suite in ("single", "seed"):
        for extra in ([], ["slurm=local"]):
            assert config_problems(load_config([f"suite={suite}", *extra])) == []


def test_a_job_started_by_hand_checks_again(tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    code = run_job("prepare", [f"store.root={store}", "train.batch_size=1", "run_id=x"])
    err = capsys.readouterr().err
    assert code == 1 and "train.batch_size=1: must be a whole number >= 2" in err
    assert not store.exists()


def test_show_config_prints_what_a_run_would_use(tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    assert launch_main(["--show-config", f"store.root={store}", "train.epochs=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["epochs"] == 3 and shown["store"]["root"] == str(store)
    assert shown["suite"]["vote"]["method"] == "hard_per_task" and not store.exists()
    assert launch_main(["--show-config", "train.epochs=0"]) == 1
    assert "train.epochs=0: must be a whole number >= 1" in capsys.readouterr().err


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
@pytest.mark.parametrize("bad", ["train.epochs=abc", "model.arch=resnet99", "suite.vote.top_k=0"])
def test_no_slurm_job_is_submitted_for_a_bad_value(
    bad: str, tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
    def queued() -> int:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
        return len(out.stdout.split())

    before = queued()
    args = ["--cluster", "slurm", "slurm=local", f"slurm.folder={tmp_path / 'slurm'}",
            f"data.root={tiny_dataset}", f"store.root={tmp_path / 'store'}", bad]  # fmt: skip
    assert launch_main(args) == 1
    assert bad.split("=")[0] in capsys.readouterr().err
    assert queued() == before
    assert not (tmp_path / "slurm").exists() and not (tmp_path / "store").exists()
