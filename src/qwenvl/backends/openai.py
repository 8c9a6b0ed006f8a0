"""The ``openai`` backend: any OpenAI-compatible server (vLLM first; SGLang, llama.cpp, Ollama, others).

    client = qwenvl.Client(backend="openai", base_url="http://127.0.0.1:8000/v1")   # key optional
    client.ask("What is this?", "photo.jpg")

The base URL is taken as given (``/chat/completions`` and ``/models`` are appended, nothing else). The engine
(``qwenvl.protocols.openai.ENGINE_TABLE``) is named or, with ``engine="auto"``, detected once from the server:
``GET {base}/models`` (``owned_by``: vllm, sglang, llamacpp, ollama/library, and ``qwenvl`` for a ``qwenvl
serve``, told by that one probe), then ``GET {root}/api/version`` (Ollama), ``{root}/version`` (vLLM),
``{root}/props`` (llama.cpp); anything else is ``generic``. The same reply gives the served model names: the model
defaults to the only one served, a name the server does not serve is refused before anything is sent, and the
family (pixel rule, budget, grounding convention) comes from ``family=``, else the listing's ``family`` (``qwenvl
serve`` says it), else the served name and the path it was loaded from (``root``); a model the listing says is paid
for (``"local": false``: a ``qwenvl serve`` forwarding to DashScope, ``backends.family.listed_paid``) has the model
table's rules and prices, and the client counts its cost as it does DashScope's (``serves_paid``); the context
window is the listing's ``max_model_len`` (vLLM and ``qwenvl serve`` say it; ``qwenvl.backends.family.
listed_window``), else the family's.

What the backend declares for the client (the seams of issue 11): ``media_form = "data-url"`` (local media go
inline, prepared and resized by qwenvl), ``abilities``, ``model_info(name)``, ``adapt(request)`` (an engine that
cannot fetch URLs gets them downloaded here) and ``cache_key(call)``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from qwenvl.backends import family as families
from qwenvl.backends.base import MediaForm, astream_events, stream_events
from qwenvl.backends.dashscope import policy_for, request_policy
from qwenvl.config import normalize_engine, normalize_family, openai_api_key, openai_base_url
from qwenvl.errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    MalformedResponseError,
    PermissionDeniedError,
    QwenVLError,
    UsageError,
)
from qwenvl.models import ModelInfo
from qwenvl.models import model_info as table_model
from qwenvl.plan import Call, ensure_sendable
from qwenvl.protocols import openai as proto
from qwenvl.protocols.common import StreamDriver, answer_events, load_json
from qwenvl.retry import RetryHook
from qwenvl.transport import AsyncTransport, LineStream, Policy, Transport
from qwenvl.types import Request, Response, StreamEvent, seconds

if TYPE_CHECKING:
    import httpx

DETECT_TIMEOUT_S = 10.0  # each probe of auto-detection
_OWNED_BY = {
    "vllm": "vllm",
    "sglang": "sglang",
    "llamacpp": "llamacpp",
    "llama.cpp": "llamacpp",
    "ollama": "ollama",
    "library": "ollama",
    "qwenvl": "qwenvl",  # qwenvl serve (backends.family.listing_entry)
}
DOWN_HINT = (
    "Is the engine running at that address? e.g. `vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000` "
    "(then --base-url http://127.0.0.1:8000/v1), or give another --base-url."
)
# The hints of this backend where the class's own (``qwenvl.errors``) names DashScope; only a class's default hint
# is replaced (a hint for the very cause, e.g. a TLS failure or a reply cut off, stays), except for the key's: this
# backend reads its key from one variable only, whatever the transport guessed.
KEY_ENV = "QWENVL_OPENAI_API_KEY"
ENGINE_HINTS: dict[type[QwenVLError], str] = {
    APIConnectionError: DOWN_HINT,
    AuthenticationError: f"The server wants a key: set {KEY_ENV} to the one it was started with (the openai backend "
    "reads no other variable).",
    PermissionDeniedError: f"The server refused this key for this model: check the key ({KEY_ENV}).",
    MalformedResponseError: "The reply was not an OpenAI-compatible response: check --base-url and any proxy.",
}


_KEY_ERRORS = (AuthenticationError, PermissionDeniedError)


@contextmanager
def engine_hints() -> Iterator[None]:
    """Errors raised inside get this backend's hint (``ENGINE_HINTS``) in place of their class's default one;
    class, message and exit code stay as they are, the same as the DashScope backend's."""
    try:
        yield
    except QwenVLError as exc:
        hint = ENGINE_HINTS.get(type(exc))
        if hint is not None and (exc.raw_hint == type(exc).default_hint or isinstance(exc, _KEY_ERRORS)):
            exc.hint = hint
        raise


