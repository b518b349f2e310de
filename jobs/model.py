"""`python -m jobs.model [overrides]`: train then predict one model of the suite, the pod of the
Kubernetes Indexed Job: `JOB_COMPLETION_INDEX` (or `model_name=<name>`) selects the model
(see pipeline.orchestration.graph.indexed_model).

The stages come from the one stage graph (pipeline/orchestration/graph.py)."""

from pipeline.commands.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("model"))
