"""The DashScope backend: a wire protocol (compat | native, ``qwenvl.protocols``) over the transport, sync and
async. What the two share is here once (``_Wire``: URL, body, headers, cache key, reading a stream up to its
first content; ``_Declared``: what the backend declares); each class keeps only its I/O."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from qwenvl._constants import LISTING_TIMEOUT_S, SERVE_READY_TIMEOUT_S
from qwenvl.backends import oss
from qwenvl.backends.base import MediaForm, aassembled, assembled, astream_events, stream_events
from qwenvl.config import Protocol, effective_region, needs_dashscope_key, region_of_url, resolve_base_url
from qwenvl.errors import APIError, APIStatusError, MalformedResponseError, QwenVLError
from qwenvl.plan import Call, ensure_sendable
from qwenvl.protocols import get
from qwenvl.protocols.common import StreamDriver, answer_events, load_json
from qwenvl.retry import RetryHook
from qwenvl.transport import AsyncTransport, LineStream, Policy, Transport
from qwenvl.types import Request, Response, StreamEvent, seconds

if TYPE_CHECKING:
    import httpx

# what DashScope's Qwen-VL models take (per model: qwenvl.models.ModelInfo)
ABILITIES = frozenset({"images", "video-frames", "video-file", "stream", "tools", "json", "thinking"})


def policy_for(call: Call) -> Policy:
    return request_policy(call.request)


def request_policy(r: Request) -> Policy:
    """The transport's policy for a request: its time-out, retries and backoff."""
    return Policy(timeout_s=r.timeout_s, max_retries=r.max_retries, backoff_s=r.retry_backoff_s)


def served_models(
    base_url: str | None, api_key: str | None, *, region: str | None = None, http_client: httpx.Client | None = None
) -> dict[str, dict[str, Any]]:
    """What a server speaking DashScope's protocols that is not DashScope's own (a ``qwenvl serve``) lists of its
    models: ``GET {compat base}/models`` (the compat base derived from ``base_url`` as ``config.resolve_base_url``
    does, for either protocol's URL), once, with ``api_key`` if any, within ``LISTING_TIMEOUT_S`` and no retry:
    ``{id: entry}`` (entries as ``qwenvl.backends.family.listing_entry`` writes them). ``{}`` without asking
    anything for DashScope's own endpoints (``config.needs_dashscope_key``: they list nothing a client needs), and
    ``{}`` when the server does not answer in time, refuses, or lists nothing usable. Raises nothing."""
    try:
        url = resolve_base_url("compat", region=region, base_url=base_url)
    except QwenVLError:
        return {}
    if needs_dashscope_key(url):
        return {}
    transport = Transport(api_key or "", http_client=http_client)
    try:
        data = transport.get_json(url + "/models", Policy(timeout_s=LISTING_TIMEOUT_S, max_retries=0))
    except QwenVLError:
        return {}
    finally:
        transport.close()
    listed = data.get("data") if isinstance(data, dict) else None
    if not isinstance(listed, list):
        return {}
    return {str(m["id"]): m for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)}


def served_entry(
    base_url: str | None, api_key: str | None, name: str, *, region: str | None = None
) -> dict[str, Any] | None:
    """What a server speaking DashScope's protocols that is not DashScope's own says of ``name`` asked by name
    (``GET {compat base}/models/{name}``: ``families.retrieve_entry``; a ``qwenvl serve`` answers it for the names
    its listing leaves out), once, within ``LISTING_TIMEOUT_S``, no retry. None for DashScope's own endpoints
    (nothing is asked), or when the server gives no entry for it. Raises nothing."""
    from qwenvl.backends.family import retrieve_entry

    try:
        url = resolve_base_url("compat", region=region, base_url=base_url)
    except QwenVLError:
        return None
    if needs_dashscope_key(url):
        return None
    transport = Transport(api_key or "")
    try:
        policy = Policy(timeout_s=LISTING_TIMEOUT_S, max_retries=0)
        return retrieve_entry(lambda u: transport.get_json(u, policy), url, name)
    finally:
        transport.close()


