"""The one place for HTTP: httpx clients (sync and async), deadlines, retries with backoff, error mapping.

Every httpx exception becomes a qwenvl error here (chained with ``from``); nothing else imports httpx.

**Deadlines.** httpx's time-outs bound each socket operation, so a server that trickles one byte a second
(in the status line, the headers, the body, or as SSE comments) would hold a request for ever. Here each
attempt has a ``Budget`` that every socket operation of it reads (connect, TLS, send, receive): the
connection pools of our httpx clients go through ``_Backend``, which shortens each operation's time-out to
what is left of the budget and fails once it is spent. Per attempt (``Policy``):

- a plain request (and ``fetch_url``) must be complete within ``timeout_s``: connect, send, status line
  and headers, body;
- a file transfer (``post_form``, ``post_files``, ``get_bytes``: temporary-storage and Batch API uploads,
  result downloads) within ``timeout_s`` plus one second per ``MIN_TRANSFER_RATE`` bytes of the body it
  sends or, once the headers declare it, receives;
- a stream must deliver its first event that carries data within ``timeout_s``, then never go more than
  ``timeout_s`` without one (SSE comments and keep-alives are not progress, and the time the caller spends
  between two events does not count), and end within ``stream_cap_s`` (default ``STREAM_CAP_FACTOR`` x
  ``timeout_s``, at least ``STREAM_CAP_MIN_S``).

Not bounded by the budget: name resolution (``getaddrinfo`` has no time-out in the standard library).

**Retries** follow ``qwenvl.retry`` (the policy): a 429/5xx reply, a connection error or a time-out is
retried ``max_retries`` times; so is an error that arrives as the first event of a 200 stream, before any
content (the backend's ``start`` callback raises it; see ``Transport.open_stream``). A POST whose 2xx status
line arrived is never sent again when its body or stream then breaks off or stalls (``qwenvl.retry.may_resend``:
the service may have done and charged for the work). Before each wait the ``on_retry`` hook is told (the CLI
prints it on a terminal).

**Errors** are mapped here once for both transports (``map_exception``): the same failure is the same class,
message and hint in the sync and async clients, streaming or not, whatever the protocol or backend;
``tests/test_error_parity.py`` holds the matrix.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import platform
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpcore
import httpx

from qwenvl import __version__
from qwenvl._constants import (
    CONNECT_TIMEOUT_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_S,
    DEFAULT_TIMEOUT_S,
    FETCH_TIMEOUT_S,
    MIN_TRANSFER_RATE,
    STREAM_CAP_FACTOR,
    STREAM_CAP_MIN_S,
)
from qwenvl.config import needs_dashscope_key
from qwenvl.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    MalformedResponseError,
    MediaError,
    UsageError,
    key_refused_hint,
    printable,
    redact,
)
from qwenvl.protocols.common import error_from_body, load_json
from qwenvl.protocols.sse import carries_data
from qwenvl.retry import (
    RetryHook,
    RetryNotice,
    give_up_hint,
    may_resend,
    parse_retry_after,
    retry_delay,
    should_retry,
    tell,
)

T = TypeVar("T")

USER_AGENT = f"qwenvl/{__version__} httpx/{httpx.__version__} python/{platform.python_version()}"
WRITE_SLICE = 16 * 1024  # a send is split so that a slow reader cannot stretch one write past the budget


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context shared by every client: loading the CA bundle costs ~20 ms per client."""
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class Policy:
    """Per-request network settings: seconds per attempt, retries and backoff base (see the module doc)."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    stream_cap_s: float | None = None  # None: max(STREAM_CAP_FACTOR * timeout_s, STREAM_CAP_MIN_S)

    @property
    def cap_s(self) -> float:
        if self.stream_cap_s is not None:
            return self.stream_cap_s
        return max(STREAM_CAP_FACTOR * self.timeout_s, STREAM_CAP_MIN_S)


class Budget:
    """The deadline of one attempt, read by every socket operation of it (monotonic clock, seconds).

    A plain request ends at ``start + timeout_s``. A stream's deadline starts the same (for its first data
    event) and moves to ``now + timeout_s`` after each data event (``progress``), never past the cap.
    """

    def __init__(
        self, policy: Policy, *, stream: bool = False, what: str = "reply", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.timeout_s = policy.timeout_s
        self.stream = stream
        self.what = what
        self.cap_s = policy.cap_s if stream else policy.timeout_s
        self.start = start = clock()
        self.cap_at = start + self.cap_s
        self.at = min(start + self.timeout_s, self.cap_at)
        self.progressed = False

    def remaining(self) -> float:
        return self.at - self._clock()

    def spent(self) -> bool:
        return self.remaining() <= 0.05

    def progress(self) -> None:
        """A data event arrived: the next one may take the whole time-out again (up to the cap)."""
        self.progressed = True
        self.at = min(self._clock() + self.timeout_s, self.cap_at)

    def allow(self, nbytes: int) -> None:
        """A plain request that transfers a body of ``nbytes``: one more second per MIN_TRANSFER_RATE bytes."""
        if self.stream or nbytes <= 0:
            return
        extra = nbytes / MIN_TRANSFER_RATE
        self.cap_s = self.timeout_s + extra
        self.cap_at = self.at = max(self.at, self.start + self.cap_s)

    def describe(self, answered: bool = True) -> str:
        """Which bound was reached, for the error message. ``answered``: the status line had arrived; before it,
        a plain request and a stream meet the same bound and say the same ("no reply within 2 s")."""
        t = f"{self.cap_s:g} s"
        if not answered:
            return f"no {self.what} within {t if not self.stream else f'{self.timeout_s:g} s'}"
        if not self.stream:
            return f"no complete {self.what} within {t}"
        t = f"{self.timeout_s:g} s"
        if self._clock() >= self.cap_at - 0.05:
            return f"the stream ran past its {self.cap_s:g} s limit"
        if self.progressed:
            return f"the stream sent no data for {t}"
        return f"no first event within {t}"

    def timeouts(self) -> dict[str, float]:
        """httpx's ``timeout`` request extension: each value carries this budget down to ``_Backend``."""
        return {
            "connect": _Limited(min(CONNECT_TIMEOUT_S, self.timeout_s), self),
            "read": _Limited(self.timeout_s, self),
            "write": _Limited(self.timeout_s, self),
            "pool": max(0.001, self.remaining()),
        }


