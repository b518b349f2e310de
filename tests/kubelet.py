"""A kubelet stand-in for tests: run a pod spec's container from the suite's image with podman.

The podman options are derived from the pod spec, as a kubelet would apply it, never written per
stage. What is real here:
- the image (`make image`) and the container's `command` / `args`, with Kubernetes' `$(VAR)`
  expansion from the container's environment;
- the environment: plain values, `configMapKeyRef`, `secretKeyRef` (optional ones may be
  missing), `fieldRef` (the pod's name and namespace) and `resourceFieldRef` (the container's
  requests and limits, rounded up by the divisor as the downward API does);
- the security context: user and group, read-only root filesystem (and no extra tmpfs on /tmp or
  /run, which podman would otherwise add), capabilities dropped, no privilege escalation;
- CPU and memory limits, as a cgroup quota and memory limit on the container;
- every `emptyDir` volume as a fresh, size-limited tmpfs, writable by anyone (an emptyDir's 0777);
- the service-account token of pods that mount one: token, CA certificate and namespace at
  /var/run/secrets/kubernetes.io/serviceaccount and KUBERNETES_SERVICE_HOST/PORT;
- `JOB_COMPLETION_INDEX` for the pods of an Indexed Job.

What is not: the network (pods share the host's, so servers on loopback are reachable), image
pulls (`--pull=never`: the image built here), scheduling, probes, and more than one container per
pod (the suite's pods have one; emptyDirs shared between containers would need more than tmpfs).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: The image `make image` builds (Makefile IMAGE); the tests run every pod from it.
IMAGE = os.environ.get("MASKSUITE_IMAGE", "localhost/masksuite:0.1.0")
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": Decimal("0.001"),
}  # fmt: skip


def podman_env() -> dict[str, str]:
    """This process's environment plus the podman settings this machine needs."""
    return {**os.environ, "CONTAINERS_CONF": str(REPO / "container" / "containers.conf")}


