"""Tests for the fake DashScope server (tests/dashscope_server.py), driven with httpx."""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dashscope_server import (
    COMPAT_REQUEST_SCHEMA,
    NATIVE_REQUEST_SCHEMA,
    DashScopeServer,
    Reply,
    model_exists,
    serve,
)

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMG = "https://example.com/dog.jpeg"
PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
PROMPT = "describe this picture in a few short words please"


@pytest.fixture
def srv():
    yield from serve(api_key=KEY)


@pytest.fixture
def http():
    with httpx.Client(timeout=10) as c:
        yield c


def compat_body(**extra):
    content = [{"type": "image_url", "image_url": {"url": IMG}}, {"type": "text", "text": PROMPT}]
    return {"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": content}], **extra}


def native_body(parameters=None, content=None):
    content = content or [{"image": IMG}, {"text": PROMPT}]
    body = {"model": "qwen3-vl-plus", "input": {"messages": [{"role": "user", "content": content}]}}
    if parameters is not None:
        body["parameters"] = parameters
    return body


def compat(c, s, body, headers=None):
    return c.post(s.compat_base + "/chat/completions", json=body, headers={**AUTH, **(headers or {})})


def native(c, s, body, headers=None):
    return c.post(
        s.native_base + "/services/aigc/multimodal-generation/generation",
        json=body,
        headers={**AUTH, **(headers or {})},
    )


SSE = {"X-DashScope-SSE": "enable"}
RESOLVE = {"X-DashScope-OssResourceResolve": "enable"}
ECHO = f"echo: {PROMPT} [images=1 videos=0]"


