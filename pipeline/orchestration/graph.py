"""The stage graph of a run, written once: which stages a suite has, what each needs, the function
that runs it and the cluster job that carries it.

    prepare ─▶ train-<model> ─▶ predict-<model> ─▶ vote ─▶ publish   (train/predict per model)

`publish` (the gate against the champion, latest.json, checkpoint retention, the manifest's final
state; pipeline/stages/publish.py) is a stage of its own,
carried by the vote job: a run is done when its marker is, so whoever sees the run done
(`launch --wait`, `runs status`) also sees latest.json moved.

Every executor reads the graph: the local one (pipeline/orchestration/local.py) runs the stages in
order; Slurm (slurm.py) submits one job per `kind` (an array for `model`), chained with afterok;
Kubernetes (k8s.py) creates one Job per kind (an Indexed Job for `model`); `runs status`
(status.py) shows the stages in this order with what each needs; a job started by hand
(`python -m jobs.<job>`) runs the stages of its job through `run_job`. Every stage runs in the
same frame (`run_stage` in pipeline/run/state.py): skipped when done, marked done last, its
failure recorded.

Adding a stage is one entry in `stage_graph` plus its function.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from pipeline.core.config import model_specs, selected_models
from pipeline.core.errors import ConfigError
from pipeline.run.notify import notify
from pipeline.run.state import one_line, run_stage, run_store
from pipeline.storage.run_layout import (
    PREPARE_STAGE,
    PUBLISH_STAGE,
    VOTE_STAGE,
    predict_stage,
    train_stage,
)

#: The cluster jobs, in the order they run: one `prepare`, one `model` per model, one `vote`.
KINDS = ("prepare", "model", "vote")
#: What `python -m jobs.<job>` runs: a kind, or one step of the model kind.
JOBS = ("prepare", "train", "predict", "model", "vote")


@dataclass(frozen=True)
class Stage:
    """One stage of a run.

    name:  its marker's name (stages/<name>.json), e.g. `train-single`;
    needs: the stages that must be done before it;
    run:   does the work for a config and returns what its done marker records;
    kind:  the cluster job that carries it (one of KINDS);
    step:  what it does (prepare, train, predict, vote, publish); `python -m jobs.<step>` runs it,
           and publish is run by `jobs.vote`, the job of its kind;
    model: the suite's model it is about, for train and predict.
    """

    name: str
    needs: tuple[str, ...]
    run: Callable[[DictConfig], dict[str, Any]]
    kind: str
    step: str
    model: str | None = None


# The stage functions, imported when a stage runs: a command that only reads the graph (--help,
# runs status) starts without torch, pandas and scikit-learn.


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """pipeline.stages.prepare.prepare"""
    from pipeline.stages.prepare import prepare as run

    return run(cfg)


def train_model(cfg: DictConfig, name: str) -> dict[str, Any]:
    """pipeline.stages.train.train_model"""
    from pipeline.stages.train import train_model as run

    return run(cfg, name)


def predict_model(cfg: DictConfig, name: str) -> dict[str, int]:
    """pipeline.stages.predict.predict_model"""
    from pipeline.stages.predict import predict_model as run

    return run(cfg, name)


def vote(cfg: DictConfig) -> dict[str, Any]:
    """pipeline.stages.vote.vote"""
    from pipeline.stages.vote import vote as run

    return dict(run(cfg))


def publish_run(cfg: DictConfig) -> dict[str, Any]:
    """pipeline.stages.publish.publish_run"""
    from pipeline.stages.publish import publish_run as run

    return run(cfg)


def _train(name: str) -> Callable[[DictConfig], dict[str, Any]]:
    def run(cfg: DictConfig) -> dict[str, Any]:
        metrics = train_model(cfg, name)
        return {"model": name, "val_macro_f1": metrics["val"]["macro_f1"]}

    return run


def _predict(name: str) -> Callable[[DictConfig], dict[str, Any]]:
    def run(cfg: DictConfig) -> dict[str, Any]:
        return {"model": name, "images": predict_model(cfg, name)}

    return run


def _vote(cfg: DictConfig) -> dict[str, Any]:
    return {"members": vote(cfg)["members"]}


def stage_graph(models: Iterable[str]) -> list[Stage]:
    """The stages of a suite of `models`, in an order that respects `needs`."""
    models = list(models)
    graph = [Stage(PREPARE_STAGE, (), prepare, "prepare", "prepare")]
    for name in models:
        graph.append(
            Stage(train_stage(name), (PREPARE_STAGE,), _train(name), "model", "train", name)
        )
        graph.append(
            Stage(
                predict_stage(name), (train_stage(name),), _predict(name), "model", "predict", name
            )
        )
    predicted = tuple(predict_stage(name) for name in models)
    graph.append(Stage(VOTE_STAGE, predicted, _vote, "vote", "vote"))
    graph.append(Stage(PUBLISH_STAGE, (VOTE_STAGE,), publish_run, "vote", "publish"))
    return graph


def suite_graph(cfg: DictConfig) -> list[Stage]:
    """The stage graph of the configured suite (ConfigError for a suite without models)."""
    return stage_graph(model_specs(cfg))


def job_groups(graph: list[Stage], kind: str) -> dict[str | None, list[Stage]]:
    """The cluster jobs of one kind: model (None for prepare and vote) → its stages in order."""
    groups: dict[str | None, list[Stage]] = {}
    for stage in graph:
        if stage.kind == kind:
            groups.setdefault(stage.model, []).append(stage)
    return groups


def indexed_model(cfg: DictConfig, env: Mapping[str, str] | None = None) -> str:
    """The model a `model` job handles: `model_name`, else the suite's model number
    `JOB_COMPLETION_INDEX` (set by Kubernetes for an Indexed Job). ConfigError when neither
    selects one."""
    names = list(model_specs(cfg))
    if cfg.get("model_name"):
        if cfg.model_name not in names:
            raise ConfigError(f"model_name={cfg.model_name!r} is not in the suite; valid: {names}")
        return str(cfg.model_name)
    raw = (os.environ if env is None else env).get("JOB_COMPLETION_INDEX")
    if raw is None or not raw.isdigit() or int(raw) >= len(names):
        raise ConfigError(
            f"JOB_COMPLETION_INDEX={raw!r} does not select a model: expected 0..{len(names) - 1} "
            f"for the suite's models {names} (or pass model_name=<name>)"
        )
    return names[int(raw)]


def job_stages(cfg: DictConfig, job: str) -> list[Stage]:
    """The stages `python -m jobs.<job>` runs: prepare; vote then publish; train or predict for
    the selected models (`model_name`, or all); model: train then predict the model
    `indexed_model` selects."""
    graph = suite_graph(cfg)
    if job in ("prepare", "vote"):
        return [s for s in graph if s.kind == job]
    if job in ("train", "predict"):
        models = selected_models(cfg)
        return [s for s in graph if s.step == job and s.model in models]
    if job == "model":
        name = indexed_model(cfg)
        return [s for s in graph if s.kind == "model" and s.model == name]
    raise ConfigError(f"unknown job {job!r}; valid: {list(JOBS)}")


def run_stages(
    cfg: DictConfig,
    stages: Iterable[Stage],
    *,
    where: dict[str, str] | None = None,
    record_failure: Callable[[], bool] = lambda: True,
    on_start: Callable[[Stage], None] | None = None,
) -> list[dict[str, Any]]:
    """Run `stages` in order for `cfg.run_id`, each in the stage frame (skipped when done);
    returns their done markers. A stage that fails (not a Slurm requeue) is told to `notify.url`
    before the error goes on."""
    run = run_store(cfg)
    markers = []
    for stage in stages:
        if on_start is not None:
            on_start(stage)
        try:
            markers.append(run_stage(run, stage.name, functools.partial(stage.run, cfg),
                                     where=where, record_failure=record_failure))  # fmt: skip
        except Exception as e:
            if record_failure():  # a failure, not a Slurm requeue
                notify(cfg, "failed", str(cfg.run_id),
                       f"masksuite run {cfg.run_id}: stage {stage.name} failed: {one_line(e)}",
                       stage=stage.name, store=run.uri)  # fmt: skip
            raise
    return markers


def run_job_stages(cfg: DictConfig, job: str) -> list[dict[str, Any]]:
    """Run the stages of `job` (see `job_stages`) here, in the frame; returns their markers."""
    return run_stages(cfg, job_stages(cfg, job))
