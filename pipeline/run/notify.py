"""An optional webhook that tells someone a run published, was held, or failed.

One JSON POST, Slack-compatible (Slack's incoming webhooks read `text`; other receivers get the
same object with `event`, `run_id` and the caller's fields). The URL is `notify.url`, else the
environment variable MASKSUITE_NOTIFY_URL (so a webhook's secret URL stays off the command line).

A notification must never hurt the run it reports on: `notify` never raises (except ValueError
for an unknown event, a programming error found before any I/O), waits at most
NOTIFY_TIMEOUT_S, and on any failure logs one WARNING line and returns False. A webhook URL is a
credential (a Slack webhook's path is its secret), so only its scheme://host is ever logged.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: What a notification reports: the run was published (latest.json moved), held by the publish
#: gate, or a stage failed.
NOTIFY_EVENTS = ("published", "held", "failed")
#: The environment variable read when `notify.url` is null.
NOTIFY_URL_ENV = "MASKSUITE_NOTIFY_URL"
#: Seconds a notification may take in all (connect, send, answer) before it counts as failed.
NOTIFY_TIMEOUT_S = 5.0
#: A field whose key contains one of these (case-insensitive) is dropped from the message, as a
#: guard against a caller passing a credential: messages carry run ids, scores and store URIs.
SECRET_KEY_WORDS = ("secret", "token", "password", "key")
#: The schemes a webhook URL may use.
_SCHEMES = ("http", "https")


def notify_url(cfg: DictConfig) -> str | None:
    """The webhook URL: `notify.url` when set, else $MASKSUITE_NOTIFY_URL; None when neither is
    (an empty or blank value counts as unset)."""
    section = cfg.get("notify")
    configured = section.get("url") if isinstance(section, Mapping) else None
    for value in (configured, os.environ.get(NOTIFY_URL_ENV)):
        if value is not None and str(value).strip():
            return str(value)
    return None


def check_notify_url(url: str) -> str | None:
    """Why `url` cannot be a webhook URL (for the launcher to refuse it early), or None when it
    can. The reason never quotes the URL's path or query, which may be its secret."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "the URL contains whitespace or a control character"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number in range)
    except ValueError:
        return "the URL cannot be parsed (a bad host or port)"
    if parts.scheme.lower() not in _SCHEMES:
        shown = f"{parts.scheme}://" if parts.scheme else "none"
        return f"the URL's scheme must be http:// or https://, not {shown}"
    if not parts.hostname:
        return "the URL has no host"
    return None


def safe_where(url: str) -> str:
    """`scheme://host[:port]` of `url`: what may be shown of a webhook URL (never its path, query
    or user info)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port is not None else ""
        return f"{parts.scheme}://{parts.hostname or '?'}{port}"
    except ValueError:
        return "<unparsable URL>"


def without_secrets(value: Any) -> Any:
    """`value` with every mapping key that looks like a credential (SECRET_KEY_WORDS) removed, at
    any depth of nested mappings and lists: a defensive filter, callers pass no secrets."""
    if isinstance(value, Mapping):
        return {
            k: without_secrets(v)
            for k, v in value.items()
            if not any(word in str(k).lower() for word in SECRET_KEY_WORDS)
        }
    if isinstance(value, list | tuple):
        return [without_secrets(v) for v in value]
    return value


def notify(cfg: DictConfig, event: str, run_id: str, text: str, **fields: Any) -> bool:
    """POST `{"text", "event", "run_id", **fields}` as JSON to the configured webhook.

    Returns True on a 2xx answer; False when no URL is configured (nothing is sent) or on any
    failure (a bad URL, a refused connection, no answer within NOTIFY_TIMEOUT_S, a non-2xx or a
    redirect, which is not followed), logged as one WARNING line naming only scheme://host.
    Fields whose key looks like a credential are dropped (see `without_secrets`).
    Raises ValueError for an event not in NOTIFY_EVENTS, before any I/O.
    """
    if event not in NOTIFY_EVENTS:
        raise ValueError(f"unknown notify event {event!r}: expected one of {NOTIFY_EVENTS}")
    url: str | None = None
    try:
        url = notify_url(cfg)
        if url is None:
            return False
        problem = check_notify_url(url)
        if problem is None:
            payload = {"text": text, "event": event, "run_id": run_id, **fields}
            problem = _post_within_deadline(url, without_secrets(payload), NOTIFY_TIMEOUT_S)
    except Exception as e:  # never let a notification fail the run
        problem = f"{type(e).__name__}: {e}"
    if problem is None:
        return True
    where = safe_where(url) if url is not None else "the webhook"
    if url is not None:
        problem = _scrub(problem, url)
    log.warning("notify %s of run %s not sent to %s: %s", event, run_id, where, _flat(problem))
    return False


def _post_within_deadline(url: str, payload: dict[str, Any], timeout: float) -> str | None:
    """POST `payload` in a daemon thread and wait at most `timeout` seconds in all (the socket
    timeout alone bounds each step, not DNS nor the sum); the problem, or None on a 2xx."""
    outcome: list[str | None] = []
    body = json.dumps(payload, default=str).encode()
    worker = threading.Thread(
        target=lambda: outcome.append(_post(url, body, timeout)), name="notify", daemon=True
    )
    worker.start()
    worker.join(timeout)
    if not outcome:  # still waiting: the thread ends by itself at its socket timeout
        return f"no answer within {timeout:g} s"
    return outcome[0]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: urllib then raises HTTPError with the 3xx status."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _post(url: str, body: bytes, timeout: float) -> str | None:
    """One POST of the JSON `body`; the problem in words, or None on a 2xx answer. Never raises."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as answer:
            status = int(answer.status)
    except urllib.error.HTTPError as e:
        e.close()
        redirect = " (a redirect: not followed)" if 300 <= e.code < 400 else ""
        return f"answered HTTP {e.code}{redirect}"
    except urllib.error.URLError as e:
        return f"{type(e.reason).__name__}: {e.reason}"
    except Exception as e:  # a timeout while reading, a broken connection, anything
        return f"{type(e).__name__}: {e}"
    return None if 200 <= status < 300 else f"answered HTTP {status}"


def _scrub(message: str, url: str) -> str:
    """`message` with the URL and its path and query (a webhook's secret) blanked out, in case an
    error message quotes them."""
    message = message.replace(url, safe_where(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        return message
    for secret in (parts.path, parts.query):
        if len(secret) > 1:
            message = message.replace(secret, "<hidden>")
    return message


def _flat(message: str) -> str:
    """`message` on one line (a log line per failure)."""
    return " ".join(message.split()) or "unknown error"
