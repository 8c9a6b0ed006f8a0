"""The public API: ``Client`` and ``AsyncClient``.

client = qwenvl.Client()                       # key from DASHSCOPE_API_KEY or the credentials files
r = client.ask("What is in this picture?", "photo.jpg")
print(r.text, r.usage.input_tokens)
for event in client.stream(prompt="Describe", image="photo.jpg"):
    ...                                        # "reasoning"/"text" deltas, then "done" with r
r2 = client.complete(prompt="And the colours?", messages=r.messages)   # multi-turn
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Generic, Never, TypeVar, Unpack

from pydantic import ValidationError

from qwenvl import env as qenv
from qwenvl import structured
from qwenvl._constants import CLOSE_WAIT_S
from qwenvl.backends.base import AsyncBackend, Backend, aassembled, assembled
from qwenvl.backends.family import listed_model
from qwenvl.config import (
    KeyFound,
    check_backend_options,
    effective_protocol,
    effective_region,
    find_api_key,
    normalize_backend,
    openai_api_key,
    require_api_key,
    resolve_base_url,
)
from qwenvl.errors import (
    APIConnectionError,
    ClientClosedError,
    QwenVLError,
    StreamInterruptedError,
    StructuredOutputError,
    UsageError,
)
from qwenvl.media.prepare import PreparedCache
from qwenvl.media.sources import looks_swapped, swapped_error
from qwenvl.models import DEFAULT_MODEL, ModelInfo, listed_name, model_info
from qwenvl.notes import cut_off
from qwenvl.plan import Call, plan
from qwenvl.retry import RetryHook, RetryNotice
from qwenvl.spelling import did_you_mean, nearest
from qwenvl.store import CacheArg, UsageLogArg, exchange, open_cache, open_usage_log
from qwenvl.store.cache import account_id
from qwenvl.types import (
    FIELD_FLAGS,
    AskFields,
    MediaInput,
    Message,
    Request,
    RequestFields,
    Response,
    StreamEvent,
    TextPart,
    Usage,
    not_blank,
    reserved_extra,
    reserved_extra_hint,
    seconds,
)

# Client-level defaults that apply to requests that do not set the field themselves.
_CLIENT_DEFAULTS = ("model", "timeout_s", "max_retries", "retry_backoff_s")

# How long a server that did not answer whether it charges (``Client.serves_paid``) is not asked again, in seconds.
SERVES_PAID_QUIET_S = 60.0


def make_request(
    request: Request | dict[str, Any] | None, fields: Mapping[str, Any], defaults: dict[str, Any] | None = None
) -> Request:
    """One validated Request from a Request, a dict and/or keyword fields; ``fields`` win over ``request``, and
    ``defaults`` (the client's) fill only what neither sets.

    Raises UsageError (one line naming each invalid field) when the result is not a valid Request, or when
    ``request`` is neither a Request, a dict nor None (``client.stream("hi")``: the prompt is ``prompt=``)."""
    if request is not None and not isinstance(request, Request | dict):
        hint = 'Give the prompt as prompt="..." (only ask() takes it first).' if isinstance(request, str) else None
        raise UsageError(f"a request is a qwenvl.Request or a dict, not {type(request).__name__}", hint=hint)
    try:
        if isinstance(request, Request):
            data = {**request.model_dump(exclude_unset=True), **fields}
            schema_model = request.schema_model
        else:
            data = {**(request or {}), **fields}
            schema_model = None
        for key, value in (defaults or {}).items():
            data.setdefault(key, value)
        if schema_model is not None and data.get("schema") == request.schema:  # type: ignore[union-attr]
            data["schema"] = schema_model
        return Request(**data)
    except ValidationError as exc:
        hint = _unknown_field_hint(exc) or _rule_hint(exc) or value_hint(exc)
        raise UsageError(describe_validation_error(exc), hint=hint) from None


# What to do about each rule of ``Request._check`` (keyed by the start of its message); flags beside the library's
# names, fitted to each surface (``qwenvl.wording``: a CLI verb, or the request fields of a serve client).
_RULE_HINTS = {
    "a prompt is required": 'Give a prompt (--prompt "...").',
    "prompt is empty": 'Give the question as words (--prompt "..."), e.g. "What is in this picture?".',
    "min_pixels is larger than max_pixels": "Give --min-pixels / min_pixels no larger than --max-pixels / max_pixels, "
    "or leave one of them out.",
    "'response_format' is built": "Leave response_format out: --json-mode / json_mode and --schema / schema build it.",
    "structured output (json_mode/schema) needs": "Leave out --thinking / enable_thinking, or the JSON mode and "
    "schema.",
}


_CLIENT_OPTION_HINT = "Give a value in the range said, or leave the option out for its default (help(qwenvl.Client))."


def _rule_hint(exc: ValidationError) -> str | None:
    """The hint for the first broken rule of ``Request._check`` (``_RULE_HINTS``), or None."""
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":  # its "did you mean" is the hint's (_unknown_field_hint)
            msg = msg.split(" (did you mean")[0]
        hint = next((h for start, h in _RULE_HINTS.items() if msg.startswith(start)), None)
        if hint:
            return hint
    return None


# pydantic's bound errors, and the bracket each side of a range is written with
_BOUNDS = {"gt": "(", "ge": "[", "lt": ")", "le": "]"}


def _field_range(name: str) -> str | None:
    """``[0, 2)`` for a Request field bounded both sides, ``0 or more`` / ``above 0`` for one side; None for an
    unbounded one. From the field's own constraints (``Request.model_fields``: one home). Raises nothing."""
    info = Request.model_fields.get(name)
    if info is None:
        return None
    found = {k: getattr(m, k) for m in info.metadata for k in _BOUNDS if getattr(m, k, None) is not None}
    low = next(((k, found[k]) for k in ("gt", "ge") if k in found), None)
    high = next(((k, found[k]) for k in ("lt", "le") if k in found), None)
    if low and high:
        return f"{_BOUNDS[low[0]]}{low[1]:,}, {high[1]:,}{_BOUNDS[high[0]]}"
    if low:
        return f"{low[1]:,} or more" if low[0] == "ge" else f"above {low[1]:,}"
    if high:
        return f"at most {high[1]:,}" if high[0] == "le" else f"below {high[1]:,}"
    return None


def value_hint(exc: ValidationError) -> str | None:
    """A hint for pydantic's common refusals of a Request field (the first that has one): a number out of range
    says the range (``--temperature / temperature takes a number in [0, 2)``); a value not among the choices says
    the closest (``Did you mean 'high'?``, ``spelling.did_you_mean``); a file where a list is taken says where one
    file goes (``images takes a list; one file goes in image=``); any other refusal of a field, what the field
    takes (``field_hint``). Flags beside the library's names, fitted to each surface (``qwenvl.wording``). None
    when none applies. Raises nothing."""
    for err in exc.errors():
        if len(err["loc"]) != 1 or str(err["loc"][0]) not in Request.model_fields:
            continue
        name = str(err["loc"][0])
        flag = FIELD_FLAGS.get(name, f"--{name.replace('_', '-')}")
        said = f"{flag} / {name}" if flag else name
        if err["type"] in ("less_than", "less_than_equal", "greater_than", "greater_than_equal"):
            span = _field_range(name)
            if span:
                return f"{said} takes a number {'in ' if span[0] in '([' else ''}{span}; leave it out for its default."
        if err["type"] == "literal_error":
            choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            near = did_you_mean(str(err.get("input")), choices)
            return f"{near + ' ' if near else ''}{said} is one of {', '.join(choices)}."
        if err["type"] == "list_type" and name == "images" and isinstance(err.get("input"), str | os.PathLike):
            return "images takes a list (images=[...]); one file goes in image=."
    return field_hint(exc)


def field_hint(exc: ValidationError) -> str | None:
    """The last resort of ``value_hint``: what the first Request field refused for its type takes, in words every
    surface shares (``--temperature / temperature takes a number in [0, 2).``: the kinds of value pydantic asked
    for, ``protocols.inbound``'s words for them, and the field's own range, ``_field_range``); never the field's
    description (it cites the project's own sources); for a part inside a field (``messages.0.role``), where it is
    and pydantic's words for what it must be. None when no Request field was refused. Raises nothing."""
    from qwenvl.protocols.inbound import TAKES

    takes: dict[str, list[str]] = {}
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        nested = [p for p in err["loc"][1:] if not isinstance(p, str) or not _union_branch(p)]
        if name not in Request.model_fields or nested or err["type"] not in TAKES:
            continue
        said = _LIBRARY_TAKES.get(err["type"], TAKES[err["type"]])
        if said not in takes.setdefault(name, []):
            takes[name].append(said)
    for name, kinds in takes.items():
        flag = FIELD_FLAGS.get(name, f"--{name.replace('_', '-')}")
        span = _field_range(name) if kinds in (["a number"], ["an integer"]) else None
        where = f" {'in ' if span[0] in '([' else ''}{span}" if span else ""
        return f"{f'{flag} / {name}' if flag else name} takes {' or '.join(kinds)}{where}."
    for err in exc.errors():  # a part inside a field (messages.0.role): where it is and what it must be
        name = str(err["loc"][0]) if err["loc"] else ""
        if name in Request.model_fields and len(err["loc"]) > 1:
            where = ".".join(str(part) for part in err["loc"])
            return f"Correct {where} in {name}: {err['msg'][0].lower()}{err['msg'][1:]}."
    return None


# Kinds of value said otherwise than in JSON's words (``true or false``): the library's and the JSON surfaces'
# spellings of a boolean differ, so it is named by its kind.
_LIBRARY_TAKES = {"bool_type": "a boolean", "bool_parsing": "a boolean"}


def _union_branch(part: str) -> bool:
    """Whether a pydantic location item names a branch of a union (``str``, ``list[str]``), not a field."""
    return "[" in part or part in ("str", "int", "float", "bool", "dict", "list", "none")


def _unknown_field_hint(exc: ValidationError) -> str | None:
    """``Did you mean 'image' (not 'imag')?`` for unknown fields near a Request field; the option to use for a
    reserved ``extra`` key (``types.reserved_extra_hint``); else None."""
    guesses = []
    for err in exc.errors():
        if err["loc"] == ("extra",) and isinstance(err.get("input"), dict):
            keys = [k for k in err["input"] if reserved_extra(k, Request.model_fields)]
            if keys:
                return reserved_extra_hint(keys)
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            name = str(err["loc"][0])
            near = near_field(name)
            if near:
                guesses.append(f"'{near}' (not '{name}')")
    return f"Did you mean {', '.join(guesses)}?" if guesses else None


def near_field(name: str) -> str | None:
    """The ``Request`` field an unknown key ``name`` was most likely meant to be (``qwenvl.spelling.nearest``,
    e.g. ``max_tokens`` for ``max_token``), or None when none is close. Raises nothing."""
    return nearest(name, Request.model_fields)


def describe_validation_error(exc: ValidationError, what: str = "invalid request") -> str:
    """pydantic's errors as one line, ``"<what>: field: message; ..."`` (the first 6). Raises nothing."""
    lines = []
    for err in exc.errors()[:6]:
        where = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "union")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":  # its "did you mean" is the hint's (_unknown_field_hint)
            msg = msg.split(" (did you mean")[0]
        named = where and msg.startswith(f"{where.rsplit('.', 1)[-1]} ")  # "prompt is empty" names its field
        lines.append(f"{where}: {msg}" if where and not named else msg)
    return f"{what}: " + "; ".join(lines)


