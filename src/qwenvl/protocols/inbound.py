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

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from qwenvl.errors import APIStatusError, QwenVLError, UsageError
from qwenvl.protocols.common import HINT_FIELD
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
        raise _invalid("model is required: the name of the model to answer")
    if not isinstance(messages, list) or not messages:
        raise _invalid(f"{messages_at}messages must be a non-empty list of messages")
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
    native = messages_at == "input."
    parsed = []
    for i, m in enumerate(messages):
        at = f"{messages_at}messages[{i}]"
        try:
            parsed.append(Message.model_validate(_message_in(m, at, native=native)))
        except ValidationError as exc:
            raise _invalid(wire_errors(exc, f"{at}.")) from None
    try:
        request = Request(model=model, messages=parsed, extra=extra, **fields)
    except ValidationError as exc:
        raise _invalid(wire_errors(exc, params_at)) from None
    return request, set(fields) | set(extra)


# pydantic's error types that say "the value is of the wrong type" -> what the field takes, in JSON's words
TAKES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def json_type(value: Any) -> str:
    """What ``value`` is in JSON's words ("a string", "a number", "true", "null"...). Raises nothing."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list | tuple):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "an object"
    return "of another type"


def _branch(part: Any) -> bool:
    """Whether a pydantic location item names a branch of a union (``str``, ``list[str]``, ``TextPart``,
    ``function-after[...]``), not a field of the wire: the wire's fields and keys are lower case."""
    return isinstance(part, str) and (
        "[" in part or part in ("str", "int", "float", "bool", "dict", "list", "none") or part[:1].isupper()
    )


def wire_errors(exc: ValidationError, at: str) -> str:
    """pydantic's errors as one readable line naming the wire's fields as the API names them
    (``parameters.max_tokens must be an integer, not true``; ``messages[0].content[1].text``), what each takes,
    and nothing of the validator's own (no union branches, no model names). ``at`` is prefixed to each field.
    The errors of one field (a union's branches) become one ("stop must be a string or a list, not a number");
    the first three fields are named. Raises nothing."""
    errors = exc.errors()
    # a union of models (a content part): only the branch that came nearest (the fewest errors) is told
    count: dict[tuple[Any, ...], dict[str, int]] = {}
    for err in errors:
        for i, p in enumerate(err["loc"]):
            if isinstance(p, str) and p[:1].isupper():
                branches = count.setdefault(tuple(err["loc"][:i]), {})
                branches[p] = branches.get(p, 0) + 1
                break

    def nearest(err: Any) -> bool:
        for i, p in enumerate(err["loc"]):
            if isinstance(p, str) and p[:1].isupper():
                branches = count[tuple(err["loc"][:i])]
                return p == min(branches, key=lambda b: branches[b])
        return True

    grouped: dict[str, list[Any]] = {}
    for err in filter(nearest, errors):
        name = at.rstrip(".")
        for p in (p for p in err["loc"] if not _branch(p)):
            name = f"{name}[{p}]" if isinstance(p, int) else f"{name}.{p}" if name else str(p)
        grouped.setdefault(name, []).append(err)
    for name in [n for n, errs in grouped.items() if all(e["type"] in TAKES for e in errs)]:
        if any(other.startswith((f"{name}.", f"{name}[")) for other in grouped):
            del grouped[name]  # a union's branch for another type than the value's: the deeper errors say more
    lines = []
    for name, errs in list(grouped.items())[:3]:
        takes = [TAKES[e["type"]] for e in errs if e["type"] in TAKES]
        if takes and len(takes) == len(errs):
            alternatives = " or ".join(dict.fromkeys(takes))
            lines.append(f"{name or 'the value'} must be {alternatives}, not {json_type(errs[0].get('input'))}")
            continue
        err = next((e for e in errs if e["type"] not in TAKES), errs[0])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            lines.append(f"{name} is required")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{name} is not a field this API takes here")
        elif msg.startswith("Input should "):
            lines.append(f"{name or 'the value'} should {msg.removeprefix('Input should ')}")
        else:
            lines.append(f"{name}: {msg}" if name else msg)
    more = len(grouped) - len(lines)
    return "; ".join(lines) + (f" (and {more} more)" if more > 0 else "")