@dataclass
class ServerInfo:
    """What the server said about itself: its engine and the models it serves (``/models`` entries)."""

    engine: str
    models: list[dict[str, Any]] = field(default_factory=list)
    listed: bool = False  # /models answered (else the served names are unknown)
    # names the listing leaves out that the server accepts, asked by name (``families.retrieve_entry``) -> entry
    unlisted: dict[str, dict[str, Any]] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [str(m.get("id")) for m in self.models if m.get("id")]

    def entry(self, name: str) -> dict[str, Any]:
        return next((m for m in self.models if m.get("id") == name), None) or self.unlisted.get(name, {})

    def paid(self, name: str | None) -> bool:
        """Whether the server says ``name`` is paid for (``families.listed_paid``: a ``qwenvl serve`` forwarding it
        to DashScope). None: the model a request naming none would use (the only one served), else whether any
        listed model is paid (a gateway lists only paid ones). Raises nothing."""
        if name is None:
            names = self.names()
            return any(families.listed_paid(m) for m in self.models) if len(names) != 1 else self.paid(names[0])
        return families.listed_paid(self.entry(name))


def _root(base_url: str) -> str:
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def detect(transport: Transport, base_url: str, engine: str, policy: Policy) -> ServerInfo:
    """Ask the server what it is (see the module doc). Each probe has ``policy``'s time-out, at most
    ``DETECT_TIMEOUT_S``. The first (``GET /models``) is retried as the request itself would be (``policy``'s
    retries and backoff), so an engine that is down raises the same APIConnectionError, after the same number of
    attempts, as a request to it would; the others are tried once, and only their answers count."""
    first = replace(policy, timeout_s=min(policy.timeout_s, DETECT_TIMEOUT_S), stream_cap_s=None)
    info = ServerInfo(engine=engine)
    try:
        data = transport.get_json(base_url + "/models", first)
    except _KEY_ERRORS:
        raise  # the server wants a key (another one): every request would be refused as this listing was
    except APIStatusError:
        data = None
    policy = replace(first, max_retries=0)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        info.models = [m for m in data["data"] if isinstance(m, dict)]
        info.listed = True
    if engine != "auto":
        return info
    for entry in info.models:
        owner = str(entry.get("owned_by") or "").lower()
        if owner in _OWNED_BY:
            info.engine = _OWNED_BY[owner]
            return info
    root = _root(base_url)
    for path, name, key in (
        ("/api/version", "ollama", "version"),
        ("/version", "vllm", "version"),
        ("/props", "llamacpp", "default_generation_settings"),
    ):
        try:
            reply = transport.get_json(root + path, policy)
        except QwenVLError:
            continue
        if isinstance(reply, dict) and key in reply:
            info.engine = name
            return info
    info.engine = "generic"
    return info


