"""A PDF's pages told apart in OCR's text (a form feed ends each page in text, as pdftotext does; an
``<!-- page N -->`` line begins each in Markdown), the same from the CLI (stdout and -o), the library and MCP; a
resumed reading appended to the first gives what one reading gives; and a warning about the pages' requests said
once per run, not once per page."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from PIL import Image

from conftest import make_client, run_cli
from dashscope_server import Reply

ANSWERS = ("first page\nline two", "", "third page")
TEXT = "first page\nline two\n\f\fthird page\n\f"  # each page ended by a form feed, the blank one too
MARKDOWN = "<!-- page 1 -->\n\nfirst page\nline two\n\n<!-- page 2 -->\n\n<!-- page 3 -->\n\nthird page\n\n"


def write_pdf(path: Path, pages: int = 3, size: tuple[float, float] = (300, 400)) -> Path:
    """A real PDF of ``pages`` blank pages of ``size`` points, written by pdfium."""
    doc = pdfium.PdfDocument.new()
    for _ in range(pages):
        doc.new_page(*size)
    doc.save(str(path))
    doc.close()
    return path


@pytest.fixture
def doc(isolated_env: Path) -> Path:
    return write_pdf(isolated_env / "doc.pdf")


def ocr(env: dict[str, str], *args: str):
    p = run_cli("ocr", *args, env=env)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_text_ends_each_page_with_a_form_feed(server, env, doc, isolated_env, protocol):
    server.enqueue(*(Reply(text=a) for a in ANSWERS))
    p = ocr(env, "doc.pdf", "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    assert p.stdout == TEXT
    assert p.stdout.split("\f")[:-1] == ["first page\nline two\n", "", "third page\n"]  # as pdftotext's output splits
    server.enqueue(*(Reply(text=a) for a in ANSWERS))
    p = ocr(env, "doc.pdf", "--protocol", protocol, "-o", "out.txt")
    assert p.returncode == 0 and (isolated_env / "out.txt").read_bytes() == TEXT.encode()  # the same bytes
    Image.new("RGB", (200, 100), "white").save(isolated_env / "scan.png")
    server.enqueue(Reply(text="just text"))
    assert ocr(env, "scan.png").stdout == "just text\n"  # an image is no page: its text alone


def test_markdown_begins_each_page_with_its_marker(server, env, doc, isolated_env):
    server.enqueue(*(Reply(text=a) for a in ANSWERS))
    p = ocr(env, "doc.pdf", "--format", "markdown")
    assert p.returncode == 0, p.stderr
    assert p.stdout == MARKDOWN
    server.enqueue(Reply(text="```markdown\n# Two\n```"))
    p = ocr(env, "doc.pdf", "--format", "markdown", "--pages", "2", "-o", "two.md")
    assert (isolated_env / "two.md").read_text() == "<!-- page 2 -->\n\n# Two\n\n"  # the page named as it is


def test_json_text_breaks_pages_as_text_does(server, env, doc):
    server.enqueue(
        Reply(text='[{"bbox_2d": [0, 0, 500, 500], "text_content": "A"}]'),
        Reply(text="[]"),
        Reply(text='[{"bbox_2d": [0, 0, 500, 500], "text_content": "C"}]'),
    )
    out = json.loads(ocr(env, "doc.pdf", "--format", "json").stdout)
    assert out["text"] == "A\n\f\fC\n\f" and [p["text"] for p in out["pages"]] == ["A", "", "C"]


@pytest.mark.parametrize(("fmt", "whole"), [("text", TEXT), ("markdown", MARKDOWN)], ids=["text", "markdown"])
def test_a_resumed_reading_appended_is_one_reading(server, env, doc, isolated_env, fmt, whole):
    """Page 3 fails; the note says --pages 3-; that reading's output appended to the first is what one reading of
    every page gives, on stdout and with -o."""
    failure = Reply(status=500, error_code="InternalError", error_message="boom", times=10)
    server.enqueue(Reply(text=ANSWERS[0]), Reply(text=ANSWERS[1]), failure)
    first = ocr(env, "doc.pdf", "--format", fmt, "--max-retries", "0")
    assert first.returncode == 5 and "--pages 3-" in first.stderr, first.stderr
    server.reset()
    server.enqueue(Reply(text=ANSWERS[2]))
    rest = ocr(env, "doc.pdf", "--format", fmt, "--pages", "3-")
    assert rest.returncode == 0, rest.stderr
    assert first.stdout + rest.stdout == whole
    server.reset()
    server.enqueue(Reply(text=ANSWERS[0]), Reply(text=ANSWERS[1]), failure)
    ocr(env, "doc.pdf", "--format", fmt, "--max-retries", "0", "-o", "part1")
    server.reset()
    server.enqueue(Reply(text=ANSWERS[2]))
    ocr(env, "doc.pdf", "--format", fmt, "--pages", "3-", "-o", "part2")
    assert (isolated_env / "part1").read_text() + (isolated_env / "part2").read_text() == whole


def test_library_result_gives_pages_and_joined_text(server, doc, protocol):
    from qwenvl import tasks
    from qwenvl.tasks.ocr import PAGE_BREAK, page_marker

    with make_client(server, protocol) as client:
        server.enqueue(Reply(text="one\fstill one"), Reply(text=""), Reply(text="three"))
        r = tasks.ocr(client, str(doc))
        assert [p.text for p in r.pages] == ["one\fstill one", "", "three"]  # each page's own text, as read
        assert r.text == "one\nstill one\n\f\fthree\n\f"  # a form feed in a page is not a page break
        assert r.text.split(PAGE_BREAK)[:-1] == [r.page_text(p).removesuffix(PAGE_BREAK) for p in r.pages]
        assert r.to_json()["text"] == r.text and not r.empty
        server.enqueue(Reply(text="# One"), Reply(text="  "), Reply(text="Three"))
        r = tasks.ocr(client, str(doc), format="markdown")
        assert r.text.startswith(page_marker(1) + "\n\n# One\n\n") and page_marker(2) in r.text
        server.enqueue(Reply(text=""), Reply(text=""), Reply(text=""))
        r = tasks.ocr(client, str(doc))
        assert r.empty and r.text == "\f\f\f"

    async def read() -> str:
        async with qwenvl_async(server, protocol) as aclient:
            server.enqueue(*(Reply(text=a) for a in ANSWERS))
            return (await tasks.aocr(aclient, str(doc))).text

    assert asyncio.run(read()) == TEXT


def qwenvl_async(server, protocol: str):
    import qwenvl
    from conftest import API_KEY

    return qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url, retry_backoff_s=0.01)


def test_mcp_ocr_text_breaks_pages(server, env, doc):
    pytest.importorskip("mcp")
    from test_mcp import run, stdio_session, text_of

    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(doc.parent)) as c:
            server.enqueue(*(Reply(text=a) for a in ANSWERS))
            r = await c.call_tool("ocr", {"file": doc.name})
            assert not r.is_error, text_of(r)
            assert r.structured_content["text"] == TEXT
            assert [p["text"] for p in r.structured_content["pages"]] == list(ANSWERS)

    run(main)


# --- a warning about the pages' requests: once per run ------------------------------------------------------------

# qwen-vl-ocr-2024-10-28's context is 34,096 tokens: a page this large, at this budget, is near it
NEAR = ("--model", "qwen-vl-ocr-2024-10-28", "--max-pixels", "25000000")
NEAR_FIELDS = {"model": "qwen-vl-ocr-2024-10-28", "max_pixels": 25_000_000}
NEAR_WORDS = "near or over qwen-vl-ocr-2024-10-28's context"


@pytest.fixture
def big(isolated_env: Path) -> Path:
    return write_pdf(isolated_env / "big.pdf", pages=3, size=(2000, 2800))


def test_cli_says_a_near_context_warning_once_for_every_page(server, env, big):
    server.enqueue(Reply(text="one"), Reply(text="two"), Reply(text="three"))
    p = ocr(env, "big.pdf", *NEAR)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count(NEAR_WORDS) == 1, p.stderr  # was 12: each page estimated and planned, twice each
    assert len(server.requests) == 3


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The warnings the library logs on the ``qwenvl`` logger (a handler of its own: the CLI's may have turned its
    propagation off)."""
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


