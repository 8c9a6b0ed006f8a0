"""What `qwenvl serve` accepts and answers on the wire, for every backend that needs no model in process (the
DashScope gateway in both upstream protocols, an OpenAI-compatible engine): messages with no usable content,
values of the wrong type and booleans that are not JSON booleans are refused with one readable line in the
caller's protocol, before anything reaches the upstream; native stream events never claim zero tokens were read;
a slow first event still starts the stream at once. The model in process is in tests/test_serve_local.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import qwenvl
from conftest import API_KEY
from dashscope_server import DashScopeServer
from engine_server import EngineServer
from qwenvl.server.app import ServeSettings, create_app
from test_serve import COMPAT, NATIVE, SERVE_KEY, Served, post
from test_serve_faults import Hang

MODEL = "qwen3-vl-plus"
ENGINE_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
BACKENDS = ["gateway-compat", "gateway-native", "engine"]
SSE = {"X-DashScope-SSE": "enable"}


class Up:
    """A serve in front of a loopback upstream, and what that upstream received."""

    def __init__(self, served: Served, upstream: Any, model: str) -> None:
        self.served, self.upstream, self.model = served, upstream, model

    def model_calls(self) -> int:
        return sum(1 for r in self.upstream.requests if r.json is not None)


@pytest.fixture(params=BACKENDS)
def up(request: pytest.FixtureRequest) -> Iterator[Up]:
    if request.param == "engine":
        with EngineServer() as engine:
            client = qwenvl.AsyncClient(backend="openai", base_url=engine.base_url, model=ENGINE_MODEL)
            settings = ServeSettings(api_key=SERVE_KEY, pass_model_names=False)
            with Served(create_app(client, settings)) as s:
                yield Up(s, engine, ENGINE_MODEL)
        return
    with DashScopeServer(api_key=API_KEY) as srv:
        client = qwenvl.AsyncClient(api_key=API_KEY, base_url=srv.url, protocol=request.param.removeprefix("gateway-"))
        with Served(create_app(client, ServeSettings(api_key=SERVE_KEY))) as s:
            yield Up(s, srv, MODEL)


def ask(up: Up, protocol: str, message: Any, params: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    """One request in ``protocol`` with ``message`` as its only message; ``params`` at the top (compat) or in
    ``parameters`` (native)."""
    params = params or {}
    if protocol == "compat":
        return post(up.served, COMPAT, {"model": up.model, "messages": [message], **params}, **kw)
    body = {"model": up.model, "input": {"messages": [message]}, "parameters": params}
    return post(up.served, NATIVE, body, **kw)


def error_of(r: httpx.Response, protocol: str) -> tuple[str, str]:
    body = r.json()
    if protocol == "compat":
        return body["error"]["code"], body["error"]["message"]
    return body["code"], body["message"]


def refused(r: httpx.Response, protocol: str, field: str) -> str:
    """Assert ``r`` is the protocol's 400 naming ``field`` (with ``input.`` / ``parameters.`` for native), in one
    line and without the validator's words. Returns the message."""
    assert r.status_code == 400, r.text
    code, message = error_of(r, protocol)
    assert code == ("invalid_parameter_error" if protocol == "compat" else "InvalidParameter"), r.text
    assert field in message, (field, message)
    assert "\n" not in message and len(message) < 400, message
    for internal in ("TextPart", "ImagePart", "union[", "list[", ".str:", "Input should", "Field required"):
        assert internal not in message, message
    return message


NO_CONTENT = {
    "missing": {"role": "user"},
    "null": {"role": "user", "content": None},
    "empty string": {"role": "user", "content": ""},
    "blank string": {"role": "user", "content": "  \n"},
    "empty list": {"role": "user", "content": []},
    "only an empty text part": {"role": "user", "content": [{"type": "text", "text": ""}]},
    "system with none": {"role": "system"},
}


@pytest.mark.parametrize("case", NO_CONTENT)
@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_a_message_with_no_usable_content_is_refused_before_anything_is_sent(up, protocol, case):
    message = NO_CONTENT[case]
    for stream in (False, True):
        params = {"stream": True} if stream and protocol == "compat" else {}
        headers = SSE if stream and protocol == "native" else {}
        r = ask(up, protocol, message, params, headers=headers)
        where = "messages[0].content" if protocol == "compat" else "input.messages[0].content"
        refused(r, protocol, where)
    assert up.model_calls() == 0  # nothing reached the upstream, nothing generated


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_an_assistant_turn_that_only_calls_tools_needs_no_content(up, protocol):
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    body_messages = [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "so?"},
    ]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    if protocol == "compat":
        r = post(up.served, COMPAT, {"model": up.model, "messages": body_messages, "tools": tools})
    else:
        body = {"model": up.model, "input": {"messages": body_messages}, "parameters": {"tools": tools}}
        r = post(up.served, NATIVE, body)
    assert r.status_code == 200, r.text


