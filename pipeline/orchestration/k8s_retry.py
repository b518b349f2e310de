"""Calls to the Kubernetes API server that outlast an outage (a control-plane upgrade, a network
cut): each call is retried with exponential backoff (1 s doubling to 60 s) until it answers or the
outage has lasted `k8s.api_outage_seconds` in all; then one line says what could not be done.

Only transient answers are retried: no answer at all (connection refused or reset, DNS, timeouts)
and 429, 500, 502, 503, 504. Any other answer (404, 403, 409, 422, ...) goes to the caller at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pipeline.core.errors import StageFailed

log = logging.getLogger("pipeline.orchestration.k8s")

#: API answers worth retrying (throttled, server or gateway trouble).
TRANSIENT_STATUS = (429, 500, 502, 503, 504)

T = TypeVar("T")


class ApiUnreachable(StageFailed):
    """The API server gave no usable answer for longer than the outage budget."""


@dataclass(frozen=True)
class Patience:
    """How long to wait for the API server: `budget` seconds of outage in all, retries `first`
    seconds apart doubling to `cap`. `sleep` and `clock` are injectable (tests run an outage of
    minutes in milliseconds)."""

    budget: float = 1800.0
    first: float = 1.0
    cap: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def delays(self) -> Iterator[float]:
        """1, 2, 4, ... seconds, then `cap` for ever."""
        delay = self.first
        while True:
            yield delay
            delay = min(delay * 2, self.cap)


def transient_reason(e: Exception) -> str | None:
    """Why `e` is worth a retry ("503 Service Unavailable", "connection refused"), or None."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(e, ApiException):
        return f"{e.status} {e.reason}" if e.status in TRANSIENT_STATUS else None
    if isinstance(e, OSError | HTTPError):
        return str(e) or type(e).__name__
    return None


def call_api(call: Callable[[], T], what: str, patience: Patience) -> T:
    """`call()`, retried while the API server answers transiently (see the module's docstring).
    Raises ApiUnreachable, naming `what` ("read job ns/name") and the last error, once the
    outage would outlast `patience.budget`; any other error of `call` is raised as it is."""
    started: float | None = None
    for delay in patience.delays():
        try:
            return call()
        except Exception as e:
            why = transient_reason(e)
            if why is None:
                raise
            now = patience.clock()
            started = now if started is None else started
            if now - started + delay > patience.budget:
                raise ApiUnreachable(
                    f"cannot {what}: the API server did not answer for {now - started:.0f} s "
                    f"(k8s.api_outage_seconds={patience.budget:g}); last error: {why}"
                ) from e
            log.warning("cannot %s (%s): retrying in %g s", what, why, delay)
        patience.sleep(delay)
    raise AssertionError("unreachable")  # delays() never ends
