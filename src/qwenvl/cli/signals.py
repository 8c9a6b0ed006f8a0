"""SIGTERM and SIGHUP end a verb the way Ctrl-C does, so that what was paid for is kept.

``kill``, ``docker stop``, CI time-outs and process managers send SIGTERM; a closed terminal sends SIGHUP. Their
default action ends the process at once: a batch's answers in flight were lost (and paid again by the next run),
and its output was not written. While a verb runs (``terminate_like_ctrl_c``, around ``QwenVLGroup.invoke``),
either signal raises ``Terminated`` in the main thread instead: a ``KeyboardInterrupt``, so every verb's Ctrl-C
handling applies unchanged (a batch waits for its requests in flight and writes its output, a stream is closed,
the clients and stores are closed, the usage log is committed), and a second signal leaves at once as a second
Ctrl-C does. The exit code is the shell's convention that Ctrl-C's 130 (128 + SIGINT) already follows: 128 + the
signal's number, 143 for SIGTERM and 129 for SIGHUP, so a supervisor sees the process ended by its signal.

A signal that is ignored when the verb starts (``nohup`` ignores SIGHUP) stays ignored, and one whose handler was
set by the embedding program stays that program's. Handlers can only be set from the main thread; elsewhere
(a verb invoked from a worker thread) nothing changes. POSIX only: Windows has neither signal to catch this way.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGHUP while a verb runs; ``signum`` says which, ``exit_code``
    is 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def exit_code(exc: KeyboardInterrupt) -> int:
    """The exit code of a verb ended by ``exc``: 128 + the signal's number (130 for Ctrl-C)."""
    return exc.exit_code if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def _signals() -> list[signal.Signals]:
    return [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]


@contextlib.contextmanager
def terminate_like_ctrl_c() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise ``Terminated`` (see the module doc); the previous
    handlers are put back afterwards. Raises nothing itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in _signals():
        if signal.getsignal(sig) is signal.SIG_DFL:  # ignored, or the embedding program's: left alone
            previous[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def hangup_stops(stop: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """For a server that stops gracefully on SIGTERM and SIGINT but not on SIGHUP (uvicorn): while the block
    runs, SIGHUP calls ``stop(signum, frame)`` instead of raising in the middle of its event loop; once the
    block has ended, a SIGHUP that came raises ``Terminated``. Nothing changes when SIGHUP is not ours
    (ignored, the embedding program's, or not the main thread)."""
    hup = getattr(signal, "SIGHUP", None)
    if hup is None or threading.current_thread() is not threading.main_thread() or signal.getsignal(hup) is not _raise:
        yield
        return
    came: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        came.append(signum)
        stop(signum, frame)

    signal.signal(hup, handler)
    try:
        yield
    finally:
        signal.signal(hup, _raise)
    if came:
        raise Terminated(hup)


@contextlib.contextmanager
def ends_as_its_signal(server: Any) -> Iterator[None]:
    """For a uvicorn ``server`` run in the block: when a signal stopped it (its ``handle_exit`` ran) and the block
    ends without that signal having ended the process, raise it as a verb's interrupt: KeyboardInterrupt for
    SIGINT (exit 130), ``Terminated`` for SIGTERM or SIGHUP (143, 129). uvicorn raises the signal again after its
    graceful shutdown with the handler of before, which does nothing when the signal was ignored at start (a job
    started in the background by a shell ignores SIGINT): the server stopped, gracefully, and the exit code must
    still say why. Raises nothing when no signal came."""
    came: list[int] = []
    handle_exit = server.handle_exit

    def recorded(signum: int, frame: FrameType | None) -> None:
        came.append(signum)
        handle_exit(signum, frame)

    server.handle_exit = recorded  # what uvicorn sets as the handler of each signal it stops on
    try:
        yield
    finally:
        server.handle_exit = handle_exit
    if came:
        if came[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(came[0])
