"""Issue 8 item 5: errors are one true line (control characters, proxy pages, redirects, malformed replies)."""

from __future__ import annotations

import asyncio
import json

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli
from dashscope_server import Reply
from qwenvl.errors import printable

HTML = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body><center><h1>502 Bad Gateway"
    b"</h1></center><hr><center>nginx</center>" + b"<p>padding</p>" * 40 + b"</body></html>"
)
DEEP = b"[" * 100_000 + b"]" * 100_000


def _compat_reply(**choice) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "model": "qwen3-vl-plus",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, **choice}],
        }
    ).encode()


def _native_reply(**choice) -> bytes:
    return json.dumps(
        {
            "output": {"choices": [{"message": {"role": "assistant", "content": [{"text": "hi"}]}, **choice}]},
            "request_id": "r",
        }
    ).encode()


def test_printable_removes_escapes_and_controls():
    assert printable("bad\x1b[2J\x1b[1;31mthing\x1b[0m\r\nnext\x07\x9b2J \u202eevil") == "badthing next evil"
    assert printable("\x1b]0;title\x07ok") == "ok"


@pytest.mark.parametrize("stream", [[], ["--no-stream"]])
def test_control_characters_in_service_errors_are_removed(server, env, protocol, stream):
    server.enqueue(Reply(status=400, error_message="Bad\x1b[2J\x1b[H input\x07 here", error_code="Invalid\x1b[31mX"))
    p = run_cli("ask", "-p", "hi", "--protocol", protocol, *stream, env=env)
    assert p.returncode == 5
    assert "\x1b" not in p.stderr and "\x07" not in p.stderr
    assert "Bad input here" in p.stderr


@pytest.mark.parametrize("stream", [[], ["--no-stream"]])
def test_html_page_from_a_proxy(server, env, protocol, stream):
    server.enqueue(Reply(status=502, raw_body=HTML, content_type="text/html", times=3))  # 502 is retried twice
    p = run_cli("ask", "-p", "hi", "--protocol", protocol, "--retry-backoff-s", "0.01", *stream, env=env)
    assert p.returncode == 5
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith("error: HTTP 502 Bad Gateway (an HTML page from a proxy, not the service)")
    assert "<" not in p.stderr and len(lines) == 2 and lines[1].startswith("hint:")


@pytest.mark.parametrize("stream", [False, True])
def test_html_page_with_200_is_malformed(server, protocol, stream):
    server.enqueue(Reply(raw_body=HTML, content_type="text/html; charset=utf-8"))
    with make_client(server, protocol) as c, pytest.raises(qwenvl.MalformedResponseError, match="an HTML page"):
        c.complete(prompt="hi", stream=stream)


def test_html_page_with_200_async_stream(server, protocol):
    server.enqueue(Reply(raw_body=HTML, content_type="text/html"))

    async def go():
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as c:
            return [e async for e in c.stream(prompt="hi")]

    with pytest.raises(qwenvl.MalformedResponseError, match="an HTML page"):
        asyncio.run(go())


@pytest.mark.parametrize("stream", [False, True])
def test_redirect_says_where(server, protocol, stream):
    server.enqueue(Reply(status=301, raw_body=b"", headers={"Location": "https://elsewhere.example/v1"}))
    with make_client(server, protocol) as c, pytest.raises(qwenvl.APIConnectionError) as info:
        if stream:
            list(c.stream(prompt="hi"))
        else:
            c.complete(prompt="hi")
    assert "redirected to https://elsewhere.example/v1 (check base_url)" in str(info.value)  # the library's words
    assert "(check --base-url)" in info.value.as_written()  # the CLI's
    assert len(server.requests) == 1  # not retried


def test_redirect_async(server, protocol):
    server.enqueue(Reply(status=307, raw_body=b"", headers={"Location": "http://127.0.0.1:1/x"}))

    async def go():
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as c:
            await c.complete(prompt="hi")

    with pytest.raises(qwenvl.APIConnectionError, match=r"redirected to http://127\.0\.0\.1:1/x"):
        asyncio.run(go())


def test_redirect_cli(server, env):
    server.enqueue(Reply(status=302, raw_body=b"", headers={"Location": "https://login.example/"}))
    p = run_cli("ask", "-p", "hi", env=env)
    assert p.returncode == 5
    assert "redirected to https://login.example/ (check --base-url)" in p.stderr
    assert "stream broke" not in p.stderr


MALFORMED = {
    "deep": (DEEP, DEEP),
    "finish_reason 7": (_compat_reply(finish_reason=7), _native_reply(finish_reason=7)),
    "content 7": (
        _compat_reply(message={"role": "assistant", "content": 7}),
        _native_reply(message={"role": "assistant", "content": 7}),
    ),
    "message list": (_compat_reply(message=[1]), _native_reply(message=[1])),
    "reasoning number": (
        _compat_reply(message={"content": "x", "reasoning_content": 5}),
        _native_reply(message={"content": [{"text": "x"}], "reasoning_content": 5}),
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("stream", [False, True])
def test_malformed_replies_are_malformed_response_errors(server, protocol, case, stream):
    body = MALFORMED[case][protocol == "native"]
    server.enqueue(Reply(raw_body=body))
    with make_client(server, protocol) as c, pytest.raises(qwenvl.MalformedResponseError):
        c.complete(prompt="hi", stream=stream)


@pytest.mark.parametrize("case", ["deep", "finish_reason 7"])
def test_malformed_stream_events(server, protocol, case):
    if case == "deep":
        data = DEEP
    elif protocol == "compat":
        data = json.dumps({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": 7}]}).encode()
    else:
        data = json.dumps(
            {"output": {"choices": [{"message": {"content": [{"text": "a"}]}, "finish_reason": 7}]}}
        ).encode()
    server.enqueue(Reply(raw_body=b"data: " + data + b"\n\n", content_type="text/event-stream"))
    with make_client(server, protocol) as c, pytest.raises(qwenvl.MalformedResponseError):
        list(c.stream(prompt="hi"))


@pytest.mark.parametrize("case", ["deep", "finish_reason 7"])
def test_malformed_cli_exit_5_not_internal_error(server, env, protocol, case):
    body = MALFORMED[case][protocol == "native"]
    server.enqueue(Reply(raw_body=body), Reply(raw_body=body))
    for mode in ([], ["--no-stream"]):
        p = run_cli("ask", "-p", "hi", "--protocol", protocol, *mode, env=env)
        assert p.returncode == 5, p.stderr
        assert "internal error" not in p.stderr and "Traceback" not in p.stderr
        assert p.stderr.startswith("error: ")


def test_error_messages_are_not_hard_wrapped(server, env):
    long = "word " * 60
    server.enqueue(Reply(status=400, error_message=long))
    p = run_cli("ask", "-p", "hi", "--no-stream", env={**env, "COLUMNS": "80"})
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: ")
