"""Run a suite on Kubernetes: `python -m pipeline.launch --cluster k8s [--dry-run] [overrides]`.

A run is three Jobs in the configured namespace (settings: `pipeline/conf/k8s/default.yaml`),
created one after another by the launcher, a process that runs this module's driver (in the
nightly CronJob's pod, in the launcher Job that `--dry-run` prints, or on a workstation):
1. `<prefix>-<run>-prepare`: `python -m jobs.prepare`;
2. `<prefix>-<run>-train`: an Indexed Job, one index per model of the suite (`JOB_COMPLETION_INDEX`
   selects it), one GPU a pod, that trains then predicts its model (`python -m jobs.model`);
   pods evicted or preempted (`DisruptionTarget`) are retried without using up
   `backoffLimitPerIndex`, and resume from the model's last checkpoint;
3. `<prefix>-<run>-vote`: `python -m jobs.vote`.

The module has two halves: rendering (pure functions from the config to manifest dicts) and the
driver (`run_jobs`), which creates the Jobs in order with any object that has the methods of
`JobsApi` (the official client's `BatchV1Api`, or a fake in tests), waits on each and stops at the
first failure. A Job is created only when the stages it needs are done, so no pod waits (and no
GPU is held) for an earlier stage, and each Job's `activeDeadlineSeconds` times its own work.

Every Job carries the run id (annotation, exact) and the run's data fingerprint (label), so that a
launcher started again (the nightly CronJob after a launcher died, or the launcher Job's pod
retried after a node drain) finds the run still active with the same inputs and follows it
instead of starting a second one beside it (`active_run`).

Least privilege: every command is rendered literally (`$` as `$$`, so that no `$(VAR)` in a
user's override is expanded by the kubelet into a Secret's value); each pod gets only the
credentials of its role (`k8s.s3.secrets.<role>`, WANDB_API_KEY for training alone, no webhook
for the launcher); and a launcher running in a pod pins the stage Jobs to its own image's digest
(`pin_image`), or `k8s.image_digest` pins every pod. Egress is limited by k8s/30-networkpolicy.yaml.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Protocol

import yaml
from omegaconf import DictConfig, OmegaConf

from pipeline.core.config import model_specs
from pipeline.core.errors import ConfigError, PipelineError, StageFailed
from pipeline.orchestration.checks import K8S_ROLES
from pipeline.orchestration.executor import LaunchRequest, pinned_infer_config
from pipeline.orchestration.graph import KINDS, stage_graph
from pipeline.orchestration.k8s_pods import PodsApi, PodWatch, failed_pod_indexes, pods_api
from pipeline.orchestration.k8s_retry import Patience, call_api
from pipeline.orchestration.status import (
    QueueEntry,
    RunStatus,
    cancel_run,
    read_submissions,
    record_submission,
    run_models,
    run_status,
)
from pipeline.run.fingerprint import recorded_fingerprint
from pipeline.run.history import read_gate, run_exit_status
from pipeline.run.notify import NOTIFY_URL_ENV
from pipeline.run.state import require_run_id, run_store

log = logging.getLogger("pipeline.orchestration.k8s")

#: The Job that carries each kind of the stage graph (pipeline/orchestration/graph.py): the
#: `model` kind is the Indexed Job `train`, one index per model; its settings are the `train`
#: keys of the k8s config group (resources.train, active_deadline_seconds.train, ...).
JOB_OF_KIND = {"prepare": "prepare", "model": "train", "vote": "vote"}
#: The run's Jobs, in order.
STAGES = tuple(JOB_OF_KIND[kind] for kind in KINDS)
#: Where the pods' writable volumes are mounted (the root filesystem is read-only).
SCRATCH_DIR = "/scratch"
TMP_DIR = "/tmp"
#: Overrides the launcher sets itself for each pod; the user's values for them are dropped.
OWN_KEYS = ("run_id", "model_name")
#: Label keys on the Jobs and their pods (label values are lower case, at most 63 characters).
RUN_LABEL = "masksuite/run-id"
STAGE_LABEL = "masksuite/stage"
FINGERPRINT_LABEL = "masksuite/fingerprint"
#: Annotation with the exact run id (run ids have upper-case letters; labels are lowered).
RUN_ANNOTATION = "masksuite/run-id"
#: Who a pod is, for its credentials (`k8s.s3.secrets.<role>`): the launcher, the run's stage
#: Jobs and the infer Job.
ROLES = K8S_ROLES
#: Roles whose pods report to W&B (pipeline/stages/train.py is the only user of the Tracker):
#: only they get WANDB_API_KEY.
TRACKING_ROLES = ("train",)
#: Roles whose pods may send the notify webhook (a stage that fails, the publish gate): every
#: pod that runs stages, not the launcher.
NOTIFY_ROLES = (*STAGES, "infer")
#: The launcher's own pod name and namespace (downward API), to read its image's digest.
POD_NAME_ENV = "MASKSUITE_POD_NAME"
POD_NAMESPACE_ENV = "MASKSUITE_POD_NAMESPACE"
#: An image digest (`k8s.image_digest`, or a running container's imageID).
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------------
# Rendering: configuration -> manifests (plain dicts)
# --------------------------------------------------------------------------------------------


def job_name(cfg: DictConfig, stage: str) -> str:
    """`<prefix>-<run id>-<stage>`, lower-cased to a valid DNS label (at most 63 characters)."""
    raw = f"{cfg.k8s.job_prefix}-{require_run_id(cfg)}-{stage}".lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")
    if len(name) > 63:
        raise ConfigError(f"job name {name!r} is longer than 63 characters: shorten k8s.job_prefix")
    return name


def pass_through(overrides: Iterable[str]) -> list[str]:
    """The user's Hydra overrides minus the keys the launcher sets per pod (run_id, ...)."""
    kept = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key not in OWN_KEYS:
            kept.append(item)
    return kept


def check_shared_store(cfg: DictConfig) -> None:
    """Refuse a local `store.root`: every pod writes to it and the next one reads it."""
    store_root = str(cfg.store.root)
    if not store_root.startswith("s3://"):
        raise ConfigError(
            f"store.root={store_root!r} is a local folder: Kubernetes pods run on different nodes "
            "and cannot share it; use object storage, e.g. store.root=s3://bucket/prefix"
        )


