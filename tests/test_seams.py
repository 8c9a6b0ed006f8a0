"""The backend seam (issue 11, section 1): the protocol registry and interface, the backend interface, the
interface modules' imports, and the one tool-call merge."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import pytest

import qwenvl
from conftest import API_KEY, make_client
from qwenvl import protocols
from qwenvl.backends.base import ABILITIES as _ABILITIES
from qwenvl.backends.base import AsyncBackend, Backend, MediaForm
from qwenvl.backends.dashscope import AsyncDashScopeBackend, DashScopeBackend
from qwenvl.backends.openai import AsyncOpenAIBackend, OpenAIBackend
from qwenvl.backends.transformers import AsyncTransformersBackend, TransformersBackend
from qwenvl.errors import MalformedResponseError, UsageError
from qwenvl.plan import Call
from qwenvl.protocols import inbound
from qwenvl.protocols.base import ServerSide, WireProtocol
from qwenvl.protocols.common import StreamDriver, make_response
from qwenvl.protocols.sse import SSEEvent, encode
from qwenvl.types import Response, StreamEvent

StreamEventType = Literal["text", "reasoning", "done"]

# --- the protocol registry ---------------------------------------------------------------------------------


def test_the_registry_names_each_protocol_and_gives_an_object_that_satisfies_the_interface():
    assert protocols.names() == ("compat", "native", "openai")
    for name in protocols.names():
        proto = protocols.get(name)
        assert isinstance(proto, WireProtocol) and proto.name == name
    assert isinstance(protocols.get("compat").server, ServerSide)
    assert isinstance(protocols.get("native").server, ServerSide)
    assert protocols.get("openai").server is None  # qwenvl serve speaks compat, not the plain protocol
    assert protocols.get("openai") is not protocols.get("compat")  # no longer an alias
    assert [protocols.get(n).oss_references for n in protocols.names()] == [False, True, False]
    with pytest.raises(UsageError, match="unknown protocol 'soap'"):
        protocols.get("soap")


def _call(protocol: str, **fields) -> Call:
    return qwenvl.Client(api_key=API_KEY, protocol=protocol).plan(prompt="hi", **fields)


def test_each_protocol_object_builds_what_its_module_builds():
    oss = "oss://bucket/dir/a.png"
    native = protocols.get("native")
    plain, with_oss = _call("native"), _call("native", images=[oss])
    assert native.headers(plain, stream=True) == {"Accept": "text/event-stream", "X-DashScope-SSE": "enable"}
    assert native.headers(with_oss, stream=False)["X-DashScope-OssResourceResolve"] == "enable"
    assert native.endpoint == "/services/aigc/multimodal-generation/generation"
    assert native.build_body(with_oss, stream=False)["input"]["messages"][0]["content"][0] == {"image": oss}
    compat = protocols.get("compat")
    call = _call("compat", max_tokens=7)
    assert compat.headers(call, stream=True) == {"Accept": "text/event-stream"}
    assert compat.endpoint == "/chat/completions"
    body = compat.build_body(call, stream=True)
    assert body["max_tokens"] == 7 and body["stream_options"] == {"include_usage": True}
    reply = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3}}
    assert compat.parse_response(reply, model="m").text == "ok"
    assert protocols.get("openai").parse_response(reply, model="m").protocol == "openai"


def test_oss_references_are_refused_by_the_protocols_that_cannot_send_them():
    with pytest.raises(UsageError, match="only with the native protocol"):
        _call("compat", images=["oss://bucket/a.png"])
    assert _call("native", images=["oss://bucket/a.png"]).media[0].sent == "oss://bucket/a.png"


# --- the server side, both ways ----------------------------------------------------------------------------


def _parse_stream(chunks: list[bytes], protocol: str) -> tuple[list[StreamEvent], Response]:
    driver = StreamDriver(protocols.get(protocol).stream_parser("m", None))
    events: list[StreamEvent] = []
    for line in b"".join(chunks).decode().split("\n"):
        events += driver.line(line)
    events += driver.end()
    assert events[-1].type == "done" and events[-1].response is not None
    return events[:-1], events[-1].response


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_a_stream_written_by_the_server_side_reads_back_as_the_same_answer(protocol, incremental):
    server = protocols.get(protocol).server
    assert server is not None
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if protocol == "native":
        body = {"model": "m", "input": body, "parameters": {"incremental_output": incremental}}
    else:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    parsed = server.parse_body(body, {"x-dashscope-sse": "enable"})
    assert parsed.stream
    state = inbound.StreamState(parsed=parsed, request_id="rid")
    chunks = server.stream_open(state)
    deltas = [
        StreamEvent(type="reasoning", text="hm "),
        StreamEvent(type="text", text="one "),
        StreamEvent(type="text", text="two"),
    ]
    for event in deltas:
        state.note(event)
        chunks += server.stream_delta(state, event)
    answer = make_response(
        text="one two",
        model="m",
        usage={"input_tokens": 5, "output_tokens": 2},
        request_id="rid",
        finish_reason="stop",
        reasoning="hm ",
        tool_calls=None,
        protocol=protocol,
    )
    done = StreamEvent(type="done", response=answer)
    state.note(done)
    chunks += server.stream_done(state, answer)
    if protocol == "native" and not incremental:  # each event carries the whole answer so far
        datas = [json.loads(c.decode().split("data:", 1)[1]) for c in chunks]
        texts = [d["output"]["choices"][0]["message"]["content"] for d in datas]
        assert texts == [[], [{"text": "one "}], [{"text": "one two"}], [{"text": "one two"}]]
        assert [d["output"]["choices"][0]["finish_reason"] for d in datas] == ["null"] * 3 + ["stop"]
        return
    events, response = _parse_stream(chunks, protocol)  # the client's parser reads it back
    assert response.text == "one two" and response.reasoning == "hm " and response.finish_reason == "stop"
    assert response.usage.input_tokens == 5 and response.usage.output_tokens == 2
    assert [(e.type, e.text) for e in events] == [(e.type, e.text) for e in deltas]


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_an_error_written_by_the_server_side_reads_back_as_the_typed_error(protocol):
    server = protocols.get(protocol).server
    assert server is not None
    body = server.error_body(429, "slow down", request_id="rid")
    with pytest.raises(qwenvl.RateLimitError, match="slow down"):
        protocols.get(protocol).parse_response(body, model="m")
    state = inbound.StreamState(
        parsed=inbound.parse_compat_body({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        request_id="rid",
    )
    with pytest.raises(qwenvl.RateLimitError):
        _parse_stream(server.stream_error(state, 429, body), protocol)


def test_the_sse_encoder_writes_what_the_decoder_reads():
    from qwenvl.protocols.sse import SSEDecoder

    decoder = SSEDecoder()
    raw = encode({"a": "é"}, event_id=3, event="result", status=200).decode()
    assert raw == 'id:3\nevent:result\n:HTTP_STATUS/200\ndata:{"a": "é"}\n\n'
    events = [e for line in raw.split("\n") if (e := decoder.feed(line)) is not None]
    assert events == [SSEEvent(data='{"a": "é"}', event="result", id="3")]


# --- one tool-call merge, both protocols -------------------------------------------------------------------


def _compat_chunk(tool_calls: list, finish: str | None = None) -> SSEEvent:
    choice = {"delta": {"tool_calls": tool_calls}, "finish_reason": finish}
    return SSEEvent(data=json.dumps({"choices": [choice]}))


def _native_event(tool_calls: list, finish: str = "null") -> SSEEvent:
    msg = {"role": "assistant", "content": [], "tool_calls": tool_calls}
    return SSEEvent(data=json.dumps({"output": {"choices": [{"message": msg, "finish_reason": finish}]}}))


def test_compat_tool_call_fragments_are_appended():
    parser = protocols.get("compat").stream_parser("m", None)
    fn = {"name": "get_weather", "arguments": '{"city": '}
    parser.feed(_compat_chunk([{"index": 0, "id": "c1", "type": "function", "function": fn}]))
    parser.feed(_compat_chunk([{"index": 0, "function": {"arguments": '"Paris"}'}}]))
    parser.feed(_compat_chunk([{"index": 1, "id": "c2", "function": {"name": "f", "arguments": "{}"}}], "tool_calls"))
    calls = parser.finish().tool_calls
    assert calls == [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}},
    ]


def test_native_tool_calls_that_repeat_the_call_so_far_are_not_doubled():
    parser = protocols.get("native").stream_parser("m", None)
    parser.feed(
        _native_event([{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"ci'}}])
    )
    parser.feed(_native_event([{"function": {"name": "get_weather", "arguments": 'ty": "Paris"}'}}]))
    whole = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    parser.feed(_native_event([whole], "tool_calls"))
    assert parser.finish().tool_calls == [whole]


@pytest.mark.parametrize("protocol", ["compat", "native"])
@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"function": ["x"]}, "function is not a JSON object"),
        ({"function": {"name": 7}}, "tool call's name is 7, not a string"),
    ],
)
def test_a_malformed_streamed_tool_call_is_a_malformed_response_in_both_protocols(protocol, call, message):
    parser = protocols.get(protocol).stream_parser("m", None)
    event = _compat_chunk([call]) if protocol == "compat" else _native_event([call])
    with pytest.raises(MalformedResponseError, match=message):
        parser.feed(event)


# --- the backend interface ---------------------------------------------------------------------------------


class MemoryBackend:
    """A custom in-memory backend that declares everything the interface asks for."""

    name = "memory"
    media_form: MediaForm = "data-url"
    abilities = frozenset({"images", "stream"})

    def __init__(self) -> None:
        self.answered: list[str] = []
        self.keyed = 0
        self.lock = threading.Lock()

    def cache_key(self, call: Call) -> str:
        self.keyed += 1
        return "memory:" + call.messages[-1].text()

    def complete(self, call: Call) -> Response:
        text = call.messages[-1].text()
        with self.lock:
            self.answered.append(text)
        return make_response(
            text=text.upper(),
            model=call.request.model,
            usage={"input_tokens": 1, "output_tokens": 1},
            request_id="mem",
            finish_reason="stop",
            reasoning=None,
            tool_calls=None,
            protocol="openai",
        )

    def stream(self, call: Call) -> Iterator[StreamEvent]:
        response = self.complete(call)
        yield StreamEvent(type="text", text=response.text)
        yield StreamEvent(type="done", response=response)

    def close(self) -> None:
        pass


class AsyncMemoryBackend:
    """The asyncio face of MemoryBackend."""

    name = "memory"
    media_form: MediaForm = "data-url"
    abilities = frozenset({"images", "stream"})

    def __init__(self) -> None:
        self.sync = MemoryBackend()

    def cache_key(self, call: Call) -> str:
        return self.sync.cache_key(call)

    async def complete(self, call: Call) -> Response:
        return self.sync.complete(call)

    async def stream(self, call: Call) -> AsyncIterator[StreamEvent]:
        for event in self.sync.stream(call):
            yield event

    async def aclose(self) -> None:
        pass


def test_every_shipped_backend_satisfies_its_interface() -> None:
    import asyncio

    # mypy checks these assignments (qwenvl/backends/__init__.py does the same under TYPE_CHECKING, in CI)
    sync: tuple[type[Backend], ...] = (DashScopeBackend, OpenAIBackend, TransformersBackend)
    asynchronous: tuple[type[AsyncBackend], ...] = (AsyncDashScopeBackend, AsyncOpenAIBackend, AsyncTransformersBackend)
    made: list[Backend] = [
        DashScopeBackend(API_KEY, protocol="native"),
        OpenAIBackend(base_url="http://127.0.0.1:9/v1", engine="vllm"),
        TransformersBackend(model="m"),
    ]
    amade: list[AsyncBackend] = [
        AsyncDashScopeBackend(API_KEY),
        AsyncOpenAIBackend(base_url="http://127.0.0.1:9/v1", engine="vllm"),
        AsyncTransformersBackend(model="m"),
    ]
    try:
        assert [type(b) for b in made] == list(sync) and [type(b) for b in amade] == list(asynchronous)
        for backend in made:
            assert isinstance(backend, Backend), backend
            assert not isinstance(backend, AsyncBackend), backend
            assert backend.media_form in ("data-url", "memory") and backend.abilities <= _ABILITIES
        for abackend in amade:
            assert isinstance(abackend, AsyncBackend), abackend
            assert abackend.media_form in ("data-url", "memory") and abackend.abilities <= _ABILITIES
    finally:
        for backend in made:
            backend.close()

        async def aclose() -> None:
            for abackend in amade:
                await abackend.aclose()

        asyncio.run(aclose())


def test_a_custom_backend_is_accepted_and_keys_its_own_cache(isolated_env: object) -> None:
    backend = MemoryBackend()
    typed: Backend = backend  # mypy-visible: the custom backend satisfies the interface
    assert isinstance(typed, Backend)
    client = qwenvl.Client(backend=typed, cache=True)
    assert client.backend is backend and client.is_local
    assert client.complete(prompt="hello").text == "HELLO"
    assert client.complete(prompt="hello").text == "HELLO"  # answered by the cache, keyed by the backend
    assert backend.answered == ["hello"] and backend.keyed == 2
    events = list(client.stream(prompt="again"))
    final = events[-1].response
    assert [e.type for e in events] == ["text", "done"] and final is not None and final.text == "AGAIN"


def test_a_custom_async_backend_is_accepted(isolated_env: object) -> None:
    import asyncio

    backend: AsyncBackend = AsyncMemoryBackend()
    assert isinstance(backend, AsyncBackend)

    async def run() -> tuple[str, list[StreamEventType]]:
        async with qwenvl.AsyncClient(backend=backend) as client:
            answer = (await client.complete(prompt="hi")).text
            kinds = [e.type async for e in client.stream(prompt="yo")]
            return answer, kinds

    assert asyncio.run(run()) == ("HI", ["text", "done"])


def test_an_object_that_is_not_a_backend_is_refused_when_the_client_is_made(isolated_env: object) -> None:
    """Not an AttributeError at the first request: a UsageError naming what is missing, at once."""
    for bad in (123, object()):
        with pytest.raises(UsageError, match="has no complete, stream, close") as info:
            qwenvl.Client(backend=bad)  # type: ignore[arg-type]
        assert info.value.hint is not None and "qwenvl.backends.base.Backend" in info.value.hint
    with pytest.raises(UsageError, match="MemoryBackend has no aclose: AsyncClient needs"):
        qwenvl.AsyncClient(backend=MemoryBackend())  # type: ignore[arg-type]  # a sync backend
    with pytest.raises(UsageError, match="AsyncMemoryBackend has no close: Client needs"):
        qwenvl.Client(backend=AsyncMemoryBackend())  # type: ignore[arg-type]  # an async one


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_the_dashscope_backend_keys_a_call_as_the_client_did_before_the_backend_existed(server, protocol):
    client = make_client(server, protocol, cache=True)
    call = client.plan(prompt="same question", max_tokens=9)
    from qwenvl.store.exchange import key_for

    before = key_for(client, call)  # no backend made yet: the client's own rule
    assert client._backend is None
    backend = client.backend
    assert key_for(client, call) == before  # the backend's own key, for the client's account (the key's hash)
    other = client.plan(prompt="same question", max_tokens=9, base_url=server.url + "/elsewhere")
    assert backend.cache_key(other) != backend.cache_key(call)  # the endpoint is part of the key
    assert key_for(client, other) != before
    client.close()


# --- the interface modules are light -----------------------------------------------------------------------


def test_the_interface_modules_import_neither_pillow_nor_numpy():
    code = (
        "import sys\n"
        "import qwenvl.backends.base, qwenvl.protocols, qwenvl.protocols.base, qwenvl.protocols.compat\n"
        "import qwenvl.protocols.native, qwenvl.protocols.openai, qwenvl.protocols.inbound\n"
        "import qwenvl.protocols.common, qwenvl.protocols.sse\n"
        "print(sorted(m for m in ('PIL', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