def check_structured(response: Response, request: Request, schema: dict[str, Any] | None) -> list[str]:
    """The one check of a structured answer (realtime and Batch API): the JSON found in ``response.text``
    (``structured.answer_json``: the whole answer, an object in JSON mode; a cut-off answer never passes),
    validated against ``schema`` and, when the request's schema was a pydantic
    model, by that model. Valid: sets ``response.json`` (and ``response.parsed``) and returns []; else returns
    the errors as short lines, the response untouched."""
    value, parsed, errors = answer_errors(response.text, request, schema)
    if not errors and response.finish_reason == "length":  # JSON that parses may still be a cut-off answer's start
        errors, parsed = ["the answer was cut off at max_tokens: it may be incomplete"], None
    if not errors:
        response.json = value
        if parsed is not None:
            response._parsed = parsed
    return errors


def answer_errors(text: str, request: Request, schema: dict[str, Any] | None) -> tuple[Any, Any, list[str]]:
    """``(value, parsed, errors)`` of a structured answer's ``text``: the answer's JSON (``structured.parse_answer``:
    the whole answer; an object in JSON mode, without ``schema``), the request's pydantic model's instance of it
    (None without a model, or when invalid), and what is wrong as short lines about the answer: the schema's
    (``at n: -1 is less than 1``) and then the model's own validators' (``at n: must be positive``: a
    ``field_validator`` raising ValueError). Mutates nothing; raises what ``structured.validate`` raises
    (SchemaDefinitionError)."""
    value, errors = structured.parse_answer(text, schema, json_object=schema is None)
    if errors or request.schema_model is None:
        return value, None, errors
    try:
        return value, request.schema_model.model_validate(value), []
    except ValidationError as exc:  # the user's model refused the answer: said about the answer, never empty
        return value, None, model_errors(exc)


def model_errors(exc: ValidationError) -> list[str]:
    """A pydantic model's refusal of an answer as short lines in ``structured.validate``'s words (``at n: must be
    positive``; ``(root)`` for the whole value), at most ``structured.MAX_REPORTED_ERRORS`` and a count of the
    rest. Raises nothing."""
    lines = []
    found = exc.errors()
    for err in found[: structured.MAX_REPORTED_ERRORS]:
        where = "/".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"at {where}: {err['msg'].removeprefix('Value error, ')}")
    if len(found) > structured.MAX_REPORTED_ERRORS:
        lines.append(f"... and {len(found) - structured.MAX_REPORTED_ERRORS} more")
    return lines or [str(exc).splitlines()[0]]


def _check(call: Call, response: Response) -> tuple[Response, Call | None]:
    """Attach the history; for structured output parse and validate, or return the repair call."""
    response.messages = [*call.history, *response.messages]
    request = call.request
    if not (request.json_mode or call.schema is not None):
        return response, None
    errors = check_structured(response, request, call.schema)
    if not errors:
        return response, None
    cut = cut_off(response, request.max_tokens)
    if cut is not None:  # a repair request would be cut off at the same place: say why, pay nothing more
        raise StructuredOutputError(
            cut.replace("it is incomplete", "its JSON is incomplete"),
            raw_text=response.text,
            errors=errors,
            response=response,
            hint="Raise --max-tokens; the partial answer is kept (shown, and in the error).",
        )
    if not request.repair:  # one request only (the skill's JSON mode): the caller decides what to do
        raise StructuredOutputError(
            "the answer is not valid JSON" + (" for the schema" if call.schema else "") + ": " + "; ".join(errors[:3]),
            raw_text=response.text,
            errors=errors,
            response=response,
            hint=_structured_hint(call),
        )
    repair = Message(role="user", content=[TextPart(text=structured.repair_prompt(errors, call.schema))])
    answer = Message(role="assistant", content=response.text)
    retry = Call(
        request=request,
        model=call.model,
        messages=[*call.messages, answer, repair],
        history=call.history,
        params=call.params,
        media=call.media,
        schema=call.schema,
    )
    return response, retry


def _valid(call: Call) -> Callable[[Response], bool] | None:
    """What the response cache may keep of ``call``'s answers (``exchange.begin``'s ``keep``): with structured
    output only an answer that passes ``check_structured`` (an invalid one is asked again, never replayed);
    None (any whole answer) otherwise."""
    request, schema = call.request, call.schema
    if not (request.json_mode or schema is not None):
        return None
    return lambda response: not check_structured(response, request, schema)


def _structured_hint(call: Call) -> str | None:
    """The hint of an invalid structured answer: the class's (loosen the schema, rephrase) with a schema; without
    one (``json_mode``) there is no schema to loosen."""
    if call.schema is not None:
        return None
    return "The model's answer is kept (shown, and in the error); rephrase the prompt to ask for JSON only."


def _after_repair(first: Response, retry: Call, second: Response) -> Response:
    """The repaired answer; else StructuredOutputError carrying the paid requests (usage summed over them, their
    ids). Its ``parts`` are both answers (priced each on its own: ``models.answer_cost``); it is ``cached`` only when
    neither was paid now, and a part from the cache adds nothing to ``usage`` (nothing was paid for it)."""
    parts = [first.model_copy(), second.model_copy()]
    sent = [r for r in (first, second) if not r.cached]  # an answer from the cache was not paid now
    if len(sent) == 2:
        second.usage = _add_usage(first.usage, second.usage)
    elif sent:
        second.usage = sent[0].usage.model_copy()
    second.cached, second._parts = not sent, parts
    paid, n = [r.request_id for r in sent if r.request_id], len(sent)
    second._requests, second._request_ids = n, paid  # an error's response counts them as a repaired answer does
    try:
        final, again = _check(retry, second)
    except StructuredOutputError as exc:  # the repair's answer was cut off: both requests were still paid
        exc.requests, exc.request_ids, exc.request_id = n, paid, paid[-1] if paid else None
        raise
    if again is not None:
        errors = answer_errors(second.text, retry.request, retry.schema)[2]
        raise StructuredOutputError(
            "the answer is not valid JSON"
            + (" for the schema" if retry.schema else "")
            + ", even after one retry: "
            + "; ".join(errors[:3]),
            raw_text=second.text,
            errors=errors,
            response=second,
            requests=n,
            request_ids=paid,
            hint=_structured_hint(retry),
        )
    final._requests, final._request_ids = n, paid
    final.cached, final._parts = not sent, parts
    return final


def _unrepaired(first: Response, retry: Call, exc: BaseException) -> StructuredOutputError:
    """The StructuredOutputError of a first answer that was not valid and whose repair request did not answer
    (``exc``: it failed, or was interrupted): the first answer is kept (``raw_text``, ``response``, one request
    paid), never lost with the repair."""
    errors = answer_errors(first.text, retry.request, retry.schema)[2]
    what = "was interrupted" if not isinstance(exc, QwenVLError) else f"failed ({exc})"
    return StructuredOutputError(
        "the answer is not valid JSON"
        + (" for the schema" if retry.schema else "")
        + f": {'; '.join(errors[:3])}; its repair request {what}",
        raw_text=first.text,
        errors=errors,
        response=first,
        hint=_structured_hint(retry),
    )


def _repair_failed(first: Response, retry: Call, exc: BaseException) -> StructuredOutputError | None:
    """What a repair request that did not answer leaves: an error of qwenvl's (the service, the network) becomes
    the first answer's StructuredOutputError (returned, to raise from it); an interrupt (KeyboardInterrupt,
    asyncio.CancelledError) stays what it is, with that error as its ``unrepaired`` attribute (None returned: the
    caller raises the interrupt again). Raises nothing."""
    error = _unrepaired(first, retry, exc)
    if isinstance(exc, QwenVLError):
        return error
    with contextlib.suppress(AttributeError, TypeError):
        exc.unrepaired = error  # type: ignore[attr-defined]
    return None


