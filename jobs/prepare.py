"""`python -m jobs.prepare [overrides]`: the prepare stage of a run (see pipeline.stages.prepare):
`run_id` names the run, a new one when unset.

The stages come from the one stage graph (pipeline/orchestration/graph.py)."""

from pipeline.commands.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("prepare"))
