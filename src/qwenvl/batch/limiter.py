"""Adaptive concurrency for batches: AIMD on 429, plus optional requests- and tokens-per-minute ceilings.

The state machine reads an injectable clock, so it is tested with a fake one; the blocking ``acquire`` around
it (for the batch's worker threads) only waits on a condition variable for what ``delay`` says.

- **Concurrency** starts at ``max_concurrency``. A 429 halves it (multiplicative decrease, never below
  ``min_concurrency``) and pauses every new request for a backoff: the service's Retry-After when it sent
  one, else ``backoff_s * 2**n`` for the n-th decrease in a row (with jitter); either at most ``max_backoff_s``
  (default ``MAX_RETRY_DELAY_S``, 20 s: the bound of every wait between attempts).
  The 429s of requests that were already in flight when concurrency was lowered belong to the same
  congestion event: they extend the pause but do not lower it again (one decrease per round trip, as in
  TCP). Every ``concurrency`` successes in a row add one slot (additive increase: +1 per window), so the
  batch climbs back gradually to ``max_concurrency``.
- **rpm / tpm** are token buckets refilled continuously that hold one second's worth (at least one request),
  so the rate never exceeds the ceiling by more than that burst. tpm is charged the estimated input tokens
  before a request and corrected with the real total (input + output) when the answer arrives; the bucket
  may go into debt for a request larger than its capacity, which then delays the ones after it.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from qwenvl._constants import JITTER, MAX_RETRY_DELAY_S


class TokenBucket:
    def __init__(self, per_minute: float, clock: Callable[[], float]) -> None:
        if per_minute <= 0:
            raise ValueError("a rate must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self._clock = clock
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` may be taken (a request larger than the bucket waits for a full one)."""
        self._refill()
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def give(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)


@dataclass
class Slot:
    """One admitted request: when it started and what it was charged."""

    started: float
    tokens: int


class AdaptiveLimiter:
    def __init__(
        self,
        max_concurrency: int = 8,
        *,
        min_concurrency: int = 1,
        rpm: float | None = None,
        tpm: float | None = None,
        backoff_s: float = 1.0,
        max_backoff_s: float = MAX_RETRY_DELAY_S,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.min_concurrency = max(1, min(min_concurrency, max_concurrency))
        self.limit = float(max_concurrency)
        self.in_flight = 0
        self.paused_until = -math.inf
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.rate_limited = 0  # 429s seen
        self.decreases = 0
        self._streak = 0  # decreases since the last success
        self._successes = 0  # successes since concurrency last changed
        self._last_decrease = -math.inf
        self._clock = clock
        self._rng = rng
        self.rpm = TokenBucket(rpm, clock) if rpm else None
        self.tpm = TokenBucket(tpm, clock) if tpm else None
        self._cond = threading.Condition()  # guards the state; waiters are woken by every change

    @property
    def concurrency(self) -> int:
        """How many requests may be in flight now."""
        return max(self.min_concurrency, int(self.limit))

    # --- the state machine (synchronous, clock-driven) -------------------------------------------
    def delay(self, tokens: int = 0) -> float:
        """0 when a request may start now; else seconds to wait (inf: until a request finishes)."""
        now = self._clock()
        waits = [self.paused_until - now if now < self.paused_until else 0.0]
        if self.in_flight >= self.concurrency:
            waits.append(math.inf)
        if self.rpm is not None:
            waits.append(self.rpm.wait_time(1))
        if self.tpm is not None and tokens:
            waits.append(self.tpm.wait_time(tokens))
        return max(waits)

    def try_acquire(self, tokens: int = 0) -> Slot | None:
        with self._cond:
            if self.delay(tokens) > 0:
                return None
            self.in_flight += 1
            if self.rpm is not None:
                self.rpm.take(1)
            if self.tpm is not None and tokens:
                self.tpm.take(tokens)
            return Slot(started=self._clock(), tokens=tokens)

    def release(self, slot: Slot, *, actual_tokens: int | None = None) -> None:
        """The request is over; ``actual_tokens`` (input + output) corrects the tpm charge."""
        with self._cond:
            self.in_flight = max(0, self.in_flight - 1)
            if self.tpm is not None and actual_tokens is not None:
                diff = actual_tokens - slot.tokens
                if diff > 0:
                    self.tpm.take(diff)
                elif diff < 0:
                    self.tpm.give(-diff)
            self._cond.notify_all()

    def on_success(self) -> None:
        with self._cond:
            self._streak = 0
            if self.limit >= self.max_concurrency:
                return
            self._successes += 1
            if self._successes >= self.concurrency:  # a whole window went through: one more slot
                self._successes = 0
                self.limit = min(float(self.max_concurrency), math.floor(self.limit) + 1.0)
                self._cond.notify_all()

    def on_rate_limited(self, slot: Slot | None = None, retry_after: float | None = None) -> float:
        """A 429: lower concurrency (once per congestion event) and pause new requests. Returns the pause."""
        with self._cond:
            return self._rate_limited(slot, retry_after)

    def _rate_limited(self, slot: Slot | None, retry_after: float | None) -> float:
        now = self._clock()
        self.rate_limited += 1
        same_event = slot is not None and slot.started < self._last_decrease
        if not same_event:
            self.limit = max(float(self.min_concurrency), float(math.floor(self.limit) // 2))
            self._successes = 0
            self._last_decrease = now
            self._streak += 1
            self.decreases += 1
        if retry_after is not None:
            pause = retry_after
        else:
            pause = self.backoff_s * 2 ** max(0, self._streak - 1) * (1 - JITTER * self._rng())
        pause = min(pause, self.max_backoff_s)
        self.paused_until = max(self.paused_until, now + pause)
        return pause

    # --- waiting (threads) -------------------------------------------------------------------------
    def acquire(self, tokens: int = 0, stop: threading.Event | None = None) -> Slot | None:
        """Block until a request may start and admit it; None when ``stop`` is set meanwhile."""
        with self._cond:
            while stop is None or not stop.is_set():
                slot = self.try_acquire(tokens)
                if slot is not None:
                    return slot
                wait = self.delay(tokens)
                self._cond.wait(None if math.isinf(wait) else max(wait, 0.001))
            return None

    def wake(self) -> None:
        """Wake every waiter (e.g. to let them see a stop event)."""
        with self._cond:
            self._cond.notify_all()
