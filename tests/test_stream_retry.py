"""Issue 9 item 3: retry what is retryable wherever it arrives, with a capped wait that is told.

A throttle or a 5xx-class error that arrives as the first event of an HTTP 200 stream, before any content,
is retried like the same HTTP status (both protocols, sync and async, and a batch's limiter sees a 429);
the requests are counted at the loopback server, so a retry after content (paid twice) would show.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pexpect
import pytest

import qwenvl
from conftest import API_KEY, make_client
from dashscope_server import Reply
from qwenvl.batch import Batch, BatchItem
from qwenvl.errors import InternalServerError, RateLimitError, StreamInterruptedError
from qwenvl.retry import MAX_RETRY_DELAY_S, RetryNotice, give_up_hint, retry_delay

THROTTLE = {"compat": "limit_requests", "native": "Throttling.RateQuota"}


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def first_event_error(protocol: str, status: int = 429, times: int = 1) -> Reply:
    code = THROTTLE[protocol] if status == 429 else "InternalError"
    return Reply(
        text="a b c",
        stream_error_after=0,
        status=status,
        error_code=code,
        error_message="Requests rate limit exceeded" if status == 429 else "boom",
        times=times,
    )


@pytest.mark.parametrize("status", [429, 500, 503])
def test_an_error_as_the_first_event_is_retried(server, protocol, status):
    server.enqueue(first_event_error(protocol, status, times=2))
    notices: list[RetryNotice] = []
    with make_client(server, protocol, on_retry=notices.append) as c:
        events = list(c.stream(prompt="go"))
    assert events[-1].type == "done" and events[-1].response.text.startswith("echo: go")
    assert model_calls(server) == 3
    assert [(n.number, n.of) for n in notices] == [(1, 2), (2, 2)]
    word = "rate limited, " if status == 429 else "service error (HTTP 5"  # compat events carry no status
    assert notices[0].describe().startswith(word) and "retrying in 0.0 s (1/2)" in notices[0].describe()


def test_stream_true_complete_is_retried_too(server, protocol):
    server.enqueue(first_event_error(protocol))
    with make_client(server, protocol) as c:
        assert c.complete(prompt="go", stream=True).text.startswith("echo: go")
    assert model_calls(server) == 2


def test_async_first_event_throttle_is_retried(server, protocol):
    server.enqueue(first_event_error(protocol, times=2))

    async def main() -> str:
        async with qwenvl.AsyncClient(
            api_key=API_KEY, protocol=protocol, base_url=server.url, retry_backoff_s=0.01
        ) as c:
            return (await c.complete(prompt="go", stream=True)).text

    assert asyncio.run(main()).startswith("echo: go")
    assert model_calls(server) == 3


def test_first_event_throttle_gives_up_after_max_retries(server, protocol):
    server.enqueue(first_event_error(protocol, times=5))
    with make_client(server, protocol) as c, pytest.raises(RateLimitError) as info:
        list(c.stream(prompt="go", max_retries=1))
    assert model_calls(server) == 2 and info.value.code == THROTTLE[protocol]


def test_first_event_5xx_gives_up_typed(server, protocol):
    server.enqueue(first_event_error(protocol, 500, times=5))
    with make_client(server, protocol) as c, pytest.raises(InternalServerError):
        c.complete(prompt="go", stream=True, max_retries=0)
    assert model_calls(server) == 1


def test_an_error_after_content_is_never_retried(server, protocol):
    """Text was already shown (and paid for): a second request would pay twice."""
    server.enqueue(Reply(text="a b c d e f", stream_error_after=1, status=429, error_code=THROTTLE[protocol]))
    with make_client(server, protocol) as c, pytest.raises(StreamInterruptedError):
        list(c.stream(prompt="go", max_retries=3))
    assert model_calls(server) == 1


def test_batch_limiter_sees_a_first_event_throttle_as_a_429(server):
    server.enqueue(first_event_error("compat", times=2))
    items = [BatchItem(id=f"i{i}", request={"prompt": f"p{i}", "stream": True}) for i in range(3)]
    summary = Batch(items, "out.jsonl", api_key=API_KEY, base_url=server.url, concurrency=1).run()
    assert summary.ok == 3 and summary.rate_limited == 2
    assert model_calls(server) == 5


# --- the capped wait and what it says ----------------------------------------------------------------------


def test_backoff_is_capped():
    assert retry_delay(19, 1.5, rng=lambda: 0.0) == MAX_RETRY_DELAY_S
    assert retry_delay(100, 1.5, rng=lambda: 0.0) == MAX_RETRY_DELAY_S
    assert retry_delay(0, 1.5, retry_after=MAX_RETRY_DELAY_S, rng=lambda: 0.0) == MAX_RETRY_DELAY_S


def test_a_retry_after_beyond_the_cap_ends_at_once_saying_when(server, protocol):
    server.enqueue(
        Reply(status=429, error_code="Throttling", error_message="slow down", headers={"Retry-After": "45"}, times=3)
    )
    notices: list[RetryNotice] = []
    with make_client(server, protocol, on_retry=notices.append) as c, pytest.raises(RateLimitError) as info:
        c.complete(prompt="x", max_retries=5)
    assert model_calls(server) == 1 and notices == []
    assert "wait 45 s" in info.value.hint and "try again after" in info.value.hint


def test_give_up_hint_when_retries_are_used_up():
    exc = qwenvl.errors.status_error(429, "x", retry_after=3.0)
    assert "retries are used up" in give_up_hint(exc, now=lambda: 0.0)
    assert give_up_hint(qwenvl.errors.status_error(429, "x")) is None


def test_the_wait_is_shown_on_a_terminal(server, isolated_env: Path):
    server.enqueue(
        Reply(status=429, error_code="Throttling", error_message="slow down", headers={"Retry-After": "1"}, times=2)
    )
    env = {**os.environ, "DASHSCOPE_API_KEY": API_KEY, "TERM": "xterm", "COLUMNS": "120"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "qwenvl", "ask", "-p", "hi", "--base-url", server.url, "--max-retries", "3", "--retry-backoff-s", "0.5"],
        env=env,
        cwd=str(isolated_env),
        encoding="utf-8",
        timeout=30,
        dimensions=(30, 120),
    )
    try:
        child.expect(r"rate limited, retrying in 1 s \(1/3\)")
        child.expect(r"rate limited, retrying in 1 s \(2/3\)")
        child.expect("echo: hi")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0 and model_calls(server) == 3


def test_no_retry_line_off_a_terminal(server):
    from conftest import run_cli

    server.enqueue(Reply(status=429, error_code="Throttling", error_message="slow down", times=1))
    p = run_cli(
        "ask", "-p", "hi", "--base-url", server.url, "--retry-backoff-s", "0.01", env={"DASHSCOPE_API_KEY": API_KEY}
    )
    assert p.returncode == 0 and "retrying" not in p.stderr