def unrepaired(exc: BaseException) -> StructuredOutputError | None:
    """The first, paid answer an interrupt (KeyboardInterrupt, asyncio.CancelledError) carries when it came during
    a structured-output repair request (``Client.send``): its StructuredOutputError (``raw_text``, ``response``,
    what was paid), or None. The interrupt may be the one caught or one it wraps: ``asyncio.wait_for(...)`` and
    ``asyncio.timeout()`` raise a TimeoutError whose ``__cause__``/``__context__`` is the task's CancelledError
    carrying it, so the chain of causes and contexts is searched too. Not found (None) on the CancelledError that
    ``asyncio.gather(..., return_exceptions=True)`` returns for a cancelled task: gather makes a fresh one, not the
    task's; await the task itself (``await task``, or ``asyncio.wait_for(task, ...)``) and catch its
    CancelledError to get it. Raises nothing."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        found = getattr(err, "unrepaired", None)
        if isinstance(found, StructuredOutputError):
            return found
        err = err.__cause__ or err.__context__
    return None


def _add_usage(a: Usage, b: Usage) -> Usage:
    def add(x: int | None, y: int | None) -> int | None:
        return None if x is None and y is None else (x or 0) + (y or 0)

    return Usage(
        input_tokens=add(a.input_tokens, b.input_tokens),
        output_tokens=add(a.output_tokens, b.output_tokens),
        total_tokens=add(a.total_tokens, b.total_tokens),
        image_tokens=add(a.image_tokens, b.image_tokens),
        video_tokens=add(a.video_tokens, b.video_tokens),
        reasoning_tokens=add(a.reasoning_tokens, b.reasoning_tokens),
        raw=_add_raw(a.raw, b.raw),
    )


def _add_raw(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two usage objects as the service sent them, summed in their own shape (every count added, nested details
    too; any other value the second's), so that a result's ``usage`` (the skill's ``result_object``, ``--json``)
    accounts for every request paid, a repair's included."""
    out = dict(a)
    for key, value in b.items():
        mine = out.get(key)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (value, mine))
        if numbers:
            out[key] = mine + value
        elif isinstance(value, dict) and isinstance(mine, dict):
            out[key] = _add_raw(mine, value)
        else:
            out[key] = value
    return out


if TYPE_CHECKING:
    import httpx

# The backend a client holds: Backend for Client, AsyncBackend for AsyncClient (qwenvl.backends.base); and the httpx
# client it may send through (``http_client``): httpx.Client for Client, httpx.AsyncClient for AsyncClient.
B = TypeVar("B", Backend, AsyncBackend)
H = TypeVar("H", "httpx.Client", "httpx.AsyncClient")


