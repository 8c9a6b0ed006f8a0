"""One rule of "said once per run" (``qwenvl.notes.SaidOnce``) for the CLI's warning lines and the library's runs:
a warning about each file's request, with that file's own token count, is the same warning; said once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import Reply
from qwenvl.tasks.extract import aextract_many, extract_many

# qwen-vl-ocr-2024-10-28's context is 34,096 tokens: images this large, at this budget, are near it
NEAR = ("--model", "qwen-vl-ocr-2024-10-28", "--max-pixels", "25000000")
NEAR_FIELDS = {"model": "qwen-vl-ocr-2024-10-28", "max_pixels": 25_000_000}
NEAR_WORDS = "near or over qwen-vl-ocr-2024-10-28's context"
SCHEMA = {"type": "object", "properties": {"total": {"type": "number"}}}


@pytest.fixture
def bigs(isolated_env: Path) -> list[str]:
    """Two images of different sizes: each request's token count is its own."""
    return [str(write_image(isolated_env / f"big{i}.png", (4300 + 100 * i, 5600))) for i in range(2)]


@pytest.fixture
def logged() -> Iterator[list[str]]:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logger = logging.getLogger("qwenvl")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_the_cli_says_a_warning_about_each_files_request_once(server, env, bigs, isolated_env):
    (isolated_env / "s.json").write_text(json.dumps(SCHEMA))
    server.enqueue(Reply(text='{"total": 1}', times=2))
    p = run_cli("extract", *bigs, "--schema", "s.json", "--yes", *NEAR, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count(NEAR_WORDS) == 1, p.stderr  # was 2: each file's own token count
    assert p.stderr.count("warning:") == 1, p.stderr


def test_the_library_logs_a_warning_about_each_files_request_once(server, bigs, logged):
    with make_client(server) as client:
        server.enqueue(Reply(text='{"total": 1}', times=2))
        rows = list(extract_many(client, bigs, SCHEMA, **NEAR_FIELDS))
    assert [r.error for r in rows] == [None, None]
    assert sum(NEAR_WORDS in m for m in logged) == 1, logged

    async def run() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False) as aclient:
            server.enqueue(Reply(text='{"total": 1}', times=2))
            assert [r.error async for r in aextract_many(aclient, bigs, SCHEMA, **NEAR_FIELDS)] == [None, None]

    asyncio.run(run())
    assert sum(NEAR_WORDS in m for m in logged) == 2, logged  # another run: said again, once


def test_a_run_goes_on_with_the_warnings_said_and_other_words_are_another_warning(logged):
    from qwenvl.notes import SaidOnce, once_per_run

    log = logging.getLogger("qwenvl")
    run = SaidOnce()
    for tokens in (1200, 3400):
        with once_per_run(run):
            log.warning("the request is about %s tokens", f"{tokens:,}")
            log.warning("file %s is small", f"f{tokens}.png")  # other words: said each time
    assert logged == ["the request is about 1,200 tokens", "file f1200.png is small", "file f3400.png is small"]
