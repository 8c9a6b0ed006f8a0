"""A model in this process stops generating when its caller leaves: the async library's caller cancelling (or timing
out) a call or closing a stream, and `qwenvl serve`'s HTTP client disconnecting, non-stream and stream, both
inbound protocols. Before, a non-stream generation ran to ``max_tokens`` after its caller had gone (the CPU busy,
the next request waiting for the model's lock).

What is counted is the model's forward calls (one per generated token): each test lets generation start, leaves,
waits until the model is free again, and checks that far fewer steps ran than ``max_tokens`` asks for. The model
never ends by itself here (its answer is forced to "a a a ..."), so running to the end would be ``LONG`` steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

try:
    import torch
    import transformers  # noqa: F401
except ImportError as exc:
    pytest.skip(f"{exc.name} is not installed (pip install 'qwenvl[local]')", allow_module_level=True)

import qwenvl
from qwenvl.backends import transformers as local
from qwenvl.server.app import ServeSettings, create_app
from test_serve import COMPAT, NATIVE, SERVE_KEY, Served
from tiny_models import build

LONG = 400  # max_tokens asked for: far more steps than a prompt stop takes
FEW = LONG // 4  # a stopped generation ran fewer steps than this
HEADERS = {"Authorization": f"Bearer {SERVE_KEY}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build("qwen2.5-vl", tmp_path_factory.mktemp("models") / "qwen2.5-vl-tiny"))


class Steps:
    """The loaded model's forward calls, counted; each a little slower (so that a caller leaving lands mid-way)
    and its answer forced to "a a a ..." (text every other step; only ``max_tokens`` or a stop ends it)."""

    def __init__(self, folder: str) -> None:
        self.loaded = local.load(folder)
        self.n = 0
        # the answer forced to "a a a ...": text comes every other step, and no end-of-turn token ends it
        self._tokens = [self.loaded.tokenizer.convert_tokens_to_ids(t) for t in ("a", "Ġ")]

    @contextlib.contextmanager
    def counting(self) -> Iterator[Steps]:
        model = self.loaded.model
        forward = model.forward

        @functools.wraps(forward)  # generate checks its keyword arguments against forward's signature
        def counted(*args: Any, **kw: Any) -> Any:
            self.n += 1
            time.sleep(0.01)
            out = forward(*args, **kw)
            out.logits[...] = -torch.inf
            out.logits[..., self._tokens[self.n % 2]] = 0.0
            return out

        model.forward = counted
        try:
            yield self
        finally:
            self.idle()
            del model.forward  # the class's own again

    def wait(self, n: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.n < n:
            assert time.monotonic() < deadline, f"generation did not reach {n} steps"
            time.sleep(0.01)

    async def started(self, task: asyncio.Task[Any], n: int = 3, timeout_s: float = 120) -> None:
        """Wait until ``task``'s generation has run ``n`` steps (its failure raised)."""
        deadline = time.monotonic() + timeout_s
        while self.n < n:
            if task.done():
                task.result()
                raise AssertionError("the call ended before generating")
            assert time.monotonic() < deadline, f"generation did not reach {n} steps"
            await asyncio.sleep(0.01)

    def idle(self, timeout_s: float = 120) -> int:
        """The steps run once no generation holds the model (bounded: a generation running to its end takes
        ``LONG`` steps, seconds here)."""
        assert self.loaded.lock.acquire(timeout=timeout_s), "the model stayed busy"
        self.loaded.lock.release()
        return self.n


def _async_client(folder: str) -> qwenvl.AsyncClient:
    return qwenvl.AsyncClient(backend="transformers", model=folder, cache=False)


@pytest.mark.parametrize("how", ["cancel", "wait_for"])
def test_an_async_call_cancelled_stops_generating(tiny, how):
    steps = Steps(tiny)

    async def run() -> None:
        async with _async_client(tiny) as client:
            with steps.counting():
                if how == "cancel":
                    task = asyncio.create_task(client.ask("Tell me", temperature=0, max_tokens=LONG))
                    await steps.started(task)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                else:
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(client.ask("Tell me", temperature=0, max_tokens=LONG), 0.5)
                ran = steps.idle()
                assert ran < FEW, f"{ran} steps ran after the caller left"
                r = await client.ask("Tell me", temperature=0, max_tokens=3)  # the model answers the next one
                assert r.usage.output_tokens == 3

    asyncio.run(run())


