"""Least privilege on Kubernetes (issue 26, finding 11): what an attacker with a say in a run's
overrides, or a photo that subverts a decoding pod, can reach through the manifests.

No Kubernetes API server, kubelet or network plugin can run on these machines, so what is shown
here is shown on the manifests, with faithful stand-ins for the parts of Kubernetes that act on
them: the kubelet's `$(VAR)` expansion of command and args (tests/kubelet.py `expand`, a port of
k8s.io/kubernetes/third_party/forked/golang/expansion), the NetworkPolicy rules (a small
evaluator of networking.k8s.io/v1 egress semantics below), and the API server the launcher reads
its own pod from (tests/fake_apiserver.py, HTTPS with a bearer token, through the official
client). Real enforcement (the CNI, admission, the kubelet itself) only a cluster shows.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client
from omegaconf import DictConfig

from pipeline.commands.infer import main as infer_main
from pipeline.commands.launch import main as launch_main
from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError
from pipeline.orchestration import k8s
from pipeline.orchestration.k8s import STAGES, infer_job, launch_k8s, launcher_job, render_jobs
from pipeline.storage.store import LocalStore
from tests.fake_apiserver import FakeApiServer
from tests.kubelet import PodRun, expand, resolve_env

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "20261127T000000Z-abc123"
S3_ROOTS = ("data.root=s3://datasets/mask", "store.root=s3://mask-runs/test")
DIGEST = "sha256:" + "0123456789abcdef" * 4
#: k8s.image's default (pipeline/conf/k8s/default.yaml).
IMAGE_TAG = "registry.example.com/masksuite:0.1.0"
#: What the example Secrets hold in these tests: the values an expansion would leak.
SECRETS = {
    name: {"AWS_ACCESS_KEY_ID": f"AKIA-{name}", "AWS_SECRET_ACCESS_KEY": f"s3cr3t-{name}"}
    for name in ("masksuite-s3", "s3-read", "s3-prepare", "s3-train", "s3-vote")
}
SECRETS["wandb"] = {"WANDB_API_KEY": "wandb-key"}
SECRETS["hook"] = {"MASKSUITE_NOTIFY_URL": "https://hooks.example.com/T0/secret"}


def config(*overrides: str) -> DictConfig:
    cfg = load_config([*S3_ROOTS, *overrides])
    cfg.run_id = RUN_ID
    return cfg


def every_job(cfg: DictConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """(role, Job) of every Job the suite renders: the stages, the launcher and an infer Job."""
    yield from zip(STAGES, render_jobs(cfg), strict=True)
    yield "launcher", launcher_job(cfg, [])
    cfg.infer.input = "s3://incoming/2026-01-01"
    yield "infer", infer_job(cfg)


def main_container(job: dict[str, Any]) -> dict[str, Any]:
    (main,) = job["spec"]["template"]["spec"]["containers"]
    return main


def env_refs(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each variable's secretKeyRef (name, key), for the variables that come from a Secret."""
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def kubelet_args(job: dict[str, Any]) -> list[str]:
    """The command the container receives: the kubelet builds the environment (the Secrets'
    values included) and expands `$(VAR)` in command and args with it."""
    pod = job["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    env = resolve_env(pod, main, pod_name="pod-0", namespace="masksuite", configmaps={},
                      secrets=SECRETS)  # fmt: skip
    return [expand(part, env) for part in main["command"] + main.get("args", [])]


# --------------------------------------------------------------------------------------------
# `$(VAR)` in an override: Kubernetes would put the Secret's value in the pod's arguments
# --------------------------------------------------------------------------------------------


def test_the_kubelet_stand_in_expands_as_kubernetes_does() -> None:
    """tests/kubelet.py's `expand` follows the Go rule the kubelet applies to command and args."""
    env = {"X": "v", "a.b": "w"}
    cases = {
        "$(X)": "v",
        "$$(X)": "$(X)",  # the escape
        "$$$(X)": "$v",
        "$(UNDEFINED)": "$(UNDEFINED)",  # kept as written
        "$(a.b)": "w",  # a name is everything up to ")"
        "$(FOO$(X))": "$(FOO$(X))",  # the name is "FOO$(X": undefined, kept
        "$(X": "$(X",  # no closing parenthesis
        "a$b$": "a$b$",
        "$$": "$",
    }
    for text, want in cases.items():
        assert expand(text, env) == want, text


