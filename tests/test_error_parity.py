"""One failure, one error: the same class, words, hint, attempts and exit code everywhere.

For each failure below, every way of meeting it is run against a real loopback server: {Client, AsyncClient} x
{compat, native} x {stream, no stream} on the DashScope backend, {Client, AsyncClient} x {stream, no stream} on
the ``openai`` (engine) backend, and ``qwenvl ask`` for both backends and both protocols, streaming or not. Within
a backend every way must give the same error (URLs, request ids and the protocol's own spelling of the service's
error code masked), the server must have seen the same number of attempts, and the CLI must exit with the
error's code and say the same one line. Across backends the class, the words and the exit code are the same; the
hint is the engine backend's own (``qwenvl.backends.openai.ENGINE_HINTS``) where the class's default one names
DashScope.

Every request is made with ``max_retries=1`` (backoff 0.01 s), so a retried failure shows as two attempts and a
failure that must not be re-sent (a POST answered 200, then cut off) as one. The time-out is 0.3 s only where the
failure is the time-out (a silent server); everywhere else it is ``HANG_BOUND_S``, a bound on a hang that no
failure needs to reach (a refused connection, an error reply, a cut connection come at once), so a busy machine
cannot turn one failure into another.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

import qwenvl
from conftest import API_KEY, run_cli
from dashscope_server import COMPAT_PATH, NATIVE_PATH, DashScopeServer, Reply
from fault_server import FaultServer
from qwenvl.backends.openai import ENGINE_HINTS
from qwenvl.errors import (
    OTHER_SERVER_KEY_HINT,
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    MalformedResponseError,
    PermissionDeniedError,
    QwenVLError,
    RateLimitError,
    StreamInterruptedError,
    key_refused_hint,
    printable,
)
from qwenvl.protocols.common import PROXY_HINT
from qwenvl.retry import RetryNotice
from qwenvl.transport import CUT_OFF_HINT, TLS_HINT

TIMEOUT_S = 0.3  # the silent server's: the failure is this time-out
HANG_BOUND_S = 60.0  # every other failure's: it comes without waiting; this only bounds a hang
REQUEST = {"max_retries": 1, "retry_backoff_s": 0.01}
CLI_REQUEST = ("--max-retries", "1", "--retry-backoff-s", "0.01")
ENGINE_MODEL = "qwen3-vl-plus"  # the DashScope double lists no models: the engine backend is told which

# (client, protocol, stream); protocol "openai" is the engine backend
CLOUD = [(k, p, s) for p in ("compat", "native") for s in (False, True) for k in ("sync", "async")]
ENGINE = [(k, "openai", s) for s in (False, True) for k in ("sync", "async")]

_URL = re.compile(r"https?://[^\s;)]*[^\s;):]")
_CODE = re.compile(r"\bHTTP (\d{3}) [\w.]+: ")
_RID = re.compile(r" \(request_id [^)]*\)")


def masked(text: str) -> str:
    """A message without what legitimately differs: URLs, request ids, the protocol's spelling of the code."""
    return _URL.sub("<url>", _CODE.sub(r"HTTP \1 <code>: ", _RID.sub("", text)))


@dataclass(frozen=True)
class Outcome:
    cls: type[QwenVLError]
    text: str
    hint: str | None
    attempts: int | None  # seen by the server (None: no server sees them)
    tries: int  # made by the client: the retries it announced (``on_retry``) plus one


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the servers, and what each failure does on them ------------------------------------------------------------


@dataclass
class Site:
    """Where a failure happens: the base URL per backend, how to script the server before one call, and how
    many attempts reached it since (None: no server sees them)."""

    url: Callable[[str], str]
    before: Callable[[str], None]
    attempts: Callable[[], int | None]


def _dashscope(srv: DashScopeServer, *replies: Reply) -> Site:
    def before(backend: str) -> None:
        srv.reset()
        srv.enqueue(*replies)

    return Site(
        url=lambda backend: srv.url if backend == "dashscope" else srv.compat_base,
        before=before,
        attempts=lambda: sum(r.path in (COMPAT_PATH, NATIVE_PATH) for r in srv.requests),
    )


def _fault(srv: FaultServer, mode: str) -> Site:
    def before(backend: str) -> None:
        srv.mode = mode
        srv.only = "/chat/completions" if backend == "openai" else None  # the engine's probes are answered
        srv.requests.clear()

    return Site(
        url=lambda backend: srv.url + ("/v1" if backend == "openai" else ""),
        before=before,
        attempts=lambda: sum(n for path, n in srv.requests.items() if path.endswith(("/completions", "/generation"))),
    )


