"""OpenAI-compatible protocol: ``POST {base}/chat/completions`` (pure functions, no I/O).

Images are ``image_url`` parts with ``min_pixels``/``max_pixels`` beside ``image_url``; a frame list is a
``video`` part and a video file a ``video_url`` part, with ``fps`` beside it. DashScope-only parameters
(``top_k``, ``enable_thinking``, ``thinking_budget``, ``vl_high_resolution_images``...) are top-level body
fields (what the OpenAI SDK's ``extra_body`` produces).
"""

from __future__ import annotations

import time
from typing import Any

from qwenvl.errors import MalformedResponseError
from qwenvl.plan import Call
from qwenvl.protocols.common import StreamAccumulator, error_from_body, load_json, make_response, text_of
from qwenvl.protocols.sse import SSEEvent
from qwenvl.types import ImagePart, Message, Response, StreamEvent, TextPart, VideoPart

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
    msg = choice.get("message") or {}
    return make_response(text=text_of(msg.get("content")), model=data.get("model") or model,
                         usage=data.get("usage"), request_id=data.get("request_id") or request_id or data.get("id"),
                         finish_reason=choice.get("finish_reason"), reasoning=msg.get("reasoning_content") or None,
                         tool_calls=msg.get("tool_calls") or None, protocol=NAME, raw=data)


class StreamParser:
    """Turns compat SSE events (``data: {chunk}`` ... ``data: [DONE]``) into deltas and a response."""

    def __init__(self, model: str, request_id: str | None = None) -> None:
        self.acc = StreamAccumulator(model, NAME)
        self.acc.request_id = request_id
        self.started = time.monotonic()

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
            raise self.acc.error(error_from_body(event.status, chunk, request_id=self.acc.request_id,
                                                    in_stream=True))
        acc = self.acc
        acc.model = chunk.get("model") or acc.model
        acc.request_id = acc.request_id or chunk.get("request_id") or chunk.get("id")
        if chunk.get("usage"):
            acc.usage_raw = chunk["usage"]
        events: list[StreamEvent] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            events += acc.add(text_of(delta.get("content")) or None, delta.get("reasoning_content"))
            for tc in delta.get("tool_calls") or []:
                acc.add_tool_call_delta(tc)
            if choice.get("finish_reason"):
                acc.finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> Response:
        """The assembled response; raises when the stream ended before the answer did."""
        if not self.acc.complete and self.acc.finish_reason is None:
            raise self.acc.interrupted("no [DONE] and no finish_reason")
        self.acc.complete = True
        return self.acc.response()
