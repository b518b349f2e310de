"""What a Kubernetes API server of a given release stores, and what its Job controller does, for
the batch/v1 Job fields the suite sets, written down rule by rule from the Kubernetes sources.

No API server can run here, so tests/fake_apiserver.py applies `admit_job` on create and its
controller follows `retry_rule`. Each rule names its source (paths in github.com/kubernetes/
kubernetes) and the releases it holds for; only the fields the suite's Jobs use are covered.

Feature gates (pkg/features/kube_features.go) of the releases covered, default values:
- JobPodFailurePolicy: beta and on from 1.26, GA 1.31 (locked on).
- JobBackoffLimitPerIndex: alpha and off in 1.28, beta and on from 1.29, GA 1.33.
- PodDisruptionConditions (pods get the DisruptionTarget condition): beta and on from 1.26.
- IndexedJob (completionMode Indexed): GA 1.24, so in every release covered.
"""

from __future__ import annotations

import copy
from typing import Any

#: The releases covered, and their default feature gates (pkg/features/kube_features.go).
GATES: dict[str, dict[str, bool]] = {
    "1.28": {"JobPodFailurePolicy": True, "JobBackoffLimitPerIndex": False},
    "1.29": {"JobPodFailurePolicy": True, "JobBackoffLimitPerIndex": True},
    "1.33": {"JobPodFailurePolicy": True, "JobBackoffLimitPerIndex": True},
}
MAX_INT32 = 2**31 - 1


class Invalid(ValueError):
    """The API server would refuse the Job (422 Unprocessable Entity); the message says why."""


def gates(version: str) -> dict[str, bool]:
    """The default feature gates of `version` ("1.28", "1.28.15" or "v1.28.15")."""
    minor = ".".join(version.lstrip("v").split(".")[:2])
    if minor not in GATES:
        raise KeyError(f"Kubernetes {version} is not covered; covered: {sorted(GATES)}")
    return GATES[minor]


def admit_job(manifest: dict[str, Any], version: str) -> dict[str, Any]:
    """The Job as the API server of `version` stores it after a create: defaulted on decoding,
    then its disabled fields dropped (PrepareForCreate), then validated. Raises Invalid for a Job
    it would refuse."""
    job = copy.deepcopy(manifest)
    spec = job["spec"]
    on = gates(version)

    # pkg/apis/batch/v1/defaults.go SetDefaults_Job (1.28, 1.29, 1.33 alike; run on decoding,
    # before the strategy): both counts unset -> 1; parallelism unset -> 1.
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = spec["parallelism"] = 1
    spec.setdefault("parallelism", 1)
    # Same function: backoffLimit unset -> MaxInt32 when backoffLimitPerIndex is set, else 6.
    # Not gated: in 1.28 it runs before the per-index field is dropped below.
    if spec.get("backoffLimit") is None:
        spec["backoffLimit"] = MAX_INT32 if spec.get("backoffLimitPerIndex") is not None else 6
    # Same function: completionMode unset -> NonIndexed; suspend unset -> false; a
    # podFailurePolicy onPodConditions pattern without status -> "True" (1.26+).
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    for rule in (spec.get("podFailurePolicy") or {}).get("rules", []):
        for pattern in rule.get("onPodConditions") or []:
            pattern.setdefault("status", "True")

    # pkg/registry/batch/job/strategy.go jobStrategy.PrepareForCreate (1.28, 1.29, 1.33): the
    # status is cleared; a disabled gate drops its fields.
    job["status"] = {}
    if not on["JobPodFailurePolicy"]:
        spec.pop("podFailurePolicy", None)
    if not on["JobBackoffLimitPerIndex"]:
        spec.pop("backoffLimitPerIndex", None)
        spec.pop("maxFailedIndexes", None)
        policy = spec.get("podFailurePolicy")
        if policy:
            policy["rules"] = [r for r in policy["rules"] if r["action"] != "FailIndex"]

    validate_job(job)
    return job


def validate_job(job: dict[str, Any]) -> None:
    """The checks of pkg/apis/batch/validation/validation.go (validateJobSpec, 1.28 to 1.33) on
    the fields the suite sets."""
    spec = job["spec"]
    restart = spec["template"]["spec"].get("restartPolicy")
    if restart not in ("Never", "OnFailure"):
        raise Invalid(f"spec.template.spec.restartPolicy: Unsupported value: {restart!r}")
    if spec.get("podFailurePolicy") is not None and restart != "Never":
        raise Invalid("spec.podFailurePolicy: only allowed with restartPolicy Never")
    indexed = spec["completionMode"] == "Indexed"
    if indexed and spec.get("completions") is None:
        raise Invalid("spec.completions: Required value: when completionMode is Indexed")
    if spec.get("backoffLimitPerIndex") is not None:
        if not indexed:
            raise Invalid("spec.backoffLimitPerIndex: requires completionMode Indexed")
        if restart != "Never":
            raise Invalid("spec.backoffLimitPerIndex: requires restartPolicy Never")
    if spec.get("maxFailedIndexes") is not None:
        if spec.get("backoffLimitPerIndex") is None:
            raise Invalid("spec.maxFailedIndexes: requires backoffLimitPerIndex")
        if spec["maxFailedIndexes"] > spec["completions"]:
            raise Invalid("spec.maxFailedIndexes: must be less than or equal to completions")
    for i, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules", [])):
        if rule["action"] not in ("FailJob", "FailIndex", "Ignore", "Count"):
            raise Invalid(f"spec.podFailurePolicy.rules[{i}].action: {rule['action']!r}")


def per_index(job: dict[str, Any], version: str) -> bool:
    """Whether the Job controller counts failures per index: pkg/controller/job/indexed_job_utils.go
    hasBackoffLimitPerIndex (gate on and the field stored), 1.28 to 1.33."""
    return gates(version)["JobBackoffLimitPerIndex"] and (
        job["spec"].get("backoffLimitPerIndex") is not None
    )


def job_fails(job: dict[str, Any], version: str, failures: dict[int, int]) -> bool:
    """Whether the Job controller fails the Job after these failed pods (index -> count; pods
    matching a podFailurePolicy Ignore rule are not failures):
    - pkg/controller/job/job_controller.go syncJob, 1.28 to 1.33 and not gated:
      `exceedsBackoffLimit := failed > *job.Spec.BackoffLimit` over all the Job's failed pods;
    - pkg/controller/job/indexed_job_utils.go (1.29+, per_index): an index whose failures exceed
      backoffLimitPerIndex is failed; the Job fails when more than maxFailedIndexes are (at once)
      or when all indexes have finished and one failed (the caller asks when no index is left)."""
    spec = job["spec"]
    if sum(failures.values()) > spec["backoffLimit"]:
        return True
    if per_index(job, version):
        failed = [i for i, n in failures.items() if n > spec["backoffLimitPerIndex"]]
        limit = spec.get("maxFailedIndexes")
        return limit is not None and len(failed) > limit
    return False


def index_failed(job: dict[str, Any], version: str, failures: int) -> bool:
    """Whether an index with this many failed pods gets no more pods (per-index counting only;
    without it the controller replaces a failed pod as long as the Job has not failed)."""
    return per_index(job, version) and failures > job["spec"]["backoffLimitPerIndex"]