def compat_events(text: str) -> list:
    """Parse a compat SSE body into JSON chunks; '[DONE]' stays a string."""
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def native_events(text: str) -> list[dict]:
    """Parse a native SSE body into [{"id","event","status","data"}]."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        ev = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                ev["comment"] = line[1:]
            else:
                k, _, v = line.partition(":")
                ev[k] = json.loads(v) if k == "data" else v
        out.append(ev)
    return out


# ------------------------------------------------------------------------- schemas, models
def test_schemas_are_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(COMPAT_REQUEST_SCHEMA)
    jsonschema.Draft202012Validator.check_schema(NATIVE_REQUEST_SCHEMA)


@pytest.mark.parametrize(
    "name,ok",
    [
        ("qwen3-vl-plus", True),
        ("qwen3-vl-plus-2025-12-19", True),
        ("qwen-vl-max-latest", True),
        ("qvq-max", True),
        ("qwen-vl-ocr-latest", True),
        ("qwen3-vl-flash", True),
        ("qwen-max", False),
        ("qwen3-vl-plusx", False),
        ("gpt-4o", False),
    ],
)
def test_model_allow_list(name, ok):
    assert model_exists(name) is ok


# ------------------------------------------------------------------------- documented shapes
def test_compat_non_stream_shape(srv, http):
    r = compat(http, srv, compat_body())
    assert r.status_code == 200
    d = r.json()
    rid = r.headers["x-request-id"]
    assert d["id"] == f"chatcmpl-{rid}" and d["request_id"] == rid
    assert d["object"] == "chat.completion" and isinstance(d["created"], int)
    assert d["model"] == "qwen3-vl-plus" and d["system_fingerprint"] is None
    assert d["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": ECHO}, "finish_reason": "stop", "logprobs": None}
    ]
    words = len(ECHO.split())
    assert d["usage"] == {
        "prompt_tokens": 110,
        "completion_tokens": words,
        "total_tokens": 110 + words,
        "prompt_tokens_details": {"image_tokens": 100},
    }


def test_native_non_stream_shape(srv, http):
    r = native(http, srv, native_body())
    assert r.status_code == 200
    d = r.json()
    assert d["request_id"] == r.headers["x-request-id"]
    assert d["output"] == {
        "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": [{"text": ECHO}]}}]
    }
    words = len(ECHO.split())
    assert d["usage"] == {"input_tokens": 110, "output_tokens": words, "total_tokens": 110 + words, "image_tokens": 100}


def test_native_text_only_has_no_image_tokens_and_result_format_text(srv, http):
    r = native(http, srv, native_body({"result_format": "text"}, content=[{"text": "hello"}]))
    d = r.json()
    assert d["output"] == {"text": "echo: hello [images=0 videos=0]", "finish_reason": "stop"}
    assert "image_tokens" not in d["usage"] and d["usage"]["input_tokens"] == 10


def test_echo_counts_images_and_videos_over_whole_request(srv, http):
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {
                    "type": "image_url",
                    "image_url": {"url": IMG, "detail": "high"},
                    "min_pixels": 3136,
                    "max_pixels": 8388608,
                },
                {"type": "text", "text": "first"},
            ],
        },
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [
                {"type": "video", "video": [IMG, IMG, IMG, IMG], "fps": 2},
                {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}, "fps": 1.5},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
                {"type": "text", "text": "second"},
                {"type": "text", "text": "part"},
            ],
        },
    ]
    body = {"model": "qwen3-vl-flash-latest", "messages": messages, "vl_high_resolution_images": True}
    d = compat(http, srv, body).json()
    assert d["choices"][0]["message"]["content"] == "echo: second part [images=2 videos=2]"
    assert d["model"] == "qwen3-vl-flash-latest"
    assert d["usage"]["prompt_tokens"] == 210


def test_native_per_item_keys_and_video_forms_accepted(srv, http):
    content = [
        {"image": IMG, "min_pixels": 3136, "max_pixels": 6422528, "enable_rotate": True},
        {"video": [IMG, IMG, IMG, IMG], "fps": 2},
        {"video": "https://example.com/v.mp4"},
        {"audio": "https://example.com/a.mp3"},
        {"text": "what"},
    ]
    params = {
        "max_tokens": 100,
        "temperature": 0.2,
        "top_p": 0.8,
        "top_k": 20,
        "seed": 1,
        "stop": ["x"],
        "enable_thinking": False,
        "thinking_budget": 100,
        "vl_high_resolution_images": True,
        "response_format": {"type": "json_object"},
        "n": 1,
        "incremental_output": False,
    }
    r = native(http, srv, native_body(params, content))
    assert r.status_code == 200, r.text
    text = r.json()["output"]["choices"][0]["message"]["content"][0]["text"]
    assert text == "echo: what [images=1 videos=2]"


def test_compat_accepts_documented_extras(srv, http):
    body = compat_body(
        max_tokens=512,
        temperature=0.0,
        top_p=1,
        top_k=5,
        seed=2**31 - 1,
        stop="END",
        enable_thinking=True,
        thinking_budget=81920,
        vl_high_resolution_images=False,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        presence_penalty=0.5,
        repetition_penalty=1.05,
        n=2,
        logprobs=True,
        top_logprobs=5,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        tool_choice="auto",
        parallel_tool_calls=False,
        enable_search=False,
        search_options={},
        ocr_options={"task": "table_parsing"},
        preserve_thinking=True,
    )
    assert compat(http, srv, body).status_code == 200


# ------------------------------------------------------------------------- auth
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": KEY}])
def test_auth_failures(srv, headers):
    with httpx.Client() as c:
        r = c.post(srv.compat_base + "/chat/completions", json=compat_body(), headers=headers)
        assert r.status_code == 401
        rid = r.headers["x-request-id"]
        err = {
            "code": "invalid_api_key",
            "param": None,
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
        }
        assert r.json() == {"error": err, "id": f"chatcmpl-{rid}", "request_id": rid}
        r = c.post(
            srv.native_base + "/services/aigc/multimodal-generation/generation", json=native_body(), headers=headers
        )
        assert r.status_code == 401
        assert r.json() == {
            "code": "InvalidApiKey",
            "message": "Invalid API-key provided.",
            "request_id": r.headers["x-request-id"],
        }
        r = c.get(
            srv.native_base + "/uploads", params={"action": "getPolicy", "model": "qwen3-vl-plus"}, headers=headers
        )
        assert r.status_code == 401 and r.json()["code"] == "InvalidApiKey"


# ------------------------------------------------------------------------- strict validation
def _compat_part(part):
    return {"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": [part]}]}


COMPAT_BAD = {
    "min_pixels inside image_url": (
        _compat_part({"type": "image_url", "image_url": {"url": IMG, "min_pixels": 1}}),
        "min_pixels",
    ),
    "native-style image part": (_compat_part({"image": IMG}), "'type' is a required property"),
    "native-style text part": (_compat_part({"text": "hi"}), "'type' is a required property"),
    "parameters at top level": (compat_body(parameters={"max_tokens": 5}), "parameters"),
    "input at top level": ({"model": "qwen3-vl-plus", "input": {"messages": []}}, "messages"),
    "stream_options without stream": (compat_body(stream_options={"include_usage": True}), "stream"),
    "temperature 2": (compat_body(temperature=2), "temperature"),
    "n 5": (compat_body(n=5), "n"),
    "bad role": ({"model": "qwen3-vl-plus", "messages": [{"role": "bot", "content": "x"}]}, "role"),
    "empty messages": ({"model": "qwen3-vl-plus", "messages": []}, "messages"),
    "bad data url": (
        _compat_part({"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}),
        "does not appear to be valid",
    ),
    "local path": (
        _compat_part({"type": "image_url", "image_url": {"url": "/tmp/dog.png"}}),
        "does not appear to be valid",
    ),
    "json_schema without schema": (compat_body(response_format={"type": "json_schema"}), "json_schema"),
    "tool message without id": (
        {"model": "qwen3-vl-plus", "messages": [{"role": "tool", "content": "x"}]},
        "tool_call_id",
    ),
}


@pytest.mark.parametrize("case", list(COMPAT_BAD))
def test_compat_schema_violations(srv, http, case):
    body, hint = COMPAT_BAD[case]
    r = compat(http, srv, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_parameter_error" and err["type"] == "invalid_request_error"
    assert hint in err["message"] and "$" in err["message"]


NATIVE_BAD = {
    "max_tokens at top level": ({**native_body(), "max_tokens": 5}, "max_tokens"),
    "messages at top level": ({"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": "x"}]}, "messages"),
    "openai-style part": (native_body(content=[{"type": "image_url", "image_url": {"url": IMG}}]), "type"),
    "two kinds in one item": (native_body(content=[{"image": IMG, "text": "x"}]), "valid under each"),
    "stream_options in parameters": (native_body({"stream_options": {"include_usage": True}}), "stream_options"),
    "stream in parameters": (native_body({"stream": True}), "stream"),
    "bad result_format": (native_body({"result_format": "json"}), "result_format"),
    "bad data url": (
        native_body(content=[{"image": "data:image/png;base64,not base64!"}]),
        "does not appear to be valid",
    ),
    "data url without base64 marker": (
        native_body(content=[{"image": "data:image/png,abcd"}]),
        "does not appear to be valid",
    ),
    "file url": (native_body(content=[{"image": "file:///tmp/a.png"}]), "does not appear to be valid"),
}


@pytest.mark.parametrize("case", list(NATIVE_BAD))
def test_native_schema_violations(srv, http, case):
    body, hint = NATIVE_BAD[case]
    r = native(http, srv, body)
    assert r.status_code == 400, r.text
    d = r.json()
    assert d["code"] == "InvalidParameter" and hint in d["message"]
    assert d["request_id"] == r.headers["x-request-id"]


def test_body_that_is_not_json(srv, http):
    r = http.post(srv.compat_base + "/chat/completions", content=b"{not json", headers=AUTH)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = http.post(srv.native_base + "/services/aigc/multimodal-generation/generation", content=b"", headers=AUTH)
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"


def test_unknown_model(srv, http):
    r = compat(http, srv, {**compat_body(), "model": "qwen-nope"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found"
    r = native(http, srv, {**native_body(), "model": "qwen-nope"})
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"
    assert r.json()["message"] == "Model not exist."


def test_validation_failure_does_not_consume_scripted_reply(srv, http):
    srv.enqueue(Reply(text="scripted"))
    assert compat(http, srv, compat_body(parameters={})).status_code == 400
    assert compat(http, srv, compat_body()).json()["choices"][0]["message"]["content"] == "scripted"


# ------------------------------------------------------------------------- streams
@pytest.mark.parametrize("include_usage", [True, False])
def test_compat_stream(srv, http, include_usage):
    body = compat_body(stream=True, stream_options={"include_usage": include_usage})
    r = compat(http, srv, body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = compat_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    usage_chunk = chunks.pop() if include_usage else None
    assert len(chunks) >= 3
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == ECHO
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    if include_usage:
        assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == len(ECHO.split())
    else:
        assert all("usage" not in c for c in chunks)


def test_native_stream_cumulative_by_default(srv, http):
    r = native(http, srv, native_body(), headers=SSE)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = native_events(r.text)
    assert len(events) >= 3
    assert [e["id"] for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert all(e["event"] == "result" and e["comment"] == "HTTP_STATUS/200" for e in events)
    texts = [e["data"]["output"]["choices"][0]["message"]["content"][0]["text"] for e in events]
    assert texts[-1] == ECHO and all(ECHO.startswith(t) for t in texts)
    assert [len(t) for t in texts] == sorted(len(t) for t in texts)
    reasons = [e["data"]["output"]["choices"][0]["finish_reason"] for e in events]
    assert reasons == ["null"] * (len(events) - 1) + ["stop"]
    assert events[-1]["data"]["usage"]["output_tokens"] == len(ECHO.split())
    assert all(e["data"]["request_id"] == r.headers["x-request-id"] for e in events)


def test_native_stream_incremental(srv, http):
    r = native(http, srv, native_body({"incremental_output": True}), headers=SSE)
    events = native_events(r.text)
    pieces = [e["data"]["output"]["choices"][0]["message"]["content"][0]["text"] for e in events]
    assert "".join(pieces) == ECHO and len(pieces) >= 3


def test_native_stream_needs_the_header(srv, http):
    r = native(http, srv, native_body(), headers={"Accept": "text/event-stream"})
    assert r.headers["content-type"] == "application/json" and r.json()["output"]["choices"]


def test_reasoning(srv, http):
    srv.enqueue(Reply(reasoning="let me think about it", text="final answer here"))
    d = compat(http, srv, compat_body()).json()
    assert d["choices"][0]["message"] == {
        "role": "assistant",
        "content": "final answer here",
        "reasoning_content": "let me think about it",
    }
    assert d["usage"]["completion_tokens_details"] == {"reasoning_tokens": 5}
    srv.enqueue(Reply(reasoning="let me think about it", text="final answer here"))
    chunks = compat_events(compat(http, srv, compat_body(stream=True)).text)[:-1]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    kinds = ["reasoning_content" if "reasoning_content" in d else "content" for d in deltas]
    assert kinds == sorted(kinds, reverse=True)  # all reasoning first
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "let me think about it"
    assert "".join(d.get("content", "") for d in deltas) == "final answer here"
    srv.enqueue(Reply(reasoning="let me think about it", text="final answer here"))
    events = native_events(native(http, srv, native_body({"incremental_output": True}), headers=SSE).text)
    msgs = [e["data"]["output"]["choices"][0]["message"] for e in events]
    assert msgs[0]["content"] == [] and msgs[0]["reasoning_content"] == "let me think "
    assert "".join(m["reasoning_content"] for m in msgs) == "let me think about it"
    assert "".join(m["content"][0]["text"] for m in msgs if m["content"]) == "final answer here"


def test_tool_calls(srv, http):
    call = {"id": "call_1", "type": "function", "function": {"name": "zoom", "arguments": '{"x": 10, "y": 20}'}}
    srv.enqueue(Reply(tool_calls=[call], times=3))
    d = compat(http, srv, compat_body()).json()
    assert d["choices"][0]["finish_reason"] == "tool_calls"
    assert d["choices"][0]["message"]["tool_calls"] == [{**call, "index": 0}]
    chunks = compat_events(compat(http, srv, compat_body(stream=True)).text)[:-1]
    frags = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert frags[0]["id"] == "call_1" and frags[0]["function"]["name"] == "zoom"
    assert "".join(f["function"]["arguments"] for f in frags) == call["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    d = native(http, srv, native_body()).json()
    assert d["output"]["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "zoom"


def test_finish_reason_usage_and_model_overrides(srv, http):
    srv.enqueue(Reply(text="cut", finish_reason="length", usage={"total_tokens": 7}, model="qwen3-vl-plus-2025-12-19"))
    d = compat(http, srv, compat_body()).json()
    assert d["choices"][0]["finish_reason"] == "length" and d["usage"] == {"total_tokens": 7}
    assert d["model"] == "qwen3-vl-plus-2025-12-19"


# ------------------------------------------------------------------------- scripted failures
def test_scripted_429_with_retry_after_and_times(srv, http):
    srv.enqueue(Reply(status=429, headers={"Retry-After": "1"}, times=2))
    for _ in range(2):
        r = compat(http, srv, compat_body())
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "limit_requests"
    assert compat(http, srv, compat_body()).status_code == 200
    srv.enqueue(Reply(status=503, error_code="Custom", error_message="busy"))
    r = native(http, srv, native_body())
    assert r.status_code == 503 and r.json() == {
        "code": "Custom",
        "message": "busy",
        "request_id": r.headers["x-request-id"],
    }


@pytest.mark.parametrize(
    "raw,status,ctype",
    [
        (b"<html>502 Bad Gateway</html>", 502, "text/html"),
        (b'{"choices": [{"message": {"content": "trunc', None, "application/json"),
    ],
)
def test_raw_malformed_bodies(srv, http, raw, status, ctype):
    srv.enqueue(Reply(raw_body=raw, status=status, content_type=ctype))
    r = compat(http, srv, compat_body())
    assert r.status_code == (status or 200) and r.content == raw and r.headers["content-type"] == ctype
    with pytest.raises(json.JSONDecodeError):
        r.json()


def test_delay_causes_client_timeout_and_shutdown_interrupts_it():
    s = DashScopeServer(api_key=KEY).start()
    s.enqueue(Reply(delay_s=0.6), Reply(delay_s=0.6), Reply(delay_s=600))
    with httpx.Client(timeout=0.2) as c, pytest.raises(httpx.ReadTimeout):
        compat(c, s, compat_body())
    with httpx.Client(timeout=60) as c:
        t0 = time.monotonic()
        assert compat(c, s, compat_body()).status_code == 200
        assert time.monotonic() - t0 > 0.5  # the delay was kept (no upper bound: a busy machine is slow)
    outcome = []

    def slow_call():
        with httpx.Client(timeout=60) as c:
            try:
                outcome.append(compat(c, s, compat_body()).status_code)
            except httpx.HTTPError as exc:
                outcome.append(type(exc))

    t = threading.Thread(target=slow_call)
    t.start()
    while len(s.requests) < 3:
        time.sleep(0.01)
    t0 = time.monotonic()
    s.stop()  # wakes the 600 s sleeper and drops its connection
    t.join(60)
    assert time.monotonic() - t0 < 60  # far below the 600 s sleep: it was interrupted
    assert outcome and isinstance(outcome[0], type) and issubclass(outcome[0], httpx.TransportError)


@pytest.mark.parametrize("proto", ["compat", "native"])
def test_stream_cut(srv, http, proto):
    srv.enqueue(Reply(stream_cut_after=2))
    call = (
        (
            lambda: http.stream(
                "POST", srv.compat_base + "/chat/completions", json=compat_body(stream=True), headers=AUTH
            )
        )
        if proto == "compat"
        else (
            lambda: http.stream(
                "POST",
                srv.native_base + "/services/aigc/multimodal-generation/generation",
                json=native_body(),
                headers={**AUTH, **SSE},
            )
        )
    )
    got = b""
    with pytest.raises(httpx.RemoteProtocolError), call() as r:
        assert r.status_code == 200
        for part in r.iter_bytes():
            got += part
    assert got.count(b"\n\n") == 2 and b"[DONE]" not in got


def test_chunk_delay(srv, http):
    srv.enqueue(Reply(text="one two three four five six seven", chunk_delay_s=0.15))
    t0 = time.monotonic()
    with http.stream("POST", srv.compat_base + "/chat/completions", json=compat_body(stream=True), headers=AUTH) as r:
        body = r.read().decode()
    assert time.monotonic() - t0 >= 0.25
    assert (
        "".join(c["choices"][0]["delta"]["content"] for c in compat_events(body)[:-1])
        == "one two three four five six seven"
    )


def test_stream_error_events(srv, http):
    srv.enqueue(Reply(stream_error_after=1, error_code="DataInspectionFailed", error_message="bad content"))
    events = compat_events(compat(http, srv, compat_body(stream=True)).text)
    assert len(events) == 2 and "[DONE]" not in events
    assert events[1]["error"]["code"] == "DataInspectionFailed"
    assert events[1]["error"]["message"] == "bad content"
    srv.enqueue(Reply(stream_error_after=2, status=400, error_code="InvalidParameter", error_message="nope"))
    events = native_events(native(http, srv, native_body(), headers=SSE).text)
    assert [e["event"] for e in events] == ["result", "result", "error"]
    assert events[2]["status"] == "400" and events[2]["comment"] == "HTTP_STATUS/400"
    assert events[2]["data"]["code"] == "InvalidParameter" and events[2]["data"]["message"] == "nope"


# ------------------------------------------------------------------------- uploads
def _upload(c, s, model="qwen3-vl-plus", name="cat.png", data=b"\x89PNG-bytes", tamper=None, twice=False):
    r = c.get(s.native_base + "/uploads", params={"action": "getPolicy", "model": model}, headers=AUTH)
    assert r.status_code == 200
    pol = r.json()["data"]
    assert r.json()["output"] == pol and r.json()["request_id"] == r.headers["x-request-id"]
    form = {
        "OSSAccessKeyId": pol["oss_access_key_id"],
        "Signature": pol["signature"],
        "policy": pol["policy"],
        "key": f"{pol['upload_dir']}/{name}",
        "x-oss-object-acl": pol["x_oss_object_acl"],
        "x-oss-forbid-overwrite": pol["x_oss_forbid_overwrite"],
        "success_action_status": "200",
        "x-oss-content-type": "image/png",
        **(tamper or {}),
    }
    assert pol["upload_host"] == s.url + "/oss"
    up = c.post(pol["upload_host"], data=form, files={"file": (name, data, "image/png")})
    if twice:  # same key again: x-oss-forbid-overwrite makes OSS refuse
        up = c.post(pol["upload_host"], data=form, files={"file": (name, data, "image/png")})
    return up, form["key"]


def test_upload_and_oss_resolution(srv, http):
    up, key = _upload(http, srv)
    assert up.status_code == 200 and srv.uploads == {key: b"\x89PNG-bytes"}
    body = native_body(content=[{"image": f"oss://{key}"}, {"text": "hi"}])
    r = native(http, srv, body)
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"
    assert "X-DashScope-OssResourceResolve" in r.json()["message"]
    r = native(http, srv, body, headers=RESOLVE)
    assert (
        r.status_code == 200
        and r.json()["output"]["choices"][0]["message"]["content"][0]["text"] == "echo: hi [images=1 videos=0]"
    )
    missing = native_body(content=[{"image": f"oss://{key}.nope"}])
    assert native(http, srv, missing, headers=RESOLVE).status_code == 400
    other_model = {**body, "model": "qwen-vl-max"}
    r = native(http, srv, other_model, headers=RESOLVE)
    assert r.status_code == 400 and "uploaded for model" in r.json()["message"]


def test_upload_rejects_bad_signature_and_missing_fields(srv, http):
    up, _ = _upload(http, srv, tamper={"Signature": "forged"})
    assert up.status_code == 403 and b"<Code>AccessDenied</Code>" in up.content
    up, _ = _upload(http, srv, twice=True)
    assert up.status_code == 409
    r = http.post(srv.url + "/oss", data={"key": "x"}, files={"other": ("a", b"a")})
    assert r.status_code == 400 and len(srv.uploads) == 1
    params = {"action": "getPolicy", "model": "nope"}
    r = http.get(srv.native_base + "/uploads", params=params, headers=AUTH)
    assert r.status_code == 400


# ------------------------------------------------------------------------- recording, reset
def test_requests_are_recorded_and_reset(srv, http):
    compat(http, srv, compat_body(), headers={"X-Custom": "yes"})
    http.get(srv.native_base + "/uploads?action=getPolicy&model=qwen3-vl-plus", headers=AUTH)
    http.get(srv.url + "/nowhere")
    reqs = srv.requests
    assert [(q.method, q.path) for q in reqs] == [
        ("POST", "/compatible-mode/v1/chat/completions"),
        ("GET", "/api/v1/uploads"),
        ("GET", "/nowhere"),
    ]
    assert reqs[0].headers["x-custom"] == "yes" and reqs[0].headers["X-CUSTOM"] == "yes"
    assert "authorization" in reqs[0].headers and reqs[0].json == compat_body()
    assert json.loads(reqs[0].body) == compat_body()
    assert reqs[1].query == {"action": "getPolicy", "model": "qwen3-vl-plus"} and reqs[1].json is None
    srv.enqueue(Reply(text="x"))
    srv.reset()
    assert srv.requests == [] and srv.uploads == {}
    assert compat(http, srv, compat_body()).json()["choices"][0]["message"]["content"] == ECHO
