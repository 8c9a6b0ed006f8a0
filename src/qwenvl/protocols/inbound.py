"""Both DashScope protocols run in reverse, for a server: wire body -> Request, Response -> wire body,
stream events -> wire chunks, error -> error body. Pure functions, no I/O.

The forward direction (Request -> wire body, wire reply -> Response) lives in ``compat`` and ``native``;
this module is its mirror, so ``qwenvl serve`` speaks exactly what the client side sends and parses.
``CompatServer`` and ``NativeServer`` bundle each protocol's side (``WireProtocol.server``,
``qwenvl.protocols.base.ServerSide``): the server calls them and never asks which protocol it speaks.
Shapes, from the DashScope reference (``dashscope-api.md``) and the seed docs:

- compat request: ``{"model", "messages": [...], "stream"?, "stream_options": {"include_usage"}?,
  "max_tokens"?, "temperature"?, ...DashScope extras at the top level}``; content parts ``text``,
  ``image_url`` (``{"url"}`` or a string, ``min_pixels``/``max_pixels`` beside it), ``video_url``,
  ``video`` (a frame list), ``fps`` beside video parts.
- compat reply: ``chat.completion`` with ``choices[0].message`` (``reasoning_content``, ``tool_calls``)
  and usage ``prompt_tokens``/``completion_tokens``/``total_tokens`` plus optional
  ``prompt_tokens_details.{image_tokens,video_tokens}`` and ``completion_tokens_details.reasoning_tokens``.
  Stream: ``chat.completion.chunk`` deltas, a usage chunk with ``choices: []`` when
  ``stream_options.include_usage``, then ``data: [DONE]``.
- native request: ``{"model", "input": {"messages"}, "parameters": {...}}``, content items ``{"text"}``,
  ``{"image", "min_pixels"?, "max_pixels"?}``, ``{"video": url | [frames], "fps"?}``; streaming is the
  ``X-DashScope-SSE: enable`` header; ``incremental_output`` says whether events carry deltas or the
  whole answer so far. Reply: ``output.choices[0].message.content = [{"text"}]``, usage
  ``input_tokens``/``output_tokens``/``image_tokens``/``video_tokens``; ``finish_reason`` is "null" while
  streaming. Errors: ``{"code", "message", "request_id"}`` (native), ``{"error": {...}}`` (compat).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from qwenvl.errors import APIStatusError, QwenVLError, UsageError
from qwenvl.protocols.sse import encode
from qwenvl.types import GENERATION_FIELDS, Message, Request, Response, StreamEvent, Usage, reserved_extra

# Request fields a wire body may set directly (same name on the wire and in Request).
_DIRECT = (*GENERATION_FIELDS, "vl_high_resolution_images")
# Wire-only keys that are about the exchange itself, not passed to the model.
_COMPAT_CONTROL = ("model", "messages", "stream", "stream_options", "n", "user")
_NATIVE_CONTROL = ("result_format", "incremental_output", "stream")


@dataclass
class Inbound:
    """One parsed wire request."""

    request: Request  # messages only (prompt None); generation fields set only when the wire set them
    stream: bool = False
    include_usage: bool = False  # compat: stream_options.include_usage
    incremental_output: bool = False  # native: events carry deltas (True) or the whole text so far
    given: set[str] = field(default_factory=set)  # the generation parameters the wire set


def _invalid(message: str) -> UsageError:
    return UsageError(message)


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(body: Any, path: str = "") -> None:
    """Refuse a wire body holding a lone surrogate (JSON ``"\\udce9"``, or bytes decoded with surrogateescape) in
    any string or key: no UTF-8 can carry it upstream, and it is the caller's to fix (400, not 500). Raises
    UsageError naming the field (``messages[0].content[1].text``) and the code point; the text is not echoed."""
    if isinstance(body, str):
        found = _SURROGATE.search(body)
        if found:
            raise _invalid(
                f"{path or 'the body'} holds a lone surrogate (U+{ord(found.group()):04X}), which is not a "
                "character: send valid Unicode text (UTF-8)"
            )
    elif isinstance(body, dict):
        for key, value in body.items():
            name = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _SURROGATE.search(key):
                check_text(key, f"a key in {path or 'the body'}")
            check_text(value, name)
    elif isinstance(body, list):
        for i, value in enumerate(body):
            check_text(value, f"{path}[{i}]")


def _request(
    model: Any, messages: Any, params: dict[str, Any], *, params_at: str = "", messages_at: str = ""
) -> tuple[Request, set[str]]:
    """The Request of a wire body, with each error naming the wire's field: ``params_at`` and ``messages_at`` are
    where the parameters and messages sit in the body (native: ``parameters.``, ``input.``)."""
    if not isinstance(model, str) or not model.strip():
        raise _invalid("model is required")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty list")
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in params.items():
        if key == "max_completion_tokens":
            key = "max_tokens"
        if key in _DIRECT:
            if value is not None:
                fields[key] = value
        elif reserved_extra(key, Request.model_fields) is not None:  # one of qwenvl's own fields (detail, fps...)
            raise _invalid(f"{params_at}{key} is not a parameter of this API")
        else:
            extra[key] = value  # response_format, repetition_penalty, ... passed through unchanged
    try:
        parsed = []
        for i, m in enumerate(messages):
            try:
                parsed.append(Message.model_validate(_message_in(m)))
            except ValidationError as exc:
                raise _invalid(_wire_errors(exc, f"{messages_at}messages[{i}].")) from None
        request = Request(model=model, messages=parsed, extra=extra, **fields)
    except ValidationError as exc:
        raise _invalid(_wire_errors(exc, params_at)) from None
    return request, set(fields) | set(extra)


def _wire_errors(exc: ValidationError, at: str) -> str:
    """pydantic's errors as one line naming the wire's fields (``parameters.top_k: ...``; the first 6)."""
    lines = []
    for err in exc.errors()[:6]:
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "union"))]
        name = at + ".".join(loc) if loc else at.rstrip(".")
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {msg}" if name else msg)
    return "; ".join(lines)


def _message_in(m: Any) -> Any:
    """A wire message as our Message takes it: drop wire-only keys, keep the parts (coerced by Message)."""
    if not isinstance(m, dict):
        raise _invalid("each message must be an object")
    out = {k: m[k] for k in ("role", "content", "tool_calls", "tool_call_id", "name") if k in m}
    content = out.get("content")
    if content is None:
        out["content"] = ""
    elif isinstance(content, list):
        out["content"] = [_part_in(p) for p in content]
    return out


def _part_in(p: Any) -> Any:
    if isinstance(p, dict) and p.get("type") == "image_url" and isinstance(p.get("image_url"), str):
        return {**p, "image_url": {"url": p["image_url"]}}
    if isinstance(p, dict) and p.get("type") == "video_url":
        out = {
            "type": "video",
            "video": (p.get("video_url") or {}).get("url")
            if isinstance(p.get("video_url"), dict)
            else p.get("video_url"),
        }
        for key in ("fps", "min_pixels", "max_pixels"):
            if key in p:
                out[key] = p[key]
        return out
    return p


def parse_compat_body(body: Any) -> Inbound:
    """An OpenAI-compatible chat-completions body -> Inbound. Raises UsageError on a malformed body."""
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object")
    check_text(body)
    if body.get("n") not in (None, 1):
        raise _invalid("n must be 1")
    params = {k: v for k, v in body.items() if k not in _COMPAT_CONTROL}
    request, given = _request(body.get("model"), body.get("messages"), params)
    options = body.get("stream_options") or {}
    stream = bool(body.get("stream"))
    return Inbound(
        request=request,
        stream=stream,
        given=given,
        include_usage=stream and isinstance(options, dict) and bool(options.get("include_usage")),
    )


def parse_native_body(body: Any, *, sse: bool = False) -> Inbound:
    """A native generation body (and whether ``X-DashScope-SSE: enable`` was sent) -> Inbound."""
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object")
    check_text(body)
    inp = body.get("input")
    if not isinstance(inp, dict):
        raise _invalid('input is required: {"messages": [...]}')
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _invalid("parameters must be an object")
    params = {k: v for k, v in parameters.items() if k not in _NATIVE_CONTROL}
    request, given = _request(
        body.get("model"), inp.get("messages"), params, params_at="parameters.", messages_at="input."
    )
    stream = sse or bool(parameters.get("stream"))
    return Inbound(
        request=request, stream=stream, given=given, incremental_output=bool(parameters.get("incremental_output"))
    )


# --- Response -> wire -------------------------------------------------------------------------------


def _total(usage: Usage) -> int:
    if usage.total_tokens is not None:
        return usage.total_tokens
    return (usage.input_tokens or 0) + (usage.output_tokens or 0)


def compat_usage(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens or 0,
        "completion_tokens": usage.output_tokens or 0,
        "total_tokens": _total(usage),
    }
    details = {
        k: v for k, v in (("image_tokens", usage.image_tokens), ("video_tokens", usage.video_tokens)) if v is not None
    }
    if details:
        out["prompt_tokens_details"] = details
    if usage.reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def native_usage(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_tokens": usage.input_tokens or 0,
        "output_tokens": usage.output_tokens or 0,
        "total_tokens": _total(usage),
    }
    for key in ("image_tokens", "video_tokens"):
        if getattr(usage, key) is not None:
            out[key] = getattr(usage, key)
    if usage.reasoning_tokens is not None:
        out["output_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def _compat_message(response: Response) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": response.text}
    if response.reasoning:
        msg["reasoning_content"] = response.reasoning
    if response.tool_calls:
        msg["tool_calls"] = response.tool_calls
        msg["content"] = response.text or None
    return msg


def compat_response(response: Response, *, completion_id: str, created: int, model: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": _compat_message(response),
                "finish_reason": response.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": compat_usage(response.usage),
        "system_fingerprint": None,
    }


def compat_chunk(
    *,
    completion_id: str,
    created: int,
    model: str,
    text: str | None = None,
    reasoning: str | None = None,
    role: bool = False,
    finish_reason: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
        delta["content"] = ""
    if text:
        delta["content"] = text
    if reasoning:
        delta["reasoning_content"] = reasoning
    if tool_calls:
        delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(tool_calls)]
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def compat_usage_chunk(usage: Usage, *, completion_id: str, created: int, model: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": compat_usage(usage),
    }


def native_response(
    response: Response,
    *,
    request_id: str,
    text: str | None = None,
    reasoning: str | None = None,
    finish_reason: str | None = "stop",
    usage: Usage | None = None,
) -> dict[str, Any]:
    """The native reply; ``text``/``reasoning`` override the response's (stream events), ``finish_reason``
    None becomes the string "null" as the service sends while streaming."""
    msg: dict[str, Any] = {"role": "assistant", "content": [{"text": response.text if text is None else text}]}
    thought = response.reasoning if reasoning is None else reasoning
    if thought:
        msg["reasoning_content"] = thought
    if response.tool_calls and finish_reason not in (None, "null"):
        msg["tool_calls"] = response.tool_calls
    return {
        "output": {"choices": [{"finish_reason": finish_reason or "null", "message": msg}]},
        "usage": native_usage(usage or response.usage),
        "request_id": request_id,
    }


def native_event(*, request_id: str, text: str, reasoning: str = "", usage: Usage | None = None) -> dict[str, Any]:
    """One native stream event before the last: finish_reason "null"."""
    msg: dict[str, Any] = {"role": "assistant", "content": [{"text": text}] if text or not reasoning else []}
    if reasoning:
        msg["reasoning_content"] = reasoning
    return {
        "output": {"choices": [{"finish_reason": "null", "message": msg}]},
        "usage": native_usage(usage or Usage()),
        "request_id": request_id,
    }


# --- errors -> wire ---------------------------------------------------------------------------------

# (status, native code, compat code, compat type) for each kind of failure.
_KINDS: dict[str, tuple[int, str, str, str]] = {
    "invalid": (400, "InvalidParameter", "invalid_parameter_error", "invalid_request_error"),
    "auth": (401, "InvalidApiKey", "invalid_api_key", "invalid_request_error"),
    "forbidden": (403, "AccessDenied", "access_denied", "invalid_request_error"),
    "not_found": (404, "ModelNotFound", "model_not_found", "invalid_request_error"),
    "too_large": (413, "RequestTooLarge", "request_too_large", "invalid_request_error"),
    "invalid_output": (422, "InvalidModelOutput", "invalid_model_output", "invalid_request_error"),
    "throttled": (429, "Throttling.RateQuota", "limit_requests", "requests"),
    "internal": (500, "InternalError", "internal_error", "internal_error"),
    "upstream": (502, "InternalError.Upstream", "upstream_error", "internal_error"),
    "unavailable": (503, "ServiceUnavailable", "service_unavailable", "internal_error"),
    # a request cut by the shutdown of the server in front (qwenvl serve)
    "shutting_down": (503, "ServiceUnavailable.ShuttingDown", "server_shutting_down", "internal_error"),
    "timeout": (504, "RequestTimeOut", "request_timeout", "internal_error"),
}


def error_kind(exc: BaseException) -> tuple[int, str | None]:
    """(HTTP status, the service's own code when it sent one) for an exception raised while answering."""
    from qwenvl.errors import APIConnectionError, APITimeoutError, MalformedResponseError, StructuredOutputError

    if isinstance(exc, StructuredOutputError):  # the model's answer does not fit the schema asked for
        return 422, None
    if isinstance(exc, APIStatusError):
        return exc.status, exc.code
    if isinstance(exc, APITimeoutError):
        return 504, None
    if isinstance(exc, APIConnectionError | MalformedResponseError):
        return 502, None
    if isinstance(exc, QwenVLError):
        return (400 if exc.exit_code in (2, 3) else 401 if exc.exit_code == 4 else 500), None
    return 500, None


def _kind(status: int) -> tuple[int, str, str, str]:
    for value in _KINDS.values():
        if value[0] == status:
            return value
    return (status, *(_KINDS["invalid"][1:] if 400 <= status < 500 else _KINDS["internal"][1:]))


# a kind's code in either protocol's spelling (lower case) -> the kind
_BY_CODE = {spelling.lower(): kind for kind in _KINDS.values() for spelling in kind[1:3]}


def _wire_code(code: str | None, status: int, column: int) -> str:
    """The code a body of one protocol carries (``column`` 1 native, 2 compat): a code of the other protocol's
    spelling for a known kind is given in this one's (an upstream's ``internal_error`` is ``InternalError`` to a
    native caller); a code that is only a number (vLLM's ``"code": 400``) or none is the status's own."""
    if code and not code.strip().isdigit():
        kind = _BY_CODE.get(code.lower())
        return str(kind[column]) if kind is not None else code
    return str(_kind(status)[column])


def compat_error(status: int, message: str, *, request_id: str, code: str | None = None) -> dict[str, Any]:
    wire_type = _kind(status)[3]
    return {
        "error": {"code": _wire_code(code, status, 2), "param": None, "message": message, "type": wire_type},
        "request_id": request_id,
    }


def native_error(status: int, message: str, *, request_id: str, code: str | None = None) -> dict[str, Any]:
    return {"code": _wire_code(code, status, 1), "message": message, "request_id": request_id}


# --- the server side of each protocol (``WireProtocol.server``) ------------------------------------------


@dataclass
class StreamState:
    """One answer being streamed back: ids, the event count (native ``id:``) and what was sent so far."""

    parsed: Inbound
    request_id: str
    created: int = field(default_factory=lambda: int(time.time()))
    n: int = 0  # events received from the backend (the ``done`` one included)
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.request_id}"

    @property
    def model(self) -> str:
        return self.parsed.request.model

    def note(self, event: StreamEvent) -> None:
        """Count one backend event and keep its delta."""
        self.n += 1
        if event.type == "text":
            self.text.append(event.text)
        elif event.type == "reasoning":
            self.reasoning.append(event.text)


