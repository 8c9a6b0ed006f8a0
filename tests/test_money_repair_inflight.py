"""Identical structured calls in flight wait for the first one's final outcome, its repair included: an invalid
first answer is repaired once, and the waiters get the repaired answer from the cache without paying (threads,
asyncio, both protocols). When the owner's repair fails, exactly one waiter takes over."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import qwenvl
from conftest import API_KEY, make_client
from dashscope_server import Reply

VALID = '{"a": 1}'


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def test_threads_wait_for_the_repair_and_pay_nothing(server, protocol, tmp_path):
    server.enqueue(Reply(text="not json at all", delay_s=1), Reply(text=VALID, delay_s=0.5))
    with make_client(server, protocol, usage_log=tmp_path / "u.db", cache=tmp_path / "r.db") as c:
        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda _: c.ask("give me json", json_mode=True), range(5)))
        c.usage_log.flush()
        summary = c.usage_log.summarize()
    assert model_calls(server) == 2  # the first request and its repair, nothing else
    assert all(a.json == {"a": 1} for a in answers)
    assert sorted(a.requests for a in answers) == [0, 0, 0, 0, 2]
    assert sorted(a.cached for a in answers) == [False] + [True] * 4
    assert summary[0]["requests"] == 2 and summary[0]["cached"] == 4


def test_asyncio_waiters_wait_for_the_repair(server, protocol, tmp_path):
    server.enqueue(Reply(text="not json at all", delay_s=1), Reply(text=VALID, delay_s=0.5))

    async def main() -> list[qwenvl.Response]:
        async with qwenvl.AsyncClient(
            api_key=API_KEY, protocol=protocol, base_url=server.url, usage_log=False, cache=tmp_path / "r.db"
        ) as ac:
            return await asyncio.gather(*(ac.ask("give me json", json_mode=True) for _ in range(5)))

    answers = asyncio.run(main())
    assert model_calls(server) == 2
    assert all(a.json == {"a": 1} for a in answers)
    assert sum(a.requests for a in answers) == 2


def test_when_the_repair_fails_its_waiters_get_the_same_error(server, tmp_path):
    # the owner: invalid, then its repair refused (400): that is the call's outcome, and every waiter's at once
    # (nothing sent by them, nothing paid); before, each waiter in turn sent (and paid) the call again
    server.enqueue(
        Reply(text="not json at all", delay_s=1),
        Reply(status=400, error_message="nope", delay_s=0.3),
        Reply(text=VALID, delay_s=0.3),
    )
    with make_client(server, usage_log=False, cache=tmp_path / "r.db") as c:

        def ask() -> str:
            try:
                return "cached" if c.ask("give me json", json_mode=True).cached else "sent"
            except qwenvl.StructuredOutputError as exc:
                return f"shared {exc.requests}" if exc.shared else f"error {exc.requests}"

        with ThreadPoolExecutor(4) as pool:
            outcomes = sorted(pool.map(lambda _: ask(), range(4)))
    assert outcomes == ["error 1", "shared 0", "shared 0", "shared 0"]
    assert model_calls(server) == 2
