"""The architecture the tree shows, kept by tests: one stage graph that every executor reads, one
frame around every stage, and no import cycle. (The layer contracts and the type check run in
`make lint`: `lint-imports` and `mypy`, configured in pyproject.toml.)

The stage functions are replaced by quick fakes here: what is tested is who runs which stage in
which order, not the training (the slow tests run the real stages through the same graph)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import grimp
import pytest
from omegaconf import DictConfig

from pipeline.core.config import load_config
from pipeline.core.errors import DataError, StoreError
from pipeline.orchestration import graph, k8s, local, status
from pipeline.orchestration.graph import KINDS, Stage, job_groups, job_stages, suite_graph
from pipeline.orchestration.slurm import StageJob
from pipeline.run import history
from pipeline.run.state import (
    finish_manifest,
    read_stage_state,
    run_stage,
    run_store,
    stage_done,
    write_manifest,
)
from pipeline.stages import publish as publish_stage
from pipeline.storage.run_layout import VOTE_KEY
from pipeline.storage.store import open_store

REPO = Path(__file__).resolve().parents[1]


def seed_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    return load_config(["suite=seed", f"store.root={tmp_path / 'store'}", "run_id=r1", *overrides])


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the four stage functions the graph calls with fakes that log their calls."""
    calls: list[str] = []

    def prepare(cfg: DictConfig) -> dict[str, Any]:
        calls.append("prepare")
        return {"images": {"train": 1}}

    def train_model(cfg: DictConfig, name: str) -> dict[str, Any]:
        calls.append(f"train-{name}")
        return {"val": {"macro_f1": 0.5}}

    def predict_model(cfg: DictConfig, name: str) -> dict[str, int]:
        calls.append(f"predict-{name}")
        return {"val": 1, "eval": 1}

    def vote(cfg: DictConfig) -> dict[str, Any]:
        calls.append("vote")
        ensemble = {"val_macro_f1": 0.5, "val_accuracy": 0.5}
        result = {"members": ["single"], "candidates": [], "ensemble": ensemble}
        run_store(cfg).write_json(VOTE_KEY, result)
        return result

    for name, fake in [("prepare", prepare), ("train_model", train_model),
                       ("predict_model", predict_model), ("vote", vote)]:  # fmt: skip
        monkeypatch.setattr(graph, name, fake)

    def publish_run(cfg: DictConfig) -> dict[str, Any]:
        calls.append("publish")
        return {"latest_moved": True}

    monkeypatch.setattr(graph, "publish_run", publish_run)
    return calls


def test_the_graph_is_prepare_then_train_and_predict_per_model_then_vote_then_publish(
    tmp_path: Path,
) -> None:
    cfg = seed_cfg(tmp_path)
    stages = suite_graph(cfg)
    models = list(cfg.suite.models)
    assert [s.name for s in stages] == [
        "prepare", *[f"{step}-{m}" for m in models for step in ("train", "predict")], "vote",
        "publish",
    ]  # fmt: skip
    done: set[str] = set()
    for stage in stages:  # an order that respects `needs`, and only known stages are needed
        assert set(stage.needs) <= done, stage
        done.add(stage.name)
    assert {s.kind for s in stages} == set(KINDS)
    assert next(s for s in stages if s.name == "vote").needs == tuple(
        f"predict-{m}" for m in models
    )
    publish = stages[-1]  # carried by the vote job, after the vote
    assert (publish.needs, publish.kind) == (("vote",), "vote")


def test_the_local_executor_runs_every_stage_of_the_graph_in_order(
    tmp_path: Path, fake_stages: list[str]
) -> None:
    cfg = seed_cfg(tmp_path)
    assert local.run_local(cfg)["members"] == ["single"]
    names = [s.name for s in suite_graph(cfg)]
    assert fake_stages == names and names[-2:] == ["vote", "publish"]
    run = run_store(cfg)
    assert all(stage_done(run, n) for n in names)
    marker = run.read_json("stages/train-single.json")
    assert marker["model"] == "single" and marker["val_macro_f1"] == 0.5
    assert run.read_json("stages/predict-single.json")["images"] == {"val": 1, "eval": 1}

    assert run.read_json("stages/publish.json")["latest_moved"] is True

    fake_stages.clear()  # again: every stage is done, nothing runs
    local.run_local(cfg)
    assert fake_stages == []


