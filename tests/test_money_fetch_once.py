"""A remote file given with --fetch-urls is downloaded once per run, whatever the verb does with it (the estimate,
each PDF page's request, the dry run, the usage line): one home for the bytes fetched in a run, within the
download limits (``media.prepare.fetched``)."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from PIL import Image

import qwenvl
from conftest import API_KEY, make_client, run_cli
from dashscope_server import Reply
from file_server import FileServer
from qwenvl.tasks.ocr import OCRResult, aocr, ocr


def _pdf(pages: int) -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (400, 300), (30 * i, 100, 200)) for i in range(pages)]
    frames[0].save(buf, "PDF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (10, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def files(file_server: FileServer) -> str:
    file_server.add("/doc.pdf", _pdf(3), "application/pdf")
    file_server.add("/photo.png", _png(), "image/png")
    return file_server.url


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


SCHEMA = json.dumps({"type": "object", "properties": {"total": {"type": "number"}}})


@pytest.mark.parametrize(
    "args",
    [
        ["ocr", "{u}/doc.pdf"],
        ["ocr", "{u}/doc.pdf", "--dry-run"],
        ["ocr", "{u}/doc.pdf", "-f", "json"],
        ["ask", "{u}/doc.pdf", "-p", "what is it?"],
        ["ask", "{u}/doc.pdf", "-p", "what is it?", "--dry-run"],
        ["extract", "{u}/doc.pdf", "--schema", "s.json"],
        ["extract", "{u}/doc.pdf", "{u}/photo.png", "--schema", "s.json"],
        ["extract", "{u}/doc.pdf", "--schema", "s.json", "--dry-run"],
        ["ground", "{u}/photo.png", "the square"],
        ["ground", "{u}/doc.pdf", "the square", "--page", "2"],
        ["tokens", "{u}/doc.pdf"],
        ["tokens", "{u}/photo.png"],
    ],
    ids=lambda a: " ".join(x for x in a if not x.startswith("{")),
)
def test_each_remote_file_is_downloaded_once_per_run(server, env, files, file_server, isolated_env, args):
    (isolated_env / "s.json").write_text(SCHEMA)
    server.enqueue(Reply(text='{"total": 1}', times=10))
    capped = ["--yes"] if args[0] in ("ocr", "extract") else []  # --max-cost/--yes: the verbs of many requests
    p = run_cli(*[a.format(u=files) for a in args], "--fetch-urls", *capped, env=env)
    assert p.returncode == 0, p.stderr
    assert file_server.gets and all(n == 1 for n in file_server.gets.values()), dict(file_server.gets)
    if "--dry-run" not in args and args[0] != "tokens":
        assert model_calls(server) >= 1


@pytest.mark.parametrize("how", ["sync", "async"])
def test_the_library_reads_a_remote_pdf_once(server, files, file_server, how):
    """``qwenvl.tasks.ocr``'s library path (page count, estimate, pages) with one client: one download."""
    server.enqueue(Reply(text="page text", times=5))
    url = f"{files}/doc.pdf"
    if how == "sync":
        with make_client(server) as c:
            result = ocr(c, url, fetch_urls=True, max_cost=100)
    else:

        async def main() -> OCRResult:
            async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False) as ac:
                return await aocr(ac, url, fetch_urls=True, max_cost=100)

        result = asyncio.run(main())
    assert len(result.pages) == 3 and model_calls(server) == 3
    assert dict(file_server.gets) == {"/doc.pdf": 1}
