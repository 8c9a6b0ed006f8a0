"""The retry policy: which failures are retried, how long to wait, and how a wait is told (one home).

- **Retried**: connection errors and time-outs, and HTTP 429, 500, 502, 503 and 504 — also when the status
  arrives as the first event of a 200 stream, before any content (``qwenvl.transport`` treats that event
  like the same HTTP status).
- **Never re-sent once answered**: a POST whose status line arrived with a status that is not retried (a 200
  whose body or stream then broke or stalled) is not sent again, since the service may have done, and charged
  for, the work (``may_resend``). A failure before any status line (refused, reset, closed without a reply,
  a time-out waiting for the headers) is retried as a connection error.
- **Delay** before retry ``n`` (0-based): ``backoff_s * 2**n``, shortened by up to 25 % of jitter so that
  clients spread out, never less than the service's ``Retry-After``, and never more than
  ``MAX_RETRY_DELAY_S`` (20 s). openai-python caps its backoff at 8 s; DashScope counts its rate limits per
  minute (RPM/TPM), so waits of up to 20 s let three retries span a whole window, while ``--max-retries 20``
  still waits at most about 7 minutes in all.
- **A Retry-After beyond the cap** is not waited for: the attempt ends at once with a hint that says when to
  try again (``give_up_hint``), instead of holding a terminal or a batch worker for an unknown time.
- **Visible waits**: the transport calls an ``on_retry`` hook with a ``RetryNotice`` before each wait; the
  CLI prints ``notice.describe()`` on a terminal ("rate limited, retrying in 4 s (2/3)").
- **Every retried attempt is logged once**, whatever backend sends it (one a client made, or one given to
  ``Client(backend=...)``): the transport also tells the listener of the request being sent in this thread or
  task (``listening``; the usage log's exchange, ``qwenvl.store.exchange``), through ``tell``.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from qwenvl._constants import JITTER, MAX_RETRY_DELAY_S
from qwenvl.errors import APIConnectionError, APIError, APIStatusError, APITimeoutError

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = MAX_RETRY_DELAY_S  # a longer Retry-After means "not now": give up with when to retry


def should_retry(exc: APIError) -> bool:
    if isinstance(exc, APIConnectionError):  # connection errors and time-outs
        return True
    if isinstance(exc, APIStatusError):
        if exc.status not in RETRYABLE_STATUS:
            return False
        return exc.retry_after is None or exc.retry_after <= MAX_RETRY_AFTER_S
    return False


def may_resend(method: str, status: int | None) -> bool:
    """Whether a request whose reply failed midway may be sent again: always before any status line arrived
    (``status`` None), and for a GET; a POST only when its status is itself retried (``RETRYABLE_STATUS``)."""
    return status is None or method.upper() != "POST" or status in RETRYABLE_STATUS


def retry_delay(
    attempt: int, backoff_s: float, retry_after: float | None = None, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number ``attempt + 1``: ``backoff_s * 2**attempt`` with jitter, never
    less than the server's Retry-After, and at most ``MAX_RETRY_DELAY_S``."""
    delay = backoff_s * (2 ** min(attempt, 60)) * (1 - JITTER * rng())
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return max(0.0, min(delay, MAX_RETRY_DELAY_S))