class CompatServer:
    """The OpenAI-compatible side of ``qwenvl serve`` (``chat.completion`` bodies, ``data:`` chunks, ``[DONE]``)."""

    name = "compat"

    def parse_body(self, body: Any, headers: Mapping[str, str]) -> Inbound:
        return parse_compat_body(body)

    def response_body(self, parsed: Inbound, response: Response, request_id: str) -> dict[str, Any]:
        return compat_response(
            response, completion_id=f"chatcmpl-{request_id}", created=int(time.time()), model=parsed.request.model
        )

    def error_body(self, status: int, message: str, *, request_id: str, code: str | None = None) -> dict[str, Any]:
        return compat_error(status, message, request_id=request_id, code=code)

    def stream_open(self, state: StreamState) -> list[bytes]:
        return [
            encode(compat_chunk(completion_id=state.completion_id, created=state.created, model=state.model, role=True))
        ]

    def stream_delta(self, state: StreamState, event: StreamEvent) -> list[bytes]:
        chunk = compat_chunk(
            completion_id=state.completion_id,
            created=state.created,
            model=state.model,
            text=event.text if event.type == "text" else None,
            reasoning=event.text if event.type == "reasoning" else None,
        )
        return [encode(chunk)]

    def stream_done(self, state: StreamState, response: Response) -> list[bytes]:
        cid, created, model = state.completion_id, state.created, state.model
        last = compat_chunk(
            completion_id=cid,
            created=created,
            model=model,
            finish_reason=response.finish_reason or "stop",
            tool_calls=response.tool_calls,
        )
        out = [encode(last)]
        if state.parsed.include_usage:
            out.append(encode(compat_usage_chunk(response.usage, completion_id=cid, created=created, model=model)))
        out.append(encode("[DONE]"))
        return out

    def stream_error(self, state: StreamState, status: int, body: dict[str, Any]) -> list[bytes]:
        return [encode(body)]