def check_cluster_paths(cfg: DictConfig) -> None:
    """Refuse paths the pods cannot share: `store.root` must be object storage (every pod writes
    to it and the next stage reads it), and a local `data.root` must be absolute (a folder baked
    into the image; a relative one would resolve against each pod's empty working directory)."""
    check_shared_store(cfg)
    data_root = str(cfg.data.root)
    if not data_root.startswith("s3://") and not data_root.startswith("/"):
        raise ConfigError(
            f"data.root={data_root!r} is a relative local path, which no pod has; use "
            "s3://bucket/prefix (or an absolute path of a folder inside the image)"
        )


def _plain(node: Any) -> Any:
    """A config node as plain Python data (dicts and lists); None stays None."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def k8s_literal(text: str) -> str:
    """`text` as a container's command or args take it literally: Kubernetes expands `$(VAR)` in
    them from the container's environment (`$(AWS_SECRET_ACCESS_KEY)` in an override would
    become the key itself) and `$$` is its escape for one `$`."""
    return text.replace("$", "$$")


def s3_secret(cfg: DictConfig, role: str) -> str | None:
    """The Secret holding the S3 keys of `role`'s pods: `k8s.s3.secrets.<role>` when set, else
    the one `k8s.s3.secret` (null: no keys, the cluster gives pods an identity)."""
    if role not in ROLES:
        raise ConfigError(f"unknown pod role {role!r}; valid: {list(ROLES)}")
    per_role = cfg.k8s.s3.get("secrets") or {}
    name = per_role.get(role) or cfg.k8s.s3.secret
    return str(name) if name else None


def container_env(cfg: DictConfig, role: str) -> list[dict[str, Any]]:
    """Environment of a container of `role` (ROLES): AWS variables for pipeline/storage/store.py,
    scratch paths for a read-only root filesystem, and secrets through `secretKeyRef` only, each
    to the roles that use it: the S3 keys of the role's Secret, WANDB_API_KEY to the pods that
    track (TRACKING_ROLES), the webhook to the pods that run stages (NOTIFY_ROLES)."""
    from pipeline.ml.device import CPU_LIMIT_ENV  # here: pipeline.ml imports torch

    k = cfg.k8s
    home = f"{SCRATCH_DIR}/home"
    cache = f"{SCRATCH_DIR}/cache"
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": home},
        {"name": "TMPDIR", "value": TMP_DIR},
        {"name": "XDG_CACHE_HOME", "value": cache},
        {"name": "TORCH_HOME", "value": f"{cache}/torch"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{cache}/torchinductor"},
        {"name": "TRITON_CACHE_DIR", "value": f"{cache}/triton"},
        {"name": "MPLCONFIGDIR", "value": f"{cache}/matplotlib"},
        {"name": "WANDB_DIR", "value": f"{SCRATCH_DIR}/wandb"},
        {"name": "WANDB_CACHE_DIR", "value": f"{cache}/wandb"},
        {"name": "WANDB_CONFIG_DIR", "value": f"{home}/.config/wandb"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "AWS_DEFAULT_REGION", "value": str(k.s3.region)},
        # The container's CPU limit (whole CPUs, rounded up): thread pools are sized from it,
        # not from the node's cores that sched_getaffinity reports inside a pod.
        {
            "name": CPU_LIMIT_ENV,
            "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}},
        },
    ]
    if k.s3.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": str(k.s3.endpoint)})
    secret = s3_secret(cfg, role)
    if secret:
        # optional: a cluster that gives pods an identity (IRSA, workload identity) and has no
        # such Secret still starts the pod, and boto3 takes its default credential chain
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = {"name": secret, "key": var, "optional": True}
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    if k.wandb_secret and role in TRACKING_ROLES:
        wandb_ref = {"name": str(k.wandb_secret), "key": "WANDB_API_KEY", "optional": True}
        env.append({"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": wandb_ref}})
    if role == "launcher":  # its own pod, to pin the stage Jobs to its image (own_image_digest)
        for var, field in ((POD_NAME_ENV, "metadata.name"),
                           (POD_NAMESPACE_ENV, "metadata.namespace")):  # fmt: skip
            env.append({"name": var, "valueFrom": {"fieldRef": {"fieldPath": field}}})
    if k.get("notify_secret") and role in NOTIFY_ROLES:
        # the webhook URL is a credential: from a Secret, not the args
        hook: dict[str, Any] = {
            "name": str(k.notify_secret),
            "key": NOTIFY_URL_ENV,
            "optional": True,
        }
        env.append({"name": NOTIFY_URL_ENV, "valueFrom": {"secretKeyRef": hook}})
    return env


CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
}
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
#: Skips of checkov checks on the rendered Jobs, each with its reason (shown by checkov).
CHECKOV_SKIPS = {
    "CKV_K8S_35": "boto3 and W&B read credentials from environment variables; they come from a "
    "Secret through secretKeyRef, never from the manifest",
    "CKV_K8S_43": "the image is configurable (k8s.image); pin it by digest with k8s.image_digest "
    "(the launcher pins the stage Jobs to its own image's digest when it runs in a pod)",
    "CKV2_K8S_6": "k8s/30-networkpolicy.yaml denies ingress to every pod of the namespace and "
    "limits egress to DNS, the object store and (launcher) the API server",
}
#: Pods evicted, preempted or deleted by a node drain get the DisruptionTarget condition: such a
#: failure is not counted against the Job's backoff limit and the pod is started again.
DISRUPTION_RULE = {
    "action": "Ignore",
    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
}


def image_ref(cfg: DictConfig) -> str:
    """The image every pod runs: `k8s.image`, pinned to `k8s.image_digest` when that is set
    (`<repository>@sha256:...`, so a tag moved mid-run cannot change the code of later pods)."""
    image, digest = str(cfg.k8s.image), cfg.k8s.get("image_digest")
    if not digest:
        return image
    digest = str(digest)
    if not DIGEST_RE.match(digest):
        raise ConfigError(
            f"k8s.image_digest={digest!r} is not an image digest: it must be sha256: followed by "
            "64 lower-case hex digits (e.g. from `podman image inspect --format "
            "'{{.Digest}}'` or the registry), or null"
        )
    name, _, pinned = image.partition("@")
    if pinned and pinned != digest:
        raise ConfigError(
            f"k8s.image={image!r} is pinned to another digest than k8s.image_digest={digest!r}; "
            "set one of them"
        )
    return f"{image_repository(name)}@{digest}"


#: The registry of the shipped config's and manifests' image name: no cluster can pull it.
PLACEHOLDER_REGISTRY = "registry.example.com/"


def warn_placeholder_image(manifests: Sequence[dict[str, Any]]) -> None:
    """One line on stderr when a printed Job runs the shipped placeholder image (`k8s.image` left
    as pipeline/conf/k8s/default.yaml has it): applied, its pods would never start."""
    images = {c["image"] for m in manifests for c in m["spec"]["template"]["spec"]["containers"]}
    placeholder = sorted(i for i in images if i.startswith(PLACEHOLDER_REGISTRY))
    if placeholder:
        print(
            f"warning: k8s.image={placeholder[0]!r} is the shipped placeholder, which no cluster "
            "can pull: push the image to your registry and set k8s.image (or IMAGE in your "
            "kustomize overlay; docs/kubernetes.md)",
            file=sys.stderr,
        )


def image_repository(image: str) -> str:
    """An image reference without its digest and tag (`host:5000/team/app:1.0` -> `host:5000/team/
    app`): a colon after the last slash starts the tag."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def asks_for_gpu(cfg: DictConfig, resources: Mapping[str, Any]) -> bool:
    """Whether `resources` (requests and limits) ask for `k8s.gpu_resource`."""
    gpu = str(cfg.k8s.gpu_resource)
    return any(gpu in (resources.get(part) or {}) for part in ("requests", "limits"))


