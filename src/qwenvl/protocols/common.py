"""What both wire protocols share: error bodies, service error codes, usage fields, stream accumulation."""

from __future__ import annotations

import json
from typing import Any

from qwenvl.errors import APIStatusError, MalformedResponseError, StreamInterruptedError, status_error
from qwenvl.types import Message, Response, StreamEvent, Usage

# Service error codes (both protocols' spellings) that arrive without an HTTP status, e.g. inside a stream.
_CODE_STATUS = (
    (("invalidapikey", "invalid_api_key", "unauthorized"), 401),
    (("accessdenied", "access_denied", "permission", "forbidden"), 403),
    (("throttling", "rate_limit", "ratelimit", "limit_requests", "quota"), 429),
    (("invalidparameter", "invalid_parameter", "invalid_request", "datainspection", "data_inspection",
      "badrequest", "invalid_value", "model_not_found", "modelnotfound"), 400),
)


def status_for_code(code: str | None, default: int = 500) -> int:
    low = (code or "").lower().replace(".", "_")
    for needles, status in _CODE_STATUS:
        if any(n in low for n in needles):
            return status
    return default


def parse_error_body(body: bytes | str | dict[str, Any] | None) -> tuple[str | None, str, str | None, Any]:
    """(code, message, request_id, parsed body) from either protocol's error envelope, or raw text.

    compat: ``{"error": {"code", "message", "type"}, "request_id"}``;
    native: ``{"code", "message", "request_id"}``.
    """
    parsed: Any = body
    if isinstance(body, bytes | str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            snippet = " ".join(text.split())[:300]
            return None, snippet or "(empty body)", None, text
    if not isinstance(parsed, dict):
        return None, str(parsed)[:300], None, parsed
    request_id = parsed.get("request_id") or parsed.get("id")
    err = parsed.get("error")
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        message = err.get("message") or "unknown error"
    else:
        code = parsed.get("code")
        message = parsed.get("message") or parsed.get("msg") or (err if isinstance(err, str) else None)
        message = message or "unknown error"
    return (str(code) if code else None), str(message), request_id, parsed


def error_from_body(status: int | None, body: Any, *, retry_after: float | None = None,
                    request_id: str | None = None, in_stream: bool = False) -> APIStatusError:
    """The typed error for an error body. Inside a stream the HTTP status was already 200 and an event's
    own status is often a generic 500, so a recognised service code decides the type there."""
    code, message, rid, parsed = parse_error_body(body)
    if in_stream or not status:
        status = status_for_code(code, default=status or 500)
    return status_error(status, message, code=code, request_id=rid or request_id, body=parsed,
                        retry_after=retry_after)


def load_json(data: str | bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        snippet = " ".join(text.split())[:200]
        raise MalformedResponseError(f"{what} is not JSON: {snippet!r}") from None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_from(raw: dict[str, Any] | None) -> Usage:
    """Normalize either protocol's usage (compat prompt/completion_tokens, native input/output_tokens)."""
    raw = raw if isinstance(raw, dict) else {}
    inp = _int(raw.get("prompt_tokens", raw.get("input_tokens")))
    out = _int(raw.get("completion_tokens", raw.get("output_tokens")))
    total = _int(raw.get("total_tokens"))
    if total is None and inp is not None and out is not None:
        total = inp + out
    in_details = raw.get("prompt_tokens_details") or raw.get("input_tokens_details") or {}
    out_details = raw.get("completion_tokens_details") or raw.get("output_tokens_details") or {}
    image = _int(raw.get("image_tokens")) or _int(in_details.get("image_tokens"))
    video = _int(raw.get("video_tokens")) or _int(in_details.get("video_tokens"))
    return Usage(input_tokens=inp, output_tokens=out, total_tokens=total, image_tokens=image,
                 video_tokens=video, reasoning_tokens=_int(out_details.get("reasoning_tokens")), raw=raw)


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of text items in either protocol's form."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for item in content:
            if isinstance(item, dict) and isinstance(item.get("text"), str) and item.get("type", "text") == "text":
                out.append(item["text"])
            elif isinstance(item, str):
                out.append(item)
        return "".join(out)
    return json.dumps(content, ensure_ascii=False)


def make_response(*, text: str, model: str, usage: dict[str, Any] | None, request_id: str | None,
                  finish_reason: str | None, reasoning: str | None, tool_calls: list | None, protocol: str,
                  raw: dict[str, Any] | None = None) -> Response:
    """A Response whose history holds the assistant's answer (the client prepends the conversation)."""
    return Response(text=text, model=model, usage=usage_from(usage), request_id=request_id,
                    finish_reason=finish_reason, reasoning=reasoning, tool_calls=tool_calls, protocol=protocol,
                    raw=raw, messages=[Message(role="assistant", content=text, reasoning=reasoning,
                                               tool_calls=tool_calls)])


class StreamAccumulator:
    """Collects deltas of one streamed answer; both protocols' parsers feed it."""

    def __init__(self, model: str, protocol: str) -> None:
        self.model = model
        self.protocol = protocol
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage_raw: dict[str, Any] | None = None
        self.request_id: str | None = None
        self.complete = False

    def add(self, text: str | None, reasoning: str | None) -> list[StreamEvent]:
        events = []
        if reasoning:
            self.reasoning.append(reasoning)
            events.append(StreamEvent(type="reasoning", text=reasoning))
        if text:
            self.text.append(text)
            events.append(StreamEvent(type="text", text=text))
        return events

    def add_tool_call_delta(self, delta: dict[str, Any]) -> None:
        index = delta.get("index", len(self.tool_calls))
        call = self.tool_calls.setdefault(index, {"id": None, "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        fn = delta.get("function") or {}
        if fn.get("name"):
            call["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            call["function"]["arguments"] += fn["arguments"]

    def error(self, exc: APIStatusError) -> Exception:
        """An error event: typed when nothing arrived yet, else an interruption that keeps the text."""
        if not self.text and not self.reasoning:
            return exc
        return StreamInterruptedError(f"the stream ended with an error: {exc}", partial_text="".join(self.text),
                                      partial_reasoning="".join(self.reasoning),
                                      request_id=exc.request_id or self.request_id, code=exc.code)

    def interrupted(self, why: str) -> StreamInterruptedError:
        got = len("".join(self.text))
        return StreamInterruptedError(f"the stream broke before the answer was complete ({why}; "
                                      f"{got} characters received)", partial_text="".join(self.text),
                                      partial_reasoning="".join(self.reasoning), request_id=self.request_id)

    def response(self) -> Response:
        return make_response(text="".join(self.text), model=self.model, usage=self.usage_raw,
                             request_id=self.request_id, finish_reason=self.finish_reason,
                             reasoning="".join(self.reasoning) or None,
                             tool_calls=[self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
                             protocol=self.protocol)
