"""The one shape every executor has: where a run's stages run, and how to look at and stop them.

    launch      run (or submit) the stages run `cfg.run_id` still needs
    active_run  a run of the same inputs still going there (so a launch joins it), or None
    follow      join such a run: wait for it, or say how to follow it
    status      every stage's state (orchestration/status.py), as the executor sees its jobs
    cancel      stop the run's jobs still queued or running; their ids
    infer       classify new photos with a finished run there

Three implement it: here (local.py), Slurm (slurm.py) and Kubernetes (k8s.py); the commands pick
one from the registry in executors.py by name (`--cluster`), or by what a run's scheduler.json
recorded (`runs status|cancel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from omegaconf import DictConfig

from pipeline.core.errors import ConfigError
from pipeline.orchestration.status import RunStatus
from pipeline.run.context import open_run


@dataclass(frozen=True)
class LaunchRequest:
    """What the command line asked of a launch, beyond the configuration.

    overrides: the user's Hydra overrides (the cluster's jobs get them again);
    wait:      follow the run to its end (a local run always does);
    dry_run:   print what would run the launch in the cluster instead (Kubernetes);
    show_jobs: print the run's jobs instead (Kubernetes);
    fingerprint: the run's data fingerprint (sha256), when known.
    """

    overrides: tuple[str, ...] = ()
    wait: bool = False
    dry_run: bool = False
    show_jobs: bool = False
    fingerprint: str | None = None

    @property
    def render_only(self) -> bool:
        """Whether the launch only prints manifests (reads no data, makes no run)."""
        return self.dry_run or self.show_jobs


class Executor(Protocol):
    """Where a run's stages run. Methods raise PipelineError subclasses for the user to read."""

    #: `--cluster` name.
    name: ClassVar[str]
    #: A launch returns only once the run ended (a submission returns at once).
    blocks: ClassVar[bool]
    #: Runs may go side by side (a sweep's points launched from threads when a launch blocks);
    #: here they go one after another.
    side_by_side: ClassVar[bool]
    #: What a launch does when a run of the same inputs is still going (`{run_id}`, `{store}`).
    on_active: ClassVar[str]

    def check(self, cfg: DictConfig, request: LaunchRequest) -> None:
        """Refuse options and paths this executor cannot use, before any run is made."""
        ...

    def launch(self, cfg: DictConfig, request: LaunchRequest) -> int:
        """Run or submit what run `cfg.run_id` still needs; returns an exit status."""
        ...

    def active_run(self, cfg: DictConfig, sha256: str) -> str | None:
        """The id of a run of these inputs still going, or None."""
        ...

    def follow(self, cfg: DictConfig, request: LaunchRequest) -> int:
        """Join run `cfg.run_id`, still going: its exit status when followed, else 0."""
        ...

    def status(self, cfg: DictConfig) -> RunStatus:
        """Every stage of run `cfg.run_id` and the run's state."""
        ...

    def cancel(self, cfg: DictConfig) -> list[str]:
        """Stop run `cfg.run_id`'s jobs that are queued or running; returns their ids."""
        ...

    def infer(self, cfg: DictConfig, overrides: Sequence[str], *, dry_run: bool) -> int:
        """Classify `infer.input` with run `cfg.run_id`; returns an exit status."""
        ...


def pinned_infer_config(cfg: DictConfig, *, dry_run: bool) -> DictConfig:
    """The config a cluster's infer job gets: `infer.input` set, and the run to classify with
    chosen now (run_id, or latest.json's), so a later run does not change what the job uses. A
    dry run of a given run reads nothing. ConfigError without an input or a finished run."""
    from pipeline.stages.infer import resolve_run

    if not cfg.infer.get("input"):
        raise ConfigError("infer.input is not set: give a folder or s3://bucket/prefix")
    if dry_run and cfg.get("run_id"):
        return cfg
    run_id, _ = resolve_run(cfg)
    return open_run(cfg, run_id).config
