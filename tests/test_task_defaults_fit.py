"""A task's default ``max_tokens`` (ocr, ground, extract, events) never makes a request too long for a model with a
small context (a local engine's ``max_model_len``): it is lowered to what the context leaves after the prompt and
media. A ``--max-tokens`` the user gave that does not fit is still refused, naming it. Library, CLI, MCP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import qwenvl
from conftest import run_cli, write_image
from engine_server import EngineServer

SERVED = "qwen2.5-vl-tiny"


@pytest.fixture
def engine():
    with EngineServer(engine="vllm", served=SERVED, max_model_len=2048) as srv:
        yield srv


@pytest.mark.parametrize("verb", ["ocr", "ground", "extract"])
def test_cli_task_defaults_fit_a_small_context(engine, isolated_env: Path, verb: str) -> None:
    photo = write_image(isolated_env / "photo.png", (320, 240))
    (isolated_env / "s.json").write_text(json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}))
    extra = {"ground": ["a dot"], "extract": ["--schema", "s.json"]}.get(verb, [])
    common = ["--backend", "openai", "--base-url", engine.base_url, "--model", SERVED]
    p = run_cli(verb, str(photo), *extra, *common)
    assert "too long" not in p.stderr and "--max-tokens" not in p.stderr, p.stderr
    sent = engine.chats()
    assert sent and all(1 <= chat.json["max_tokens"] < 2048 for chat in sent)  # extract: and its repair request
    p = run_cli(verb, str(photo), *extra, *common, "--max-tokens", "2048")  # the user's own value: refused
    assert p.returncode == 2 and "Lower --max-tokens (2,048)" in p.stderr, p.stderr
    assert len(engine.chats()) == len(sent)


def test_library_and_async_task_defaults_fit(engine, isolated_env: Path) -> None:
    import asyncio

    photo = write_image(isolated_env / "photo.png", (320, 240))
    from qwenvl.tasks import aocr, ground, ocr

    with qwenvl.Client(backend="openai", base_url=engine.base_url) as c:
        ocr(c, str(photo))
        ground(c, str(photo), "a dot")

    async def go() -> None:
        async with qwenvl.AsyncClient(backend="openai", base_url=engine.base_url) as c:
            await aocr(c, str(photo))

    asyncio.run(go())
    assert [0 < chat.json["max_tokens"] < 2048 for chat in engine.chats()] == [True] * 3
