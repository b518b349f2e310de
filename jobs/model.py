"""`python -m jobs.model [overrides]`: train then predict one model of the suite, the pod of the
Kubernetes Indexed Job: `JOB_COMPLETION_INDEX` (or `model_name=<name>`) selects the model
(see pipeline.k8s.train_and_predict)."""

from pipeline.cli import run_job
from pipeline.k8s import train_and_predict

if __name__ == "__main__":
    raise SystemExit(run_job(train_and_predict))
