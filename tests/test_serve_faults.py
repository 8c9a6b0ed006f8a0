"""`qwenvl serve` faults a new user met, each as a kind, for every backend (the DashScope gateway speaking compat or
native, the ``openai`` engine backend), both inbound protocols, streamed or not:

- a client that gives up frees its slot and cancels its upstream request at once (not after the upstream's time-out);
- the server's shutdown answers the requests it still holds with the protocol's 503 ``server_shutting_down`` (a
  stream ends with its error event), no traceback;
- one request id per request: every body and event, the ``x-request-id`` header, the usage log;
- ``/ready`` asks every backend the same way (the gateway's upstream too), cached and bounded;
- a lone surrogate in any text field is a 400 naming the field, never a 500.

The upstream that never answers is ``Hang`` (below): it records when the serve closes its connection.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import qwenvl
from conftest import API_KEY
from dashscope_server import DashScopeServer, Reply
from fault_server import FaultServer
from qwenvl.server.app import ServeSettings, create_app
from test_serve import COMPAT, NATIVE, SERVE_KEY, Served, data_url
from test_serve_checks import wait_healthy

MODEL = "qwen3-vl-plus"
HEADERS = {"Authorization": f"Bearer {SERVE_KEY}"}
BACKENDS = ["gateway-compat", "gateway-native", "engine"]


# --- an upstream that holds every model request until its client closes the connection ---------------------------


class Hang:
    """A loopback upstream for every backend. GETs (the engine's probes) are answered at once. A model request is
    held (a stream gets its headers and one content event first) until the serve closes the connection; ``closed``
    counts those closes. With ``hang`` False it answers at once in the request's protocol."""

    def __init__(self) -> None:
        self.hang = True
        self.first = True  # a held stream gets one content event first
        self.held = 0
        self.closed = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._handle(self.request)

        self.srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.srv.server_address[1]}"

    def __enter__(self) -> Hang:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.srv.shutdown()
        self.srv.server_close()

    def wait(self, what: str, n: int, timeout_s: float = 20) -> bool:
        deadline = time.monotonic() + timeout_s
        while getattr(self, what) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(60)  # bounds a test that forgets its connection
        data = b""
        while b"\r\n\r\n" not in data:
            got = conn.recv(65536)
            if not got:
                return
            data += got
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(body) < length:
            body += conn.recv(65536)
        if method == "GET":
            models = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "vllm"}]}
            return self._send(conn, 200, models)
        native = path.endswith("/generation")
        stream = headers.get("x-dashscope-sse") == "enable" if native else bool(json.loads(body).get("stream"))
        if not self.hang:
            return self._send(conn, 200, _native_reply() if native else _compat_reply())
        if stream and self.first:
            event = _native_event("hello ") if native else _compat_chunk("hello ")
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + event)
        with self.lock:
            self.held += 1
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        with self.lock:
            self.closed += 1

    @staticmethod
    def _send(conn: socket.socket, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        conn.sendall(
            b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, len(body), body)
        )


def _compat_reply() -> dict[str, Any]:
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _native_reply() -> dict[str, Any]:
    return {
        "output": {
            "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": [{"text": "ok"}]}}]
        },
        "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
        "request_id": "upstream-id",
    }


def _compat_chunk(text: str) -> bytes:
    chunk = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _native_event(text: str) -> bytes:
    event = {
        "output": {
            "choices": [{"finish_reason": "null", "message": {"role": "assistant", "content": [{"text": text}]}}]
        },
        "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
        "request_id": "upstream-id",
    }
    return b"id:1\nevent:result\n:HTTP_STATUS/200\ndata:" + json.dumps(event).encode() + b"\n\n"


