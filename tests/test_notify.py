"""The optional webhook (pipeline/run/notify.py), against a real HTTP server on 127.0.0.1: what
arrives, and that a notification never raises, never waits past its timeout and never shows the
URL's secret path. Plus: the manifest records a set notify.url as "<set>", never the URL."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from pipeline.core.config import load_config
from pipeline.run import notify as notify_module
from pipeline.run.notify import (
    NOTIFY_URL_ENV,
    check_notify_url,
    notify,
    notify_url,
)
from pipeline.run.state import run_store, write_manifest
from pipeline.storage.run_layout import MANIFEST_KEY

#: The path a Slack webhook keeps its secret in: it must appear in no log line.
SECRET_PATH = "/services/T0001/B0002/sEcReTpAtH"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass
class Hook:
    """A webhook receiver: what it answers (`status`, or `hang` until `release` is set) and what
    it received (`requests`: path, headers, body)."""

    server: ThreadingHTTPServer
    status: int = 200
    hang: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str = SECRET_PATH) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"


def handler_for(hook_box: list[Hook]) -> type[BaseHTTPRequestHandler]:
    """A request handler that records each request into the Hook in `hook_box` and answers it."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hook = hook_box[0]
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hook.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if hook.hang:
                hook.release.wait(30)  # the test sets it once notify has returned
                return
            self.send_response(hook.status)
            if 300 <= hook.status < 400:
                self.send_header("Location", hook.url("/elsewhere"))
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_GET(self) -> None:  # what a followed redirect would send: recorded, answered 200
            hook_box[0].requests.append({"path": self.path, "headers": dict(self.headers)})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

    return Handler


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No webhook URL from the environment, and no proxy between the test and 127.0.0.1."""
    monkeypatch.delenv(NOTIFY_URL_ENV, raising=False)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def hook() -> Iterator[Hook]:
    """A webhook receiver on 127.0.0.1, a free port, served by a thread."""
    box: list[Hook] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(box))
    box.append(Hook(server))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield box[0]
    box[0].release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def base_cfg() -> DictConfig:
    """The real config, composed once (each test takes a copy)."""
    return load_config()


@pytest.fixture
def cfg_with(base_cfg: DictConfig) -> Callable[[str | None], DictConfig]:
    """A copy of the config with notify.url set to the given URL (or left null)."""

    def make(url: str | None) -> DictConfig:
        cfg = base_cfg.copy()
        cfg.notify = {"url": url}
        return cfg

    return make


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == notify_module.__name__ and r.levelno >= logging.WARN
    ]


def test_a_notification_posts_slack_compatible_json(
    hook: Hook, cfg_with: Callable[[str | None], DictConfig]
) -> None:
    sent = notify(cfg_with(hook.url()), "published", "r1", "run r1 published", macro_f1=0.91, n=3)
    assert sent is True
    [request] = hook.requests
    assert request["path"] == SECRET_PATH
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {
        "text": "run r1 published",
        "event": "published",
        "run_id": "r1",
        "macro_f1": 0.91,
        "n": 3,
    }


def test_the_environment_variable_is_used_when_notify_url_is_null(
    hook: Hook, cfg_with: Callable[[str | None], DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = cfg_with(None)
    assert notify_url(cfg) is None
    monkeypatch.setenv(NOTIFY_URL_ENV, "")
    assert notify_url(cfg) is None  # empty: unset
    monkeypatch.setenv(NOTIFY_URL_ENV, hook.url())
    assert notify_url(cfg) == hook.url()
    assert notify(cfg, "held", "r2", "run r2 held") is True
    assert json.loads(hook.requests[0]["body"])["event"] == "held"
    # notify.url, when set, wins over the environment
    assert notify_url(cfg_with("https://example.invalid/x")) == "https://example.invalid/x"


def test_a_server_error_returns_false_with_one_warning_that_hides_the_path(
    hook: Hook, cfg_with: Callable[[str | None], DictConfig], caplog: pytest.LogCaptureFixture
) -> None:
    hook.status = 500
    caplog.set_level(logging.DEBUG)
    assert notify(cfg_with(hook.url()), "failed", "r3", "train failed") is False
    [warning] = warnings_of(caplog)
    assert "500" in warning.getMessage() and "127.0.0.1" in warning.getMessage()
    assert SECRET_PATH not in caplog.text and "sEcReT" not in caplog.text


def test_a_redirect_is_not_followed(
    hook: Hook, cfg_with: Callable[[str | None], DictConfig], caplog: pytest.LogCaptureFixture
) -> None:
    hook.status = 302
    assert notify(cfg_with(hook.url()), "published", "r4", "published") is False
    assert [r["path"] for r in hook.requests] == [SECRET_PATH]  # /elsewhere never asked
    [warning] = warnings_of(caplog)
    assert "302" in warning.getMessage() and "redirect" in warning.getMessage()


def test_a_server_that_never_answers_costs_at_most_the_timeout(
    hook: Hook,
    cfg_with: Callable[[str | None], DictConfig],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(notify_module, "NOTIFY_TIMEOUT_S", 0.5)
    hook.hang = True
    started = time.monotonic()
    sent = notify(cfg_with(hook.url()), "published", "r5", "published")
    elapsed = time.monotonic() - started
    assert sent is False
    assert elapsed < 5  # the 0.5 s deadline, with room for a slow machine
    assert len(hook.requests) == 1  # it did arrive: the server is what kept quiet
    [warning] = warnings_of(caplog)
    assert "no answer within 0.5 s" in warning.getMessage()
    assert SECRET_PATH not in caplog.text


def test_a_refused_connection_returns_false(
    cfg_with: Callable[[str | None], DictConfig], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert notify(cfg_with(f"http://127.0.0.1:{port}{SECRET_PATH}"), "failed", "r6", "x") is False
    [warning] = warnings_of(caplog)
    assert "ConnectionRefused" in warning.getMessage(), warning.getMessage()
    assert SECRET_PATH not in caplog.text


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("hooks.example.com/x", "scheme"),
        ("https:///no-host", "no host"),
        ("https://hooks.example.com/a b", "whitespace"),
        ("https://hooks.example.com/x\n", "whitespace"),
        ("https://hooks.example.com:99999/x", "port"),
    ],
)
def test_an_unusable_url_is_refused_without_io(
    url: str,
    reason: str,
    cfg_with: Callable[[str | None], DictConfig],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    problem = check_notify_url(url)
    assert problem is not None and reason in problem
    assert "/etc/passwd" not in problem and "/x" not in problem

    def no_io(*args: Any) -> str | None:
        raise AssertionError("notify made a request for an unusable URL")

    monkeypatch.setattr(notify_module, "_post_within_deadline", no_io)
    assert notify(cfg_with(url), "failed", "r7", "x") is False
    assert len(warnings_of(caplog)) == 1 and "/etc/passwd" not in caplog.text


def test_good_urls_pass_the_check() -> None:
    for url in ("https://hooks.slack.com/services/T/B/X", "http://127.0.0.1:8080/hook?a=1"):
        assert check_notify_url(url) is None, url


def test_no_credential_reaches_the_message(
    hook: Hook, cfg_with: Callable[[str | None], DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY")
    sent = notify(
        cfg_with(hook.url()),
        "published",
        "r8",
        "published",
        store_uri="s3://bucket/store/runs/r8",
        aws_secret="leaked-1",
        API_Token="leaked-2",
        db_password="leaked-3",
        ssh_key="leaked-4",
        scores={"macro_f1": 0.9, "password": "leaked-5"},
    )
    assert sent is True
    body = hook.requests[0]["body"].decode()
    assert "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY" not in body and "leaked" not in body
    message = json.loads(body)
    assert not {"aws_secret", "API_Token", "db_password", "ssh_key"} & set(message)
    assert message["store_uri"] == "s3://bucket/store/runs/r8"
    assert message["scores"] == {"macro_f1": 0.9}


def test_no_url_sends_nothing(
    hook: Hook, cfg_with: Callable[[str | None], DictConfig], caplog: pytest.LogCaptureFixture
) -> None:
    assert notify(cfg_with(None), "published", "r9", "published") is False
    assert hook.requests == [] and warnings_of(caplog) == []


def test_an_unknown_event_is_a_programming_error_raised_before_any_io(
    hook: Hook, cfg_with: Callable[[str | None], DictConfig]
) -> None:
    with pytest.raises(ValueError, match="succeeded"):
        notify(cfg_with(hook.url()), "succeeded", "r10", "x")
    with pytest.raises(ValueError):
        notify(cfg_with(None), "done", "r10", "x")
    assert hook.requests == []


def test_the_manifest_records_a_set_notify_url_as_set_never_the_url(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    url = f"https://hooks.slack.com{SECRET_PATH}"
    cfg = make_cfg(tmp_path / "data", f"notify.url='{url}'")
    cfg.run_id = "r11"
    assert cfg.notify.url == url  # the override took
    write_manifest(cfg)
    run = run_store(cfg)
    manifest = run.read_json(MANIFEST_KEY)
    assert manifest["config"]["notify"]["url"] == "<set>"
    assert cfg.notify.url == url  # the run's own config is untouched
    raw = run.read_bytes(MANIFEST_KEY).decode()
    assert "sEcReT" not in raw and "hooks.slack.com" not in raw
    assert manifest["config"]["train"]["epochs"] == 1  # the rest is recorded as before


def test_the_manifest_records_an_unset_notify_url_as_null(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = make_cfg(tmp_path / "data", "run_id=r12")
    write_manifest(cfg)
    assert run_store(cfg).read_json(MANIFEST_KEY)["config"]["notify"] == {"url": None}
