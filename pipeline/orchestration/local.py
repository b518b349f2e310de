"""The local executor: every stage of the graph on this machine, one after another
(`python -m pipeline.launch`, no --cluster)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar

from omegaconf import DictConfig

from pipeline.core.errors import ConfigError
from pipeline.orchestration.executor import LaunchRequest
from pipeline.orchestration.graph import run_stages, suite_graph
from pipeline.orchestration.status import RunStatus, run_status
from pipeline.run.context import give_new_run
from pipeline.run.history import run_exit_status, summary_lines
from pipeline.run.results import VoteResult, read_vote
from pipeline.run.state import run_store


def run_local(cfg: DictConfig) -> VoteResult:
    """Run every stage of the suite for `cfg.run_id` (new when null) on this machine.

    Returns vote.json's content. A stage that fails raises after the frame recorded it in the run
    (`jobs/<stage>.json`, as a cluster job's does); `latest.json` only moves when the vote
    succeeds.
    """
    graph = suite_graph(cfg)  # a suite without models fails before any work
    give_new_run(cfg)
    run_stages(cfg, graph)
    return read_vote(run_store(cfg))


class LocalBackend:
    """The Executor of this machine: a launch runs the stages here and returns when they end."""

    name: ClassVar[str] = "local"
    blocks: ClassVar[bool] = True
    side_by_side: ClassVar[bool] = False
    on_active: ClassVar[str] = "running it here"

    def check(self, cfg: DictConfig, request: LaunchRequest) -> None:
        """Only the cluster options are refused: a local run reads what the stages read."""
        if request.render_only:
            raise ConfigError("--dry-run and --show-jobs apply to --cluster k8s only")
        if request.wait:
            raise ConfigError("--wait applies to --cluster slurm (a local run always waits)")

    def launch(self, cfg: DictConfig, request: LaunchRequest) -> int:
        """Run the stages here, print where the results are and the scores."""
        started = time.time()
        result = run_local(cfg)
        print("\n".join(summary_lines(cfg, result, time.time() - started)))
        return run_exit_status(run_store(cfg))

    def active_run(self, cfg: DictConfig, sha256: str) -> str | None:
        """A local run is never left going behind a launch: none."""
        return None

    def follow(self, cfg: DictConfig, request: LaunchRequest) -> int:
        """Finish the run here (every stage done is skipped)."""
        return self.launch(cfg, request)

    def status(self, cfg: DictConfig) -> RunStatus:
        """The stages' markers and job records; no scheduler to ask."""
        return run_status(cfg)

    def cancel(self, cfg: DictConfig) -> list[str]:
        """Nothing is queued for a local run (stop its process instead)."""
        return []

    def infer(self, cfg: DictConfig, overrides: Sequence[str], *, dry_run: bool) -> int:
        """Classify the photos here and print the summary."""
        from pipeline.stages.infer import format_summary, infer

        if dry_run:
            raise ConfigError("--dry-run applies to --cluster k8s only")
        print(format_summary(infer(cfg)))
        return 0
