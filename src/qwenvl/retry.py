"""The retry policy: which failures are retried and how long to wait (pure functions, one home)."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping

from qwenvl.errors import APIConnectionError, APIError, APIStatusError

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 120.0  # a longer Retry-After means "not now": fail with the hint instead of hanging
JITTER = 0.25  # the delay is shortened by up to this fraction, so that clients spread out


def should_retry(exc: APIError) -> bool:
    if isinstance(exc, APIConnectionError):  # connection errors and time-outs
        return True
    if isinstance(exc, APIStatusError):
        if exc.status not in RETRYABLE_STATUS:
            return False
        return exc.retry_after is None or exc.retry_after <= MAX_RETRY_AFTER_S
    return False


def retry_delay(attempt: int, backoff_s: float, retry_after: float | None = None,
                rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt + 1``: ``backoff_s * 2**attempt`` with jitter, and
    never less than the server's Retry-After."""
    delay = backoff_s * (2 ** attempt) * (1 - JITTER * rng())
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return max(0.0, delay)


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
