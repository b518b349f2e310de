"""`python -m jobs.train [overrides]`: train the suite's models (`model_name=<name>` for one; see
pipeline.stages.train).

The stages come from the one stage graph (pipeline/orchestration/graph.py)."""

from pipeline.commands.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("train"))