def container(
    cfg: DictConfig, name: str, command: Sequence[str], resources: dict[str, Any], role: str
) -> dict[str, Any]:
    """One hardened container of the suite's image running `command` literally (no `$(VAR)` of
    a user's override is expanded by Kubernetes: k8s_literal), with `role`'s environment.

    Its working directory is the scratch volume's root, which exists and is writable by the
    pod's user (fsGroup), so relative paths (tracking.dir) land there. A container not given a
    GPU gets NVIDIA_VISIBLE_DEVICES=void: where the NVIDIA runtime is the nodes' default, the
    base image's `all` would otherwise show it every GPU of the node."""
    env = container_env(cfg, role)
    if not asks_for_gpu(cfg, resources):
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})
    return {
        "name": name,
        "image": image_ref(cfg),
        "imagePullPolicy": str(cfg.k8s.image_pull_policy),
        "command": [k8s_literal(str(part)) for part in command],
        "workingDir": SCRATCH_DIR,
        "env": env,
        "resources": resources,
        "securityContext": dict(CONTAINER_SECURITY),
        "volumeMounts": [
            {"name": "scratch", "mountPath": SCRATCH_DIR},
            {"name": "tmp", "mountPath": TMP_DIR},
        ],
    }


def pod_spec(
    cfg: DictConfig,
    main: dict[str, Any],
    *,
    service_account: str,
    token: bool,
    scratch_size: str,
    node_selector: dict[str, Any],
    tolerations: list[Any],
) -> dict[str, Any]:
    """The hardened pod of every Job of the suite around its one container: non-root, a
    service-account token only when `token`, size-limited scratch and /tmp volumes, where it may
    be scheduled and the registry's pull secrets."""
    pod: dict[str, Any] = {
        "serviceAccountName": service_account,
        "automountServiceAccountToken": token,
        "restartPolicy": "Never",
        "securityContext": dict(POD_SECURITY),
        "containers": [main],
        "volumes": [
            {"name": "scratch", "emptyDir": {"sizeLimit": scratch_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": scratch_size}},
        ],
    }
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    if cfg.k8s.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": str(s)} for s in cfg.k8s.image_pull_secrets]
    return pod


QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")


def scaled_quantity(quantity: str, factor: int) -> str:
    """A Kubernetes quantity times `factor`, in the same unit ("10Gi" x 2 -> "20Gi")."""
    match = QUANTITY_RE.match(str(quantity).strip())
    if not match:
        raise ConfigError(
            f"k8s.scratch_size={quantity!r} is not a Kubernetes quantity; use a number and a "
            "unit, e.g. 10Gi or 500Mi"
        )
    number = (Decimal(match.group(1)) * factor).normalize()
    return f"{number:f}{match.group(2)}"


def with_scratch_storage(resources: dict[str, Any], scratch_size: str) -> dict[str, Any]:
    """`resources` with an ephemeral-storage request and limit covering the pod's two emptyDir
    volumes (scratch and /tmp, each `scratch_size`), unless the user set them: the scheduler
    then places the pod on a node with that much local disk, and the kubelet evicts it, not its
    neighbours, when it writes more."""
    storage = scaled_quantity(scratch_size, 2)
    for part in ("requests", "limits"):
        resources.setdefault(part, {}).setdefault("ephemeral-storage", storage)
    return resources


def stage_resources(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """Requests and limits of a stage's main container: `k8s.resources.<stage>`, training's GPUs
    added to both, and the scratch volumes' ephemeral storage (with_scratch_storage)."""
    resources = _plain(cfg.k8s.resources[stage])
    if stage == "train":
        gpus = int(cfg.k8s.gpus_per_train_pod)
        if gpus > 0:
            for part in ("requests", "limits"):
                resources.setdefault(part, {})[str(cfg.k8s.gpu_resource)] = gpus
    return with_scratch_storage(resources, str(cfg.k8s.scratch_size))


def stage_command(cfg: DictConfig, stage: str, overrides: Sequence[str]) -> list[str]:
    """The main container's command: a job entry point with the run's overrides and run_id."""
    kind = next(k for k, job in JOB_OF_KIND.items() if job == stage)
    module = f"jobs.{kind}"  # the thin entry point that runs the graph's stages of this kind
    return ["python", "-m", module, *pass_through(overrides), f"run_id={require_run_id(cfg)}"]


def run_labels(cfg: DictConfig, component: str, fingerprint: str | None) -> dict[str, str]:
    """Labels of a run's Jobs and pods: the component, the run id and the data fingerprint."""
    labels = {
        "app.kubernetes.io/name": "masksuite",
        "app.kubernetes.io/component": component,
        RUN_LABEL: require_run_id(cfg).lower(),
    }
    if fingerprint:
        labels[FINGERPRINT_LABEL] = fingerprint_label(fingerprint)
    return labels


def fingerprint_label(sha256: str) -> str:
    """A fingerprint as a label value (at most 63 characters): its first 40 hex digits."""
    return sha256[:40].lower()


def stage_job(
    cfg: DictConfig, stage: str, overrides: Sequence[str] = (), fingerprint: str | None = None
) -> dict[str, Any]:
    """The Job manifest of one stage of `cfg.run_id` (`train` is an Indexed Job)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; valid: {list(STAGES)}")
    k = cfg.k8s
    name = job_name(cfg, stage)
    labels = {**run_labels(cfg, stage, fingerprint), STAGE_LABEL: stage}
    node_selector = dict(_plain(k.node_selector) or {})
    tolerations = list(_plain(k.tolerations) or [])
    if stage == "train":
        node_selector.update(_plain(k.train_node_selector) or {})
        tolerations += list(_plain(k.train_tolerations) or [])
    main = container(cfg, stage, stage_command(cfg, stage, overrides),
                     stage_resources(cfg, stage), role=stage)  # fmt: skip
    pod = pod_spec(cfg, main, service_account=str(k.service_account), token=False,
                   scratch_size=str(k.scratch_size), node_selector=node_selector,
                   tolerations=tolerations)  # fmt: skip
    if stage == "train":
        # GPU pods: a PriorityClass (to preempt, or be preempted by, other work) and a
        # RuntimeClass (e.g. "nvidia" where the GPU runtime is not the node's default).
        if k.get("train_priority_class"):
            pod["priorityClassName"] = str(k.train_priority_class)
        if k.get("train_runtime_class"):
            pod["runtimeClassName"] = str(k.train_runtime_class)
    spec: dict[str, Any] = {
        "activeDeadlineSeconds": int(k.active_deadline_seconds[stage]),
        "ttlSecondsAfterFinished": int(k.ttl_seconds_after_finished),
        # Pods evicted, preempted or deleted by a node drain get DisruptionTarget: retry them
        # without counting the failure (training resumes from models/<name>/last.json).
        "podFailurePolicy": {"rules": [DISRUPTION_RULE]},
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if stage == "train":
        count = len(model_specs(cfg))
        per_index = int(k.backoff_limit_per_index)
        spec.update(
            completionMode="Indexed",
            completions=count,
            parallelism=int(k.train_parallelism or count),
            backoffLimitPerIndex=per_index,
            maxFailedIndexes=int(k.max_failed_indexes),
            # Kubernetes 1.28 drops backoffLimitPerIndex (alpha, gate off) after defaulting an
            # unset backoffLimit to 2^31-1 for it: a model that always fails would be retried
            # until the deadline. The launcher asks the server and tightens this there
            # (fit_to_server); for the Job applied as rendered, this bound is every failure the
            # per-index limits allow in all, so from 1.29 on it never ends the Job before they
            # do (docs/kubernetes.md#kubernetes-versions).
            backoffLimit=count * (per_index + 1),
        )
    else:
        spec.update(completions=1, parallelism=1, backoffLimit=int(k.backoff_limit))
    return job_manifest(cfg, name, labels, checkov_skips(cfg), spec)


def checkov_skips(cfg: DictConfig) -> dict[str, str]:
    """The checkov skips of the Jobs: the image's pin (CKV_K8S_43) only while it is not pinned."""
    if cfg.k8s.get("image_digest") or "@" in str(cfg.k8s.image):
        return {c: why for c, why in CHECKOV_SKIPS.items() if c != "CKV_K8S_43"}
    return dict(CHECKOV_SKIPS)


def job_manifest(
    cfg: DictConfig, name: str, labels: dict[str, str], skips: dict[str, str], spec: dict[str, Any]
) -> dict[str, Any]:
    """A Job of the run: its labels, the exact run id and the checkov skips (with their reasons)
    as annotations."""
    annotations = {f"checkov.io/skip{i}": f"{check}={why}"
                   for i, (check, why) in enumerate(skips.items(), start=1)}  # fmt: skip
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": str(cfg.k8s.namespace),
            "labels": labels,
            "annotations": {RUN_ANNOTATION: require_run_id(cfg), **annotations},
        },
        "spec": spec,
    }


def render_jobs(
    cfg: DictConfig, overrides: Sequence[str] = (), fingerprint: str | None = None
) -> list[dict[str, Any]]:
    """The run's Jobs in order: prepare, train (Indexed, one index per model), vote.

    `overrides` are the user's Hydra overrides, passed on to every pod so that each stage composes
    the same configuration; `cfg` must have been composed from them and have a run_id.
    `fingerprint` (the run's data fingerprint, sha256) labels the Jobs (see `active_run`).
    """
    check_cluster_paths(cfg)
    model_specs(cfg)  # a suite without models fails here, before anything is created
    return [stage_job(cfg, stage, overrides, fingerprint) for stage in STAGES]


def infer_job(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The Job of one `python -m pipeline.infer` batch with run `cfg.run_id` (pinned by the
    caller): `python -m jobs.infer` with the user's overrides, resources `k8s.resources.infer`."""
    check_shared_store(cfg)
    for key in ("input", "output"):
        value = cfg.infer.get(key)
        if value and not str(value).startswith(("s3://", "/")):
            raise ConfigError(
                f"infer.{key}={value!r} is a relative local path, which no pod has; use "
                "s3://bucket/prefix"
            )
    k = cfg.k8s
    name = job_name(cfg, f"infer-{datetime.now(UTC):%H%M%S}")
    labels = {**run_labels(cfg, "infer", None), STAGE_LABEL: "infer"}
    command = ["python", "-m", "jobs.infer", *pass_through(overrides),
               f"run_id={require_run_id(cfg)}"]  # fmt: skip
    main = container(cfg, "infer", command, stage_resources(cfg, "infer"), role="infer")
    selector = dict(_plain(k.node_selector) or {})
    pod = pod_spec(cfg, main, service_account=str(k.service_account), token=False,
                   scratch_size=str(k.scratch_size), node_selector=selector,
                   tolerations=list(_plain(k.tolerations) or []))  # fmt: skip
    spec: dict[str, Any] = {
        "activeDeadlineSeconds": int(k.active_deadline_seconds.infer),
        "ttlSecondsAfterFinished": int(k.ttl_seconds_after_finished),
        "podFailurePolicy": {"rules": [DISRUPTION_RULE]},
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        "completions": 1,
        "parallelism": 1,
        "backoffLimit": int(k.backoff_limit),
    }
    return job_manifest(cfg, name, labels, checkov_skips(cfg), spec)


def launch_infer_k8s(
    cfg: DictConfig, overrides: Sequence[str], *, dry_run: bool, api: JobsApi | None = None
) -> int:
    """Create the infer Job (or print it with `dry_run`); returns an exit status."""
    try:
        manifest = infer_job(cfg, overrides)
        if dry_run:
            sys.stdout.write(to_yaml([manifest]))
            return 0
        create_job(api or kube_jobs_api(), manifest, poll_seconds=float(cfg.k8s.poll_seconds))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    print(f"infer job {ns}/{name} created (run {cfg.run_id}): kubectl logs -f -n {ns} job/{name}")
    return 0


#: Resources of the launcher's container: it only lists the data and follows Jobs (its two
#: scratch volumes of LAUNCHER_SCRATCH each are added as ephemeral storage).
LAUNCHER_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "512Mi"},
    "limits": {"cpu": "1", "memory": "2Gi"},
}
LAUNCHER_SCRATCH = "1Gi"
#: Seconds the launcher may run beyond the stages' deadlines (creating and following Jobs).
LAUNCHER_MARGIN_SECONDS = 3600


