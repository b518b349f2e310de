"""`python -m jobs.prepare [overrides]`: the prepare stage of one run (see pipeline.prepare)."""

from pipeline.cli import run_job
from pipeline.prepare import prepare

if __name__ == "__main__":
    raise SystemExit(run_job(prepare))