class _Wire:
    """What the sync and async backends share: URL, body and headers of a call, and stream decoding."""

    def __init__(self, protocol: Protocol, base_url: str) -> None:
        self.protocol = protocol
        self.proto = get(protocol)
        self.base_url = base_url
        self.name = f"dashscope-{protocol}"

    def base(self, call: Call) -> str:
        """The base URL a call goes to: its own ``base_url`` when it sets one, else the backend's."""
        if call.request.base_url:
            return resolve_base_url(self.protocol, base_url=call.request.base_url)
        return self.base_url

    def url(self, call: Call) -> str:
        return self.base(call) + self.proto.endpoint

    def body(self, call: Call, stream: bool) -> dict[str, Any]:
        ensure_sendable(call)
        return self.proto.build_body(call, stream=stream)

    def headers(self, call: Call, stream: bool) -> dict[str, str]:
        return self.proto.headers(call, stream=stream)

    def post(self, call: Call, stream: bool) -> tuple[str, dict[str, Any], Policy, dict[str, str]]:
        """(url, body, policy, headers): the transport's arguments for one call."""
        return self.url(call), self.body(call, stream), policy_for(call), self.headers(call, stream)

    def cache_key(self, call: Call) -> str:
        """The response cache's key: protocol, base URL (a loopback test server never answers for the cloud) and
        the non-streamed body."""
        from qwenvl.store.cache import cache_key

        return cache_key(self.protocol, self.base(call), self.proto.build_body(call, stream=False))

    def parse(self, data: Any, call: Call, headers: dict[str, str]) -> Response:
        return self.proto.parse_response(data, model=call.request.model, request_id=headers.get("x-request-id"))

    def parser(self, call: Call, stream: LineStream) -> StreamDriver:
        return StreamDriver(self.proto.stream_parser(call.request.model, stream.headers.get("x-request-id")))

    def non_sse(self, call: Call, stream: LineStream, body: bytes) -> list[StreamEvent]:
        """A streaming request answered with a whole body (``read_whole``): JSON, or an error for anything else."""
        return answer_events(self.parse(load_json(body, "the reply"), call, dict(stream.headers)))


def storage_region(base_url: str, region: str | None) -> str:
    """The region whose temporary storage a DashScope backend at ``base_url`` would use: the endpoint's own region
    (``config.region_of_url``), else ``region`` (``config.effective_region``). Raises UsageError for an unknown
    region."""
    return region_of_url(base_url) or effective_region(region)


class _Declared:
    """What both DashScope backends declare (``qwenvl.backends.base.Backend``)."""

    _wire: _Wire
    protocol: Protocol
    name: str
    base_url: str
    media_form: MediaForm = "data-url"  # what does not fit inline goes to oss:// temporary storage (``oss``)
    abilities: frozenset[str] = ABILITIES

    def _declare(self, protocol: Protocol, base_url: str | None, region: str | None) -> None:
        self._wire = _Wire(protocol, resolve_base_url(protocol, region=region, base_url=base_url))
        self.protocol = protocol
        self.name = self._wire.name
        self.base_url = self._wire.base_url

    def cache_key(self, call: Call) -> str:
        return self._wire.cache_key(call)