class _Limited(float):
    """A per-operation time-out (its float value) that also carries the attempt's Budget."""

    budget: Budget

    def __new__(cls, value: float, budget: Budget) -> _Limited:
        obj = super().__new__(cls, value)
        obj.budget = budget
        return obj


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    """The time-out for one socket operation: the smaller of its own and what is left of the budget."""
    if not isinstance(timeout, _Limited):
        return timeout
    left = timeout.budget.remaining()
    if left <= 0:
        raise expired("the attempt's deadline has passed")
    return min(float(timeout), left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for i in range(0, max(len(buffer), 1), WRITE_SLICE):
            self._inner.write(buffer[i : i + WRITE_SLICE], _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        """Closed at once, a read in another thread included: the socket is shut down first, which wakes a
        ``recv`` blocked on it (a close alone does not, on Linux), so closing the client (``Client.close``, the
        pool's close) cancels a request in flight instead of leaving its thread waiting for the answer."""
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """Wraps httpcore's network backend so that every operation honours the attempt's Budget."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        return _Stream(
            self._inner.connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for i in range(0, max(len(buffer), 1), WRITE_SLICE):
            await self._inner.write(buffer[i : i + WRITE_SLICE], _left(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(
            await self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(
            await self._inner.connect_tcp(
                host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options
            )
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(
            await self._inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout), socket_options)
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


C = TypeVar("C", httpx.Client, httpx.AsyncClient)


def with_deadlines(client: C) -> C:
    """Make ``client``'s connection pools honour attempt budgets (returns the same client).

    Requests without a Budget are unaffected. Transports that are not httpx's own (e.g. ``MockTransport``)
    are left alone: there the time-outs are httpx's per-operation ones. This reaches into httpx's pools
    (``_transport``, ``_mounts``, ``_pool._network_backend``: stable since httpx 0.18 / httpcore 0.14);
    ``tests/test_deadlines.py`` fails if that ever changes.
    """
    for transport in [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]:
        pool = getattr(transport, "_pool", None)
        inner = getattr(pool, "_network_backend", None)
        if inner is None or isinstance(inner, _Backend | _AsyncBackend):
            continue
        if isinstance(inner, httpcore.AsyncNetworkBackend):
            pool._network_backend = _AsyncBackend(inner)  # type: ignore[union-attr]
        elif isinstance(inner, httpcore.NetworkBackend):
            pool._network_backend = _Backend(inner)  # type: ignore[union-attr]
    return client


def _reply_json(response: httpx.Response) -> Any:
    """The JSON of a reply that answered (``load_json``); MalformedResponseError for one that is not JSON, with the
    reply's HTTP status and ``x-request-id`` (for the service's support, as a status error has them)."""
    try:
        return load_json(response.content, "the reply")
    except MalformedResponseError as exc:
        exc.status = response.status_code
        exc.request_id = exc.request_id or response.headers.get("x-request-id")
        raise


def _headers(api_key: str, extra: dict[str, str] | None) -> dict[str, str]:
    out = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if api_key:  # local OpenAI-compatible engines take no key: send no Authorization header at all
        out["Authorization"] = f"Bearer {api_key}"
    out.update(extra or {})
    return out


CUT_OFF_HINT = (
    "The service answered, then the reply broke off; qwenvl did not send it again, since the service may have "
    "done (and charged for) the work. Run it again if that is acceptable."
)
TLS_HINT = (
    "Check the base URL's scheme (the cloud is https://; a local engine is usually http://), the system's CA "
    "certificates and any HTTPS proxy."
)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what lies beneath it: its causes, contexts and the members of exception groups."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend(getattr(e, "exceptions", None) or ())
        todo += [e.__cause__, e.__context__]
    return seen


def describe_failure(exc: httpx.HTTPError, answered: bool = False) -> tuple[str, str | None]:
    """(why, hint): why a connection failed, in qwenvl's own words, and a hint when the cause calls for its own.

    httpx words the same failure differently in its sync and asyncio backends (a refused connection is
    "[Errno 111] Connection refused" in one, "All connection attempts failed" in the other), so the words come
    from the cause (``ssl.SSLError``, ``socket.gaierror``, ``ConnectionRefusedError``...), never from httpx.
    ``answered``: the status line had arrived (the reply broke off after it). Raises nothing."""
    for e in _causes(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"the server's TLS certificate was refused ({e.verify_message or e.reason})", TLS_HINT
        if isinstance(e, ssl.SSLError):
            return f"the TLS handshake failed ({e.reason or e.strerror or type(e).__name__})", TLS_HINT
        if isinstance(e, socket.gaierror):
            return "the host name does not resolve", None
        if isinstance(e, ConnectionRefusedError):
            return "the connection was refused (nothing listens at that address)", None
    if answered:
        return "the connection closed before the reply was complete", None
    if any(isinstance(e, ConnectionResetError | BrokenPipeError) for e in _causes(exc)):
        return "the connection was reset", None
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        return "the server closed the connection without a reply", None
    return printable(str(exc)) or type(exc).__name__, None


def map_exception(
    exc: httpx.HTTPError,
    url: str,
    api_key: str | None = None,
    budget: Budget | None = None,
    *,
    method: str = "POST",
    status: int | None = None,
) -> APIError:
    """The qwenvl error for an httpx failure of one attempt, the same for the sync and async transports.

    ``status``: the status line had arrived when it failed (the body or stream broke off or stalled). Such an
    error is final (never retried: ``qwenvl.retry.may_resend``) unless the status is itself retried."""
    error: APIError
    if isinstance(exc, httpx.TimeoutException):
        if budget is not None and budget.spent():
            why = budget.describe(answered=status is not None)
            error = APITimeoutError(redact(f"timed out: {why} ({url})", api_key))
        else:
            kind = {
                httpx.ConnectTimeout: "connecting",
                httpx.ReadTimeout: "waiting for the reply",
                httpx.WriteTimeout: "sending",
                httpx.PoolTimeout: "waiting for a connection",
            }.get(type(exc), "talking to the service")
            error = APITimeoutError(redact(f"timed out {kind} ({url})", api_key))
        # the request was sent whole: the service has it (and may bill it), it answers too slowly
        error.delivered = isinstance(exc, httpx.ReadTimeout) or status is not None  # type: ignore[attr-defined]
    else:
        why, hint = describe_failure(exc, answered=status is not None)
        text = f"{url} answered HTTP {status}, then {why}" if status is not None else f"cannot reach {url}: {why}"
        error = APIConnectionError(redact(text, api_key), hint=hint)
    # a connection never made, or a wait for one, delivered nothing: that attempt was not billed
    error.delivered = status is not None or not isinstance(
        exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
    )
    if not may_resend(method, status):
        error.final = True  # type: ignore[attr-defined]
        if not isinstance(error, APITimeoutError):
            error.hint = CUT_OFF_HINT
    return error


def _length(headers: httpx.Headers) -> int:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else 0


def _status_error(response: httpx.Response, body: bytes, api_key: str, key_source: str | None = None) -> APIError:
    err = error_from_body(
        response.status_code,
        body,
        retry_after=parse_retry_after(response.headers),
        request_id=response.headers.get("x-request-id"),
    )
    err.message = redact(err.message, api_key)
    if isinstance(err, AuthenticationError):  # the hint names where the refused key came from, and whose server
        dashscope = needs_dashscope_key(str(response.request.url))
        err.hint = key_refused_hint(key_source, dashscope=dashscope) or err.raw_hint
    return err


def _redirect_error(response: httpx.Response, url: str, api_key: str) -> APIError:
    """A 3xx from the endpoint: never followed (the key would go wherever it points), never retried."""
    location = response.headers.get("location") or "(no Location header)"
    error = APIConnectionError(
        redact(f"{url} redirected to {location} (check --base-url)", api_key),
        hint="qwenvl does not follow redirects with your key: give the endpoint's real "
        "address as the base URL (--base-url, or DASHSCOPE_*_BASE_URL).",
    )
    error.final = True  # type: ignore[attr-defined]  # the same request would be redirected again
    return error


def _backoff(error: APIError, attempt: int, policy: Policy, on_retry: RetryHook | None) -> float:
    """Seconds to wait before the next attempt (telling ``on_retry``); raises ``error`` when it is final."""
    if getattr(error, "final", False):
        raise error
    if attempt >= policy.max_retries or not should_retry(error):
        hint = give_up_hint(error)
        if hint:
            error.hint = hint
        raise error
    delay = retry_delay(attempt, policy.backoff_s, getattr(error, "retry_after", None))
    tell(RetryNotice(error, attempt + 1, policy.max_retries, delay), on_retry)  # and the request's listener
    return delay


class LineStream:
    """The lines of an open streaming reply; transport failures surface as APIConnectionError.

    Each ``data`` line re-arms the attempt's Budget once the caller asks for the next line, so the caller's
    own time between two events is not counted as the server's silence."""

    def __init__(self, response: httpx.Response, url: str, api_key: str, budget: Budget | None = None) -> None:
        self._response = response
        self._url = url
        self._key = api_key
        self._budget = budget
        self.headers = response.headers
        self.content_type = response.headers.get("content-type", "")
        self.status = response.status_code

    def unreadable(self, exc: MalformedResponseError) -> MalformedResponseError:
        """``exc`` (this reply could not be read as the protocol's) with the reply's HTTP status and
        ``x-request-id`` where it has none, as ``_reply_json`` gives a whole reply's. Returns ``exc``."""
        exc.status = exc.status or self.status
        exc.request_id = exc.request_id or self.headers.get("x-request-id")
        return exc

    def _error(self, exc: httpx.HTTPError) -> APIError:
        status = self._response.status_code  # the reply had begun: a POST's is not sent again (``may_resend``)
        return map_exception(exc, self._url, self._key, self._budget, status=status)

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self._response.iter_lines():
                data = carries_data(line)
                yield line
                if data and self._budget is not None:
                    self._budget.progress()
        except httpx.HTTPError as exc:
            raise self._error(exc) from exc

    def read(self) -> bytes:
        try:
            return self._response.read()
        except httpx.HTTPError as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        self._response.close()


class AsyncLineStream(LineStream):
    async def __aiter__(self) -> AsyncIterator[str]:  # type: ignore[override]
        try:
            async for line in self._response.aiter_lines():
                data = carries_data(line)
                yield line
                if data and self._budget is not None:
                    self._budget.progress()
        except httpx.HTTPError as exc:
            raise self._error(exc) from exc

    async def aread(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise self._error(exc) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


def check_http_client(http_client: object, *, asynchronous: bool, who: str = "Client") -> None:
    """UsageError now, when ``http_client`` is not None nor the httpx client ``who`` sends through (an
    ``httpx.Client`` for ``Client`` and the synchronous transports, an ``httpx.AsyncClient`` for ``AsyncClient``
    and the async ones): given the other kind, its coroutines would never be awaited; given anything else, the
    first request would fail inside httpx's place. Raises nothing for a right one."""
    wanted = httpx.AsyncClient if asynchronous else httpx.Client
    if http_client is None or isinstance(http_client, wanted):
        return
    other = httpx.Client if asynchronous else httpx.AsyncClient
    mate = "AsyncClient" if not asynchronous else "Client"
    raise UsageError(
        f"http_client is {'an' if isinstance(http_client, other) else 'a'} "
        f"{'httpx.' if isinstance(http_client, other) else ''}{type(http_client).__name__}: "
        f"{who} sends through an httpx.{wanted.__name__}",
        hint=f"Give http_client=httpx.{wanted.__name__}(...)"
        + (f" (httpx.{other.__name__} is for qwenvl.{mate})" if who in ("Client", "AsyncClient") else "")
        + ", or leave it out.",
    )


class Transport:
    """Synchronous HTTP with deadlines and retries. ``http_client`` may be given (tests, proxies, custom
    TLS); its httpx connection pools are made to honour the deadlines (``with_deadlines``).

    ``on_retry`` is called with a ``RetryNotice`` before each wait (e.g. to show it on a terminal)."""

    def __init__(
        self,
        api_key: str,
        *,
        key_source: str | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], object] | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        check_http_client(http_client, asynchronous=False, who="this transport")
        self._key = api_key
        self._key_source = key_source  # where the key came from (config.KeyFound.source), for a 401's hint
        self._own = http_client is None
        self._client = with_deadlines(http_client or httpx.Client(follow_redirects=False, verify=tls_context()))
        self._closing = threading.Event()  # set by close(): a wait between attempts ends at once (default sleep)
        self._sleep = sleep or self._closing.wait
        self.on_retry = on_retry

    def close(self) -> None:
        """Close the connections (an own client's): a request in flight is cut at once, and neither retried nor
        left waiting out its back-off (its next attempt fails on the closed client)."""
        if self._own:
            self._client.close()
            self._closing.set()

    def _retrying(self, policy: Policy, stream: bool, once: Callable[[Budget], T]) -> T:
        attempt = 0
        while True:
            try:
                return once(Budget(policy, stream=stream))
            except APIError as error:
                if self._client.is_closed:  # cut by close(): not retried
                    raise
                delay = _backoff(error, attempt, policy, self.on_retry)
            self._sleep(delay)
            attempt += 1

    def _request(
        self, method: str, url: str, budget: Budget, stream: bool, kw: dict[str, Any], transfer: bool = False
    ) -> httpx.Response:
        """One attempt: the 2xx/3xx response (open when ``stream``, else read), or the error it maps to.
        ``transfer``: a file transfer, whose budget grows with the body sent and received (``Budget.allow``)."""
        status = None
        try:
            request = self._client.build_request(method, url, extensions={"timeout": budget.timeouts()}, **kw)
            if transfer:
                budget.allow(_length(request.headers))
            response = self._client.send(request, stream=True)
            status = response.status_code
            if response.is_redirect:
                response.close()
                raise _redirect_error(response, url, self._key)
            try:
                if response.status_code < 400:
                    if transfer:
                        budget.allow(_length(response.headers))
                    if not stream:
                        response.read()
                    return response
                body = response.read()
            finally:
                if response.status_code >= 400 or not stream:
                    response.close()
        except httpx.HTTPError as exc:
            raise map_exception(exc, url, self._key, budget, method=method, status=status) from exc
        raise _status_error(response, body, self._key, self._key_source)

    def _send(self, method: str, url: str, policy: Policy, *, transfer: bool = False, **kw: Any) -> httpx.Response:
        return self._retrying(policy, False, lambda budget: self._request(method, url, budget, False, kw, transfer))

    def post_json(
        self, url: str, body: dict[str, Any], policy: Policy, headers: dict[str, str] | None = None
    ) -> tuple[Any, dict[str, str]]:
        response = self._send("POST", url, policy, json=body, headers=_headers(self._key, headers))
        return _reply_json(response), dict(response.headers)

    def get_json(self, url: str, policy: Policy, params: dict[str, str] | None = None) -> Any:
        response = self._send("GET", url, policy, params=params, headers=_headers(self._key, None))
        return _reply_json(response)

    def post_form(self, url: str, data: dict[str, str], files: dict[str, Any], policy: Policy) -> None:
        """A multipart upload to a third-party host (no Authorization header is sent there)."""
        self._send("POST", url, policy, transfer=True, data=data, files=files, headers={"User-Agent": USER_AGENT})

    def post_files(self, url: str, data: dict[str, str], files: dict[str, Any], policy: Policy) -> Any:
        """A multipart upload to the service itself (with the key), e.g. a Batch API input file; the JSON reply."""
        response = self._send(
            "POST",
            url,
            policy,
            transfer=True,
            data=data,
            files=files,
            headers={"Authorization": f"Bearer {self._key}", "User-Agent": USER_AGENT},
        )
        return _reply_json(response)

    def get_bytes(self, url: str, policy: Policy) -> bytes:
        """A GET whose body is not JSON (e.g. a Batch API result file)."""
        return self._send("GET", url, policy, transfer=True, headers=_headers(self._key, None)).content

    def open_lines(self, url: str, policy: Policy) -> LineStream:
        """A GET whose body is read line by line as it arrives (e.g. a Batch API result file): the open reply once
        its status is 2xx (retried as any GET until then), the whole body within a file transfer's deadline
        (``timeout_s`` plus a second per ``MIN_TRANSFER_RATE`` bytes of its Content-Length). The caller closes it;
        a failure while reading it raises APIConnectionError and is not retried here."""

        def once(budget: Budget) -> LineStream:
            response = self._request("GET", url, budget, True, {"headers": _headers(self._key, None)}, transfer=True)
            return LineStream(response, url, self._key, budget)

        return self._retrying(policy, False, once)

    def open_stream(
        self,
        url: str,
        body: dict[str, Any],
        policy: Policy,
        headers: dict[str, str] | None = None,
        start: Callable[[LineStream], T] | None = None,
    ) -> tuple[LineStream, T | None]:
        """POST and return the open reply once its status is 2xx, with what ``start`` returned.

        ``start`` reads the stream up to its first content (the backend decodes the protocol); an error event
        it raises before returning (where the first content should be) counts as the attempt's failure and is
        retried like the same HTTP status. A connection that breaks or stalls after the 2xx status is not
        retried (``qwenvl.retry.may_resend``), nor is anything once ``start`` has returned: the caller may
        already hold part of the answer."""

        def once(budget: Budget) -> tuple[LineStream, T | None]:
            response = self._request("POST", url, budget, True, {"json": body, "headers": _headers(self._key, headers)})
            lines = LineStream(response, url, self._key, budget)
            try:
                return lines, (start(lines) if start is not None else None)
            except BaseException:
                lines.close()
                raise

        return self._retrying(policy, True, once)


class AsyncTransport:
    """The asyncio twin of Transport."""

    def __init__(
        self,
        api_key: str,
        *,
        key_source: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        on_retry: RetryHook | None = None,
    ) -> None:
        check_http_client(http_client, asynchronous=True, who="this transport")
        self._key = api_key
        self._key_source = key_source  # where the key came from (config.KeyFound.source), for a 401's hint
        self._own = http_client is None
        self._client = with_deadlines(http_client or httpx.AsyncClient(follow_redirects=False, verify=tls_context()))
        self._sleep = sleep
        self.on_retry = on_retry

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()

    async def _retrying(self, policy: Policy, stream: bool, once: Callable[[Budget], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await once(Budget(policy, stream=stream))
            except APIError as error:
                if self._client.is_closed:  # cut by aclose(): not retried
                    raise
                delay = _backoff(error, attempt, policy, self.on_retry)
            await self._sleep(delay)
            attempt += 1

    async def _request(self, method: str, url: str, budget: Budget, stream: bool, kw: dict[str, Any]) -> httpx.Response:
        """As ``Transport._request``."""
        status = None
        try:
            request = self._client.build_request(method, url, extensions={"timeout": budget.timeouts()}, **kw)
            response = await self._client.send(request, stream=True)
            status = response.status_code
            if response.is_redirect:
                await response.aclose()
                raise _redirect_error(response, url, self._key)
            try:
                if response.status_code < 400:
                    if not stream:
                        await response.aread()
                    return response
                body = await response.aread()
            finally:
                if response.status_code >= 400 or not stream:
                    await response.aclose()
        except httpx.HTTPError as exc:
            raise map_exception(exc, url, self._key, budget, method=method, status=status) from exc
        raise _status_error(response, body, self._key, self._key_source)

    async def post_json(
        self, url: str, body: dict[str, Any], policy: Policy, headers: dict[str, str] | None = None
    ) -> tuple[Any, dict[str, str]]:
        kw = {"json": body, "headers": _headers(self._key, headers)}
        response = await self._retrying(policy, False, lambda budget: self._request("POST", url, budget, False, kw))
        return _reply_json(response), dict(response.headers)

    async def open_stream(
        self,
        url: str,
        body: dict[str, Any],
        policy: Policy,
        headers: dict[str, str] | None = None,
        start: Callable[[AsyncLineStream], Awaitable[T]] | None = None,
    ) -> tuple[AsyncLineStream, T | None]:
        """As ``Transport.open_stream``, with an async ``start``."""

        async def once(budget: Budget) -> tuple[AsyncLineStream, T | None]:
            response = await self._request(
                "POST", url, budget, True, {"json": body, "headers": _headers(self._key, headers)}
            )
            lines = AsyncLineStream(response, url, self._key, budget)
            try:
                return lines, (await start(lines) if start is not None else None)
            except BaseException:
                await lines.aclose()
                raise

        return await self._retrying(policy, True, once)


FETCH_MAX_REDIRECTS = 5


def fetch_url(
    url: str, *, max_bytes: int, timeout_s: float = FETCH_TIMEOUT_S, max_redirects: int = FETCH_MAX_REDIRECTS
) -> tuple[bytes, str]:
    """Download a remote file for local preparation (``--fetch-urls``): (content, content type).

    No credentials are sent. The whole download (connect, headers, body, every redirect) must end within
    ``timeout_s`` seconds, however slowly the server trickles. The body is read in chunks and abandoned as
    soon as it passes ``max_bytes``; redirects are followed at most ``max_redirects`` times. Failures are
    MediaErrors naming the URL. Blocking: AsyncClient runs it in a worker thread.
    """
    budget = Budget(Policy(timeout_s=timeout_s, max_retries=0), what="download")
    answered = False
    try:
        with with_deadlines(
            httpx.Client(
                follow_redirects=True,
                max_redirects=max_redirects,
                verify=tls_context(),
                headers={"User-Agent": USER_AGENT},
            )
        ) as client:
            request = client.build_request("GET", url, extensions={"timeout": budget.timeouts()})
            response = client.send(request, stream=True)
            answered = True
            try:
                return _read_capped(response, url, max_bytes)
            finally:
                response.close()
    except httpx.TooManyRedirects:
        raise MediaError(
            f"cannot fetch {url}: more than {max_redirects} redirects",
            source=url,
            hint="Give the final URL, or download the file and give it by path.",
        ) from None
    except httpx.TimeoutException:
        why = budget.describe() if budget.spent() else f"no answer within {min(CONNECT_TIMEOUT_S, timeout_s):g} s"
        raise MediaError(
            f"cannot fetch {url}: timed out ({why})",
            source=url,
            hint="Raise --timeout, or let the service fetch it (without --fetch-urls).",
        ) from None
    except httpx.HTTPError as exc:
        why, hint = describe_failure(exc, answered)  # the words of a request's failure, sync or async
        hint = hint or "Check the URL (open it in a browser), or download the file and give it by path."
        raise MediaError(f"cannot fetch {url}: {why}", source=url, hint=hint) from None


def _read_capped(response: httpx.Response, url: str, max_bytes: int) -> tuple[bytes, str]:
    if response.status_code >= 400:
        raise MediaError(
            f"cannot fetch {url}: HTTP {response.status_code}",
            source=url,
            hint="Check the URL in a browser, or download the file and give it by path.",
        )
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise MediaError(
            f"{url} is {int(declared) / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB download limit",
            source=url,
            hint="Download a smaller file and give it by path.",
        )
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise MediaError(
                f"{url} is larger than the {max_bytes / 1e6:.0f} MB download limit",
                source=url,
                hint="Download a smaller file and give it by path.",
            )
        chunks.append(chunk)
    return b"".join(chunks), response.headers.get("content-type", "")
