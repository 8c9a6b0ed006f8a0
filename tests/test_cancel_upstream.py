"""A library caller that leaves cancels its upstream request at once, for every HTTP backend (the DashScope gateway
speaking compat or native, the ``openai`` engine backend): an async call whose task is cancelled, an async stream
closed or cancelled, a sync stream closed. `qwenvl serve`'s clients are in test_serve_faults.py.

"At once" is checked with the event loop blocked right after the caller left: the upstream connection must be
closed by then, not later by the garbage collector's finalizer of an abandoned stream (which needs the loop).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import qwenvl
from conftest import API_KEY
from test_serve_faults import BACKENDS, MODEL, Hang


def _client(url: str, backend: str, sync: bool = False) -> Any:
    cls = qwenvl.Client if sync else qwenvl.AsyncClient
    if backend == "engine":
        return cls(backend="openai", base_url=url + "/v1", model=MODEL, engine="vllm")
    return cls(api_key=API_KEY, protocol=backend.removeprefix("gateway-"), base_url=url, model=MODEL)


async def _held(up: Hang, task: asyncio.Task[Any], timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while up.held < 1:
        if task.done():
            task.result()
            raise AssertionError("the call ended before the upstream held it")
        assert loop.time() < deadline, "the request did not reach the upstream"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("way", ["answer cancelled", "stream closed", "stream cancelled"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_async_caller_that_leaves_closes_the_upstream_at_once(backend, way):
    with Hang() as up:
        up.first = way == "stream closed"

        async def run() -> None:
            async with _client(up.url, backend) as client:
                if way == "stream closed":
                    events = client.stream(prompt="hi")
                    async for event in events:
                        assert event.type == "text"
                        break
                    await events.aclose()
                else:

                    async def call() -> None:
                        if way == "answer cancelled":
                            await client.ask("hi")
                        else:
                            async for _ in client.stream(prompt="hi"):
                                pass

                    task = asyncio.create_task(call())
                    await _held(up, task)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                # the loop blocked: nothing left for it to close later
                assert up.wait("closed", 1, timeout_s=10), "the upstream request was left open"

        asyncio.run(run())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sync_stream_closed_closes_the_upstream_at_once(backend):
    with Hang() as up, _client(up.url, backend, sync=True) as client:
        events = client.stream(prompt="hi")
        assert next(events).type == "text"
        events.close()
        assert up.wait("closed", 1, timeout_s=10), "the upstream request was left open"
