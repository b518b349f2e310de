"""`python -m jobs.vote [overrides]`: the vote stage of one run (see pipeline.vote)."""

from pipeline.cli import run_job
from pipeline.vote import vote

if __name__ == "__main__":
    raise SystemExit(run_job(vote))