_ROLES = ("system", "user", "assistant", "tool")
# a content part's kinds: by ``type`` (the OpenAI-compatible spelling; native items too) or by its one key (native)
_PART_TYPES = ("text", "image_url", "video_url", "image", "video")
_PART_KEYS = {  # the keys each kind of part takes (media: the pixel bounds beside it, fps beside a video)
    "text": ("type", "text"),
    "image_url": ("type", "image_url", "min_pixels", "max_pixels"),
    "image": ("type", "image", "min_pixels", "max_pixels"),
    "video_url": ("type", "video_url", "fps", "min_pixels", "max_pixels"),
    "video": ("type", "video", "fps", "min_pixels", "max_pixels"),
}


def _message_in(m: Any, at: str, *, native: bool = False) -> Any:
    """A wire message as our Message takes it: checked in the wire's terms first (each error names the field as
    the API does, ``at`` being the message's own name, ``messages[0]``), then wire-only keys dropped. A message
    with no usable content (none, null, "", [] or only blank text) is refused, but for an assistant turn that
    carries tool calls. Raises UsageError."""
    if not isinstance(m, dict):
        raise _invalid(f"{at} must be an object with a role and content, not {json_type(m)}")
    role = m.get("role")
    if role is None:
        raise _invalid(f"{at}.role is required: one of {', '.join(_ROLES)}")
    if role not in _ROLES:
        shown = json.dumps(role, ensure_ascii=False)[:40] if isinstance(role, str) else json_type(role)
        raise _invalid(f"{at}.role must be one of {', '.join(_ROLES)}, not {shown}")
    out = {k: m[k] for k in ("role", "content", "tool_calls", "tool_call_id", "name") if k in m}
    content = m.get("content")
    calls = role == "assistant" and bool(m.get("tool_calls"))  # a turn that only calls tools needs no content
    where = f"{at}.content"
    takes = "text, or a list of text, image and video parts"
    if content is None:
        if not calls:
            raise _invalid(f"{where} is required: {takes}" + (" (it is null)" if "content" in m else ""))
        out["content"] = ""
        return out
    if isinstance(content, str):
        if not content.strip() and not calls and role != "tool":
            raise _invalid(f"{where} is empty: give {takes}")
        return out
    if not isinstance(content, list):
        raise _invalid(f"{where} must be {takes}, not {json_type(content)}")
    parts = [_part_in(p, f"{where}[{j}]", native=native) for j, p in enumerate(content)]
    usable = any(p.get("type") != "text" or p.get("text", "").strip() for p in parts)
    if not usable and not calls:
        raise _invalid(f"{where} is empty: give {takes}")
    out["content"] = parts
    return out


def _url_of(value: Any) -> Any:
    return value.get("url") if isinstance(value, dict) else value


