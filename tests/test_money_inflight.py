"""Identical cacheable requests sent at the same time are paid once: the others wait for the first's answer (with
their own deadline); when the first fails or is cancelled, one of them goes ahead. Threads, asyncio, the batch."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, make_client, write_image
from dashscope_server import Reply
from qwenvl.batch import Batch, BatchItem


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def test_threads_asking_the_same_question_pay_once(server, protocol, png, tmp_path):
    server.enqueue(Reply(delay_s=1))
    with make_client(server, protocol, usage_log=tmp_path / "u.db", cache=tmp_path / "r.db") as c:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: c.ask("identical question", str(png)), range(8)))
        c.usage_log.flush()
        summary = c.usage_log.summarize()
    assert model_calls(server) == 1
    assert sorted(a.cached for a in answers) == [False] + [True] * 7
    assert len({a.text for a in answers}) == 1 and sum(a.requests for a in answers) == 1
    assert summary[0]["requests"] == 1 and summary[0]["cached"] == 7


def test_asyncio_gather_pays_once(server, protocol, tmp_path):
    server.enqueue(Reply(delay_s=1))

    async def main() -> list[qwenvl.Response]:
        async with qwenvl.AsyncClient(
            api_key=API_KEY, protocol=protocol, base_url=server.url, usage_log=False, cache=tmp_path / "r.db"
        ) as ac:
            return await asyncio.gather(*(ac.ask("identical question") for _ in range(8)))

    answers = asyncio.run(main())
    assert model_calls(server) == 1
    assert sorted(a.cached for a in answers) == [False] + [True] * 7


def test_when_the_first_fails_its_waiters_get_its_error_at_once(server, tmp_path):
    # the service's answer (an HTTP error) is the outcome of every identical call in flight: nothing sent again
    server.enqueue(Reply(status=400, error_message="nope", delay_s=1))
    with make_client(server, usage_log=False, cache=tmp_path / "r.db") as c:

        def ask() -> BaseException | str:
            try:
                return "cached" if c.ask("q").cached else "sent"
            except qwenvl.BadRequestError as exc:
                return exc

        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(lambda _: ask(), range(4)))
    assert all(isinstance(o, qwenvl.BadRequestError) and o.status == 400 for o in outcomes), outcomes
    assert sorted(o.shared for o in outcomes) == [False, True, True, True]
    assert len({o.request_id for o in outcomes}) == 1 and outcomes[0].request_id
    assert all("identical request in flight" in str(o) for o in outcomes if o.shared)
    assert model_calls(server) == 1


def test_a_failing_leader_fails_its_waiters_at_once_not_one_by_one(server, tmp_path):
    server.enqueue(Reply(status=500, error_message="boom", delay_s=1, times=50))

    async def main() -> list[BaseException]:
        async with qwenvl.AsyncClient(
            api_key=API_KEY, base_url=server.url, usage_log=False, cache=tmp_path / "r.db"
        ) as ac:
            return await asyncio.gather(
                *(ac.ask("q", max_retries=1, timeout_s=1.5, retry_backoff_s=0.1) for _ in range(6)),
                return_exceptions=True,
            )

    outcomes = asyncio.run(main())
    assert all(type(o) is qwenvl.InternalServerError for o in outcomes), outcomes
    assert sorted(o.shared for o in outcomes) == [False] + [True] * 5
    assert model_calls(server) == 2  # the leader's two attempts; no waiter sent anything


S = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize("structured", [{"schema": S}, {"json_mode": True}], ids=["schema", "json_mode"])
def test_cancelling_the_leader_during_its_repair_hands_over_to_one_waiter(server, tmp_path, structured):
    gate = threading.Event()
    server.enqueue(Reply(text="not json"), Reply(text='{"a": 2}', hold=gate), Reply(text="no", times=2))

    async def main() -> list[object]:
        async with qwenvl.AsyncClient(
            api_key=API_KEY, base_url=server.url, usage_log=False, cache=tmp_path / "r.db"
        ) as ac:
            tasks = [asyncio.ensure_future(ac.complete(prompt="extract", **structured)) for _ in range(10)]
            while model_calls(server) < 2:
                await asyncio.sleep(0.02)
            tasks[0].cancel()
            return await asyncio.gather(*tasks[1:], return_exceptions=True)

    try:
        outcomes = asyncio.run(main())
    finally:
        gate.set()
    # the new leader's answer is not valid JSON, nor is its repair's: its error is every waiter's
    assert all(isinstance(o, qwenvl.StructuredOutputError) for o in outcomes), outcomes
    assert sorted((o.shared, o.requests) for o in outcomes) == [(False, 2)] + [(True, 0)] * 8
    assert model_calls(server) == 4  # the first leader's 2, the new leader's 2: nobody else paid


def test_a_failed_repair_is_every_waiters_error_in_threads(server, tmp_path):
    # the sync path (threads, as a batch's workers): a failing repair's outcome is shared, not re-sent one by one
    server.enqueue(Reply(text="not json", delay_s=0.5), Reply(status=400, error_message="no", times=20))
    with make_client(server, usage_log=False, cache=tmp_path / "r.db") as c, ThreadPoolExecutor(5) as pool:

        def one() -> BaseException | None:
            try:
                c.complete(prompt="extract", schema=S)
            except qwenvl.StructuredOutputError as exc:
                return exc
            return None

        outcomes = list(pool.map(lambda _: one(), range(5)))
    assert all(isinstance(o, qwenvl.StructuredOutputError) for o in outcomes), outcomes
    assert sorted(o.shared for o in outcomes) == [False] + [True] * 4
    assert model_calls(server) == 2


def test_when_the_first_is_cancelled_one_waiter_goes_ahead(server, tmp_path):
    server.enqueue(Reply(delay_s=5), Reply(delay_s=0.5))

    async def main() -> list[bool]:
        async with qwenvl.AsyncClient(
            api_key=API_KEY, base_url=server.url, usage_log=False, cache=tmp_path / "r.db"
        ) as ac:
            first = asyncio.ensure_future(ac.ask("q"))
            while not model_calls(server):
                await asyncio.sleep(0.02)
            others = [asyncio.ensure_future(ac.ask("q")) for _ in range(3)]
            await asyncio.sleep(0.2)
            first.cancel()
            answers = await asyncio.gather(*others)
            return sorted(a.cached for a in answers)

    assert asyncio.run(main()) == [False, True, True]
    assert model_calls(server) == 2


def test_a_waiter_keeps_its_own_deadline(server, tmp_path):
    hold = threading.Event()
    server.enqueue(Reply(hold=hold))
    try:
        with make_client(server, usage_log=tmp_path / "u.db", cache=tmp_path / "r.db") as c:
            leader = threading.Thread(target=lambda: c.ask("q"), daemon=True)
            leader.start()
            assert _wait(lambda: model_calls(server) == 1)
            started = time.monotonic()
            with pytest.raises(qwenvl.APITimeoutError) as caught:
                c.ask("q", timeout_s=0.5, max_retries=0)
            assert time.monotonic() - started < 30
            assert "identical request in flight" in str(caught.value) and caught.value.hint
            assert "sent nothing" in str(caught.value) and caught.value.shared
            assert model_calls(server) == 1  # the waiter sent nothing
            hold.set()
            leader.join(30)
            assert c.ask("q").cached
    finally:
        hold.set()


def test_streams_and_different_requests_do_not_wait(server, tmp_path):
    server.enqueue(Reply(delay_s=1, times=3))
    with make_client(server, usage_log=False, cache=tmp_path / "r.db") as c, ThreadPoolExecutor(3) as pool:
        jobs = [
            pool.submit(c.ask, "a"),
            pool.submit(c.ask, "b"),
            pool.submit(lambda: list(c.stream(prompt="a"))),
        ]
        for job in jobs:
            job.result(30)
    assert model_calls(server) == 3


def test_batch_identical_items_pay_once(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    png = write_image(tmp_path / "p.png")
    server.enqueue(Reply(delay_s=1))
    items = [BatchItem(id=f"i{i}", request={"prompt": "same", "image": str(png)}) for i in range(6)]
    with (
        make_client(server, usage_log=False, cache=tmp_path / "r.db") as c,
        Batch(items, tmp_path / "o.jsonl", client=c, concurrency=6) as job,
    ):
        summary = job.run()
    lines = [json.loads(x) for x in Path(tmp_path / "o.jsonl").read_text().splitlines()]
    assert model_calls(server) == 1
    assert summary.ok == 6 and summary.sent == 1 and summary.cached == 5
    assert sorted(line["cached"] for line in lines) == [False] + [True] * 5


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("wait_s", ["5", float("inf"), 1e12, float("nan"), -1])
def test_close_wait_s_is_a_checked_duration(server, wait_s):
    c = make_client(server, usage_log=False)
    with pytest.raises(qwenvl.UsageError, match="wait_s"):
        c.close(wait_s=wait_s)
    assert c.ask("still open").text  # a bad wait_s closes nothing
    c.close(wait_s=0)

    async def main() -> None:
        ac = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False)
        with pytest.raises(qwenvl.UsageError, match="wait_s"):
            await ac.aclose(wait_s=wait_s)
        assert (await ac.ask("still open")).text
        await ac.aclose(wait_s=0)

    asyncio.run(main())


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_close_cuts_its_calls_at_once_not_after_a_retry_wait(server, protocol):
    # a call cut by close() is not retried: it ends now, not after its back-off (20 s here) and a doomed attempt
    gate = threading.Event()
    server.enqueue(Reply(hold=gate, times=5))
    c = make_client(server, protocol, usage_log=False, retry_backoff_s=20)
    ended: list[BaseException] = []

    def ask() -> None:
        try:
            c.ask("q")
        except BaseException as exc:
            ended.append(exc)

    thread = threading.Thread(target=ask, daemon=True)
    try:
        thread.start()
        assert _wait(lambda: model_calls(server) == 1)
        c.close(wait_s=0)
        thread.join(10)
        assert not thread.is_alive()
        assert [type(e) for e in ended] == [qwenvl.ClientClosedError]
        assert model_calls(server) == 1
    finally:
        gate.set()
        thread.join(30)


def test_aclose_cuts_its_calls_at_once_not_after_a_retry_wait(server):
    gate = threading.Event()
    server.enqueue(Reply(hold=gate, times=5))

    async def main() -> BaseException:
        ac = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False, retry_backoff_s=20)
        task = asyncio.ensure_future(ac.ask("q"))
        while not model_calls(server):
            await asyncio.sleep(0.02)
        await ac.aclose(wait_s=0)
        done, _ = await asyncio.wait([task], timeout=10)
        assert done, "the cut call went on after aclose()"
        return task.exception()

    try:
        assert type(asyncio.run(main())) is qwenvl.ClientClosedError
    finally:
        gate.set()
    assert model_calls(server) == 1
