"""The exception tree, one-line hints, and the CLI exit codes (mapped here and nowhere else).

QwenVLError
 ├── UsageError                    bad arguments or request fields            exit 2
 │    ├── SchemaDefinitionError    a schema that is not valid JSON Schema
 │    ├── OptionNotAppliedError    an option that no media of the request reads (.refusal)
 │    └── ClientClosedError        a client used after close(), or in another event loop
 ├── MediaError                    a file or URL that cannot be read or sent  exit 3
 ├── APIError                      the service or the network                 exit 5
 │    ├── APIConnectionError       no connection (dead server, DNS, reset)
 │    │    └── APITimeoutError
 │    ├── APIStatusError           an HTTP error status; .status .code .request_id
 │    │    ├── BadRequestError          400
 │    │    ├── AuthenticationError      401 (and no key at all)            exit 4
 │    │    ├── PermissionDeniedError    403                                exit 4
 │    │    ├── NotFoundError            404
 │    │    ├── ModelNotFoundError       400 or 404 naming a model that does not exist (both of the above)
 │    │    ├── RateLimitError           429
 │    │    └── InternalServerError      5xx
 │    ├── StreamInterruptedError   a stream that broke midway; .partial_text
 │    └── MalformedResponseError   a reply we cannot read
 └── StructuredOutputError         the answer is not valid JSON for the schema; .raw_text  exit 5
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from qwenvl.media.sources import NotApplied
    from qwenvl.types import Response

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_AUTH = 4
EXIT_SERVICE = 5


class QwenVLError(Exception):
    """Base of every error qwenvl raises on purpose: catch it to handle them all.

    Raised only as one of the subclasses below. ``.message`` is the one-line message (``str(exc)``), ``.hint``
    a suggestion for the user (or None), ``.exit_code`` the CLI's exit code (2 usage, 3 input, 4 auth,
    5 service). Message and hint are in the library's words (``qwenvl.wording.library_message`` and
    ``library_hint``: ``pages``, ``timeout_s``, never the CLI's ``--pages``); ``raw_message``, ``as_written()`` and
    ``raw_hint`` keep them as written, in the CLI's flags, for each surface (CLI, serve, MCP) to put in its words."""

    exit_code = EXIT_SERVICE
    default_hint: str | None = None
    # True on the error of an identical request in flight that this call waited for (``Client(cache=...)``): this
    # call sent nothing and paid nothing (``qwenvl.store.exchange.shared_copy``)
    shared: bool = False
    raw_hint: str | None
    raw_message: str

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    @property
    def message(self) -> str:
        """The one-line message in the library's words (``qwenvl.wording.library_message``); ``raw_message`` is it
        as written, naming CLI flags."""
        from qwenvl.wording import library_message

        return library_message(self.raw_message)

    @message.setter
    def message(self, value: str) -> None:
        self.raw_message = value

    def as_written(self) -> str:
        """The whole line ``str()`` shows, as written (in the CLI's flags: ``--pages``), for a surface that puts it
        in its own words (the CLI shows it as it is; ``qwenvl serve`` and the MCP server: ``wording.fit_message``).
        Raises nothing."""
        return self.raw_message

    @property
    def hint(self) -> str | None:
        """The hint in the library's words: what to change named as a keyword argument or request field
        (``timeout_s``, ``base_url``, ``region='cn'``), not as the CLI's flag (``qwenvl.wording.library_hint``).
        ``raw_hint`` is the hint as written, in flags, which each surface (CLI, serve, MCP) puts in its words."""
        if not self.raw_hint:
            return self.raw_hint
        from qwenvl.wording import library_hint

        return library_hint(self.raw_hint)

    @hint.setter
    def hint(self, value: str | None) -> None:
        self.raw_hint = value

    def __repr__(self) -> str:  # what a REPL, a log or a list of errors shows: the library's words, as str()
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its attributes (``status``, ``raw_text``, ``response``...), every subclass alike: rebuilt
        without calling ``__init__`` (whose keyword-only arguments ``BaseException``'s own pickling cannot pass),
        so an error crosses a process boundary (a ``ProcessPoolExecutor`` worker's 401 is raised in the parent as
        the same AuthenticationError, never a BrokenProcessPool). Its ``__cause__``/``__context__`` and
        traceback are not pickled (as for any exception)."""
        return (_rebuilt, (type(self), self.args), dict(self.__dict__))

    def __str__(self) -> str:
        from qwenvl.wording import library_message

        return library_message(self.as_written())


def _rebuilt(cls: type[QwenVLError], args: tuple[Any, ...]) -> QwenVLError:
    """An unpickled QwenVLError of class ``cls`` with ``args``: its attributes are set after, from its pickled
    ``__dict__`` (``QwenVLError.__reduce__``)."""
    exc = cls.__new__(cls)
    exc.args = args
    return exc


def written(exc: BaseException) -> str:
    """An error's line as written (``QwenVLError.as_written``: in the CLI's flags), ``str()`` of any other: what a
    message that wraps it, or a surface that words it its own way, starts from. Raises nothing."""
    return exc.as_written() if isinstance(exc, QwenVLError) else str(exc)


class UsageError(QwenVLError):
    """Raised for bad arguments or request fields, before anything is sent: an invalid ``Request`` field (through
    ``Client``), an unknown protocol, region, backend or model option, an ability the model lacks (e.g.
    high-resolution images on QVQ), or sending a call planned with ``estimate_only``. ``.field`` names the argument
    at fault when the refusal is about one (``"region"`` for an unknown region; None when not said), as data for a
    caller to act on, never to parse from the message. CLI exit code 2."""

    exit_code = EXIT_USAGE
    field: str | None = None

    def __init__(self, message: str, *, hint: str | None = None, field: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


def empty_argument() -> UsageError:
    """The one error for an argument given as "" or only spaces, wherever one is read (every CLI verb's arguments:
    ``qwenvl.cli.common.refuse_blank``; the library's inputs: ``qwenvl.batch.inputs.iter_inputs``): it names
    nothing, never the current folder, the default or the prompt. Exit code 2."""
    return UsageError(
        "an argument is empty: it names nothing",
        hint='Remove it, or check the variable that gave it (an unset "$FILE" is empty).',
    )


def blank_error(
    label: str, name: str, *, required: bool = False, what: str = "a value", left_out: str = "for the default"
) -> UsageError:
    """The one wording of a value given as "" or only spaces where a value is required, library and CLI alike
    (``qwenvl.types.not_blank``, ``qwenvl.cli.common.refuse_blank``): ``"<label> is empty"``, and a hint true for
    the option or parameter ``name``: ``required``, to give ``what`` ("a file"); else to give it or leave it out,
    which does what ``left_out`` says ("for the default (512)", "to not write one"; "": nothing said). A blank
    value never falls back silently to the default, nothing, or the cloud endpoint."""
    if required:
        return UsageError(f"{label} is empty", hint=f"Give {what}: {name} is required.")
    return UsageError(f"{label} is empty", hint=f"Give {what}, or leave {name} out{' ' if left_out else ''}{left_out}.")


class ClientClosedError(UsageError):
    """Raised when a ``Client`` or ``AsyncClient`` is used after ``close()`` / ``aclose()`` (or after its ``with``
    block), and when an ``AsyncClient`` is used in another event loop than the one it first sent in (a second
    ``asyncio.run()``: its connections belong to the first loop); nothing is sent. CLI exit code 2."""


class SchemaDefinitionError(UsageError):
    """Raised when a ``schema`` is not valid JSON Schema (draft 2020-12, checked with ``jsonschema``) or its
    file's content is not JSON (UTF-8); before anything is sent. A schema file that is missing or cannot be
    read is a MediaError. CLI exit code 2."""

    default_hint = "Check the schema with a JSON Schema validator (draft 2020-12)."


class UnsupportedParameterError(UsageError):
    """Raised when a backend cannot honour a request parameter (``Request.extra``, the CLI's ``--param``, a field of a
    request to ``qwenvl serve``), or a value of one, before anything is generated: e.g. ``presence_penalty`` out of
    range or ``logprobs`` true for the transformers backend (``qwenvl.backends.transformers.PARAMS``). ``.param``
    names the parameter as the caller gave it; the message names it and the backend, the hint the CLI's
    ``--param NAME``. ``qwenvl serve`` answers it 400 in the caller's protocol. CLI exit code 2."""

    def __init__(self, message: str, *, param: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.param = param


class OptionNotAppliedError(UsageError):
    """Raised for an option that no media of the request reads (``pages`` without a PDF, ``fps`` without a video,
    ``detail`` without an image...), before anything is sent: refused rather than silently ignored. ``.refusal`` is
    the decision as data (``qwenvl.media.sources.NotApplied``: ``field``, the Request field; ``option``, as the
    caller named it; ``applies``, the kinds of media that read it), for a surface to word or name (``batch``'s flags,
    serve's ``param``), never to parse from the message. CLI exit code 2."""

    def __init__(self, message: str, *, refusal: NotApplied | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.refusal = refusal


class MediaError(QwenVLError):
    """Raised for an image, video or document that cannot be sent, before any request (nothing is paid): a
    missing or unreadable file, an unknown or unsupported format, an image side of 10 px or less or an aspect
    ratio over 200:1, a file over its size limit (10 MB an image as sent; ``qwenvl.models``), a PDF page out of
    range, a URL that cannot be fetched (``fetch_urls``). Also raised for any other file qwenvl reads on a
    user's behalf (a schema, a request file, a requests JSONL, a session) that is missing, a folder, not a
    regular file or unreadable (``qwenvl.media.sources.check_regular``). ``.source`` names the file or URL;
    ``.not_an_image``, for content that is no image Pillow reads, what it is instead: ``"text"`` or ``"unknown"``
    (None for every other error), as data for a caller to word it, never parsed from the message. CLI exit code 3."""

    exit_code = EXIT_INPUT
    not_an_image: Literal["text", "unknown"] | None = None

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        hint: str | None = None,
        not_an_image: Literal["text", "unknown"] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.source = source
        self.not_an_image = not_an_image


class APIError(QwenVLError):
    """Raised (as one of its subclasses) when the service or the network fails a request, after the retries
    (``qwenvl.retry``: 429, 500, 502-504, connection errors and time-outs are retried ``max_retries`` times).
    ``.request_id`` is the service's id when it gave one. CLI exit code 5."""

    exit_code = EXIT_SERVICE

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.request_id = request_id


class APIConnectionError(APIError):
    """Raised when no answer could be had: connection refused or reset, DNS failure, TLS error; after the
    retries. Also when a reply broke off after its status line; a POST answered 200 is then not sent again
    (``qwenvl.retry.may_resend``). The words are qwenvl's, the same sync and async (``qwenvl.transport``).
    ``delivered``: whether the request may have reached the service (False for a connection never made, or a
    time-out connecting: such an attempt was not billed; ``qwenvl.store.exchange`` logs its cost as 0). CLI exit
    code 5."""

    delivered: bool = True
    default_hint = (
        "Check the network, and that a server listens at that URL; it comes from --base-url, else "
        "DASHSCOPE_COMPATIBLE_BASE_URL or DASHSCOPE_HTTP_BASE_URL, else the region (--region)."
    )


class APITimeoutError(APIConnectionError):
    """Raised when an attempt takes longer than the request's ``timeout_s`` (seconds, default 120; for a stream,
    the wait for an event), after the retries (``qwenvl.transport``). ``.delivered``: the request had been sent
    whole when time ran out (the service has it and may bill it: it answers too slowly), False when the time ran
    out connecting or sending. CLI exit code 5."""

    default_hint = "The service took too long; raise the time-out (--timeout) or retry later."
    delivered: bool = False


class APIStatusError(APIError):
    """Raised for an HTTP error status (or the same error as the first event of a stream), as the subclass for
    that status (``status_error``); this class itself for a status with no subclass (e.g. 409, 413).

    ``.status`` (the HTTP status), ``.code`` (the service's error code, e.g. ``invalid_parameter_error``),
    ``.request_id``, ``.body`` (the parsed error body), ``.retry_after`` (seconds, from ``Retry-After``, or
    None). CLI exit code 5 unless a subclass says otherwise."""

    status: int = 0

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        request_id: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
        hint: str | None = None,
        plain: bool = False,
    ) -> None:
        super().__init__(message, hint=hint, request_id=request_id)
        self.status = status
        self.code = code
        self.body = body
        self.retry_after = retry_after
        self.plain = plain  # the message continues "HTTP 502" ("Bad Gateway (an HTML page ...)"), no colon

    def as_written(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(self.code)
        text = " ".join(parts) + (f" {self.raw_message}" if self.plain else f": {self.raw_message}")
        if self.request_id:
            text += f" (request_id {self.request_id})"
        return text


class BadRequestError(APIStatusError):
    """Raised for HTTP 400: the service refused the request (a parameter, the model name, an image it cannot
    read, context too long). Not retried. CLI exit code 5."""

    default_hint = "The service rejected the request: check the model name, parameters and images."


class AuthenticationError(APIStatusError):
    """Raised for HTTP 401: the key is wrong, or belongs to another region (Beijing and Singapore keys differ,
    reference/dashscope-api.md §2.5). Not retried. CLI exit code 4."""

    exit_code = EXIT_AUTH
    default_hint = "Check DASHSCOPE_API_KEY. Beijing (--region cn) and Singapore (--region intl) keys are different."


# Where DashScope's keys are made (Model Studio's "get an API key" page).
KEY_PAGE = "https://help.aliyun.com/zh/model-studio/get-api-key"

# A 401 from a server that is not DashScope's own (a proxy, ``qwenvl serve``): regions do not apply there.
OTHER_SERVER_KEY_HINT = (
    "This server is not DashScope's: give the key it takes as DASHSCOPE_API_KEY (for `qwenvl serve`, the key "
    "set in its QWENVL_SERVE_API_KEY)."
)


def key_refused_hint(source: str | None, *, dashscope: bool = True) -> str | None:
    """A 401's hint naming where the refused key came from (``config.KeyFound.source``, e.g. ``~/.alibabacloud/
    credentials [other]``), so the user fixes that place; for ``"argument"`` (the caller's ``api_key``), that the
    key given was refused and where keys are made; None for ``$DASHSCOPE_API_KEY`` at DashScope, which
    ``AuthenticationError.default_hint`` already names. With ``dashscope=False`` (the server is another one:
    ``config.needs_dashscope_key``) the region sentence is left out and the hint says to give that server's key.
    Raises nothing."""
    if source == "argument":  # the caller gave it: that key was refused, not one of the places keys are read from
        return (
            f"Check the key given as --api-key / api_key: it was refused. Keys are made at {KEY_PAGE}; Beijing "
            "(--region cn) and Singapore (--region intl) keys are different."
            if dashscope
            else "Check the key given as --api-key / api_key: this server (not DashScope's) refused it; give the key "
            "it takes (for `qwenvl serve`, the key set in its QWENVL_SERVE_API_KEY)."
        )
    label = None
    if source is not None and source not in ("argument", "environment DASHSCOPE_API_KEY"):
        label = "DASHSCOPE_API_KEY in .env" if source == ".env DASHSCOPE_API_KEY" else source
    if not dashscope:
        return (
            f"Check {label}: the key in use came from there. {OTHER_SERVER_KEY_HINT}"
            if label
            else (OTHER_SERVER_KEY_HINT)
        )
    if label is None:
        return None
    return (
        f"Check {label}: the key in use came from there. Beijing (--region cn) and Singapore (--region intl) "
        "keys are different."
    )


class MissingAPIKeyError(AuthenticationError):
    """Raised by the first request that needs DashScope when no key is found (the argument,
    ``$DASHSCOPE_API_KEY``, ``./.env``, ``~/.alibabacloud/credentials``, ``~/.dashscope/api_key``); nothing was
    sent. ``.status`` is 0; the hint says where to put a key. CLI exit code 4."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, status=0, hint=hint)

    def as_written(self) -> str:
        return self.raw_message


class PermissionDeniedError(APIStatusError):
    """Raised for HTTP 403: the key may not use this model or workspace. Not retried. CLI exit code 4."""

    exit_code = EXIT_AUTH
    default_hint = "The key has no access to this model or workspace; check the model's authorization."


class NotFoundError(APIStatusError):
    """Raised for HTTP 404: an unknown model or a wrong base URL. Not retried. CLI exit code 5."""

    default_hint = "Check the model name and the base URL."


class ModelNotFoundError(BadRequestError, NotFoundError):
    """Raised when the service says the model does not exist or the key has no access to it: compat
    ``model_not_found`` ("The model `x` does not exist or you do not have access to it."), native
    ``ModelNotFound`` or ``InvalidParameter`` "Model not exist." (reference/dashscope-api.md §2.4; the service has
    been seen answering 400 as well as 404, so it is both a BadRequestError and a NotFoundError; ``.status`` is
    the one received). Not retried; a batch stops at the first one, as at a 401 (every other item would get the
    same answer). CLI exit code 5."""

    default_hint = "Check the model name (--model): `qwenvl models` lists the models qwenvl knows."


class RateLimitError(APIStatusError):
    """Raised for HTTP 429 (rate limit or quota) after the retries, or at once when ``Retry-After`` asks for a
    wait over 20 s (``qwenvl.retry.MAX_RETRY_AFTER_S``; the hint says when to try again). CLI exit code 5."""

    default_hint = "Rate limit or quota reached: retry later, lower concurrency, or raise --max-retries."


class InternalServerError(APIStatusError):
    """Raised for HTTP 5xx after the retries (500, 502, 503 and 504 are retried; others are not). CLI exit
    code 5."""

    default_hint = "The service failed; retry later (--max-retries sets how often qwenvl retries it with backoff)."


class StreamInterruptedError(APIError):
    """Raised when a stream breaks after content arrived (a dropped connection, an error event midway, a stall
    longer than ``timeout_s``, an end without the final event); not retried, since that would pay twice.
    ``.partial_text`` and ``.partial_reasoning`` keep what arrived, ``.code`` the service's error code if it
    sent one, ``.status`` the HTTP status its error event carried (e.g. 500; None for a stream that broke without
    one). CLI exit code 5."""

    default_hint = "The stream broke before the answer was complete; the partial text is kept."

    def __init__(
        self,
        message: str,
        *,
        partial_text: str = "",
        partial_reasoning: str = "",
        request_id: str | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.partial_text = partial_text
        self.partial_reasoning = partial_reasoning
        self.code = code
        self.status = status


class MalformedResponseError(APIError):
    """Raised when a reply cannot be read as the protocol's response: not JSON, missing fields, an HTML page from
    a proxy, a backend's stream without its ``done`` event. ``.status`` is the HTTP status of the reply that could
    not be read (e.g. 200) and ``.request_id`` its ``x-request-id``, when the transport read them (None else).
    CLI exit code 5."""

    default_hint = "The server's reply was not a DashScope response: check --base-url and any proxy."
    status: int | None = None


class StructuredOutputError(QwenVLError):
    """Raised with ``json_mode``/``schema`` when the answer is not valid JSON (for the schema): after the one
    repair request, at once with ``repair=False``, or when the answer was cut off at ``max_tokens`` (no repair:
    it would be cut off again). ``.raw_text`` is the answer, ``.errors`` what is wrong (one line each),
    ``.response`` the last ``Response``, whose ``usage`` counts every request of the call (the repair request
    included: all were paid), ``.requests`` how many requests were paid (1, or 2 after a repair; an answer from the
    response cache was not) and
    ``.request_ids`` the service's ids of those requests, in order (ids the service did not give left out),
    ``.request_id`` the last of them (None when there is none), as an APIError's. CLI exit code 5."""

    default_hint = "The model's answer is kept (shown, and in the error); loosen the schema or rephrase the prompt."

    def __init__(
        self,
        message: str,
        *,
        raw_text: str,
        errors: list[str] | None = None,
        response: Response | None = None,
        hint: str | None = None,
        requests: int = 1,
        request_ids: list[str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.raw_text = raw_text
        self.errors = errors or []
        self.response: Response | None = response
        self.requests = requests
        rid = getattr(response, "request_id", None)
        self.request_ids: list[str] = list(request_ids) if request_ids is not None else ([rid] if rid else [])
        self.request_id: str | None = self.request_ids[-1] if self.request_ids else None  # the last paid


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


def status_error(status: int, message: str, *, model_not_found: bool = False, **kw: Any) -> APIStatusError:
    """The one mapping from an HTTP status to an exception class: 400 BadRequestError, 401 AuthenticationError,
    403 PermissionDeniedError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError, else
    APIStatusError; a 400 or 404 with ``model_not_found`` (the body says the model does not exist:
    ``qwenvl.protocols.common.error_from_body``) is a ModelNotFoundError. Returns the error (it raises nothing
    itself); ``kw`` are APIStatusError's keywords."""
    if model_not_found and status in (400, 404):
        return ModelNotFoundError(message, status=status, **kw)
    cls = _STATUS_CLASSES.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return cls(message, status=status, **kw)


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit code for an exception: its ``exit_code`` for a QwenVLError, else 5. Raises nothing."""
    if isinstance(exc, QwenVLError):
        return exc.exit_code
    return EXIT_SERVICE


E = TypeVar("E", bound=BaseException)


def detached(exc: E) -> E:
    """``exc`` without its tracebacks (its own, and those of its ``__cause__`` and ``__context__`` chain), for an
    error kept as data after it was caught (a batch item's plan error, handed back from a worker thread): a
    traceback holds every frame up to the thread's top, with their locals, and through a ``Future`` that holds the
    error they make a reference cycle, freed only by a full garbage collection. Returns ``exc``; raises nothing."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        err.__traceback__ = None
        err = err.__cause__ or err.__context__
    return exc


# ANSI/VT escape sequences (CSI, OSC, single-character escapes), then any other C0/C1 control character and the
# Unicode bidirectional overrides that can make text display differently from what it is.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]")
# Lone surrogates too: a byte of a name that is not UTF-8 (PEP 383), which no stream can write as it is.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` as one line that is safe to print on a terminal: escape sequences and control characters
    removed, runs of white space (newlines, tabs) made one space. For every string the service provides.
    Raises nothing."""
    text = _ESCAPES.sub("", text)
    text = _CONTROLS.sub(lambda m: " " if m.group() in "\t\n\r\x0b\x0c" else "", text)
    return " ".join(text.split())


# What ``terminal_safe`` shows escaped: every control character but newline and tab, and the bidi overrides.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")  # as Python writes it: \x1b, \n, \u202e


def safe_line(text: object) -> str:
    """``text`` as one line that shows exactly what it holds, safe on a terminal: every control character (ESC,
    newline, tab, CR, BEL, C1 codes) and the Unicode bidirectional overrides shown escaped as Python writes them
    (``\\x1b[2J``, ``\\n``, ``\\t``, ``\\u202e``), and so is each byte of a name that is not UTF-8 (a lone
    surrogate, PEP 383: ``na\\udcefve.jpg``, the same on every stream), everything else as it is. For the CLI's
    messages (errors, hints, warnings, notes) and for every name a user gave (a path, a URL, a key, a model name)
    shown in one: the user sees which file is meant, and a name cannot clear the screen or split a message in
    two. Service text in messages is ``printable`` already (its escape sequences removed). Raises nothing."""
    return _CONTROLS.sub(_escaped, str(text))


def terminal_safe(text: str) -> str:
    """``text`` made safe to print on a terminal, its lines kept: a CRLF line end becomes LF, and every other
    control character but newline and tab (ESC, so no escape sequence can clear the screen, change the title or
    colour what follows; CR, BEL, backspace, C1 codes) and the Unicode bidirectional overrides are shown escaped
    as Python writes them (``\\x1b``, ``\\r``, ``\\u202e``). For every text from the model or the service that
    is printed to a terminal (``qwenvl.cli.common.shown``); ``printable`` is the one-line form for error
    messages. Raises nothing."""
    return _UNSAFE.sub(_escaped, text.replace("\r\n", "\n"))


def redact(text: str, secret: str | None) -> str:
    """Remove a secret (the API key) from text that may be shown to the user. Raises nothing."""
    if secret and len(secret) >= 4 and secret in text:
        return text.replace(secret, "***")
    return text
