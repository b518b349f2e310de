"""What the pods and manifests look like on the clusters users have (issue 28, items 3, 6, 8, 9
and "one place to say what is particular to a cluster").

Checked on every Job the suite renders (stages, launcher, infer) and on the nightly CronJob's pod,
with the kubelet's environment rules (tests/kubelet.py `resolve_env`: an optional secretKeyRef
to a missing Secret is left out, a required one fails the pod). The kustomize overlay is rendered
for real by `kubectl kustomize` (offline); the launcher's command line is then expanded as the
kubelet would (tests/kubelet.py `expand`) and composed into the config its stage Jobs come from.
Nothing here is faked but the cluster itself: scheduling, QoS and eviction need a real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import DictConfig

from pipeline.commands.infer import main as infer_main
from pipeline.commands.launch import main as launch_main
from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError
from pipeline.orchestration.k8s import infer_job, launcher_job, render_jobs
from tests.kubelet import expand, quantity, resolve_env

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "20261128T000000Z-abc123"
S3_ROOTS = ("data.root=s3://datasets/mask", "store.root=s3://mask-runs/test")
#: The example overlay (overlays/example/): a user's values, each written once.
OVERLAY = REPO / "overlays" / "example"
USER = {
    "namespace": "vision-team",
    "image": "registry.vision.example.org/ml/masksuite:0.1.0",
    "secret": "vision-s3",
    "node_selector": {"pool": "batch"},
    "train_node_selector": {"nvidia.com/gpu.product": "Tesla-V100-SXM2-16GB"},
    "bucket": "s3://vision-runs/nightly",
}


def config(*overrides: str) -> DictConfig:
    cfg = load_config([*S3_ROOTS, *overrides])
    cfg.run_id = RUN_ID
    return cfg


def plain_documents(folder: Path = REPO / "k8s") -> list[dict[str, Any]]:
    """What `kubectl apply -f <folder>` applies: the .yaml files of the folder itself."""
    return [d for p in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
            if d]  # fmt: skip


def cronjob_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def every_pod(cfg: DictConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """(role, pod spec) of every pod of the suite: the stage Jobs', the launcher Job's, an infer
    Job's and the CronJob's."""
    for job in render_jobs(cfg):
        yield job["metadata"]["labels"]["masksuite/stage"], job["spec"]["template"]["spec"]
    yield "launcher", launcher_job(cfg, [])["spec"]["template"]["spec"]
    cfg.infer.input = "s3://incoming/2026-01-01"
    yield "infer", infer_job(cfg)["spec"]["template"]["spec"]
    yield "cronjob", cronjob_pod(plain_documents())


def env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (main,) = pod["containers"]
    return {e["name"]: e for e in main["env"]}


# --------------------------------------------------------------------------------------------
# Item 3: no static keys
# --------------------------------------------------------------------------------------------


def test_every_pod_starts_on_a_cluster_without_the_s3_secret() -> None:
    """With cloud identity (IRSA, workload identity) there is no `masksuite-s3` Secret: the
    kubelet must still start every pod (no CreateContainerConfigError), without S3 keys, so that
    boto3 takes the pod's identity."""
    (cm,) = [d for d in plain_documents() if d["kind"] == "ConfigMap"]
    for role, pod in every_pod(config()):
        (main,) = pod["containers"]
        env = resolve_env(pod, main, pod_name="p-0", namespace="masksuite",
                          configmaps={"masksuite-config": cm["data"]}, secrets={})  # fmt: skip
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env, role
        refs = [e["valueFrom"]["secretKeyRef"] for e in main["env"]
                if "secretKeyRef" in e.get("valueFrom", {})]  # fmt: skip
        assert refs and all(r["optional"] is True for r in refs), role


# --------------------------------------------------------------------------------------------
# Item 6: CPU pods see no GPU
# --------------------------------------------------------------------------------------------


def test_pods_not_given_a_gpu_see_none_of_the_nodes_gpus() -> None:
    """Where the NVIDIA runtime is the nodes' default, the image's NVIDIA_VISIBLE_DEVICES=all
    shows a pod every GPU of its node: every pod that asks for no GPU says `void`; the GPU pods
    keep what the device plugin gives them."""
    for role, pod in every_pod(config()):
        env = env_of(pod)
        if role == "train":
            assert "NVIDIA_VISIBLE_DEVICES" not in env
        else:
            assert env["NVIDIA_VISIBLE_DEVICES"] == {"name": "NVIDIA_VISIBLE_DEVICES",
                                                     "value": "void"}, role  # fmt: skip
    cfg = config("++k8s.resources.infer.limits={nvidia.com/gpu: 1}")
    cfg.infer.input = "s3://incoming/2026-01-01"
    assert "NVIDIA_VISIBLE_DEVICES" not in env_of(infer_job(cfg)["spec"]["template"]["spec"])


