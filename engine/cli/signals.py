"""SIGTERM handled like Ctrl-C: what docker, systemd and Kubernetes send must clean up and exit 143, not leave files.

`terminate_like_interrupt()` installs a SIGTERM handler (main thread only) that raises `Terminated`,
a KeyboardInterrupt subclass, so every `except BaseException` / `finally` cleanup that already runs
on Ctrl-C (writers removing their `.partial` file, avatar folders, engines) runs on SIGTERM too.
`exit_status(exc)` gives the shell's convention: 128 + the signal number (130 SIGINT, 143 SIGTERM).

An asyncio server should not rely on an exception raised at an arbitrary await point: it calls
`loop.add_signal_handler(signal.SIGTERM, stop)` (and SIGINT) with its own graceful `stop`, inside
the loop, and returns `exit_status(...)` for the signal it got (`TERM_EXIT_CODE`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNAL_EXIT_BASE = 128
INTERRUPT_EXIT_CODE = SIGNAL_EXIT_BASE + signal.SIGINT  # 130
TERM_EXIT_CODE = SIGNAL_EXIT_BASE + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises Terminated in the main thread; the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(exc: BaseException) -> int:
    """128 + signal number for Terminated, 130 for any other KeyboardInterrupt (Ctrl-C)."""
    if isinstance(exc, Terminated):
        return SIGNAL_EXIT_BASE + int(exc.signum)
    return INTERRUPT_EXIT_CODE
