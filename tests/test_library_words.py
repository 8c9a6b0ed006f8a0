"""The library's own words: its hints name keyword arguments (fresh=True, retry_errors=True, api_key), and ask()
takes its images one way."""

from __future__ import annotations

import asyncio
import json

import pytest

import qwenvl
from conftest import API_KEY, write_image
from dashscope_server import Reply
from qwenvl.batch import Batch, BatchItem
from qwenvl.wording import library_hint


def test_batch_hints_name_the_batchs_own_switches(server, isolated_env):
    out = isolated_env / "out.jsonl"
    out.write_text('{"not": "a qwenvl output"}\n', encoding="utf-8")
    items = [BatchItem(id="1", request={"prompt": "hi"})]
    batch = Batch(items, out, api_key=API_KEY, base_url=server.url, usage_log=False)
    with pytest.raises(qwenvl.UsageError) as caught:
        batch.run()
    assert "fresh=True" in caught.value.hint and "--fresh" not in caught.value.hint, caught.value.hint
    assert "--fresh" in caught.value.raw_hint  # the CLI keeps its flag
    assert library_hint("Run it again with --retry-errors to send them again.") == (
        "Run it again with retry_errors=True to send them again."
    )


def test_a_key_hint_says_the_key_is_an_argument_too(server, monkeypatch, isolated_env):
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    with pytest.raises(qwenvl.MissingAPIKeyError) as caught, qwenvl.Client(usage_log=False) as client:
        client.ask("hi")
    assert "Client(api_key=...)" in caught.value.hint and "api_key=" not in caught.value.raw_hint
    server.enqueue(Reply(status=401, text='{"error": {"code": "invalid_api_key", "message": "bad key"}}'))
    with (
        pytest.raises(qwenvl.AuthenticationError) as caught,
        qwenvl.Client(api_key="sk-wrong", base_url=server.url, usage_log=False, max_retries=0) as client,
    ):
        client.ask("hi")
    hint = caught.value.hint or ""
    assert "DASHSCOPE_API_KEY" not in hint or "api_key" in hint, hint


@pytest.mark.parametrize("async_", [False, True])
def test_ask_takes_its_images_one_way(server, isolated_env, async_):
    png = write_image(isolated_env / "a.png")

    def ask(*args, **kw):
        async def run():
            async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False) as client:
                return await client.ask(*args, **kw)

        if async_:
            return asyncio.run(run())
        with qwenvl.Client(api_key=API_KEY, base_url=server.url, usage_log=False) as client:
            return client.ask(*args, **kw)

    with pytest.raises(qwenvl.UsageError, match="images given twice") as caught:
        ask("hi", str(png), images=[str(png)])
    assert "one way" in caught.value.hint
    with pytest.raises(qwenvl.UsageError) as caught:
        ask("hi", images=str(png))  # one file where a list goes: the Request's refusal, with its hint
    assert "images takes a list" in (caught.value.hint or "")
    assert not server.requests
    server.enqueue(Reply(text="a red square"))
    assert ask("hi", images=[str(png)]).text == "a red square"
    body = server.requests[-1].json
    assert "image" in json.dumps(body)