# --------------------------------------------------------------------------------------------
# Item 8: a working directory the pod's user can write
# --------------------------------------------------------------------------------------------


def test_every_pods_working_directory_is_a_writable_volume_root() -> None:
    """A workingDir that does not exist in the image is created by the runtime, owned by root:
    uid 10001 could not write a relative path (tracking.dir) there. Every pod works in the root
    of its scratch emptyDir, which exists and is the pod's (fsGroup, mode 0777)."""
    for role, pod in every_pod(config()):
        (main,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert main["workingDir"] in mounts, role
        assert "emptyDir" in volumes[mounts[main["workingDir"]]], role
        assert main["securityContext"]["readOnlyRootFilesystem"] is True, role


# --------------------------------------------------------------------------------------------
# Item 9: ephemeral storage, Guaranteed GPU pods, no Namespace
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scratch", ["10Gi", "500Mi"])
def test_every_pod_requests_the_ephemeral_storage_of_its_empty_dirs(scratch: str) -> None:
    """The scheduler must know a pod writes up to its two emptyDirs (scratch, /tmp): requests
    and limits of ephemeral-storage cover their size limits on every pod."""
    for role, pod in every_pod(config(f"k8s.scratch_size={scratch}")):
        (main,) = pod["containers"]
        volumes = sum(quantity(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"])
        for part in ("requests", "limits"):
            assert quantity(main["resources"][part]["ephemeral-storage"]) >= volumes, (role, part)


def test_a_scratch_size_that_is_no_quantity_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"k8s.scratch_size='10 GB': must be a Kubernetes"):
        load_config([*S3_ROOTS, "k8s.scratch_size=10 GB"], strict=True)


def test_training_pods_are_guaranteed_qos() -> None:
    """A GPU pod's requests equal its limits for CPU, memory and the GPU (QoS Guaranteed: the
    last the kubelet evicts), with the shipped defaults."""
    cfg = config()
    train = render_jobs(cfg)[1]["spec"]["template"]["spec"]["containers"][0]["resources"]
    for resource in ("cpu", "memory", str(cfg.k8s.gpu_resource)):
        assert resource in train["limits"]
        assert quantity(train["requests"][resource]) == quantity(train["limits"][resource])


def test_the_manifests_create_no_namespace_and_the_example_does() -> None:
    """Tenants of a shared cluster usually cannot create namespaces: `kubectl apply -f k8s/`
    creates none; k8s/examples/namespace.yaml has the Pod Security labels for those who can."""
    assert "Namespace" not in {d["kind"] for d in plain_documents()}
    (ns,) = [d for d in plain_documents(REPO / "k8s" / "examples") if d["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --------------------------------------------------------------------------------------------
# One place to say what is particular to a cluster
# --------------------------------------------------------------------------------------------


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize <folder>` (offline), as documents."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (kubectl kustomize renders the overlay)")
    done = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def secret_names(container: dict[str, Any]) -> set[str]:
    """The Secrets a container's S3 keys come from."""
    refs = [e["valueFrom"].get("secretKeyRef") for e in container["env"] if "valueFrom" in e]
    return {ref["name"] for ref in refs if ref and ref["key"].startswith("AWS_")}


def test_kubectl_reads_from_k8s_only_the_plain_manifests() -> None:
    """`kubectl apply -f k8s/` must keep working beside the kustomize base: kubectl's file reader
    (the one `apply -f` uses; `label --local` needs no API server) takes the .yaml files of the
    folder itself, not `k8s/Kustomization`, the components or the examples."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run(["kubectl", "label", "--local", "-f", str(REPO / "k8s"), "probe=1",
                           "-o", "name"], capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in plain_documents()]
    assert [line.split("/", 1)[0].split(".")[0] + "/" + line.split("/", 1)[1]
            for line in done.stdout.split()] == expected  # fmt: skip


def launcher_config(docs: list[dict[str, Any]]) -> tuple[DictConfig, list[str]]:
    """The config the CronJob's launcher composes: its command line as the kubelet expands it
    (ConfigMap values, its own namespace), minus `python -m pipeline.launch --cluster k8s`."""
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    pod = cronjob_pod(docs)
    (main,) = pod["containers"]
    env = resolve_env(pod, main, pod_name="launcher-0", namespace=cron["metadata"]["namespace"],
                      configmaps={cm["metadata"]["name"]: cm["data"]}, secrets={})  # fmt: skip
    overrides = [expand(part, env) for part in main["command"][5:]]
    cfg = load_config(overrides)
    cfg.run_id = RUN_ID
    return cfg, overrides


def test_the_overlay_puts_the_users_values_on_every_object_and_job() -> None:
    """`kubectl kustomize overlays/example`: the user's namespace, image, Secret, bucket, pull
    Secret and node selectors (each written once in the overlay) reach every object, and through
    the CronJob's command the launcher's config and so every stage Job; neither the placeholder
    namespace nor the placeholder image appears anywhere."""
    docs = kustomize(OVERLAY)
    text = yaml.safe_dump_all(docs)
    assert "registry.example.com" not in text
    assert "namespace: masksuite" not in text
    assert {d["metadata"]["namespace"] for d in docs} == {USER["namespace"]}
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert {s["namespace"] for s in binding["subjects"]} == {USER["namespace"]}
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    for name in ("masksuite-launcher", "masksuite-stage"):
        assert accounts[name]["imagePullSecrets"] == [{"name": "regcred"}]
    (launcher,) = cronjob_pod(docs)["containers"]
    assert launcher["image"] == USER["image"]
    assert secret_names(launcher) == {USER["secret"]}

    cfg, overrides = launcher_config(docs)
    assert cfg.k8s.namespace == USER["namespace"] and cfg.k8s.image == USER["image"]
    assert cfg.store.root == USER["bucket"]
    for job in render_jobs(cfg, overrides):
        assert job["metadata"]["namespace"] == USER["namespace"]
        pod = job["spec"]["template"]["spec"]
        (main,) = pod["containers"]
        assert main["image"] == USER["image"]
        assert secret_names(main) == {USER["secret"]}
        expected = dict(USER["node_selector"])
        if job["metadata"]["labels"]["masksuite/stage"] == "train":
            expected.update(USER["train_node_selector"])
            assert {"key": "nvidia.com/gpu", "operator": "Exists",
                    "effect": "NoSchedule"} in pod["tolerations"]  # fmt: skip
        assert pod["nodeSelector"] == expected


def test_the_plain_manifests_pass_the_same_values_to_the_launcher() -> None:
    """Without kustomize, `kubectl apply -f k8s/` and the ConfigMap: the launcher gets the
    CronJob's namespace, the ConfigMap's Secret and selectors, and the shipped defaults hold."""
    cfg, _ = launcher_config(plain_documents())
    defaults = config()
    for key in ("namespace", "image", "node_selector", "tolerations", "train_node_selector",
                "train_tolerations"):  # fmt: skip
        assert cfg.k8s[key] == defaults.k8s[key], key
    assert cfg.k8s.s3.secret == defaults.k8s.s3.secret


@pytest.mark.parametrize(
    ("component", "annotation", "policy"),
    [
        ("aws-irsa", "eks.amazonaws.com/role-arn", None),
        ("gke-workload-identity", "iam.gke.io/gcp-service-account", "egress-gke-metadata"),
    ],
)
def test_an_identity_component_annotates_both_service_accounts(
    component: str, annotation: str, policy: str | None, tmp_path: Path
) -> None:
    """Cloud identity instead of static keys: the component adds its annotation to the
    launcher's and the stages' ServiceAccounts (and, for GKE, the egress to its metadata
    server); the Secret stays optional."""
    k8s = os.path.relpath(REPO / "k8s", tmp_path)  # kustomize takes relative paths only
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{k8s}]\ncomponents: [{k8s}/components/{component}]\nnamespace: vision-team\n"
    )
    docs = kustomize(tmp_path)
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"
                and d["metadata"]["name"].startswith("masksuite-")]  # fmt: skip
    assert len(accounts) == 2
    assert all(annotation in a["metadata"]["annotations"] for a in accounts)
    policies = {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert ("egress-gke-metadata" in policies) == (policy is not None)


@pytest.mark.parametrize(
    ("command", "args"),
    [
        (launch_main, ["--dry-run", *S3_ROOTS]),
        (launch_main, ["--show-jobs", f"run_id={RUN_ID}", *S3_ROOTS]),
        (infer_main, ["--dry-run", f"run_id={RUN_ID}", S3_ROOTS[1], "infer.input=s3://in/x"]),
    ],
)
def test_printing_jobs_with_the_placeholder_image_warns_in_one_line(
    command: Any, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--dry-run`, `--show-jobs` and infer's `--dry-run` say, on stderr, that the Jobs they
    print would never start while k8s.image is the shipped placeholder; with a real image they
    say nothing."""
    assert command(["--cluster", "k8s", *args]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("warning: k8s.image")]  # fmt: skip
    assert len(warnings) == 1 and "registry.example.com/masksuite" in warnings[0]
    assert command(["--cluster", "k8s", *args, "k8s.image=registry.vision.example.org/m:1"]) == 0
    assert "warning: k8s.image" not in capsys.readouterr().err