def launcher_job(cfg: DictConfig, launch_args: Sequence[str]) -> dict[str, Any]:
    """A Job that runs the launcher in the cluster, as the nightly CronJob does (k8s/50-cronjob.yaml
    has the same pod): `python -m pipeline.launch --cluster k8s <launch_args>`.

    This is what `--dry-run` prints for `kubectl apply -f -`: the stage Jobs are then created by
    the launcher one after another, each when the stages it needs are done. The launcher has the
    S3 keys (it fingerprints data.root and reads latest.json) and the launcher service account's
    token (it creates and follows Jobs). A launcher pod disrupted by a node drain or preemption is
    started again without counting as a failure, and the new pod follows the same run (its run id
    is in `launch_args`); any other failure fails the Job (no retry: resume by hand).
    """
    check_cluster_paths(cfg)
    k = cfg.k8s
    name = job_name(cfg, "launch")
    labels = run_labels(cfg, "launcher", None)
    command = ["python", "-m", "pipeline.launch", "--cluster", "k8s", *launch_args]
    resources = with_scratch_storage(copy.deepcopy(LAUNCHER_RESOURCES), LAUNCHER_SCRATCH)
    main = container(cfg, "launcher", command, resources, role="launcher")
    # The only pod of the suite that gets an API token: it creates and follows the Jobs.
    pod = pod_spec(cfg, main, service_account=str(k.launcher_service_account), token=True,
                   scratch_size=LAUNCHER_SCRATCH,
                   node_selector=dict(_plain(k.node_selector) or {}),
                   tolerations=list(_plain(k.tolerations) or []))  # fmt: skip
    skips = {
        **checkov_skips(cfg),
        "CKV_K8S_38": "the launcher creates and follows the run's Jobs through the API server, "
        "so its pod needs its service account token (Role in k8s/20-rbac.yaml)",
    }
    spec = {
        # Never retried on a failure of its own (resume by hand); a disrupted pod is replaced
        # (podFailurePolicy) and the new one follows the same run.
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": [DISRUPTION_RULE]},
        "activeDeadlineSeconds": launcher_deadline(cfg),
        "ttlSecondsAfterFinished": int(k.ttl_seconds_after_finished),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    return job_manifest(cfg, name, labels, skips, spec)


def launcher_deadline(cfg: DictConfig) -> int:
    """The launcher's activeDeadlineSeconds: the run's stages' deadlines together, plus a margin
    (`infer` is no stage of a run: its Jobs are created by `pipeline.stages.infer`)."""
    deadlines = cfg.k8s.active_deadline_seconds
    return sum(int(deadlines[s]) for s in STAGES) + LAUNCHER_MARGIN_SECONDS


class _PlainDumper(yaml.SafeDumper):
    """A YAML dumper that writes repeated values in full (no &anchors / *aliases)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(manifests: Sequence[dict[str, Any]]) -> str:
    """Multi-document YAML, the input `kubectl apply -f -` takes (what --dry-run and --show-jobs
    print); warns on stderr while the Jobs run the placeholder image (warn_placeholder_image)."""
    warn_placeholder_image(manifests)
    return yaml.dump_all(manifests, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------------------------
# Inside the pods: the Indexed Job's model
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The driver: create the Jobs in order, wait on each, stop at the first failure
# --------------------------------------------------------------------------------------------


class JobGone(StageFailed):
    """The Job is not (or no longer) in the API server: deleted by hand or by its TTL."""


class JobsApi(Protocol):
    """The part of `kubernetes.client.BatchV1Api` the driver uses (a fake implements it in tests).

    Methods return `kubernetes.client.V1Job` objects and raise
    `kubernetes.client.exceptions.ApiException` (status 404, 409, ...).
    """

    def create_namespaced_job(self, namespace: str, body: dict[str, Any], **kwargs: Any) -> Any: ...

    def read_namespaced_job(self, name: str, namespace: str) -> Any: ...

    def delete_namespaced_job(self, name: str, namespace: str, **kwargs: Any) -> Any: ...

    def list_namespaced_job(self, namespace: str, **kwargs: Any) -> Any: ...


def kube_jobs_api() -> JobsApi:
    """A BatchV1Api from the pod's service account (in-cluster) or else ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise ConfigError(
                f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({e})"
            ) from e
    return client.BatchV1Api()


