"""The launcher in a cluster whose pods do not start, and its stage Jobs' owner: through the
official `kubernetes` client over HTTPS against the fake API server (tests/fake_apiserver.py).

What is faked: the API server, and the pods' states and events (set by each test as a kubelet
and a scheduler would report them); the Job controller holds each stage's pod until the test lets
it go, so a Job stays active as long as the test needs. Time is the launcher's injected clock,
advanced by its injected sleep: ten simulated minutes of a stuck pod take milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from pipeline.core.config import load_config
from pipeline.orchestration.k8s import launch_k8s, launcher_job, render_jobs
from pipeline.storage.store import LocalStore
from tests.fake_apiserver import FakeApiServer
from tests.kubelet import PodRun

RUN_ID = "20261206T020000Z-pods01"
NS = "masksuite"


def config(*overrides: str) -> Any:
    cfg = load_config(["data.root=s3://datasets/mask", "store.root=s3://mask-runs/test",
                       *overrides])  # fmt: skip
    cfg.run_id = RUN_ID
    return cfg


class Cluster:
    """The fake API server whose stage pods run until released (`release(stage)`; prepare is
    released at once unless `hold_prepare`), a client of it, and the launcher's clock."""

    def __init__(self, server: FakeApiServer, released: dict[str, threading.Event]) -> None:
        self.server, self.released = server, released
        self.api = client.BatchV1Api(server.api_client())
        self.now = 0.0
        self.polls = 0
        #: Called at each of the launcher's sleeps, after the clock moved on.
        self.on_sleep: Callable[[float], None] = lambda now: None

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.polls += 1
        self.on_sleep(self.now)

    def clock(self) -> float:
        return self.now

    def release(self, stage: str) -> None:
        """Let the stage's pods end (exit 0) and wait until its Job's status says so."""
        self.released[stage].set()
        for thread in self.server.threads:
            thread.join(timeout=60)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    released = {stage: threading.Event() for stage in ("prepare", "train", "vote", "launch")}
    released["launch"].set()

    def run_pod(job: dict[str, Any], index: int | None) -> PodRun:
        released[job["metadata"]["name"].rsplit("-", 1)[-1]].wait(timeout=600)
        return PodRun(job["metadata"]["name"], 0, "")

    with FakeApiServer(tmp_path / "api", run_pod) as server:
        try:
            yield Cluster(server, released)
        finally:
            for event in released.values():
                event.set()


def job_name(stage: str) -> str:
    return f"masksuite-{RUN_ID.lower()}-{stage}"


def pod(job: str, phase: str = "Pending", waiting: str | None = None,
        unschedulable: bool = False) -> dict[str, Any]:  # fmt: skip
    """A v1 Pod of `job` as the kubelet and the scheduler report it."""
    state = {"waiting": {"reason": waiting, "message": f"{waiting} ..."}} if waiting else {}
    status: dict[str, Any] = {"phase": phase, "conditions": []}
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "status": "False",
                                 "reason": "Unschedulable", "message": "see events"}]  # fmt: skip
    else:
        status["containerStatuses"] = [{"name": "main", "ready": False, "restartCount": 0,
                                        "image": "registry.example/masksuite:0.1.0",
                                        "imageID": "", "state": state}]  # fmt: skip
    return {"apiVersion": "v1", "kind": "Pod", "status": status,
            "metadata": {"name": f"{job}-x7k2p", "namespace": NS,
                         "labels": {"job-name": job}}}  # fmt: skip


def event(pod_name: str, when: str, message: str) -> dict[str, Any]:
    """A v1 Event about a pod (`when`: its lastTimestamp)."""
    return {"metadata": {"name": f"{pod_name}.{when[-3:-1]}", "namespace": NS},
            "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": NS},
            "reason": "Failed", "message": message, "type": "Warning",
            "lastTimestamp": when}  # fmt: skip


def launch(cluster: Cluster, cfg: Any) -> int:
    return launch_k8s(cfg, api=cluster.api, sleep=cluster.sleep, clock=cluster.clock)