class _Wire:
    """What the sync and async backends share: detection state, names, bodies, usage completion."""

    def __init__(self, base_url: str | None, engine: str | None, family: str | None, model: str | None) -> None:
        self.base_url = openai_base_url(base_url)
        self.requested_engine = normalize_engine(engine)
        self.family = normalize_family(family)
        self.model = model
        self._info: ServerInfo | None = None
        self._lock = threading.Lock()

    def info(self, transport: Transport, policy: Policy) -> ServerInfo:
        with self._lock, engine_hints():
            if self._info is None:
                self._info = detect(transport, self.base_url, self.requested_engine, policy)
            return self._info

    @property
    def engine(self) -> str:
        if self._info is not None:
            return self._info.engine
        return self.requested_engine

    def served_default(self, info: ServerInfo) -> str:
        names = info.names()
        if len(names) == 1:
            return names[0]
        if not names:
            raise UsageError(
                f"the server at {self.base_url} does not list its models: give --model",
                hint="Give the name the server serves (vLLM's served-model-name option), or leave it out.",
            )
        raise UsageError(
            f"the server at {self.base_url} serves several models ({', '.join(names[:6])}): give --model",
            hint="Name one of them with --model NAME.",
        )

    def check_model(self, info: ServerInfo, name: str) -> None:
        names = info.names()
        if info.listed and names and name not in names and name not in info.unlisted:
            raise UsageError(
                f"the server at {self.base_url} does not serve {name!r} (it serves {', '.join(names[:6])})",
                hint=f"Use --model {names[0]}.",
            )

    def model_info(self, name: str, info: ServerInfo | None) -> ModelInfo:
        entry = info.entry(name) if info else {}
        if families.listed_paid(entry):  # a DashScope model behind a qwenvl serve: the table's rules and prices
            return table_model(name)
        root = str(entry.get("root") or "")
        window = families.listed_window(entry)  # vLLM's and qwenvl serve's /v1/models: the context it serves
        family = self.family or families.listed_family(entry)  # --family, else what qwenvl serve says
        return families.resolve(name, family, root, where=f" (served at {self.base_url})", context_tokens=window)

    def check_params(self, request: Request, info: ServerInfo) -> None:
        """Refuse what the engine ``info`` names cannot take of ``request``'s parameters
        (``protocols.openai.check_params``)."""
        given = {k: getattr(request, k) for k in ("top_k", "enable_thinking", "thinking_budget")}
        proto.check_params({**{k: v for k, v in given.items() if v is not None}, **request.extra}, info.engine)

    def adapt(self, request: Request, info: ServerInfo) -> Request:
        update: dict[str, Any] = {}
        if "model" not in request.model_fields_set:
            update["model"] = self.model or self.served_default(info)
        self.check_model(info, update.get("model", request.model))
        eng = proto.engine(info.engine)
        if not eng.image_urls and not request.fetch_urls:
            update["fetch_urls"] = True  # Ollama takes data: URLs only: remote images are downloaded here
        return request.model_copy(update=update) if update else request

    def url(self) -> str:
        return self.base_url + proto.ENDPOINT

    def body(self, call: Call, stream: bool) -> dict[str, Any]:
        ensure_sendable(call)
        return proto.build_body(call, stream=stream, engine_name=self.engine)

    def parse(self, data: Any, call: Call, headers: dict[str, str]) -> Response:
        response = proto.parse_response(data, model=call.request.model, request_id=headers.get("x-request-id"))
        proto.fix_usage(response.usage, call, self.engine)
        return response

    def post(self, call: Call, stream: bool) -> tuple[str, dict[str, Any], Policy, dict[str, str]]:
        """(url, body, policy, headers): the transport's arguments for one call."""
        return self.url(), self.body(call, stream), policy_for(call), proto.WIRE.headers(call, stream=stream)

    def non_sse(self, call: Call, stream: LineStream, body: bytes) -> list[StreamEvent]:
        """A streaming request answered with plain JSON (an engine that does not stream, or an error)."""
        return answer_events(self.parse(load_json(body, "the reply"), call, dict(stream.headers)))

    def driver(self, call: Call, stream: LineStream) -> _Driver:
        return _Driver(self, call, stream.headers.get("x-request-id"))

    def cache_key(self, call: Call) -> str:
        from qwenvl.store.cache import cache_key

        return cache_key(f"openai-{self.engine}", self.base_url, self.body(call, False))