@pytest.mark.parametrize("how", ["aclose", "cancel"])
def test_an_async_stream_left_stops_generating(tiny, how):
    steps = Steps(tiny)

    async def run() -> None:
        async with _async_client(tiny) as client:
            with steps.counting():
                events = client.stream(prompt="Tell me", temperature=0, max_tokens=LONG)
                if how == "aclose":
                    async for event in events:
                        if event.type == "text":
                            break
                    await events.aclose()
                else:

                    async def read() -> None:
                        async for _ in events:
                            pass

                    task = asyncio.create_task(read())
                    await steps.started(task)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                ran = steps.idle()
                assert ran < FEW, f"{ran} steps ran after the reader left"

    asyncio.run(run())


def test_a_sync_stream_closed_stops_generating(tiny):
    steps = Steps(tiny)
    with qwenvl.Client(backend="transformers", model=tiny, cache=False) as client, steps.counting():
        events = client.stream(prompt="Tell me", temperature=0, max_tokens=LONG)
        for event in events:
            if event.type == "text":
                break
        events.close()
        ran = steps.idle()
        assert ran < FEW, f"{ran} steps ran after the reader left"


def _request(protocol: str, stream: bool, max_tokens: int = LONG) -> tuple[str, dict[str, Any], dict[str, str]]:
    if protocol == "compat":
        messages = [{"role": "user", "content": "Hi"}]
        return COMPAT, {"model": "m", "stream": stream, "max_tokens": max_tokens, "messages": messages}, HEADERS
    body = {
        "model": "m",
        "input": {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]},
        "parameters": {"max_tokens": max_tokens, "incremental_output": True},
    }
    return NATIVE, body, {**HEADERS, **({"X-DashScope-SSE": "enable"} if stream else {})}


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_a_serve_client_that_leaves_stops_generating(tiny, protocol, stream):
    """A client of `qwenvl serve --backend transformers` closes its connection once generation has started: the
    model stops within a few steps, and the next request (one slot per key) is answered."""
    steps = Steps(tiny)
    client = _async_client(tiny)
    settings = ServeSettings(api_key=SERVE_KEY, pass_model_names=False, max_concurrent_per_key=1)
    with Served(create_app(client, settings)) as served, steps.counting():
        path, body, headers = _request(protocol, stream)
        data = json.dumps(body).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        with socket.create_connection(("127.0.0.1", served.port), timeout=60) as conn:
            conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n{head}\r\n".encode())
            conn.sendall(data)
            steps.wait(3)
            if stream:
                assert conn.recv(65536)  # the stream had started
        ran = steps.idle()
        assert ran < FEW, f"{ran} steps ran after the client left"
        path, body, headers = _request(protocol, False, max_tokens=2)
        deadline = time.monotonic() + 30
        while True:  # the slot is given back as the cancelled request ends
            r = httpx.post(served.url + path, json=body, headers=headers, timeout=60)
            if r.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text


def test_a_generation_waiting_for_the_model_when_cancelled_never_runs(tiny):
    """A call cancelled while it waits for the model (another generation holds it) does not run once the model is
    free."""
    steps = Steps(tiny)

    async def run() -> None:
        async with _async_client(tiny) as client:
            with steps.counting():
                first = asyncio.create_task(client.ask("Tell me", temperature=0, max_tokens=40))
                await steps.started(first, 1)
                second = asyncio.create_task(client.ask("Tell me", temperature=0, max_tokens=LONG))
                await asyncio.sleep(0.2)
                second.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await second
                assert (await first).usage.output_tokens == 40
                ran = steps.idle()
                assert ran < 40 + FEW, f"{ran} steps: the cancelled call ran"

    asyncio.run(run())