WRONG = [
    ({"role": "user", "content": 5}, "messages[0].content", "not a number"),
    ({"role": "user", "content": {"text": "hi"}}, "messages[0].content", "not an object"),
    ({"role": "user", "content": [{"type": "text", "text": 5}]}, "messages[0].content[0].text", "must be a string"),
    ({"role": "user", "content": [5]}, "messages[0].content[0]", "must be an object"),
    ({"role": "user", "content": [{"type": "picture", "url": "x"}]}, "messages[0].content[0].type", "picture"),
    ({"role": "user", "content": [{"type": "image_url"}]}, "messages[0].content[0].image_url.url", "required"),
    ({"role": "user", "content": [{"image": 5}]}, "messages[0].content[0].image", "not a number"),
    ({"role": "user", "content": [{"type": "text", "text": "x", "colour": 1}]}, "messages[0].content[0].colour", ""),
    ({"role": "user", "content": [{"video": []}, {"text": "x"}]}, "messages[0].content[0].video", "empty"),
    (
        {"role": "user", "content": [{"image": "https://e.x/a.png", "max_pixels": "big"}]},
        "messages[0].content[0].max_pixels",
        "integer",
    ),
    (
        {"role": "user", "content": [{"video": ["https://e.x/1.png", "https://e.x/2.png"], "fps": 0}]},
        "messages[0].content[0].fps",
        "above 0",
    ),  # was a 500 (a division by zero)
    (
        {"role": "user", "content": [{"image": "https://e.x/a.png", "max_pixels": -5}]},
        "messages[0].content[0].max_pixels",
        "positive",
    ),
    ({"role": "robot", "content": "hi"}, "messages[0].role", "robot"),
    ({"content": "hi"}, "messages[0].role", "required"),
    ("hi", "messages[0]", "must be an object"),
]


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_a_value_of_the_wrong_type_is_one_readable_line_naming_the_field(up, protocol):
    for message, field, words in WRONG:
        named = field if protocol == "compat" else f"input.{field}"
        said = refused(ask(up, protocol, message), protocol, named)
        assert words in said, (message, said)
    for params, field, words in (
        ({"max_tokens": True}, "max_tokens", "must be an integer, not true"),
        ({"stop": 5}, "stop", "must be a string or a list, not a number"),
        ({"temperature": "hot"}, "temperature", "must be a number, not a string"),
        ({"tools": 5}, "tools", "must be a list"),
    ):
        named = field if protocol == "compat" else f"parameters.{field}"
        said = refused(ask(up, protocol, {"role": "user", "content": "hi"}, params), protocol, named)
        assert words in said, said
    if protocol == "compat":  # true is not 1
        said = refused(ask(up, protocol, {"role": "user", "content": "hi"}, {"n": True}), protocol, "n must be 1")
        assert said.endswith("not true"), said
    assert up.model_calls() == 0


BOOLEANS = {
    "compat": ["stream", "stream_options.include_usage", "enable_thinking", "vl_high_resolution_images", "logprobs"],
    "native": ["stream", "incremental_output", "enable_thinking", "vl_high_resolution_images", "logprobs"],
}


@pytest.mark.parametrize("value", ["yes", "no", "true", 1, 0])
@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_a_boolean_field_takes_only_a_json_boolean(up, protocol, value):
    for name in BOOLEANS[protocol]:
        params: dict[str, Any] = {}
        target = params
        *outer, last = name.split(".")
        for key in outer:
            target = target.setdefault(key, {})
        target[last] = value
        if name == "stream_options.include_usage":
            params["stream"] = True
        r = ask(up, protocol, {"role": "user", "content": "hi"}, params)
        said = refused(r, protocol, name if protocol == "compat" else f"parameters.{name}")
        assert "true or false" in said, said
    assert up.model_calls() == 0
    # JSON booleans and null are taken
    if protocol == "compat":
        r = ask(up, protocol, {"role": "user", "content": "hi"}, {"stream": False})
    else:
        r = ask(up, protocol, {"role": "user", "content": "hi"}, {"incremental_output": False})
    assert r.status_code == 200, r.text


def test_the_official_sdks_get_the_refusal_in_their_own_shape(up):
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(base_url=up.served.url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=up.model, messages=[{"role": "user", "content": ""}])
    assert "messages[0].content is empty" in str(info.value)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=up.model, messages=[{"role": "user", "content": "hi"}], stream="yes")  # type: ignore[call-overload]
    assert "stream must be true or false" in str(info.value)
    dashscope = pytest.importorskip("dashscope")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dashscope, "base_http_api_url", up.served.url + "/api/v1")
        r = dashscope.MultiModalConversation.call(
            api_key=SERVE_KEY, model=up.model, messages=[{"role": "user", "content": []}]
        )
    assert r.status_code == 400 and r.code == "InvalidParameter", r
    assert r.message.startswith("input.messages[0].content is empty: give text"), r.message
    assert up.model_calls() == 0


