"""Every public duration parameter follows the one rule (``qwenvl.types.seconds``: a finite number of seconds above
0, at most a day), and the error names the parameter: the backends' readiness probes too."""

from __future__ import annotations

import asyncio
import math

import pytest

from conftest import API_KEY
from dashscope_server import DashScopeServer
from engine_server import EngineServer
from qwenvl.backends.dashscope import AsyncDashScopeBackend
from qwenvl.backends.openai import OpenAIBackend
from qwenvl.errors import UsageError

BAD = [-1.0, 0, math.nan, math.inf, "5", True, 1e9]


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_dashscope_ready_refuses_a_timeout_that_is_no_duration(server: DashScopeServer, value):
    async def probe() -> None:
        backend = AsyncDashScopeBackend(api_key=API_KEY, base_url=server.url)
        try:
            with pytest.raises(UsageError, match="timeout_s"):
                await backend.ready(value)
            assert server.requests == []  # nothing was asked
            assert await backend.ready(5) is None  # a good one still probes
        finally:
            await backend.aclose()

    asyncio.run(probe())


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_openai_ping_refuses_a_timeout_that_is_no_duration(value):
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as e:
        backend = OpenAIBackend(base_url=e.base_url)
        try:
            with pytest.raises(UsageError, match="timeout_s"):
                backend.ping(value)
            assert not any(r.path.endswith("/models") for r in e.requests)
            backend.ping(5)
        finally:
            backend.close()


# --- counts: one rule too (``qwenvl.types.count``: a whole number in bounds), the error naming the parameter ---

BAD_COUNTS = [-1, 2.5, "3", True, math.nan, None]


@pytest.mark.parametrize("value", BAD_COUNTS, ids=repr)
def test_batch_api_refuses_a_retry_count_that_is_no_count(value):
    from qwenvl.batch.batchapi import BatchAPI

    with pytest.raises(UsageError, match="max_retries"):
        BatchAPI(api_key=API_KEY, base_url="http://127.0.0.1:9", max_retries=value)
    with pytest.raises(UsageError, match="max_retries"):
        BatchAPI(api_key=API_KEY, base_url="http://127.0.0.1:9", max_retries=21)  # as a Request's: at most 20


@pytest.mark.parametrize("name", ["concurrency", "plan_threads"])
@pytest.mark.parametrize("value", [0, *BAD_COUNTS], ids=repr)
def test_a_batch_refuses_a_count_that_is_no_count(tmp_path, name, value):
    from qwenvl.batch.runner import Batch

    with pytest.raises(UsageError, match=name):
        Batch([], tmp_path / "out.jsonl", api_key=API_KEY, **{name: value})


@pytest.mark.parametrize("name", ["max_concurrent_per_key", "batch_concurrency"])
@pytest.mark.parametrize("value", [0, -1, 2.5, "3", True, math.nan], ids=repr)
def test_serve_settings_refuse_a_count_that_is_no_count(name, value):
    from qwenvl.server.app import ServeSettings

    with pytest.raises(UsageError, match=name):
        ServeSettings(**{name: value})
