"""A loopback HTTP server that misbehaves on purpose: the hangs of issue 9, one mode each.

``server.mode`` decides how every request is answered (except the upload-policy GET, which is always
answered at once with an upload host on this server, so that the upload itself can misbehave):

- ``ok``             a small JSON answer at once (compat shape)
- ``head-trickle``   the status line and headers, one byte every ``interval`` seconds, for ever
- ``body-trickle``   status and headers at once (Content-Length 1 MB), then one body byte per interval
- ``silent``         the request is read, then nothing is ever sent
- ``slow-read``      the request body is read ``read_chunk`` bytes (default 1) per interval
- ``sse-comments``   a 200 event stream that sends only ``: keep-alive`` comments, one per interval
- ``sse-data-then-comments``  one content event, then only comments
- ``sse-data-forever``        content events, one per interval, never a final one
- ``image-trickle``  for ``--fetch-urls``: a PNG's headers at once, then its body one byte per interval
- ``file-steady``    a 2 MB body at 100 kB per interval: slow but steady (a legitimate large download)
- ``drop``           the request is read, then the connection is closed without a byte of reply
- ``cut``            a 200 whose headers promise 1000 bytes of JSON, then a few of them and the connection closes

Every complete answer says ``Connection: close`` (the handler closes the connection after it: a client that
reused it would race the close and see "disconnected without a response" on a busy machine).

``only``: when set, only requests whose path ends with it misbehave; the others are answered as in ``ok`` (e.g. an
engine's ``/models`` probe, so that the chat request itself meets the fault). ``requests`` counts requests per
path. ``stop()`` ends every trickle and closes the connections.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MODES = (
    "ok",
    "head-trickle",
    "body-trickle",
    "silent",
    "slow-read",
    "sse-comments",
    "sse-data-then-comments",
    "sse-data-forever",
    "image-trickle",
    "file-steady",
    "drop",
    "cut",
)


def _chunk(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def content_event(text: str) -> bytes:
    return _chunk(
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "model": "qwen3-vl-plus",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
    )


class FaultServer:
    def __init__(self, mode: str = "ok", interval: float = 0.2) -> None:
        assert mode in MODES
        self.mode = mode
        self.interval = interval
        self.read_chunk = 1
        self.only: str | None = None
        self.requests: Counter[str] = Counter()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fault = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        self._thread.join(5)

    def total(self) -> int:
        return sum(self.requests.values())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    @property
    def fault(self) -> FaultServer:
        return self.server.fault  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        with self.fault._lock:
            self.fault._conns.add(self.connection)

    def finish(self) -> None:
        with self.fault._lock:
            self.fault._conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _wait(self) -> bool:
        """One interval; False when the server stops."""
        return not self.fault.stopping.wait(self.fault.interval)

    def _drip(self, data: bytes) -> None:
        for i in range(len(data)):
            if not self._wait():
                return
            self.wfile.write(data[i : i + 1])

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        fault = self.fault
        with fault._lock:
            fault.requests[path] += 1
        mode = fault.mode if fault.only is None or path.endswith(fault.only) else "ok"
        length = int(self.headers.get("Content-Length") or 0)
        if path.endswith("/uploads"):
            return self._policy()
        if mode == "slow-read":
            while length > 0 and self._wait():
                got = len(self.rfile.read(min(length, fault.read_chunk)))
                if not got:
                    return
                length -= got
            return
        if length:
            self.rfile.read(length)
        self.close_connection = True
        try:
            if mode == "ok":
                body = json.dumps(
                    {
                        "id": "x",
                        "model": "qwen3-vl-plus",
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                ).encode()
                return self._raw(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                    b"Connection: close\r\n\r\n%s" % (len(body), body)
                )
            if mode == "head-trickle":
                return self._drip(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Pad: " + b"a" * 10**6)
            if mode == "body-trickle":
                self._raw(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n"
                    b"Connection: close\r\n\r\n"
                )
                return self._drip(b'{"choices": [' + b" " * 10**6)
            if mode == "image-trickle":
                self._raw(
                    b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n"
                    b"Connection: close\r\n\r\n"
                )
                return self._drip(b"\x89PNG\r\n\x1a\n" + b"\0" * 10**6)
            if mode == "file-steady":
                self._raw(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 2000000\r\n"
                    b"Connection: close\r\n\r\n"
                )
                for _ in range(20):
                    if not self._wait():
                        return
                    self._raw(b"x" * 100_000)
                return
            if mode == "drop":
                return
            if mode == "cut":
                return self._raw(
                    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"choices": ['
                )
            if mode == "silent":
                fault.stopping.wait()
                return
            self._raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            if mode in ("sse-data-then-comments", "sse-data-forever"):
                self._raw(content_event("hello "))
            while self._wait():
                self._raw(content_event("more ") if mode == "sse-data-forever" else b": keep-alive\n\n")
        except (BrokenPipeError, ConnectionResetError, OSError):
            return

    do_GET = do_POST = _dispatch

    def _raw(self, data: bytes) -> None:
        self.wfile.write(data)

    def _policy(self) -> None:
        policy = {
            "upload_host": self.fault.url + "/oss",
            "upload_dir": "dir",
            "oss_access_key_id": "AK",
            "signature": "sig",
            "policy": "pol",
        }
        body = json.dumps({"request_id": "r", "data": policy}).encode()
        self._raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body)
        )