# --- native stream events: the counts so far, never zeros --------------------------------------------------------


def native_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


@pytest.mark.parametrize("incremental", [True, False])
def test_native_stream_events_carry_the_counts_so_far_never_zeros(up, incremental):
    body = {
        "model": up.model,
        "input": {"messages": [{"role": "user", "content": [{"text": "tell me about the sea"}]}]},
        "parameters": {"incremental_output": incremental},
    }
    r = post(up.served, NATIVE, body, headers=SSE)
    assert r.status_code == 200, r.text
    events = native_events(r.text)
    assert len(events) >= 2
    last = events[-1]["usage"]
    assert last["input_tokens"] > 0 and last["output_tokens"] > 0
    for event in events[:-1]:
        usage = event.get("usage")
        if usage is None:  # the backend does not know them (an engine, the compat upstream): not claimed
            continue
        assert usage["input_tokens"] == last["input_tokens"], events  # the prompt was read before the first token
        assert 0 < usage["output_tokens"] <= last["output_tokens"]
    if isinstance(up.upstream, DashScopeServer) and up.upstream.requests[-1].path.endswith("/generation"):
        assert all("usage" in e for e in events), events  # DashScope's own counts pass on


# --- a stream starts at once, however long the first event takes -----------------------------------------------


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_a_stream_starts_at_once_when_the_first_event_is_slow(monkeypatch, protocol):
    """The status line waits for the first event only briefly (SERVE_STREAM_START_S, here 0.3 s): a model slow to
    its first token (reading a long prompt) still gets the stream's headers and a comment out at once, so a client
    or proxy with an idle time-out sees it alive."""
    from qwenvl.server import app as served_app

    monkeypatch.setattr(served_app, "SERVE_STREAM_START_S", 0.3)
    with Hang() as hang:
        hang.first = False  # the upstream holds the stream without any event
        client = qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=hang.url)
        with Served(create_app(client, ServeSettings(api_key=SERVE_KEY))) as s:
            path = COMPAT if protocol == "compat" else NATIVE
            body: dict[str, Any] = (
                {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
                if protocol == "compat"
                else {"model": MODEL, "input": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}}
            )
            headers = {"Authorization": f"Bearer {SERVE_KEY}", **(SSE if protocol == "native" else {})}
            started = time.monotonic()
            with httpx.Client(timeout=30) as h, h.stream("POST", s.url + path, json=body, headers=headers) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                first = next(r.iter_raw())
                waited = time.monotonic() - started
            assert first.startswith(b":"), first  # an SSE comment: every SSE reader skips it
            assert waited < 20, waited  # bounded by the held upstream otherwise (60 s)
            assert hang.wait("closed", 1), "the upstream request was not cancelled when the client left"


def test_the_playground_endpoints_say_what_a_field_takes_and_take_only_json_booleans(png):
    from test_serve import data_url

    with DashScopeServer(api_key=API_KEY) as srv:
        client = qwenvl.AsyncClient(api_key=API_KEY, base_url=srv.url)
        with Served(create_app(client, ServeSettings(api_key=SERVE_KEY))) as s:
            image = data_url(png)
            for route, body, said in (
                ("ground", {"model": MODEL, "image": image, "query": "a dot", "points": "yes"}, "points must be true"),
                ("estimate", {"model": MODEL, "images": [image], "vl_high_resolution_images": 1}, "true or false"),
                ("extract", {"model": MODEL, "image": image, "schema": "{}"}, "schema must be an object, not a"),
                ("ocr", {"model": 5, "image": image}, "model must be a string, not a number"),
            ):
                r = post(s, f"/qwenvl/v1/{route}", body)
                assert r.status_code == 400 and said in r.json()["error"]["message"], (route, r.text)
            assert sum(1 for r in srv.requests if r.json is not None) == 0


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_an_engine_s_own_context_window_is_the_one_checked(protocol):
    """vLLM says the context it serves a model with (``max_model_len`` in /v1/models): the fit check uses it, not
    the family's table entry (131,072 for Qwen2.5-VL)."""
    with EngineServer(max_model_len=4096) as engine:
        client = qwenvl.AsyncClient(backend="openai", base_url=engine.base_url, model=ENGINE_MODEL)
        with Served(create_app(client, ServeSettings(api_key=SERVE_KEY, pass_model_names=False))) as s:
            up = Up(s, engine, ENGINE_MODEL)
            said = refused(ask(up, protocol, {"role": "user", "content": "hi"}, {"max_tokens": 5000}), protocol, "max")
            assert f"too long for {ENGINE_MODEL}'s context of 4,096 tokens" in said, said
            assert up.model_calls() == 0
            r = ask(up, protocol, {"role": "user", "content": "hi"}, {"max_tokens": 50})
            assert r.status_code == 200, r.text