class _Base(Generic[B, H]):
    """What ``Client`` and ``AsyncClient`` share: the options (see ``Client``), planning, dry runs, model rules."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        protocol: str | None = None,
        region: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        retry_backoff_s: float | None = None,
        http_client: H | None = None,
        backend: str | B | None = None,
        engine: str | None = None,
        family: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        attn_implementation: str | None = None,
        cache: CacheArg = None,
        usage_log: UsageLogArg = None,
        on_retry: RetryHook | None = None,
        **unknown: Never,  # none is taken: a type checker flags a misspelt keyword, and so does this (UsageError)
    ) -> None:
        if unknown:  # Client(protocl=...): a UsageError naming the closest keyword, not a raw TypeError
            known = [p for p in inspect.signature(_Base.__init__).parameters if p not in ("self", "unknown")]
            name = next(iter(unknown))
            near = did_you_mean(name, known)
            raise UsageError(
                f"{type(self).__name__}() takes no keyword {name!r}",
                hint=f"{near + ' ' if near else ''}The keywords: {', '.join(known)}.",
            )
        for name, value in dict(
            api_key=api_key,
            protocol=protocol,
            region=region,
            base_url=base_url,
            model=model,
            backend=backend,
            engine=engine,
            family=family,
            device=device,
            dtype=dtype,
            attn_implementation=attn_implementation,
        ).items():  # a blank value never falls back silently (a blank base_url: the paid cloud endpoint)
            not_blank(value, name)
        self.protocol = effective_protocol(protocol)
        self.region = effective_region(region)
        self.base_url = base_url
        self._api_key = api_key
        if http_client is not None:  # the wrong kind fails now, not as the first request's AttributeError
            from qwenvl.transport import check_http_client

            check_http_client(http_client, asynchronous=isinstance(self, AsyncClient), who=type(self).__name__)
        if on_retry is not None and not callable(on_retry):
            raise UsageError(
                f"on_retry is a {type(on_retry).__name__}: it is called with a qwenvl.retry.RetryNotice before each "
                "retry's wait",
                hint="Give on_retry a function of one argument (the notice), or leave it out.",
            )
        self._http_client: H | None = http_client
        if not isinstance(backend, str | None):
            self._check_backend(backend)
        self._backend: B | None = None if isinstance(backend, str | None) else backend
        self._given_backend = self._backend is not None  # a backend object: its owner's, never made again
        self._account: str | None = None  # ``account``, worked out at first use
        self.backend_name = (
            normalize_backend(backend, protocol=self.protocol)
            if isinstance(backend, str | None)
            else getattr(backend, "name", type(backend).__name__)
        )
        self._backend_options = {
            k: v
            for k, v in dict(
                engine=engine, family=family, device=device, dtype=dtype, attn_implementation=attn_implementation
            ).items()
            if v is not None
        }
        if self.backend_name != "dashscope" and protocol not in (None, "openai"):
            raise UsageError(
                f"the {self.backend_name} backend speaks the plain openai protocol, not DashScope's {protocol}",
                hint="Leave out --protocol (or use --backend dashscope for DashScope's compat and native).",
            )
        if self.backend_name != "dashscope":  # every local backend by name speaks the plain openai protocol: its
            self.protocol = "openai"  # answers are logged as local (qwenvl.models.PAID_PROTOCOLS), never priced
        if self.backend_name == "dashscope" and self.protocol == "openai":
            raise UsageError(
                "the dashscope backend speaks compat or native, not the plain openai protocol",
                hint="Use --backend openai for another OpenAI-compatible server.",
            )
        if isinstance(backend, str | None):  # an option the backend does not take: refused, never dropped
            check_backend_options(
                self.backend_name,
                dict(
                    protocol=protocol,
                    region=region,
                    base_url=base_url,
                    engine=engine,
                    family=family,
                    device=device,
                    dtype=dtype,
                    attn_implementation=attn_implementation,
                ),
            )
        self._closed = False  # close() / aclose() was called: every later call raises ClientClosedError
        self._close_wait_s = CLOSE_WAIT_S  # the wait_s of close() / aclose(), which a call it cut names
        self._cutting = False  # the close's wait is over, the connections are being closed: calls going are cut
        # guards the client's state between threads (and event loops): the closed flag, the calls in flight, the
        # backend made on first use, the event loop an AsyncClient is bound to
        self._lock = threading.RLock()
        # what a server speaking DashScope's protocols that is not DashScope's own lists of its models (asked once,
        # the first time a model it may serve is resolved: ``served_model``); None: not asked yet
        self._listed: dict[str, dict[str, Any]] | None = None
        self._listing_lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # told when a call in flight ends (close waits for it)
        self._inflight = 0  # whole-answer calls (send) going on now
        self._streams = 0  # streams (send_stream) begun and not ended (being read, or waiting for their reader)
        self._stores_left = False  # close() left the stores open for the calls in flight: the last one closes them
        self.on_retry = on_retry  # told before each retry's wait (qwenvl.retry.RetryNotice), e.g. to show it
        # media this client prepared, by content: a conversation's earlier turns are not decoded again per turn
        self.prepared = PreparedCache()
        # The client's stores (qwenvl.store): the cache is off unless asked for (True, a path or a ResponseCache);
        # the usage log is on unless $QWENVL_LOG=0 or usage_log=False (True, a path or a UsageLog). Stores the
        # client opened itself are closed with it; one passed in as an object stays its owner's.
        self.cache = open_cache(cache)
        self.usage_log = open_usage_log(usage_log)
        self._own_stores = [
            store
            for store, arg in ((self.cache, cache), (self.usage_log, usage_log))
            if store is not None and store is not arg
        ]
        if self._backend is not None:  # the wire protocol's name, for the usage log (Backend's doc)
            self.protocol = getattr(self._backend, "protocol", "openai")
        model = model or qenv.model()
        values = dict(model=model, timeout_s=timeout_s, max_retries=max_retries, retry_backoff_s=retry_backoff_s)
        self.defaults: dict[str, Any] = {k: v for k, v in values.items() if v is not None and k in _CLIENT_DEFAULTS}
        try:  # checked now by the Request's own rules (a time-out: ``types.seconds``), not at the first request
            Request(prompt="?", **self.defaults)
        except ValidationError as exc:
            raise UsageError(
                describe_validation_error(exc, "invalid client option"), hint=_rule_hint(exc) or _CLIENT_OPTION_HINT
            ) from None

    # What this client calls on a backend instance (the rest of Backend / AsyncBackend is optional at run time).
    _BACKEND_METHODS: tuple[str, ...] = ("complete", "stream", "close")

    def _check_open(self) -> None:
        """ClientClosedError when ``close()`` / ``aclose()`` was called: nothing more is planned or sent."""
        if self._closed:
            name = type(self).__name__
            closing = "aclose()" if isinstance(self, AsyncClient) else "close()"
            raise ClientClosedError(
                f"this {name} is closed",
                hint=f"Make a new {name}, or use this one before {closing} (inside its with block).",
            )

    def _begin_call(self, *, stream: bool = False) -> None:
        """Count a call in flight (a whole answer: ``send``; or a stream: ``send_stream``), or ClientClosedError
        when the client is closed: both at once, so that ``close()`` either knows of the call or it never starts."""
        with self._lock:
            self._check_open()
            if stream:
                self._streams += 1
            else:
                self._inflight += 1

    def _end_call(self, *, stream: bool = False) -> None:
        """The call has ended (its usage log row recorded); the last one to end after ``close()`` closes the
        stores that close left open for it (``_stores_now``)."""
        with self._lock:
            if stream:
                self._streams -= 1
            else:
                self._inflight -= 1
            self._idle.notify_all()
            last = self._stores_left and not (self._inflight or self._streams)
            if last:
                self._stores_left = False
        if last:
            self._close_stores()

    def _wait_idle(self, timeout_s: float, given_up: threading.Event | None = None) -> None:
        """Wait until no whole-answer call is in flight (``_end_call`` tells the condition), at most ``timeout_s``
        seconds, or until ``given_up`` is set (and the condition told): the one wait of ``close()`` and
        ``aclose()`` (which runs it in a worker thread, so that calls in its own loop go on). Raises nothing."""
        with self._lock:
            self._idle.wait_for(
                lambda: self._inflight == 0 or (given_up is not None and given_up.is_set()), timeout=timeout_s
            )

    def _stores_now(self) -> bool:
        """For ``close()``: True when no call is in flight, so the stores close now; else False, and the last call
        to end closes them (``_end_call``), after writing its row: a call cut by the close is logged, not lost."""
        with self._lock:
            self._stores_left = bool(self._inflight or self._streams)
            return not self._stores_left

    def _closed_midway(self, exc: BaseException) -> ClientClosedError | None:
        """The ClientClosedError of a request that ``close()`` / ``aclose()`` cut (its connection closed under it:
        whatever httpx then raised, a connection error, a stream broken midway), or None for an error that is not
        the close's (a service's answer stays itself, and so does an interrupt). Raises nothing."""
        if not self._cutting or isinstance(exc, ClientClosedError) or not isinstance(exc, Exception):
            return None
        if isinstance(exc, QwenVLError) and not isinstance(exc, APIConnectionError | StreamInterruptedError):
            return None
        name = type(self).__name__
        closer = "aclose" if "aclose" in self._BACKEND_METHODS else "close"
        waited = self._close_wait_s
        how_long = "does not wait" if waited <= 0 else f"waited {waited:g} s"
        return ClientClosedError(
            f"this {name} was closed while the request was in flight: it was cancelled (in the usage log as "
            "cancelled; any answer it got is lost)",
            hint=f"Close the {name} after its requests have answered ({closer}(wait_s={waited:g}) {how_long} for "
            f"complete/ask/send, and never for streams; give {closer}() a longer wait_s to let them finish).",
        )

    def _check_backend(self, backend: object) -> None:
        """UsageError for a backend object this client cannot use: one without the methods it calls
        (``_BACKEND_METHODS``), or of the other kind (an async ``complete`` given to Client, a plain one to
        AsyncClient: its coroutine would never be awaited, or an await would fail)."""
        missing = [m for m in self._BACKEND_METHODS if not callable(getattr(backend, m, None))]
        asynchronous = "aclose" in self._BACKEND_METHODS
        kind = "an AsyncBackend" if asynchronous else "a Backend"
        if missing:
            said = f"has no {', '.join(missing)}"
        elif inspect.iscoroutinefunction(getattr(backend, "complete", None)) != asynchronous:
            said = "answers " + ("synchronously" if asynchronous else "with coroutines (async def complete)")
        else:
            return
        raise UsageError(
            f"backend {type(backend).__name__} {said}: {type(self).__name__} needs a backend name or {kind} object",
            hint=f"A backend name (dashscope, openai, transformers), or an object with what "
            f"qwenvl.backends.base.{kind.split()[1]} declares.",
        )

    def __repr__(self) -> str:
        if not self._dashscope:
            return f"{type(self).__name__}(backend={self.backend_name!r})"
        return f"{type(self).__name__}(protocol={self.protocol!r}, region={self.region!r})"

    @property
    def account(self) -> str:
        """Who answers and pays for this client's requests, as the response cache tells accounts apart
        (``qwenvl.store.cache.account_id``): a SHA-256 of the key in use (DashScope's, found as ``check_key``
        finds it; a local server's, if any; a backend object's own), the backend and DashScope's base URL (the
        region's); never the key itself. Worked out once. Raises nothing (a key that cannot be read counts as none)."""
        if self._account is None:
            key: str | None = getattr(getattr(self._backend, "transport", None), "_key", None)
            if not self._given_backend or key is None:
                try:
                    found = None if self._local_endpoint else find_api_key(self._api_key)
                except QwenVLError:  # an unreadable key's place: said when the backend is made, not here
                    found = None
                key = openai_api_key(self._api_key) if self._local_endpoint else (found.key if found else "")
            # DashScope's URL (the region's, or the one given, from the environment too); a local server's is in
            # every cache key already (its endpoint)
            where = (
                None
                if self._local_endpoint
                else resolve_base_url(self.protocol, region=self.region, base_url=self.base_url)
            )  # type: ignore[arg-type]
            self._account = account_id(key, self.backend_name, where)
        return self._account

    @property
    def is_local(self) -> bool:
        """True for a local model, which has no price (``qwenvl.models.LOCAL``): a backend other than DashScope (it
        is asked about models and media at planning time) unless its server says the client's model is paid for
        (``serves_paid``: a ``qwenvl serve`` forwarding to DashScope lists it ``"local": false``), or DashScope's
        protocols to a server that says the client's model runs on its own engine (``served_model``: a ``qwenvl
        serve`` in front of a local model). A custom base URL alone never makes a model free. Raises nothing."""
        if not self._dashscope:
            return not self.serves_paid()
        return self.served_model() is not None

    def serves_paid(self, name: str | None = None) -> bool:
        """Whether a backend other than DashScope's answers ``name`` (default: the client's model) from a paid
        service, as its server says (the openai backend's ``serves_paid``: a ``qwenvl serve`` forwarding to
        DashScope); False for DashScope's own backend (``is_local`` is False there anyway), a backend that cannot
        say (transformers, a custom one without ``serves_paid``), or a server that cannot be asked now (nothing can
        be sent to it either). Asks the server at most once. Raises nothing."""
        if self._dashscope or (self.backend_name != "openai" and not self._given_backend):
            return False
        if time.monotonic() < getattr(self, "_unasked_until", 0.0):  # it did not answer just now: not asked again
            return False
        try:
            check = getattr(self.backend, "serves_paid", None)
            return bool(check(name or self.defaults.get("model"))) if callable(check) else False
        except QwenVLError:  # remembered for a while: callers read is_local many times (a batch, per item), and a
            # mute server would hold each read for the probe's whole time-out
            self._unasked_until = time.monotonic() + SERVES_PAID_QUIET_S
            return False

    @property
    def _local_endpoint(self) -> bool:
        """A backend other than DashScope's, or a server that says the client's model is local: the key and address
        the response cache's account is told by are that server's. Raises nothing."""
        return not self._dashscope or self.served_model() is not None

    @property
    def local_backend(self) -> bool:
        """True for a backend other than DashScope's (openai, transformers, a custom one): what answers is not a
        DashScope endpoint (unlike ``is_local``, whatever the server at ``base_url`` says). Raises nothing."""
        return not self._dashscope

    @property
    def _dashscope(self) -> bool:
        """Whether the backend is DashScope's (by name, or a DashScope backend instance). Raises nothing."""
        return self.backend_name.startswith("dashscope")

    def served_model(self, name: str | None = None) -> ModelInfo | None:
        """The rules of ``name`` (default: the client's model, else ``DEFAULT_MODEL``) as the server this DashScope
        client talks to says them, when that server is not DashScope's own and says the model is local (a ``qwenvl
        serve`` in front of an engine lists its family, context and ``"local": true``: ``backends.family.
        listed_model``): its family's rules, its context, no price. None otherwise: another backend, a backend
        object given, a name the model table lists (a DashScope model: the table's rules), or a server that does
        not say (a real DashScope, a proxy: nothing is asked of DashScope's own endpoints). The server is asked
        once per client (``backends.dashscope.served_models``: one ``GET .../models`` within
        ``LISTING_TIMEOUT_S``, with this client's key when one is found). Raises nothing."""
        if not self._dashscope or self._given_backend:
            return None
        name = name or self.defaults.get("model") or DEFAULT_MODEL
        if listed_name(name):
            return None  # a DashScope model: the table's rules
        entry = self._listing().get(name)
        return listed_model(name, entry) if entry is not None else None

    def served_name(self, name: str) -> bool:
        """Whether ``name`` is the server's own (a name the model table does not list, which the server this
        DashScope client talks to lists in its ``GET .../models``, ``served_model``): then it is not checked against
        the table's spellings (``plan.check_model_name``), for the server names its models as it likes
        (``Qwen3-VL-Tiny``). False for a name the table lists, another backend, a backend object given, DashScope's
        own hosts (nothing is asked of them: the table's checks stand), or a server that lists no local model (a
        gateway to the cloud passes names on). The listing is asked at most once per client, within
        ``LISTING_TIMEOUT_S``; a name it does not list is asked about by name first (``GET .../models/NAME``:
        ``_retrieved``; a ``qwenvl serve`` accepts a local model's folder path it leaves out of the listing). Raises
        UsageError (exit 2, nothing sent) for a name such a server neither lists nor accepts when it lists a local
        model (a ``qwenvl serve`` in front of a local engine serves only those): ``X is not a model
        this server serves``, its hint naming them."""
        if not self._dashscope or self._given_backend or listed_name(name):
            return False
        listing = self._listing()
        if name in listing:
            return True
        if not any(entry.get("local") is True for entry in listing.values()):
            return False
        entry = self._retrieved(name)  # a name its listing leaves out (a model folder's path) that it accepts
        if entry is not None:
            return True
        names = sorted(listing)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise UsageError(
            f"{name} is not a model the server at {self.base_url} serves: this server serves {shown}",
            hint=f"Give --model {names[0]} (the server's GET /v1/models lists its models).",
        )

    def _retrieved(self, name: str) -> dict[str, Any] | None:
        """The entry the server gives for ``name`` asked by name (``backends.dashscope.served_entry``), kept with
        the listing's (asked once per name). Raises nothing."""
        from qwenvl.backends.dashscope import served_entry

        entry = served_entry(self.base_url, self._listing_key(), name, region=self.region)
        if entry is not None:
            with self._listing_lock:
                assert self._listed is not None
                self._listed[name] = entry
        return entry

    def _listing_key(self) -> str | None:
        try:
            found = find_api_key(self._api_key)
        except QwenVLError:  # a damaged key file: asked without a key (the request will say why it fails)
            found = None
        return found.key if found is not None else None

    def _listing(self) -> dict[str, dict[str, Any]]:
        with self._listing_lock:
            if self._listed is None:
                from qwenvl.backends.dashscope import served_models

                self._listed = served_models(self.base_url, self._listing_key(), region=self.region)
            return self._listed

    @property
    def backend(self) -> B:
        """The backend that answers (made on first use); ``Client`` and ``AsyncClient`` say which kind.

        Raises NotImplementedError here: each client defines it."""
        raise NotImplementedError

    def local_options(self) -> dict[str, Any]:
        """The options a local backend is made with (``qwenvl.backends.make_backend``'s keywords: engine, family,
        device, dtype, attn_implementation as given, ``base_url``, ``api_key``, the default ``model``): the one
        builder of a backend's options from a client's, for this client and for ``backends.preflight``. Raises
        nothing."""
        return dict(
            self._backend_options, base_url=self.base_url, api_key=self._api_key, model=self.defaults.get("model")
        )

    def resolve_model(self, name: str | None = None) -> ModelInfo:
        """The rules (family, pixel factor, budget, grounding convention) of the model a request would use:
        ``name``, else the client's default model, else (local backends) the one the backend serves.

        DashScope models come from the table in ``qwenvl.models`` (an unknown name gets rules guessed from the
        name, ``known=False``). Raises UsageError for invalid client defaults; a local backend may raise
        APIError (its server cannot be asked) or UsageError (no model given)."""
        name = name or self.defaults.get("model")
        if self._dashscope:
            name = name or DEFAULT_MODEL
            self.served_name(name)  # a name a server in front of a local engine does not serve: refused now
            return self.served_model(name) or model_info(name)
        from qwenvl.backends import local_model

        fields: dict[str, Any] = {"model": name} if name else {}
        return local_model(self.backend, self.request(prompt="?", **fields))

    def preview(self, call: Call, *, stream: bool = False) -> dict[str, Any]:
        """The dry run of ``call`` (``qwenvl.preview``): what would be sent where, with estimates; nothing is sent.

        Returns ``{"url", "method", "headers" (the key shown as ***, or that none was found), "body" (long
        strings shortened), "media" (each item's size, bytes and tokens), "estimate" (input tokens, max output
        tokens, cost)}``.
        Raises nothing for a planned call (no key is needed; a key's place that cannot be read is said in the
        ``Authorization`` header shown)."""
        from qwenvl.preview import preview

        backend = None if self._dashscope else self.backend  # made by plan() already
        shown = preview(
            call,
            protocol=self.protocol,
            base_url=self.base_url,
            region=self.region,
            stream=stream,
            backend=backend,
            paid=self.serves_paid(call.request.model),
        )
        if backend is None:  # "Bearer ***" would say a key was found
            try:
                found = find_api_key(self._api_key)
            except QwenVLError as exc:  # a damaged key file: the dry run needs no key, but says so
                shown["headers"]["Authorization"] = f"(the key cannot be read: {exc.message})"
            else:
                if found is None:
                    shown["headers"]["Authorization"] = "(no DashScope API key found: it would not be sent)"
        return shown

    def request(self, request: Request | dict[str, Any] | None = None, **fields: Unpack[RequestFields]) -> Request:
        """A validated ``Request`` from ``request`` (a Request or a dict) and keyword ``fields`` (which win), with
        the client's defaults (``model``, ``timeout_s``, ``max_retries``, ``retry_backoff_s``) where unset.

        Raises UsageError (one line naming each invalid field), SchemaDefinitionError (an invalid ``schema``)."""
        return make_request(request, fields, self.defaults)

    def plan(
        self,
        request: Request | dict[str, Any] | None = None,
        *,
        estimate_only: bool = False,
        **fields: Unpack[RequestFields],
    ) -> Call:
        """Everything up to the wire, without sending: validated request, messages, prepared media.

        Media are checked and prepared as the model's budget asks (resized, encoded, video frames sampled, PDF
        pages rendered: ``qwenvl.media``); the ``Call`` is what ``send`` sends and ``preview`` shows.
        ``estimate_only=True``: media checked and sized from their headers, not prepared (fast); the Call
        gives sizes and tokens and cannot be sent (``send`` raises UsageError).

        Raises UsageError (invalid fields, an ability the model lacks, a misspelt ``extra`` name:
        ``qwenvl.plan.check_extra``, a prompt that names a file beside a "file" that is text: the arguments look
        swapped, ``media.sources.looks_swapped``), ClientClosedError (after close), SchemaDefinitionError,
        MediaError (a file or URL that cannot be sent: missing, unreadable, too large, an unknown format), and for local
        backends APIError when their server must be asked about the model."""
        self._check_open()
        req: Request = self.request(request, **fields)
        videos: list[object] = list(req.video) if isinstance(req.video, list) else [req.video]
        swapped = looks_swapped(req.prompt, [*req.image_list(), *videos])
        if swapped is not None and req.prompt is not None:  # "file not found: What is this?" would mislead
            raise swapped_error(req.prompt, swapped)
        if self._dashscope:  # a served local model's rules when its server says them (``served_model``)
            served = self.served_name(req.model)  # the server's own name: not checked against the table's spellings
            model = self.served_model(req.model)
            call = plan(
                req, self.protocol, estimate_only=estimate_only, model=model, prepared=self.prepared, served=served
            )
            self._check_upload(call)
            return call
        backend = self.backend
        if hasattr(backend, "adapt"):
            req = backend.adapt(req)
        model = backend.model_info(req.model) if hasattr(backend, "model_info") else None
        media_form = getattr(backend, "media_form", "data-url")
        call = plan(
            req, self.protocol, estimate_only=estimate_only, model=model, media_form=media_form, prepared=self.prepared
        )
        check_params = getattr(backend, "check_params", None)
        if check_params is not None:  # what the backend cannot take: refused by a plan as by sending
            check_params(call.request)
        return call

    def _check_upload(self, call: Call) -> None:
        """What sending ``call`` to DashScope would refuse whatever its sizes (the upload mode, temporary storage:
        ``qwenvl.backends.oss.check_upload``), refused at planning, so that a dry run, an estimate and a batch's plan
        refuse it as sending does. The region and protocol are those of the backend given, else of the one this
        client makes (``backends.dashscope.storage_region``); no key is needed."""
        from qwenvl.backends import oss
        from qwenvl.backends.dashscope import storage_region

        given = self._backend if self._given_backend else None
        region = getattr(given, "region", None) or getattr(getattr(given, "_sync", None), "region", None)
        if region is None:
            url = resolve_base_url(self.protocol, region=self.region, base_url=self.base_url)  # type: ignore[arg-type]
            region = storage_region(url, self.region)
        oss.check_upload(call, self.protocol, region)

    def _key(self) -> KeyFound:
        """The DashScope key (``qwenvl.config.require_api_key``). MissingAPIKeyError when none is found; when the
        endpoint is not DashScope's own (e.g. a ``qwenvl serve --no-auth``), its hint says that such a server
        takes any key (``config.other_endpoint_key_hint``)."""
        url = resolve_base_url(self.protocol, region=self.region, base_url=self.base_url)  # type: ignore[arg-type]
        return require_api_key(self._api_key, endpoint=url)

    def check_key(self) -> None:
        """Raises MissingAPIKeyError now (nothing is sent, nothing is read but the key's places) when requests
        will go to DashScope and no key is found (``qwenvl.config.find_api_key``); a no-op for local backends
        (they need no DashScope key) and once the backend is made. For callers about to do slow or interactive
        work before their first request (the CLI's verbs, ``qwenvl chat``'s banner)."""
        if self._dashscope and self._backend is None:
            self._key()

    def _retried(self, notice: RetryNotice) -> None:
        """The hook a backend this client makes is given: ``on_retry`` is told (not for an attempt that ``close()``
        cut). The attempt is logged by the exchange being sent, whatever the backend (``qwenvl.retry.tell``), once;
        one that ``close()`` cut is logged once, as ``cancelled``. During the close's wait the connections are still
        open: an attempt retried then is told and logged as any other."""
        if self._cutting:
            return
        if self.on_retry is not None:
            self.on_retry(notice)

    def _close_stores(self) -> None:
        """Commit the usage log's queued rows and close the stores this client opened."""
        for store in self._own_stores:
            store.close()