def serve_in_front(url: str, backend: str, **settings: Any) -> Served:
    """A serve in process in front of ``url`` (the upstream's own time-out left at its default, minutes)."""
    if backend == "engine":
        client = qwenvl.AsyncClient(backend="openai", base_url=url + "/v1", model=MODEL, engine="vllm")
        settings.setdefault("pass_model_names", False)
    else:
        client = qwenvl.AsyncClient(api_key=API_KEY, protocol=backend.removeprefix("gateway-"), base_url=url)
    settings.setdefault("api_key", SERVE_KEY)
    return Served(create_app(client, ServeSettings(**settings)))


def request_for(protocol: str, stream: bool, text: str = "hi") -> tuple[str, dict[str, Any], dict[str, str]]:
    if protocol == "compat":
        return COMPAT, {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": text}]}, HEADERS
    body = {
        "model": MODEL,
        "input": {"messages": [{"role": "user", "content": [{"text": text}]}]},
        "parameters": {"incremental_output": True},
    }
    return NATIVE, body, {**HEADERS, **({"X-DashScope-SSE": "enable"} if stream else {})}


def give_up(url: str, path: str, body: dict[str, Any], headers: dict[str, str], up: Hang, read: bool = False) -> None:
    """A client (a plain socket) that sends its request, waits until the upstream holds it (and with ``read``, for
    the first bytes of its answer), then closes its connection."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Type": "application/json"}.items())
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(data)}\r\n{head}\r\n".encode())
        conn.sendall(data)
        assert up.wait("held", 1), "the request did not reach the upstream"
        if read:
            assert conn.recv(65536)  # the stream had started


# --- 1. a client that gives up ----------------------------------------------------------------------------------


@pytest.mark.parametrize("way", ["answer", "stream before its first event", "stream started"])
@pytest.mark.parametrize("protocol", ["compat", "native"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_client_that_gives_up_frees_its_slot_and_cancels_the_upstream_at_once(backend, protocol, way):
    """With one slot per key: the client gives up once the upstream holds its request (waiting for its answer,
    or for its stream's first event, or in a stream that had started: that one already worked); the upstream's
    connection is closed within a few seconds (before: held for the upstream's time-out, 120 s per attempt,
    retried), and the next request is answered, not refused with 429."""
    stream = way != "answer"
    with Hang() as up, serve_in_front(up.url, backend, max_concurrent_per_key=1) as served:
        up.first = way == "stream started"
        give_up(served.url, *request_for(protocol, stream), up, read=up.first)
        assert up.wait("closed", 1), "the serve kept waiting on the upstream after its client left"
        up.hang = False
        path, body, headers = request_for(protocol, False)
        deadline = time.monotonic() + 10
        while True:  # the slot is given back as the cancelled request ends: a moment after the upstream closes
            r = httpx.post(served.url + path, json=body, headers=headers, timeout=30)
            if r.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("route", ["ocr", "ground", "extract"])
def test_a_playground_client_that_gives_up_cancels_the_upstream(route, png):
    body: dict[str, Any] = {"model": MODEL, "image": data_url(png), "query": "a dog", "schema": {"type": "object"}}
    with Hang() as up, serve_in_front(up.url, "gateway-compat") as served:
        give_up(served.url, f"/qwenvl/v1/{route}", body, HEADERS, up)
        assert up.wait("closed", 1), "the serve kept waiting on the upstream after its client left"


@pytest.mark.parametrize("path", [COMPAT, NATIVE, "/qwenvl/v1/ocr"])
def test_a_client_that_leaves_while_sending_its_body_is_not_an_internal_error(server, path, caplog):
    """A client that closes its connection halfway through its body: no slot is kept, nothing is logged as an
    internal error (before: a traceback, ``internal error while answering``)."""
    with gateway_to(server.url, max_concurrent_per_key=1) as s, caplog.at_level("INFO", logger="qwenvl.serve"):
        host, port = s.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\nAuthorization: Bearer {SERVE_KEY}"
            conn.sendall(head.encode() + b"\r\nContent-Type: application/json\r\n\r\n" + b'{"model": "qwen')
            time.sleep(0.5)
        path_, body, headers = request_for("compat", False)
        deadline = time.monotonic() + 10
        while True:
            r = httpx.post(s.url + path_, json=body, headers=headers, timeout=30)
            if r.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text
    assert not [rec for rec in caplog.records if rec.levelno >= 40], [rec.getMessage() for rec in caplog.records]


# --- 2. the server's shutdown with requests in flight -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read(url: str, protocol: str, stream: bool, out: dict[str, Any]) -> None:
    path, body, headers = request_for(protocol, stream)
    try:
        with httpx.Client(timeout=60) as h, h.stream("POST", url + path, json=body, headers=headers) as r:
            out["status"], out["headers"], out["body"] = r.status_code, dict(r.headers), r.read().decode()
    except httpx.HTTPError as exc:
        out["error"] = repr(exc)


@pytest.mark.parametrize("workers", [1, 2])
def test_shutdown_answers_the_requests_in_flight_in_their_protocol(workers):
    """SIGTERM with four requests held (each protocol, streamed or not): after the grace period each client gets
    the protocol's 503 ``server_shutting_down`` (a stream that had started: its error event, last), the server
    exits 143, and stderr holds one line per request cut, no traceback (before: a plain-text 500 and a 117-line
    traceback)."""
    port = _free_port()
    with Hang() as up:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "QWENVL_"))},
            "DASHSCOPE_API_KEY": API_KEY,
            "QWENVL_LOG": "0",
        }
        args = ["serve", "--port", str(port), "--api-key", SERVE_KEY, "--upstream", up.url, "--workers", str(workers)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "qwenvl", *args], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            ways = [(p, s) for p in ("compat", "native") for s in (False, True)]
            seen: dict[tuple[str, bool], dict[str, Any]] = {w: {} for w in ways}
            readers = [threading.Thread(target=_read, args=(url, *w, seen[w]), daemon=True) for w in ways]
            for t in readers:
                t.start()
            assert up.wait("held", len(ways)), "the requests did not reach the upstream"
            proc.send_signal(signal.SIGTERM)
            for t in readers:
                t.join(60)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), (proc.returncode, err)
    assert "Traceback" not in err and "Exception in ASGI application" not in err and "ERROR" not in err, err
    cut = [line for line in err.splitlines() if "cut by the server's shutdown" in line]
    assert len(cut) == len(seen), err  # one line per request cut, with its id
    for (protocol, stream), got in seen.items():
        assert "error" not in got, (protocol, stream, got)
        if stream:  # it had started (the upstream's first event): 200, then the error event, last
            assert got["status"] == 200, got
            events = [e for e in got["body"].split("\n\n") if e.strip()]
            data = json.loads(events[-1].split("data:", 1)[1])
            error = data["error"] if protocol == "compat" else data
            if protocol == "native":
                assert "event:error" in events[-1] and ":HTTP_STATUS/503" in events[-1]
            assert "hello" in got["body"]
        else:
            assert got["status"] == 503 and got["headers"]["retry-after"], got
            data = json.loads(got["body"])
            error = data["error"] if protocol == "compat" else data
            assert data["request_id"] == got["headers"]["x-request-id"]
        want = "server_shutting_down" if protocol == "compat" else "ServiceUnavailable.ShuttingDown"
        assert error["code"] == want and "shutting down" in error["message"], (protocol, stream, data)


# --- 3. one request id per request ----------------------------------------------------------------------------------


def test_one_request_id_in_every_event_header_and_the_usage_log(server, stores):
    """The dashscope SDK streaming through the serve saw one id on its first events and another (the upstream's)
    on the last. Now: one id per request, in every body and event, the ``x-request-id`` header and the usage log
    row; the compat ``id`` is ``chatcmpl-<that id>``; an error mid-stream carries it too."""
    dashscope = pytest.importorskip("dashscope")
    _, usage = stores
    client = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=usage, retry_backoff_s=0.01)
    with Served(create_app(client, ServeSettings(api_key=SERVE_KEY))) as s:
        ids: list[set[str]] = []
        with pytest.MonkeyPatch.context() as mp:  # the SDK, streamed, incremental
            mp.setattr(dashscope, "base_http_api_url", s.url + "/api/v1")
            responses = list(
                dashscope.MultiModalConversation.call(
                    api_key=SERVE_KEY,
                    model=MODEL,
                    stream=True,
                    incremental_output=True,
                    messages=[{"role": "user", "content": [{"text": "one two three"}]}],
                )
            )
            assert len(responses) > 2 and all(r.status_code == 200 for r in responses)
            ids.append({r.request_id for r in responses})
            r = dashscope.MultiModalConversation.call(
                api_key=SERVE_KEY, model=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}]
            )
            ids.append({r.request_id})
        for protocol in ("compat", "native"):
            for stream in (False, True):
                path, body, headers = request_for(protocol, stream, "one two three")
                r = httpx.post(s.url + path, json=body, headers=headers, timeout=30)
                assert r.status_code == 200
                rid = r.headers["x-request-id"]
                if stream:
                    lines = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
                    found = [json.loads(d) for d in lines if d != "[DONE]"]
                    assert len(found) > 2
                else:
                    found = [r.json()]
                key = "id" if protocol == "compat" else "request_id"
                want = f"chatcmpl-{rid}" if protocol == "compat" else rid
                assert {d[key] for d in found} == {want}, (protocol, stream, found)
                ids.append({rid})
        # an error after content: the error event names the same request
        server.enqueue(Reply(text="one two three four", status=500, stream_error_after=1))
        path, body, headers = request_for("native", True)
        r = httpx.post(s.url + path, json=body, headers=headers, timeout=30)
        events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
        assert events[-1]["code"] and {e["request_id"] for e in events} == {r.headers["x-request-id"]}
    assert all(len(each) == 1 for each in ids), ids
    usage.flush()
    import sqlite3

    with sqlite3.connect(usage.path) as db:
        logged = [row[0] for row in db.execute("SELECT request_id FROM requests ORDER BY id")]
    assert logged[: len(ids)] == [next(iter(each)) for each in ids]


# --- 4. /ready ------------------------------------------------------------------------------------------------------


def _ready(served: Served) -> httpx.Response:
    return httpx.get(served.url + "/ready", timeout=30)


def test_the_gateway_is_ready_only_while_its_upstream_answers_its_key(server):
    with gateway_to(server.url) as s:
        r = _ready(s)
        assert r.status_code == 200 and r.json() == {"ready": True, "model_loaded": True}
        probes = [q for q in server.requests if q.method == "GET"]
        assert len(probes) == 1 and probes[0].headers.get("authorization") == f"Bearer {API_KEY}"
        assert _ready(s).status_code == 200
        assert len([q for q in server.requests if q.method == "GET"]) == 1  # cached: not asked again at once
    with gateway_to(server.url, key="sk-wrong") as s:
        r = _ready(s)
        assert r.status_code == 503 and "refuses this server's own key" in r.json()["reason"]


def test_the_gateway_is_not_ready_when_its_upstream_is_down_silent_or_keyless():
    with DashScopeServer(api_key=API_KEY) as srv:
        dead = srv.url
    with gateway_to(dead) as s:
        r = _ready(s)
        assert r.status_code == 503 and r.json()["ready"] is False
        assert "does not answer" in r.json()["reason"] and "127.0.0.1" not in r.json()["reason"]
        post = httpx.post(s.url + COMPAT, json=request_for("compat", False)[1], headers=HEADERS, timeout=60)
        assert post.status_code == 502  # what /ready foretold
    with FaultServer("silent") as silent, gateway_to(silent.url, ready_timeout_s=1) as s:
        started = time.monotonic()
        r = _ready(s)
        assert r.status_code == 503 and "within 1 s" in r.json()["reason"]
        assert time.monotonic() - started < 20  # bounded by its deadline, not the upstream's time-out
    with DashScopeServer(api_key=API_KEY) as srv:
        client = qwenvl.AsyncClient(base_url=srv.url)  # no key anywhere: the environment is isolated
        with Served(create_app(client, ServeSettings(api_key=SERVE_KEY))) as s:
            r = _ready(s)
            assert r.status_code == 503 and "no API key for its upstream" in r.json()["reason"]


def gateway_to(url: str, key: str = API_KEY, **settings: Any) -> Served:
    client = qwenvl.AsyncClient(api_key=key, base_url=url, retry_backoff_s=0.01, timeout_s=5)
    return Served(create_app(client, ServeSettings(api_key=SERVE_KEY, **settings)))


# --- 5. lone surrogates -----------------------------------------------------------------------------------------------

LONE = "caf\udce9"  # a Latin-1 byte decoded with surrogateescape; JSON carries it as "\udce9"


def _compat_body(where: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    if where == "text":
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": LONE}]}]
    elif where == "system":
        body["messages"].insert(0, {"role": "system", "content": LONE})
    elif where == "tool arguments":
        call = {"id": "c1", "type": "function", "function": {"name": "zoom", "arguments": '{"x": "' + LONE + '"}'}}
        body["messages"] += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
        ]
    elif where == "schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "description": LONE}},
        }
    elif where == "model":
        body["model"] = LONE
    return body


def _native_body(where: str) -> dict[str, Any]:
    compat = _compat_body(where)
    messages = [
        {**m, "content": [{"text": m["content"]}]} if isinstance(m.get("content"), str) else m
        for m in compat["messages"]
    ]
    for m in messages:
        if isinstance(m["content"], list):
            m["content"] = [{"text": p["text"]} if p.get("type") == "text" else p for p in m["content"]]
    params = {"response_format": compat["response_format"]} if "response_format" in compat else {}
    return {"model": compat["model"], "input": {"messages": messages}, "parameters": params}


WHERE = {
    "text": ("messages[0].content[0].text", "input.messages[0].content[0].text"),
    "system": ("messages[0].content", "input.messages[0].content[0].text"),
    "tool arguments": ("messages[1].tool_calls[0].function.arguments", "input.messages[1].tool_calls[0]"),
    "schema": ("response_format.json_schema.schema.description", "parameters.response_format.json_schema"),
    "model": ("model", "model"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
@pytest.mark.parametrize("protocol", ["compat", "native"])
@pytest.mark.parametrize("where", list(WHERE))
def test_a_lone_surrogate_in_any_text_field_is_a_400_naming_it(served_gateway, where, protocol, stream):
    s, server = served_gateway
    if protocol == "compat":
        path, body, headers = COMPAT, {**_compat_body(where), "stream": stream}, HEADERS
    else:
        path, body = NATIVE, _native_body(where)
        headers = {**HEADERS, **({"X-DashScope-SSE": "enable"} if stream else {})}
    before = len(server.requests)
    r = httpx.post(s.url + path, content=json.dumps(body).encode(), headers=headers, timeout=30)  # "\udce9" escapes
    assert r.status_code == 400, r.text
    data = r.json()
    error = data["error"] if protocol == "compat" else data
    assert error["code"] == ("invalid_parameter_error" if protocol == "compat" else "InvalidParameter")
    assert WHERE[where][0 if protocol == "compat" else 1] in error["message"] and "U+DCE9" in error["message"]
    assert len(server.requests) == before  # nothing was sent upstream


def test_a_lone_surrogate_in_a_playground_field_is_a_400(served_gateway, png):
    s, _ = served_gateway
    body = {"model": MODEL, "image": data_url(png), "query": LONE}
    r = httpx.post(s.url + "/qwenvl/v1/ground", content=json.dumps(body).encode(), headers=HEADERS, timeout=30)
    assert r.status_code == 400 and "query" in r.json()["error"]["message"], r.text


@pytest.fixture
def served_gateway(server: DashScopeServer) -> Iterator[tuple[Served, DashScopeServer]]:
    with gateway_to(server.url) as s:
        yield s, server
