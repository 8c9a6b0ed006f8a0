"""``qwenvl serve``: the DashScope API (both protocols) in front of any qwenvl backend, as a FastAPI app.

Routes (the service's own paths, so the official ``openai`` and ``dashscope`` SDKs need only a base URL):

    POST /compatible-mode/v1/chat/completions   (and /v1/chat/completions)   OpenAI-compatible, SSE stream
    POST /api/v1/services/aigc/multimodal-generation/generation             native, X-DashScope-SSE stream
    GET  /api/v1/uploads?action=getPolicy&model=M, POST /api/v1/uploads/oss   temporary storage (uploads.py)
    GET  /v1/models (and /compatible-mode/v1/models), GET /health, GET /ready

Every request goes through the library: the wire body is parsed by ``protocols.inbound`` into a Request,
planned by the client (the media checks, resizing to the model's budget, frames), answered by the backend,
and the Response written back by ``protocols.inbound`` in the caller's protocol. Errors are the service's
codes and bodies in that protocol. Security rules are in ``security.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from qwenvl._constants import (
    FETCH_TIMEOUT_S,
    SERVE_MAX_BODY_BYTES,
    SERVE_MAX_CONCURRENT_PER_KEY,
    SERVE_MAX_MEDIA_ITEMS,
    SERVE_REQUEST_TIMEOUT_S,
)
from qwenvl.errors import (
    APIError,
    APIStatusError,
    APITimeoutError,
    MalformedResponseError,
    MediaError,
    MissingAPIKeyError,
    QwenVLError,
    StreamInterruptedError,
    UsageError,
)
from qwenvl.interfaces import SupportsAsyncComplete
from qwenvl.media.sources import to_data_url
from qwenvl.protocols import get, inbound
from qwenvl.protocols.base import ServerSide
from qwenvl.retry import RETRYABLE_STATUS, should_retry
from qwenvl.server.security import bearer, fetch_public, key_matches
from qwenvl.server.uploads import FORM_PATH, UPLOAD_PATH, UploadStore
from qwenvl.types import ImagePart, Message, StreamEvent, VideoPart

try:
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.responses import JSONResponse, StreamingResponse
except ImportError as exc:  # pragma: no cover - the CLI checks first and names the extra
    raise ImportError('qwenvl serve needs its extra: pip install "qwenvl[serve]"') from exc

log = logging.getLogger("qwenvl.serve")

COMPAT_PATHS = ("/compatible-mode/v1/chat/completions", "/v1/chat/completions")
NATIVE_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
OSS_RESOLVE_HEADER = "x-dashscope-ossresourceresolve"


@dataclass
class ServeSettings:
    """Limits and rules of one server. Sizes in bytes, times in seconds."""

    api_key: str | None = None  # None: no authentication (the CLI allows it only on loopback)
    model_map: dict[str, str | None] = field(default_factory=dict)  # name clients send -> backend model
    # (None: the backend's own); {} = any name: passed on to a cloud gateway, the backend's model for a local one
    pass_model_names: bool = True
    fetch_urls: bool = False  # fetch http(s) media here (local backends); a cloud gateway passes URLs on
    allow_private_urls: bool = False
    max_body_bytes: int = SERVE_MAX_BODY_BYTES
    max_media_items: int = SERVE_MAX_MEDIA_ITEMS  # images and videos in one request
    max_frames: int = 768  # frames in one frame-list video
    download_max_bytes: int = 20 * 1024 * 1024
    download_timeout_s: float = FETCH_TIMEOUT_S
    max_concurrent_per_key: int = SERVE_MAX_CONCURRENT_PER_KEY
    request_timeout_s: float = SERVE_REQUEST_TIMEOUT_S


class _Refused(Exception):
    """An answer the server gives without asking the model: (status, message[, code])."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _Slots:
    """Concurrent requests per API key; beyond the limit the caller gets 429 with Retry-After."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy: dict[str, int] = {}

    def take(self, key: str) -> None:
        if self.busy.get(key, 0) >= self.limit:
            raise _Refused(
                429, f"too many concurrent requests for this key (limit {self.limit})", headers={"Retry-After": "1"}
            )
        self.busy[key] = self.busy.get(key, 0) + 1

    def give(self, key: str) -> None:
        self.busy[key] -= 1


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
) -> FastAPI:
    """The app around ``client`` (a ``qwenvl.AsyncClient``, whose backend answers). The app closes the
    client, the upload store and ``stores`` (the app's response cache and usage log, given to the client by
    ``main.app_from_config``) when it shuts down."""
    settings = settings or ServeSettings()
    store = uploads or UploadStore()
    slots = _Slots(settings.max_concurrent_per_key)

    # a local backend (made now: its readiness is asked of it); None: the DashScope cloud, made on first use
    backend = getattr(client, "backend", None) if getattr(client, "is_local", False) else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warm = getattr(backend, "warm", None)  # an in-process model starts loading now (/ready: 503 until it has)
        warming = asyncio.create_task(warm()) if warm is not None else None
        yield
        if warming is not None and not warming.done():
            warming.cancel()
        await client.aclose()
        store.close()
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
        return JSONResponse(
            error_body(proto, exc.status_code, message, None, str(uuid.uuid4())), status_code=exc.status_code
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
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise _Refused(
                    413,
                    f"the request body is over this server's {settings.max_body_bytes // 2**20} "
                    "MiB limit; upload large files instead of inlining them",
                )
            chunks.append(chunk)
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

    async def plan(parsed: inbound.Inbound, request: HTTPRequest, aliases: dict[str, str]) -> Any:
        req = parsed.request
        target = served_model(req.model)
        oss_ok = request.headers.get(OSS_RESOLVE_HEADER, "").lower() == "enable"
        messages = await resolve_media(req.messages, req.model, oss_ok, aliases)
        fields = {**req.model_dump(exclude_unset=True), "messages": messages}
        fields.pop("model", None)
        if target:
            fields["model"] = target
        if any(m.media() for m in messages):  # decoding and resizing: off the event loop
            call = await asyncio.to_thread(client.plan, fields)
        else:  # text only: planning is microseconds, a thread hop would cost more
            call = client.plan(fields)
        # send what the caller set, not the library's own defaults (temperature 0.2, max_tokens 512)
        call.params = {k: v for k, v in call.params.items() if k in parsed.given}
        return call

    def served_model(name: str) -> str | None:
        """The backend's model for the name a client sent (None: the backend's own); 404 when not served."""
        if settings.model_map:
            if name not in settings.model_map:
                raise _Refused(
                    404, f"Model not exist: {name} (this server serves {', '.join(sorted(settings.model_map))})"
                )
            return settings.model_map[name]
        return name if settings.pass_model_names else None

    def error_body(proto: ServerSide, status: int, message: str, code: str | None, rid: str) -> dict[str, Any]:
        return proto.error_body(status, message, request_id=rid, code=code)

    def describe(
        exc: BaseException, rid: str, aliases: dict[str, str] | None = None
    ) -> tuple[int, str, str | None, dict[str, str]]:
        """(status, one-line message, service code, headers) for any failure; nothing internal leaks: no
        traceback, no server path (an upload's path is named by its oss:// reference), no key, no upstream URL.
        A failure of the upstream is told as ``upstream_failure`` says."""
        if isinstance(exc, TimeoutError):
            exc = _Refused(504, "the request timed out on this server")
        if isinstance(exc, _Refused):
            return exc.status, exc.message, exc.code, exc.headers
        if isinstance(exc, APIError):
            log.warning("the upstream failed answering %s: %s", rid, exc)  # the operator's log names the URL
            return upstream_failure(exc)
        status, code = inbound.error_kind(exc)
        message = _message(exc)
        hint = getattr(exc, "hint", None)
        if hint and isinstance(exc, UsageError | MediaError):
            message = f"{message} ({hint})"
        for path, ref in (aliases or {}).items():
            message = message.replace(path, ref)
        message = message.replace(str(store.folder), "(upload)")
        if not isinstance(exc, QwenVLError):
            log.exception("internal error while answering %s", rid)
        return status, message, code, {}

    def refuse(proto: ServerSide, exc: BaseException, rid: str, aliases: dict[str, str] | None = None) -> JSONResponse:
        status, message, code, headers = describe(exc, rid, aliases)
        return JSONResponse(error_body(proto, status, message, code, rid), status_code=status, headers=headers)

    async def handle(request: HTTPRequest, proto: ServerSide) -> Any:
        rid = str(uuid.uuid4())
        deadline = time.monotonic() + settings.request_timeout_s
        key = None
        try:
            key = authorize(request)
            body = await read_json(request)
            parsed = proto.parse_body(body, request.headers)
            slots.take(key)
        except Exception as exc:
            return refuse(proto, exc, rid)
        streaming = False
        aliases: dict[str, str] = {}
        events: AsyncIterator[StreamEvent] | None = None
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                call = await plan(parsed, request, aliases)
                if not parsed.stream:
                    response = await client.send(call)
                    return JSONResponse(proto.response_body(parsed, response, rid))
                # the status line waits for the upstream's first event: a failure before it (a refusal, a 429
                # with its Retry-After, a time-out) is an HTTP error in the protocol's shape, not a 200 stream
                events = client.send_stream(call)
                first = await anext(events, None)
            streaming = True  # from here the stream owns the slot and gives it back when it ends
            return _EventStream(
                stream_body(proto, parsed, events, first, deadline, rid, aliases),
                on_close=lambda: slots.give(key),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        except Exception as exc:
            return refuse(proto, exc, rid, aliases)
        finally:
            if not streaming:
                slots.give(key)
                if events is not None:
                    await _aclose(events)

    async def stream_body(
        proto: ServerSide,
        parsed: inbound.Inbound,
        events: AsyncIterator[StreamEvent],
        first: StreamEvent | None,
        deadline: float,
        rid: str,
        aliases: dict[str, str],
    ) -> AsyncIterator[bytes]:
        """The stream's wire chunks: ``first`` (the backend's first event, already had), then the rest of
        ``events`` until ``deadline`` (monotonic seconds); a failure on the way is the protocol's error event,
        which ends the stream (never a silent truncation)."""
        state = inbound.StreamState(parsed=parsed, request_id=rid)

        async def all_events() -> AsyncIterator[StreamEvent]:
            if first is not None:
                yield first
            async for event in _bounded(events, deadline):
                yield event

        try:
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
            status, message, code, _ = describe(exc, rid, aliases)
            for chunk in proto.stream_error(state, status, error_body(proto, status, message, code, rid)):
                yield chunk
        finally:
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
        names = sorted(settings.model_map)
        if not names and settings.pass_model_names:
            names = _known_models()
        elif not names:  # a local backend: the model it serves
            try:
                names = [(await asyncio.to_thread(client.resolve_model)).name]
            except QwenVLError as exc:
                return refuse(COMPAT, exc, str(uuid.uuid4()))
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": n, "object": "model", "created": 0, "owned_by": "qwenvl"} for n in names],
            }
        )

    for path in ("/v1/models", "/compatible-mode/v1/models"):
        app.add_api_route(path, models, methods=["GET"])

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 when a request could be answered now: the local model is loaded, the engine answers (the
        backend's ``ready()``: None, else why not); else 503 with the reason. The cloud gateway is ready."""
        check = getattr(backend, "ready", None)
        why = await check() if check is not None else None
        body: dict[str, Any] = {"ready": why is None, "model_loaded": why is None}
        if why is not None:
            body["reason"] = why
        return JSONResponse(body, status_code=200 if why is None else 503)

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
        return JSONResponse({"request_id": rid, "data": store.policy(model, host)})

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
            body = f'<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>{_xml(str(exc))}</Message></Error>'
            return Plain(body, status_code=403, media_type="application/xml")
        except Exception:
            return Plain(
                '<?xml version="1.0"?><Error><Code>InvalidArgument</Code></Error>',
                status_code=400,
                media_type="application/xml",
            )
        return Plain(status_code=200)

    if playground:
        from qwenvl.server import playground as page

        async def guard(request: HTTPRequest) -> dict[str, Any]:
            authorize(request)
            body = await read_json(request)
            if not isinstance(body, dict):
                raise _Refused(400, "the body must be a JSON object")
            return body

        page.add_routes(
            app,
            client,
            guard=guard,
            resolve=lambda ref, model: resolve_ref(ref, model, False),
            fail=lambda exc: refuse(COMPAT, exc, str(uuid.uuid4())),
            model_for=served_model,
        )
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
        return exc.message
    return str(exc) if isinstance(exc, QwenVLError) else "internal error"


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _known_models() -> list[str]:
    from qwenvl.models import DEFAULT_MODEL, MODELS

    return [DEFAULT_MODEL, *sorted(m for m in MODELS if m != DEFAULT_MODEL)]


class _EventStream(StreamingResponse):
    """A stream that stops the moment its client disconnects: generation is cancelled and the slot freed
    at once, not at the next write (Starlette notices a disconnect only on write for ASGI spec 2.4)."""

    def __init__(self, content: Any, *, on_close: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self._run(scope, receive, send)
        except asyncio.CancelledError:  # the server is shutting down mid-stream: end quietly, no traceback
            log.info("a stream was cancelled by the server's shutdown")
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


async def _bounded(events: AsyncIterator[StreamEvent], deadline: float) -> AsyncIterator[StreamEvent]:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            event = await asyncio.wait_for(anext(events), timeout=left)
        except StopAsyncIteration:
            return
        yield event


async def _aclose(events: Any) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):  # closing after an error must not raise a second one
            await close()