def read_own_pod(api: Any, environ: Mapping[str, str], patience: Patience) -> Any | None:
    """The launcher's own pod (named by $MASKSUITE_POD_NAME / $MASKSUITE_POD_NAMESPACE, which its
    pod spec sets from the downward API); None outside a pod, with another Jobs API than the
    official client's, or when the pod cannot be read (a warning says what is then not done).
    An API server that does not answer is waited for as `patience` says (k8s_retry.call_api)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    name, ns = environ.get(POD_NAME_ENV), environ.get(POD_NAMESPACE_ENV)
    pods = pods_api(api)
    if not name or not ns or pods is None:
        return None
    try:
        return call_api(lambda: pods.read_namespaced_pod(name, ns),
                        f"read the launcher's pod {ns}/{name}", patience)  # fmt: skip
    except (ApiException, OSError, HTTPError) as e:
        log.warning("cannot read the launcher's pod %s/%s (%s): the stage Jobs run k8s.image as "
                    "configured and have no owner reference", ns, name,
                    getattr(e, "reason", e))  # fmt: skip
        return None


def own_image_digest(pod: Any, image: str) -> str | None:
    """The digest of the image the launcher's own `pod` runs, when that is `image` (same
    repository), read from its status (`containerStatuses[].imageID`); None when the launcher
    runs outside a pod (`pod` None) or runs another image (the stage Jobs then use `image` as
    configured, and a warning says so)."""
    if pod is None:
        return None
    statuses = getattr(pod.status, "container_statuses", None) or []
    ours = [c for c in statuses if c.name == "launcher"] or statuses[:1]
    image_id = str(ours[0].image_id or "") if ours else ""
    repository, _, digest = image_id.split("://", 1)[-1].partition("@")
    if not DIGEST_RE.match(digest):
        log.warning("the launcher's image id %r has no digest: the stage Jobs run %s as "
                    "configured", image_id, image)  # fmt: skip
        return None
    if normal_repository(repository) != normal_repository(image_repository(image)):
        log.warning("the launcher runs %s, not k8s.image=%s: the stage Jobs run k8s.image as "
                    "configured", repository, image)  # fmt: skip
        return None
    return digest


def normal_repository(repository: str) -> str:
    """A repository as container runtimes report it: `app` -> `docker.io/library/app`,
    `team/app` -> `docker.io/team/app` (a first part without `.` or `:` is no registry)."""
    first, _, rest = repository.partition("/")
    if not rest:
        return f"docker.io/library/{repository}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{repository}"
    return repository


def pin_image(cfg: DictConfig, pod: Any) -> None:
    """Pin the run's Jobs to the launcher's own image (`k8s.image_digest`, from its `pod`) when
    it is not pinned yet: a tag moved during the run (a push of a new build) then changes no
    stage's code."""
    if cfg.k8s.get("image_digest") or "@" in str(cfg.k8s.image):
        return
    digest = own_image_digest(pod, str(cfg.k8s.image))
    if digest:
        cfg.k8s.image_digest = digest
        log.info("stage Jobs pinned to the launcher's image %s", image_ref(cfg))


