"""The local executor: every stage of the graph on this machine, one after another
(`python -m pipeline.launch`, no --cluster)."""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.orchestration.graph import run_stages, suite_graph
from pipeline.run.results import VoteResult, read_vote
from pipeline.run.state import new_run_id, run_store


def run_local(cfg: DictConfig) -> VoteResult:
    """Run every stage of the suite for `cfg.run_id` (new when null) on this machine.

    Returns vote.json's content. A stage that fails raises after the frame recorded it in the run
    (`jobs/<stage>.json`, as a cluster job's does); `latest.json` only moves when the vote
    succeeds.
    """
    graph = suite_graph(cfg)  # a suite without models fails before any work
    if not cfg.get("run_id"):
        cfg.run_id = new_run_id()
    run_stages(cfg, graph)
    return read_vote(run_store(cfg))
