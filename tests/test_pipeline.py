"""The whole suite end to end on a tiny generated dataset: local folders and a real S3 server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig
from sklearn.metrics import f1_score

from bench.heldout import eval_persons
from bench.heldout import main as heldout_main
from pipeline.commands.launch import main as launch_main
from pipeline.commands.results import main as results_main
from pipeline.core.config import model_specs
from pipeline.core.errors import DataError, StageFailed
from pipeline.ml.ensemble import candidate_probs, candidate_specs
from pipeline.orchestration.checks import config_problems
from pipeline.orchestration.local import run_local
from pipeline.run.answers import SCHEMA as ANSWERS_SCHEMA
from pipeline.run.results import CandidateScore, EnsembleScores, Scores, TaskScores, VoteResult
from pipeline.run.state import read_index, root_store, run_store
from pipeline.stages.train import train_model
from pipeline.stages.vote import vote
from pipeline.storage.store import Store, open_store
from tests.seaweed import upload_tree

MakeCfg = Callable[..., DictConfig]
REPO = Path(__file__).resolve().parents[1]


def check_run_outputs(run: Store, data_info: pd.DataFrame) -> dict:
    """Assert the run layout of a finished single-model run and return vote.json."""
    keys = set(run.list())
    expected = ["manifest.json", "index.parquet", "bad_inputs.csv", "submission.csv", "vote.json",
                "models/single/checkpoint.safetensors", "models/single/metrics.json"]  # fmt: skip
    for kind in ("models/single", "candidates/single", "vote"):
        expected += [f"predictions/{kind}/val.parquet", f"predictions/{kind}/eval.parquet"]
    for key in expected:
        assert key in keys, key
    submission = pd.read_csv(io.BytesIO(run.read_bytes("submission.csv")))
    assert list(submission.columns) == ["ImageID", "ans"]
    assert submission["ImageID"].tolist() == data_info["ImageID"].tolist()
    assert submission["ans"].between(0, 17).all()
    preds = pd.read_parquet(io.BytesIO(run.read_bytes("predictions/models/single/eval.parquet")))
    assert list(preds.columns) == ANSWERS_SCHEMA.names
    assert set(preds["kind"]) == {"model"} and set(preds["name"]) == {"single"}
    assert set(preds["split"]) == {"eval"} and set(preds["task"]) == {"all"}
    probs = np.stack(preds["probs"].to_numpy())
    assert probs.shape == (len(data_info), 18)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    assert (probs.argmax(axis=1) == preds["class"].to_numpy()).all()
    assert (preds["class"] == preds["mask"] * 6 + preds["gender"] * 3 + preds["age_group"]).all()
    voted = pd.read_parquet(io.BytesIO(run.read_bytes("predictions/vote/eval.parquet")))
    assert voted["image_id"].tolist() == submission["ImageID"].tolist()
    assert voted["class"].tolist() == submission["ans"].tolist()
    result = json.loads(run.read_bytes("vote.json"))
    assert result["members"] == ["single"]
    assert result["candidates"][0]["name"] == "single"
    assert 0.0 <= result["ensemble"]["val_macro_f1"] <= 1.0
    assert "eval" in result  # the generated data ships ground truth
    assert_vote_keys(result)
    return result


def assert_vote_keys(result: dict) -> None:
    """vote.json holds exactly the keys of its typed records (pipeline/run/results.py); with eval
    ground truth every optional key is there too. (`__annotations__`, not `__required_keys__`:
    Python 3.11 misreads NotRequired under `from __future__ import annotations`.)"""

    def same(record: dict, typed: type) -> None:
        assert set(record) == set(typed.__annotations__), (typed.__name__, sorted(record))

    same(result, VoteResult)
    same(result["ensemble"], EnsembleScores)
    for scores in (result["ensemble"]["val"], result["eval"]):
        same(scores, Scores)
        for task in scores["tasks"].values():
            same(task, TaskScores)
    for candidate in result["candidates"]:
        same(candidate, CandidateScore)
        for task in candidate["val_tasks"].values():
            same(task, TaskScores)


@pytest.mark.slow
@pytest.mark.v100
def test_launch_local_end_to_end_then_rerun_is_a_no_op(
    tiny_dataset: Path, make_cfg: MakeCfg, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_cfg(tiny_dataset)
    overrides = [f"data.root={tiny_dataset}", f"store.root={cfg.store.root}",
                 "train.epochs=1", "train.image_size=[32,24]", "train.num_threads=2",
                 "tracking.mode=disabled"]  # fmt: skip
    assert launch_main(["--cluster", "local", *overrides]) == 0
    out = capsys.readouterr().out
    run_id = out.split()[1]
    assert "submission: " in out and "val macro F1" in out
    store = open_store(str(cfg.store.root))
    assert json.loads(store.read_bytes("latest.json"))["run_id"] == run_id
    run = store.child(f"runs/{run_id}")
    info = pd.read_csv(tiny_dataset / "eval" / "info.csv")
    check_run_outputs(run, info)
    metrics = json.loads(run.read_bytes("models/single/metrics.json"))
    assert metrics["epochs_trained"] == 1 and len(metrics["val"]["confusion"]) == 18

    # Re-running the same run redoes nothing: every stage marker stays as it was.
    markers = {k: run.read_bytes(k) for k in run.list("stages")}
    assert set(markers) == {f"stages/{s}.json" for s in
                            ("prepare", "train-single", "predict-single", "vote",
                             "publish")}  # fmt: skip
    assert launch_main([*overrides, f"run_id={run_id}"]) == 0
    assert {k: run.read_bytes(k) for k in run.list("stages")} == markers


@pytest.mark.slow
@pytest.mark.s3
def test_launch_with_data_and_store_on_s3(
    tiny_dataset: Path, make_cfg: MakeCfg, s3_root: str
) -> None:
    upload_tree(tiny_dataset, f"{s3_root}/data")
    cfg = make_cfg(f"{s3_root}/data", store=f"{s3_root}/store")
    run_local(cfg)
    run = run_store(cfg)
    assert run.uri.startswith("s3://")
    check_run_outputs(run, pd.read_csv(tiny_dataset / "eval" / "info.csv"))
    assert json.loads(root_store(cfg).read_bytes("latest.json"))["run_id"] == cfg.run_id


@pytest.mark.slow
@pytest.mark.v100
def test_training_resumes_after_the_last_finished_epoch(
    tiny_dataset: Path, make_cfg: MakeCfg
) -> None:
    cfg = make_cfg(tiny_dataset, "run_id=resume", "train.epochs=1")
    run_local(cfg)
    run = run_store(cfg)
    first = json.loads(run.read_bytes("models/single/metrics.json"))["history"]
    # as if the job had been stopped after epoch 1 of 2: drop the completion marker, ask for 2
    run.delete("stages/train-single.json")
    cfg.train.epochs = 2
    history = train_model(cfg, "single")["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first[0]  # epoch 1 was not trained again


@pytest.mark.slow
def test_a_missing_eval_image_stops_the_run_at_prepare(
    dataset_copy: Path, make_cfg: MakeCfg
) -> None:
    info = pd.read_csv(dataset_copy / "eval" / "info.csv")
    missing = info["ImageID"][0]
    (dataset_copy / "eval" / "images" / missing).unlink()
    cfg = make_cfg(dataset_copy, "run_id=stopped")
    with pytest.raises(DataError, match=rf"1 of the {len(info)} eval images .*{missing}") as e:
        run_local(cfg)
    assert "data.allow_missing_eval=true" in str(e.value)
    run = run_store(cfg)
    assert not run.list("stages") and not run.exists("models/single/last.json")  # nothing trained
    assert missing in run.read_bytes("bad_inputs.csv").decode()  # and why, for the user


@pytest.mark.slow
def test_vote_refuses_a_short_submission(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    info = pd.read_csv(dataset_copy / "eval" / "info.csv")
    (dataset_copy / "eval" / "images" / info["ImageID"][0]).unlink()
    cfg = make_cfg(dataset_copy, "run_id=short", "data.allow_missing_eval=true")
    with pytest.raises(StageFailed, match=r"would lack 1 of \d+ rows of eval/info.csv"):
        run_local(cfg)
    store = root_store(cfg)
    assert not store.exists("latest.json")
    assert not run_store(cfg).exists("submission.csv")
    with pytest.raises(StageFailed):
        vote(cfg)


def run_job(module: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_job_entry_points_run_the_stages_in_turn(tiny_dataset: Path, tmp_path: Path) -> None:
    common = [f"data.root={tiny_dataset}", f"store.root={tmp_path / 'store'}", "run_id=jobs",
              "train.epochs=1", "train.image_size=[32,24]", "train.num_threads=2",
                 "tracking.mode=disabled"]  # fmt: skip
    for stage in ("prepare", "train", "predict", "vote"):
        done = run_job(f"jobs.{stage}", *common)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "run_id=jobs" in done.stdout
    assert (tmp_path / "store" / "runs" / "jobs" / "submission.csv").is_file()
    # jobs.vote also publishes: latest.json names the run and its marker ends the run
    assert json.loads((tmp_path / "store" / "latest.json").read_text())["run_id"] == "jobs"
    assert (tmp_path / "store" / "runs" / "jobs" / "stages" / "publish.json").is_file()
    # a run made stage by stage is fingerprinted like a launched one: the same launch skips
    launched = run_job("pipeline.launch", *[o for o in common if o != "run_id=jobs"])
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert launched.stdout.startswith("skipped: data and configuration unchanged since run jobs")


def test_job_errors_are_one_clear_line(tmp_path: Path) -> None:
    done = run_job("jobs.train", f"store.root={tmp_path}")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: run_id is required")
    done = run_job("jobs.prepare", f"data.root={tmp_path / 'nowhere'}", f"store.root={tmp_path}")
    assert done.returncode == 1
    assert "train/train.csv not found" in done.stderr
    done = run_job("jobs.prepare", "train.epochz=3")
    assert done.returncode == 1 and "train.epochz" in done.stderr


SEED_MODELS = {"single": 18, "mask": 3, "gender": 2, "age": 3, "gender_b": 2, "age_b": 3,
               "gender_c": 2, "age_c": 3, "age_masked": 3, "age_unmasked": 3, "single_lb": 18,
               "age_masked_focal": 3, "age_unmasked_focal": 3}  # fmt: skip
SEED_CANDIDATES = ["single", "per_task", "per_task_b", "per_task_c", "conditional", "single_lb",
                   "conditional_focal", "single_lb_conditional_focal"]  # fmt: skip


@pytest.mark.slow
def test_seed_suite_trains_every_model_and_votes_the_top_five(
    tiny_dataset: Path, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    cfg = make_cfg(tiny_dataset, "suite=seed", "run_id=seed", "train.augment.cutmix_vertical=0.5")
    result = run_local(cfg)
    run = run_store(cfg)
    info = pd.read_csv(tiny_dataset / "eval" / "info.csv")
    for model, classes in SEED_MODELS.items():
        for split in ("val", "eval"):
            preds = pd.read_parquet(
                io.BytesIO(run.read_bytes(f"predictions/models/{model}/{split}.parquet"))
            )
            assert np.stack(preds["probs"].to_numpy()).shape[1] == classes
            answered = {"all": ["class", "mask", "gender", "age_group"], "age": ["age_group"]}
            task = preds["task"].iloc[0]
            columns = answered.get(task, [task])
            for column in ("class", "mask", "gender", "age_group"):
                assert preds[column].notna().all() == (column in columns), (model, column)
        metrics = json.loads(run.read_bytes(f"models/{model}/metrics.json"))
        assert len(metrics["val"]["confusion"]) == classes
    names = [c["name"] for c in result["candidates"]]
    assert sorted(names) == sorted(SEED_CANDIDATES)
    scores = [c["val_macro_f1"] for c in result["candidates"]]
    assert scores == sorted(scores, reverse=True)
    # the top five are voted; the best alone is submitted only when it beats their vote on val
    assert result["voted"] == names[:5] and result["method"] == "hard_per_task"
    applied = result["fallback"]["applied"]
    assert result["members"] == (names[:1] if applied else names[:5]), result["fallback"]
    assert result["submitted"] == ("best_member" if applied else "vote")
    by_method = result["methods"]["hard_per_task"]["val"]
    assert (by_method["diff"] < 0) == applied  # fallback_margin 0: the vote must not trail on val
    # every method scored on val with a person-level interval and the paired difference
    assert set(result["methods"]) == {"hard", "hard_per_task", "soft"}
    for scored in [*(m["val"] for m in result["methods"].values()),
                   *(c["val_interval"] for c in result["candidates"])]:  # fmt: skip
        assert scored["low"] <= scored["macro_f1"] <= scored["high"]
        assert scored["diff_low"] <= scored["diff"] <= scored["diff_high"]
    assert result["candidates"][0]["val_interval"]["diff"] == 0.0
    assert result["interval"]["by"] == "person" and result["interval"]["reference"] == names[0]
    for name in names:
        candidate = json.loads(run.read_bytes(f"candidates/{name}/metrics.json"))
        assert len(candidate["confusion"]) == 18 and "tasks" in candidate
    submission = pd.read_csv(io.BytesIO(run.read_bytes("submission.csv")))
    assert submission["ImageID"].tolist() == info["ImageID"].tolist()

    # The hard vote again with top_k=3: the three best on val, each candidate's score recomputed
    # here from its val Parquet with scikit-learn, and the submission recomputed as a hard vote of
    # the members' eval Parquet (majority; a tie goes to the best-ranked member's class).
    run.delete("stages/vote.json")
    cfg.suite.vote.top_k, cfg.suite.vote.method, cfg.suite.vote.fallback_margin = 3, "hard", None
    again = vote(cfg)
    val = read_index(run).query("split == 'val'").set_index("image_id")["label"]

    def answers(name: str, split: str) -> pd.Series:
        key = f"predictions/candidates/{name}/{split}.parquet"
        frame = pd.read_parquet(io.BytesIO(run.read_bytes(key)))
        return frame.set_index("image_id")["class"]

    def score(name: str) -> tuple[float, float, str]:  # the tie rule: accuracy, then name
        pred = answers(name, "val").loc[val.index]
        return -f1_score(val, pred, average="macro"), -float((pred == val).mean()), name

    scores = {n: score(n) for n in names}
    ranked = sorted(names, key=scores.__getitem__)
    assert again["members"] == ranked[:3] != ranked[:5], scores
    eval_ids = info["ImageID"].tolist()
    ballots = [answers(m, "eval").loc[eval_ids].tolist() for m in again["members"]]
    expected = []
    for column in zip(*ballots, strict=True):
        counts = Counter(column)
        top = max(counts.values())
        expected.append(next(c for c in column if counts[c] == top))
    submission = pd.read_csv(io.BytesIO(run.read_bytes("submission.csv")))
    assert submission["ans"].tolist() == expected

    table = tmp_path / "results.md"
    assert results_main(["--run", "seed", "--out", str(table), f"store.root={cfg.store.root}"]) == 0
    text = table.read_text()
    for name in [*SEED_MODELS, *names]:
        assert f"| {name}" in text
    ens, held_out = again["ensemble"], again["eval"]
    ci = ens["val_interval"]
    assert (
        f"| vote | top-3 hard vote (submitted) | 18 classes | {ens['val_macro_f1']:.4f} "
        f"[{ci['low']:.3f}, {ci['high']:.3f}] | {ci['diff']:+.4f} [{ci['diff_low']:+.3f}, "
        f"{ci['diff_high']:+.3f}] | {ens['val_accuracy']:.4f} | {held_out['macro_f1']:.4f} | "
        f"{held_out['accuracy']:.4f} |"
    ) in text
    assert "| vote | top-3 hard_per_task vote |" in text and "| vote | top-3 soft vote |" in text
    truth = pd.read_csv(tiny_dataset / "eval" / "ground_truth.csv").set_index("ImageID")["ans"]
    # the per-task vote of the same members, recomputed from their eval answers
    per_task = []
    for column in zip(*ballots, strict=True):
        codes = [(c // 6, (c // 3) % 2, c % 3) for c in column]
        voted = []
        for t in range(3):
            counts = Counter(code[t] for code in codes)
            voted.append(next(code[t] for code in codes if counts[code[t]] == max(counts.values())))
        per_task.append(voted[0] * 6 + voted[1] * 3 + voted[2])
    assert again["methods"]["hard_per_task"]["eval_macro_f1"] == pytest.approx(
        f1_score(truth.loc[eval_ids], per_task, average="macro")
    )
    best = again["candidates"][0]
    pred = answers(best["name"], "eval").loc[truth.index]
    assert best["eval_macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert f"{best['eval_macro_f1']:.4f} |" in text

    # The soft vote of the same members: the class of highest mean 18-class probability, each
    # distribution rebuilt here from the members' models' eval Parquet; an unknown method refused.
    run.delete("stages/vote.json")
    cfg.suite.vote.method = "mean"  # refused at launch and job start, before the vote stage
    assert config_problems(cfg) == [
        "suite.vote.method='mean': must be one of hard, hard_per_task, soft"
    ]
    cfg.suite.vote.method = "soft"
    soft = vote(cfg)
    assert soft["method"] == "soft" and soft["members"] == again["members"]
    specs, tasks = candidate_specs(cfg), {n: str(s.task) for n, s in model_specs(cfg).items()}

    def model_probs(model: str) -> np.ndarray:
        key = f"predictions/models/{model}/eval.parquet"
        frame = pd.read_parquet(io.BytesIO(run.read_bytes(key)))
        return np.stack(frame.set_index("image_id").loc[eval_ids, "probs"].to_numpy())

    probs = {m: model_probs(m) for m in tasks}
    mean = np.mean([candidate_probs(specs[m], probs, tasks) for m in soft["members"]], axis=0)
    submission = pd.read_csv(io.BytesIO(run.read_bytes("submission.csv")))
    assert submission["ans"].tolist() == mean.argmax(axis=1).tolist()
    assert results_main(["--run", "seed", "--out", str(table), f"store.root={cfg.store.root}"]) == 0
    assert "| vote | top-3 soft vote (submitted) |" in table.read_text()

    # The held-out check of docs/models.md's results table (bench.heldout): eval scores by person,
    # read from the run's answers; the generator's plan names the 6 eval people of the 42 photos.
    out = tmp_path / "heldout.md"
    assert (
        heldout_main(["--run", str(tiny_dataset), str(cfg.store.root), "7", "--out", str(out)]) == 0
    )
    held = out.read_text()
    submitted = f1_score(truth.loc[eval_ids], submission["ans"], average="macro")
    assert f"| submitted (default) | {submitted:.4f} [" in held
    best_eval = soft["candidates"][0]["eval_macro_f1"]
    assert f"| best member ({soft['voted'][0]}) | {best_eval:.4f} [" in held
    assert len(set(eval_persons(tiny_dataset, 7, eval_ids).tolist())) == 6
    with pytest.raises(SystemExit, match="not the generator's"):
        eval_persons(tiny_dataset, 8, eval_ids)


@pytest.mark.slow
def test_training_is_tracked_offline_without_an_api_key(
    tiny_dataset: Path, make_cfg: MakeCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = make_cfg(tiny_dataset, "tracking.mode=auto", f"tracking.dir={tmp_path / 'wb'}")
    run_local(cfg)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