def _nowhere(url: str) -> Site:
    return Site(
        url=lambda backend: url + ("/v1" if backend == "openai" else ""), before=lambda b: None, attempts=lambda: None
    )


@dataclass(frozen=True)
class Failure:
    name: str
    site: Callable[[DashScopeServer, FaultServer], Site]
    cls: type[QwenVLError]
    says: str  # the masked message
    attempts: int | None  # seen by the server, with max_retries=1 (None: no server sees them)
    streams_only: bool = False
    hint: str | None = None  # when the hint is the cause's own, not the class's default
    timeout_s: float = HANG_BOUND_S  # the request's time-out: short only where the failure is the time-out


HTML = b"<!DOCTYPE html><html><body><h1>Bad Request</h1></body></html>"
FAILURES = [
    Failure(
        "refused",
        lambda ds, fs: _nowhere(f"http://127.0.0.1:{_closed_port()}"),
        APIConnectionError,
        "cannot reach <url>: the connection was refused (nothing listens at that address)",
        None,
    ),
    Failure(
        "unresolvable host",
        lambda ds, fs: _nowhere("http://qwenvl-parity.invalid"),
        APIConnectionError,
        "cannot reach <url>: the host name does not resolve",
        None,
    ),
    Failure(
        "tls to a plain-http port",
        lambda ds, fs: _nowhere("https://" + ds.url.removeprefix("http://")),
        APIConnectionError,
        "cannot reach <url>: the TLS handshake failed (WRONG_VERSION_NUMBER)",
        None,
        hint=TLS_HINT,
    ),
    Failure(
        "silent server",
        lambda ds, fs: _fault(fs, "silent"),
        APITimeoutError,
        f"timed out: no reply within {TIMEOUT_S:g} s (<url>)",
        2,
        timeout_s=TIMEOUT_S,
    ),
    Failure(
        "closed before the headers",
        lambda ds, fs: _fault(fs, "drop"),
        APIConnectionError,
        "cannot reach <url>: the server closed the connection without a reply",
        2,
    ),
    Failure(
        "closed after a 200's headers",
        lambda ds, fs: _fault(fs, "cut"),
        APIConnectionError,
        "<url> answered HTTP 200, then the connection closed before the reply was complete",
        1,  # answered: never sent again (it may have been done and paid)
        hint=CUT_OFF_HINT,
    ),
    Failure(
        "stream closed before its first event",
        lambda ds, fs: _dashscope(ds, Reply(stream_cut_after=0, times=2)),
        APIConnectionError,
        "<url> answered HTTP 200, then the connection closed before the reply was complete",
        1,
        streams_only=True,
        hint=CUT_OFF_HINT,
    ),
    Failure(
        "stream closed midway",
        lambda ds, fs: _dashscope(ds, Reply(text="one two three four five six seven", stream_cut_after=1, times=2)),
        StreamInterruptedError,
        "the stream broke before the answer was complete (<url> answered HTTP 200, then the connection closed "
        "before the reply was complete; 14 characters received)",
        1,
        streams_only=True,
    ),
    *[
        Failure(
            f"HTTP {status}",
            lambda ds, fs, status=status: _dashscope(ds, Reply(status=status, times=2)),
            cls,
            f"HTTP {status} <code>: {message}",
            attempts,
            # the loopback server is not DashScope's own: a refused key is that server's (no regions there)
            # the library gives the key as its api_key argument: that key is named as the caller's
            hint=key_refused_hint("argument", dashscope=False) if status == 401 else None,
        )
        for status, cls, message, attempts in [
            (500, InternalServerError, "An internal error has occurred.", 2),
            (502, InternalServerError, "An internal error has occurred.", 2),
            (503, InternalServerError, "Service temporarily unavailable, possibly overloaded or not ready.", 2),
            (429, RateLimitError, "Requests rate limit exceeded, please try again later.", 2),
            (401, AuthenticationError, "Invalid API-key provided.", 1),
            (403, PermissionDeniedError, "Access denied.", 1),
            (400, BadRequestError, "Invalid parameter.", 1),
        ]
    ],
    Failure(
        "429 as a stream's first event",
        lambda ds, fs: _dashscope(ds, Reply(status=429, stream_error_after=0, times=2)),
        RateLimitError,
        "HTTP 429 <code>: Requests rate limit exceeded, please try again later.",
        2,  # as the same HTTP status is: nothing had come
        streams_only=True,
    ),
    Failure(
        "500 as an event after content",
        lambda ds, fs: _dashscope(ds, Reply(text="one two three four five six", status=500, stream_error_after=1)),
        StreamInterruptedError,
        "the stream ended with an error: HTTP 500 <code>: An internal error has occurred.",
        1,  # content had come: never sent again
        streams_only=True,
    ),
    Failure(
        "HTTP 400 as an HTML page",
        lambda ds, fs: _dashscope(ds, Reply(status=400, raw_body=HTML, content_type="text/html", times=2)),
        BadRequestError,
        "HTTP 400 Bad Request (an HTML page from a proxy, not the service)",
        1,
        hint=PROXY_HINT,
    ),
    Failure(
        "HTTP 502 as an HTML page",
        lambda ds, fs: _dashscope(ds, Reply(status=502, raw_body=HTML, content_type="text/html", times=2)),
        InternalServerError,
        "HTTP 502 Bad Gateway (an HTML page from a proxy, not the service)",
        2,
        hint=PROXY_HINT,
    ),
    Failure(
        "200 that is not JSON",
        lambda ds, fs: _dashscope(ds, Reply(raw_body=b"hello there", content_type="text/plain", times=2)),
        MalformedResponseError,
        "the reply is not JSON: 'hello there'",
        1,
    ),
]


