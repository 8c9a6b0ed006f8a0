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