class Client(_Base[Backend, "httpx.Client"]):
    """Synchronous client. Thread-safe for concurrent requests (httpx pools connections).

    Options (all keyword-only, all optional):

    - ``api_key``: the DashScope key; default: ``$DASHSCOPE_API_KEY``, then ``./.env``, the file named by
      ``$DASHSCOPE_API_KEY_FILE_PATH``, ``~/.alibabacloud/credentials`` (``dashscope_api_key``) and
      ``~/.dashscope/api_key`` (``qwenvl.config.find_api_key``; the official SDK's places, dashscope-api.md
      §1.2, §2.5). Looked up when the first request is sent, not here.
    - ``protocol``: ``"compat"`` (DashScope's OpenAI-compatible mode, default), ``"native"`` (DashScope's own
      API) or ``"openai"`` (plain OpenAI, for other servers); default ``$QWENVL_PROTOCOL``.
    - ``region``: ``"cn"`` (Beijing, default), ``"intl"`` (Singapore) or ``"us"`` (Virginia); default
      ``$QWENVL_REGION``. Beijing and Singapore keys differ (dashscope-api.md §2.5). It also picks the currency
      of cost estimates (CNY in Beijing, USD elsewhere: ``qwenvl.models``).
    - ``base_url``: the endpoint itself (a proxy, a loopback test server); wins over ``region``.
    - ``model``: the default model of every request (default ``$QWENVL_MODEL``, else ``qwen3-vl-plus``, the
      skill's default, dashscope-api.md §1.2).
    - ``timeout_s`` (seconds, default 120: a whole plain attempt, or a stream's wait for each event;
      ``qwenvl.transport``), ``max_retries`` (default 2) and ``retry_backoff_s``
      (seconds, the exponential base, default 1.5): defaults for the requests that do not set them (the skill's
      ``multimodal.chat`` values; the retry policy is ``qwenvl.retry``: 429, 500, 502-504 and connection errors).
    - ``http_client``: an ``httpx.Client`` (``httpx.AsyncClient`` for ``AsyncClient``) to send through.
    - ``backend``: ``"dashscope"`` (default), ``"openai"`` (any OpenAI-compatible server at ``base_url``: vLLM,
      SGLang, llama.cpp, Ollama; ``engine`` auto|vllm|sglang|llamacpp|ollama|qwenvl|generic, ``family``
      qwen2.5-vl|qwen3-vl when the served name does not say), ``"transformers"`` (the model loaded in this
      process from a hub id or folder given as ``model``; ``device``, ``dtype``, ``attn_implementation``), or a
      backend instance. Default from ``QWENVL_BACKEND``; ``protocol="openai"`` alone also means the openai
      backend. Local backends need no DashScope key (``api_key`` is then the server's key, optional).
    - ``cache``: off by default; ``True`` (``responses.db`` in ``$QWENVL_CACHE_DIR``, else the user cache
      folder, ``~/.cache/qwenvl`` on Linux), a path or a ``ResponseCache``: an identical non-streamed request
      is answered from it, and not paid twice (``Response.cached``, ``requests`` 0); one sent while the same
      is in flight in this process waits for that answer (at most its own time-out and retries). Only whole,
      valid answers are stored: never one cut off, filtered, empty or failing its structured-output check
      (``qwenvl.store.cache``).
    - ``usage_log``: None (default: ``usage.db`` in ``$QWENVL_HOME``, else ``~/.local/share/qwenvl`` on Linux, unless
      ``$QWENVL_LOG=0``), True (on even then), False, a path or a ``UsageLog``: each attempt that reached the
      service (answered, failed, retried or cancelled) with its tokens and cost, for ``qwenvl usage``. A store
      made from True, None or a path is the client's and is closed with it; a store object given here stays its
      owner's (``qwenvl.store``).
    - ``on_retry``: called with a ``qwenvl.retry.RetryNotice`` before each retry's wait.

    Attributes: ``protocol``, ``region``, ``base_url``, ``backend_name``, ``defaults`` (the request defaults
    above that were given), ``cache``, ``on_retry``, ``prepared`` (the media this client prepared, by content,
    at most 32 MB: ``qwenvl.media.prepare.PreparedCache``; a history's images, videos and PDFs are not prepared
    again on each turn, only read and hashed; the files ``fetch_urls`` downloaded, by URL, each downloaded once;
    ``prepared.clear()`` empties it), ``account`` (a hash of the key in use and DashScope's URL: what the response
    cache keeps answers apart by).

    Use it as a context manager, or call ``close()``, to close its connections.

    Raises UsageError for an unknown keyword (naming the closest), protocol, region or backend name (each with
    the one meant, ``qwenvl.spelling``), a backend object without ``complete``, ``stream`` and ``close`` (or an
    async one), an ``http_client`` that is not an ``httpx.Client``, an ``on_retry`` that is not callable, a
    ``cache`` or ``usage_log`` of another type, or the dashscope backend with ``protocol="openai"``. A missing
    key is raised later, by the first request (MissingAPIKeyError).
    """

    @property
    def backend(self) -> Backend:
        """The backend that answers, made on first use: ``DashScopeBackend`` (the protocol's endpoint, with the
        retry policy) unless another backend was chosen.

        Raises MissingAPIKeyError (DashScope, no key found), UsageError (a local backend's missing options, or
        ``transformers`` without torch and transformers installed: ``pip install "qwenvl[local]"``)."""
        with self._lock:  # made once, whichever thread asks first
            return self._made_backend()

    def _made_backend(self) -> Backend:
        if self._backend is None:
            if not self._dashscope:
                from qwenvl.backends import make_backend

                self._backend = make_backend(
                    self.backend_name, http_client=self._http_client, on_retry=self._retried, **self.local_options()
                )
                return self._backend
            from qwenvl.backends.dashscope import DashScopeBackend

            found = self._key()
            self._backend = DashScopeBackend(
                found.key,
                key_source=found.source,
                protocol=self.protocol,
                base_url=self.base_url,
                region=self.region,
                http_client=self._http_client,
                on_retry=self._retried,
            )
        return self._backend

    def close(self, *, wait_s: float | None = None) -> None:
        """Close the backend's connections (a no-op when no request was made) and the stores this client
        opened (its usage log's queued rows are written first). Every later call raises ClientClosedError; closing
        again does nothing. Raises nothing (but a KeyboardInterrupt during the wait, after closing).

        Calls in flight in other threads: a whole-answer one (``complete``, ``ask``, ``send``, a structured
        repair included) is waited for, at most ``wait_s`` seconds (default ``CLOSE_WAIT_S``, 30 s,
        ``qwenvl._constants``; 0: not at all), and answers as usual; one still going then, and any stream being
        read, is cancelled: its connection is closed, it raises ClientClosedError (chained from what the
        connection raised) and is in the usage log as ``cancelled``. A ``wait_s`` that is not a number of seconds
        from 0 up to a day (``types.seconds``) raises UsageError naming it, and the client stays open."""
        waited = CLOSE_WAIT_S if wait_s is None else seconds(wait_s, "wait_s", zero=True)  # before closing
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_wait_s = waited
        try:
            self._wait_idle(self._close_wait_s)
        finally:
            self._cutting = True
            try:
                if self._backend is not None:
                    self._backend.close()
            finally:
                if self._stores_now():
                    self._close_stores()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self, request: Request | dict[str, Any] | None = None, /, **fields: Unpack[RequestFields]) -> Response:
        """Plan and send one request: ``client.complete(prompt="...", image="a.jpg")`` or ``complete(Request(...))``.

        ``fields`` are ``Request`` fields and win over ``request``'s. Returns the ``Response`` (``text``, ``usage``
        in tokens, ``json`` for structured output, ``messages`` for the next turn). With ``stream=True`` the
        answer is streamed and assembled; a failed attempt is retried ``max_retries`` times (default 2) on 429,
        500, 502-504 and connection errors (``qwenvl.retry``).

        Raises UsageError (invalid fields), MediaError (media that cannot be sent; before any request),
        MissingAPIKeyError (no key), AuthenticationError / PermissionDeniedError (401 / 403), BadRequestError
        (400), NotFoundError (404), RateLimitError (429, after the retries), InternalServerError (5xx, after the
        retries), APIConnectionError / APITimeoutError (no answer within ``timeout_s``, after the retries),
        MalformedResponseError (an unreadable reply), StreamInterruptedError (a stream broken midway), and
        StructuredOutputError (``json_mode``/``schema``: the answer is not valid JSON even after one repair
        request, or ``repair=False``, or the repair request failed; the answer is in ``.response``)."""
        call = self.plan(request, **fields)
        return self.send(call)

    def send(self, call: Call) -> Response:
        """Send a planned call; with ``stream=True`` in the request the answer is streamed and assembled.

        Structured output (``json_mode``/``schema``) is parsed and checked; an invalid answer is sent back once
        for repair (a second paid request) unless ``repair=False``. A repair request that fails (the service, the
        network) raises StructuredOutputError for the first answer (kept: ``raw_text``, ``response``), chained from
        that error; an interrupt during it (KeyboardInterrupt, or a cancelled task for AsyncClient) is
        raised as it is, the first answer's StructuredOutputError on it (``qwenvl.client.unrepaired(exc)``). With
        ``Client(cache=...)`` an identical call is answered from the cache (``Response.cached``), or waits for
        the identical call in flight: gets its answer, or raises the error it failed with (a copy, ``.shared``
        True: nothing sent), or sends it itself when that call was cancelled; APITimeoutError (``.shared``) when the
        wait takes longer than this call's own time-out and retries. Every attempt that reached the service is
        written to the usage log: a retried or failed one as its error, an interrupted one as ``cancelled``
        (``qwenvl.store.exchange``).

        Raises UsageError (a call planned with ``estimate_only``), MissingAPIKeyError, APIError and its
        subclasses (as ``complete``, after the retries), StructuredOutputError (as ``complete``), ClientClosedError
        (after ``close()``, or when ``close()`` cancelled it: see ``close``)."""
        self._begin_call()
        try:
            if call.request.stream:
                return assembled(self.send_stream(call))
            with exchange.Held() as held:  # the key stays claimed until the repair's outcome: waiters get it
                first, retry = _check(call, self._complete(call, held))
                if retry is None:
                    return first
                final = _after_repair(first, retry, self._repair(first, retry))
                exchange.remember(self, call, final)  # the call's own key: not sent and repaired again
                return final
        finally:
            self._end_call()

    def _repair(self, first: Response, retry: Call) -> Response:
        """The repair request's answer; its failure or an interrupt keeps ``first`` (``_repair_failed``)."""
        try:
            return self._complete(retry)
        except BaseException as exc:
            error = _repair_failed(first, retry, exc)
            if error is not None:
                raise error from exc
            raise

    def _complete(self, call: Call, held: exchange.Held | None = None) -> Response:
        """One backend call: answered from the cache when enabled (after waiting for an identical call in flight),
        and written to the usage log, whatever ends it (``qwenvl.store.exchange``); ``held`` keeps its key claimed
        once answered."""
        with exchange.begin(self, call, keep=_valid(call), held=held) as ex:  # a hit is in ex.response
            if ex.response is None:
                backend = self.backend
                # a failure, an interrupt, a retried attempt: logged; close() cutting it: ClientClosedError
                with ex.sending(self._closed_midway):
                    ex.done(backend.complete(call))
            assert ex.response is not None
            return ex.response

    def stream(
        self, request: Request | dict[str, Any] | None = None, /, **fields: Unpack[RequestFields]
    ) -> Generator[StreamEvent, None, None]:
        """Plan a request and stream its answer: ``StreamEvent``s of type ``"reasoning"`` and ``"text"`` (deltas,
        in order), then one ``"done"`` event whose ``response`` is the whole ``Response`` (as ``complete``).

        The request is planned (and planning errors raised) now; nothing is sent until the iterator is read. A
        generator: to stop reading before the end, close it (``with contextlib.closing(client.stream(...)) as
        events:``, or ``events.close()``), which closes its connection (a local generation stops) and logs it
        ``cancelled`` at once rather than when it is garbage-collected.
        Raises what ``plan`` raises now, then while iterating what ``send_stream`` raises."""
        call = self.plan(request, **fields)
        return self.send_stream(call)

    def send_stream(self, call: Call) -> Generator[StreamEvent, None, None]:
        """Stream a planned call: ``"reasoning"``/``"text"`` delta events, then one ``"done"`` event with the
        whole ``Response`` (structured output checked and, if need be, repaired as in ``send``). Never cached.

        A failure before the first delta is retried as in ``send``; once text has arrived it is not. A stream the
        caller stops reading (closes it, or an exception such as Ctrl-C ends the loop) is still in the usage log,
        as outcome ``cancelled`` (its tokens unknown).
        Raises (while iterating) UsageError (an ``estimate_only`` call), MissingAPIKeyError, APIError and its
        subclasses, StreamInterruptedError (the stream broke midway; ``.partial_text`` keeps what arrived),
        StructuredOutputError, ClientClosedError (after ``close()``, or when ``close()`` cut the stream)."""
        self._begin_call(stream=True)
        try:
            yield from self._stream(call)
        finally:
            self._end_call(stream=True)

    def _stream(self, call: Call) -> Generator[StreamEvent, None, None]:
        ex, backend = exchange.begin(self, call, stream=True), self.backend
        with ex.sending(self._closed_midway):  # an error as its type; a reader that stops (closes, Ctrl-C) as cancelled
            for event in backend.stream(call):
                if event.type != "done":
                    yield event
                    continue
                assert event.response is not None
                first, retry = _check(call, ex.done(event.response))
                if retry is not None:
                    first = _after_repair(first, retry, self._repair(first, retry))
                yield StreamEvent(type="done", response=first)

    def ask(self, prompt: str, *files: MediaInput, **fields: Unpack[AskFields]) -> Response:
        """One question about zero or more images: ``client.ask("What is this?", "a.jpg", Path("b.png"))``.

        Images are paths (``str`` or ``os.PathLike``), ``file://``, ``data:``, ``http(s)://`` or ``oss://``
        references, or images as bytes (their type told by their content) or PIL images (encoded as qwenvl
        encodes images); ``fields`` are any other ``Request`` fields. Same as ``complete(prompt=prompt,
        images=[...], **fields)``, and raises what ``complete`` raises (UsageError, MediaError, APIError and its
        subclasses, StructuredOutputError); arguments that look swapped (``ask("photo.png", "What is this?")``)
        are a UsageError saying so."""
        return self.complete(**_ask_fields(prompt, files, dict(fields)))