def _part_in(p: Any, at: str, *, native: bool = False) -> dict[str, Any]:
    """One content part in the Message's terms (``{"type": "image", "image": ...}``), checked in the wire's: its
    kind (``type``, or a native item's key), the reference a string (a frame list for ``video``), the pixel
    bounds integers and ``fps`` a number. Raises UsageError naming the part (``messages[0].content[1]``)."""
    example = '{"text": "..."}' if native else '{"type": "text", "text": "..."}'
    if not isinstance(p, dict):
        raise _invalid(f"{at} must be an object such as {example}, not {json_type(p)}")
    kind = p.get("type")
    if kind is None:
        kind = next((k for k in ("text", "image", "video") if k in p), None)
        if kind is None:
            keys = "text, image or video" if native else "type (text, image_url, video_url or video)"
            raise _invalid(f"{at} has no {keys}: a part is an object such as {example}")
    elif kind not in _PART_TYPES:
        shown = json.dumps(kind, ensure_ascii=False)[:40] if isinstance(kind, str) else json_type(kind)
        raise _invalid(f"{at}.type must be one of {', '.join(_PART_TYPES)}, not {shown}")
    if kind == "text":
        if not isinstance(p.get("text"), str):
            raise _invalid(f"{at}.text must be a string, not {json_type(p.get('text'))}")
    elif kind in ("image_url", "video_url"):
        url = _url_of(p.get(kind))
        if not isinstance(url, str) or not url.strip():
            what = "an image" if kind == "image_url" else "a video"
            raise _invalid(f"{at}.{kind}.url is required: the URL or data: URL of {what}, not {json_type(url)}")
    elif kind == "image":
        if not isinstance(p.get("image"), str) or not p["image"].strip():
            raise _invalid(f"{at}.image must be the URL or data: URL of an image, not {json_type(p.get('image'))}")
    else:  # video: a URL, or a list of frame URLs
        video = p.get("video")
        if isinstance(video, list):
            for j, frame in enumerate(video):
                if not isinstance(frame, str) or not frame.strip():
                    raise _invalid(f"{at}.video[{j}] must be the URL or data: URL of a frame, not {json_type(frame)}")
            if not video:
                raise _invalid(f"{at}.video is an empty list: give a video's URL or a list of frame URLs")
        elif not isinstance(video, str) or not video.strip():
            raise _invalid(f"{at}.video must be a video's URL or a list of frame URLs, not {json_type(video)}")
    unknown = [k for k in p if k not in _PART_KEYS[kind]]
    if unknown:
        raise _invalid(f"{at}.{unknown[0]} is not a field of a {kind} part (it takes {', '.join(_PART_KEYS[kind])})")
    for key in ("min_pixels", "max_pixels"):
        value = p.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            shown = json_type(value) if not isinstance(value, int) or isinstance(value, bool) else str(value)
            raise _invalid(f"{at}.{key} must be a positive integer (pixels), not {shown}")
    fps = p.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < math.inf):
        shown = json_type(fps) if not isinstance(fps, int | float) or isinstance(fps, bool) else f"{fps:g}"
        raise _invalid(f"{at}.fps must be a number above 0 (frames per second), not {shown}")
    if kind == "image_url":
        return {
            "type": "image",
            "image": _url_of(p["image_url"]),
            **{k: p[k] for k in ("min_pixels", "max_pixels") if k in p},
        }
    if kind == "video_url":
        out = {"type": "video", "video": _url_of(p["video_url"])}
        return {**out, **{k: p[k] for k in ("fps", "min_pixels", "max_pixels") if k in p}}
    return {"type": kind, **{k: v for k, v in p.items() if k != "type"}}


# Every boolean field of each protocol's body (dotted paths): a JSON boolean or null (unset), never "yes" or 1, as
# the OpenAI API and DashScope validate them; the Request's own (enable_thinking, vl_high_resolution_images) too,
# so that each is refused in the same words.
COMPAT_BOOLEANS = (
    "stream",
    "stream_options.include_usage",
    "enable_thinking",
    "vl_high_resolution_images",
    "logprobs",
    "parallel_tool_calls",
    "enable_search",
    "enable_code_interpreter",
    "preserve_thinking",
)
NATIVE_BOOLEANS = tuple(f"parameters.{name}" for name in ("stream", "incremental_output", *COMPAT_BOOLEANS[2:]))


def _check_booleans(body: dict[str, Any], names: tuple[str, ...]) -> None:
    """Refuse a boolean field of ``body`` (``names``: dotted paths) holding anything but true, false or null.
    Raises UsageError naming the field as the API does."""
    for name in names:
        value: Any = body
        for key in name.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and not isinstance(value, bool):
            raise _invalid(f"{name} must be true or false (a JSON boolean), not {json_type(value)}")


