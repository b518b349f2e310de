"""Kubernetes: the manifests in k8s/, the Jobs `--cluster k8s` renders, and the launcher's driver.

No API server can run on these machines, so what is proven here is what can be proven offline:
every manifest validates against the real API schema (kubernetes-validate, strict), and the
driver's create-wait-fail-follow logic runs against an in-process fake Jobs API (the Job
controller's semantics: completion, failed indexes, a launcher killed mid-run, are simulated by
it). The pods themselves run for real from the image in tests/test_pods.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from omegaconf import DictConfig

from pipeline.commands.launch import main as launch_main
from pipeline.core.config import load_config, model_specs
from pipeline.core.errors import ConfigError, StageFailed
from pipeline.ml.device import CPU_LIMIT_ENV
from pipeline.orchestration.graph import indexed_model
from pipeline.orchestration.k8s import (
    CHECKOV_SKIPS,
    DISRUPTION_RULE,
    STAGES,
    active_run,
    launch_k8s,
    launcher_job,
    render_jobs,
    run_jobs,
)
from pipeline.storage.store import LocalStore, open_store
from tests.conftest import TINY_OVERRIDES

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
            if doc and not doc["apiVersion"].startswith("kustomize.config.k8s.io/"):
                yield path.relative_to(REPO).as_posix(), doc


def k8s_resource(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} in k8s/"
    return found[0]


#: Pods can only share object storage: every rendered run needs s3:// roots.
S3_ROOTS = ("data.root=s3://datasets/mask", "store.root=s3://mask-runs/test")


def config(*overrides: str) -> DictConfig:
    cfg = load_config([*S3_ROOTS, *overrides])
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
    assert spec["completions"] == spec["parallelism"] == len(model_specs(cfg)) == 13
    assert spec["backoffLimitPerIndex"] == 3
    # bounds the retries in all where the per-index field is dropped (Kubernetes 1.28), and is
    # never reached first where it is kept (tests/test_k8s_versions.py)
    assert spec["backoffLimit"] == 13 * (3 + 1)
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
    assert "priorityClassName" not in pod and "runtimeClassName" not in pod


def test_gpu_pods_take_priority_and_runtime_class_from_the_config() -> None:
    cfg = config("suite=seed", "k8s.train_priority_class=gpu-batch",
                 "k8s.train_runtime_class=nvidia")  # fmt: skip
    prepare, train, vote = render_jobs(cfg)
    pod = train["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "gpu-batch" and pod["runtimeClassName"] == "nvidia"
    for job in (prepare, vote):  # no GPU: the cluster's defaults
        assert "priorityClassName" not in job["spec"]["template"]["spec"]
    validate_strict(train)


def test_no_pod_waits_for_an_earlier_stage_so_no_gpu_is_held_and_deadlines_time_own_work() -> None:
    """The Jobs are created one after another by the launcher: no init container waits for the
    previous stage (a waiting train pod would hold its GPU; a waiting vote Job's deadline would
    run out while training runs)."""
    for job in render_jobs(config("suite=seed")):
        pod = job["spec"]["template"]["spec"]
        assert "initContainers" not in pod, job["metadata"]["name"]
        assert job["spec"]["activeDeadlineSeconds"] > 0


def test_pods_size_their_threads_from_their_cpu_limit() -> None:
    for job in render_jobs(config("k8s.resources.train.limits.cpu=6")):
        (main,) = job["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in main["env"]}
        ref = env[CPU_LIMIT_ENV]["valueFrom"]["resourceFieldRef"]
        assert ref == {"resource": "limits.cpu", "divisor": "1"}
        assert main["resources"]["limits"]["cpu"]


def test_pods_are_hardened_and_get_secrets_only_by_reference() -> None:
    cfg = config(
        "k8s.s3.endpoint=http://minio:9000", "k8s.wandb_secret=wandb", "k8s.notify_secret=hook"
    )
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
            # W&B's key only where W&B is used: the training pods (tests/test_attacks_k8s.py)
            tracking = job["metadata"]["labels"]["masksuite/stage"] == "train"
            assert ("WANDB_API_KEY" in env) == tracking
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"):
                if var in env:
                    assert "value" not in env[var] and "secretKeyRef" in env[var]["valueFrom"]
            hook = env["MASKSUITE_NOTIFY_URL"]["valueFrom"]["secretKeyRef"]
            assert hook == {"name": "hook", "key": "MASKSUITE_NOTIFY_URL", "optional": True}
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
    deadlines = cfg.k8s.active_deadline_seconds
    run_stages = ("prepare", "train", "vote")
    assert job_spec["activeDeadlineSeconds"] >= sum(deadlines[s] for s in run_stages)
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
    # The launcher fingerprints data.root and reads latest.json: it needs S3 like the stage pods.
    env = {e["name"]: e for e in launcher["env"]}
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": cfg.k8s.s3.secret, "key": var, "optional": True}
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["key"] == "S3_ENDPOINT"
    assert "k8s.s3.endpoint=$(S3_ENDPOINT)" in launcher["command"]
    # A node drain restarts the launcher (it then follows its run); nothing else retries it.
    assert job_spec["podFailurePolicy"]["rules"] == [DISRUPTION_RULE]

    binding = k8s_resource("RoleBinding", pod["serviceAccountName"])
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "masksuite"}
    ]
    role = k8s_resource("Role", binding["roleRef"]["name"])
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
    assert granted == {
        *{("batch", "jobs", v) for v in ("create", "get", "list", "delete")},
        *{("", "pods", v) for v in ("get", "list")},
        ("", "events", "list"),
    }


def test_dry_run_prints_a_launcher_job_for_kubectl_apply(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--dry-run | kubectl apply -f -` creates one Job, holding no GPU, that runs the launcher
    in the cluster; the launcher creates the stage Jobs one after another."""
    overrides = ["suite=seed", "train.epochs=3", *S3_ROOTS, "run_id=ignored"]
    assert launch_main(["--cluster", "k8s", "--dry-run", "--resume", RUN_ID, *overrides]) == 0
    out = capsys.readouterr().out
    (job,) = yaml.safe_load_all(out)
    assert "&id" not in out and "*id" not in out  # no YAML aliases
    validate_strict(job)
    assert job["metadata"]["name"] == f"masksuite-{RUN_ID.lower()}-launch"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["podFailurePolicy"]["rules"] == [DISRUPTION_RULE]
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "masksuite-launcher"
    assert pod["automountServiceAccountToken"] is True
    (launcher,) = pod["containers"]
    assert "nvidia.com/gpu" not in str(launcher["resources"])
    assert launcher["command"] == ["python", "-m", "pipeline.launch", "--cluster", "k8s",
                                   "suite=seed", "train.epochs=3", *S3_ROOTS,
                                   f"run_id={RUN_ID}"]  # fmt: skip
    env = {e["name"]: e for e in launcher["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "masksuite-s3"
    cfg = config("suite=seed")
    assert spec["activeDeadlineSeconds"] > sum(cfg.k8s.active_deadline_seconds[s] for s in STAGES)


def test_show_jobs_prints_the_stage_jobs_the_launcher_creates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    overrides = ["suite=seed", *S3_ROOTS]
    assert launch_main(["--cluster", "k8s", "--show-jobs", "--resume", RUN_ID, *overrides]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["labels"]["masksuite/stage"] for d in docs] == [
        "prepare",
        "train",
        "vote",
    ]
    prepare = docs[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert prepare == ["python", "-m", "jobs.prepare", "suite=seed", *S3_ROOTS,
                       f"run_id={RUN_ID}"]  # fmt: skip


def test_the_cronjob_runs_the_same_launcher_pod_as_the_dry_run_job() -> None:
    cron = k8s_resource("CronJob", "masksuite-nightly")["spec"]["jobTemplate"]
    job = launcher_job(config("k8s.s3.endpoint=http://minio:9000"), [])
    for key in ("backoffLimit", "podFailurePolicy"):
        assert cron["spec"][key] == job["spec"][key], key
    assert cron["spec"]["activeDeadlineSeconds"] == job["spec"]["activeDeadlineSeconds"]
    cron_pod, job_pod = cron["spec"]["template"]["spec"], job["spec"]["template"]["spec"]
    for key in ("serviceAccountName", "automountServiceAccountToken", "securityContext"):
        assert cron_pod[key] == job_pod[key], key
    (cron_c,), (job_c,) = cron_pod["containers"], job_pod["containers"]
    assert cron_c["securityContext"] == job_c["securityContext"]
    assert cron_c["resources"] == job_c["resources"]
    cron_env, job_env = ({e["name"] for e in c["env"]} for c in (cron_c, job_c))
    needed = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
              "AWS_DEFAULT_REGION", CPU_LIMIT_ENV, "HOME", "TMPDIR"}  # fmt: skip
    assert needed <= cron_env and needed <= job_env


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["store.root=outputs/store"], "store.root='outputs/store' is a local folder"),
        (["store.root=/shared/store"], "store.root='/shared/store' is a local folder"),
        (
            ["store.root=s3://b/x", "data.root=data/generated"],
            "data.root='data/generated' is a relative local path",
        ),
    ],
)
def test_k8s_refuses_paths_that_pods_cannot_share(
    overrides: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for flags in ([], ["--dry-run"], ["--show-jobs"]):
        # data.root does not exist: the refusal comes before any data is read.
        args = ["--cluster", "k8s", *flags, f"data.root={tmp_path}/none", *overrides]
        assert launch_main(args) == 1
        err = capsys.readouterr().err
        assert message in err and "s3://bucket/prefix" in err, err
        assert "Traceback" not in err


def test_a_suite_index_selects_its_model() -> None:
    cfg = config("suite=seed")
    assert indexed_model(cfg, {"JOB_COMPLETION_INDEX": "0"}) == "single"
    assert indexed_model(cfg, {"JOB_COMPLETION_INDEX": "12"}) == "age_unmasked_focal"
    for bad in ({"JOB_COMPLETION_INDEX": "13"}, {"JOB_COMPLETION_INDEX": "x"}, {}):
        with pytest.raises(ConfigError, match="does not select a model"):
            indexed_model(cfg, bad)
    cfg.model_name = "gender"
    assert indexed_model(cfg, {}) == "gender"


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
        self.dry_runs: list[str] = []

    def _stage(self, name: str) -> str:
        return name.rsplit("-", 1)[-1]

    def create_namespaced_job(
        self, namespace: str, body: dict[str, Any], dry_run: str | None = None
    ) -> client.V1Job:
        name = body["metadata"]["name"]
        if dry_run:  # answered without a spec: the driver cannot tell what is kept
            self.dry_runs.append(name)
            return client.V1Job(metadata=client.V1ObjectMeta(name=name))
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
        self.reads[name] += 1
        return client.V1Job(status=self._status(name))

    def list_namespaced_job(self, namespace: str, label_selector: str = "") -> client.V1JobList:
        self.calls.append(("list", label_selector))
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part)
        items = []
        for name, body in self.jobs.items():
            meta = body["metadata"]
            if wanted.items() <= meta["labels"].items():
                items.append(client.V1Job(
                    metadata=client.V1ObjectMeta(name=name, labels=meta["labels"],
                                                 annotations=meta["annotations"]),
                    status=self._status(name),
                ))  # fmt: skip
        return client.V1JobList(items=items)

    def _status(self, name: str) -> client.V1JobStatus:
        if name in self.preset:
            return self.preset[name]
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
        return status

    def delete_namespaced_job(self, name: str, namespace: str, **kwargs: Any) -> client.V1Status:
        self.calls.append(("delete", name))
        assert kwargs.get("propagation_policy") in ("Foreground", "Background")
        self.jobs.pop(name)
        self.preset.pop(name, None)
        return client.V1Status()