def parse_retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """``retry-after-ms``, then ``Retry-After`` in seconds or as an HTTP date; None when absent or bad."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - now())


def give_up_hint(exc: APIError, now: Callable[[], float] = time.time) -> str | None:
    """When the service said how long to wait (Retry-After) and qwenvl will not wait: when to try again."""
    wait = getattr(exc, "retry_after", None)
    if not isinstance(exc, APIStatusError) or wait is None or wait <= 0:
        return None
    at = time.strftime("%H:%M:%S", time.localtime(now() + wait))
    why = (
        f"more than the {MAX_RETRY_DELAY_S:g} s qwenvl waits between attempts"
        if wait > MAX_RETRY_AFTER_S
        else "and the retries are used up"
    )
    return f"The service asks to wait {math.ceil(wait)} s ({why}): try again after {at}."


@dataclass(frozen=True)
class RetryNotice:
    """Told to an ``on_retry`` hook before a wait: retry ``number`` of ``of`` comes after ``delay_s``."""

    error: APIError
    number: int  # 1-based: the retry about to be made
    of: int  # max_retries
    delay_s: float

    def describe(self) -> str:
        """One line for a terminal, e.g. "rate limited, retrying in 4 s (2/3)"."""
        exc = self.error
        if isinstance(exc, APIStatusError) and exc.status == 429:
            what = "rate limited"
        elif isinstance(exc, APIStatusError):
            what = f"service error (HTTP {exc.status})"
        elif isinstance(exc, APITimeoutError):
            what = "timed out"
        else:
            what = "connection failed"
        wait = f"{self.delay_s:.0f}" if self.delay_s >= 1 else f"{self.delay_s:.1f}"
        return f"{what}, retrying in {wait} s ({self.number}/{self.of})"


RetryHook = Callable[[RetryNotice], None]

# The listener of the request being sent in this thread or task (``listening``): told of each attempt retried,
# whichever transport retries it, beside that transport's own ``on_retry``.
_listener: ContextVar[RetryHook | None] = ContextVar("qwenvl_retry_listener", default=None)


def tell(notice: RetryNotice, on_retry: RetryHook | None) -> None:
    """Tell of a retry before its wait: the listener of the request being sent here (``listening``), then
    ``on_retry`` (the transport's own hook, e.g. the CLI's line on a terminal). The transports' one call. Raises
    what the hooks raise."""
    listener = _listener.get()
    if listener is not None:
        listener(notice)
    if on_retry is not None:
        on_retry(notice)


@contextlib.contextmanager
def listening(hook: RetryHook) -> Iterator[None]:
    """Within the block, in this thread or task (and the threads it starts with ``asyncio.to_thread``), every retry
    a transport makes is told to ``hook`` (``tell``). Restored to what it was at exit (not ``reset``: a stream may be
    closed from another context). Raises nothing of its own."""
    before = _listener.get()
    _listener.set(hook)
    try:
        yield
    finally:
        _listener.set(before)


UNREACHABLE_ITEMS = 3  # requests failing to connect on every attempt, before any answer, that stop a run (exit 5)


class Reachability:
    """The one rule by which a run of many requests (a batch's items, extract's files, ...) stops when the service
    cannot be reached, instead of sending every other request only to wait for its time-outs and fail the same.

    Each request's outcome, after its retries, is told: ``answered`` when the service answered anything (an answer,
    or an HTTP status: it is reached, and the rule no longer applies for the run); ``failed`` with its
    APIConnectionError. Once ``UNREACHABLE_ITEMS`` requests have failed to connect on every attempt (refused, DNS,
    TLS, a time-out connecting or sending) before the service answered anything, ``failed`` returns the error that
    stops the run ("the service cannot be reached: the first 3 ``what`` failed on every attempt (...)", the same
    class as the last failure, exit 5); requests that were delivered and got no reply in time
    (``APITimeoutError.delivered``) are counted apart, ``UNREACHABLE_ITEMS`` of them returning an APITimeoutError
    ("the service answers too slowly", with a hint to raise --timeout: they may be billed). ``then``: the hint's end,
    how to send the failed ones again once the service answers (e.g. "add --retry-errors to send the failed items
    again"). Thread-safe; raises nothing."""

    def __init__(self, what: str = "requests", then: str = "run the same command again.") -> None:
        self.what, self.then = what, then
        self.reached = False  # the service answered something (an answer or an HTTP status)
        self.unreached = 0  # requests that could not connect on any attempt, before the service answered anything
        self.unanswered = 0  # requests delivered and timed out on every attempt, likewise
        self._lock = threading.Lock()

    def answered(self) -> None:
        """The service answered a request (an answer, or any HTTP status): it is reached."""
        self.reached = True

    def failed(self, exc: APIError) -> APIConnectionError | None:
        """Count ``exc``, a request's failure after its retries: the error that stops the run once the service is
        taken for unreachable (or too slow), else None (an HTTP status counts as ``answered``; other errors, none)."""
        if isinstance(exc, APIStatusError):
            self.answered()
            return None
        if not isinstance(exc, APIConnectionError):
            return None
        delivered = isinstance(exc, APITimeoutError) and exc.delivered
        with self._lock:
            if self.reached:
                return None
            if delivered:
                self.unanswered += 1
                count = self.unanswered
            else:
                self.unreached += 1
                count = self.unreached
            if count < UNREACHABLE_ITEMS:
                return None
        if delivered:
            slow = APITimeoutError(
                f"the service answers too slowly: the first {UNREACHABLE_ITEMS} {self.what} were sent and got no reply "
                f"on any attempt ({exc.raw_message})",
                hint="The requests reached the service (they may be billed): raise --timeout (e.g. --timeout 300), "
                f"then {self.then}",
            )
            slow.delivered = True
            return slow
        return type(exc)(
            f"the service cannot be reached: the first {UNREACHABLE_ITEMS} {self.what} failed on every attempt "
            f"({exc.raw_message})",
            hint=f"{exc.raw_hint + ' ' if exc.raw_hint else ''}Once it answers, {self.then}",
        )
