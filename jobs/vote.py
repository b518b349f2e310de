"""`python -m jobs.vote [overrides]`: rank the candidates, vote, write the submission and move
latest.json (see pipeline.stages.vote).

The stages come from the one stage graph (pipeline/orchestration/graph.py)."""

from pipeline.commands.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("vote"))
