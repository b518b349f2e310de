"""What every job entry point shares: config from argv, the job's stages of the graph, clean
failures. `python -m jobs.<job>` is `run_job("<job>")`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.core.logs import setup_logging
from pipeline.orchestration.checks import check_config
from pipeline.orchestration.graph import job_stages, run_stages
from pipeline.run.context import open_run
from pipeline.run.state import require_run_id


def run_job(job: str, argv: Sequence[str] | None = None) -> int:
    """Compose the config from Hydra overrides in `argv` and run the stages of `job` (one of
    graph.JOBS: prepare, train, predict, model, vote), each in the stage frame, which skips it
    when done and records its failure in the run. Returns an exit status: 0 on success, 1 with a
    one-line error for input, config or environment problems."""
    setup_logging()
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(overrides)
        check_config(cfg)  # a job can be started by hand: the launcher's check again
        stages = job_stages(cfg, job)
    except PipelineError as e:  # nothing has run: no run folder is touched
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        # prepare without a run id starts a new run; the other jobs work on a given one
        run = open_run(cfg, None if job == "prepare" else require_run_id(cfg))
        run_stages(run.config, stages)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{job} done: run_id={run.run_id}")
    return 0