def launcher_owner(pod: Any) -> dict[str, Any] | None:
    """The owner reference of the stage Jobs: the Job that runs the launcher's `pod` (its
    ownerReference of kind Job), so that deleting the launcher Job with foreground or background
    propagation deletes the run's Jobs too. Neither controller (the Job controller owns its pods,
    not these Jobs) nor blocking (the launcher may need no `update` of its own Job to create
    them). None outside a pod, or for a pod no Job owns."""
    for ref in getattr(getattr(pod, "metadata", None), "owner_references", None) or []:
        if ref.kind == "Job" and ref.api_version == "batch/v1":
            return {"apiVersion": "batch/v1", "kind": "Job", "name": ref.name, "uid": ref.uid,
                    "controller": False, "blockOwnerDeletion": False}  # fmt: skip
    return None


def job_state(job: Any) -> tuple[str, str]:
    """("complete" | "failed" | "running", reason and message) of a V1Job."""
    status = getattr(job, "status", None)
    for cond in getattr(status, "conditions", None) or []:
        if str(cond.status) != "True":
            continue
        if cond.type == "Complete":
            return "complete", ""
        if cond.type in ("Failed", "FailureTarget"):
            return "failed", f"{cond.reason or 'Failed'}: {cond.message or 'no message'}"
    return "running", ""


def failed_indexes(job: Any) -> list[int]:
    """The indexes an Indexed Job reports as failed (`status.failedIndexes`, e.g. "1,3-4")."""
    text = getattr(getattr(job, "status", None), "failed_indexes", None) or ""
    indexes: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        indexes.extend(range(int(first), int(last or first) + 1))
    return indexes


def active_run(api: JobsApi, namespace: str, fingerprint: str) -> str | None:
    """The id of the newest run of these inputs (same data fingerprint) that is still going, or
    None. A run is still going when its Jobs exist, none has failed and its vote has not completed
    (a Job may be running, or the launcher that would create the next one died). Runs whose Jobs
    were deleted (by hand, or by their TTL) are not seen."""
    from kubernetes.client.exceptions import ApiException

    selector = f"{FINGERPRINT_LABEL}={fingerprint_label(fingerprint)}"
    try:
        jobs = api.list_namespaced_job(namespace, label_selector=selector).items or []
    except ApiException as e:
        why = f"{e.status} {e.reason}"
        raise StageFailed(f"cannot list jobs in namespace {namespace}: {why}") from e
    runs: dict[str, dict[str, str]] = {}
    for job in jobs:
        meta = job.metadata
        run_id = (meta.annotations or {}).get(RUN_ANNOTATION)
        stage = (meta.labels or {}).get(STAGE_LABEL)
        if run_id and stage:
            runs.setdefault(run_id, {})[stage] = job_state(job)[0]
    for run_id in sorted(runs, reverse=True):
        states = runs[run_id]
        if "failed" not in states.values() and states.get("vote") != "complete":
            return run_id
    return None


def _api_status(e: Exception) -> int | None:
    return getattr(e, "status", None)


def fit_to_server(api: JobsApi, manifest: dict[str, Any], patience: Patience) -> dict[str, Any]:
    """The training Job as this API server keeps it. A dry-run create (`dryRun=All`: defaulted,
    validated, nothing stored) shows whether it keeps `backoffLimitPerIndex`; where it drops it
    (Kubernetes 1.28, or a later release with the JobBackoffLimitPerIndex gate off) the Job gets
    `backoff_limit_per_index` failed pods in all instead (`backoffLimit`), and a warning says so:
    the bound stage_job sets for that case (every failure the per-index limits allow) could keep
    a model that always fails on a GPU for most of the deadline. Other Jobs, a Job that exists
    already (409) and an API error (the real create reports it) leave the manifest as it is."""
    from kubernetes.client.exceptions import ApiException

    spec = manifest["spec"]
    if spec.get("backoffLimitPerIndex") is None:
        return manifest
    name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        stored = call_api(lambda: api.create_namespaced_job(ns, manifest, dry_run="All"),
                          f"dry-run create job {ns}/{name}", patience)  # fmt: skip
    except ApiException:
        return manifest
    stored_spec = getattr(stored, "spec", None)
    if stored_spec is None or getattr(stored_spec, "backoff_limit_per_index", None) is not None:
        return manifest
    fitted = {**manifest, "spec": dict(spec)}
    fitted["spec"]["backoffLimit"] = fitted["spec"].pop("backoffLimitPerIndex")
    fitted["spec"].pop("maxFailedIndexes", None)
    tries = fitted["spec"]["backoffLimit"] + 1
    log.warning("this API server drops backoffLimitPerIndex (Kubernetes older than 1.29, or its "
                "JobBackoffLimitPerIndex gate off): job %s fails after %d failed pods in all, and "
                "a failed model stops the others", name, tries)  # fmt: skip
    return fitted