def test_a_dollar_reference_in_an_override_reaches_every_pod_literally(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An override `tracking.project='x$(AWS_SECRET_ACCESS_KEY)'` (from a wrapper script, a
    colleague's command line, a ConfigMap value passed on by the launcher) is copied into every
    pod's arguments. Unescaped, the kubelet would replace it with the S3 secret key, which then
    sits in the pod spec's expansion, the process list, the W&B project name and the logs.
    Rendered, it is `$$(...)`: the pod receives the text as written."""
    attack = "tracking.project='x$(AWS_SECRET_ACCESS_KEY)'"
    overrides = ["suite=single", *S3_ROOTS, attack]
    assert launch_main(["--cluster", "k8s", "--show-jobs", "--resume", RUN_ID, *overrides]) == 0
    stage_jobs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert launch_main(["--cluster", "k8s", "--dry-run", "--resume", RUN_ID, *overrides]) == 0
    (launcher,) = yaml.safe_load_all(capsys.readouterr().out)
    infer_args = ["--cluster", "k8s", "--dry-run", f"run_id={RUN_ID}", S3_ROOTS[1], attack,
                  "infer.input=s3://incoming/2026-01-01"]  # fmt: skip
    assert infer_main(infer_args) == 0
    (infer,) = yaml.safe_load_all(capsys.readouterr().out)
    for job in [*stage_jobs, launcher, infer]:
        name = job["metadata"]["name"]
        assert "tracking.project='x$$(AWS_SECRET_ACCESS_KEY)'" in main_container(job)["command"]
        received = kubelet_args(job)
        assert attack in received, name
        assert not any("s3cr3t" in arg for arg in received), name


def test_a_literal_dollar_in_a_value_is_kept() -> None:
    """A `$` that is no reference (a password-like folder name) also reaches the pod unchanged."""
    value = "data.label_fix=s3://fixes/$$weird$name.csv"
    prepare = render_jobs(config(), [*S3_ROOTS, value])[0]
    assert value in kubelet_args(prepare)


# --------------------------------------------------------------------------------------------
# Egress: a NetworkPolicy evaluator (networking.k8s.io/v1 semantics) over k8s/
# --------------------------------------------------------------------------------------------


def policies(*paths: str) -> list[dict[str, Any]]:
    """The NetworkPolicies of these files (default: what `kubectl apply -f k8s/` applies)."""
    files = [REPO / p for p in paths] or sorted((REPO / "k8s").glob("*.yaml"))
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) matches `labels`; {} matches all."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def peer_matches(peer: dict[str, Any], policy_ns: str, dest: dict[str, Any]) -> bool:
    """An egress peer matches the destination: an ipBlock its address (any destination's,
    pods' included, which some plugins allow), or a namespace / pod selector its pod."""
    if "ipBlock" in peer:
        ip = ipaddress.ip_address(dest["ip"])
        block = peer["ipBlock"]
        if ip not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(ip in ipaddress.ip_network(c) for c in block.get("except", []))
    if "pod" not in dest:  # selectors only match pods
        return False
    ns_labels = {"kubernetes.io/metadata.name": dest["namespace"], **dest.get("ns_labels", {})}
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif dest["namespace"] != policy_ns:
        return False
    return selects(peer.get("podSelector") or {}, dest["pod"])


def port_matches(port: dict[str, Any], dest: dict[str, Any]) -> bool:
    return port.get("protocol", "TCP") == dest["protocol"] and port.get("port") in (
        None,
        dest["port"],
    )


def egress_allowed(
    pod_labels: dict[str, str], dest: dict[str, Any], applied: list[dict[str, Any]]
) -> bool:
    """Whether a pod of namespace masksuite may open a connection to `dest` under `applied`:
    a pod no Egress policy selects may go anywhere; a selected one only where some rule of some
    selecting policy allows (policies add up)."""
    selecting = [
        p
        for p in applied
        if p["metadata"]["namespace"] == "masksuite"
        and "Egress" in p["spec"].get("policyTypes", [])
        and selects(p["spec"]["podSelector"], pod_labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("egress") or []:
            peers, ports = rule.get("to") or [], rule.get("ports") or []
            to_ok = not peers or any(peer_matches(p, "masksuite", dest) for p in peers)
            port_ok = not ports or any(port_matches(p, dest) for p in ports)
            if to_ok and port_ok:
                return True
    return False


#: Destinations: where pods must get, and where a subverted one must not.
METADATA = {"ip": "169.254.169.254", "protocol": "TCP", "port": 80}
INTERNET = {"ip": "93.184.216.34", "protocol": "TCP", "port": 443}
API_SERVER = {"ip": "10.96.0.1", "protocol": "TCP", "port": 443}
DNS = {"ip": "10.96.0.10", "protocol": "UDP", "port": 53, "namespace": "kube-system",
       "pod": {"k8s-app": "kube-dns"}}  # fmt: skip
STORE = {"ip": "10.244.3.7", "protocol": "TCP", "port": 9000, "namespace": "minio",
         "pod": {"app": "minio"}}  # fmt: skip
OTHER_SERVICE = {"ip": "10.244.5.9", "protocol": "TCP", "port": 5432, "namespace": "billing",
                 "pod": {"app": "postgres"}}  # fmt: skip


def pod_labels() -> dict[str, dict[str, str]]:
    """The labels of each role's pods, as rendered (and the CronJob's launcher pod)."""
    labels = {role: job["spec"]["template"]["metadata"]["labels"]
              for role, job in every_job(config())}  # fmt: skip
    cron = [d for p in (REPO / "k8s").glob("*.yaml") for d in yaml.safe_load_all(p.read_text())
            if d and d["kind"] == "CronJob"]  # fmt: skip
    labels["cronjob"] = cron[0]["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return labels


def test_no_pod_reaches_the_metadata_endpoint_or_the_internet_only_dns_and_the_store() -> None:
    """The pods that decode photos uploaded by others (prepare, train, infer) and vote reach DNS
    and the store, and nothing else: not the node's cloud credentials at 169.254.169.254, not the
    internet, not another team's database. The launcher reaches the API server too."""
    applied = policies()
    for role, labels in pod_labels().items():
        assert egress_allowed(labels, DNS, applied), role
        assert egress_allowed(labels, {**DNS, "protocol": "TCP"}, applied), role
        assert egress_allowed(labels, STORE, applied), role
        assert not egress_allowed(labels, METADATA, applied), role
        assert not egress_allowed(labels, {**METADATA, "port": 443}, applied), role
        assert not egress_allowed(labels, OTHER_SERVICE, applied), role
        launcher = role in ("launcher", "cronjob")
        assert egress_allowed(labels, API_SERVER, applied) == launcher, role
        assert egress_allowed(labels, {**API_SERVER, "port": 6443}, applied) == launcher, role
        if not launcher:
            assert not egress_allowed(labels, INTERNET, applied), role
    # Ingress stays refused for every pod of the namespace.
    (deny,) = [p for p in applied if p["metadata"]["name"] == "deny-ingress"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_w_and_b_egress_is_the_training_pods_and_only_where_applied() -> None:
    """W&B is reached only by the pods that track (train), and only once the example policy is
    applied (k8s.wandb_secret set); the metadata endpoint and the cluster's private ranges stay
    out even then."""
    labels = pod_labels()
    applied = policies()
    assert not egress_allowed(labels["train"], INTERNET, applied)
    wandb = [p for p in policies("k8s/examples/egress-wandb-and-webhook.yaml")
             if p["metadata"]["name"] == "egress-wandb"]  # fmt: skip
    with_wandb = applied + wandb
    assert egress_allowed(labels["train"], INTERNET, with_wandb)
    for role in ("prepare", "vote", "infer", "launcher"):
        assert egress_allowed(labels[role], INTERNET, with_wandb) == (role == "launcher"), role
    for dest in (METADATA, {**METADATA, "port": 443}, {**OTHER_SERVICE, "port": 443}):
        assert not egress_allowed(labels["train"], dest, with_wandb)


def test_every_network_policy_validates_strictly() -> None:
    for policy in policies() + policies("k8s/examples/egress-wandb-and-webhook.yaml"):
        kubernetes_validate.validate(policy, "1.33.0", strict=True)


# --------------------------------------------------------------------------------------------
# Credentials per role
# --------------------------------------------------------------------------------------------


def test_only_the_training_pods_get_the_w_and_b_key_and_the_launcher_no_webhook() -> None:
    """W&B is used by training alone (pipeline/stages/train.py): prepare, vote, infer and the
    launcher, which read photos or the store, get no WANDB_API_KEY; the launcher runs no stage,
    so it gets no webhook either. With the defaults every pod still gets the one S3 Secret."""
    cfg = config("k8s.wandb_secret=wandb", "k8s.notify_secret=hook")
    roles = set()
    for role, job in every_job(cfg):
        roles.add(role)
        refs = env_refs(main_container(job))
        assert ("WANDB_API_KEY" in refs) == (role == "train"), role
        assert ("MASKSUITE_NOTIFY_URL" in refs) == (role != "launcher"), role
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert refs[var] == {"name": "masksuite-s3", "key": var, "optional": True}, role
    assert roles == set(k8s.ROLES)


def test_each_role_reads_its_own_s3_secret_where_the_config_names_one() -> None:
    """`k8s.s3.secrets.<role>` scopes the keys (a store with per-prefix policies): prepare and
    infer never hold the key that may write models or latest.json; a role left null falls back
    to k8s.s3.secret."""
    cfg = config("k8s.s3.secrets.prepare=s3-prepare", "k8s.s3.secrets.train=s3-train",
                 "k8s.s3.secrets.vote=s3-vote", "k8s.s3.secrets.infer=s3-read",
                 "k8s.s3.secrets.launcher=s3-read")  # fmt: skip
    want = {"prepare": "s3-prepare", "train": "s3-train", "vote": "s3-vote", "infer": "s3-read",
            "launcher": "s3-read"}  # fmt: skip
    for role, job in every_job(cfg):
        refs = env_refs(main_container(job))
        assert refs["AWS_SECRET_ACCESS_KEY"]["name"] == want[role], role
        assert refs["AWS_ACCESS_KEY_ID"]["name"] == want[role], role
        # the kubelet stand-in resolves them: each pod sees its own key and no other
        env = resolve_env(job["spec"]["template"]["spec"], main_container(job), pod_name="p",
                          namespace="masksuite", configmaps={}, secrets=SECRETS)  # fmt: skip
        assert env["AWS_SECRET_ACCESS_KEY"] == f"s3cr3t-{want[role]}"
    partial = config("k8s.s3.secrets.infer=s3-read")
    for role, job in every_job(partial):
        name = env_refs(main_container(job))["AWS_SECRET_ACCESS_KEY"]["name"]
        assert name == ("s3-read" if role == "infer" else "masksuite-s3"), role


# --------------------------------------------------------------------------------------------
# The image by digest
# --------------------------------------------------------------------------------------------


def test_an_image_digest_pins_every_pod_and_a_bad_one_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = config(f"k8s.image_digest={DIGEST}", "k8s.image=registry.example.com:5000/ml/app:0.1")
    for role, job in every_job(cfg):
        assert main_container(job)["image"] == f"registry.example.com:5000/ml/app@{DIGEST}", role
        skipped = {v.split("=", 1)[0] for k, v in job["metadata"]["annotations"].items()
                   if k.startswith("checkov.io/skip")}  # fmt: skip
        assert "CKV_K8S_43" not in skipped, role  # the image is pinned: no skip needed
        kubernetes_validate.validate(job, "1.33.0", strict=True)
    for bad in ("sha256:abc", "sha256:" + "A" * 64, "md5:" + "0" * 64, "0" * 64):
        args = ["--cluster", "k8s", "--show-jobs", f"run_id={RUN_ID}", *S3_ROOTS,
                f"k8s.image_digest='{bad}'"]  # fmt: skip
        assert launch_main(args) == 1
        err = capsys.readouterr().err
        assert "k8s.image_digest" in err and "64 lower-case hex digits" in err, err
        with pytest.raises(ConfigError, match=r"k8s\.image_digest="):
            k8s.image_ref(config(f"k8s.image_digest='{bad}'"))


def launcher_pod(image_id: str) -> dict[str, Any]:
    """The launcher's own pod as the API server returns it (status from the kubelet)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "masksuite-nightly-29001-abcde", "namespace": "masksuite"},
        "spec": {"containers": [{"name": "launcher", "image": IMAGE_TAG}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "launcher", "image": IMAGE_TAG,
                 "imageID": image_id, "ready": True, "restartCount": 0,
                 "started": True, "state": {"running": {}}},
            ],
        },
    }  # fmt: skip


def launch_through_fake_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image_id: str, with_pod_env: bool = True
) -> list[str]:
    """Run the launcher's driver against tests/fake_apiserver.py (HTTPS, bearer token, the
    official client), as if in its pod; returns the image of each pod the Job controller ran."""
    images: list[str] = []

    def run_pod(job: dict[str, Any], index: int | None) -> PodRun:
        images.append(main_container(job)["image"])
        return PodRun(job["metadata"]["name"], 0, "")

    monkeypatch.setattr("pipeline.orchestration.k8s.run_store", lambda cfg: LocalStore(tmp_path))
    pod = launcher_pod(image_id)
    if with_pod_env:
        monkeypatch.setenv(k8s.POD_NAME_ENV, pod["metadata"]["name"])
        monkeypatch.setenv(k8s.POD_NAMESPACE_ENV, "masksuite")
    else:
        monkeypatch.delenv(k8s.POD_NAME_ENV, raising=False)
    with FakeApiServer(tmp_path / "api", run_pod) as server:
        server.pod_objects[pod["metadata"]["name"]] = pod
        conf = client.Configuration()
        conf.host = f"https://127.0.0.1:{server.port}"
        conf.ssl_ca_cert = str(server.token_dir / "ca.crt")
        conf.api_key = {"authorization": f"Bearer {server.token}"}
        api = client.BatchV1Api(client.ApiClient(conf))
        cfg = config("suite=single", "k8s.poll_seconds=0.01")
        assert launch_k8s(cfg, api=api, sleep=time.sleep) == 0
        assert server.unauthorized == 0
    return images


def test_the_launcher_pins_the_stage_jobs_to_its_own_image_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher reads its pod's `status.containerStatuses[].imageID` and creates every stage
    Job with `<repository>@sha256:...`: a tag pushed again mid-run (a new build, or a hostile
    push to a registry several teams use) changes no later stage's code."""
    image_id = f"registry.example.com/masksuite@{DIGEST}"
    images = launch_through_fake_api(tmp_path, monkeypatch, image_id)
    assert images == [f"registry.example.com/masksuite@{DIGEST}"] * 3  # prepare, train, vote


def test_the_launcher_leaves_the_tag_when_its_image_is_another_or_has_no_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tag = IMAGE_TAG
    caplog.set_level(logging.WARNING, logger="pipeline.orchestration.k8s")
    other = launch_through_fake_api(tmp_path / "a", monkeypatch, f"docker.io/evil/app@{DIGEST}")
    assert other == [tag] * 3 and "not k8s.image" in caplog.text
    local = launch_through_fake_api(tmp_path / "b", monkeypatch, "sha256:" + "e" * 64)
    assert local == [tag] * 3 and "has no digest" in caplog.text
    outside = launch_through_fake_api(tmp_path / "c", monkeypatch, image_id="",
                                      with_pod_env=False)  # fmt: skip
    assert outside == [tag] * 3


# --------------------------------------------------------------------------------------------
# What held: restricted pod security in every rendered Job and in the CronJob
# --------------------------------------------------------------------------------------------


def test_every_pod_keeps_the_restricted_pod_security_profile() -> None:
    """Pod Security `restricted`: non-root, read-only root filesystem, all capabilities dropped,
    no privilege escalation, the RuntimeDefault seccomp profile; only the launcher mounts a
    token. Checked on every Job the suite renders (with every option that adds to a pod) and on
    the CronJob's pod."""
    cfg = config("k8s.wandb_secret=wandb", "k8s.notify_secret=hook",
                 "k8s.train_runtime_class=nvidia", "k8s.train_priority_class=gpu")  # fmt: skip
    pods = {role: job["spec"]["template"]["spec"] for role, job in every_job(cfg)}
    cron = [d for p in (REPO / "k8s").glob("*.yaml") for d in yaml.safe_load_all(p.read_text())
            if d and d["kind"] == "CronJob"]  # fmt: skip
    pods["cronjob"] = cron[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for role, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, role
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, role
        assert pod["automountServiceAccountToken"] is (role in ("launcher", "cronjob")), role
        assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
        for c in pod["containers"] + pod.get("initContainers", []):
            sec = c["securityContext"]
            assert sec["runAsNonRoot"] is True and sec["runAsUser"] != 0, role
            assert sec["readOnlyRootFilesystem"] is True, role
            assert sec["allowPrivilegeEscalation"] is False, role
            assert sec["privileged"] is False, role
            assert sec["capabilities"] == {"drop": ["ALL"]}, role
            assert all("hostPath" not in v for v in pod.get("volumes", [])), role
