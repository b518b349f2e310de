"""A signal that arrives while a training state is being written is held until every file of it
is written, then handled as it would have been (pipeline/core/signals.py)."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from pipeline.core.signals import deferred_signals


def test_a_signal_during_the_writes_is_handled_after_them_by_the_handler_in_place() -> None:
    events: list[str] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        events.append(f"handled {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        with deferred_signals() as pending:
            events.append("tensors written")
            os.kill(os.getpid(), signal.SIGUSR2)  # Slurm's requeue signal, mid-save
            os.kill(os.getpid(), signal.SIGUSR2)
            events.append("json written")
            assert pending == [signal.SIGUSR2, signal.SIGUSR2]
        assert events == [
            "tensors written",
            "json written",
            "handled SIGUSR2",
            "handled SIGUSR2",
        ]
        assert signal.getsignal(signal.SIGUSR2) is handler  # restored
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_default_sigterm_still_ends_the_process_after_the_writes() -> None:
    """SIGTERM with its default action ends a child process, but only after the block."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: hold SIGTERM while "writing", then leave the block
        os.close(read)
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            os.write(write, b"written")
        os.write(write, b" survived")  # never reached: the held SIGTERM ends the process
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    out = os.read(read, 100)
    os.close(read)
    assert out == b"written"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_outside_the_main_thread_nothing_is_held() -> None:
    seen: list[list[int]] = []

    def body() -> None:
        with deferred_signals() as pending:
            seen.append(list(pending))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [[]]  # no error: Python sets handlers only in the main thread
