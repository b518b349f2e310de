"""The registry of executors: `--cluster` name → the class that runs a suite there
(pipeline/orchestration/executor.py has the interface). Adding a back-end is one entry here.

Each entry imports its back-end when it is chosen, so a back-end's own libraries (submitit for
Slurm, kubernetes for Kubernetes) are needed only where it runs: a GPU node or an image without
them still launches locally, and `--help` loads neither.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.core.errors import ConfigError
from pipeline.orchestration.executor import Executor
from pipeline.orchestration.status import run_cluster
from pipeline.storage.store import Store


def _local() -> type[Executor]:
    from pipeline.orchestration.local import LocalBackend

    return LocalBackend


def _slurm() -> type[Executor]:
    from pipeline.orchestration.slurm import SlurmBackend

    return SlurmBackend


def _k8s() -> type[Executor]:
    from pipeline.orchestration.k8s import KubernetesBackend

    return KubernetesBackend


#: `--cluster` name → the function that imports and returns its executor's class.
EXECUTORS: dict[str, Callable[[], type[Executor]]] = {
    "local": _local,
    "slurm": _slurm,
    "k8s": _k8s,
}


def executor(name: str) -> Executor:
    """The executor called `name`; ConfigError naming the valid ones, or the library it needs
    when that is not installed here."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown cluster {name!r}; valid: {list(EXECUTORS)}")
    try:
        return EXECUTORS[name]()()
    except ImportError as e:
        needs = f"the Python package {e.name}" if e.name else "a package"
        raise ConfigError(
            f"--cluster {name} needs {needs}, which cannot be imported here ({e}); install the "
            "suite with its dependencies (pip install -e .)"
        ) from e


def run_executor(run: Store) -> Executor:
    """The executor that launched `run` (its scheduler.json; local without one)."""
    return executor(run_cluster(run))
