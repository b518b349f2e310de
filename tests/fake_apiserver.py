"""A fake Kubernetes API server with a fake Job controller, for the pod tests.

No API server can run on these machines, so this is the one simulated part of the pod tests. It
answers, over HTTPS with a service-account bearer token (as a real API server does), the calls
the launcher makes through the official client: create, read, list (label selector) and delete
batch/v1 Jobs in a namespace, and read a pod (the launcher's own, from `pod_objects`). Its
controller runs each created Job's pods with the kubelet stand-in (tests/kubelet.py, real podman
containers from the suite's image): one pod per index of an Indexed Job, one after another,
retried up to backoffLimitPerIndex / backoffLimit, and sets the Job's status (Complete, or
Failed with failedIndexes) as the Job controller would. Deadlines, parallelism, TTLs and pod
failure policies are not simulated (tests/test_k8s.py covers the launcher's side of them
against an in-process fake).
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.kubelet import PodRun

#: Runs one pod of a Job: (job manifest, completion index or None) -> outcome.
PodRunner = Callable[[dict[str, Any], int | None], PodRun]


class FakeApiServer:
    """HTTPS on 127.0.0.1 (a free port); `token_dir` holds what a pod's service-account volume
    holds (token, ca.crt, namespace). Use as a context manager."""

    def __init__(self, workdir: Path, run_pod: PodRunner, namespace: str = "masksuite") -> None:
        self.namespace = namespace
        self.run_pod = run_pod
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: list[tuple[str, int | None, PodRun]] = []
        #: Pod objects by name (v1 Pod JSON) that GET .../pods/<name> answers: the launcher reads
        #: its own pod's status to pin the stage Jobs to its image's digest.
        self.pod_objects: dict[str, dict[str, Any]] = {}
        self.unauthorized = 0
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
        pods = f"/api/v1/namespaces/{self.namespace}/pods/"
        if url.path.startswith(pods) and method == "GET":
            pod = self.pod_objects.get(url.path[len(pods) :])
            return self._reply(handler, 200, pod) if pod else self._status(handler, 404, "NotFound")
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
                job["status"] = {}
                self.jobs[job["metadata"]["name"]] = job
                thread = threading.Thread(target=self._control, args=(job,), daemon=True)
                self.threads.append(thread)
                thread.start()
                return self._reply(handler, 201, job)
            if method == "GET" and not name:
                selector = parse_qs(url.query).get("labelSelector", [""])[0]
                wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
                items = [j for j in self.jobs.values()
                         if wanted.items() <= j["metadata"].get("labels", {}).items()]  # fmt: skip
                return self._reply(handler, 200, {"apiVersion": "batch/v1", "kind": "JobList",
                                                  "metadata": {}, "items": items})  # fmt: skip
            if name not in self.jobs:
                return self._status(handler, 404, "NotFound")
            if method == "GET":
                return self._reply(handler, 200, self.jobs[name])
            if method == "DELETE":
                # Deleted at once: the pods of a Foreground deletion are not simulated.
                policy = parse_qs(url.query).get("propagationPolicy", [None])[0]
                self.deleted.append((name, policy))
                del self.jobs[name]
                return self._reply(handler, 200, {"kind": "Status", "apiVersion": "v1",
                                                  "status": "Success"})  # fmt: skip
        return self._status(handler, 405, "MethodNotAllowed")

    # ----------------------------------------------------------------------------------------
    # The Job controller
    # ----------------------------------------------------------------------------------------

    def _control(self, job: dict[str, Any]) -> None:
        spec = job["spec"]
        indexed = spec.get("completionMode") == "Indexed"
        indexes: list[int | None] = list(range(spec["completions"])) if indexed else [None]
        tries = 1 + int(spec.get("backoffLimitPerIndex" if indexed else "backoffLimit", 0))
        job["status"] = {"active": 1}
        failed: list[int] = []
        for index in indexes:
            for _ in range(tries):
                outcome = self.run_pod(job, index)
                with self.lock:
                    self.pods.append((job["metadata"]["name"], index, outcome))
                if outcome.exit_code == 0:
                    break
            else:
                failed.append(-1 if index is None else index)
                if not indexed:
                    break
        if failed:
            reason = "FailedIndexes" if indexed else "BackoffLimitExceeded"
            condition = {"type": "Failed", "status": "True", "reason": reason,
                         "message": "Job has failed"}  # fmt: skip
            status: dict[str, Any] = {"failed": len(failed), "conditions": [condition]}
            if indexed:
                status["failedIndexes"] = ",".join(str(i) for i in failed)
        else:
            status = {"succeeded": len(indexes),
                      "conditions": [{"type": "Complete", "status": "True"}]}  # fmt: skip
        with self.lock:
            job["status"] = status