def creates(api: FakeJobsApi) -> list[str]:
    return [name.rsplit("-", 1)[-1] for op, name in api.calls if op == "create"]


def test_driver_creates_the_jobs_in_order_and_waits_for_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config("suite=seed")
    # the run is read at the end for the publish gate's decision (none here)
    monkeypatch.setattr("pipeline.orchestration.k8s.run_store", lambda cfg: LocalStore(tmp_path))
    api = FakeJobsApi(polls=3)
    sleeps: list[float] = []
    assert launch_k8s(cfg, dry_run=False, api=api, sleep=sleeps.append) == 0
    assert creates(api) == ["prepare", "train", "vote"]
    # each Job is read until it completes before the next one is created
    stages = [(op, n.rsplit("-", 1)[-1]) for op, n in api.calls]
    assert stages == [(op, s) for s in ("prepare", "train", "vote")
                      for op in ("create", "read", "read", "read")]  # fmt: skip
    assert sleeps == [15.0] * 6
    # the train Job was first created as a dry run, to see whether the server keeps its
    # backoffLimitPerIndex (tests/test_k8s_versions.py)
    assert api.dry_runs == [f"masksuite-{RUN_ID.lower()}-train"]
    train = api.jobs[f"masksuite-{RUN_ID.lower()}-train"]
    assert train["spec"]["completions"] == len(model_specs(cfg)) == 13


