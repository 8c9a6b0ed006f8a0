"""A remote file given with --fetch-urls is downloaded once per run, whatever the verb does with it (the estimate,
each PDF page's request, the dry run, the usage line): one home for the bytes fetched in a run, within the
download limits (``media.prepare.fetched``)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from PIL import Image

import qwenvl
from conftest import API_KEY, make_client, run_cli
from dashscope_server import Reply
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


class _Files(BaseHTTPRequestHandler):
    bodies: ClassVar[dict[str, tuple[bytes, str]]] = {
        "/doc.pdf": (_pdf(3), "application/pdf"),
        "/photo.png": (_png(), "image/png"),
    }
    gets: ClassVar[Counter[str]] = Counter()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.gets[self.path] += 1
        body, ctype = self.bodies.get(self.path, (b"missing", "text/plain"))
        self.send_response(200 if self.path in self.bodies else 404)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def files() -> Iterator[str]:
    _Files.gets.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


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
def test_each_remote_file_is_downloaded_once_per_run(server, env, files, isolated_env, args):
    (isolated_env / "s.json").write_text(SCHEMA)
    server.enqueue(Reply(text='{"total": 1}', times=10))
    capped = ["--yes"] if args[0] in ("ocr", "extract") else []  # --max-cost/--yes: the verbs of many requests
    p = run_cli(*[a.format(u=files) for a in args], "--fetch-urls", *capped, env=env)
    assert p.returncode == 0, p.stderr
    assert _Files.gets and all(n == 1 for n in _Files.gets.values()), dict(_Files.gets)
    if "--dry-run" not in args and args[0] != "tokens":
        assert model_calls(server) >= 1


@pytest.mark.parametrize("how", ["sync", "async"])
def test_the_library_reads_a_remote_pdf_once(server, files, how):
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
    assert dict(_Files.gets) == {"/doc.pdf": 1}