class _Driver(StreamDriver):
    """The shared stream driver, completing the usage an engine leaves out of a stream (``fix_usage``)."""

    def __init__(self, wire: _Wire, call: Call, request_id: str | None) -> None:
        self.openai_parser = proto.StreamParser(call.request.model, request_id)
        super().__init__(self.openai_parser)
        self.wire = wire
        self.call = call

    def finished(self, response: Response) -> Response:
        chunks = self.openai_parser.content_chunks
        proto.fix_usage(response.usage, self.call, self.wire.engine, output_chunks=chunks)
        return response


class _Declared:
    """What both ``openai`` backends declare (``qwenvl.backends.base.Backend``) and answer without I/O."""

    name = "openai"
    protocol = "openai"
    media_form: MediaForm = "data-url"
    abilities: frozenset[str] = frozenset({"images", "video-frames", "stream", "tools", "json"})
    _wire: _Wire

    @property
    def base_url(self) -> str:
        return self._wire.base_url

    @property
    def engine(self) -> str:
        return self._wire.engine

    @property
    def family(self) -> str | None:
        return self._wire.family

    def cache_key(self, call: Call) -> str:
        return self._wire.cache_key(call)

    def preview_body(self, call: Call, stream: bool = False) -> tuple[str, dict[str, Any]]:
        return self._wire.url(), self._wire.body(call, stream)


class OpenAIBackend(_Declared):
    """Synchronous ``openai`` backend. ``engine``: auto|vllm|sglang|llamacpp|ollama|qwenvl|generic (default auto, or
    ``QWENVL_ENGINE``); ``family``: qwen2.5-vl|qwen3-vl|qwen2-vl (default: from the served name); ``model``: the
    served name to use when a request names none (default: the only one served)."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        engine: str | None = None,
        family: str | None = None,
        model: str | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        self._wire = _Wire(base_url, engine, family, model)
        kw: dict[str, Any] = {"sleep": sleep} if sleep else {}
        self.transport = Transport(openai_api_key(api_key), http_client=http_client, on_retry=on_retry, **kw)

    def server(self, policy: Policy | None = None) -> ServerInfo:
        """The engine and served models (asked once, then cached); ``policy``: the time-out (at most
        ``DETECT_TIMEOUT_S``) and retries of the first probe (``detect``), default a request's defaults."""
        return self._wire.info(self.transport, policy or Policy(timeout_s=DETECT_TIMEOUT_S))

    def adapt(self, request: Request) -> Request:
        """The request as this server needs it: its model (default: the one served, checked: a name the listing
        leaves out is asked about by name first, ``ask_unlisted``), URLs downloaded for an engine that takes data:
        URLs only."""
        info = self.server(request_policy(request))
        if "model" in request.model_fields_set:
            self.ask_unlisted(info, request.model)
        return self._wire.adapt(request, info)

    def ask_unlisted(self, info: ServerInfo, name: str) -> None:
        """A name the listing of a ``qwenvl serve`` leaves out (a model folder's path it accepts): asked by name,
        once (``families.retrieve_entry``), and accepted with the entry the server gives. Raises nothing."""
        if info.engine != "qwenvl" or not info.listed or name in info.names() or name in info.unlisted:
            return
        policy = Policy(timeout_s=DETECT_TIMEOUT_S, max_retries=0)
        entry = families.retrieve_entry(lambda url: self.transport.get_json(url, policy), self._wire.base_url, name)
        if entry is not None:
            info.unlisted[name] = entry

    def model_info(self, name: str) -> ModelInfo:
        return self._wire.model_info(name, self._wire._info)

    def serves_paid(self, name: str | None = None) -> bool:
        """Whether the server says ``name`` (None: the backend's model, else the one a request would use) is paid
        for (``ServerInfo.paid``: a ``qwenvl serve`` forwarding to DashScope lists ``"local": false``): then its
        answers cost money and are priced by the model table, as DashScope's are. Asks the server once (``server``),
        with no retry when it has not answered yet (an engine not up: said by the request, not waited for here).
        Raises its APIError when it cannot be asked."""
        return self.server(Policy(timeout_s=DETECT_TIMEOUT_S, max_retries=0)).paid(name or self._wire.model)

    def check_params(self, request: Request) -> None:
        """Refuse, at planning, what the engine cannot take of ``request``'s parameters (``top_k``, thinking:
        ``protocols.openai.check_params``), as sending refuses it. Raises UsageError."""
        self._wire.check_params(request, self.server(request_policy(request)))

    def ping(self, timeout_s: float = DETECT_TIMEOUT_S) -> None:
        """Ask the engine now whether it answers (``GET {base}/models``, once, ``timeout_s`` seconds): returns
        when it answers, else raises its APIError (APIConnectionError when it is down). ``qwenvl serve`` uses it
        for ``/ready``. Raises UsageError (naming it) for a ``timeout_s`` that is no duration (``types.seconds``:
        finite, above 0, at most a day), before anything is sent."""
        policy = Policy(timeout_s=seconds(timeout_s, "timeout_s"), max_retries=0)
        self.transport.get_json(self._wire.base_url + "/models", policy)

    def close(self) -> None:
        self.transport.close()

    def complete(self, call: Call) -> Response:
        self.server(policy_for(call))
        with engine_hints():
            data, headers = self.transport.post_json(*self._wire.post(call, False))
            return self._wire.parse(data, call, headers)

    def stream(self, call: Call) -> Iterator[StreamEvent]:
        self.server(policy_for(call))
        w = self._wire
        with engine_hints():
            yield from stream_events(
                self.transport,
                w.post(call, True),
                lambda s: w.driver(call, s),
                lambda s, body: w.non_sse(call, s, body),
            )


