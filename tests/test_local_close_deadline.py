"""The transformers backend keeps the client's contracts that an HTTP backend keeps by its connections (a real tiny
model; its forward calls counted, each a little slow, its answer forced never to end, as in test_local_cancel):

- ``close()`` / ``aclose()`` stops a generation in flight: a whole-answer call after the close's wait, a stream at
  once; the caller gets ClientClosedError and the usage log says ``cancelled`` (before, close returned and the
  generation ran on to ``max_tokens``, logged ``ok``);
- ``timeout_s`` is a non-streamed call's deadline: the generation stops and APITimeoutError is raised (before, the
  call ran to its end, however long).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError as exc:
    pytest.skip(f"{exc.name} is not installed (pip install 'qwenvl[local]')", allow_module_level=True)

import qwenvl
from test_local_cancel import FEW, LONG, Steps
from tiny_models import build


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build("qwen2.5-vl", tmp_path_factory.mktemp("models") / "qwen2.5-vl-tiny"))


def _outcomes(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT outcome FROM requests ORDER BY id")]
    finally:
        conn.close()


def _in_thread(work: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = work()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# --- close() / aclose() stops a generation in flight ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ask", "stream"])
def test_close_stops_a_generation_in_another_thread(tiny, tmp_path, kind):
    steps = Steps(tiny)
    log = tmp_path / "usage.db"
    client = qwenvl.Client(backend="transformers", model=tiny, cache=False, usage_log=log)
    with steps.counting():
        if kind == "ask":
            thread, out = _in_thread(lambda: client.ask("Tell me", temperature=0, max_tokens=LONG))
        else:
            thread, out = _in_thread(
                lambda: [e.text for e in client.stream(prompt="Tell me", temperature=0, max_tokens=LONG)]
            )
        steps.wait(3)
        started = time.monotonic()
        client.close(wait_s=0.3)  # a whole answer is waited for this long, then cut; a stream at once
        thread.join(120)
        ran = steps.idle()
    assert not thread.is_alive()
    assert isinstance(out.get("error"), qwenvl.ClientClosedError), out
    assert ran < FEW, f"{ran} steps ran: the generation went on after close()"
    assert time.monotonic() - started < 60
    assert _outcomes(log) == ["cancelled"]


@pytest.mark.parametrize("kind", ["ask", "stream"])
def test_aclose_stops_a_generation_in_flight(tiny, tmp_path, kind):
    steps = Steps(tiny)
    log = tmp_path / "usage.db"

    async def run() -> BaseException | None:
        client = qwenvl.AsyncClient(backend="transformers", model=tiny, cache=False, usage_log=log)
        if kind == "ask":
            task = asyncio.create_task(client.ask("Tell me", temperature=0, max_tokens=LONG))
        else:

            async def read() -> list[str | None]:
                return [e.text async for e in client.stream(prompt="Tell me", temperature=0, max_tokens=LONG)]

            task = asyncio.create_task(read())
        await steps.started(task)
        await client.aclose(wait_s=0.3)
        try:
            await asyncio.wait_for(task, 120)
        except BaseException as exc:
            return exc
        return None

    with steps.counting():
        error = asyncio.run(run())
        ran = steps.idle()
    assert isinstance(error, qwenvl.ClientClosedError), error
    assert ran < FEW, f"{ran} steps ran: the generation went on after aclose()"
    assert _outcomes(log) == ["cancelled"]


def test_a_generation_that_ends_within_the_close_wait_answers(tiny, tmp_path):
    """close() waits for a whole answer first (``wait_s``): one that ends meanwhile answers as usual."""
    steps = Steps(tiny)
    log = tmp_path / "usage.db"
    client = qwenvl.Client(backend="transformers", model=tiny, cache=False, usage_log=log)
    with steps.counting():
        thread, out = _in_thread(lambda: client.ask("Tell me", temperature=0, max_tokens=20))
        steps.wait(2)
        client.close(wait_s=120)
        thread.join(120)
    assert out["value"].usage.output_tokens == 20 and _outcomes(log) == ["ok"]


# --- timeout_s is a whole answer's deadline ---------------------------------------------------------------------


def test_timeout_s_stops_a_sync_generation(tiny, tmp_path):
    steps = Steps(tiny)
    log = tmp_path / "usage.db"
    with (
        qwenvl.Client(backend="transformers", model=tiny, cache=False, usage_log=log) as client,
        steps.counting(),
    ):
        client.ask("warm up", max_tokens=1)  # the model loaded: loading is not the call's time
        before = steps.n
        started = time.monotonic()
        with pytest.raises(qwenvl.APITimeoutError, match="timeout_s"):
            client.ask("Tell me", temperature=0, max_tokens=LONG, timeout_s=0.5, max_retries=0)
        assert time.monotonic() - started < 60
        assert steps.idle() - before < FEW
        r = client.ask("Tell me", temperature=0, max_tokens=3)  # the model is free for the next one
    assert r.usage.output_tokens == 3
    assert _outcomes(log) == ["ok", "APITimeoutError", "ok"]


def test_timeout_s_stops_an_async_generation(tiny):
    steps = Steps(tiny)

    async def run() -> None:
        async with qwenvl.AsyncClient(backend="transformers", model=tiny, cache=False, usage_log=False) as client:
            await client.ask("warm up", max_tokens=1)
            before = steps.n
            with pytest.raises(qwenvl.APITimeoutError):
                await client.ask("Tell me", temperature=0, max_tokens=LONG, timeout_s=0.5, max_retries=0)
            assert steps.idle() - before < FEW

    with steps.counting():
        asyncio.run(asyncio.wait_for(run(), 120))
