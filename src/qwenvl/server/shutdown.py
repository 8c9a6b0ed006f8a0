"""The one shutdown budget of ``qwenvl serve`` (``ServeSettings.shutdown_grace_s``, ``SERVE_GRACE_S`` seconds).

It starts with the signal (SIGTERM, SIGINT, SIGHUP): from then on the Batch API starts no new line, and uvicorn
stops taking connections and waits for the requests it holds (``timeout_graceful_shutdown``, set by the CLI to the
budget less ``SERVE_CUT_S``). Both end at the same cut, ``SERVE_CUT_S`` before the budget's end: a request still
unanswered gets its 503, a Batch API line still unanswered is cancelled (run again after a restart; an answer that
had arrived is kept in the database and written then). The last ``SERVE_CUT_S`` seconds are for what the cut left.
An app served without signals (in a thread) starts its budget when its lifespan ends."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from qwenvl._constants import SERVE_CUT_S


class Budget:
    """When the shutdown began and when what is in flight is cut (``time.monotonic()`` seconds)."""

    def __init__(self, grace_s: float, on_begin: Callable[[float], None]) -> None:
        self.grace_s = grace_s
        self.cut_share_s = min(SERVE_CUT_S, grace_s / 2)  # the budget's end, kept for what the cut left
        self.on_begin = on_begin  # called once with the cut's time (the Batch API runner's ``begin_stop``)
        self.cut_at: float | None = None

    def begin(self) -> float:
        """Start the budget (once; later calls keep the first start). Returns the cut's time."""
        if self.cut_at is None:
            self.cut_at = time.monotonic() + self.grace_s - self.cut_share_s
            self.on_begin(self.cut_at)
        return self.cut_at

    def left_after_cut(self) -> float:
        """Seconds left of the budget's end, at least 0.2 (for what the cut left to finish)."""
        return max(self.begin() + self.cut_share_s - time.monotonic(), 0.2)

    def on_stop_signals(self) -> Callable[[], None]:
        """In the main thread (``qwenvl serve``, each of its workers): SIGINT, SIGTERM and SIGHUP first ``begin``
        (in the event loop, which must be running), then do what they did (uvicorn's ``handle_exit``). A signal
        ignored or left at its default is left alone. Returns the undo. Elsewhere (an app served in a thread)
        nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        wrapped: dict[int, tuple[Any, Any]] = {}
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            before = signal.getsignal(sig) if sig is not None else None
            if sig is None or not callable(before):
                continue

            def handler(signum: int, frame: Any, before: Callable[[int, Any], Any] = before) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is left to stop
                    loop.call_soon_threadsafe(self.begin)
                before(signum, frame)

            signal.signal(sig, handler)
            wrapped[sig] = (before, handler)

        def undo() -> None:
            for sig, (before, handler) in wrapped.items():
                if signal.getsignal(sig) is handler:
                    signal.signal(sig, before)

        return undo
