"""A run's context for one job: its id, its folder in the store, its suite and the configuration
bound to it. Made once (at launch, at a job's start) and passed down; nothing writes a run id into
a configuration anywhere else."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

from omegaconf import DictConfig

from pipeline.core.config import model_specs
from pipeline.run.state import new_run_id, run_store
from pipeline.storage.store import Store


@dataclass(frozen=True)
class RunContext:
    """run_id: the run's id; suite: its model names in the suite's order; config: the job's
    configuration with run_id set (a copy of its own); store: its folder (runs/<run_id>), opened
    when first used (a launch that only prints manifests never opens it)."""

    run_id: str
    suite: tuple[str, ...]
    config: DictConfig

    @functools.cached_property
    def store(self) -> Store:
        """The run's folder in the store."""
        return run_store(self.config)


def open_run(cfg: DictConfig, run_id: str | None = None) -> RunContext:
    """The context of run `run_id`, else of `cfg.run_id`, else of a new run (an id that sorts by
    time). `cfg` is left as it is. ConfigError for a suite without models."""
    bound = copy.deepcopy(cfg)
    bound.run_id = str(run_id or cfg.get("run_id") or new_run_id())
    return RunContext(str(bound.run_id), tuple(model_specs(bound)), bound)


def give_new_run(cfg: DictConfig) -> str:
    """`cfg.run_id`, set first to a new run's id when null: for a stage function or the local
    executor called on a bare configuration (tests, notebooks); launches and jobs open the run
    with `open_run` first."""
    if not cfg.get("run_id"):
        cfg.run_id = new_run_id()
    return str(cfg.run_id)
