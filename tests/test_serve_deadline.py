"""``serve --request-timeout`` bounds every wait of a request, also when a local engine accepts connections and
never answers (its model listing asked before the request: that wait is inside the deadline too), streamed and
not, both protocols; the library's own time-out bounds each of its probes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

import qwenvl
from qwenvl.server.app import ServeSettings, create_app
from test_serve import SERVE_KEY, Served


@pytest.fixture
def mute() -> Iterator[str]:
    """A server that accepts every connection and never answers; its /v1 base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    sock.close()


@pytest.mark.parametrize("stream", [False, True])
def test_serve_request_timeout_bounds_a_mute_engine(mute: str, stream: bool) -> None:
    client = qwenvl.AsyncClient(backend="openai", base_url=mute, model="mymodel", retry_backoff_s=0.01)
    app = create_app(client, ServeSettings(api_key=SERVE_KEY, pass_model_names=True, request_timeout_s=2))
    with Served(app) as s:
        for body, path in (
            ({"model": "mymodel", "messages": [{"role": "user", "content": "hi"}], "stream": stream}, "compat"),
            ({"model": "mymodel", "input": {"messages": [{"role": "user", "content": "hi"}]}}, "native"),
        ):
            url = s.url + (
                "/compatible-mode/v1/chat/completions"
                if path == "compat"
                else "/api/v1/services/aigc/multimodal-generation/generation"
            )
            headers = {"Authorization": f"Bearer {SERVE_KEY}", **({"X-DashScope-SSE": "enable"} if stream else {})}
            start = time.monotonic()
            r = httpx.post(url, json=body, headers=headers, timeout=60)
            took = time.monotonic() - start
            assert r.status_code == 504, r.text
            assert took < 15, took  # the deadline is 2 s; the engine's probe alone took 33 s (3 x 10 s)
