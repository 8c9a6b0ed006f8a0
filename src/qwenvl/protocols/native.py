"""DashScope-native protocol: ``POST {base}/services/aigc/multimodal-generation/generation`` (pure).

Body: ``{"model", "input": {"messages": [...]}, "parameters": {...}}`` with content items ``{"text"}``,
``{"image", "min_pixels"?, "max_pixels"?}`` and ``{"video": url | [frames], "fps"?}``. Streaming is asked
for with the ``X-DashScope-SSE: enable`` header and ``incremental_output`` in parameters; while streaming
``finish_reason`` is the string "null".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwenvl.errors import MalformedResponseError
from qwenvl.protocols.base import ServerSide, StreamParserFactory
from qwenvl.protocols.common import (
    StreamAccumulator,
    as_object,
    error_from_body,
    load_json,
    make_response,
    optional_list,
    optional_str,
    split_content,
)
from qwenvl.protocols.inbound import NativeServer
from qwenvl.protocols.sse import SSEEvent
from qwenvl.types import ImagePart, Message, Response, StreamEvent, TextPart

if TYPE_CHECKING:
    from qwenvl.plan import Call

NAME = "native"
ENDPOINT = "/services/aigc/multimodal-generation/generation"
OSS_RESOLVE_HEADER = "X-DashScope-OssResourceResolve"


def headers(*, stream: bool, uses_oss: bool = False) -> dict[str, str]:
    out = {"Accept": "text/event-stream" if stream else "application/json"}
    if stream:
        out["X-DashScope-SSE"] = "enable"
    if uses_oss:
        out[OSS_RESOLVE_HEADER] = "enable"
    return out


def _item(part: Any) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    out: dict[str, Any] = {"image": part.image} if isinstance(part, ImagePart) else {"video": part.video}
    for key in ("fps", "min_pixels", "max_pixels"):
        value = getattr(part, key, None)
        if value is not None:
            out[key] = value
    return out


def message(m: Message) -> dict[str, Any]:
    content = [{"text": m.content}] if isinstance(m.content, str) else [_item(p) for p in m.content]
    out: dict[str, Any] = {"role": m.role, "content": content}
    if m.tool_calls:
        out["tool_calls"] = m.tool_calls
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.name and m.role == "tool":  # native messages take a name only on tool results
        out["name"] = m.name
    return out


def uses_oss(call: Call) -> bool:
    for m in call.messages:
        for p in m.media():
            refs = p.image if isinstance(p, ImagePart) else p.video
            for ref in [refs] if isinstance(refs, str) else refs:
                if ref.startswith("oss://"):
                    return True
    return False


def build_body(call: Call, *, stream: bool) -> dict[str, Any]:
    parameters: dict[str, Any] = {"result_format": "message", **call.params}
    if stream:
        parameters["incremental_output"] = True
    return {
        "model": call.request.model,
        "input": {"messages": [message(m) for m in call.messages]},
        "parameters": parameters,
    }


def _finish(value: Any) -> str | None:
    value = optional_str(value, "finish_reason")
    return None if value == "null" else value


@dataclass
class _Choice:
    text: str
    reasoning: str | None
    finish_reason: str | None
    tool_calls: list | None
    others: list[dict[str, Any]]


def _choice(data: dict[str, Any]) -> _Choice:
    """The answer in an ``output``, in message or text form; non-text content items kept in ``others``."""
    output = data.get("output")
    if not isinstance(output, dict):
        raise MalformedResponseError("the reply has no output")
    choices = output.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        msg = as_object(choices[0].get("message"), "the reply's message")
        text, others = split_content(msg.get("content"))
        return _Choice(
            text,
            optional_str(msg.get("reasoning_content"), "reasoning_content"),
            _finish(choices[0].get("finish_reason")),
            optional_list(msg.get("tool_calls"), "tool_calls"),
            others,
        )
    if "text" in output:  # result_format "text"
        return _Choice(
            optional_str(output.get("text"), "the reply's text") or "",
            None,
            _finish(output.get("finish_reason")),
            None,
            [],
        )
    raise MalformedResponseError("the reply's output has no choices")


def parse_response(data: Any, *, model: str, request_id: str | None = None) -> Response:
    if not isinstance(data, dict):
        raise MalformedResponseError("the reply is not a JSON object")
    if "output" not in data and data.get("code"):
        raise error_from_body(None, data, request_id=request_id)
    c = _choice(data)
    return make_response(
        text=c.text,
        model=data.get("model") or model,
        usage=data.get("usage"),
        request_id=data.get("request_id") or request_id,
        finish_reason=c.finish_reason,
        reasoning=c.reasoning,
        tool_calls=c.tool_calls,
        protocol=NAME,
        raw=data,
        other_content=c.others,
    )


class StreamParser:
    """Turns native SSE events (``event:result`` with incremental output) into deltas and a response."""

    def __init__(self, model: str, request_id: str | None = None) -> None:
        self.acc = StreamAccumulator(model, NAME)
        self.acc.request_id = request_id

    @property
    def complete(self) -> bool:
        return self.acc.complete

    def feed(self, event: SSEEvent) -> list[StreamEvent]:
        if event.event == "error" or (event.status is not None and event.status >= 400):
            body = load_json(event.data, "a stream error") if event.data else {}
            raise self.acc.error(error_from_body(event.status, body, request_id=self.acc.request_id, in_stream=True))
        if not event.data:
            return []
        data = load_json(event.data, "a stream event")
        if not isinstance(data, dict):
            raise MalformedResponseError("a stream event is not a JSON object")
        if "output" not in data and data.get("code"):
            raise self.acc.error(error_from_body(event.status, data, request_id=self.acc.request_id, in_stream=True))
        acc = self.acc
        acc.request_id = data.get("request_id") or acc.request_id
        if data.get("usage"):
            acc.usage_raw = data["usage"]
        c = _choice(data)
        events = acc.add(c.text or None, c.reasoning)
        acc.other_content += c.others
        for i, tc in enumerate(c.tool_calls or []):
            # native events may repeat the call so far rather than send fragments
            acc.add_tool_call_delta(tc, i, cumulative=True)
        if c.finish_reason:
            acc.finish_reason = c.finish_reason
            acc.complete = True
        return events

    def finish(self) -> Response:
        if not self.acc.complete:
            raise self.acc.interrupted("no event with a finish_reason")
        return self.acc.response()


class NativeWire:
    """``native`` as a ``qwenvl.protocols.base.WireProtocol`` (registered in ``qwenvl.protocols``)."""

    name = NAME
    endpoint = ENDPOINT
    oss_references = True  # with the X-DashScope-OssResourceResolve header (``headers``)
    stream_parser: StreamParserFactory = StreamParser
    server: ServerSide | None = NativeServer()

    def headers(self, call: Call, *, stream: bool) -> dict[str, str]:
        return headers(stream=stream, uses_oss=uses_oss(call))

    def build_body(self, call: Call, *, stream: bool) -> dict[str, Any]:
        return build_body(call, stream=stream)

    def parse_response(self, data: Any, *, model: str, request_id: str | None = None) -> Response:
        return parse_response(data, model=model, request_id=request_id)


WIRE = NativeWire()
