"""`python -m jobs.predict [overrides]`: predict val and eval with the suite's models
(`model_name=<name>` for one; see pipeline.stages.predict).

The stages come from the one stage graph (pipeline/orchestration/graph.py)."""

from pipeline.commands.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("predict"))
