"""The executors are interchangeable: the same suite launched through each (pipeline/orchestration/
executors.py) ends in the same stages done, a submission and latest.json on its run, and `runs
status latest` answers through the executor that launched it. Kubernetes runs through the fake API
server (tests/fake_apiserver.py), whose pods are the Jobs' own commands run here as processes;
Slurm through the local cluster (more of it in tests/test_slurm.py and tests/test_sweeps.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from pipeline.commands.launch import main as launch_main
from pipeline.commands.runs import main as runs_main
from pipeline.orchestration.executors import EXECUTORS
from pipeline.storage.store import open_store
from tests.conftest import TINY_OVERRIDES
from tests.fake_apiserver import FakeApiServer
from tests.kubelet import PodRun
from tests.seaweed import upload_tree
from tests.test_slurm import overrides as slurm_overrides
from tests.test_slurm import slurm_cluster  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]


def pod_as_process(job: dict[str, Any], index: int | None) -> PodRun:
    """A Job's pod: its container's command (`python -m jobs.<kind> ...`) run here, with the
    index an Indexed Job gives it."""
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    env = dict(os.environ)
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = str(index)
    done = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    return PodRun(job["metadata"]["name"], done.returncode, done.stdout + done.stderr)


def api_client(server: FakeApiServer) -> client.BatchV1Api:
    """The official client, talking to the fake API server with its service-account token."""
    conf = client.Configuration(host=f"https://127.0.0.1:{server.port}")
    conf.ssl_ca_cert = str(server.token_dir / "ca.crt")
    conf.api_key = {"BearerToken": server.token}
    conf.api_key_prefix = {"BearerToken": "Bearer"}
    return client.BatchV1Api(client.ApiClient(conf))


@pytest.mark.slow
@pytest.mark.s3
def test_the_same_suite_runs_through_the_local_and_the_kubernetes_executor_alike(
    tiny_dataset: Path,
    s3_root: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upload_tree(tiny_dataset, f"{s3_root}/data")
    suite = [f"data.root={s3_root}/data", "k8s.poll_seconds=1", *TINY_OVERRIDES]
    done: dict[str, set[str]] = {}
    with FakeApiServer(tmp_path / "api", pod_as_process) as server:
        monkeypatch.setattr("pipeline.orchestration.k8s.kube_jobs_api", lambda: api_client(server))
        for cluster in ("local", "k8s"):
            assert cluster in EXECUTORS
            store = f"{s3_root}/{cluster}"
            code = launch_main(["--cluster", cluster, f"store.root={store}", *suite])
            pods = "\n".join(p.log[-2000:] for _, _, p in server.pods if p.exit_code)
            assert code == 0, pods
            root = open_store(store)
            run_id = str(root.read_json("latest.json")["run_id"])
            run = root.child(f"runs/{run_id}")
            done[cluster] = {k.split("/")[-1] for k in run.list("stages")}
            assert run.exists("submission.csv")
            capsys.readouterr()
            assert runs_main(["status", "latest", f"store.root={store}"]) == 0
            assert capsys.readouterr().out.startswith(f"run {run_id}: done")
    assert done["local"] == done["k8s"] == {
        "prepare.json", "train-single.json", "predict-single.json", "vote.json", "publish.json"
    }  # fmt: skip
    assert [job["metadata"]["labels"]["masksuite/stage"] for job in server.jobs.values()] == [
        "prepare", "train", "vote"
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.s3
def test_a_sweep_on_kubernetes_launches_its_runs_side_by_side_and_publishes_none(
    tiny_dataset: Path,
    s3_root: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upload_tree(tiny_dataset, f"{s3_root}/data")
    store = f"{s3_root}/store"
    args = ["--cluster", "k8s", "-m", f"data.root={s3_root}/data", f"store.root={store}",
            "k8s.poll_seconds=1", *TINY_OVERRIDES, "train.lr=1e-3,3e-4"]  # fmt: skip
    with FakeApiServer(tmp_path / "api", pod_as_process) as server:
        monkeypatch.setattr("pipeline.orchestration.k8s.kube_jobs_api", lambda: api_client(server))
        assert launch_main(args) == 0
    root = open_store(store)
    assert not root.exists("latest.json")
    runs = {job["metadata"]["annotations"]["masksuite/run-id"] for job in server.jobs.values()}
    assert len(runs) == 2 and len(server.jobs) == 6
    sweeps = {
        root.read_json(f"runs/{run_id}/manifest.json")["sweep"]["sweep_id"] for run_id in runs
    }
    assert len(sweeps) == 1
    capsys.readouterr()
    assert runs_main(["list", "--sweep", sweeps.pop(), f"store.root={store}"]) == 0
    assert capsys.readouterr().out.count("succeeded") == 2


@pytest.mark.slow
@pytest.mark.slurm
def test_the_same_suite_runs_through_the_slurm_executor_alike(
    slurm_cluster: None,  # noqa: F811 (the fixture imported above)
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same suite through the Slurm executor (the local cluster): the same stages done, a
    submission, latest.json on its run, and `runs status latest` through Slurm."""
    store = str(tmp_path / "store")
    code = launch_main(
        ["--cluster", "slurm", "--wait", *slurm_overrides(tiny_dataset, store, tmp_path)]
    )
    assert code == 0, capsys.readouterr()
    root = open_store(store)
    run_id = str(root.read_json("latest.json")["run_id"])
    run = root.child(f"runs/{run_id}")
    assert {k.split("/")[-1] for k in run.list("stages")} == {
        "prepare.json", "train-single.json", "predict-single.json", "vote.json", "publish.json"
    }  # fmt: skip
    assert run.exists("submission.csv")
    assert root.read_json(f"runs/{run_id}/scheduler.json")  # Slurm recorded its jobs
    capsys.readouterr()
    assert runs_main(["status", "latest", f"store.root={store}"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"run {run_id}: done") and "Job completed successfully" in shown, shown
