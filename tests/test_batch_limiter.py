"""The adaptive limiter, driven by a fake clock: AIMD on 429, pauses, recovery, rpm/tpm buckets."""

from __future__ import annotations

import math
import threading
import time

import pytest

from qwenvl.batch.limiter import AdaptiveLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(max_concurrency: int = 8, **kw) -> tuple[AdaptiveLimiter, Clock]:
    clock = Clock()
    kw.setdefault("rng", lambda: 0.0)  # no jitter: exact pauses
    return AdaptiveLimiter(max_concurrency, clock=clock, **kw), clock


def fill(limiter: AdaptiveLimiter, n: int) -> list:
    slots = [limiter.try_acquire() for _ in range(n)]
    assert all(slots)
    return slots


def test_admits_up_to_the_concurrency_then_waits_for_a_release():
    lim, _ = make(4)
    slots = fill(lim, 4)
    assert lim.try_acquire() is None and math.isinf(lim.delay())
    lim.release(slots[0])
    assert lim.delay() == 0 and lim.try_acquire() is not None


def test_429_halves_concurrency_and_pauses_new_requests():
    lim, clock = make(8, backoff_s=1.0)
    slots = fill(lim, 8)
    pause = lim.on_rate_limited(slots[0])
    assert lim.concurrency == 4 and pause == 1.0 and lim.rate_limited == 1
    for s in slots:
        lim.release(s)
    assert lim.delay() == pytest.approx(1.0)  # paused although no request is in flight
    clock.advance(0.5)
    assert lim.try_acquire() is None and lim.delay() == pytest.approx(0.5)
    clock.advance(0.5)
    fill(lim, 4)
    assert lim.try_acquire() is None  # only 4 now


def test_retry_after_sets_the_pause():
    lim, clock = make(8)
    slot = lim.try_acquire()
    assert lim.on_rate_limited(slot, retry_after=7.5) == 7.5
    lim.release(slot)
    clock.advance(7.4)
    assert lim.try_acquire() is None
    clock.advance(0.1)
    assert lim.try_acquire() is not None


def test_429s_of_requests_already_in_flight_count_as_one_congestion_event():
    lim, clock = make(16)
    slots = fill(lim, 16)
    clock.advance(0.1)
    for s in slots:  # all sixteen were sent before the first 429 arrived
        lim.on_rate_limited(s)
    assert lim.concurrency == 8 and lim.decreases == 1 and lim.rate_limited == 16
    for s in slots:
        lim.release(s)
    clock.advance(60)
    late = lim.try_acquire()  # sent after the decrease: a new congestion event
    clock.advance(0.1)
    lim.on_rate_limited(late)
    assert lim.concurrency == 4 and lim.decreases == 2


def test_consecutive_decreases_back_off_exponentially_up_to_the_cap():
    lim, clock = make(64, backoff_s=1.0, max_backoff_s=5.0)
    pauses = []
    for _ in range(5):
        slot = lim.try_acquire()
        assert slot is not None
        clock.advance(0.01)
        pauses.append(lim.on_rate_limited(slot))
        lim.release(slot)
        clock.advance(pauses[-1])
    assert pauses == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert lim.concurrency == 2  # 64 -> 32 -> 16 -> 8 -> 4 -> 2


def test_never_below_the_minimum():
    lim, clock = make(4, min_concurrency=2)
    for _ in range(5):
        slot = lim.try_acquire()
        clock.advance(0.01)
        lim.on_rate_limited(slot)
        lim.release(slot)
        clock.advance(100)
    assert lim.concurrency == 2


def test_recovers_gradually_one_slot_per_window_of_successes():
    lim, clock = make(8)
    slot = lim.try_acquire()
    clock.advance(0.01)
    lim.on_rate_limited(slot)
    lim.release(slot)
    assert lim.concurrency == 4
    history = []
    for _ in range(30):
        lim.on_success()
        history.append(lim.concurrency)
    # additive increase: +1 after 4 successes, +1 after 5 more, ... (one per window of `concurrency`)
    assert [history.index(n) + 1 for n in (5, 6, 7, 8)] == [4, 9, 15, 22]
    assert history[-1] == 8 and max(history) == 8


def test_a_success_resets_the_backoff_streak():
    lim, clock = make(64, backoff_s=1.0)
    slot = lim.try_acquire()
    clock.advance(0.01)
    assert lim.on_rate_limited(slot) == 1.0
    lim.release(slot)
    clock.advance(1.0)
    lim.on_success()
    slot = lim.try_acquire()
    clock.advance(0.01)
    assert lim.on_rate_limited(slot) == 1.0  # not 2.0


def test_rpm_ceiling():
    lim, clock = make(100, rpm=60)  # one request a second, a burst of one
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is None and lim.delay() == pytest.approx(1.0)
    clock.advance(0.5)
    assert lim.delay() == pytest.approx(0.5)
    clock.advance(0.5)
    assert lim.try_acquire() is not None


def test_rpm_over_a_minute():
    lim, clock = make(1000, rpm=600)
    started = 0
    for _ in range(600):  # one simulated minute in steps of 0.1 s
        while (slot := lim.try_acquire()) is not None:
            started += 1
            lim.release(slot)
        clock.advance(0.1)
    assert 600 <= started <= 600 + 10  # the ceiling, plus at most one second's burst


def test_tpm_charges_the_estimate_and_settles_with_the_real_count():
    lim, _ = make(100, tpm=6000)  # 100 tokens a second, a bucket of 100
    first = lim.try_acquire(tokens=80)
    assert first is not None
    assert lim.try_acquire(tokens=80) is None and lim.delay(80) == pytest.approx(0.6)
    lim.release(first, actual_tokens=20)  # the answer was cheaper: 60 tokens come back
    assert lim.try_acquire(tokens=80) is not None


def test_tpm_request_larger_than_the_bucket_waits_for_a_full_bucket_then_goes_into_debt():
    lim, clock = make(100, tpm=600)  # 10 tokens a second, bucket of 10
    assert lim.try_acquire(tokens=50) is not None  # full bucket: admitted, level -40
    assert lim.delay(5) == pytest.approx(4.5)
    clock.advance(4.5)
    assert lim.try_acquire(tokens=5) is not None


def test_token_bucket_refills_continuously():
    clock = Clock()
    bucket = TokenBucket(120, clock)  # 2 a second
    bucket.take(2)
    assert bucket.wait_time(1) == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.wait_time(1) == pytest.approx(0.25)


def test_invalid_settings():
    with pytest.raises(ValueError):
        AdaptiveLimiter(0)
    with pytest.raises(ValueError):
        TokenBucket(0, time.monotonic)


def test_blocking_acquire_waits_for_a_release_and_gives_up_on_stop():
    lim = AdaptiveLimiter(1)
    held = lim.acquire()
    got: list = []
    t = threading.Thread(target=lambda: got.append(lim.acquire()))
    t.start()
    time.sleep(0.05)
    assert got == []
    lim.release(held)
    t.join(60)
    assert got and got[0] is not None
    stop = threading.Event()
    t = threading.Thread(target=lambda: got.append(lim.acquire(stop=stop)))
    t.start()
    stop.set()
    lim.wake()
    t.join(60)
    assert got[-1] is None
