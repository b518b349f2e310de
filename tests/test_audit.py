"""`make audit` (tools/audit.py) says plainly when no advisory database can be reached, instead of
failing on the first package (pip-audit --strict) or passing having checked nothing; where one
answers, pip-audit --strict runs against it on the venv and on the image's lock."""

from __future__ import annotations

import http.server
import importlib.util
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit", REPO / "tools" / "audit.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def closed_port_url() -> str:
    """An address on loopback that nothing listens on (the port was bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/pypi/pip/24.0/json"


@pytest.fixture
def advisory_server() -> Iterator[str]:
    """A loopback server answering like PyPI's per-version JSON API (no vulnerabilities)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"info": {"name": "pip"}, "vulnerabilities": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pypi/pip/24.0/json"
    server.shutdown()
    server.server_close()


def test_unreachable_databases_say_not_audited_with_each_reason_and_do_not_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"AUDIT_PYPI_URL": closed_port_url(), "AUDIT_OSV_URL": closed_port_url()}
    result = subprocess.run(
        [sys.executable, "tools/audit.py"], cwd=REPO, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", **env}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "NOT AUDITED" in result.stdout and "nothing was checked" in result.stdout
    assert f"pypi: {env['AUDIT_PYPI_URL']}: cannot connect" in result.stdout
    assert f"osv: {env['AUDIT_OSV_URL']}: cannot connect" in result.stdout
    required = subprocess.run(
        [sys.executable, "tools/audit.py"], cwd=REPO, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "AUDIT_REQUIRED": "1", **env}, timeout=120,
    )  # fmt: skip
    assert required.returncode == 2 and "NOT AUDITED" in required.stdout


def test_a_reachable_database_runs_pip_audit_strict_on_the_venv_and_the_lock(
    advisory_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = load_audit()
    monkeypatch.setenv("AUDIT_PYPI_URL", advisory_server)
    monkeypatch.setenv("AUDIT_OSV_URL", closed_port_url())
    commands: list[list[str]] = []

    def run(command: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 1 if "-r" in command else 0)

    monkeypatch.setattr(audit.subprocess, "run", run)
    assert audit.main(["--lock", "requirements/image.lock"]) == 1  # the lock's audit found one
    assert len(commands) == 2
    for command in commands:
        assert command[1:5] == ["-m", "pip_audit", "--strict", "-s"] and command[5] == "pypi"
    assert "--skip-editable" in commands[0]
    assert commands[1][-3:] == ["--require-hashes", "-r", "requirements/image.lock"]


def test_each_database_is_probed_the_way_pip_audit_asks_it(advisory_server: str) -> None:
    """PyPI's API by GET of a version's JSON (with its vulnerabilities), OSV by POST of a query:
    the GET-only server answers the first and refuses the second."""
    audit = load_audit()
    assert audit.probe("pypi", advisory_server) is None
    assert audit.probe("osv", advisory_server) is not None