def create_job(
    api: JobsApi,
    manifest: dict[str, Any],
    *,
    poll_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    patience: Patience | None = None,
) -> bool:
    """Create a Job. Returns False when a Job of that name already completed (nothing to do).

    An existing Job still running is waited on as if just created; a failed one (from an earlier
    attempt of the run, e.g. before `--resume`) is deleted and created anew. An API server that
    does not answer is waited for (`patience`, by default k8s_retry.Patience with `sleep`): a
    create whose answer was lost finds its Job (409) and follows it.
    """
    from kubernetes.client.exceptions import ApiException

    patience = patience or Patience(sleep=sleep)
    name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]

    def create() -> bool:
        try:
            call_api(lambda: api.create_namespaced_job(ns, manifest), f"create job {ns}/{name}",
                     patience)  # fmt: skip
        except ApiException as e:
            if _api_status(e) != 409:
                raise StageFailed(f"cannot create job {ns}/{name}: {e.status} {e.reason}") from e
            return False
        log.info("created job %s/%s", ns, name)
        return True

    if create():
        return True
    state, _ = job_state(read_job(api, name, ns, patience=patience))
    if state == "complete":
        log.info("job %s/%s already completed", ns, name)
        return False
    if state == "running":
        log.info("job %s/%s already exists: following it", ns, name)
        return True
    log.info("job %s/%s failed before: deleting it and starting it again", ns, name)
    delete_jobs(api, ns, [name])
    for _ in range(120):
        try:
            read_job(api, name, ns, patience=patience)
        except JobGone:
            break
        patience.sleep(poll_seconds)
    else:
        raise StageFailed(f"job {ns}/{name} was not deleted in time; delete it and retry")
    if not create():
        raise StageFailed(f"cannot create job {ns}/{name}: it exists again (409)")
    return True


def read_job(api: JobsApi, name: str, ns: str, *, patience: Patience) -> Any:
    """Read a Job, waiting out an API outage (`patience`; ApiUnreachable after its budget). A Job
    that disappears (deleted by hand, or by its TTL) raises JobGone."""
    from kubernetes.client.exceptions import ApiException

    try:
        return call_api(lambda: api.read_namespaced_job(name, ns), f"read job {ns}/{name}",
                        patience)  # fmt: skip
    except ApiException as e:
        if _api_status(e) == 404:
            raise JobGone(f"job {ns}/{name} disappeared while it was followed") from e
        raise StageFailed(f"cannot read job {ns}/{name}: {e.status} {e.reason}") from e


def wait_for_job(
    api: JobsApi,
    manifest: dict[str, Any],
    *,
    poll_seconds: float,
    models: Sequence[str] = (),
    patience: Patience,
    pods: PodsApi | None = None,
    pending_timeout: float = 600.0,
) -> None:
    """Poll a Job until it completes; raise StageFailed when it fails.

    For the Indexed training Job the message names each failed index and its model (`models` in
    index order) and how to read that pod's log. With `pods` (a CoreV1Api), a pod of the Job stuck
    for `pending_timeout` seconds of `patience.clock` (k8s_pods.PodWatch) fails the run at once:
    the Job is deleted (foreground) and the line names the pod, its reason and its newest event.
    """
    name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    stage = manifest["metadata"]["labels"][STAGE_LABEL]
    watch = PodWatch(pods, ns, name, timeout=pending_timeout, clock=patience.clock)
    while True:
        job = read_job(api, name, ns, patience=patience)
        state, why = job_state(job)
        if state == "complete":
            log.info("job %s/%s completed", ns, name)
            return
        if state == "failed":
            where = f"job {ns}/{name}"
            # a server without backoffLimitPerIndex (1.28) names no failed index: its pods do
            failed = failed_indexes(job) or failed_pod_indexes(pods, ns, name)
            if failed:
                which = ", ".join(
                    f"index {i} (model {models[i] if i < len(models) else '?'!r})" for i in failed
                )
                selector = f"job-name={name},batch.kubernetes.io/job-completion-index={failed[0]}"
                logs = f"kubectl logs -n {ns} -l {selector}"
                raise StageFailed(f"{stage} failed at {which}: {where}, {why}; logs: {logs}")
            logs = f"kubectl logs -n {ns} -l job-name={name}"
            raise StageFailed(f"{stage} failed: {where}, {why}; logs: {logs}")
        stuck = watch.stuck()
        if stuck:
            delete_jobs(api, ns, [name])
            raise StageFailed(f"{stage} cannot start: {stuck}; job {ns}/{name} deleted")
        patience.sleep(poll_seconds)


def run_jobs(
    api: JobsApi,
    manifests: Sequence[dict[str, Any]],
    *,
    models: Sequence[str],
    poll_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    patience: Patience | None = None,
    pods: PodsApi | None = None,
    pending_timeout: float = 600.0,
) -> None:
    """Create each Job in order (the training Job fitted to the API server: fit_to_server) and
    wait for it; the first failure raises StageFailed. The API server is waited for as
    `patience` says (default: k8s_retry.Patience with `sleep`); `pods` and `pending_timeout` as
    in wait_for_job."""
    patience = patience or Patience(sleep=sleep)
    for rendered in manifests:
        manifest = fit_to_server(api, rendered, patience)
        if create_job(api, manifest, poll_seconds=poll_seconds, patience=patience):
            wait_for_job(api, manifest, poll_seconds=poll_seconds, models=models,
                         patience=patience, pods=pods, pending_timeout=pending_timeout)  # fmt: skip


