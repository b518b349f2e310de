"""`python -m jobs.predict [overrides]`: the predict stage of one run (see pipeline.predict)."""

from pipeline.cli import run_job
from pipeline.predict import predict

if __name__ == "__main__":
    raise SystemExit(run_job(predict))
