"""Signals held back while a job writes something that takes more than one file.

A training state is two files (pipeline/ml/checkpoints.py: the tensors, then the JSON naming their
SHA-256) beside the best checkpoint, which the state names too. A scheduler's signal between those
writes (Slurm's time-limit or preemption signal, which requeues the job; Kubernetes' SIGTERM; a
Ctrl-C) would leave a pair that does not match, and the restarted job would have to train from
scratch. `deferred_signals` holds such signals until the writes are done, then delivers them, in
the order they came, to the handlers that were there (submitit's requeue, the default exit).
SIGKILL cannot be held: a job killed outright between the writes still trains from scratch, with a
warning naming the file that does not match.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: What schedulers and people send to end or requeue a job (SIGUSR1/2: Slurm's --signal).
HELD = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


@contextmanager
def deferred_signals(signums: tuple[signal.Signals, ...] = HELD) -> Iterator[list[int]]:
    """Within the block, `signums` are recorded instead of handled; on leaving it the previous
    handlers are restored and each recorded signal is raised again. Yields the list of those
    recorded so far. Outside the main thread (where Python cannot set handlers) it holds nothing.
    """
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return

    def record(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    previous = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, record)
    try:
        yield pending
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in pending:
            signal.raise_signal(signum)
