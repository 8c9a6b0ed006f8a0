"""The one place for HTTP: httpx clients (sync and async), retries with backoff, and error mapping.

Every httpx exception becomes a qwenvl error here (chained with ``from``); nothing else imports httpx.
"""

from __future__ import annotations

import asyncio
import functools
import platform
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from qwenvl import __version__
from qwenvl.errors import APIConnectionError, APIError, APITimeoutError, MediaError, redact
from qwenvl.protocols.common import error_from_body, load_json
from qwenvl.retry import parse_retry_after, retry_delay, should_retry

USER_AGENT = f"qwenvl/{__version__} httpx/{httpx.__version__} python/{platform.python_version()}"
CONNECT_TIMEOUT_S = 10.0


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context shared by every client: loading the CA bundle costs ~20 ms per client."""
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class Policy:
    """Per-request network settings."""

    timeout_s: float = 120.0
    max_retries: int = 2
    backoff_s: float = 1.5

    def timeout(self) -> httpx.Timeout:
        # For streams the read time-out is the longest silence between two chunks.
        return httpx.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s))


def _headers(api_key: str, extra: dict[str, str] | None) -> dict[str, str]:
    out = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if api_key:  # local OpenAI-compatible engines take no key: send no Authorization header at all
        out["Authorization"] = f"Bearer {api_key}"
    out.update(extra or {})
    return out


def map_exception(exc: httpx.HTTPError, url: str, api_key: str | None = None) -> APIError:
    if isinstance(exc, httpx.TimeoutException):
        kind = {httpx.ConnectTimeout: "connecting", httpx.ReadTimeout: "waiting for the reply",
                httpx.WriteTimeout: "sending", httpx.PoolTimeout: "waiting for a connection"}.get(
            type(exc), "talking to the service")
        return APITimeoutError(redact(f"timed out {kind} ({url})", api_key))
    detail = str(exc) or type(exc).__name__
    return APIConnectionError(redact(f"cannot reach {url}: {detail}", api_key))


def _status_error(response: httpx.Response, body: bytes, api_key: str) -> APIError:
    err = error_from_body(response.status_code, body, retry_after=parse_retry_after(response.headers),
                          request_id=response.headers.get("x-request-id"))
    err.message = redact(err.message, api_key)
    return err


def _backoff(error: APIError, attempt: int, policy: Policy) -> float:
    """Seconds to wait before the next attempt; raises ``error`` when it is final."""
    if attempt >= policy.max_retries or not should_retry(error):
        raise error
    return retry_delay(attempt, policy.backoff_s, getattr(error, "retry_after", None))


class LineStream:
    """The lines of an open streaming reply; transport failures surface as APIConnectionError."""

    def __init__(self, response: httpx.Response, url: str, api_key: str) -> None:
        self._response = response
        self._url = url
        self._key = api_key
        self.headers = response.headers
        self.content_type = response.headers.get("content-type", "")

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._response.iter_lines()
        except httpx.HTTPError as exc:
            raise map_exception(exc, self._url, self._key) from exc

    def read(self) -> bytes:
        try:
            return self._response.read()
        except httpx.HTTPError as exc:
            raise map_exception(exc, self._url, self._key) from exc

    def close(self) -> None:
        self._response.close()


class AsyncLineStream(LineStream):
    async def __aiter__(self) -> AsyncIterator[str]:  # type: ignore[override]
        try:
            async for line in self._response.aiter_lines():
                yield line
        except httpx.HTTPError as exc:
            raise map_exception(exc, self._url, self._key) from exc

    async def aread(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise map_exception(exc, self._url, self._key) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class Transport:
    """Synchronous HTTP with retries. ``http_client`` may be given (tests, proxies, custom TLS)."""

    def __init__(self, api_key: str, *, http_client: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._key = api_key
        self._own = http_client is None
        self._client = http_client or httpx.Client(follow_redirects=False, verify=tls_context())
        self._sleep = sleep

    def close(self) -> None:
        if self._own:
            self._client.close()

    def _send(self, method: str, url: str, policy: Policy, *, stream: bool, **kw: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                request = self._client.build_request(method, url, timeout=policy.timeout(), **kw)
                response = self._client.send(request, stream=stream)
                if response.status_code < 400:
                    return response
                body = response.read()
                response.close()
                error = _status_error(response, body, self._key)
            except httpx.HTTPError as exc:
                error = map_exception(exc, url, self._key)
                error.__cause__ = exc
            self._sleep(_backoff(error, attempt, policy))
            attempt += 1

    def post_json(self, url: str, body: dict[str, Any], policy: Policy,
                  headers: dict[str, str] | None = None) -> tuple[Any, dict[str, str]]:
        response = self._send("POST", url, policy, stream=False, json=body, headers=_headers(self._key, headers))
        return load_json(response.content, "the reply"), dict(response.headers)

    def get_json(self, url: str, policy: Policy, params: dict[str, str] | None = None) -> Any:
        response = self._send("GET", url, policy, stream=False, params=params,
                              headers=_headers(self._key, None))
        return load_json(response.content, "the reply")

    def post_form(self, url: str, data: dict[str, str], files: dict[str, Any], policy: Policy) -> None:
        """A multipart upload to a third-party host (no Authorization header is sent there)."""
        self._send("POST", url, policy, stream=False, data=data, files=files,
                   headers={"User-Agent": USER_AGENT})

    def post_files(self, url: str, data: dict[str, str], files: dict[str, Any], policy: Policy) -> Any:
        """A multipart upload to the service itself (with the key), e.g. a Batch API input file; the JSON reply."""
        response = self._send("POST", url, policy, stream=False, data=data, files=files,
                              headers={"Authorization": f"Bearer {self._key}", "User-Agent": USER_AGENT})
        return load_json(response.content, "the reply")

    def get_bytes(self, url: str, policy: Policy) -> bytes:
        """A GET whose body is not JSON (e.g. a Batch API result file)."""
        return self._send("GET", url, policy, stream=False, headers=_headers(self._key, None)).content

    def open_stream(self, url: str, body: dict[str, Any], policy: Policy,
                    headers: dict[str, str] | None = None) -> LineStream:
        """POST and return the open reply once its status is 2xx (retrying before that point only)."""
        response = self._send("POST", url, policy, stream=True, json=body, headers=_headers(self._key, headers))
        return LineStream(response, url, self._key)


class AsyncTransport:
    """The asyncio twin of Transport."""

    def __init__(self, api_key: str, *, http_client: httpx.AsyncClient | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self._key = api_key
        self._own = http_client is None
        self._client = http_client or httpx.AsyncClient(follow_redirects=False, verify=tls_context())
        self._sleep = sleep

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()

    async def _send(self, method: str, url: str, policy: Policy, *, stream: bool, **kw: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                request = self._client.build_request(method, url, timeout=policy.timeout(), **kw)
                response = await self._client.send(request, stream=stream)
                if response.status_code < 400:
                    return response
                body = await response.aread()
                await response.aclose()
                error = _status_error(response, body, self._key)
            except httpx.HTTPError as exc:
                error = map_exception(exc, url, self._key)
                error.__cause__ = exc
            await self._sleep(_backoff(error, attempt, policy))
            attempt += 1

    async def post_json(self, url: str, body: dict[str, Any], policy: Policy,
                        headers: dict[str, str] | None = None) -> tuple[Any, dict[str, str]]:
        response = await self._send("POST", url, policy, stream=False, json=body,
                                    headers=_headers(self._key, headers))
        return load_json(response.content, "the reply"), dict(response.headers)

    async def open_stream(self, url: str, body: dict[str, Any], policy: Policy,
                          headers: dict[str, str] | None = None) -> AsyncLineStream:
        response = await self._send("POST", url, policy, stream=True, json=body,
                                    headers=_headers(self._key, headers))
        return AsyncLineStream(response, url, self._key)


FETCH_TIMEOUT_S = 30.0
FETCH_MAX_REDIRECTS = 5


def fetch_url(url: str, *, max_bytes: int, timeout_s: float = FETCH_TIMEOUT_S,
              max_redirects: int = FETCH_MAX_REDIRECTS) -> tuple[bytes, str]:
    """Download a remote file for local preparation (``--fetch-urls``): (content, content type).

    No credentials are sent. The body is read in chunks and abandoned as soon as it passes ``max_bytes``;
    redirects are followed at most ``max_redirects`` times. Failures are MediaErrors naming the URL.
    """
    try:
        with httpx.Client(follow_redirects=True, max_redirects=max_redirects,
                          timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
                          headers={"User-Agent": USER_AGENT}) as client, client.stream("GET", url) as response:
            if response.status_code >= 400:
                raise MediaError(f"cannot fetch {url}: HTTP {response.status_code}", source=url)
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise MediaError(f"{url} is {int(declared) / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB "
                                 "download limit", source=url)
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise MediaError(f"{url} is larger than the {max_bytes / 1e6:.0f} MB download limit",
                                     source=url)
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("content-type", "")
    except httpx.TooManyRedirects:
        raise MediaError(f"cannot fetch {url}: more than {max_redirects} redirects", source=url) from None
    except httpx.TimeoutException:
        raise MediaError(f"cannot fetch {url}: timed out after {timeout_s:g} s", source=url) from None
    except httpx.HTTPError as exc:
        raise MediaError(f"cannot fetch {url}: {exc}", source=url) from None