def test_driver_says_when_the_publish_gate_held_the_run_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vote job's publish stage held the run (its gate.json; pipeline/stages/publish.py):
    the launcher (the nightly CronJob's pod) says so in one line and exits 3, so the CronJob's
    Job fails visibly while latest.json stays on the champion."""
    cfg = config()
    run = LocalStore(tmp_path)  # the run's folder in the store (S3 for real pods)
    monkeypatch.setattr("pipeline.orchestration.k8s.run_store", lambda cfg: run)
    reason = "held: holdout macro F1 0.0195 [0.007, 0.034] against champion r0 0.1042 [...]"
    gate = {"run_id": RUN_ID, "decision": "held", "compared": True, "reason": reason,
            "champion": "r0", "tolerance": 0.0, "decided": "2026-12-06T02:00:00+00:00",
            "holdout": {"fraction": 0.1, "people": 25, "photos": 175}}  # fmt: skip
    run.write_json("gate.json", gate)
    assert launch_k8s(cfg, dry_run=False, api=FakeJobsApi(), sleep=lambda s: None) == 3
    assert f"  publish: {reason}" in capsys.readouterr().out


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


class LauncherKilled(BaseException):
    """The launcher's process dies (a node drain, an OOM kill): nothing of it runs after this."""


@pytest.mark.s3
def test_a_new_launch_follows_the_run_a_dead_launcher_left_instead_of_starting_another(
    tiny_dataset: Path, s3_root: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The nightly launcher dies while training runs; its Jobs go on. The next launch (the next
    night's CronJob, or the launcher pod restarted after a disruption) sees a run of the same
    fingerprint still going and follows it to its end: no second prepare, no second training."""

    class Dying(FakeJobsApi):
        killed = False

        def read_namespaced_job(self, name: str, namespace: str) -> client.V1Job:
            if name.endswith("-train") and not self.killed:
                self.killed = True
                raise LauncherKilled
            return super().read_namespaced_job(name, namespace)

    api = Dying(polls=2)
    monkeypatch.setattr("pipeline.orchestration.k8s.kube_jobs_api", lambda: api)
    args = ["--cluster", "k8s", f"data.root={tiny_dataset}", f"store.root={s3_root}/store",
            "k8s.poll_seconds=0", *TINY_OVERRIDES]  # fmt: skip
    with pytest.raises(LauncherKilled):
        launch_main(args)
    first = sorted(api.jobs)
    assert [n.rsplit("-", 1)[-1] for n in first] == ["prepare", "train"]
    run_id = api.jobs[first[0]]["metadata"]["annotations"]["masksuite/run-id"]

    # --force starts a new run beside it, on purpose
    assert launch_main(["--force", *args]) == 0
    forced = {j["metadata"]["annotations"]["masksuite/run-id"] for j in api.jobs.values()}
    assert len(forced - {run_id}) == 1
    for name in [n for n in api.jobs if run_id.lower() not in n]:
        api.jobs.pop(name)
    capsys.readouterr()

    assert launch_main(args) == 0
    out = capsys.readouterr().out
    assert f"run {run_id} of the same data and configuration" in out and "following it" in out
    assert sorted(n.rsplit("-", 1)[-1] for n in api.jobs) == ["prepare", "train", "vote"]
    assert {j["metadata"]["annotations"]["masksuite/run-id"] for j in api.jobs.values()} == {run_id}
    # prepare and train were created once each: the second launcher found them (409) and followed
    created = [n for op, n in api.calls if op == "create"]
    assert created.count(first[0]) == 2 and len(api.jobs) == 3
    runs = {k.split("/")[1] for k in open_store(f"{s3_root}/store").list("runs")}
    assert runs == {run_id, *forced}  # no third run was started


def test_active_run_is_the_newest_unfinished_run_of_the_fingerprint() -> None:
    fp = "ab" * 32
    api = FakeJobsApi(polls=0)  # every Job complete unless preset
    older, newer = "20261126T020000Z-aaaaaa", "20261127T020000Z-bbbbbb"
    for run_id in (older, newer):
        cfg = config()
        cfg.run_id = run_id
        for job in render_jobs(cfg, fingerprint=fp):
            api.create_namespaced_job("masksuite", job)
    assert active_run(api, "masksuite", "cd" * 32) is None  # other inputs
    # all Jobs complete, vote included: nothing is going
    assert active_run(api, "masksuite", fp) is None
    vote = f"masksuite-{newer.lower()}-vote"
    api.preset[vote] = client.V1JobStatus(active=1)
    assert active_run(api, "masksuite", fp) == newer
    # a run with a failed Job has ended: start anew rather than follow it
    api.preset[vote] = client.V1JobStatus(
        conditions=[client.V1JobCondition(type="Failed", status="True", reason="DeadlineExceeded")]
    )
    assert active_run(api, "masksuite", fp) is None


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
        def create_namespaced_job(self, namespace: str, body: dict[str, Any], **kw: Any) -> Any:
            raise ApiException(status=403, reason="Forbidden")

    assert launch_k8s(config(), dry_run=False, api=Forbidden(), sleep=lambda s: None) == 1
    assert "cannot create job masksuite/" in capsys.readouterr().err


class Outage(FakeJobsApi):
    """The API server stops answering (connection refused) when the train Job is first read,
    for `seconds` of the launcher's clock, which its sleeps advance (`sleep`, `clock`)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.now = 0.0
        self.down_since: float | None = None
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def read_namespaced_job(self, name: str, namespace: str) -> client.V1Job:
        if name.endswith("-train") and self.down_since is None:
            self.down_since = self.now
        if self.down_since is not None and self.now - self.down_since < self.seconds:
            raise ConnectionRefusedError(111, "Connection refused")
        return super().read_namespaced_job(name, namespace)


def test_the_launcher_waits_out_an_api_outage_of_twenty_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A control-plane upgrade: no answer for 20 simulated minutes, then the run goes on. The
    retries back off from 1 s to 60 s apart (a few dozen calls, not one per poll)."""
    monkeypatch.setattr("pipeline.orchestration.k8s.run_store", lambda cfg: LocalStore(tmp_path))
    api = Outage(seconds=20 * 60)
    assert launch_k8s(config(), api=api, sleep=api.sleep, clock=api.clock) == 0
    assert creates(api) == ["prepare", "train", "vote"]
    retries = api.sleeps[api.sleeps.index(1.0) :]
    assert retries[:8] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert len([s for s in retries if s == 60.0]) == 19  # 1200 s = 63 s + 19 x 60 s, then back


def test_the_launcher_gives_up_after_the_outage_budget_with_one_clear_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = Outage(seconds=float("inf"))
    cfg = config("k8s.api_outage_seconds=900")
    assert launch_k8s(cfg, api=api, sleep=api.sleep, clock=api.clock) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        f"cannot read job masksuite/masksuite-{RUN_ID.lower()}-train: the API server did not "
        in err
    )
    assert "(k8s.api_outage_seconds=900); last error: [Errno 111] Connection refused" in err
    assert 840 <= api.now <= 900  # gave up within the budget, not long before it
