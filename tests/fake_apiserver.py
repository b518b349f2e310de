"""A fake Kubernetes API server with a fake Job controller, for the pod and launcher tests.

No API server can run on these machines, so this is the one simulated part of the pod tests. It
answers, over HTTPS with a service-account bearer token (as a real API server does), the calls
the launcher makes through the official client: create (dryRun=All too), read, list (label
selector) and delete batch/v1 Jobs in a namespace; read a pod and list pods (label selector)
from `pod_objects`; list events (field selector involvedObject.name) from `events`; and GET
/version (VersionApi).

A created Job is stored as the API server of `version` would store it (tests/k8s_versions.py:
defaulting and the fields a disabled feature gate drops; 422 for a Job it would refuse) and gets
a uid. Deleting a Job with Foreground or Background propagation deletes the Jobs it owns
(ownerReferences by uid), as the garbage collector would. Its controller runs each created Job's
pods with `run_pod` (tests/kubelet.py runs real podman containers from the suite's image): one pod
per index of an Indexed Job, one after another, replacing failed pods and failing the Job as the
stored spec and the release's Job controller say (k8s_versions.job_fails / index_failed), and
sets the Job's status (Complete, or Failed with failedIndexes) as the Job controller would.
`max_pods` pods of one Job stand for its activeDeadlineSeconds (the Job then fails with
DeadlineExceeded). Parallelism, TTLs and pod failure policies are not simulated
(tests/test_k8s.py covers the launcher's side of them against an in-process fake).
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.k8s_versions import Invalid, admit_job, index_failed, job_fails
from tests.kubelet import PodRun

#: The annotation (and, from 1.28, label) of an Indexed Job's pod naming its index.
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
#: Runs one pod of a Job: (job manifest, completion index or None) -> outcome.
PodRunner = Callable[[dict[str, Any], int | None], PodRun]


class FakeApiServer:
    """HTTPS on 127.0.0.1 (a free port); `token_dir` holds what a pod's service-account volume
    holds (token, ca.crt, namespace). Use as a context manager."""

    def __init__(
        self,
        workdir: Path,
        run_pod: PodRunner,
        namespace: str = "masksuite",
        *,
        version: str = "1.33",
        max_pods: int = 100,
    ) -> None:
        self.namespace = namespace
        self.run_pod = run_pod
        #: The Kubernetes release whose defaulting, field dropping and Job controller are applied.
        self.version = version
        #: Pods of one Job after which it fails with DeadlineExceeded (its activeDeadlineSeconds).
        self.max_pods = max_pods
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: list[tuple[str, int | None, PodRun]] = []
        #: Pod objects by name (v1 Pod JSON) that GET .../pods/<name> answers: the launcher reads
        #: its own pod's status to pin the stage Jobs to its image's digest.
        self.pod_objects: dict[str, dict[str, Any]] = {}
        #: Events (v1 Event JSON) that GET .../events answers, by involvedObject.name.
        self.events: list[dict[str, Any]] = []
        #: Core resources ("pods", "events") whose GETs are answered 403, as where RBAC lacks them.
        self.forbidden: set[str] = set()
        #: Core resources ("pods", "events") answered 503 Service Unavailable this many more
        #: times: a control plane that is being upgraded.
        self.unavailable: dict[str, int] = {}
        self.unauthorized = 0
        #: Jobs created with dryRun=All (answered as stored, not stored), in order.
        self.dry_runs: list[str] = []
        #: Jobs deleted, in order: (name, the propagationPolicy asked for, or None).
        self.deleted: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.token = secrets.token_hex(16)
        self.token_dir = workdir / "serviceaccount"
        self.token_dir.mkdir(parents=True)
        self._make_certificate(workdir)
        (self.token_dir / "token").write_text(self.token)
        (self.token_dir / "namespace").write_text(namespace)
        for path in self.token_dir.iterdir():
            path.chmod(0o644)  # readable by the pods' user
        self.token_dir.chmod(0o755)

    def _make_certificate(self, workdir: Path) -> None:
        self.key = workdir / "apiserver.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=kubernetes", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(self.key), "-out", str(self.token_dir / "ca.crt")],
            check=True, capture_output=True,
        )  # fmt: skip

    def __enter__(self) -> FakeApiServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

            def do_DELETE(self) -> None:
                server._handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.token_dir / "ca.crt", self.key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.serving = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self.threads:
            thread.join(timeout=60)

    def api_client(self) -> Any:
        """An official `kubernetes.client.ApiClient` of this server, as a pod's in-cluster
        configuration makes it (its CA certificate, its bearer token)."""
        from kubernetes import client

        conf = client.Configuration(host=f"https://127.0.0.1:{self.port}")
        conf.ssl_ca_cert = str(self.token_dir / "ca.crt")
        conf.api_key = {"BearerToken": self.token}
        conf.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(conf)

    def pod_env(self) -> dict[str, str]:
        """What Kubernetes puts in every pod's environment to find the API server."""
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port)}

    # ----------------------------------------------------------------------------------------
    # HTTP
    # ----------------------------------------------------------------------------------------

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _status(self, handler: BaseHTTPRequestHandler, code: int, reason: str) -> None:
        self._reply(handler, code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": reason, "code": code})  # fmt: skip

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        scheme, _, token = (handler.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or token != self.token:
            self.unauthorized += 1
            return self._status(handler, 401, "Unauthorized")
        if url.path.rstrip("/") == "/version" and method == "GET":
            return self._reply(handler, 200, self._version())
        core = f"/api/v1/namespaces/{self.namespace}/"
        if url.path.startswith(core) and method == "GET":
            return self._core(handler, url.path[len(core) :], parse_qs(url.query))
        prefix = f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        if not url.path.startswith(prefix):
            return self._status(handler, 404, "NotFound")
        name = url.path[len(prefix) :].strip("/")
        with self.lock:
            if method == "POST" and not name:
                length = int(handler.headers.get("Content-Length") or 0)
                job = json.loads(handler.rfile.read(length))
                if job["metadata"]["name"] in self.jobs:
                    return self._status(handler, 409, "AlreadyExists")
                try:
                    job = admit_job(job, self.version)
                except Invalid as e:
                    return self._status(handler, 422, f"Invalid: {e}")
                if parse_qs(url.query).get("dryRun") == ["All"]:
                    self.dry_runs.append(job["metadata"]["name"])
                    return self._reply(handler, 201, job)  # checked, defaulted, not stored
                job["metadata"]["uid"] = str(uuid.uuid4())
                self.jobs[job["metadata"]["name"]] = job
                thread = threading.Thread(target=self._control, args=(job,), daemon=True)
                self.threads.append(thread)
                thread.start()
                return self._reply(handler, 201, job)
            if method == "GET" and not name:
                wanted = _selector(parse_qs(url.query).get("labelSelector", [""])[0])
                items = [j for j in self.jobs.values() if _matches(j, wanted)]
                return self._reply(handler, 200, {"apiVersion": "batch/v1", "kind": "JobList",
                                                  "metadata": {}, "items": items})  # fmt: skip
            if name not in self.jobs:
                return self._status(handler, 404, "NotFound")
            if method == "GET":
                return self._reply(handler, 200, self.jobs[name])
            if method == "DELETE":
                # Deleted at once: the pods of a Foreground deletion are not simulated.
                policy = parse_qs(url.query).get("propagationPolicy", [None])[0]
                self._delete(name, policy)
                return self._reply(handler, 200, {"kind": "Status", "apiVersion": "v1",
                                                  "status": "Success"})  # fmt: skip
        return self._status(handler, 405, "MethodNotAllowed")

    # ----------------------------------------------------------------------------------------
    # The Job controller
    # ----------------------------------------------------------------------------------------

    def _record_pod(self, job: dict[str, Any], index: int | None, outcome: PodRun) -> None:
        """The ended pod as the API server lists it: the Job's pod labels, the `job-name` label
        and (Indexed Jobs) the completion-index annotation and label, its phase. Caller holds
        the lock; a pod object a test set keeps its name."""
        name = f"{job['metadata']['name']}-{'x' if index is None else index}-{len(self.pods)}"
        labels = {**job["spec"]["template"]["metadata"].get("labels", {}),
                  "job-name": job["metadata"]["name"]}  # fmt: skip
        annotations = {}
        if index is not None:
            labels[COMPLETION_INDEX] = annotations[COMPLETION_INDEX] = str(index)
        phase = "Succeeded" if outcome.exit_code == 0 else "Failed"
        self.pod_objects.setdefault(name, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels,
                         "annotations": annotations},
            "spec": {"containers": [{"name": "main", "image": "x"}]},
            "status": {"phase": phase},
        })  # fmt: skip

    def _control(self, job: dict[str, Any]) -> None:
        spec = job["spec"]
        indexed = spec["completionMode"] == "Indexed"
        indexes: list[int | None] = list(range(spec["completions"])) if indexed else [None]
        job["status"] = {"active": 1}
        failures: dict[int, int] = {}
        failed: list[int] = []
        reason = None
        for index in indexes:
            key = -1 if index is None else index
            while reason is None:
                if sum(1 for p in self.pods if p[0] == job["metadata"]["name"]) >= self.max_pods:
                    reason = "DeadlineExceeded"
                    break
                outcome = self.run_pod(job, index)
                with self.lock:
                    self.pods.append((job["metadata"]["name"], index, outcome))
                    self._record_pod(job, index, outcome)
                if outcome.exit_code == 0:
                    break
                failures[key] = failures.get(key, 0) + 1
                if index_failed(job, self.version, failures[key]):
                    failed.append(key)
                if job_fails(job, self.version, failures):
                    limit = spec["backoffLimit"]
                    exceeded = sum(failures.values()) > limit
                    reason = "BackoffLimitExceeded" if exceeded else "MaxFailedIndexesExceeded"
                elif key in failed:
                    break
            if reason is not None:
                break
        if reason is None and failed:
            reason = "FailedIndexes"
        if reason is not None:
            condition = {"type": "Failed", "status": "True", "reason": reason,
                         "message": "Job has failed"}  # fmt: skip
            status: dict[str, Any] = {"failed": sum(failures.values()), "conditions": [condition]}
            if failed:
                status["failedIndexes"] = ",".join(str(i) for i in failed)
        else:
            status = {"succeeded": len(indexes),
                      "conditions": [{"type": "Complete", "status": "True"}]}  # fmt: skip
        with self.lock:
            job["status"] = status

    # ----------------------------------------------------------------------------------------
    # Pods, events, version, garbage collection
    # ----------------------------------------------------------------------------------------

    def _version(self) -> dict[str, str]:
        major, minor = self.version.split(".")[:2]
        return {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0",
                "gitCommit": "0" * 40, "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22.0",
                "compiler": "gc", "platform": "linux/amd64"}  # fmt: skip

    def _core(
        self, handler: BaseHTTPRequestHandler, rest: str, query: dict[str, list[str]]
    ) -> None:
        """GET pods/<name>, pods (labelSelector) and events (fieldSelector involvedObject.name)."""
        kind, _, name = rest.partition("/")
        if kind in self.forbidden:
            return self._status(handler, 403, "Forbidden")
        with self.lock:
            down = self.unavailable.get(kind, 0) > 0
            if down:
                self.unavailable[kind] -= 1
        if down:
            return self._status(handler, 503, "ServiceUnavailable")
        with self.lock:
            if kind == "pods" and name:
                pod = self.pod_objects.get(name)
                if pod is None:
                    return self._status(handler, 404, "NotFound")
                return self._reply(handler, 200, pod)
            if kind == "pods":
                wanted = _selector(query.get("labelSelector", [""])[0])
                items = [p for p in self.pod_objects.values() if _matches(p, wanted)]
                return self._reply(handler, 200, {"apiVersion": "v1", "kind": "PodList",
                                                  "metadata": {}, "items": items})  # fmt: skip
            if kind == "events" and not name:
                wanted = _selector(query.get("fieldSelector", [""])[0])
                about = wanted.get("involvedObject.name")
                items = [e for e in self.events if e["involvedObject"]["name"] == about]
                return self._reply(handler, 200, {"apiVersion": "v1", "kind": "EventList",
                                                  "metadata": {}, "items": items})  # fmt: skip
        return self._status(handler, 404, "NotFound")

    def _delete(self, name: str, policy: str | None) -> None:
        """Delete a Job (at once: the pods of a Foreground deletion are not simulated), and with
        Foreground or Background propagation the Jobs it owns, as the garbage collector does."""
        job = self.jobs.pop(name)
        self.deleted.append((name, policy))
        if policy == "Orphan":
            return
        uid = job["metadata"]["uid"]
        for other in list(self.jobs.values()):
            owners = other["metadata"].get("ownerReferences") or []
            if other["metadata"]["name"] in self.jobs and any(o["uid"] == uid for o in owners):
                self._delete(other["metadata"]["name"], policy)


def _selector(text: str) -> dict[str, str]:
    """`a=b,c=d` -> {"a": "b", "c": "d"} (equality selectors only)."""
    return dict(part.split("=", 1) for part in text.split(",") if part)


def _matches(obj: dict[str, Any], wanted: dict[str, str]) -> bool:
    return wanted.items() <= (obj["metadata"].get("labels") or {}).items()
