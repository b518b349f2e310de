"""The registry of executors: `--cluster` name → the class that runs a suite there
(pipeline/orchestration/executor.py has the interface). Adding a back-end is one entry here."""

from __future__ import annotations

from pipeline.core.errors import ConfigError
from pipeline.orchestration.executor import Executor
from pipeline.orchestration.k8s import KubernetesBackend
from pipeline.orchestration.local import LocalBackend
from pipeline.orchestration.slurm import SlurmBackend
from pipeline.orchestration.status import run_cluster
from pipeline.storage.store import Store

EXECUTORS: dict[str, type[Executor]] = {
    LocalBackend.name: LocalBackend,
    SlurmBackend.name: SlurmBackend,
    KubernetesBackend.name: KubernetesBackend,
}


def executor(name: str) -> Executor:
    """The executor called `name`; ConfigError naming the valid ones."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown cluster {name!r}; valid: {list(EXECUTORS)}")
    return EXECUTORS[name]()


def run_executor(run: Store) -> Executor:
    """The executor that launched `run` (its scheduler.json; local without one)."""
    return executor(run_cluster(run))