class NativeServer:
    """The DashScope-native side of ``qwenvl serve`` (``output.choices``, ``event:result`` events with ids)."""

    name = "native"

    def parse_body(self, body: Any, headers: Mapping[str, str]) -> Inbound:
        return parse_native_body(body, sse=headers.get("x-dashscope-sse", "").lower() == "enable")

    def response_body(self, parsed: Inbound, response: Response, request_id: str) -> dict[str, Any]:
        return native_response(response, request_id=request_id, finish_reason=response.finish_reason or "stop")

    def error_body(self, status: int, message: str, *, request_id: str, code: str | None = None) -> dict[str, Any]:
        return native_error(status, message, request_id=request_id, code=code)

    def stream_open(self, state: StreamState) -> list[bytes]:
        return []

    def stream_delta(self, state: StreamState, event: StreamEvent) -> list[bytes]:
        if state.parsed.incremental_output:  # each event carries its delta
            text = event.text if event.type == "text" else ""
            reasoning = event.text if event.type == "reasoning" else ""
        else:  # each event carries the whole answer so far
            text, reasoning = "".join(state.text), "".join(state.reasoning)
        body = native_event(request_id=state.request_id, text=text, reasoning=reasoning)
        return [encode(body, event_id=state.n, event="result", status=200)]

    def stream_done(self, state: StreamState, response: Response) -> list[bytes]:
        final = native_response(
            response,
            request_id=state.request_id,  # the request's one id, not the upstream's (every event carries it)
            text="" if state.parsed.incremental_output else None,
            reasoning="" if state.parsed.incremental_output else None,
            finish_reason=response.finish_reason or "stop",
        )
        return [encode(final, event_id=state.n, event="result", status=200)]

    def stream_error(self, state: StreamState, status: int, body: dict[str, Any]) -> list[bytes]:
        return [encode(body, event_id=state.n + 1, event="error", status=status)]
