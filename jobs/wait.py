"""`python -m jobs.wait +wait_for=[stage,...] run_id=<id> [overrides]`: wait until those stages of
the run are done, the init container of the Kubernetes Jobs (see pipeline.k8s.wait_for_stages)."""

from pipeline.cli import run_job
from pipeline.k8s import wait_for_stages

if __name__ == "__main__":
    raise SystemExit(run_job(wait_for_stages))
