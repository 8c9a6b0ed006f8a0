"""OpenAI-compatible protocol: ``POST {base}/chat/completions`` (pure functions, no I/O).

Images are ``image_url`` parts with ``min_pixels``/``max_pixels`` beside ``image_url``; a frame list is a
``video`` part and a video file a ``video_url`` part, with ``fps`` beside it. DashScope-only parameters
(``top_k``, ``enable_thinking``, ``thinking_budget``, ``vl_high_resolution_images``...) are top-level body
fields (what the OpenAI SDK's ``extra_body`` produces).
"""

from __future__ import annotations

import time
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
from qwenvl.protocols.inbound import CompatServer
from qwenvl.protocols.sse import SSEEvent
from qwenvl.types import ImagePart, Message, Response, StreamEvent, TextPart, VideoPart

if TYPE_CHECKING:
    from qwenvl.plan import Call

NAME = "compat"
ENDPOINT = "/chat/completions"


def headers(*, stream: bool) -> dict[str, str]:
    return {"Accept": "text/event-stream" if stream else "application/json"}


def _part(part: TextPart | ImagePart | VideoPart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        out: dict[str, Any] = {"type": "image_url", "image_url": {"url": part.image}}
    elif isinstance(part.video, list):
        out = {"type": "video", "video": list(part.video)}
    else:
        out = {"type": "video_url", "video_url": {"url": part.video}}
    if isinstance(part, VideoPart) and part.fps is not None:
        out["fps"] = part.fps
    for key in ("min_pixels", "max_pixels"):
        if getattr(part, key) is not None:
            out[key] = getattr(part, key)
    return out


def message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role}
    if isinstance(m.content, str):
        out["content"] = m.content
    elif m.role in ("assistant", "system", "tool") and not m.media():
        out["content"] = m.text()  # plain strings for text-only turns, as every OpenAI client sends
    else:
        out["content"] = [_part(p) for p in m.content]
    if m.tool_calls:
        out["tool_calls"] = m.tool_calls
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.name and m.role != "tool":  # OpenAI's tool messages have no name (native ones do)
        out["name"] = m.name
    return out


def build_body(call: Call, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": call.request.model, "messages": [message(m) for m in call.messages]}
    body.update(call.params)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def parse_response(data: Any, *, model: str, request_id: str | None = None) -> Response:
    if not isinstance(data, dict):
        raise MalformedResponseError("the reply is not a JSON object")
    if "error" in data and not data.get("choices"):
        raise error_from_body(None, data, request_id=request_id)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponseError("the reply has no choices")
    choice = choices[0]
    msg = as_object(choice.get("message"), "the reply's message")
    text, others = split_content(msg.get("content"))
    return make_response(
        text=text,
        model=data.get("model") or model,
        usage=data.get("usage"),
        request_id=data.get("request_id") or request_id or data.get("id"),
        finish_reason=optional_str(choice.get("finish_reason"), "finish_reason"),
        reasoning=optional_str(msg.get("reasoning_content"), "reasoning_content"),
        tool_calls=optional_list(msg.get("tool_calls"), "tool_calls"),
        protocol=NAME,
        raw=data,
        other_content=others,
    )


class StreamParser:
    """Turns compat SSE events (``data: {chunk}`` ... ``data: [DONE]``) into deltas and a response.

    The plain OpenAI protocol's parser is this one with its own name and reasoning field (``openai.py``)."""

    protocol = NAME

    def __init__(self, model: str, request_id: str | None = None) -> None:
        self.acc = StreamAccumulator(model, self.protocol)
        self.acc.request_id = request_id
        self.started = time.monotonic()
        self.content_chunks = 0  # deltas that carried text (engines without stream usage count output by them)

    def reasoning_of(self, delta: dict[str, Any]) -> str | None:
        return delta.get("reasoning_content")

    @property
    def complete(self) -> bool:
        return self.acc.complete

    def feed(self, event: SSEEvent) -> list[StreamEvent]:
        if not event.data:
            return []
        if event.data.strip() == "[DONE]":
            self.acc.complete = True
            return []
        chunk = load_json(event.data, "a stream chunk")
        if not isinstance(chunk, dict):
            raise MalformedResponseError("a stream chunk is not a JSON object")
        if "error" in chunk:
            raise self.acc.error(error_from_body(event.status, chunk, request_id=self.acc.request_id, in_stream=True))
        acc = self.acc
        acc.model = chunk.get("model") or acc.model
        acc.request_id = acc.request_id or chunk.get("request_id") or chunk.get("id")
        if chunk.get("usage"):
            acc.usage_raw = chunk["usage"]
        events: list[StreamEvent] = []
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise MalformedResponseError("a stream chunk's choices are not a list")
        for choice in choices:
            delta = as_object(as_object(choice, "a stream choice").get("delta"), "a stream delta")
            text, others = split_content(delta.get("content"))
            acc.other_content += others
            if text:
                self.content_chunks += 1
            events += acc.add(text or None, self.reasoning_of(delta))
            for tc in optional_list(delta.get("tool_calls"), "tool_calls") or []:
                acc.add_tool_call_delta(tc)
            finish = optional_str(choice.get("finish_reason"), "finish_reason")
            if finish:
                acc.finish_reason = finish
        return events

    def finish(self) -> Response:
        """The assembled response; raises when the stream ended before the answer did."""
        if not self.acc.complete and self.acc.finish_reason is None:
            raise self.acc.interrupted("no [DONE] and no finish_reason")
        self.acc.complete = True
        return self.acc.response()


class CompatWire:
    """``compat`` as a ``qwenvl.protocols.base.WireProtocol`` (registered in ``qwenvl.protocols``)."""

    name = NAME
    endpoint = ENDPOINT
    oss_references = False  # oss:// references are resolved by the native endpoint only
    stream_parser: StreamParserFactory = StreamParser
    server: ServerSide | None = CompatServer()

    def headers(self, call: Call, *, stream: bool) -> dict[str, str]:
        return headers(stream=stream)

    def build_body(self, call: Call, *, stream: bool) -> dict[str, Any]:
        return build_body(call, stream=stream)

    def parse_response(self, data: Any, *, model: str, request_id: str | None = None) -> Response:
        return parse_response(data, model=model, request_id=request_id)


WIRE = CompatWire()
