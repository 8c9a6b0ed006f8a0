"""What both wire protocols share: error bodies, service error codes, usage fields, stream accumulation."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from qwenvl.errors import (
    APIConnectionError,
    APIStatusError,
    MalformedResponseError,
    StreamInterruptedError,
    printable,
    status_error,
)
from qwenvl.protocols.sse import SSEDecoder, carries_data
from qwenvl.types import Message, Response, StreamEvent, Usage

if TYPE_CHECKING:
    from qwenvl.protocols.base import StreamParser

HTML_PAGE = "(an HTML page from a proxy, not the service)"
PROXY_HINT = (
    "Something between you and the service answered (a proxy, gateway or firewall): check --base-url and "
    "any HTTPS_PROXY setting, or retry later."
)

# Service error codes (both protocols' spellings) that arrive without an HTTP status, e.g. inside a stream.
_CODE_STATUS = (
    (("invalidapikey", "invalid_api_key", "unauthorized"), 401),
    (("accessdenied", "access_denied", "permission", "forbidden"), 403),
    (("throttling", "rate_limit", "ratelimit", "limit_requests", "quota"), 429),
    (
        (
            "invalidparameter",
            "invalid_parameter",
            "invalid_request",
            "datainspection",
            "data_inspection",
            "badrequest",
            "invalid_value",
            "model_not_found",
            "modelnotfound",
        ),
        400,
    ),
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
        except RecursionError:
            return None, "(an error body nested too deeply to read)", None, None
        except json.JSONDecodeError:
            if looks_like_html(text):
                return None, HTML_PAGE, None, text
            snippet = printable(text)[:300]
            return None, snippet or "(empty body)", None, text
    if not isinstance(parsed, dict):
        return None, printable(str(parsed))[:300], None, parsed
    request_id = parsed.get("request_id") or parsed.get("id")
    err = parsed.get("error")
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        message = err.get("message") or "unknown error"
    else:
        code = parsed.get("code")
        message = parsed.get("message") or parsed.get("msg") or (err if isinstance(err, str) else None)
        message = message or "unknown error"
    code = printable(str(code))[:100] if code else None
    request_id = printable(str(request_id))[:100] if request_id else None
    return code, printable(str(message)), request_id, parsed


# ``qwenvl serve``'s advice for a refusal, beside the message in either protocol's error body (compat: in ``error``;
# native: at the top), in the words of the caller's requests (e.g. "Lower max_tokens (4,096) to at most about
# 3,951"); the message also ends with it in parentheses, for clients that read only the message. DashScope sends none.
HINT_FIELD = "hint"


def error_hint(parsed: Any, message: str) -> tuple[str | None, str]:
    """(the server's advice, the message without it) from a parsed error body (``HINT_FIELD``): the advice when the
    body carries one as text, and the message with its `` (advice)`` ending cut (the hint line says it); (None,
    ``message``) otherwise. Raises nothing."""
    err = parsed.get("error") if isinstance(parsed, dict) else None
    where = err if isinstance(err, dict) else parsed
    hint = where.get(HINT_FIELD) if isinstance(where, dict) else None
    if not isinstance(hint, str) or not hint.strip():
        return None, message
    hint = printable(hint.strip())
    return hint, message.removesuffix(f" ({hint})")


def error_from_body(
    status: int | None,
    body: Any,
    *,
    retry_after: float | None = None,
    request_id: str | None = None,
    in_stream: bool = False,
) -> APIStatusError:
    """The typed error for an error body. Inside a stream the HTTP status was already 200 and an event's
    own status is often a generic 500, so a recognised service code decides the type there."""
    code, message, rid, parsed = parse_error_body(body)
    if in_stream or not status:
        status = status_for_code(code, default=status or 500)
    if message == HTML_PAGE:  # "HTTP 502 Bad Gateway (an HTML page from a proxy, not the service)"
        phrase = _phrase(status)
        return status_error(
            status,
            f"{phrase} {message}".strip(),
            request_id=request_id,
            body=parsed,
            retry_after=retry_after,
            hint=PROXY_HINT,
            plain=True,
        )
    missing = model_not_found(code, message)
    advice, message = error_hint(parsed, message)  # a qwenvl serve's own advice: the hint line says it
    return status_error(
        status,
        message,
        code=code,
        request_id=rid or request_id,
        body=parsed,
        retry_after=retry_after,
        hint=advice or (MODEL_NOT_FOUND_HINT if missing else None),
        model_not_found=missing,
    )


# The service's (and ``qwenvl serve``'s) code for a model name it does not serve: 404 model_not_found (compat),
# ModelNotFound (native); DashScope also answers 400 with such a code.
MODEL_NOT_FOUND_HINT = "Check the model name (--model): `qwenvl models` lists the models qwenvl knows."


# The native protocol's words for it under the generic code InvalidParameter (reference/dashscope-api.md §2.4;
# "Model not exist."), and the compat message's ("The model `x` does not exist or you do not have access to it.").
_MODEL_MISSING = re.compile(r"\bmodel not exists?\b|\bmodel `[^`]*` does not exist\b", re.I)


def model_not_found(code: str | None, message: str | None = None) -> bool:
    """Whether an error's code or message says the model does not exist (or the key has no access to it):
    ``model_not_found`` / ``ModelNotFound`` in the code, or the service's sentence for it in the message (native
    ``InvalidParameter`` "Model not exist."). Raises nothing."""
    low = (code or "").lower().replace(".", "_")
    return "model_not_found" in low or "modelnotfound" in low or bool(_MODEL_MISSING.search(message or ""))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def looks_like_html(text: str) -> bool:
    head = text.lstrip()[:200].lower()
    return head.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in head


def load_json(data: str | bytes, what: str) -> Any:
    """Parse a reply; MalformedResponseError (never a RecursionError or a decode error) when it cannot be."""
    try:
        return json.loads(data)
    except RecursionError:
        raise MalformedResponseError(f"{what} is JSON nested too deeply to read") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        raise unreadable(text, what) from None


def unreadable(text: str, what: str) -> MalformedResponseError:
    """The error for a reply that is not JSON (nor, for a stream, an event stream): the same words whether the
    request streamed or not."""
    if looks_like_html(text):
        return MalformedResponseError(
            f"{what} is an HTML page, not JSON (from a proxy or a login page, not the service)"
        )
    return MalformedResponseError(f"{what} is not JSON: {printable(text)[:200]!r}")


def read_whole(content_type: str) -> bool:
    """Whether a streaming request's 2xx reply is read whole, like a non-streaming one, instead of as events:
    JSON (an error, or a server that does not stream) and HTML (a proxy's or a login page). Every backend's
    stream asks here, so both say the same as a non-streaming request about the same reply."""
    kind = content_type.lower()
    return "json" in kind or "html" in kind


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
    in_details = raw.get("prompt_tokens_details") or raw.get("input_tokens_details")
    out_details = raw.get("completion_tokens_details") or raw.get("output_tokens_details")
    in_details = in_details if isinstance(in_details, dict) else {}
    out_details = out_details if isinstance(out_details, dict) else {}
    image = _int(raw.get("image_tokens")) or _int(in_details.get("image_tokens"))
    video = _int(raw.get("video_tokens")) or _int(in_details.get("video_tokens"))
    return Usage(
        input_tokens=inp,
        output_tokens=out,
        total_tokens=total,
        image_tokens=image,
        video_tokens=video,
        reasoning_tokens=_int(out_details.get("reasoning_tokens")),
        raw=raw,
    )


def split_content(content: Any) -> tuple[str, list[dict[str, Any]]]:
    """(text, other items) of a message's content: a string, or a list of items in either protocol's form.

    Text items (``{"text"}``, ``{"type": "text", "text"}``) and native grounding items
    (``{"box": "<ref>shirt</ref><box>(30,6),(994,996)</box>"}``, as qwen-vl-max answers grounding prompts) are
    the text, in order; every other item (``{"result_image": ...}``, ...) is returned as it came, never dropped.
    Raises MalformedResponseError for content that is neither (a number, a list of numbers, ...)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    items = [content] if isinstance(content, dict) else content
    if not isinstance(items, list):
        raise MalformedResponseError(f"a message's content is a {type(content).__name__}, not text or items")
    texts: list[str] = []
    others: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif not isinstance(item, dict):
            raise MalformedResponseError(f"a content item is a {type(item).__name__}, not an object")
        elif isinstance(item.get("text"), str) and item.get("type", "text") == "text":
            texts.append(item["text"])
        elif isinstance(item.get("box"), str) and item.get("type", "box") == "box":
            texts.append(item["box"])
        else:
            others.append(item)
    return "".join(texts), others


def text_of(content: Any) -> str:
    """The text of a message's content (see ``split_content``)."""
    return split_content(content)[0]


def optional_str(value: Any, what: str) -> str | None:
    """A string field of a reply (None or "" -> None); anything else is a MalformedResponseError."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedResponseError(f"{what} is {json.dumps(value)[:40]}, not a string")
    return value


def optional_list(value: Any, what: str) -> list | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise MalformedResponseError(f"{what} is not a list of objects")
    return value


def as_object(value: Any, what: str) -> dict[str, Any]:
    """A JSON object field of a reply (None -> {}); anything else is a MalformedResponseError."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedResponseError(f"{what} is not a JSON object")
    return value


def make_response(
    *,
    text: str,
    model: str,
    usage: dict[str, Any] | None,
    request_id: str | None,
    finish_reason: str | None,
    reasoning: str | None,
    tool_calls: list | None,
    protocol: str,
    raw: dict[str, Any] | None = None,
    other_content: list[dict[str, Any]] | None = None,
) -> Response:
    """A Response whose history holds the assistant's answer (the client prepends the conversation).

    Raises MalformedResponseError when a field has a type no reply of the service has (e.g. a numeric
    ``finish_reason``): a reply we cannot read is the service's fault, not a bug here."""
    try:
        return Response(
            text=text,
            model=model,
            usage=usage_from(usage),
            request_id=request_id,
            finish_reason=finish_reason,
            reasoning=reasoning,
            tool_calls=tool_calls,
            protocol=protocol,
            raw=raw,
            other_content=other_content or None,
            messages=[Message(role="assistant", content=text, reasoning=reasoning, tool_calls=tool_calls)],
        )
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"])
        raise MalformedResponseError(
            f"the reply's {where or 'answer'} has the wrong type ({exc.errors()[0]['msg']})"
        ) from None


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
        self.other_content: list[dict[str, Any]] = []  # non-text content items, as they came
        self.complete = False

    def add(self, text: str | None, reasoning: Any) -> list[StreamEvent]:
        reasoning = optional_str(reasoning, "reasoning_content")
        events = []
        usage = usage_from(self.usage_raw) if self.usage_raw else None  # the counts so far, if the event had them
        if reasoning:
            self.reasoning.append(reasoning)
            events.append(StreamEvent(type="reasoning", text=reasoning, usage=usage))
        if text:
            self.text.append(text)
            events.append(StreamEvent(type="text", text=text, usage=usage))
        return events

    def add_tool_call_delta(self, delta: Any, position: int | None = None, *, cumulative: bool = False) -> None:
        """Merge one streamed tool call into ``tool_calls`` (both protocols; the one place this is done).

        The call's ``index`` says which call it continues (default ``position``, else a new one). ``name`` and
        ``arguments`` are fragments appended to what arrived. ``cumulative`` (native): an event may instead
        repeat the call so far (the name in every event, or the whole call again with the finish_reason), so a
        value that extends what we have replaces it. Raises MalformedResponseError for a call, function,
        name or arguments of the wrong type."""
        if not isinstance(delta, dict):
            raise MalformedResponseError("a streamed tool call is not a JSON object")
        fn = delta.get("function") or {}
        if not isinstance(fn, dict):
            raise MalformedResponseError("a streamed tool call's function is not a JSON object")
        index = delta.get("index", len(self.tool_calls) if position is None else position)
        call = self.tool_calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        for key in ("name", "arguments"):
            piece, have = optional_str(fn.get(key), f"a streamed tool call's {key}"), call["function"][key]
            if piece:
                call["function"][key] = piece if cumulative and piece.startswith(have) else have + piece

    def error(self, exc: APIStatusError) -> Exception:
        """An error event: typed when nothing arrived yet, else an interruption that keeps the text."""
        if not self.text and not self.reasoning:
            return exc
        error = StreamInterruptedError(
            f"the stream ended with an error: {exc}",
            partial_text="".join(self.text),
            partial_reasoning="".join(self.reasoning),
            request_id=exc.request_id or self.request_id,
            code=exc.code,
            status=exc.status or None,
        )
        error.__cause__ = exc  # the service's own error (status, code, words): ``qwenvl serve`` passes it on
        return error

    def interrupted(self, why: str) -> StreamInterruptedError:
        got = len("".join(self.text))
        return StreamInterruptedError(
            f"the stream broke before the answer was complete ({why}; {got} characters received)",
            partial_text="".join(self.text),
            partial_reasoning="".join(self.reasoning),
            request_id=self.request_id,
        )

    def response(self) -> Response:
        return make_response(
            text="".join(self.text),
            model=self.model,
            usage=self.usage_raw,
            request_id=self.request_id,
            finish_reason=self.finish_reason,
            reasoning="".join(self.reasoning) or None,
            tool_calls=[self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            protocol=self.protocol,
            other_content=self.other_content,
        )


class StreamDriver:
    """SSE lines of one stream through a protocol's StreamParser: deltas as they come, then ``done`` with the
    response (``finished`` may complete it, e.g. usage an engine leaves out). Every backend's stream uses it."""

    HEAD_LINES = 20  # lines kept while no data line came, to say what the reply was instead

    def __init__(self, parser: StreamParser) -> None:
        self.parser = parser
        self.decoder = SSEDecoder()
        self.data_seen = False
        self._head: list[str] = []

    def line(self, line: str) -> list[StreamEvent]:
        if not self.data_seen:
            if carries_data(line):
                self.data_seen = True
            elif line.strip() and not line.startswith(":") and len(self._head) < self.HEAD_LINES:
                self._head.append(line)
        event = self.decoder.feed(line)
        return self.parser.feed(event) if event is not None else []

    def end(self) -> list[StreamEvent]:
        """The last events and ``done``. A reply with text but not one data line was no event stream at all:
        MalformedResponseError in the words of a non-streaming reply that is not JSON (``unreadable``)."""
        if not self.data_seen and self._head:
            load_json("\n".join(self._head), "the reply")  # raises unless it is JSON (then the parser decides)
        event = self.decoder.flush()
        events = self.parser.feed(event) if event is not None else []
        return [*events, StreamEvent(type="done", response=self.finished(self.parser.finish()))]

    def finished(self, response: Response) -> Response:
        return response

    def broken(self, exc: APIConnectionError) -> Exception:
        """The stream's connection broke: an interruption that keeps what arrived."""
        error = self.parser.acc.interrupted(str(exc))
        error.__cause__ = exc
        return error

    def run(self, lines: Iterable[str]) -> Iterator[StreamEvent]:
        """The events of ``lines`` (the rest of a stream), then ``done``. A connection that breaks meanwhile
        raises StreamInterruptedError with what arrived."""
        try:
            for line in lines:
                yield from self.line(line)
        except APIConnectionError as exc:
            raise self.broken(exc) from exc
        yield from self.end()

    async def arun(self, lines: AsyncIterable[str]) -> AsyncGenerator[StreamEvent, None]:
        """``run`` for an async stream."""
        try:
            async for line in lines:
                for event in self.line(line):
                    yield event
        except APIConnectionError as exc:
            raise self.broken(exc) from exc
        for event in self.end():
            yield event


def answer_events(response: Response) -> list[StreamEvent]:
    """A whole Response as the events of a stream: its reasoning, its text, then ``done`` (a streaming request
    answered with plain JSON)."""
    events = [StreamEvent(type="reasoning", text=response.reasoning)] if response.reasoning else []
    if response.text:
        events.append(StreamEvent(type="text", text=response.text))
    return [*events, StreamEvent(type="done", response=response)]