def _ask_fields(prompt: str, images: tuple[MediaInput, ...], fields: dict[str, Any]) -> dict[str, Any]:
    """``ask``'s request fields: the images given as arguments, or as ``images=`` (then validated as a Request's:
    a lone string is refused saying images takes a list), never both (UsageError)."""
    if "images" in fields:
        if images:
            raise UsageError(
                "images given twice: as arguments and as images=",
                hint='Give them one way: ask("What is this?", "a.png", "b.png") or ask(..., images=["a.png"]).',
            )
        return {"prompt": prompt, **fields}
    for position, item in enumerate(images, start=1):
        if not _media_object(item):
            raise UsageError(
                f"ask's file {position} (argument {position + 1}, after the prompt) is {_a_type(item)}: a file is a "
                "path (str or os.PathLike), a URL, bytes or a PIL image",
                hint='Give files after the prompt: ask("What is this?", "a.png", Path("b.jpg"), pil_image); for a '
                "numpy array, Image.fromarray(array) makes a PIL image.",
            )
    return {"prompt": prompt, "images": list(images), **fields}


def _media_object(value: Any) -> bool:
    """Whether ``value`` is something ``ask`` takes as a file (``MediaInput``): a str, an ``os.PathLike``, bytes
    (a bytearray, a memoryview) or a PIL image. Raises nothing."""
    if isinstance(value, str | os.PathLike | bytes | bytearray | memoryview):
        return True
    from PIL import Image

    return isinstance(value, Image.Image)