class DashScopeBackend(_Declared):
    def __init__(
        self,
        api_key: str,
        *,
        key_source: str | None = None,
        protocol: Protocol = "compat",
        base_url: str | None = None,
        region: str | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        self._declare(protocol, base_url, region)
        self.region = storage_region(self.base_url, region)  # decides temporary storage
        kw = {"sleep": sleep} if sleep else {}
        self.transport = Transport(api_key, key_source=key_source, http_client=http_client, on_retry=on_retry, **kw)
        self.uploaded = oss.Uploaded()  # what this backend put in temporary storage: sent again, not uploaded again

    def close(self) -> None:
        self.transport.close()

    def uploads(self, call: Call) -> Call:
        """Move what does not fit inline (or everything, upload="oss") to temporary storage."""
        ensure_sendable(call)  # before anything is uploaded (the body checks again)
        chosen = oss.choose(call, call.request.upload, self.protocol, self.region)
        if not chosen:
            return call
        native_base = resolve_base_url("native", base_url=call.request.base_url or self.base_url)
        return oss.upload(call, chosen, self.transport, native_base, self.uploaded)

    def complete(self, call: Call) -> Response:
        """One answer. A stream-only model (``ModelInfo.stream_only``, e.g. QVQ) is streamed on the wire and the
        answer assembled: the one place that rule lives, so every verb and ``Client.complete`` obey it."""
        if call.model.stream_only:
            return assembled(self.stream(call))
        call = self.uploads(call)
        data, headers = self.transport.post_json(*self._wire.post(call, False))
        return self._wire.parse(data, call, headers)

    def stream(self, call: Call) -> Iterator[StreamEvent]:
        call = self.uploads(call)
        w = self._wire
        yield from stream_events(
            self.transport, w.post(call, True), lambda s: w.parser(call, s), lambda s, body: w.non_sse(call, s, body)
        )


class AsyncDashScopeBackend(_Declared):
    def __init__(
        self,
        api_key: str,
        *,
        key_source: str | None = None,
        protocol: Protocol = "compat",
        base_url: str | None = None,
        region: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Any = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        self._declare(protocol, base_url, region)
        kw = {"sleep": sleep} if sleep else {}
        self.transport = AsyncTransport(
            api_key, key_source=key_source, http_client=http_client, on_retry=on_retry, **kw
        )
        # uploads run in a worker thread through a synchronous transport
        self._sync = DashScopeBackend(
            api_key, key_source=key_source, protocol=protocol, base_url=self.base_url, region=region, on_retry=on_retry
        )

    async def aclose(self) -> None:
        await self.transport.aclose()
        self._sync.close()

    async def ready(self, timeout_s: float = SERVE_READY_TIMEOUT_S) -> str | None:
        """None when the service answers this backend's key now, else why not (one line). One probe, not
        retried, ``timeout_s`` seconds: ``GET {compatible-mode base}/models`` with the key (``qwenvl serve``'s
        ``/ready``). Any answer but these is "answers": no connection or no reply in time, a 5xx (the service is
        down or overloaded), 401/403 (the key is refused: every request would fail). A 404 (a proxy or a double
        that does not list models) still answers. Raises UsageError (naming it) for a ``timeout_s`` that is no
        duration (``types.seconds``: finite, above 0, at most a day); nothing else."""
        timeout_s = seconds(timeout_s, "timeout_s")
        url = resolve_base_url("compat", base_url=self.base_url) + "/models"
        try:
            await asyncio.to_thread(self._sync.transport.get_json, url, Policy(timeout_s=timeout_s, max_retries=0))
        except APIStatusError as exc:
            if exc.status in (401, 403):
                return f"the upstream service refuses this server's own key (HTTP {exc.status})"
            if exc.status >= 500:
                return f"the upstream service answers HTTP {exc.status}: {exc.message}"
        except APIError as exc:
            if not isinstance(exc, MalformedResponseError):  # a reply that is not JSON still came
                return f"the upstream service does not answer: {exc}"
        except QwenVLError as exc:
            return f"the upstream service cannot be asked: {exc}"
        return None

    async def uploads(self, call: Call) -> Call:
        ensure_sendable(call)
        if not oss.choose(call, call.request.upload, self.protocol, self._sync.region):
            return call
        return await asyncio.to_thread(self._sync.uploads, call)

    async def complete(self, call: Call) -> Response:
        """As ``DashScopeBackend.complete`` (stream-only models are streamed and assembled)."""
        if call.model.stream_only:
            return await aassembled(self.stream(call))
        call = await self.uploads(call)
        data, headers = await self.transport.post_json(*self._wire.post(call, False))
        return self._wire.parse(data, call, headers)

    async def stream(self, call: Call) -> AsyncIterator[StreamEvent]:
        call = await self.uploads(call)
        w = self._wire
        events = astream_events(
            self.transport, w.post(call, True), lambda s: w.parser(call, s), lambda s, body: w.non_sse(call, s, body)
        )
        async with aclosing(events) as rest:
            async for event in rest:
                yield event