@pytest.fixture
def servers() -> Iterator[tuple[DashScopeServer, FaultServer]]:
    with DashScopeServer(api_key=API_KEY) as ds, FaultServer() as fs:
        yield ds, fs


# --- one call, three ways -----------------------------------------------------------------------------------------


def _client_kw(protocol: str, base_url: str, on_retry: Callable[[RetryNotice], None] | None) -> dict:
    if protocol == "openai":
        return {
            "backend": "openai",
            "api_key": API_KEY,
            "base_url": base_url,
            "model": ENGINE_MODEL,
            "on_retry": on_retry,
        }
    return {"api_key": API_KEY, "protocol": protocol, "base_url": base_url, "on_retry": on_retry}


def _sync(
    protocol: str,
    stream: bool,
    base_url: str,
    on_retry: Callable[[RetryNotice], None] | None = None,
    timeout_s: float = HANG_BOUND_S,
) -> None:
    with qwenvl.Client(**_client_kw(protocol, base_url, on_retry)) as c:
        if stream:
            list(c.stream(prompt="hi", **REQUEST, timeout_s=timeout_s))
        else:
            c.complete(prompt="hi", **REQUEST, timeout_s=timeout_s)


def _async(
    protocol: str,
    stream: bool,
    base_url: str,
    on_retry: Callable[[RetryNotice], None] | None = None,
    timeout_s: float = HANG_BOUND_S,
) -> None:
    async def go() -> None:
        async with qwenvl.AsyncClient(**_client_kw(protocol, base_url, on_retry)) as c:
            if stream:
                async for _ in c.stream(prompt="hi", **REQUEST, timeout_s=timeout_s):
                    pass
            else:
                await c.complete(prompt="hi", **REQUEST, timeout_s=timeout_s)

    asyncio.run(go())


def library(site: Site, kind: str, protocol: str, stream: bool, timeout_s: float = HANG_BOUND_S) -> Outcome:
    backend = "openai" if protocol == "openai" else "dashscope"
    site.before(backend)
    notices: list[RetryNotice] = []
    with pytest.raises(QwenVLError) as info:
        (_sync if kind == "sync" else _async)(protocol, stream, site.url(backend), notices.append, timeout_s)
    exc = info.value
    return Outcome(type(exc), masked(str(exc)), exc.raw_hint, site.attempts(), len(notices) + 1)


def cli(site: Site, protocol: str, stream: bool, timeout_s: float = HANG_BOUND_S) -> tuple[int, list[str], int | None]:
    """(exit code, stderr lines masked, attempts) of ``qwenvl ask``."""
    backend = "openai" if protocol == "openai" else "dashscope"
    site.before(backend)
    where = ["--backend", "openai", "--model", ENGINE_MODEL] if backend == "openai" else ["--protocol", protocol]
    p = run_cli(
        "ask",
        "-p",
        "hi",
        *where,
        "--base-url",
        site.url(backend),
        *CLI_REQUEST,
        "--timeout",
        f"{timeout_s:g}",
        *([] if stream else ["--no-stream"]),
        env={"DASHSCOPE_API_KEY": API_KEY, "QWENVL_OPENAI_API_KEY": API_KEY},
    )
    assert p.exception is None and "Traceback" not in p.stderr, p.stderr
    return p.returncode, [masked(line) for line in p.stderr.strip().splitlines()], site.attempts()


def _table(rows: dict) -> str:
    return "\n".join(f"  {key}: {value}" for key, value in rows.items())