def _a_type(value: Any) -> str:
    """``None``, or "a value of type ndarray": what a message names a value by. Raises nothing."""
    return "None" if value is None else f"a value of type {type(value).__name__}"


class AsyncClient(_Base[AsyncBackend, "httpx.AsyncClient"]):
    """asyncio client with the same methods as Client (``await client.complete(...)``).

    Media are prepared in a worker thread (``asyncio.to_thread``: decoding, resizing and encoding, video
    sampling, PDF rendering and ``fetch_urls`` downloads), so the event loop keeps running meanwhile; the
    heavy parts (Pillow, PyAV, pdfium) release the GIL. ``plan()`` itself stays synchronous.

    ``AsyncClient(**options)``: the options of ``Client`` (``http_client`` is then an ``httpx.AsyncClient``). Use
    ``async with``, or ``await aclose()``, to close its connections.

    Raises UsageError for an unknown keyword (naming the closest), protocol, region or backend name, a backend
    object without ``complete``, ``stream`` and ``aclose`` (or a synchronous one), an ``http_client`` that is not
    an ``httpx.AsyncClient``, and as ``Client`` for the other options; a missing key is raised by the first
    request (MissingAPIKeyError)."""

    _BACKEND_METHODS = ("complete", "stream", "aclose")
    _loop: asyncio.AbstractEventLoop | None = None  # the event loop this client sends in now (``_ready``)
    _loop_guard: AsyncGenerator[None, None] | None = None  # closed when that loop shuts down (``_loop_end``)

    @property
    def backend(self) -> AsyncBackend:
        """The asynchronous backend that answers, made on first use (``AsyncDashScopeBackend`` unless another
        backend was chosen).

        Raises MissingAPIKeyError (DashScope, no key found), UsageError (a local backend's missing options, or
        ``transformers`` without torch and transformers installed: ``pip install "qwenvl[local]"``)."""
        with self._lock:  # made once, whichever task or thread asks first
            return self._made_backend()

    def _made_backend(self) -> AsyncBackend:
        if self._backend is None:
            if not self._dashscope:
                from qwenvl.backends import make_backend

                self._backend = make_backend(
                    self.backend_name,
                    asynchronous=True,
                    http_client=self._http_client,
                    on_retry=self._retried,
                    **self.local_options(),
                )
                return self._backend
            from qwenvl.backends.dashscope import AsyncDashScopeBackend

            found = self._key()
            self._backend = AsyncDashScopeBackend(
                found.key,
                key_source=found.source,
                protocol=self.protocol,
                base_url=self.base_url,
                region=self.region,
                http_client=self._http_client,
                on_retry=self._retried,
            )
        return self._backend

    async def _ready(self) -> AsyncBackend:
        """The backend; made in a worker thread the first time (importing httpx takes a while).

        Connections belong to the event loop they were opened in (httpx's pool). A backend this client made is
        made again for each new loop: when ``asyncio.run()`` ends, its connections are closed in their own loop
        (``_loop_end``), so one AsyncClient serves one ``asyncio.run()`` after another (a backend object given is
        its owner's, used as it is). Raises ClientClosedError after ``aclose()``, and in a new loop while the
        first is still open (two loops at once, e.g. ``asyncio.run`` in two threads: the check and the binding are
        one step, under the client's lock) or when an ``http_client`` was given (it cannot be made again)."""
        self._check_open()
        loop = asyncio.get_running_loop()
        if self._enter_loop(loop):
            guard = self._loop_end(loop)
            await guard.__anext__()  # suspended until the loop shuts down (asyncio.run: shutdown_asyncgens)
            self._loop_guard = guard
        if self._backend is not None:
            return self._backend
        return await asyncio.to_thread(lambda: self.backend)

    @property
    def _remakeable(self) -> bool:
        """Whether the backend is this client's to make again in a new loop (no backend object or http_client
        given)."""
        return not self._given_backend and self._http_client is None

    def _enter_loop(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Bind to ``loop`` (True: newly bound; False: bound already); ClientClosedError when another loop, still
        open, holds the client (its connections are made or being made there), or when the connections of a
        closed one are held by an ``http_client`` given, which cannot be made again. One step under the lock:
        two threads' loops never both pass."""
        with self._lock:
            self._check_open()
            old = self._loop
            if old is loop:
                return False
            if old is not None and not self._given_backend:
                if not old.is_closed() or (self._backend is not None and not self._remakeable):
                    raise ClientClosedError(
                        "this AsyncClient's connections belong to another event loop"
                        + ("" if old.is_closed() else ", still open"),
                        hint="Use one AsyncClient per event loop: make it inside the coroutine that asyncio.run() "
                        "runs (async with qwenvl.AsyncClient() as client: ...).",
                    )
                if self._remakeable:
                    self._backend = None  # its loop closed without shutting down (not asyncio.run): made again
            self._loop = loop
            return True

    async def _loop_end(self, loop: asyncio.AbstractEventLoop) -> AsyncGenerator[None, None]:
        """Suspended for the life of ``loop``; the loop's shutdown (``asyncio.run``: ``shutdown_asyncgens``, before
        it closes the loop) closes it, and with it the connections of the backend this client made, in their own
        loop. The next loop makes a new backend."""
        try:
            yield
        finally:
            with self._lock:
                backend = self._backend if self._loop is loop else None
                if self._loop is loop:
                    self._loop = None if self._remakeable or self._given_backend else self._loop
                    if self._remakeable:
                        self._backend = None
                    else:
                        backend = None
            if backend is not None and not self._closed:
                await backend.aclose()

    async def aclose(self, *, wait_s: float | None = None) -> None:
        """Close the backend's connections (a no-op when no request was made) and the stores this client
        opened (its usage log's queued rows are written first). Every later call raises ClientClosedError;
        closing again does nothing. Raises nothing.

        Calls in flight (in this loop's other tasks, or in the loop of another thread): a whole-answer one
        (``complete``, ``ask``, ``send``) is waited for, at most ``wait_s`` seconds (default ``CLOSE_WAIT_S``, 30 s,
        ``qwenvl._constants``; 0: not at all), and answers as usual; one still going then, and any stream being
        read, is cancelled: its connection is closed, it raises ClientClosedError and is in the usage log as
        ``cancelled``. Connections of a loop in another thread are closed in that loop. A ``wait_s`` that is not a
        number of seconds from 0 up to a day raises UsageError naming it (``Client.close``)."""
        waited = CLOSE_WAIT_S if wait_s is None else seconds(wait_s, "wait_s", zero=True)  # before closing
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_wait_s = waited
        given_up = threading.Event()  # set when this close is cancelled: the worker thread's wait ends with it
        try:
            # the calls may run in this loop: it goes on meanwhile, the wait (the sync close's) in a worker thread
            await asyncio.to_thread(self._wait_idle, self._close_wait_s, given_up)
        finally:
            given_up.set()
            with self._lock:
                self._idle.notify_all()
            self._cutting = True
            with self._lock:
                backend, loop = self._backend, self._loop
            try:
                if backend is not None:
                    await self._close_in(backend, loop)
            finally:
                if self._stores_now():
                    await asyncio.to_thread(self._close_stores)  # it waits for the log's writer thread

    async def _close_in(self, backend: AsyncBackend, loop: asyncio.AbstractEventLoop | None) -> None:
        """``backend.aclose()`` in the loop its connections belong to: this one, or the open loop of another thread
        (waited for at most ``CLOSE_WAIT_S``); nothing when that loop is closed (they were closed with it)."""
        here = asyncio.get_running_loop()
        if loop is None or loop is here or self._given_backend:
            await backend.aclose()
        elif not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(backend.aclose(), loop)
            with contextlib.suppress(Exception):  # its loop ended meanwhile: closed with it
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await asyncio.wrap_future(future)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def complete(
        self, request: Request | dict[str, Any] | None = None, /, **fields: Unpack[RequestFields]
    ) -> Response:
        """``Client.complete``, awaited: plan (in a worker thread) and send one request; returns the ``Response``.

        Raises what ``Client.complete`` raises: UsageError, MediaError, MissingAPIKeyError, APIError and its
        subclasses (after the retries: 429, 500, 502-504, connection errors), StructuredOutputError."""
        call = await asyncio.to_thread(self.plan, request, **fields)
        return await self.send(call)

    async def send(self, call: Call) -> Response:
        """``Client.send``, awaited: send a planned call (streamed and assembled with ``stream=True``).

        Raises UsageError (an ``estimate_only`` call), MissingAPIKeyError, APIError and its subclasses,
        StructuredOutputError (as ``Client.send``), ClientClosedError (after ``aclose()``, or in another event
        loop, or when ``aclose()`` cancelled it: see ``aclose``)."""
        self._begin_call()
        try:
            if call.request.stream:
                return await aassembled(self.send_stream(call))
            with exchange.Held() as held:  # the key stays claimed until the repair's outcome: waiters get it
                first, retry = _check(call, await self._complete(call, held))
                if retry is None:
                    return first
                final = _after_repair(first, retry, await self._repair(first, retry))
                exchange.remember(self, call, final)  # the call's own key: not sent and repaired again
                return final
        finally:
            self._end_call()

    async def _repair(self, first: Response, retry: Call) -> Response:
        """``Client._repair``, async (a cancelled task keeps ``first`` on its CancelledError)."""
        try:
            return await self._complete(retry)
        except BaseException as exc:
            error = _repair_failed(first, retry, exc)
            if error is not None:
                raise error from exc
            raise

    async def _complete(self, call: Call, held: exchange.Held | None = None) -> Response:
        with await exchange.abegin(self, call, keep=_valid(call), held=held) as ex:  # a hit is in ex.response
            if ex.response is None:
                backend = await self._ready()
                # a failure, a cancelled task, a retried attempt: logged; aclose() cutting it: ClientClosedError
                with ex.sending(self._closed_midway):
                    ex.done(await backend.complete(call))
            assert ex.response is not None
            return ex.response

    async def stream(
        self, request: Request | dict[str, Any] | None = None, /, **fields: Unpack[RequestFields]
    ) -> AsyncGenerator[StreamEvent, None]:
        """``Client.stream``, async: ``"reasoning"``/``"text"`` delta events, then one ``"done"`` event with the
        ``Response``. Planned when iteration starts (in a worker thread). An async generator: to stop reading
        before the end, close it (``async with contextlib.aclosing(client.stream(...)) as events:``, or ``await
        events.aclose()``): its connection is closed (a local generation stops) and it is logged ``cancelled`` at
        once; a ``break`` alone leaves that to the event loop's finaliser, a moment later.

        Raises (while iterating) what ``plan`` and ``send_stream`` raise: UsageError, MediaError,
        MissingAPIKeyError, APIError and its subclasses, StreamInterruptedError, StructuredOutputError."""
        call = await asyncio.to_thread(self.plan, request, **fields)
        # closed with this one (a reader that stops): its connection at once, and its usage log row
        async with contextlib.aclosing(self.send_stream(call)) as events:
            async for event in events:
                yield event

    async def send_stream(self, call: Call) -> AsyncGenerator[StreamEvent, None]:
        """``Client.send_stream``, async: delta events, then one ``"done"`` event with the whole ``Response``.

        Raises (while iterating) UsageError (an ``estimate_only`` call), MissingAPIKeyError, APIError and its
        subclasses, StreamInterruptedError (``.partial_text`` keeps what arrived), StructuredOutputError,
        ClientClosedError (after ``aclose()``, in another event loop, or when ``aclose()`` cut the stream)."""
        self._begin_call(stream=True)
        try:
            async with contextlib.aclosing(self._stream(call)) as events:
                async for event in events:
                    yield event
        finally:
            self._end_call(stream=True)

    async def _stream(self, call: Call) -> AsyncGenerator[StreamEvent, None]:
        ex, backend = exchange.begin(self, call, stream=True), await self._ready()
        events = backend.stream(call)
        try:
            # an error as its type; a reader that stops (closes, a cancelled task) as cancelled; aclose() cutting it:
            # ClientClosedError
            with ex.sending(self._closed_midway):
                async for event in events:
                    if event.type != "done":
                        yield event
                        continue
                    assert event.response is not None
                    first, retry = _check(call, ex.done(event.response))
                    if retry is not None:
                        first = _after_repair(first, retry, await self._repair(first, retry))
                    yield StreamEvent(type="done", response=first)
        finally:  # the backend's stream closed now (its connection, a local generation), not when collected
            close = getattr(events, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):  # closing after an error must not raise a second one
                    await close()

    async def ask(self, prompt: str, *files: MediaInput, **fields: Unpack[AskFields]) -> Response:
        """``Client.ask``, awaited: one question about zero or more images (paths, URLs, bytes or PIL images).

        Raises what ``complete`` raises (UsageError, MediaError, APIError and its subclasses,
        StructuredOutputError)."""
        return await self.complete(**_ask_fields(prompt, files, dict(fields)))