def launch_k8s(
    cfg: DictConfig,
    *,
    dry_run: bool = False,
    show_jobs: bool = False,
    overrides: Sequence[str] = (),
    launch_args: Sequence[str] = (),
    fingerprint: str | None = None,
    api: JobsApi | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run `cfg.run_id` on the cluster: create its Jobs in order and wait; returns an exit status.

    `dry_run` prints, instead, the launcher Job that does this in the cluster (`launch_args`, the
    launcher's own arguments, go in its command), for `kubectl apply -f -`; `show_jobs` prints the
    three stage Jobs the launcher would create. `overrides` are the user's Hydra overrides (passed
    to every pod); `fingerprint` (the run's data fingerprint) labels the Jobs (see `active_run`).
    `api` defaults to the official client (kube_jobs_api); its pods are watched when it is the
    official client (k8s_pods). `sleep` and `clock` time the polls, the API outage budget
    (`k8s.api_outage_seconds`) and `k8s.pending_timeout`. PipelineErrors are printed as one
    `error:` line (status 1).
    """
    try:
        if dry_run:
            sys.stdout.write(to_yaml([launcher_job(cfg, launch_args)]))
            return 0
        if show_jobs:
            sys.stdout.write(to_yaml(render_jobs(cfg, overrides)))
            return 0
        api = api or kube_jobs_api()
        patience = Patience(budget=float(cfg.k8s.api_outage_seconds), sleep=sleep, clock=clock)
        own_pod = read_own_pod(api, os.environ, patience)
        pin_image(cfg, own_pod)
        manifests = render_jobs(cfg, overrides, fingerprint)
        owner = launcher_owner(own_pod)
        for manifest in manifests if owner else ():
            manifest["metadata"]["ownerReferences"] = [owner]
        models = list(model_specs(cfg))
        log.info("run %s: %d model(s), jobs in namespace %s", cfg.run_id, len(models),
                 cfg.k8s.namespace)  # fmt: skip
        run_jobs(
            api,
            manifests,
            models=models,
            poll_seconds=float(cfg.k8s.poll_seconds),
            patience=patience,
            pods=pods_api(api),
            pending_timeout=float(cfg.k8s.pending_timeout),
        )
        print(f"run {cfg.run_id} finished on Kubernetes (namespace {cfg.k8s.namespace})")
        run = run_store(cfg)
        gate = read_gate(run)
        if gate is not None:
            print(f"  publish: {gate['reason']}")
        return run_exit_status(run)  # 3 when the publish gate held the run
    except PipelineError as e:
        print(f"error: run {cfg.run_id}: {e}", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------------------------
# The Executor (pipeline/orchestration/executor.py)
# --------------------------------------------------------------------------------------------

#: A Job's state (job_state) as a queue entry of pipeline/orchestration/status.py.
QUEUE_STATE = {"complete": "COMPLETED", "failed": "FAILED", "running": "RUNNING"}


def run_jobs_listed(api: JobsApi, cfg: DictConfig) -> dict[str, QueueEntry]:
    """The run's Jobs in the namespace (by its run label) → their state as a queue entry."""
    from kubernetes.client.exceptions import ApiException

    namespace = str(cfg.k8s.namespace)
    selector = f"{RUN_LABEL}={require_run_id(cfg).lower()}"
    try:
        jobs = api.list_namespaced_job(namespace, label_selector=selector).items or []
    except ApiException as e:
        raise StageFailed(
            f"cannot list jobs in namespace {namespace}: {e.status} {e.reason}"
        ) from e
    listed = {}
    for job in jobs:
        state, why = job_state(job)
        listed[str(job.metadata.name)] = QueueEntry(QUEUE_STATE[state], why)
    return listed


def k8s_run_status(api: JobsApi, cfg: DictConfig) -> RunStatus:
    """The run's stages as their markers, job records and the run's Jobs show them: each stage is
    carried by the Job of its kind (JOB_OF_KIND); a stage whose Job does not exist (not created
    yet, or deleted) shows as not submitted unless done."""
    listed = run_jobs_listed(api, cfg)
    run = run_store(cfg)
    jobs = {}
    for stage in stage_graph(run_models(run, read_submissions(run))):
        name = job_name(cfg, JOB_OF_KIND[stage.kind])
        if name in listed:
            jobs[stage.name] = {"job_id": name, "log": None}
    return run_status(cfg, lambda names: listed, jobs)


def delete_jobs(api: JobsApi, namespace: str, names: Sequence[str]) -> None:
    """Delete Jobs with foreground propagation: each goes once its pods are gone."""
    from kubernetes.client.exceptions import ApiException

    for name in names:
        try:
            api.delete_namespaced_job(name, namespace, propagation_policy="Foreground")
        except ApiException as e:
            if _api_status(e) != 404:  # already gone is what was asked
                raise StageFailed(
                    f"cannot delete job {namespace}/{name}: {e.status} {e.reason}"
                ) from e
        log.info("deleted job %s/%s", namespace, name)


class KubernetesBackend:
    """The Executor of a Kubernetes cluster: a launch creates the run's Jobs one after another and
    follows them; status lists the run's Jobs, cancel deletes those still running."""

    name: ClassVar[str] = "k8s"
    blocks: ClassVar[bool] = True
    side_by_side: ClassVar[bool] = True
    on_active: ClassVar[str] = "following it instead of starting a second run"

    def __init__(self, api: JobsApi | None = None) -> None:
        self._api = api

    @property
    def api(self) -> JobsApi:
        """The Jobs API given, else the official client's (kube_jobs_api)."""
        if self._api is None:
            self._api = kube_jobs_api()
        return self._api

    def check(self, cfg: DictConfig, request: LaunchRequest) -> None:
        """Refuse paths the pods cannot share, before any data is read or any run is made."""
        check_cluster_paths(cfg)

    def launch(self, cfg: DictConfig, request: LaunchRequest) -> int:
        """Create the run's Jobs in order and follow them (see launch_k8s); the run records the
        launch in its scheduler.json, so that `runs status|cancel` come here."""
        launch_args = [*pass_through(request.overrides), f"run_id={require_run_id(cfg)}"]
        sha = None
        if not request.render_only:
            sha = request.fingerprint or recorded_fingerprint(cfg)["sha256"]
            record_submission(
                run_store(cfg),
                {
                    "cluster": self.name,
                    "submitted": datetime.now(UTC).isoformat(timespec="seconds"),
                    "namespace": str(cfg.k8s.namespace),
                    "models": list(model_specs(cfg)),
                    "jobs": {},  # the Jobs are found by the run's label
                },
            )
        return launch_k8s(
            cfg,
            dry_run=request.dry_run,
            show_jobs=request.show_jobs,
            overrides=request.overrides,
            launch_args=launch_args,
            fingerprint=sha,
            api=None if request.render_only else self.api,
        )

    def active_run(self, cfg: DictConfig, sha256: str) -> str | None:
        """The newest run of these inputs whose Jobs are still going (see active_run)."""
        return active_run(self.api, str(cfg.k8s.namespace), sha256)

    def follow(self, cfg: DictConfig, request: LaunchRequest) -> int:
        """Follow the run's Jobs, creating those its dead launcher did not create yet."""
        return self.launch(cfg, request)

    def status(self, cfg: DictConfig) -> RunStatus:
        """The stages as markers, job records and the run's Jobs show them."""
        return k8s_run_status(self.api, cfg)

    def cancel(self, cfg: DictConfig) -> list[str]:
        """Delete the run's Jobs still running (foreground: their pods go first)."""
        namespace = str(cfg.k8s.namespace)
        status = k8s_run_status(self.api, cfg)
        return cancel_run(cfg, status, lambda names: delete_jobs(self.api, namespace, names))

    def infer(self, cfg: DictConfig, overrides: Sequence[str], *, dry_run: bool) -> int:
        """Create the infer Job for the run chosen now (or print it with `dry_run`)."""
        pinned = pinned_infer_config(cfg, dry_run=dry_run)
        return launch_infer_k8s(pinned, overrides, dry_run=dry_run, api=self._api)
