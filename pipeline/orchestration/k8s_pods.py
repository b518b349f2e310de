"""The launcher watches the pods of the Job it waits on: a pod that cannot pull its image, cannot
create its container or cannot be scheduled (no node with the GPU, the node selector or the free
resources it asks for) for `k8s.pending_timeout` seconds fails the run at once, in one line that
names the pod, the reason and the newest event about it, instead of idling to the Job's deadline.

A pod merely Pending or ContainerCreating (pulling a large image, waiting for a node to scale up)
within that time is fine; a pod that recovers starts its count again if it is stuck later.
The API calls are those the launcher's Role grants (k8s/20-rbac.yaml): pods list, events list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger("pipeline.orchestration.k8s")

#: Waiting reasons of a container that does not start without someone fixing something.
STUCK_WAITING = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
)
_OLDEST = datetime.min.replace(tzinfo=UTC)


class PodsApi(Protocol):
    """The part of `kubernetes.client.CoreV1Api` the launcher uses for pods."""

    def read_namespaced_pod(self, name: str, namespace: str) -> Any: ...

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any: ...

    def list_namespaced_event(self, namespace: str, **kwargs: Any) -> Any: ...


def pods_api(jobs_api: Any) -> PodsApi | None:
    """A CoreV1Api on the same connection as the official client's BatchV1Api `jobs_api`; None
    for another Jobs API (the in-process fake of the tests), which then has no pods to watch."""
    from kubernetes import client

    api_client = getattr(jobs_api, "api_client", None)
    return None if api_client is None else client.CoreV1Api(api_client)


def stuck_reason(pod: Any) -> str | None:
    """Why a Pending pod cannot go on by itself (a waiting reason of STUCK_WAITING, or
    "Unschedulable"), or None."""
    status = getattr(pod, "status", None)
    if status is None or status.phase != "Pending":
        return None
    containers = [*(status.init_container_statuses or []), *(status.container_statuses or [])]
    for c in containers:
        waiting = getattr(c.state, "waiting", None)
        if waiting is not None and waiting.reason in STUCK_WAITING:
            return str(waiting.reason)
    for cond in status.conditions or []:
        if (
            cond.type == "PodScheduled"
            and cond.status == "False"
            and cond.reason == "Unschedulable"
        ):
            return "Unschedulable"
    return None


def _event_time(event: Any) -> datetime:
    meta = getattr(event, "metadata", None)
    return (
        event.last_timestamp
        or event.event_time
        or event.first_timestamp
        or getattr(meta, "creation_timestamp", None)
        or _OLDEST
    )


def newest_event(api: PodsApi, namespace: str, pod: str) -> str:
    """The message of the newest event about `pod`; "no event" when there is none, and why when
    the events cannot be listed (the pod is still reported)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    selector = f"involvedObject.name={pod}"
    try:
        events = api.list_namespaced_event(namespace, field_selector=selector).items or []
    except (ApiException, OSError, HTTPError) as e:
        return f"no event (cannot list events: {getattr(e, 'reason', e)})"
    if not events:
        return "no event"
    return str(max(events, key=_event_time).message or "no message").strip()


class PodWatch:
    """The pods of one Job (label job-name=<job>), checked at each poll of the Job: `stuck()`
    names a pod stuck for longer than `timeout` seconds of `clock`."""

    def __init__(
        self,
        api: PodsApi | None,
        namespace: str,
        job: str,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api, self.namespace, self.job = api, namespace, job
        self.timeout, self.clock = timeout, clock
        #: (pod, reason) -> when it was first seen stuck for that reason.
        self.since: dict[tuple[str, str], float] = {}
        self.warned = False

    def stuck(self) -> str | None:
        """One line naming a pod stuck for longer than the timeout, its reason and the newest
        event about it; None while no pod is. A failed listing skips this check (a warning once:
        the Job's own status is still followed)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        if self.api is None:
            return None
        try:
            pods = self.api.list_namespaced_pod(
                self.namespace, label_selector=f"job-name={self.job}"
            ).items
            now = self.clock()
            seen = {(p.metadata.name, r) for p in pods or [] if (r := stuck_reason(p))}
            self.since = {key: self.since.get(key, now) for key in seen}
            for (pod, reason), since in sorted(self.since.items()):
                if now - since > self.timeout:
                    event = newest_event(self.api, self.namespace, pod)
                    return (f"pod {self.namespace}/{pod} is {reason} for {now - since:.0f} s "
                            f"(k8s.pending_timeout={self.timeout:g}): {event}")  # fmt: skip
        except (ApiException, OSError, HTTPError) as e:
            if not self.warned:
                why = getattr(e, "reason", e)
                log.warning("cannot list the pods of job %s/%s (%s): only the Job's status is "
                            "followed", self.namespace, self.job, why)  # fmt: skip
                self.warned = True
        return None


#: The annotation of an Indexed Job's pod that names its completion index (since 1.21; 1.28 adds
#: a label of the same name).
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def failed_pod_indexes(api: PodsApi | None, namespace: str, job: str) -> list[int]:
    """The completion indexes of the Job's failed pods, in order: where the Job itself names no
    failed index (a server without backoffLimitPerIndex, e.g. Kubernetes 1.28), they say which
    models failed. Empty when the pods cannot be listed (or were deleted with the Job)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if api is None:
        return []
    try:
        pods = api.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items or []
    except (ApiException, OSError, HTTPError) as e:
        log.warning("cannot list the pods of job %s/%s (%s) to name its failed models",
                    namespace, job, getattr(e, "reason", e))  # fmt: skip
        return []
    indexes = set()
    for pod in pods:
        if getattr(pod.status, "phase", None) != "Failed":
            continue
        meta = pod.metadata
        value = (meta.annotations or {}).get(COMPLETION_INDEX) or (meta.labels or {}).get(
            COMPLETION_INDEX
        )
        if value is not None and str(value).isdigit():
            indexes.add(int(value))
    return sorted(indexes)