def test_a_pod_that_cannot_pull_its_image_fails_the_run_in_seconds(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare = job_name("prepare")
    stuck = pod(prepare, waiting="ImagePullBackOff")
    name = stuck["metadata"]["name"]
    cluster.server.pod_objects[name] = stuck
    pull = 'Failed to pull image "registry.example/masksuite:0.1.0": not found'
    cluster.server.events += [
        event(name, "2026-12-06T02:00:05Z", pull),
        event(name, "2026-12-06T02:00:01Z", "Pulling image"),
        event("another-pod", "2026-12-06T02:09:00Z", "not about this pod"),
    ]
    started = time.monotonic()
    assert launch(cluster, config()) == 1
    wall = time.monotonic() - started
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    assert err.startswith(f"error: run {RUN_ID}: prepare cannot start: pod {NS}/{name} is "
                          f"ImagePullBackOff for ")  # fmt: skip
    assert f"(k8s.pending_timeout=600): {pull}; job {NS}/{prepare} deleted" in err
    assert cluster.server.deleted == [(prepare, "Foreground")]
    # failed at the first poll after 600 simulated seconds (one poll each 15 s)
    assert 600 < cluster.now <= 615 and cluster.polls == 41
    assert not any(n.endswith("-train") for n in cluster.server.jobs)
    print(f"ImagePullBackOff: run failed after {cluster.now:.0f} simulated s, {wall:.2f} s wall")


def test_an_unschedulable_gpu_pod_fails_the_run_and_its_job_is_deleted(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.release("prepare")
    train = job_name("train")
    stuck = pod(train, unschedulable=True)
    name = stuck["metadata"]["name"]
    cluster.server.pod_objects[name] = stuck
    why = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    cluster.server.events.append(event(name, "2026-12-06T02:01:00Z", why))
    assert launch(cluster, config("k8s.pending_timeout=300")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"train cannot start: pod {NS}/{name} is Unschedulable for " in err
    assert f"(k8s.pending_timeout=300): {why}; job {NS}/{train} deleted" in err
    assert cluster.server.deleted == [(train, "Foreground")]
    assert 300 < cluster.now <= 315
    assert job_name("vote") not in cluster.server.jobs  # the run stopped there


def test_a_missing_secret_fails_the_run_even_where_events_cannot_be_read(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """CreateContainerConfigError (a Secret the pod names does not exist); the launcher's Role
    lacks `events list` here: the pod is still reported, without its event."""
    prepare = job_name("prepare")
    stuck = pod(prepare, waiting="CreateContainerConfigError")
    cluster.server.pod_objects[stuck["metadata"]["name"]] = stuck
    cluster.server.forbidden.add("events")
    assert launch(cluster, config("k8s.pending_timeout=60")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "is CreateContainerConfigError for 75 s (k8s.pending_timeout=60): no event " in err
    assert "(cannot list events: Forbidden)" in err
    assert cluster.server.deleted == [(prepare, "Foreground")]


def test_pods_that_start_slowly_or_recover_within_the_timeout_are_left_alone(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prepare's pod is ContainerCreating for 20 minutes (a large image); train's pod is in
    ImagePullBackOff twice (a registry hiccup), each time for less than the timeout."""
    monkeypatch.setattr("pipeline.orchestration.k8s.run_store", lambda cfg: LocalStore(tmp_path))
    pods = cluster.server.pod_objects
    slow = pod(job_name("prepare"), waiting="ContainerCreating")
    pods[slow["metadata"]["name"]] = slow
    hiccup = pod(job_name("train"), waiting="ImagePullBackOff")
    running = pod(job_name("train"), phase="Running")

    def on_sleep(now: float) -> None:
        if now >= 1200 and not cluster.released["prepare"].is_set():
            cluster.release("prepare")
        if now >= 1200:  # train's pod: stuck 500 s, running 200 s, stuck 500 s, then done
            phase = (now - 1200) // 100
            pods[hiccup["metadata"]["name"]] = running if phase in (5, 6) else hiccup
        if now >= 1200 + 1200:
            cluster.release("train")
            cluster.release("vote")

    cluster.on_sleep = on_sleep
    assert launch(cluster, config()) == 0
    assert cluster.server.deleted == []
    assert cluster.now >= 2400  # twice the timeout


def test_stage_jobs_are_owned_by_the_launcher_job_so_deleting_it_deletes_them(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The launcher runs in the pod of a launcher Job (the CronJob's, or the one `--dry-run`
    prints): its stage Jobs name that Job as their owner, so `kubectl delete job <launcher>`
    (background or foreground propagation) removes the run's Jobs too. The API server does not
    answer the launcher's first two reads of its own pod (503): it waits, and still finds it."""
    cfg = config()
    created = cluster.api.create_namespaced_job(NS, launcher_job(cfg, [f"run_id={RUN_ID}"]))
    owner = created.metadata
    me = pod(owner.name, phase="Running")
    me["metadata"]["name"] = "launcher-pod-1"
    ref = {"apiVersion": "batch/v1", "kind": "Job", "name": owner.name, "uid": owner.uid}
    # the Job controller's reference to its pod
    me["metadata"]["ownerReferences"] = [{**ref, "controller": True, "blockOwnerDeletion": True}]
    cluster.server.pod_objects["launcher-pod-1"] = me
    cluster.server.unavailable["pods"] = 2
    monkeypatch.setenv("MASKSUITE_POD_NAME", "launcher-pod-1")
    monkeypatch.setenv("MASKSUITE_POD_NAMESPACE", NS)
    prepare = job_name("prepare")
    seen: list[dict[str, Any]] = []

    def delete_the_launcher(now: float) -> None:
        if seen:  # the launcher polls again: its owner's deletion took the prepare Job along
            assert prepare not in cluster.server.jobs, "the prepare Job outlived its owner"
        elif prepare in cluster.server.jobs:  # not while the API server is down
            seen.append(cluster.server.jobs[prepare]["metadata"])
            cluster.api.delete_namespaced_job(owner.name, NS, propagation_policy="Background")

    cluster.on_sleep = delete_the_launcher
    assert launch(cluster, cfg) == 1
    assert cluster.server.unavailable["pods"] == 0
    # neither controller nor blocking: the launcher needs no update of its own Job
    assert seen[0]["ownerReferences"] == [{**ref, "controller": False, "blockOwnerDeletion": False}]
    assert cluster.server.deleted == [(owner.name, "Background"), (prepare, "Background")]
    assert f"job {NS}/{prepare} disappeared" in capsys.readouterr().err
    # without a launcher pod (a workstation) the Jobs have no owner
    assert "ownerReferences" not in render_jobs(cfg)[0]["metadata"]
