"""A library error's message is in the library's words (its keywords: ``pages='9'``, ``extra``, ``detail='low'``),
never the CLI's flags; the CLI, which shows the same error, still names its flags (``QwenVLError.as_written``)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import DashScopeServer
from qwenvl import tasks
from qwenvl.errors import MediaError, QwenVLError, UsageError
from test_media_pdf import make_pdf

FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _pdf(folder: Path, pages: int = 3) -> Path:
    path = folder / "multi.pdf"
    path.write_bytes(make_pdf([(200, 200, (1, 0, 0))] * pages))
    return path


def _library_words(exc: QwenVLError) -> str:
    said = str(exc)
    assert not FLAG.search(said), said
    assert said == exc.message
    return said


def test_a_page_out_of_range_names_pages_as_the_library_takes_it(server: DashScopeServer, isolated_env: Path) -> None:
    pdf = _pdf(isolated_env)
    with make_client(server) as client, pytest.raises(MediaError) as caught:
        tasks.ocr(client, str(pdf), pages="9")
    assert "page 9 (from pages='9') is out of range" in _library_words(caught.value)
    assert "(from --pages 9)" in caught.value.as_written()  # what the CLI shows
    with make_client(server) as client, pytest.raises(MediaError) as caught:
        client.ask("hi", image=str(pdf), pages="2-9")
    assert "page 9 (from pages='2-9') is out of range" in _library_words(caught.value)

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url) as client:
            with pytest.raises(MediaError) as caught:
                await tasks.aocr(client, str(pdf), pages="5-")
            assert "page 5 (from pages='5-') is out of range" in _library_words(caught.value)

    asyncio.run(go())
    assert server.requests == []


def test_the_cli_still_names_its_flags(server: DashScopeServer, env: dict[str, str], isolated_env: Path) -> None:
    _pdf(isolated_env)
    r = run_cli("ocr", "multi.pdf", "--pages", "9", env=env)
    assert r.returncode == 3 and "page 9 (from --pages 9) is out of range" in r.stderr, r.stderr
    write_image(isolated_env / "x.png")
    r = run_cli("ask", "x.png", "-p", "hi", "--detail", "low", "--high-res", env=env)
    assert r.returncode == 2 and "error: --detail low and --high-res contradict each other" in r.stderr, r.stderr
    r = run_cli("ask", "x.png", "-p", "hi", "--param", "temprature=1", env=env)
    assert r.returncode == 2 and "'temprature' is not a parameter of the compat protocol (extra, --param)" in r.stderr
    assert server.requests == []


def test_planning_refusals_name_keywords(server: DashScopeServer, isolated_env: Path) -> None:
    image = str(write_image(isolated_env / "x.png"))
    with make_client(server) as client:
        with pytest.raises(UsageError) as caught:
            client.ask("hi", image=image, detail="low", vl_high_resolution_images=True)
        assert _library_words(caught.value).startswith("detail='low' and vl_high_resolution_images contradict")
        with pytest.raises(UsageError) as caught:
            client.ask("hi", image=image, detail="high", vl_high_resolution_images=False)
        assert _library_words(caught.value).startswith("detail='high' and vl_high_resolution_images=False contradict")
        with pytest.raises(UsageError) as caught:
            client.ask("hi", image=image, extra={"temprature": 1})
        assert "'temprature' is not a parameter of the compat protocol (extra): " in _library_words(caught.value)
        with pytest.raises(UsageError) as caught:
            client.ask("hi", image=image, max_pixels=10)
        assert _library_words(caught.value).startswith("max_pixels 10 is below")
        with pytest.raises(UsageError) as caught:
            tasks.ocr(client, image, task="text_recognition", model="qwen-vl-ocr", extra={"ocr_options": {}})
        assert _library_words(caught.value).startswith("ocr_options is given twice")
    assert server.requests == []


def test_backend_and_batch_refusals_name_keywords(isolated_env: Path) -> None:
    with pytest.raises(UsageError) as caught:
        qwenvl.Client(backend="transformers", model="m/x", region="intl")
    assert _library_words(caught.value).startswith("region does not apply to backend='transformers'")
    from qwenvl.batch import Batch

    with qwenvl.Client(api_key=API_KEY) as client, pytest.raises(UsageError) as caught:
        Batch([], isolated_env / "out.jsonl", mode="batch-api", client=client)
    assert _library_words(caught.value).startswith("mode='batch-api' is DashScope's Batch API")