def test_slurm_jobs_kubernetes_jobs_job_entry_points_and_status_read_the_same_graph(
    tmp_path: Path, fake_stages: list[str]
) -> None:
    cfg = seed_cfg(tmp_path)
    stages = suite_graph(cfg)
    names = [s.name for s in stages]
    # Slurm: one StageJob per group of the graph; together they run each stage exactly once.
    slurm_jobs = [StageJob({}, kind, model) for kind in KINDS for model in job_groups(stages, kind)]
    assert [s.name for job in slurm_jobs for s in job.stages(cfg)] == names
    # Kubernetes: one Job per kind, in order, whose pod runs `python -m jobs.<kind>` ...
    on_s3 = ["store.root=s3://bucket/store", "data.root=s3://bucket/data"]
    jobs = k8s.render_jobs(load_config(["suite=seed", "run_id=r1", *on_s3]))
    commands = [j["spec"]["template"]["spec"]["containers"][0]["command"][:3] for j in jobs]
    assert commands == [["python", "-m", f"jobs.{kind}"] for kind in KINDS]
    assert jobs[1]["spec"]["completions"] == len(cfg.suite.models)  # the model kind, indexed
    # ... and `jobs.<kind>` runs that kind's stages (the model pod: its index's model).
    by_job = [s.name for s in job_stages(cfg, "prepare")]
    for index in range(len(cfg.suite.models)):
        pod_cfg = seed_cfg(tmp_path)
        graph_env = {"JOB_COMPLETION_INDEX": str(index)}
        pod_cfg.model_name = graph.indexed_model(pod_cfg, graph_env)
        by_job += [s.name for s in job_stages(pod_cfg, "model")]
    by_job += [s.name for s in job_stages(cfg, "vote")]
    assert by_job == names
    # Status lists the graph's stages with what each needs.
    write_manifest(cfg)
    shown = status.run_status(cfg)
    assert [s.stage for s in shown.stages] == names
    assert status.stage_plan(list(cfg.suite.models)) == [(s.name, list(s.needs)) for s in stages]


