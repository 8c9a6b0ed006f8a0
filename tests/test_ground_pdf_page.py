"""Grounding reads one PDF page a request (the boxes are one page's pixels), in every surface: the library's ``ground``
and ``aground`` (the first page unless ``pages`` names one; several pages refused, nothing sent), the MCP tool given a
PDF as a data: URL, as ``qwenvl ground --page N`` and the playground's Find do. Before, a multi-page PDF went whole in
one request and the boxes were read against the last page's size."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, make_client
from dashscope_server import Reply, _media
from qwenvl import tasks
from test_playground_pages import write_pdf

BOX = '```json\n[{"bbox_2d": [100, 100, 500, 500], "label": "block"}]\n```'


def model_calls(server) -> list:
    return [r for r in server.requests if r.path.endswith(("/chat/completions", "/generation"))]


def pages_sent(server, protocol: str) -> list[int]:
    """How many images each model request carried."""
    return [len([u for k, urls in _media(protocol, r.json) for u in urls if k == "image"]) for r in model_calls(server)]


@pytest.fixture
def three(isolated_env: Path) -> Path:
    return write_pdf(isolated_env / "three.pdf", 3)


def test_ground_reads_the_first_page_or_the_one_named(server, protocol, three):
    server.enqueue(Reply(text=BOX), Reply(text=BOX))
    with make_client(server, protocol) as c:
        first = tasks.ground(c, str(three), "the block")
        second = tasks.ground(c, str(three), "the block", pages=2)
    assert pages_sent(server, protocol) == [1, 1]
    assert (first.page, second.page) == (1, 2)
    assert len(first.boxes) == 1 and first.width is not None
    sent = [u for r in model_calls(server) for k, urls in _media(protocol, r.json) for u in urls if k == "image"]
    assert sent[0] != sent[1]  # two different pages


@pytest.mark.parametrize("pages", ["1-2", "2,3", [1, 2]])
def test_ground_refuses_several_pages_and_sends_nothing(server, three, pages):
    with make_client(server) as c, pytest.raises(qwenvl.UsageError, match="ground reads one PDF page"):
        tasks.ground(c, str(three), "the block", pages=pages)
    assert not model_calls(server)


def test_aground_reads_one_page_too(server, protocol, three):
    server.enqueue(Reply(text=BOX))

    async def go() -> tasks.Grounding:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as c:
            return await tasks.aground(c, str(three), "the block")

    g = asyncio.run(go())
    assert pages_sent(server, protocol) == [1] and g.page == 1


def test_mcp_ground_of_a_pdf_data_url_reads_one_page(server, env, three):
    mcp_test = pytest.importorskip("test_mcp")
    url = "data:application/pdf;base64," + base64.b64encode(three.read_bytes()).decode()
    server.enqueue(Reply(text=BOX))

    async def go() -> None:
        async with mcp_test.stdio_session(env) as c:
            r = await c.call_tool("ground", {"image": url, "query": "the block"})
            assert not r.is_error, mcp_test.text_of(r)

    mcp_test.run(go)
    assert pages_sent(server, "compat") == [1]
