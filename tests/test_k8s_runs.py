"""`runs status` and `runs cancel` of a run launched on Kubernetes, through the executor interface,
against the fake API server (tests/fake_apiserver.py) over HTTPS with the official client.

The fake's controller runs each Job's pod with a stand-in that waits on an event, so the Job stays
active until the test lets it go: no timing is involved."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from pipeline.commands.runs import main as runs_main
from pipeline.core.config import load_config
from pipeline.orchestration.k8s import render_jobs
from pipeline.orchestration.status import record_submission
from pipeline.storage.store import open_store
from tests.fake_apiserver import FakeApiServer
from tests.kubelet import PodRun

RUN_ID = "20261206T020000Z-k8s001"


@pytest.fixture
def held_pods(tmp_path: Path) -> Iterator[tuple[FakeApiServer, client.BatchV1Api, threading.Event]]:
    """The fake API server whose pods run until the event is set, and a client of it."""
    release = threading.Event()
    started = threading.Event()

    def run_pod(job: dict[str, Any], index: int | None) -> PodRun:
        started.set()
        release.wait(timeout=600)
        return PodRun(job["metadata"]["name"], 0, "")

    with FakeApiServer(tmp_path / "api", run_pod) as server:
        conf = client.Configuration(host=f"https://127.0.0.1:{server.port}")
        conf.ssl_ca_cert = str(server.token_dir / "ca.crt")
        conf.api_key = {"BearerToken": server.token}
        conf.api_key_prefix = {"BearerToken": "Bearer"}
        server.started = started  # type: ignore[attr-defined]
        try:
            yield server, client.BatchV1Api(client.ApiClient(conf)), release
        finally:
            release.set()


def test_runs_status_lists_the_jobs_and_runs_cancel_deletes_them_foreground(
    tmp_path: Path,
    held_pods: tuple[FakeApiServer, client.BatchV1Api, threading.Event],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, api, release = held_pods
    monkeypatch.setattr("pipeline.orchestration.k8s.kube_jobs_api", lambda: api)
    store = tmp_path / "store"
    # What a launcher on Kubernetes leaves: the launch record, and the prepare Job created.
    run = open_store(str(store)).child(f"runs/{RUN_ID}")
    record_submission(run, {"cluster": "k8s", "models": ["single"], "jobs": {}})
    rendered = load_config(
        [f"run_id={RUN_ID}", "store.root=s3://bucket/store", "data.root=s3://bucket/data"]
    )
    prepare = render_jobs(rendered)[0]
    api.create_namespaced_job("masksuite", prepare)
    name = prepare["metadata"]["name"]
    assert server.started.wait(timeout=60)  # type: ignore[attr-defined]

    assert runs_main(["status", RUN_ID, f"store.root={store}"]) == 0
    out = capsys.readouterr().out
    assert f"run {RUN_ID}: running" in out
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.startswith("  ")}
    assert name in lines["prepare"] and "pending" in lines["prepare"]  # its Job is active
    assert "not submitted" in lines["vote"]  # no Job yet

    assert runs_main(["cancel", RUN_ID, f"store.root={store}"]) == 0
    assert f"cancelled job(s) {name}" in capsys.readouterr().out
    assert server.deleted == [(name, "Foreground")]
    assert name not in server.jobs

    assert runs_main(["status", RUN_ID, f"store.root={store}"]) == 1
    out = capsys.readouterr().out
    assert f"run {RUN_ID}: failed" in out and "prepare cancelled" in out
    assert runs_main(["cancel", RUN_ID, f"store.root={store}"]) == 0
    assert "nothing queued or running to cancel" in capsys.readouterr().out
    release.set()