def quantity(text: str | int | float) -> Decimal:
    """A Kubernetes quantity ("500m", "2", "16Gi", "1e3") as a number."""
    text = str(text).strip()
    for suffix, factor in sorted(_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * Decimal(factor)
    return Decimal(text)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of `$(VAR)` in command, args and env values, as the kubelet does it
    (k8s.io/kubernetes/third_party/forked/golang/expansion, `Expand`): `$$` is one `$`; `$(NAME)`
    is NAME's value, NAME being everything up to the first `)`, and stays as written when NAME is
    not defined (or the `)` is missing); a `$` before anything else stays."""
    out: list[str] = []
    checkpoint = cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            if rest[0] == "$":  # escaped operator
                out.append("$")
            elif rest[0] == "(" and ")" in rest:
                name = rest[1 : rest.index(")")]
                out.append(env.get(name, f"$({name})"))
                cursor += len(name) + 1
            elif rest[0] == "(":  # an incomplete reference: kept
                out.append("$(")
            else:
                out.append("$" + rest[0])
            cursor += 1
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def resolve_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    pod_name: str,
    namespace: str,
    configmaps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
) -> dict[str, str]:
    """The container's environment as the kubelet builds it, in order (later values may refer to
    earlier ones with $(VAR))."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        source = item["valueFrom"]
        if "configMapKeyRef" in source or "secretKeyRef" in source:
            ref = source.get("configMapKeyRef") or source["secretKeyRef"]
            store = configmaps if "configMapKeyRef" in source else secrets
            value = store.get(ref["name"], {}).get(ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                kind = "ConfigMap" if store is configmaps else "Secret"
                raise KeyError(f"{kind} {ref['name']} has no key {ref['key']} (env {name})")
            env[name] = value
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            env[name] = {"metadata.name": pod_name, "metadata.namespace": namespace}[path]
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            part, resource = ref["resource"].split(".", 1)
            amount = container.get("resources", {}).get(part, {}).get(resource)
            if amount is None:  # no limit: the node's allocatable (here, this machine's)
                pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
                amount = os.cpu_count() if resource == "cpu" else pages
            divisor = quantity(ref.get("divisor", "1"))
            env[name] = str(math.ceil(quantity(amount) / divisor))
        else:
            raise NotImplementedError(f"env {name}: {source}")
    return env


def security(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The container's effective security context (its own settings over the pod's)."""
    return {**pod.get("securityContext", {}), **container.get("securityContext", {})}


def podman_command(
    pod: dict[str, Any],
    *,
    pod_name: str,
    env: dict[str, str],
    token_dir: Path | None = None,
    image: str | None = None,
) -> list[str]:
    """`podman run` for the pod's one container, every option taken from the pod spec."""
    if pod.get("initContainers") or len(pod["containers"]) != 1:
        raise NotImplementedError("the kubelet stand-in runs pods of exactly one container")
    (container,) = pod["containers"]
    sec = security(pod, container)
    cmd = ["podman", "run", "--rm", "--pull=never", "--network=host", f"--name={pod_name}",
           f"--hostname={pod_name[:63]}"]  # fmt: skip
    if "runAsUser" in sec:
        cmd.append(f"--user={sec['runAsUser']}:{sec.get('runAsGroup', sec['runAsUser'])}")
    if sec.get("readOnlyRootFilesystem"):
        cmd += ["--read-only", "--read-only-tmpfs=false"]
    for cap in sec.get("capabilities", {}).get("drop", []):
        cmd.append(f"--cap-drop={cap}")
    for cap in sec.get("capabilities", {}).get("add", []):
        cmd.append(f"--cap-add={cap}")
    if sec.get("allowPrivilegeEscalation") is False:
        cmd.append("--security-opt=no-new-privileges")
    if sec.get("privileged"):
        cmd.append("--privileged")
    limits = container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        cmd.append(f"--cpus={quantity(limits['cpu'])}")
    if "memory" in limits:
        cmd.append(f"--memory={int(quantity(limits['memory']))}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" not in volume:
            raise NotImplementedError(f"volume {mount['name']}: only emptyDir is supported")
        size = volume["emptyDir"].get("sizeLimit")
        opts = f"type=tmpfs,destination={mount['mountPath']},tmpfs-mode=0777"
        cmd.append(f"--mount={opts}" + (f",tmpfs-size={int(quantity(size))}" if size else ""))
    if pod.get("automountServiceAccountToken") and token_dir is not None:
        cmd.append(f"--volume={token_dir}:{TOKEN_DIR}:ro")
    if container.get("workingDir"):
        cmd.append(f"--workdir={container['workingDir']}")
    for name, value in env.items():
        cmd.append(f"--env={name}={value}")
    command = [expand(c, env) for c in container.get("command", [])]
    args = [expand(a, env) for a in container.get("args", [])]
    if command:
        cmd.append("--entrypoint=" + json.dumps(command))
    cmd.append(image or container["image"])
    return cmd + args


@dataclass
class PodRun:
    """One pod's outcome: its name, the container's exit code and its log (stdout + stderr)."""

    name: str
    exit_code: int
    log: str


def run_pod(
    pod: dict[str, Any],
    *,
    pod_name: str | None = None,
    namespace: str = "masksuite",
    configmaps: dict[str, dict[str, str]] | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
    extra_env: dict[str, str] | None = None,
    token_dir: Path | None = None,
    image: str | None = None,
    timeout: float = 900,
) -> PodRun:
    """Run a pod spec's container to its end and return its exit code and log.

    `extra_env` is what Kubernetes adds itself (JOB_COMPLETION_INDEX, KUBERNETES_SERVICE_*);
    `image` replaces the container's image (the manifests name a registry this machine has not).
    """
    pod_name = pod_name or f"pod-{uuid.uuid4().hex[:8]}"
    (container,) = pod["containers"]
    env = resolve_env(pod, container, pod_name=pod_name, namespace=namespace,
                      configmaps=configmaps or {}, secrets=secrets or {})  # fmt: skip
    env.update(extra_env or {})
    cmd = podman_command(pod, pod_name=pod_name, env=env, token_dir=token_dir, image=image)
    try:
        done = subprocess.run(cmd, env=podman_env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        subprocess.run(["podman", "rm", "-f", pod_name], env=podman_env(), capture_output=True)
        return PodRun(pod_name, 124, f"{e.stdout or ''}{e.stderr or ''}\ntimed out")
    return PodRun(pod_name, done.returncode, done.stdout + done.stderr)