class AsyncOpenAIBackend(_Declared):
    """The asyncio twin of OpenAIBackend (detection runs once, on a worker thread)."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        engine: str | None = None,
        family: str | None = None,
        model: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Any = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        self._sync = OpenAIBackend(
            base_url=base_url, api_key=api_key, engine=engine, family=family, model=model, on_retry=on_retry
        )
        self._wire = self._sync._wire
        kw = {"sleep": sleep} if sleep else {}
        self.transport = AsyncTransport(openai_api_key(api_key), http_client=http_client, on_retry=on_retry, **kw)

    def adapt(self, request: Request) -> Request:
        return self._sync.adapt(request)

    def model_info(self, name: str) -> ModelInfo:
        return self._sync.model_info(name)

    def check_params(self, request: Request) -> None:
        """``OpenAIBackend.check_params``."""
        self._sync.check_params(request)

    def serves_paid(self, name: str | None = None) -> bool:
        """``OpenAIBackend.serves_paid`` (asked on the calling thread, once)."""
        return self._sync.serves_paid(name)

    async def ready(self) -> str | None:
        """None when the engine answers now (``OpenAIBackend.ping``), else why not (one line)."""
        try:
            with engine_hints():
                await asyncio.to_thread(self._sync.ping)
        except _KEY_ERRORS as exc:
            return f"the engine refused this server's key (HTTP {exc.status}): the operator must set {KEY_ENV}"
        except QwenVLError as exc:
            return f"the engine does not answer: {exc}"
        return None

    async def aclose(self) -> None:
        await self.transport.aclose()
        self._sync.close()

    async def _ready(self, call: Call) -> None:
        if self._wire._info is None:
            await asyncio.to_thread(self._sync.server, policy_for(call))

    async def complete(self, call: Call) -> Response:
        await self._ready(call)
        with engine_hints():
            data, headers = await self.transport.post_json(*self._wire.post(call, False))
            return self._wire.parse(data, call, headers)

    async def stream(self, call: Call) -> AsyncIterator[StreamEvent]:
        await self._ready(call)
        w = self._wire
        events = astream_events(
            self.transport, w.post(call, True), lambda s: w.driver(call, s), lambda s, body: w.non_sse(call, s, body)
        )
        with engine_hints():
            async with aclosing(events) as rest:
                async for event in rest:
                    yield event
