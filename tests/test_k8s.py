"""Kubernetes: the manifests in k8s/, the Jobs `--cluster k8s` renders, and the launcher's driver.

No API server can run on these machines, so what is proven here is what can be proven offline:
every manifest validates against the real API schema (kubernetes-validate, strict), the rendered
pods' commands really run the suite (executed locally with their environment against SeaweedFS),
and the driver's create-wait-fail logic runs against a fake Jobs API.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pandas as pd
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from omegaconf import DictConfig

from pipeline.config import load_config
from pipeline.errors import ConfigError, StageFailed
from pipeline.k8s import (
    CHECKOV_SKIPS,
    indexed_model,
    launch_k8s,
    render_jobs,
    run_jobs,
    wait_for_stages,
)
from pipeline.launch import main as launch_main
from pipeline.runs import mark_stage_done, run_store
from pipeline.store import open_store
from tests.conftest import TINY_OVERRIDES
from tests.seaweed import SeaweedServer, upload_tree

REPO = Path(__file__).resolve().parents[1]
#: podFailurePolicy is GA from 1.31, backoffLimitPerIndex from 1.33; also check the newest schema.
K8S_VERSIONS = ("1.33.0", kubernetes_validate.utils.latest_version())
RUN_ID = "20261127T000000Z-abc123"
MakeCfg = Callable[..., DictConfig]


def validate_strict(doc: dict[str, Any]) -> None:
    """Validate one manifest against the API schemas; an unknown kind fails too (the CLI only
    warns about it)."""
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((REPO / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.relative_to(REPO).as_posix(), doc


def k8s_resource(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} in k8s/"
    return found[0]


def config(*overrides: str) -> DictConfig:
    cfg = load_config(list(overrides))
    cfg.run_id = RUN_ID
    return cfg


# --------------------------------------------------------------------------------------------
# Manifests: schema, security, agreement between k8s/ and the config
# --------------------------------------------------------------------------------------------


def test_every_manifest_in_k8s_validates_strictly() -> None:
    docs = list(k8s_documents())
    kinds = {d["kind"] for _, d in docs}
    assert kinds >= {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
                     "CronJob", "Secret", "NetworkPolicy"}  # fmt: skip
    for where, doc in docs:
        try:
            validate_strict(doc)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where}: {doc['kind']}/{doc['metadata']['name']}: {e}")
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "masksuite", where
    # Only the top folder is applied by `kubectl apply -f k8s/`: the example Secret is not in it.
    applied = {d["kind"] for w, d in docs if w.count("/") == 1}
    assert "Secret" not in applied


def test_rendered_jobs_validate_strictly_for_every_suite() -> None:
    for suite in ("single", "seed"):
        jobs = render_jobs(config(f"suite={suite}"))
        assert [j["metadata"]["labels"]["masksuite/stage"] for j in jobs] == [
            "prepare",
            "train",
            "vote",
        ]
        for job in jobs:
            validate_strict(job)


def test_training_job_is_indexed_with_one_gpu_per_model_and_ignores_disruptions() -> None:
    cfg = config(
        "suite=seed",
        "++k8s.train_node_selector={nvidia.com/gpu.product: Tesla-V100}",
        "k8s.backoff_limit_per_index=3",
    )
    train = render_jobs(cfg)[1]
    spec = train["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 6
    assert spec["backoffLimitPerIndex"] == 3 and "backoffLimit" not in spec
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-V100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    (main,) = pod["containers"]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert main["command"][:3] == ["python", "-m", "jobs.model"]
    assert main["command"][-1] == f"run_id={RUN_ID}"
    (wait,) = pod["initContainers"]
    assert wait["command"][-1] == "+wait_for=[prepare]"


def test_pods_are_hardened_and_get_secrets_only_by_reference() -> None:
    cfg = config("k8s.s3.endpoint=http://minio:9000", "k8s.wandb_secret=wandb")
    for job in render_jobs(cfg):
        assert set(CHECKOV_SKIPS) <= {
            v.split("=", 1)[0] for v in job["metadata"]["annotations"].values()
        }
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert {"type": "DisruptionTarget", "status": "True"} in rules[0]["onPodConditions"]
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == "masksuite-stage"
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"] + pod.get("initContainers", []):
            sec = c["securityContext"]
            assert sec["readOnlyRootFilesystem"] is True
            assert sec["allowPrivilegeEscalation"] is False
            assert sec["capabilities"] == {"drop": ["ALL"]}
            assert c["resources"]["requests"] and c["resources"]["limits"]
            env = {e["name"]: e for e in c["env"]}
            assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"):
                assert "value" not in env[var] and "secretKeyRef" in env[var]["valueFrom"]
            # Every writable path is on a volume (the root filesystem is read-only).
            mounts = [m["mountPath"] for m in c["volumeMounts"]]
            for var in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "TORCH_HOME", "WANDB_DIR"):
                assert any(env[var]["value"].startswith(m) for m in mounts), var
            assert any(c["workingDir"].startswith(m) for m in mounts)


def test_k8s_folder_agrees_with_the_config_and_grants_least_privilege() -> None:
    cfg = config()
    assert k8s_resource("Namespace", cfg.k8s.namespace)
    stage_sa = k8s_resource("ServiceAccount", cfg.k8s.service_account)
    assert stage_sa["automountServiceAccountToken"] is False
    secret = k8s_resource("Secret", cfg.k8s.s3.secret)
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}

    cron = k8s_resource("CronJob", "masksuite-nightly")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0 and spec["timeZone"]
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job_spec = spec["jobTemplate"]["spec"]
    assert job_spec["backoffLimit"] == 0  # a retried launcher would start a second run
    assert job_spec["activeDeadlineSeconds"] >= sum(cfg.k8s.active_deadline_seconds.values())
    pod = job_spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    (launcher,) = pod["containers"]
    assert launcher["image"] == cfg.k8s.image
    assert launcher["command"][:5] == ["python", "-m", "pipeline.launch", "--cluster", "k8s"]
    configmap = k8s_resource("ConfigMap", "masksuite-config")
    assert configmap["data"]["IMAGE"] == cfg.k8s.image
    for e in launcher["env"]:
        ref = e.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            assert ref["name"] == "masksuite-config" and ref["key"] in configmap["data"]
    assert "secretKeyRef" not in str(launcher["env"])  # the launcher needs no S3 keys

    binding = k8s_resource("RoleBinding", pod["serviceAccountName"])
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "masksuite"}
    ]
    role = k8s_resource("Role", binding["roleRef"]["name"])
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
    assert granted == {
        *{("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")},
        *{("", "pods", v) for v in ("get", "list", "watch")},
        ("", "pods/log", "get"),
    }


def test_dry_run_prints_multi_document_yaml_for_kubectl_apply(
    capsys: pytest.CaptureFixture[str],
) -> None:
    overrides = ["suite=seed", "train.epochs=3", "data.root=s3://d/x", "run_id=ignored"]
    assert launch_main(["--cluster", "k8s", "--dry-run", "--resume", RUN_ID, *overrides]) == 0
    out = capsys.readouterr().out
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["Job", "Job", "Job"]
    assert "&id" not in out and "*id" not in out  # no YAML aliases
    prepare = docs[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert prepare == ["python", "-m", "jobs.prepare", "suite=seed", "train.epochs=3",
                       "data.root=s3://d/x", f"run_id={RUN_ID}"]  # fmt: skip
    assert docs[0]["metadata"]["name"] == f"masksuite-{RUN_ID.lower()}-prepare"


def test_a_suite_index_selects_its_model() -> None:
    cfg = config("suite=seed")
    assert indexed_model(cfg, {"JOB_COMPLETION_INDEX": "0"}) == "single"
    assert indexed_model(cfg, {"JOB_COMPLETION_INDEX": "5"}) == "age_unmasked"
    for bad in ({"JOB_COMPLETION_INDEX": "6"}, {"JOB_COMPLETION_INDEX": "x"}, {}):
        with pytest.raises(ConfigError, match="does not select a model"):
            indexed_model(cfg, bad)
    cfg.model_name = "gender"
    assert indexed_model(cfg, {}) == "gender"


def test_wait_for_stages_polls_the_store_then_gives_up(tmp_path: Path) -> None:
    cfg = config(f"store.root={tmp_path}", "+wait_for=[prepare]", "k8s.poll_seconds=5",
                 "k8s.active_deadline_seconds.prepare=12")  # fmt: skip
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s
        if len(sleeps) == 2:  # the marker appears while the pod waits
            mark_stage_done(run_store(cfg), "prepare", {}, 0.0)

    wait_for_stages(cfg, sleep=sleep, clock=lambda: now[0])
    assert sleeps == [5.0, 5.0]
    cfg.wait_for = ["predict-single"]
    cfg.k8s.active_deadline_seconds.train = 12
    with pytest.raises(StageFailed, match=r"\['predict-single'\] not done"):
        wait_for_stages(cfg, sleep=sleep, clock=lambda: now[0])


# --------------------------------------------------------------------------------------------
# The driver against a fake Jobs API
# --------------------------------------------------------------------------------------------


class FakeJobsApi:
    """An in-memory stand-in for `kubernetes.client.BatchV1Api`.

    It is a fake because no Kubernetes API server can run on these machines (no container
    runtime, no kind/k3s). It keeps Jobs by name and answers with the client's real V1Job models
    and ApiException; `outcomes` says how each stage's Job ends after `polls` status reads:
    "complete", or "failed" with optional failed indexes.
    """

    def __init__(self, outcomes: dict[str, tuple[str, str]] | None = None, polls: int = 2):
        self.outcomes = outcomes or {}
        self.polls = polls
        self.jobs: dict[str, dict[str, Any]] = {}
        self.reads: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.preset: dict[str, client.V1JobStatus] = {}

    def _stage(self, name: str) -> str:
        return name.rsplit("-", 1)[-1]

    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> client.V1Job:
        name = body["metadata"]["name"]
        self.calls.append(("create", name))
        assert namespace == body["metadata"]["namespace"]
        if name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[name] = body
        self.reads[name] = 0
        return client.V1Job(metadata=client.V1ObjectMeta(name=name))

    def read_namespaced_job(self, name: str, namespace: str) -> client.V1Job:
        self.calls.append(("read", name))
        if name not in self.jobs:
            raise ApiException(status=404, reason="NotFound")
        if name in self.preset:
            return client.V1Job(status=self.preset[name])
        self.reads[name] += 1
        status = client.V1JobStatus(active=1)
        if self.reads[name] >= self.polls:
            outcome, indexes = self.outcomes.get(self._stage(name), ("complete", ""))
            if outcome == "complete":
                cond = client.V1JobCondition(type="Complete", status="True")
            else:
                reason = "FailedIndexes" if indexes else "BackoffLimitExceeded"
                cond = client.V1JobCondition(
                    type="Failed", status="True", reason=reason, message="Job has failed"
                )
            status = client.V1JobStatus(conditions=[cond], failed_indexes=indexes or None)
        return client.V1Job(status=status)

    def delete_namespaced_job(self, name: str, namespace: str, **kwargs: Any) -> client.V1Status:
        self.calls.append(("delete", name))
        assert kwargs.get("propagation_policy") in ("Foreground", "Background")
        self.jobs.pop(name)
        self.preset.pop(name, None)
        return client.V1Status()


def creates(api: FakeJobsApi) -> list[str]:
    return [name.rsplit("-", 1)[-1] for op, name in api.calls if op == "create"]


def test_driver_creates_the_jobs_in_order_and_waits_for_each() -> None:
    cfg = config("suite=seed")
    api = FakeJobsApi(polls=3)
    sleeps: list[float] = []
    assert launch_k8s(cfg, dry_run=False, api=api, sleep=sleeps.append) == 0
    assert creates(api) == ["prepare", "train", "vote"]
    # each Job is read until it completes before the next one is created
    stages = [(op, n.rsplit("-", 1)[-1]) for op, n in api.calls]
    assert stages == [(op, s) for s in ("prepare", "train", "vote")
                      for op in ("create", "read", "read", "read")]  # fmt: skip
    assert sleeps == [15.0] * 6
    train = api.jobs[f"masksuite-{RUN_ID.lower()}-train"]
    assert train["spec"]["completions"] == 6


def test_driver_stops_at_a_failed_index_and_names_its_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = config("suite=seed")
    api = FakeJobsApi({"train": ("failed", "2")})
    assert launch_k8s(cfg, dry_run=False, api=api, sleep=lambda s: None) == 1
    assert creates(api) == ["prepare", "train"]  # the vote Job is never created
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: run {RUN_ID}: train failed at index 2 (model 'gender')")
    assert "FailedIndexes" in err and "batch.kubernetes.io/job-completion-index=2" in err

    api = FakeJobsApi({"train": ("failed", "1,4-5")})
    with pytest.raises(StageFailed) as failed:
        run_jobs(api, render_jobs(cfg), models=["a", "b", "c", "d", "e", "f"], poll_seconds=0,
                 sleep=lambda s: None)  # fmt: skip
    assert "index 1 (model 'b'), index 4 (model 'e'), index 5 (model 'f')" in str(failed.value)


def test_driver_stops_when_prepare_fails(capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeJobsApi({"prepare": ("failed", "")})
    assert launch_k8s(config(), dry_run=False, api=api, sleep=lambda s: None) == 1
    assert creates(api) == ["prepare"]
    err = capsys.readouterr().err
    assert "prepare failed: job masksuite/" in err and "BackoffLimitExceeded" in err


def test_driver_resumes_a_run_whose_jobs_exist() -> None:
    """--resume: a completed Job is kept, a failed one is deleted and created anew."""
    cfg = config()
    jobs = render_jobs(cfg)
    api = FakeJobsApi()
    for job in jobs[:2]:
        api.create_namespaced_job("masksuite", job)
    prepare, train = (j["metadata"]["name"] for j in jobs[:2])
    done = client.V1JobCondition(type="Complete", status="True")
    failed = client.V1JobCondition(type="Failed", status="True", reason="FailedIndexes")
    api.preset[prepare] = client.V1JobStatus(conditions=[done])
    api.preset[train] = client.V1JobStatus(conditions=[failed], failed_indexes="0")
    api.calls.clear()
    run_jobs(api, jobs, models=["single"], poll_seconds=0, sleep=lambda s: None)
    ops = [(op, n.rsplit("-", 1)[-1]) for op, n in api.calls]
    assert ops[:2] == [("create", "prepare"), ("read", "prepare")]  # conflict, already complete
    assert ("delete", "train") in ops
    assert ops.count(("create", "train")) == 2 and ("create", "vote") in ops


def test_driver_retries_transient_api_errors_while_following_a_job() -> None:
    class Flaky(FakeJobsApi):
        def read_namespaced_job(self, name: str, namespace: str) -> client.V1Job:
            self.flaky = getattr(self, "flaky", 0) + 1
            if self.flaky in (1, 2):
                raise ApiException(status=503, reason="Service Unavailable")
            if self.flaky == 3:
                raise ConnectionResetError("connection reset by peer")
            return super().read_namespaced_job(name, namespace)

    api = Flaky()
    run_jobs(api, render_jobs(config()), models=["single"], poll_seconds=0, sleep=lambda s: None)
    assert creates(api) == ["prepare", "train", "vote"]

    class Gone(FakeJobsApi):
        def read_namespaced_job(self, name: str, namespace: str) -> client.V1Job:
            raise ApiException(status=404, reason="NotFound")

    with pytest.raises(StageFailed, match="disappeared"):
        run_jobs(Gone(), render_jobs(config()), models=["single"], poll_seconds=0,
                 sleep=lambda s: None)  # fmt: skip


def test_driver_reports_an_api_error_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    class Forbidden(FakeJobsApi):
        def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> Any:
            raise ApiException(status=403, reason="Forbidden")

    assert launch_k8s(config(), dry_run=False, api=Forbidden(), sleep=lambda s: None) == 1
    assert "cannot create job masksuite/" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The pods' commands, executed for real against SeaweedFS
# --------------------------------------------------------------------------------------------


def pod_environment(
    container: dict[str, Any], secrets: dict[str, dict[str, str]], mounts: dict[str, Path]
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: values, secretKeyRefs, and the
    volumes' mount paths mapped to local folders. Nothing is inherited but PATH."""
    env = {"PATH": os.environ["PATH"]}
    for item in container["env"]:
        if "value" in item:
            value = str(item["value"])
            for mount, local in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    value = str(local) + value[len(mount) :]
            env[item["name"]] = value
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            if ref["name"] in secrets:
                env[item["name"]] = secrets[ref["name"]][ref["key"]]
            else:
                assert ref.get("optional"), f"secret {ref['name']} missing"
    return env


