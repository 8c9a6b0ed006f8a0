"""A loopback HTTP file server that counts its GETs: remote files for tests of downloads (``--fetch-urls``, serve's
URL fetches). The ``file_server`` fixture (conftest.py) starts one per test.

Each path is served as added (``add``: a body and its type, a status), or answered by a route for a path prefix
(``route``: a function of the path to a ``Page``, e.g. a redirect or a slow answer); any other path is a 404.
``gets`` counts the GETs by path (the query included) as they arrive."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Page:
    """One answer: ``status``, ``body`` of ``ctype``, ``headers`` besides, sent after ``delay_s`` seconds."""

    body: bytes = b""
    ctype: str = "application/octet-stream"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


MISSING = Page(b"missing", "text/plain", 404)


class FileServer:
    """Files on ``http://127.0.0.1:<free port>`` (``url``), until ``close``; GETs counted in ``gets``."""

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}
        self.routes: list[tuple[str, Callable[[str], Page]]] = []
        self.gets: Counter[str] = Counter()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def add(self, path: str, body: bytes, ctype: str, status: int = 200) -> None:
        """Serve ``body`` as ``ctype`` at ``path`` (its query, if any, ignored when no page has it whole)."""
        self.pages[path] = Page(body, ctype, status)

    def route(self, prefix: str, answer: Callable[[str], Page]) -> None:
        """Answer every path starting with ``prefix`` (and not added whole) with ``answer(path)``."""
        self.routes.append((prefix, answer))

    def page(self, path: str) -> Page:
        found = self.pages.get(path) or self.pages.get(path.split("?", 1)[0])
        if found is not None:
            return found
        return next((answer(path) for prefix, answer in self.routes if path.startswith(prefix)), MISSING)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        files = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                files.gets[self.path] += 1
                page = files.page(self.path)
                if page.delay_s:
                    time.sleep(page.delay_s)
                self.send_response(page.status)
                self.send_header("Content-Type", page.ctype)
                for name, value in page.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(page.body)))
                self.end_headers()
                self.wfile.write(page.body)

        return Handler