def test_library_logs_a_near_context_warning_once_per_reading(server, big, logged):
    from qwenvl import tasks

    with make_client(server) as client:
        server.enqueue(Reply(text="one"), Reply(text="two"), Reply(text="three"))
        tasks.ocr(client, str(big), max_cost=100.0, **NEAR_FIELDS)  # estimated, then each page planned
        assert sum(NEAR_WORDS in m for m in logged) == 1, logged
        server.enqueue(Reply(text="one"), Reply(text="two"), Reply(text="three"))
        tasks.ocr(client, str(big), **NEAR_FIELDS)  # another reading: said again, once
        assert sum(NEAR_WORDS in m for m in logged) == 2, logged

    async def read() -> None:
        async with qwenvl_async(server, "compat") as aclient:
            server.enqueue(Reply(text="one"), Reply(text="two"), Reply(text="three"))
            await tasks.aocr(aclient, str(big), **NEAR_FIELDS)  # pages planned in worker threads

    asyncio.run(read())
    assert sum(NEAR_WORDS in m for m in logged) == 3, logged


def test_page_warnings_and_answer_notes_are_said_once_naming_their_pages(server, env, doc):
    server.enqueue(Reply(text="cut", finish_reason="length"), Reply(text=""), Reply(text="cut", finish_reason="length"))
    p = ocr(env, "doc.pdf", "--format", "markdown")
    assert p.returncode == 0, p.stderr
    cut = [line for line in p.stderr.splitlines() if "cut off at max_tokens" in line]
    assert cut == [
        "warning: pages 1, 3: the answer was cut off at max_tokens (4096 tokens): the text is incomplete; raise "
        "--max-tokens"
    ], p.stderr
    server.enqueue(Reply(text=""), Reply(text=""), Reply(text="three"))
    p = ocr(env, "doc.pdf")
    empty = [line for line in p.stderr.splitlines() if "sent no answer" in line]
    assert empty == ["warning: pages 1, 2: the service sent no answer (empty content, finish_reason stop)"], p.stderr
