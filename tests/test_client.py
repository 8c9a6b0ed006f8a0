"""The library against the loopback DashScope server, in both protocols."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

import qwenvl
from conftest import API_KEY, make_client, write_image
from dashscope_server import Reply
from qwenvl.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    MalformedResponseError,
    MediaError,
    MissingAPIKeyError,
    PermissionDeniedError,
    RateLimitError,
    StreamInterruptedError,
    StructuredOutputError,
    UsageError,
)


def user_content(srv, protocol: str) -> list[dict]:
    body = srv.requests[-1].json
    messages = body["messages"] if protocol == "compat" else body["input"]["messages"]
    return messages[-1]["content"]


# --- basic answers -----------------------------------------------------------------------------------------


def test_ask_with_local_image(client, server, protocol, png):
    r = client.ask("What colour?", str(png))
    assert r.text == "echo: What colour? [images=1 videos=0]"
    assert r.model == "qwen3-vl-plus"
    assert r.protocol == protocol
    assert r.usage.input_tokens == 110 and r.usage.output_tokens == 5
    assert r.usage.image_tokens == 100
    assert r.usage.total_tokens == 115
    assert r.request_id
    assert r.finish_reason == "stop"
    content = user_content(server, protocol)
    image = content[0]["image_url"]["url"] if protocol == "compat" else content[0]["image"]
    assert image.startswith("data:image/png;base64,")
    assert base64.b64decode(image.split(",", 1)[1]) == png.read_bytes()
    assert server.requests[-1].headers["Authorization"] == f"Bearer {API_KEY}"


def test_mime_type_comes_from_content_not_name(client, server, protocol, isolated_env):
    path = write_image(isolated_env / "actually_jpeg.png", fmt="JPEG")
    client.ask("x", str(path))
    content = user_content(server, protocol)
    image = content[0]["image_url"]["url"] if protocol == "compat" else content[0]["image"]
    assert image.startswith("data:image/jpeg;base64,")


def test_several_images_in_order_then_text(client, server, protocol, png, jpeg):
    url = "https://example.com/cat.jpg"
    client.complete(prompt="compare", images=[str(png), url, f"file://{jpeg}"])
    content = user_content(server, protocol)
    if protocol == "compat":
        kinds = [p["type"] for p in content]
        assert kinds == ["image_url", "image_url", "image_url", "text"]
        urls = [p["image_url"]["url"] for p in content[:3]]
    else:
        assert list(content[3]) == ["text"]
        urls = [p["image"] for p in content[:3]]
    assert urls[0].startswith("data:image/png") and urls[1] == url and urls[2].startswith("data:image/jpeg")


def test_data_url_passes_when_it_decodes(client, server, protocol, png):
    data_url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    r = client.ask("x", data_url)
    assert "[images=1" in r.text


@pytest.mark.parametrize("stream", [False, True])
def test_fields_go_where_each_protocol_documents_them(client, server, protocol, png, stream):
    fields = dict(
        prompt="hi",
        image=str(png),
        system="be brief",
        max_tokens=77,
        temperature=0.5,
        top_p=0.9,
        top_k=20,
        seed=7,
        stop=["END"],
        vl_high_resolution_images=True,
        max_pixels=1_000_000,
        min_pixels=4096,
        json_mode=True,
        extra={"repetition_penalty": 1.05},
    )
    server.enqueue(Reply(text='{"ok": true}'))
    if stream:
        events = list(client.stream(**fields))
        assert events[-1].type == "done"
    else:
        client.complete(**fields)
    req = server.requests[-1]
    body = req.json
    if protocol == "compat":
        assert body["max_tokens"] == 77 and body["top_k"] == 20 and body["vl_high_resolution_images"] is True
        assert body["response_format"] == {"type": "json_object"}
        assert body["repetition_penalty"] == 1.05 and body["stop"] == ["END"] and body["seed"] == 7
        assert body["messages"][0] == {"role": "system", "content": "be brief"}
        part = body["messages"][1]["content"][0]
        assert part["max_pixels"] == 1_000_000 and part["min_pixels"] == 4096
        assert "max_pixels" not in part["image_url"]
        assert body.get("stream", False) is stream
        if stream:
            assert body["stream_options"] == {"include_usage": True}
    else:
        params = body["parameters"]
        assert set(body) == {"model", "input", "parameters"}
        assert params["max_tokens"] == 77 and params["top_k"] == 20 and params["result_format"] == "message"
        assert params["vl_high_resolution_images"] is True and params["response_format"]["type"] == "json_object"
        assert body["input"]["messages"][0] == {"role": "system", "content": [{"text": "be brief"}]}
        item = body["input"]["messages"][1]["content"][0]
        assert item["max_pixels"] == 1_000_000
        assert ("incremental_output" in params) is stream
        assert (req.headers.get("X-DashScope-SSE") == "enable") is stream
    text = [p for p in user_content(server, protocol) if "text" in p][-1]["text"]
    assert text.startswith("hi\n\n") and "JSON" in text


def test_detail_high_means_high_resolution(client, server, protocol, png):
    client.complete(prompt="x", image=str(png), detail="high")
    body = server.requests[-1].json
    params = body if protocol == "compat" else body["parameters"]
    assert params["vl_high_resolution_images"] is True


# --- streaming -------------------------------------------------------------------------------------------


def test_stream_yields_deltas_then_response(client, server, protocol, png):
    server.enqueue(Reply(text="one two three four five six seven", reasoning="let me think about it"))
    events = list(client.stream(prompt="go", image=str(png)))
    texts = [e.text for e in events if e.type == "text"]
    reasoning = [e.text for e in events if e.type == "reasoning"]
    assert len(texts) >= 2 and "".join(texts) == "one two three four five six seven"
    assert "".join(reasoning) == "let me think about it"
    done = events[-1]
    assert done.type == "done" and done.response.text == "one two three four five six seven"
    assert done.response.reasoning == "let me think about it"
    assert done.response.usage.output_tokens is not None
    assert done.response.request_id


def test_stream_cut_midway_keeps_partial_text(client, server, protocol):
    server.enqueue(Reply(text="alpha beta gamma delta epsilon zeta eta theta", stream_cut_after=1))
    received = []
    with pytest.raises(StreamInterruptedError) as info:
        for event in client.stream(prompt="go"):
            received.append(event.text)
    assert info.value.partial_text == "".join(received)
    assert info.value.partial_text.startswith("alpha")
    assert "theta" not in info.value.partial_text
    assert len(server.requests) == 1  # a broken stream is not silently retried


def test_stream_error_event_after_text(client, server, protocol):
    server.enqueue(
        Reply(
            text="a b c d e f g h i",
            stream_error_after=1,
            error_code="DataInspectionFailed",
            error_message="Output data may contain inappropriate content.",
        )
    )
    with pytest.raises(StreamInterruptedError) as info:
        list(client.stream(prompt="go"))
    assert info.value.partial_text.startswith("a b c")
    assert "inappropriate" in str(info.value)
    assert info.value.code == "DataInspectionFailed"


def test_stream_error_event_before_text_is_typed(client, server, protocol):
    server.enqueue(
        Reply(
            text="a b c",
            stream_error_after=0,
            error_code="Throttling.RateQuota",
            error_message="Requests rate limit exceeded",
        )
    )
    with pytest.raises(RateLimitError) as info:
        list(client.stream(prompt="go", max_retries=0))
    assert info.value.code == "Throttling.RateQuota"


# --- retries and errors ------------------------------------------------------------------------------------


def test_retry_on_429_honours_retry_after(client, server, protocol):
    server.enqueue(Reply(status=429, error_code="Throttling", error_message="slow down", headers={"Retry-After": "1"}))
    start = time.monotonic()
    r = client.ask("x")
    assert r.text.startswith("echo: x")
    assert len(server.requests) == 2
    assert time.monotonic() - start >= 0.9  # the server asked for 1 s; backoff alone is 0.01 s


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_retry_on_5xx_then_success(server, status):
    server.enqueue(Reply(status=status, error_code="InternalError", error_message="boom", times=2))
    with make_client(server) as c:
        assert c.ask("x").text.startswith("echo")
    assert len(server.requests) == 3


def test_gives_up_after_max_retries(client, server, protocol):
    server.enqueue(Reply(status=503, error_code="ServiceUnavailable", error_message="overloaded", times=5))
    with pytest.raises(InternalServerError) as info:
        client.complete(prompt="x", max_retries=1)
    assert len(server.requests) == 2
    assert info.value.status == 503 and info.value.code == "ServiceUnavailable"
    assert info.value.request_id and info.value.hint


@pytest.mark.parametrize(
    "status,cls", [(400, BadRequestError), (401, AuthenticationError), (403, PermissionDeniedError)]
)
def test_other_4xx_are_not_retried(client, server, protocol, status, cls):
    server.enqueue(Reply(status=status, error_code="Some.Code", error_message="nope", times=3))
    with pytest.raises(cls) as info:
        client.ask("x")
    assert len(server.requests) == 1
    assert info.value.status == status and info.value.code == "Some.Code" and info.value.request_id
    assert info.value.message == "nope" and info.value.hint


def test_wrong_key_is_authentication_error_without_the_key(server, protocol):
    with make_client(server, protocol, api_key="sk-wrong-key-123456") as c, pytest.raises(AuthenticationError) as info:
        c.ask("x")
    assert "sk-wrong-key-123456" not in str(info.value) + (info.value.hint or "")
    assert info.value.exit_code == 4


def test_malformed_body(client, server, protocol):
    server.enqueue(Reply(raw_body=b'{"choices": [', content_type="application/json"))
    with pytest.raises(MalformedResponseError):
        client.ask("x")


def test_html_502_is_retried_then_reported(client, server, protocol):
    server.enqueue(Reply(status=502, raw_body=b"<html>502 Bad Gateway</html>", content_type="text/html", times=3))
    with pytest.raises(InternalServerError) as info:
        client.ask("x")
    assert "502 Bad Gateway" in str(info.value)
    assert len(server.requests) == 3


def test_slow_reply_times_out_and_retries(server, protocol):
    server.enqueue(Reply(delay_s=2.0, times=2))
    with make_client(server, protocol) as c, pytest.raises(APITimeoutError):
        c.complete(prompt="x", timeout_s=0.3, max_retries=1)
    assert len(server.requests) == 2


def test_dead_server_is_connection_error():
    with (
        qwenvl.Client(api_key=API_KEY, base_url="http://127.0.0.1:9", retry_backoff_s=0.01) as c,
        pytest.raises(APIConnectionError) as info,
    ):
        c.ask("x")
    assert info.value.exit_code == 5 and "127.0.0.1:9" in str(info.value)


def test_unknown_model_is_a_bad_request(client, server, protocol):
    """A Qwen-VL name the service does not serve is its refusal; one that names no Qwen-VL family is refused unsent
    (``models.no_family_error``)."""
    with pytest.raises(BadRequestError):
        client.complete(prompt="x", model="qwen9-vl-none")
    with pytest.raises(UsageError, match="nothing in the name says which Qwen-VL family"):
        client.complete(prompt="x", model="no-such-model")


# --- bad input: a clear error and no request ---------------------------------------------------------------


@pytest.mark.parametrize("make", ["missing", "directory", "text_as_png", "empty", "bad_data_url", "svg"])
def test_bad_media_sends_nothing(client, server, isolated_env, make):
    if make == "missing":
        ref = str(isolated_env / "nope.png")
    elif make == "directory":
        (isolated_env / "dir").mkdir()
        ref = str(isolated_env / "dir")
    elif make == "text_as_png":
        (isolated_env / "notes.png").write_text("just some text, not an image\n")
        ref = str(isolated_env / "notes.png")
    elif make == "empty":
        (isolated_env / "zero.jpg").write_bytes(b"")
        ref = str(isolated_env / "zero.jpg")
    elif make == "svg":
        (isolated_env / "x.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
        ref = str(isolated_env / "x.svg")
    else:
        ref = "data:image/png;base64,@@not-base64@@"
    with pytest.raises(MediaError) as info:
        client.ask("x", ref)
    assert info.value.exit_code == 3
    assert server.requests == []


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root can read any file")
def test_unreadable_file(client, server, png):
    png.chmod(0)
    with pytest.raises(MediaError, match="permission"):
        client.ask("x", str(png))


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux only")
def test_file_that_fails_to_read(client, server):
    # exists and passes access checks (even for root) but reading it fails with EIO
    with pytest.raises(MediaError, match="cannot read"):
        client.ask("x", "/proc/self/mem")
    assert server.requests == []


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(prompt="   "), "prompt is empty"),
        (dict(), "prompt is required"),
        (dict(prompt="x", max_tokens="many"), "max_tokens"),
        (dict(prompt="x", temperature=5), "temperature"),
        (dict(prompt="x", detail="ultra"), "detail"),
        (dict(prompt="x", image=42), "image"),
        (dict(prompt="x", colour="red"), "colour"),
        (dict(prompt="x", json_mode=True, enable_thinking=True), "non-thinking"),
    ],
)
def test_invalid_requests_are_usage_errors(client, server, fields, match):
    with pytest.raises(UsageError, match=match) as info:
        client.complete(**fields)
    assert info.value.exit_code == 2
    assert server.requests == []


def test_unknown_region_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown region"):
        qwenvl.Client(api_key=API_KEY, region="mars")


def test_no_key_explains_how_to_set_one(server, png):
    with qwenvl.Client(base_url=server.url) as c, pytest.raises(MissingAPIKeyError) as info:
        c.ask("x", str(png))
    assert "DASHSCOPE_API_KEY" in info.value.hint and "credentials" in info.value.hint
    assert server.requests == []


# --- multi-turn --------------------------------------------------------------------------------------------


def test_history_is_returned_and_resent(client, server, protocol, png):
    first = client.ask("what is it?", str(png), system="be brief")
    assert [m.role for m in first.messages] == ["system", "user", "assistant"]
    second = client.complete(prompt="and its colour?", messages=first.messages)
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "user", "assistant"]
    body = server.requests[-1].json
    sent = body["messages"] if protocol == "compat" else body["input"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    # the history's local image is prepared again (the history keeps the user's reference, not base64)
    assert first.messages[1].media()[0].image == str(png)
    assert "[images=1" in second.text


def test_openai_style_history_is_accepted(client, server, protocol):
    history = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}},
                {"type": "text", "text": "what?"},
            ],
        },
        {"role": "assistant", "content": "a cat"},
    ]
    r = client.complete(prompt="sure?", messages=history)
    assert "[images=1" in r.text


# --- structured output -------------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["title", "amount"],
}


def test_json_mode_parses_fenced_json(client, server, protocol):
    server.enqueue(Reply(text='```json\n{"a": 1, "b": [2]}\n```'))
    r = client.complete(prompt="give json", json_mode=True)
    assert r.json == {"a": 1, "b": [2]}


def test_json_mode_prose_around_a_fence_is_repaired(client, server, protocol):
    """A JSON-mode answer is the JSON alone (a fence that is the whole answer is fine): prose around it is not
    valid, and the repair request says so."""
    server.enqueue(Reply(text='Here you go:\n```json\n{"a": 1, "b": [2]}\n```\nAnything else?'), Reply(text='{"a": 1}'))
    r = client.complete(prompt="give json", json_mode=True)
    assert r.json == {"a": 1} and len(server.requests) == 2
    assert "text around its JSON" in json.dumps(server.requests[-1].json)


def test_schema_invalid_then_repaired(client, server, protocol):
    server.enqueue(Reply(text='{"title": "Invoice"}'), Reply(text='{"title": "Invoice", "amount": 12.5}'))
    r = client.complete(prompt="extract", schema=SCHEMA)
    assert r.json == {"title": "Invoice", "amount": 12.5}
    assert len(server.requests) == 2
    repair = server.requests[-1].json
    sent = repair["messages"] if protocol == "compat" else repair["input"]["messages"]
    assert sent[-2]["role"] == "assistant"
    last_text = sent[-1]["content"][0]["text"]
    assert "amount" in last_text and "required" in last_text


def test_schema_still_invalid_raises_with_raw_text(client, server, protocol):
    server.enqueue(Reply(text="no idea"), Reply(text='{"title": 3}'))
    with pytest.raises(StructuredOutputError) as info:
        client.complete(prompt="extract", schema=SCHEMA)
    assert info.value.raw_text == '{"title": 3}'
    assert info.value.errors


def test_pydantic_model_as_schema(client, server, protocol):
    class Invoice(BaseModel):
        title: str
        amount: float

    server.enqueue(Reply(text='{"title": "T", "amount": 3}'))
    r = client.complete(prompt="extract", schema=Invoice)
    assert isinstance(r.parsed, Invoice) and r.parsed.amount == 3.0
    assert "amount" in server.requests[-1].body.decode()


def test_schema_from_file(client, server, isolated_env):
    path = isolated_env / "s.json"
    path.write_text('{"type": "object", "required": ["x"]}')
    server.enqueue(Reply(text='{"x": true}'))
    assert client.complete(prompt="x", schema=str(path)).json == {"x": True}


# --- async ------------------------------------------------------------------------------------------------


def test_async_client_complete_and_stream(server, protocol, png):
    async def main() -> tuple[str, list[str], str]:
        async with qwenvl.AsyncClient(
            api_key=API_KEY, protocol=protocol, base_url=server.url, retry_backoff_s=0.01
        ) as c:
            server.enqueue(Reply(status=429, headers={"Retry-After": "0"}))
            r = await c.ask("hello", str(png))
            pieces = []
            final = ""
            async for event in c.stream(prompt="stream please now", image=str(png)):
                if event.type == "text":
                    pieces.append(event.text)
                elif event.type == "done":
                    final = event.response.text
            return r.text, pieces, final

    text, pieces, final = asyncio.run(main())
    assert text == "echo: hello [images=1 videos=0]"
    assert "".join(pieces) == final == "echo: stream please now [images=1 videos=0]"


def test_async_stream_cut(server, protocol):
    async def main() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as c:
            async for _ in c.stream(prompt="go"):
                pass

    server.enqueue(Reply(text="a b c d e f g h i j", stream_cut_after=1))
    with pytest.raises(StreamInterruptedError) as info:
        asyncio.run(main())
    assert info.value.partial_text.startswith("a b c")


def test_request_level_base_url_overrides_client(server, png):
    with qwenvl.Client(api_key=API_KEY, base_url="http://127.0.0.1:9") as c:
        r = c.complete(prompt="x", base_url=server.compat_base)
    assert r.text.startswith("echo")


def test_key_from_credentials_file(server, isolated_env, monkeypatch):
    home = Path.home()
    (home / ".alibabacloud").mkdir()
    (home / ".alibabacloud" / "credentials").write_text(f"[work]\ndashscope_api_key = {API_KEY}\n")
    monkeypatch.setenv("ALIBABA_CLOUD_PROFILE", "work")
    with qwenvl.Client(base_url=server.url) as c:
        assert c.ask("x").text.startswith("echo")


def test_tools_and_thinking_need_a_model_that_has_them(client, server):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(UsageError, match="tool calling"):
        client.complete(prompt="x", tools=[tool], model="qwen-vl-max")
    with pytest.raises(UsageError, match="thinking"):
        client.complete(prompt="x", enable_thinking=True, model="qwen-vl-plus")
    assert server.requests == []


def test_stream_field_streams_and_returns_the_assembled_answer(server, protocol, png):
    server.enqueue(Reply(text="a b c d e f g", times=2))
    with make_client(server, protocol) as c:
        r = c.complete(prompt="x", image=str(png), stream=True)
    assert r.text == "a b c d e f g" and r.usage.output_tokens

    async def main() -> str:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as c:
            return (await c.complete(prompt="x", stream=True)).text

    assert asyncio.run(main()) == "a b c d e f g"
    body = server.requests[-1].json
    if protocol == "compat":
        assert body["stream"] is True
    else:
        assert server.requests[-1].headers["X-DashScope-SSE"] == "enable"


def test_a_misspelt_request_field_gets_the_field_it_is_near(server, isolated_env):
    """Library, async library and a batch requests line: the one-line error, and a hint naming the field meant."""
    from conftest import run_cli

    with make_client(server) as c, pytest.raises(qwenvl.UsageError) as info:
        c.complete(prompt="x", imag="a.png", max_token=3, zzz=1)
    assert "imag: Extra inputs are not permitted" in str(info.value)
    assert info.value.hint == "Did you mean 'image' (not 'imag'), 'max_tokens' (not 'max_token')?"

    async def run() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url) as ac:
            await ac.complete(prompt="x", tempreature=0.1)

    with pytest.raises(qwenvl.UsageError) as info:
        asyncio.run(run())
    assert info.value.hint == "Did you mean 'temperature' (not 'tempreature')?"
    with make_client(server) as c, pytest.raises(qwenvl.UsageError) as info:
        c.complete(prompt="x", zzz=1)
    assert info.value.hint is None  # nothing near: no guess
    (isolated_env / "r.jsonl").write_text('{"id": "a", "prompt": "x", "imag": "a.png"}\n')
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "out.jsonl", env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 2 and "r.jsonl line 1: invalid request: imag" in p.stderr
    assert "hint: Did you mean 'image' (not 'imag')?" in p.stderr
    assert server.requests == []


def test_a_request_that_is_neither_a_request_nor_a_dict_is_a_usage_error():
    """``client.stream("hi")`` (the prompt where the request goes) was a raw TypeError; every method that takes a
    request, sync and async, says it in one line before anything is sent."""
    import asyncio

    client = qwenvl.Client(api_key="sk-x", base_url="http://127.0.0.1:9")
    for call in (lambda: list(client.stream("hi")), lambda: client.complete("hi"), lambda: client.plan(5)):
        with pytest.raises(qwenvl.UsageError, match=r"a request is a qwenvl\.Request or a dict"):
            call()

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key="sk-x", base_url="http://127.0.0.1:9") as ac:
            with pytest.raises(qwenvl.UsageError, match="not str") as info:
                await ac.complete("hi")
            assert 'prompt="..."' in (info.value.hint or "")
            with pytest.raises(qwenvl.UsageError, match="not str"):
                async for _ in ac.stream("hi"):
                    pass

    asyncio.run(go())


def test_a_dashscope_protocol_with_a_local_backend_is_refused():
    """``--backend openai --protocol native`` ignored the protocol silently (the reverse was refused)."""
    for cls in (qwenvl.Client, qwenvl.AsyncClient):
        for protocol in ("compat", "native"):
            with pytest.raises(qwenvl.UsageError, match=f"not DashScope's {protocol}"):
                cls(backend="openai", protocol=protocol)
        assert cls(backend="openai", protocol="openai").protocol == "openai"