def _same(rows: dict, what: str) -> object:
    values = set(rows.values())
    assert len(values) == 1, f"{what} differ:\n{_table(rows)}"
    return values.pop()


# --- the matrix ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", FAILURES, ids=[f.name for f in FAILURES])
def test_the_same_failure_is_the_same_error_everywhere(servers, failure: Failure) -> None:
    site = failure.site(*servers)
    cloud_ways = [w for w in CLOUD if w[2] or not failure.streams_only]
    engine_ways = [w for w in ENGINE if w[2] or not failure.streams_only]

    wait = failure.timeout_s
    cloud = _same({w: library(site, *w, wait) for w in cloud_ways}, "the DashScope backend's errors")
    assert isinstance(cloud, Outcome)
    assert (cloud.cls, cloud.text) == (failure.cls, failure.says)
    assert cloud.hint == (failure.hint or failure.cls.default_hint)
    assert cloud.attempts == failure.attempts, "attempts the server saw (max_retries=1)"
    assert cloud.tries == (failure.attempts or 2), "attempts the client made (max_retries=1)"

    engine = _same({w: library(site, *w, wait) for w in engine_ways}, "the engine backend's errors")
    assert isinstance(engine, Outcome)
    # the engine backend's own hint where the cloud's is its class's default; a key refused always names the one
    # variable the openai backend reads (QWENVL_OPENAI_API_KEY), whatever the transport guessed
    key_error = failure.cls in (qwenvl.AuthenticationError, qwenvl.PermissionDeniedError)
    own = ENGINE_HINTS.get(failure.cls) if cloud.hint == failure.cls.default_hint or key_error else None
    assert engine == Outcome(cloud.cls, cloud.text, own or cloud.hint, cloud.attempts, cloud.tries)

    exit_code = failure.cls.exit_code
    for backend, ways, hint in (("dashscope", cloud_ways, cloud.hint), ("openai", engine_ways, engine.hint)):
        runs = {(p, s): cli(site, p, s, wait) for _, p, s in ways if _ == "sync"}
        code, lines, attempts = _same({w: (r[0], tuple(r[1]), r[2]) for w, r in runs.items()}, f"{backend} CLI runs")
        assert code == exit_code
        kept = ["(kept 14 characters of partial answer)"] if failure.cls is StreamInterruptedError else []
        if failure.cls is AuthenticationError and backend == "dashscope":  # the CLI's key: from the environment
            hint = OTHER_SERVER_KEY_HINT
        assert list(lines) == [f"error: {printable(cloud.text)}", *kept, masked(f"hint: {printable(hint or '')}")]
        assert attempts == cloud.attempts


def test_a_cut_stream_says_what_a_cut_reply_says(servers) -> None:
    """A 200 cut off before anything usable came is one failure, whether the reply was JSON or an event stream."""
    ds, fs = servers
    body = library(_fault(fs, "cut"), "sync", "compat", False)
    events = library(_dashscope(ds, Reply(stream_cut_after=0)), "async", "native", True)
    assert body == events


def test_partial_text_is_kept_the_same_way(servers) -> None:
    ds, _ = servers
    kept = set()
    for kind, protocol, _stream in [w for w in CLOUD + ENGINE if w[2]]:
        ds.reset()
        ds.enqueue(Reply(text="one two three four five six seven", stream_cut_after=1))
        base = ds.url if protocol != "openai" else ds.compat_base
        with pytest.raises(StreamInterruptedError) as info:
            (_sync if kind == "sync" else _async)(protocol, True, base)
        kept.add(info.value.partial_text)
    assert kept == {"one two three "}


def test_a_download_that_cannot_connect_says_so_in_the_same_words(servers) -> None:
    """--fetch-urls downloads (sync, and in a worker thread for AsyncClient) word a refused connection as a
    request does, not in httpx's words."""
    ds, _ = servers
    url = f"http://127.0.0.1:{_closed_port()}/a.png"
    said = set()
    for kind in ("sync", "async"):
        with pytest.raises(qwenvl.MediaError) as info:
            if kind == "sync":
                with qwenvl.Client(api_key=API_KEY, base_url=ds.url) as c:
                    c.complete(prompt="hi", image=url, fetch_urls=True)
            else:

                async def go() -> None:
                    async with qwenvl.AsyncClient(api_key=API_KEY, base_url=ds.url) as c:
                        await c.complete(prompt="hi", image=url, fetch_urls=True)

                asyncio.run(go())
        said.add(str(info.value))
    assert said == {f"cannot fetch {url}: the connection was refused (nothing listens at that address)"}
    assert ds.requests == []  # nothing was sent
