"""``qwenvl serve``: the DashScope API (both protocols) in front of any qwenvl backend, as a FastAPI app.

Routes (the service's own paths, so the official ``openai`` and ``dashscope`` SDKs need only a base URL):

    POST /compatible-mode/v1/chat/completions   (and /v1/chat/completions)   OpenAI-compatible, SSE stream
    POST /api/v1/services/aigc/multimodal-generation/generation             native, X-DashScope-SSE stream
    GET  /api/v1/uploads?action=getPolicy&model=M, POST /api/v1/uploads/oss   temporary storage (uploads.py)
    GET  /v1/models (and /compatible-mode/v1/models), GET /health, GET /ready
    /compatible-mode/v1/files..., /compatible-mode/v1/batches... (and under /v1)   the Batch API (batches.py)

Every request goes through the library: the wire body is parsed by ``protocols.inbound`` into a Request,
planned by the client (the media checks, resizing to the model's budget, frames), answered by the backend,
and the Response written back by ``protocols.inbound`` in the caller's protocol. Errors are the service's
codes and bodies in that protocol. Security rules are in ``security.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from qwenvl import env as qenv
from qwenvl._constants import (
    FETCH_TIMEOUT_S,
    SERVE_GRACE_S,
    SERVE_MAX_BODY_BYTES,
    SERVE_MAX_CONCURRENT_PER_KEY,
    SERVE_MAX_MEDIA_ITEMS,
    SERVE_READY_CACHE_S,
    SERVE_READY_TIMEOUT_S,
    SERVE_REQUEST_TIMEOUT_S,
    SERVE_STREAM_START_S,
)
from qwenvl.backends.family import listing_entry
from qwenvl.errors import (
    APIError,
    APIStatusError,
    APITimeoutError,
    MalformedResponseError,
    MediaError,
    MissingAPIKeyError,
    QwenVLError,
    StreamInterruptedError,
    UnsupportedParameterError,
    UsageError,
    safe_line,
)
from qwenvl.interfaces import SupportsAsyncComplete
from qwenvl.media.sources import to_data_url
from qwenvl.models import model_info
from qwenvl.protocols import get, inbound
from qwenvl.protocols.base import ServerSide
from qwenvl.retry import RETRYABLE_STATUS, should_retry
from qwenvl.server.batches import BatchStore, Runner
from qwenvl.server.batches import add_routes as add_batch_routes
from qwenvl.server.refused import Refused as _Refused
from qwenvl.server.security import bearer, fetch_public, key_matches
from qwenvl.server.shutdown import Budget
from qwenvl.server.uploads import FORM_PATH, UPLOAD_PATH, UploadConflict, UploadStore
from qwenvl.types import ImagePart, Message, Request, StreamEvent, VideoPart, count, seconds
from qwenvl.wording import api_surface, fit_hint, fit_message, model_references

try:
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.responses import JSONResponse, Response, StreamingResponse
except ImportError as exc:  # pragma: no cover - the CLI checks first and names the extra
    raise ImportError('qwenvl serve needs its extra: pip install "qwenvl[serve]"') from exc

log = logging.getLogger("qwenvl.serve")

COMPAT_PATHS = ("/compatible-mode/v1/chat/completions", "/v1/chat/completions")
NATIVE_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
OSS_RESOLVE_HEADER = "x-dashscope-ossresourceresolve"
REQUEST_ID_HEADER = "x-request-id"  # the request's one id, as DashScope sends it (also in every body and event)
SHUTTING_DOWN = "server_shutting_down"  # the code of a request the server's shutdown cut (503, either spelling)
SHUTDOWN_MESSAGE = "the server is shutting down; send the request again"
DRAIN_S = 3.0  # seconds the app's shutdown waits for the requests uvicorn cancelled to send their 503
GONE = 499  # the status logged for a request whose client went away before its answer (nginx's spelling)

T = TypeVar("T")


@dataclass
class ServeSettings:
    """Limits and rules of one server. Sizes in bytes, times in seconds."""

    api_key: str | None = None  # None: no authentication (the CLI allows it only on loopback)
    model_map: dict[str, str | None] = field(default_factory=dict)  # name clients send -> backend model
    # (None: the backend's own); {} = any name: passed on to a cloud gateway, the backend's model for a local one
    pass_model_names: bool = True
    unlisted_models: list[str] = field(default_factory=list)  # names in model_map that GET /v1/models leaves out
    # (a local model's folder as given to --model: still accepted beside the name it is served under)
    fetch_urls: bool = False  # fetch http(s) media here (local backends); a cloud gateway passes URLs on
    allow_private_urls: bool = False
    max_body_bytes: int = SERVE_MAX_BODY_BYTES
    max_media_items: int = SERVE_MAX_MEDIA_ITEMS  # images and videos in one request
    max_frames: int = 768  # frames in one frame-list video
    download_max_bytes: int = 20 * 1024 * 1024
    download_timeout_s: float = FETCH_TIMEOUT_S
    max_concurrent_per_key: int = SERVE_MAX_CONCURRENT_PER_KEY
    request_timeout_s: float = SERVE_REQUEST_TIMEOUT_S
    ready_timeout_s: float = SERVE_READY_TIMEOUT_S  # one /ready check's deadline
    ready_cache_s: float = SERVE_READY_CACHE_S  # how long a /ready answer is reused
    # Batch API lines answered at once, each in one of the key's max_concurrent_per_key slots (None: half of them;
    # below max_concurrent_per_key, so that interactive requests keep one)
    batch_concurrency: int | None = None
    shutdown_grace_s: float = SERVE_GRACE_S  # the whole shutdown's budget, from the signal (shutdown.py)

    def __post_init__(self) -> None:
        """Every duration and count checked by the one rule (``types.seconds``: UsageError for NaN, infinity, 0 or
        more than a day; ``types.count``: a whole number, at least 1)."""
        for name in ("download_timeout_s", "request_timeout_s", "ready_timeout_s", "shutdown_grace_s"):
            setattr(self, name, seconds(getattr(self, name), name))
        self.ready_cache_s = seconds(self.ready_cache_s, "ready_cache_s", zero=True)
        self.max_concurrent_per_key = count(self.max_concurrent_per_key, "max_concurrent_per_key", minimum=1)
        if self.batch_concurrency is None:
            self.batch_concurrency = max(1, self.max_concurrent_per_key // 2)
        self.batch_concurrency = count(self.batch_concurrency, "batch_concurrency", minimum=1)
        if self.batch_concurrency >= max(self.max_concurrent_per_key, 2):  # a limit of 1: the one slot is shared
            raise UsageError(
                f"the Batch API's concurrency ({self.batch_concurrency}) must be below the concurrent requests per "
                f"key ({self.max_concurrent_per_key}): its lines take the key's slots, and interactive requests "
                "keep at least one",
                hint="Lower --batch-concurrency, or raise --max-concurrent.",
            )


class _Slots:
    """Concurrent requests per API key, the chat routes' and the Batch API lines' alike; beyond the limit an
    interactive caller gets 429 with Retry-After, and a batch line waits (``wait_take``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy: dict[str, int] = {}
        self.freed: asyncio.Event | None = None  # set when a slot is given back (a batch line may be waiting)

    def take(self, key: str) -> None:
        if self.busy.get(key, 0) >= self.limit:
            raise _Refused(
                429, f"too many concurrent requests for this key (limit {self.limit})", headers={"Retry-After": "1"}
            )
        self.busy[key] = self.busy.get(key, 0) + 1

    async def wait_take(self, key: str) -> None:
        """Take a slot for background work (a Batch API line), waiting until one is free while leaving one free for
        interactive requests (with a limit of 1, the one slot is shared)."""
        room = self.limit - 1 if self.limit > 1 else 1
        while self.busy.get(key, 0) >= room:
            if self.freed is None:
                self.freed = asyncio.Event()
            await self.freed.wait()
        self.busy[key] = self.busy.get(key, 0) + 1

    def give(self, key: str) -> None:
        self.busy[key] -= 1
        if self.freed is not None:
            self.freed.set()
            self.freed = None


def _server(name: str) -> ServerSide:
    side = get(name).server
    assert side is not None, f"the {name} protocol has no server side"
    return side


COMPAT = _server("compat")  # what the OpenAI-compatible routes speak
NATIVE = _server("native")  # what the DashScope-native routes speak


def create_app(
    client: SupportsAsyncComplete,
    settings: ServeSettings | None = None,
    *,
    uploads: UploadStore | None = None,
    playground: bool = True,
    stores: Sequence[Any] = (),
    batches: BatchStore | None = None,
) -> FastAPI:
    """The app around ``client`` (a ``qwenvl.AsyncClient``, whose backend answers). The app closes the
    client, the upload store, the Batch API's store (``batches``; default: ``BatchStore()``, the state folder under
    qwenvl's data folder, opened at its first use) and ``stores`` (the app's response cache and usage log, given to
    the client by ``main.app_from_config``) when it shuts down. Raises TypeError when ``client`` is not an
    asynchronous client (a ``qwenvl.Client``, or anything without ``plan``, async ``send``, ``send_stream`` and
    ``aclose``), before anything is made."""
    if not isinstance(client, SupportsAsyncComplete) or not inspect.iscoroutinefunction(client.send):
        raise TypeError(
            f"create_app needs an asynchronous client (a qwenvl.AsyncClient), not {type(client).__module__}."
            f"{type(client).__qualname__}"
        )
    settings = settings or ServeSettings()
    store = uploads or UploadStore()
    batch_store = batches or BatchStore()
    slots = _Slots(settings.max_concurrent_per_key)
    inflight = _InFlight()

    # a local backend (made now: its readiness is asked of it); None: the DashScope cloud, made on first use
    backend = getattr(client, "backend", None) if getattr(client, "is_local", False) else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warm = getattr(backend, "warm", None)  # an in-process model starts loading now (/ready: 503 until it has)
        warming = asyncio.create_task(warm()) if warm is not None else None
        runner.start()  # Batch API jobs: unfinished ones resume
        budget = Budget(settings.shutdown_grace_s, runner.begin_stop)  # the signal: no new Batch API line
        undo = budget.on_stop_signals()
        try:
            yield
        finally:
            undo()
        # the Batch API lines in flight are answered and written until the cut (shutdown.py)
        await runner.stop(budget.begin())
        # uvicorn has cancelled what its wait left: each of those sends its 503 before the worker ends
        await inflight.drained(min(DRAIN_S, budget.left_after_cut()))
        if warming is not None and not warming.done():
            warming.cancel()
        await client.aclose()
        store.close()
        batch_store.close()
        for each in stores:
            await asyncio.to_thread(each.close)  # the usage log commits its queued rows first

    app = FastAPI(title="qwenvl serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: HTTPRequest, exc: StarletteHTTPException) -> JSONResponse:
        """Unknown paths and methods answer in the service's shape, not the framework's."""
        proto = NATIVE if request.url.path.startswith("/api/") else COMPAT
        message = {
            404: f"no such endpoint: {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        rid = str(uuid.uuid4())
        return JSONResponse(
            error_body(proto, exc.status_code, message, None, rid),
            status_code=exc.status_code,
            headers={REQUEST_ID_HEADER: rid},
        )

    app.state.client, app.state.settings, app.state.uploads = client, settings, store

    # --- helpers ---------------------------------------------------------------------------------------
    def authorize(request: HTTPRequest) -> str:
        if settings.api_key is None:
            return "-"
        key = bearer(request.headers.get("authorization"))
        if not key_matches(key, settings.api_key):
            raise _Refused(401, "Invalid API-key provided." if key else "No API-key provided.")
        return key or "-"

    async def read_json(request: HTTPRequest) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise _Refused(
                413,
                f"the request body is over this server's {settings.max_body_bytes // 2**20} MiB "
                "limit; upload large files instead of inlining them",
            )
        from starlette.requests import ClientDisconnect

        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_body_bytes:
                    raise _Refused(
                        413,
                        f"the request body is over this server's {settings.max_body_bytes // 2**20} "
                        "MiB limit; upload large files instead of inlining them",
                    )
                chunks.append(chunk)
        except ClientDisconnect:  # the client left while sending its body: nothing to answer, nothing to log
            raise _Gone from None
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError):
            raise _Refused(400, "the request body is not valid JSON") from None

    async def resolve_ref(ref: str, model: str, oss_ok: bool, aliases: dict[str, str] | None = None) -> str:
        lower = ref[:12].lower()
        if lower.startswith("data:"):
            return ref
        if lower.startswith(("http://", "https://")):
            if not settings.fetch_urls:
                return ref
            data = await fetch_public(
                ref,
                max_bytes=settings.download_max_bytes,
                timeout_s=settings.download_timeout_s,
                allow_private=settings.allow_private_urls,
            )
            from qwenvl.media.sources import sniff

            return to_data_url(data, sniff(data) or "application/octet-stream")
        if lower.startswith("oss://"):
            if not oss_ok:
                raise MediaError(
                    f"{ref}: oss:// references need the header X-DashScope-OssResourceResolve: enable", source=ref
                )
            path = str(store.resolve(ref, model))
            if aliases is not None:
                aliases[path] = ref  # errors about the file name the caller's reference, not our folder
            return path
        raise MediaError(
            f"{ref[:80]!r}: this server does not read local paths or file:// URLs",
            source=ref[:80],
            hint="Send the file as a data: URL, or upload it (the dashscope SDK does this for file:// paths).",
        )

    async def resolve_media(
        messages: list[Message], model: str, oss_ok: bool, aliases: dict[str, str]
    ) -> list[Message]:
        items = 0
        out = []
        for m in messages:
            if isinstance(m.content, str) or not m.media():
                out.append(m)
                continue
            parts: list[Any] = []
            for p in m.content:
                if isinstance(p, ImagePart):
                    items += 1
                    p = p.model_copy(update={"image": await resolve_ref(p.image, model, oss_ok, aliases)})
                elif isinstance(p, VideoPart):
                    items += 1
                    if isinstance(p.video, list):
                        if len(p.video) > settings.max_frames:
                            raise _Refused(
                                400,
                                f"a video has {len(p.video)} frames, over this server's limit of {settings.max_frames}",
                            )
                        frames = [await resolve_ref(f, model, oss_ok, aliases) for f in p.video]
                        p = p.model_copy(update={"video": frames})
                    else:
                        p = p.model_copy(update={"video": await resolve_ref(p.video, model, oss_ok, aliases)})
                parts.append(p)
            if items > settings.max_media_items:
                raise _Refused(400, f"the request has more than {settings.max_media_items} images or videos")
            out.append(m.model_copy(update={"content": parts}))
        return out

    async def plan(
        parsed: inbound.Inbound, oss_ok: bool, aliases: dict[str, str], deadline: float | None = None
    ) -> Any:
        """The client's Call for a parsed request: its model served here (404 if not), its media resolved
        (``oss_ok``: oss:// references to this server's uploads are read) and planned, no wait of it outlasting
        ``deadline`` (``time.monotonic()``); only the parameters the caller set are sent."""
        req = parsed.request
        target = served_model(req.model)
        messages = await resolve_media(req.messages, req.model, oss_ok, aliases)
        fields = {**req.model_dump(exclude_unset=True), "messages": messages}
        fields.pop("model", None)
        if target:
            fields["model"] = target
        if deadline is not None:  # no wait of the plan's (a local backend asking its engine) outlasts the request
            usual = fields.get("timeout_s") or getattr(client, "defaults", {}).get("timeout_s")
            usual = usual or Request.model_fields["timeout_s"].default  # the client's own, else the library's
            fields["timeout_s"] = min(usual, max(deadline - time.monotonic(), 0.1))
        # decoding, resizing, asking a local engine what it serves (it may not answer): off the event loop, so the
        # request's deadline stops the wait; ``local_backend`` first: ``is_local`` may ask the engine itself
        if (
            getattr(client, "local_backend", False)
            or getattr(client, "is_local", False)
            or any(m.media() for m in messages)
        ):
            call = await asyncio.to_thread(client.plan, fields)
        else:  # text only: planning is microseconds, a thread hop would cost more
            call = client.plan(fields)
        # send what the caller set, not the library's own defaults (temperature 0.2, max_tokens 512)
        call.params = {k: v for k, v in call.params.items() if k in parsed.given}
        return call

    async def respond(
        proto: ServerSide,
        parsed: inbound.Inbound,
        rid: str,
        aliases: dict[str, str],
        *,
        oss_ok: bool = False,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """A parsed request that does not stream, planned (``plan``) and answered by the backend: the protocol's
        response body (usage as the backend counted it). Raises what planning and the backend raise (``describe``
        tells each). The one home of a non-streamed answer: the chat routes and each Batch API line use it."""
        call = await plan(parsed, oss_ok, aliases, deadline)
        call.request_id = rid  # the usage log names the request as its caller knows it
        response = await client.send(call)
        return proto.response_body(parsed, response, rid)

    async def answer_line(body: Any, rid: str) -> tuple[int, dict[str, Any]]:
        """The body of one Batch API line answered as ``POST /compatible-mode/v1/chat/completions`` answers it,
        within ``settings.request_timeout_s``: (HTTP status, the route's JSON body: the completion, or the compat
        error envelope). A line that asks for a stream is a 400 (the Batch API does not stream, [batch] in
        ``qwenvl.batch.batchapi``). Raises nothing but a cancellation."""
        aliases: dict[str, str] = {}
        try:
            deadline = time.monotonic() + settings.request_timeout_s
            async with asyncio.timeout(settings.request_timeout_s):
                parsed = COMPAT.parse_body(body, {})
                aliases.update(model_names(parsed.request.model))
                if parsed.stream:
                    raise _Refused(400, "stream is not supported in a batch: leave it out", "invalid_parameter_error")
                return 200, await respond(COMPAT, parsed, rid, aliases, deadline=deadline)
        except Exception as exc:
            status, body, _ = refusal(COMPAT, exc, rid, aliases)
            return status, body

    def served_model(name: str) -> str | None:
        """The backend's model for the name a client sent (None: the backend's own); 404 when not served."""
        if settings.model_map:
            if name not in settings.model_map:
                raise _Refused(404, f"Model not exist: {name} (this server serves {', '.join(listed_models())})")
            return settings.model_map[name]
        return name if settings.pass_model_names else None

    def listed_models() -> list[str]:
        return sorted(n for n in settings.model_map if n not in settings.unlisted_models)

    def model_names(shown: str | None = None) -> dict[str, str]:
        """A local backend's own references to its model (a folder's path as given, absolute, resolved) -> the name
        a client knows it by: ``shown`` (the name the request sent), else the first served name. What the server's
        answers say instead of its paths (``wording.Surface.names``); {} for a gateway (the client's names pass)."""
        ref = getattr(backend, "model", None) or getattr(getattr(backend, "_sync", None), "model", None)
        listed = listed_models()
        name = shown if shown in settings.model_map else (listed[0] if listed else None)
        if not isinstance(ref, str) or not ref or name is None:
            return {}
        return model_references(ref, name)

    def served_names() -> list[str] | None:
        """The models a client may choose here (None: any, a gateway passing names on)."""
        return None if settings.pass_model_names else listed_models() or None

    def error_body(
        proto: ServerSide,
        status: int,
        message: str,
        code: str | None,
        rid: str,
        param: str | None = None,
        hint: str | None = None,
    ) -> dict[str, Any]:
        return proto.error_body(status, message, request_id=rid, code=code, param=param, hint=hint)

    def describe(
        proto: ServerSide, exc: BaseException, rid: str, aliases: dict[str, str] | None = None
    ) -> tuple[int, str, str | None, dict[str, str], str | None]:
        """(status, one-line message, service code, headers, advice) for any failure (advice: the library's hint in
        the caller's words, also at the message's end in parentheses, sent as the body's ``hint``; None when there
        is none); nothing internal leaks: no traceback, no server path (an upload's path is named by its oss://
        reference), no key, no upstream URL. A failure of the upstream is told as ``upstream_failure`` says. The
        library's message and hint are in the words of ``proto``'s requests (``wording.api_surface``:
        ``parameters.top_k``, never ``--top-k``; a hint sentence about the server's own options is left out)."""
        if isinstance(exc, TimeoutError):
            exc = _Refused(504, "the request timed out on this server")
        if isinstance(exc, _Refused):
            return exc.status, exc.message, exc.code, exc.headers, None
        if isinstance(exc, APIError):
            log.warning("the upstream failed answering %s: %s", rid, exc)  # the operator's log names the URL
            return (*upstream_failure(exc), None)
        status, code = inbound.error_kind(exc)
        # the caller's words: its own references for the server's files and model (``aliases``), no server paths,
        # flags, commands or install advice; the library's whole words go to the server's log
        names = {**model_names(), **(aliases or {}), str(store.folder): "(upload)"}
        surface = api_surface(proto.name, names=names, models=served_names())
        said = _message(exc)
        message = fit_message(said, surface)
        if isinstance(exc, UnsupportedParameterError) and surface.param is not None:  # its name as the caller sent it
            message = message.replace(f"'{exc.param}'", f"'{surface.param(exc.param)}'")
        hint = getattr(exc, "raw_hint", None)
        advice = None
        if hint and isinstance(exc, UsageError | MediaError) and not isinstance(exc, UnsupportedParameterError):
            said = f"{said} ({hint})"
            advice = fit_hint(hint, surface)
            message = f"{message} ({advice})" if advice else message
        if isinstance(exc, QwenVLError) and message != said:
            log.info("request %s refused: %s", rid, safe_line(said))
        if not isinstance(exc, QwenVLError):  # the operator's log: what broke, always; where, with QWENVL_DEBUG=1
            log.error(
                "internal error while answering %s: %s: %s",
                rid,
                type(exc).__name__,
                safe_line(str(exc)) or "(no message)",
                exc_info=exc if qenv.debug() else None,
            )
        return status, message, code, {}, advice

    def refusal(
        proto: ServerSide, exc: BaseException, rid: str, aliases: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, the protocol's error body, headers) for ``exc``: the one error answer of a route and of a
        Batch API line (``param`` named as the protocol does)."""
        status, message, code, headers, advice = describe(proto, exc, rid, aliases)
        param = inbound.named_field(exc, message)
        return status, error_body(proto, status, message, code, rid, param, advice), headers

    def refuse(proto: ServerSide, exc: BaseException, rid: str, aliases: dict[str, str] | None = None) -> JSONResponse:
        status, body, headers = refusal(proto, exc, rid, aliases)
        return JSONResponse(body, status_code=status, headers={**headers, REQUEST_ID_HEADER: rid})

    def shutting_down(proto: ServerSide, rid: str) -> JSONResponse:
        """The answer to a request still waiting when the server's shutdown ran out of time (uvicorn cancels it)."""
        status, message = 503, SHUTDOWN_MESSAGE
        log.warning("request %s was cut by the server's shutdown (%d %s)", rid, status, SHUTTING_DOWN)
        return JSONResponse(
            error_body(proto, status, message, SHUTTING_DOWN, rid),
            status_code=status,
            headers={"Retry-After": "1", REQUEST_ID_HEADER: rid},
        )

    async def answer(
        request: HTTPRequest, proto: ServerSide, rid: str, work: Callable[[], Awaitable[Any]], **kw: Any
    ) -> Any:
        """``work()`` while its client is connected: a client that goes away cancels it at once (its upstream
        request, its slot); the server's shutdown cancelling it is a 503 ``server_shutting_down``; an error is
        the protocol's error body (``refuse``)."""
        with inflight.one():
            try:
                return await _unless_gone(request, work())
            except _Gone:
                log.info("the client of request %s went away; its work was cancelled", rid)
                return Response(status_code=GONE, headers={REQUEST_ID_HEADER: rid})
            except asyncio.CancelledError:
                _uncancel()
                return shutting_down(proto, rid)
            except Exception as exc:
                return refuse(proto, exc, rid, kw.get("aliases"))

    async def handle(request: HTTPRequest, proto: ServerSide) -> Any:
        rid = str(uuid.uuid4())
        deadline = time.monotonic() + settings.request_timeout_s
        key = None
        try:
            key = authorize(request)
            body = await read_json(request)  # read whole before answer() watches the connection for its end
            parsed = proto.parse_body(body, request.headers)
            slots.take(key)
        except _Gone:
            return Response(status_code=GONE, headers={REQUEST_ID_HEADER: rid})
        except Exception as exc:
            return refuse(proto, exc, rid)
        aliases: dict[str, str] = model_names(parsed.request.model)  # errors name the model as the caller did
        owner: list[Any] = []  # the stream that took over the slot, if any

        async def work() -> Any:
            events: AsyncIterator[StreamEvent] | None = None
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    oss_ok = request.headers.get(OSS_RESOLVE_HEADER, "").lower() == "enable"
                    if not parsed.stream:
                        body = await respond(proto, parsed, rid, aliases, oss_ok=oss_ok, deadline=deadline)
                        return JSONResponse(body, headers={REQUEST_ID_HEADER: rid})
                    call = await plan(parsed, oss_ok, aliases, deadline)
                    call.request_id = rid  # the usage log names the request as its caller knows it
                    # the status line waits for the upstream's first event: a failure before it (a refusal, a 429
                    # with its Retry-After, a time-out) is an HTTP error in the protocol's shape, not a 200 stream
                    events = client.send_stream(call)
                    first_task = asyncio.create_task(_next(events))
                    try:  # up to SERVE_STREAM_START_S: a slow first token (a model reading its prompt) starts
                        # the stream with a comment instead, and a failure after it is the stream's error event
                        await asyncio.wait((first_task,), timeout=SERVE_STREAM_START_S)
                    except BaseException:
                        await _settle(first_task)
                        raise
                    first: StreamEvent | asyncio.Task[StreamEvent | None] | None = first_task
                    if first_task.done():
                        first = first_task.result()
                state = inbound.StreamState(parsed=parsed, request_id=rid)
                inflight.n += 1  # until the stream ends (its shutdown event sent, if the shutdown cut it)

                def closed() -> None:
                    inflight.n -= 1
                    slots.give(key)

                stream = _EventStream(
                    stream_body(proto, state, events, first, deadline, aliases),
                    on_close=closed,
                    on_shutdown=lambda: shutdown_event(proto, state),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", REQUEST_ID_HEADER: rid},
                )
                owner.append(stream)  # from here the stream owns the slot and gives it back when it ends
                events = None
                return stream
            finally:
                if events is not None:
                    await _aclose(events)

        try:
            return await answer(request, proto, rid, work, aliases=aliases)
        finally:
            if not owner:
                slots.give(key)

    def shutdown_event(proto: ServerSide, state: inbound.StreamState) -> bytes:
        """The last event of a stream the server's shutdown cut: the protocol's error event, 503."""
        log.warning("a stream (request %s) was cut by the server's shutdown", state.request_id)
        body = error_body(proto, 503, SHUTDOWN_MESSAGE, SHUTTING_DOWN, state.request_id)
        return b"".join(proto.stream_error(state, 503, body))

    async def stream_body(
        proto: ServerSide,
        state: inbound.StreamState,
        events: AsyncIterator[StreamEvent],
        first: StreamEvent | asyncio.Task[StreamEvent | None] | None,
        deadline: float,
        aliases: dict[str, str],
    ) -> AsyncIterator[bytes]:
        """The stream's wire chunks: ``first`` (the backend's first event, already had, or still awaited: then the
        stream opens with an SSE comment at once), then the rest of ``events`` until ``deadline`` (monotonic
        seconds); a failure on the way is the protocol's error event, which ends the stream (never a silent
        truncation). Every event carries ``state.request_id``."""
        rid = state.request_id
        pending = first if isinstance(first, asyncio.Task) else None

        async def all_events() -> AsyncIterator[StreamEvent]:
            had = first
            if pending is not None:  # waited for, not cancelled here: one cancellation (``_settle``) ends it
                await asyncio.wait((pending,), timeout=max(deadline - time.monotonic(), 0))
                if not pending.done():
                    raise TimeoutError
                had = pending.result()
            if isinstance(had, StreamEvent):
                yield had
            async for event in _bounded(events, deadline):
                yield event

        try:
            if pending is not None:
                yield b": the model is reading the request\n\n"
            for chunk in proto.stream_open(state):
                yield chunk
            async for event in all_events():
                state.note(event)
                if event.type == "done":
                    assert event.response is not None
                    for chunk in proto.stream_done(state, event.response):
                        yield chunk
                    return
                for chunk in proto.stream_delta(state, event):
                    yield chunk
            raise MalformedResponseError("the upstream's stream ended without its final event")
        except asyncio.CancelledError:  # the caller went away: stop generating, free the slot
            raise
        except Exception as exc:  # an error inside a stream is an error event
            status, message, code, _, advice = describe(proto, exc, rid, aliases)
            body = error_body(proto, status, message, code, rid, hint=advice)
            for chunk in proto.stream_error(state, status, body):
                yield chunk
        finally:
            if pending is not None:
                await _settle(pending)
            await _aclose(events)

    # --- routes ----------------------------------------------------------------------------------------
    async def compat_route(request: HTTPRequest) -> Any:
        return await handle(request, COMPAT)

    async def native_route(request: HTTPRequest) -> Any:
        return await handle(request, NATIVE)

    for path in COMPAT_PATHS:
        app.add_api_route(path, compat_route, methods=["POST"])
    app.add_api_route(NATIVE_PATH, native_route, methods=["POST"])

    async def models(request: HTTPRequest) -> JSONResponse:
        try:
            authorize(request)
        except _Refused as exc:
            return refuse(COMPAT, exc, str(uuid.uuid4()))
        names = listed_models()
        if not names and settings.pass_model_names:
            names = _known_models()
        elif not names:  # a local backend: the model it serves
            try:
                names = [(await asyncio.to_thread(client.resolve_model)).name]
            except QwenVLError as exc:
                return refuse(COMPAT, exc, str(uuid.uuid4()))
        return JSONResponse({"object": "list", "data": [await asyncio.to_thread(model_entry, n) for n in names]})

    def model_entry(name: str) -> dict[str, Any]:
        """``name``'s ``/v1/models`` entry: vLLM's fields and the family, and whether it is local (no price), as
        ``backends.family.listing_entry`` writes them; only the id when its rules cannot be told now."""
        local = bool(getattr(client, "is_local", False))
        try:
            target = settings.model_map.get(name) or (None if local else name)
            info = client.resolve_model(target) if local else model_info(target or name)
        except QwenVLError:  # an engine not answering now: the name alone, as before
            return {"id": name, "object": "model", "created": 0, "owned_by": "qwenvl"}
        root = model_names(name).get(info.name, info.name)  # the backend's own name, never a server path
        return listing_entry(name, info, local=local, root=None if _server_path(root) else root)

    async def one_model(request: HTTPRequest) -> JSONResponse:
        """``GET /v1/models/{name}`` (OpenAI's retrieve-model route): the entry of a name this server accepts, the
        names ``/v1/models`` leaves out too (a local model's folder as given to ``--model``: ``unlisted_models``),
        as the caller named it; 404 (the chat routes' refusal) for a name it does not serve. A client asks it for a
        name the listing does not show before refusing the name itself (``backends.family.retrieve_entry``)."""
        rid = str(uuid.uuid4())
        name = request.path_params["name"]
        try:
            authorize(request)
            if not settings.model_map and not settings.pass_model_names:  # a local backend's own model only
                own = (await asyncio.to_thread(client.resolve_model)).name
                if name != own:
                    raise _Refused(404, f"Model not exist: {name} (this server serves {own})")
            else:
                served_model(name)
        except (_Refused, QwenVLError) as exc:
            return refuse(COMPAT, exc, rid)
        return JSONResponse(await asyncio.to_thread(model_entry, name))

    for path in ("/v1/models", "/compatible-mode/v1/models"):
        app.add_api_route(path, models, methods=["GET"])
        app.add_api_route(path + "/{name:path}", one_model, methods=["GET"])

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    readiness: dict[str, Any] = {"at": -math.inf, "why": None}
    ready_lock = asyncio.Lock()

    async def backend_ready() -> str | None:
        """The backend's own check: a local model loaded, an engine or the DashScope service answering (with
        this server's key). The gateway's backend is made here the first time (no key: not ready)."""
        answering = backend if backend is not None else await asyncio.to_thread(getattr, client, "backend", None)
        check = getattr(answering, "ready", None)
        if check is None:  # a backend that cannot be asked (a custom one): ready when it exists
            return None
        return await check()

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 when a request could be answered now, else 503 with the reason (one line, upstream URLs named
        "the upstream": this endpoint takes no key). One rule for every backend: its check (``backend_ready``),
        at most once per ``settings.ready_cache_s`` seconds (callers in between get the last answer), and
        bounded by ``settings.ready_timeout_s`` seconds (past it: not ready)."""
        async with ready_lock:  # one check at a time: callers meanwhile wait for it, then reuse its answer
            if time.monotonic() - readiness["at"] >= settings.ready_cache_s:
                try:
                    async with asyncio.timeout(settings.ready_timeout_s):
                        why = await backend_ready()
                except TimeoutError:
                    why = f"the backend did not answer the readiness check within {settings.ready_timeout_s:g} s"
                except MissingAPIKeyError:
                    why = "this server has no API key for its upstream service; the server's operator must set one"
                except QwenVLError as exc:
                    why = f"the backend cannot be made: {_message(exc)}"
                if why is not None:
                    why = _URL.sub("the upstream", why.strip().splitlines()[0] if why.strip() else "not ready")
                    why = fit_message(why, api_surface("compat", names=model_names()))  # no server paths
                readiness.update(at=time.monotonic(), why=why)
            why = readiness["why"]
        body: dict[str, Any] = {"ready": why is None, "model_loaded": why is None}
        if why is not None:
            body["reason"] = why
        return JSONResponse(body, status_code=200 if why is None else 503, headers={"Cache-Control": "no-store"})

    @app.get(UPLOAD_PATH)
    async def get_policy(request: HTTPRequest) -> JSONResponse:
        rid = str(uuid.uuid4())
        try:
            authorize(request)
            if request.query_params.get("action") != "getPolicy":
                raise _Refused(400, "action must be getPolicy")
            model = request.query_params.get("model")
            if not model:
                raise _Refused(400, "model is required")
        except _Refused as exc:
            return refuse(NATIVE, exc, rid)
        host = str(request.base_url).rstrip("/") + FORM_PATH
        return JSONResponse({"request_id": rid, "data": store.policy(model, host)}, headers={REQUEST_ID_HEADER: rid})

    @app.post(FORM_PATH)
    async def form_upload(request: HTTPRequest) -> Any:
        from fastapi.responses import Response as Plain

        try:
            async with request.form(max_files=1, max_fields=20, max_part_size=store.max_file_bytes) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise UsageError("the form has no file")
                data = await upload.read()
            store.save(
                policy=str(form.get("policy", "")),
                signature=str(form.get("Signature", "")),
                key=str(form.get("key", "")),
                data=data,
            )
        except QwenVLError as exc:
            status, code = (409, "FileAlreadyExists") if isinstance(exc, UploadConflict) else (403, "AccessDenied")
            body = f'<?xml version="1.0"?><Error><Code>{code}</Code><Message>{_xml(str(exc))}</Message></Error>'
            return Plain(body, status_code=status, media_type="application/xml")
        except Exception:
            return Plain(
                '<?xml version="1.0"?><Error><Code>InvalidArgument</Code></Error>',
                status_code=400,
                media_type="application/xml",
            )
        return Plain(status_code=200)

    if playground:
        from qwenvl.server import playground as page

        async def run(request: HTTPRequest, work: page.Work) -> Any:
            rid = str(uuid.uuid4())
            try:
                authorize(request)
                body = await read_json(request)  # read whole before answer() watches the connection for its end
                if not isinstance(body, dict):
                    raise _Refused(400, "the body must be a JSON object")
                inbound.check_text(body)
            except _Gone:
                return Response(status_code=GONE, headers={REQUEST_ID_HEADER: rid})
            except Exception as exc:
                return refuse(COMPAT, exc, rid)
            return await answer(request, COMPAT, rid, lambda: work(body))

        page.add_routes(
            app,
            client,
            run=run,
            resolve=lambda ref, model: resolve_ref(ref, model, False),
            model_for=served_model,
        )

    def not_served(name: str) -> str | None:
        """Why a Batch API file's model is not served here (None: it is)."""
        try:
            served_model(name)
        except _Refused as exc:
            return exc.message
        return None

    assert settings.batch_concurrency is not None
    # each line takes one of the key's slots, as a chat request does (this server has one key: its jobs' key)
    runner = Runner(
        batch_store, answer_line, not_served, settings.batch_concurrency, slots=(slots, settings.api_key or "-")
    )

    def batch_refuse(exc: BaseException, rid: str) -> Any:
        if isinstance(exc, _Gone):  # the client left while sending its body: nothing to answer
            return Response(status_code=GONE, headers={REQUEST_ID_HEADER: rid})
        return refuse(COMPAT, exc, rid)

    add_batch_routes(app, batch_store, runner, authorize=authorize, refuse=batch_refuse, read_json=read_json)
    app.state.batches = runner

    app.state.model_names = model_names  # the server's model references -> a client's names (the playground)
    return app


_URL = re.compile(r"https?://[^\s;)]*[^\s;):]")


def upstream_failure(exc: APIError) -> tuple[int, str, str | None, dict[str, str]]:
    """(status, message, code, headers) with which the server answers a failure of its upstream (the backend).

    - An error status passes on with the service's code (given in the caller's protocol's spelling) and words,
      and its ``Retry-After``: 429 stays 429, a 503 stays 503 (after this server's own retries, ``qwenvl.retry``).
    - The upstream refusing this server's key (401, 403) is 502: the caller's key is fine, the operator's is not.
    - An HTML page from a proxy is 502 (429 and 5xx keep their status), "the upstream answered HTTP 400 Bad
      Request (an HTML page from a proxy, not the service)".
    - No answer: 502, or 504 for a time-out, in qwenvl's words (``qwenvl.transport.describe_failure``) with each
      upstream URL named "the upstream" (the URL is in this server's log). A reply that is not the protocol's:
      502. A stream that broke after content: the status of its cause (502, 504, or the service's error event's).
    - ``x-should-retry: false`` (read by the openai SDK) on a 5xx when a retry cannot help or could pay twice:
      the upstream answered 200 and then failed (``qwenvl.retry.may_resend``), or its failure is not retried
      (``qwenvl.retry.should_retry``)."""
    if isinstance(exc, StreamInterruptedError) and isinstance(exc.__cause__, APIError):
        told = upstream_failure(exc.__cause__)
        if isinstance(exc.__cause__, APIStatusError):  # the service's error event: its status, code and words
            return told
        return told[0], _URL.sub("the upstream", exc.message), *told[2:]  # a broken connection: the stream's words
    headers: dict[str, str] = {}
    code: str | None = None
    if isinstance(exc, APIStatusError):
        status, code, message = exc.status, exc.code, exc.message
        if isinstance(exc, MissingAPIKeyError):  # nothing was sent: this server has no key for its upstream
            status, code = 502, None
            message = "this server has no API key for its upstream service; the server's operator must set one"
        elif exc.status in (401, 403):  # the upstream refused *our* credentials
            status, code = 502, None
            message = (
                f"the upstream service refused this server's own credentials (HTTP {exc.status}); the server's "
                "operator must fix its upstream key"
            )
        elif exc.plain:  # a proxy's page, not the service's error
            status = exc.status if exc.status in RETRYABLE_STATUS else 502
            message = f"the upstream answered HTTP {exc.status} {exc.message}"
        if exc.retry_after:
            headers["Retry-After"] = str(math.ceil(exc.retry_after))
    elif isinstance(exc, MalformedResponseError):
        status, message = 502, exc.message
        message = "the upstream's reply" + message[9:] if message.startswith("the reply") else message
    else:
        status = 504 if isinstance(exc, APITimeoutError) else 502
        message = _URL.sub("the upstream", exc.message)
    paid = getattr(exc, "final", False) or isinstance(exc, MalformedResponseError | StreamInterruptedError)
    if status >= 500 and (paid or not should_retry(exc)):
        headers["x-should-retry"] = "false"
    return status, message, code, headers


def _message(exc: BaseException) -> str:
    """The one line a caller sees: the service's own message for an upstream error, never a traceback."""
    from qwenvl.errors import APIStatusError

    if isinstance(exc, APIStatusError):
        return exc.raw_message
    return exc.as_written() if isinstance(exc, QwenVLError) else "internal error"


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _server_path(name: str) -> bool:
    """Whether a model's reference is a path on this server (a folder), which no answer may show. Raises nothing."""
    from pathlib import Path

    try:
        return name.startswith(("/", "~", ".")) or "\\" in name or Path(name).expanduser().exists()
    except (OSError, ValueError):
        return True


def _known_models() -> list[str]:
    from qwenvl.models import DEFAULT_MODEL, MODELS

    return [DEFAULT_MODEL, *sorted(m for m in MODELS if m != DEFAULT_MODEL)]


class _EventStream(StreamingResponse):
    """A stream that stops the moment its client disconnects: generation is cancelled and the slot freed
    at once, not at the next write (Starlette notices a disconnect only on write for ASGI spec 2.4). When the
    server's shutdown cancels it, the client gets ``on_shutdown()`` (the protocol's error event) as its last."""

    def __init__(
        self, content: Any, *, on_close: Callable[[], None], on_shutdown: Callable[[], bytes], **kw: Any
    ) -> None:
        super().__init__(content, **kw)
        self._on_close, self._on_shutdown = on_close, on_shutdown

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._run(scope, receive, sending)
        except asyncio.CancelledError:  # the server is shutting down mid-stream: a last error event, no traceback
            _uncancel()
            with contextlib.suppress(Exception):  # the connection may be gone too
                if not started:
                    await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": self._on_shutdown(), "more_body": False})
        finally:
            await _aclose(self.body_iterator)
            self._on_close()

    async def _run(self, scope: Any, receive: Any, send: Any) -> None:
        import anyio

        async def never() -> Any:
            await anyio.sleep_forever()

        async with anyio.create_task_group() as group:

            async def stream() -> None:
                try:
                    await StreamingResponse.__call__(self, scope, never, send)
                finally:
                    group.cancel_scope.cancel()

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(stream)
            group.start_soon(watch)


class _InFlight:
    """How many requests are being answered (handlers, and streams until they end). uvicorn cancels what its grace
    period left, then shuts the app down, and a worker ends (re-raising the signal) as soon as that returns: the app's
    shutdown waits (``drained``) so that each cancelled request sends its 503 first."""

    def __init__(self) -> None:
        self.n = 0

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        self.n += 1
        try:
            yield
        finally:
            self.n -= 1

    async def drained(self, timeout_s: float) -> None:
        """Return once no request is in flight, or after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while self.n > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


class _Gone(Exception):
    """The client closed its connection before its answer."""


async def _unless_gone(request: HTTPRequest, work: Awaitable[T]) -> T:
    """``await work``, unless the client of ``request`` disconnects first: then ``work`` is cancelled (its
    upstream request closed at once) and _Gone raised. The request's body must have been read already (the
    watch reads the connection's next message, which is then its end). A cancellation from outside (a
    time-out, the server's shutdown) cancels ``work`` too and is raised."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for each in (watch, task):
            if not each.done():
                each.cancel()
        # the cancelled work ends at its next await (its connection closed); bounded all the same
        await asyncio.wait((watch, task), timeout=10)
    left = watch.done() and not watch.cancelled() and watch.exception() is None
    if task.done() and not task.cancelled():
        if not left:
            return task.result()
        task.exception()  # retrieved: what the cancelled work raised on its way out is no one's answer
    if not left and not task.done():  # pragma: no cover - a work that ignores its cancellation for 10 s
        log.warning("a cancelled request did not end within 10 s")
    raise _Gone


def _uncancel() -> None:
    """This task's cancellation is handled (answered): later awaits (sending the answer) run as usual."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def _bounded(events: AsyncIterator[StreamEvent], deadline: float) -> AsyncIterator[StreamEvent]:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            async with asyncio.timeout(left):  # not wait_for: a cancellation racing the event would be dropped
                event = await anext(events)
        except StopAsyncIteration:
            return
        yield event


async def _next(events: AsyncIterator[StreamEvent]) -> StreamEvent | None:
    return await anext(events, None)


async def _settle(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` (a pending read of a stream's next event) and wait for it to end, its outcome dropped. Once:
    a second cancellation would cut the upstream connection's own clean-up (left open until the upstream's
    time-out)."""
    if not task.done() and not task.cancelling():
        task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait((task,), timeout=10)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning


async def _aclose(events: Any) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):  # closing after an error must not raise a second one
            await close()