def run_container(container: dict[str, Any], env: dict[str, str], mounts: dict[str, Path]) -> None:
    command = list(container["command"])
    assert command[0] == "python"
    command[0] = sys.executable
    workdir = container["workingDir"]
    for mount, local in mounts.items():
        if workdir.startswith(mount):
            workdir = str(local) + workdir[len(mount) :]
    Path(workdir).mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, f"{container['name']}: {command}\n{done.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.s3
def test_rendered_pod_commands_run_the_suite_against_s3(
    tiny_dataset: Path, s3_root: str, seaweed: SeaweedServer, tmp_path: Path
) -> None:
    upload_tree(tiny_dataset, f"{s3_root}/data")
    overrides = [
        f"data.root={s3_root}/data",
        f"store.root={s3_root}/store",
        *TINY_OVERRIDES,
        "train.num_threads=1",
        # a second model, so that the Indexed Job has two indexes
        "+suite.models.mask={task: mask}",
        f"k8s.s3.endpoint={seaweed.endpoint}",
    ]
    cfg = load_config(overrides)
    cfg.run_id = RUN_ID
    jobs = render_jobs(cfg, overrides)
    secrets = {"masksuite-s3": {k: v for k, v in seaweed.env().items() if k.startswith("AWS_")}}
    for job in jobs:
        validate_strict(job)
        pod = job["spec"]["template"]["spec"]
        for index in range(job["spec"]["completions"]):
            # fresh emptyDirs for each pod
            pod_dir = tmp_path / f"{job['metadata']['name']}-{index}"
            mounts = {v["name"]: pod_dir / v["name"] for v in pod["volumes"]}
            for local in mounts.values():
                local.mkdir(parents=True)
            for container in pod.get("initContainers", []) + pod["containers"]:
                paths = {m["mountPath"]: mounts[m["name"]] for m in container["volumeMounts"]}
                env = pod_environment(container, secrets, paths)
                if job["spec"].get("completionMode") == "Indexed":
                    env["JOB_COMPLETION_INDEX"] = str(index)
                run_container(container, env, paths)

    run = open_store(f"{s3_root}/store").child(f"runs/{RUN_ID}")
    stages = {k.removeprefix("stages/").removesuffix(".json") for k in run.list("stages")}
    assert stages == {"prepare", "train-single", "predict-single", "train-mask", "predict-mask",
                      "vote"}  # fmt: skip
    submission = pd.read_csv(io.BytesIO(run.read_bytes("submission.csv")))
    info = pd.read_csv(tiny_dataset / "eval" / "info.csv")
    assert submission["ImageID"].tolist() == info["ImageID"].tolist()
    assert submission["ans"].between(0, 17).all()