def test_a_stage_added_to_the_graph_is_run_and_shown_by_every_executor(
    tmp_path: Path, fake_stages: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding a stage is one entry in `stage_graph` (plus its function): nothing else changes."""
    original = graph.stage_graph

    def audit(cfg: DictConfig) -> dict[str, Any]:
        fake_stages.append("audit")
        return {"checked": True}

    def with_audit(models: Any) -> list[Stage]:
        return [*original(models), Stage("audit", ("vote",), audit, "vote", "audit")]

    monkeypatch.setattr(graph, "stage_graph", with_audit)
    cfg = seed_cfg(tmp_path, "suite=single")
    local.run_local(cfg)
    assert fake_stages[-2:] == ["publish", "audit"]
    write_manifest(cfg)  # (the fake prepare writes none)
    assert run_store(cfg).read_json("stages/audit.json")["checked"] is True
    assert [s.name for s in StageJob({}, "vote").stages(cfg)] == ["vote", "publish", "audit"]
    assert [s.name for s in job_stages(cfg, "vote")] == ["vote", "publish", "audit"]
    assert [s.stage for s in status.run_status(cfg).stages][-1] == "audit"


def test_a_run_shows_done_only_once_latest_json_names_it(
    tmp_path: Path, fake_stages: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`launch --wait` and `runs status` report a run done when its last stage is; publish (which
    moves latest.json) is that stage, so a reader who sees the run done finds latest.json moved.
    A publish that fails is shown as the run's failure, and the vote job's rerun publishes."""
    monkeypatch.setattr(graph, "publish_run", publish_stage.publish_run)  # the real one ...
    monkeypatch.setattr(publish_stage, "write_report", lambda *a: None)  # ... the vote is fake
    cfg = seed_cfg(tmp_path, "suite=single")
    write_manifest(cfg)
    run, root = run_store(cfg), open_store(str(cfg.store.root))
    stages = suite_graph(cfg)
    graph.run_stages(cfg, stages[:-1])  # a vote job stopped right after the vote's marker
    assert stage_done(run, "vote")
    assert status.run_status(cfg).state != "done" and history.read_latest(root) is None

    def unreachable(*args: Any) -> bool:
        raise StoreError("s3://runs/latest.json: connection reset")

    move_latest = history.move_latest
    monkeypatch.setattr(history, "move_latest", unreachable)
    with pytest.raises(StoreError):
        graph.run_job_stages(cfg, "vote")
    shown = status.run_status(cfg)
    assert shown.state == "failed" and shown.problem is not None
    assert "publish" in shown.problem and "connection reset" in shown.problem, shown.problem
    assert history.run_summary(root, "r1")["state"] == "failed"  # `runs list` agrees

    monkeypatch.setattr(history, "move_latest", move_latest)  # the store answers again
    fake_stages.clear()
    graph.run_job_stages(cfg, "vote")
    assert fake_stages == []  # the vote is not redone
    assert status.run_status(cfg).state == "done"
    assert history.read_latest(root)["run_id"] == "r1"  # type: ignore[index]
    assert run.read_json("manifest.json")["state"] == "succeeded"
    assert history.run_summary(root, "r1")["state"] == "published"  # the store's first run


def test_a_run_published_before_publish_was_a_stage_still_shows_done(
    tmp_path: Path, fake_stages: list[str]
) -> None:
    """Runs finished by an earlier version have no publish marker: the vote's follow-up recorded
    `succeeded` in the manifest, then moved latest.json. `runs status` shows them done."""
    cfg = seed_cfg(tmp_path, "suite=single")
    write_manifest(cfg)
    graph.run_stages(cfg, suite_graph(cfg)[:-1])
    assert status.run_status(cfg).state != "done"  # voted, not yet published
    finish_manifest(run_store(cfg), "succeeded")
    shown = status.run_status(cfg)
    assert shown.state == "done", shown
    assert (shown.stages[-1].stage, shown.stages[-1].detail) == (
        "publish",
        "recorded in manifest.json",
    )


def test_the_stage_frame_skips_done_stages_marks_them_last_and_records_failures(
    tmp_path: Path,
) -> None:
    run = run_store(seed_cfg(tmp_path))

    def broken() -> dict[str, Any]:
        raise DataError("shard train-00003 is truncated")

    with pytest.raises(DataError):
        run_stage(run, "train-x", broken, where={"job_id": "42"})
    record = read_stage_state(run, "train-x")
    assert record is not None and record["state"] == "failed" and record["job_id"] == "42"
    assert record["error"] == "DataError: shard train-00003 is truncated"
    assert not stage_done(run, "train-x")  # a failed stage has no marker

    with pytest.raises(DataError):  # a requeued Slurm job's exception is not a failure
        run_stage(run, "predict-x", broken, record_failure=lambda: False)
    assert read_stage_state(run, "predict-x")["state"] == "running"

    assert run_stage(run, "train-x", lambda: {"model": "x"})["model"] == "x"
    marker = run.read_json("stages/train-x.json")
    assert marker["state"] == "done" and marker["model"] == "x" and marker["seconds"] >= 0
    assert run_stage(run, "train-x", broken)["model"] == "x"  # done: not run again


def test_no_import_cycle_in_the_package() -> None:
    """Layers forbid upward imports between packages; this catches a cycle inside one too."""
    g = grimp.build_graph("pipeline")
    cycles = sorted(
        (a, b)
        for a in g.modules
        for b in g.find_modules_directly_imported_by(a)
        if a < b and g.chain_exists(importer=b, imported=a)
    )
    assert cycles == []


def test_the_layer_contracts_hold_and_catch_an_upward_import(tmp_path: Path) -> None:
    """`lint-imports` passes on the tree, and fails on a copy where the domain imports torch
    and a stage imports another stage: the contracts can fail."""
    lint = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    assert subprocess.run(lint, cwd=REPO, capture_output=True, text=True).returncode == 0
    copy = tmp_path / "repo"
    copy.mkdir()
    subprocess.run(["cp", "-r", str(REPO / "pipeline"), str(REPO / "pyproject.toml"), str(copy)],
                   check=True)  # fmt: skip
    labels = copy / "pipeline" / "domain" / "labels.py"
    labels.write_text(labels.read_text() + "\nimport torch  # noqa\n")
    vote = copy / "pipeline" / "stages" / "vote.py"
    vote.write_text(vote.read_text() + "\nfrom pipeline.stages import prepare  # noqa\n")
    broken = subprocess.run(lint, cwd=copy, capture_output=True, text=True,
                            env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert broken.returncode == 1, broken.stdout
    assert "pipeline.domain.labels -> torch" in broken.stdout
    assert "pipeline.stages.vote -> pipeline.stages.prepare" in broken.stdout


def test_only_the_checkpoints_module_calls_torch_load() -> None:
    """Loading an untrusted file is written once (pipeline/ml/checkpoints.py, weights_only)."""
    import ast

    callers = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "load"
                and isinstance(node.value, ast.Name)
                and node.value.id == "torch"
            ):
                callers.append(str(path.relative_to(REPO)))
    assert callers == ["pipeline/ml/checkpoints.py"]


DYNAMIC = ("importlib", "importlib.util")


def test_no_module_of_the_package_imports_by_name_at_run_time() -> None:
    """Executors are chosen in one plain registry (orchestration/executors.py): no dynamic import
    (`importlib.import_module`, `__import__`, `import importlib`) anywhere in pipeline/, which
    once hid an import cycle from the contracts. Reading packaged files or versions
    (`importlib.resources`, `importlib.metadata`) imports nothing and is fine."""
    offenders = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import) and any(a.name in DYNAMIC for a in node.names):
                offenders.append(f"{where}: import importlib")
            elif isinstance(node, ast.ImportFrom) and node.module in (
                "importlib",
                "importlib.util",
            ):
                offenders.append(f"{where}: from {node.module} import ...")
            elif isinstance(node, ast.Name | ast.Attribute) and "import_module" in (
                getattr(node, "id", None),
                getattr(node, "attr", None),
            ):
                offenders.append(f"{where}: import_module")
            elif isinstance(node, ast.Name) and node.id == "__import__":
                offenders.append(f"{where}: __import__")
    assert offenders == []


def test_every_executor_of_the_registry_has_the_whole_interface() -> None:
    from pipeline.orchestration.executor import Executor
    from pipeline.orchestration.executors import EXECUTORS

    methods = ("check", "launch", "active_run", "follow", "status", "cancel", "infer")
    assert set(EXECUTORS) == {"local", "slurm", "k8s"}
    for name, load in EXECUTORS.items():
        cls = load()
        assert cls.name == name
        for method in methods:
            assert callable(getattr(cls, method)), (name, method)
            assert method in Executor.__dict__
