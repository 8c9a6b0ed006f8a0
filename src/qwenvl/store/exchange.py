"""What happens around one backend call: the client's response cache and usage log (the client's only hook).

ex = exchange.begin(client, call)        # a cache hit is ready in ex.response
if ex.response is None:
    try:
        response = ex.done(backend.complete(call))   # stores in the cache, logs "ok"
    except QwenVLError as exc:
        ex.failed(exc)                                # logs the error type
        raise
"""

from __future__ import annotations

import time

from qwenvl.config import resolve_base_url
from qwenvl.interfaces import ClientEndpoint
from qwenvl.models import answer_cost, currency_of
from qwenvl.plan import Call, ensure_sendable
from qwenvl.protocols import get
from qwenvl.store.cache import ResponseCache, cache_key, source_key
from qwenvl.store.usage import Entry, UsageLog
from qwenvl.types import Response

CANCELLED = "cancelled"  # the outcome of a stream its reader stopped reading (tokens unknown)


def endpoint(client: ClientEndpoint, call: Call) -> str:
    """The URL the call goes to (part of the cache key: a loopback test server never answers for the cloud)."""
    if call.request.base_url:
        return resolve_base_url(client.protocol, base_url=call.request.base_url)
    backend = getattr(client, "_backend", None)
    if backend is not None:
        return str(getattr(backend, "base_url", None) or getattr(backend, "name", type(backend).__name__))
    return resolve_base_url(client.protocol, region=client.region, base_url=client.base_url)


def key_for(client: ClientEndpoint, call: Call) -> str:
    backend = getattr(client, "_backend", None)
    if backend is not None and hasattr(backend, "cache_key"):  # a backend that keys its own calls
        return backend.cache_key(call)
    return cache_key(client.protocol, endpoint(client, call), get(client.protocol).build_body(call, stream=False))


def source_key_for(client: ClientEndpoint, call: Call) -> str:
    return source_key(client.protocol, endpoint(client, call), call)


class Exchange:
    def __init__(self, client: ClientEndpoint, call: Call, *, stream: bool = False) -> None:
        ensure_sendable(call)  # every send of a Client goes through here, whatever its backend
        self.protocol: str = client.protocol
        self.local = bool(getattr(client, "is_local", False))  # a local model costs no tokens
        self.model = call.request.model
        self.request_id = call.request_id  # a server's own id for the request (qwenvl serve), else the service's
        self.region: str | None = getattr(client, "region", None)
        self.started = time.monotonic()
        self.finished = False
        self.response: Response | None = None
        self.cache: ResponseCache | None = None if stream else getattr(client, "cache", None)
        self.log: UsageLog | None = getattr(client, "usage_log", None)
        self.key: str | None = None
        if self.cache is not None:
            self.key = key_for(client, call)
            hit = self.cache.get(self.key)
            if hit is not None:
                self.response = hit
                self._log(hit, "cached")

    def done(self, response: Response) -> Response:
        if self.cache is not None and self.key is not None:
            self.cache.put(self.key, response)
        self._log(response, "ok")
        return response

    def failed(self, exc: BaseException | None = None, *, outcome: str | None = None) -> None:
        """Log a call that gave no response: the error ``exc`` (its type is the outcome), or ``outcome``."""
        if self.finished:
            return
        self.finished = True
        status = getattr(exc, "status", None)
        if self.log is None:
            return
        self.log.record(
            Entry(
                model=self.model,
                protocol=self.protocol,
                outcome=outcome or type(exc).__name__,
                latency_s=time.monotonic() - self.started,
                request_id=self.request_id or getattr(exc, "request_id", None),
                status=status or None,
                code=getattr(exc, "code", None),
            )
        )

    def _log(self, response: Response, outcome: str) -> None:
        self.finished = True
        if self.log is None:
            return
        u = response.usage
        # a local model's answer has no price (None, no currency: models.LOCAL), cached or not; a cached one from
        # DashScope was not paid (0.0)
        cost = (
            0.0
            if outcome == "cached" and not self.local
            else answer_cost(response, region=self.region, model=self.model, local=self.local)
        )
        self.log.record(
            Entry(
                model=self.model,
                protocol=self.protocol,
                outcome=outcome,
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                image_tokens=u.image_tokens,
                cost=cost,
                currency=currency_of(self.region) if cost is not None else None,
                latency_s=time.monotonic() - self.started,
                request_id=self.request_id or response.request_id,
            )
        )


def begin(client: ClientEndpoint, call: Call, *, stream: bool = False) -> Exchange:
    return Exchange(client, call, stream=stream)