def parse_compat_body(body: Any) -> Inbound:
    """An OpenAI-compatible chat-completions body -> Inbound. Raises UsageError on a malformed body."""
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object")
    check_text(body)
    _check_booleans(body, COMPAT_BOOLEANS)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid(f'stream_options must be an object such as {{"include_usage": true}}, not {json_type(options)}')
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        shown = n if isinstance(n, int | float) and not isinstance(n, bool) else json_type(n)
        raise _invalid(f"n must be 1 (one answer per request), not {shown}")
    params = {k: v for k, v in body.items() if k not in _COMPAT_CONTROL}
    request, given = _request(body.get("model"), body.get("messages"), params)
    stream = body.get("stream") is True
    return Inbound(
        request=request,
        stream=stream,
        given=given,
        include_usage=stream and (options or {}).get("include_usage") is True,
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
        raise _invalid(f"parameters must be an object, not {json_type(parameters)}")
    _check_booleans(body, NATIVE_BOOLEANS)
    params = {k: v for k, v in parameters.items() if k not in _NATIVE_CONTROL}
    request, given = _request(
        body.get("model"), inp.get("messages"), params, params_at="parameters.", messages_at="input."
    )
    stream = sse or parameters.get("stream") is True
    return Inbound(
        request=request, stream=stream, given=given, incremental_output=parameters.get("incremental_output") is True
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
    """One native stream event before the last: finish_reason "null". ``usage``: the counts so far, as DashScope's
    events carry them (the prompt's tokens, those generated up to here; reference/dashscope-api.md §2.2); when the
    backend does not know them the event has no ``usage`` (never zeros that would say nothing was read)."""
    msg: dict[str, Any] = {"role": "assistant", "content": [{"text": text}] if text or not reasoning else []}
    if reasoning:
        msg["reasoning_content"] = reasoning
    out: dict[str, Any] = {"output": {"choices": [{"finish_reason": "null", "message": msg}]}}
    if usage is not None and usage.input_tokens is not None:
        out["usage"] = native_usage(usage)
    out["request_id"] = request_id
    return out


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
    # a local model the server could not load (``qwenvl serve --backend transformers``)
    "not_loaded": (503, "ModelNotLoaded", "model_not_loaded", "internal_error"),
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


def compat_error(
    status: int,
    message: str,
    *,
    request_id: str,
    code: str | None = None,
    param: str | None = None,
    hint: str | None = None,
) -> dict[str, Any]:
    """The OpenAI-style error body; ``param`` the request field at fault, as OpenAI's errors name it (None: no
    one field is); ``hint``: the server's advice beside the message (``common.HINT_FIELD``; left out when None)."""
    wire_type = _kind(status)[3]
    error = {"code": _wire_code(code, status, 2), "param": param, "message": message, "type": wire_type}
    return {"error": {**error, **({HINT_FIELD: hint} if hint else {})}, "request_id": request_id}


_NAMED_FIELD = re.compile(
    r"((?:parameters\.|input\.)?[a-z][a-z0-9_]*(?:\[\d+\]|\.[a-z][a-z0-9_]*)*)"
    r"(?=:| (?:must|is|are|holds|has|takes|cannot|needs|and)\b| =|=)"
)


def named_field(exc: BaseException, message: str) -> str | None:
    """The request field a refusal of a request is about, for the compat body's ``param``: an
    UnsupportedParameterError's ``param``, an OptionNotAppliedError's field (``refusal.field``); else the wire field
    a UsageError's message starts with, as this module's refusals do (``max_tokens must be ...``,
    ``messages[0].content[1].text holds ...``, ``model is required``); None otherwise. Raises nothing."""
    from qwenvl.errors import OptionNotAppliedError, UnsupportedParameterError, UsageError

    if isinstance(exc, UnsupportedParameterError):
        return exc.param
    if isinstance(exc, OptionNotAppliedError) and exc.refusal is not None:  # the refusal as data: its field
        return exc.refusal.field
    if not isinstance(exc, UsageError):
        return None
    found = _NAMED_FIELD.match(message.removeprefix("invalid request: "))
    return found[1] if found and found[1] not in ("the", "a", "an", "this", "it") else None


def native_error(
    status: int, message: str, *, request_id: str, code: str | None = None, hint: str | None = None
) -> dict[str, Any]:
    """The native error body; ``hint`` as for ``compat_error``."""
    body = {"code": _wire_code(code, status, 1), "message": message, "request_id": request_id}
    return {**body, **({HINT_FIELD: hint} if hint else {})}


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

    def error_body(
        self,
        status: int,
        message: str,
        *,
        request_id: str,
        code: str | None = None,
        param: str | None = None,
        hint: str | None = None,
    ) -> dict[str, Any]:
        return compat_error(status, message, request_id=request_id, code=code, param=param, hint=hint)

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

    def error_body(
        self,
        status: int,
        message: str,
        *,
        request_id: str,
        code: str | None = None,
        param: str | None = None,
        hint: str | None = None,
    ) -> dict[str, Any]:
        return native_error(status, message, request_id=request_id, code=code, hint=hint)  # no param in native

    def stream_open(self, state: StreamState) -> list[bytes]:
        return []

    def stream_delta(self, state: StreamState, event: StreamEvent) -> list[bytes]:
        if state.parsed.incremental_output:  # each event carries its delta
            text = event.text if event.type == "text" else ""
            reasoning = event.text if event.type == "reasoning" else ""
        else:  # each event carries the whole answer so far
            text, reasoning = "".join(state.text), "".join(state.reasoning)
        body = native_event(request_id=state.request_id, text=text, reasoning=reasoning, usage=event.usage)
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
