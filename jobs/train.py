"""`python -m jobs.train [overrides]`: the train stage of one run (see pipeline.train)."""

from pipeline.cli import run_job
from pipeline.train import train

if __name__ == "__main__":
    raise SystemExit(run_job(train))
