"""`qwenvl serve` in front of an upstream that fails: every failure of ``tests/test_error_parity.py`` (and a few
more), met by the serve's own clients, in each protocol, streaming or not.

For each failure and each backend of the serve (the DashScope gateway speaking compat or native to the loopback
DashScope double, and the ``openai`` engine backend), a real serve is started on loopback in front of the failing
upstream, with the parity matrix's settings (``max_retries=1``, backoff 0.01 s; a 1 s time-out), and is asked by
each of its clients: the official ``openai`` SDK (compatible mode), the official ``dashscope`` SDK (native) and plain
``httpx`` (both protocols), each streaming and not. Every way must see the same answer (``Expect``): the HTTP
status (or, for an error that comes after content, an error event that ends the stream: no silent truncation),
the protocol's own code for it, qwenvl's words for the failure (upstream URLs named "the upstream", never shown),
``Retry-After`` passed on, ``x-should-retry: false`` when the upstream may have done and charged for the work or
a retry cannot help, and how many requests reached the upstream: a paid request is never sent twice (the SDKs run
with ``max_retries=0`` here; ``test_the_openai_sdk_never_resends_what_the_upstream_may_have_charged`` lets the
openai SDK retry).

The mismatches are collected per field (status, code, message, ...), so a run says which kinds are wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

import qwenvl
from conftest import API_KEY
from dashscope_server import DashScopeServer, Reply
from fault_server import FaultServer
from qwenvl.server.app import ServeSettings, create_app
from test_error_parity import ENGINE_MODEL, FAILURES, REQUEST, Site, _dashscope, _fault
from test_serve import COMPAT, NATIVE, SERVE_KEY, Served

openai = pytest.importorskip("openai")
dashscope = pytest.importorskip("dashscope")

MODEL = "qwen3-vl-plus"
TIMEOUT_S = 1.0  # the parity matrix's 0.3 s, made longer: a serve and its clients add their own work to a busy machine
UPSTREAM_REQUEST = {**REQUEST, "timeout_s": TIMEOUT_S}
UPSTREAM = ("InternalError.Upstream", "upstream_error")  # (native code, compat code) of a serve-made 502
TIMEOUT = ("RequestTimeOut", "request_timeout")
INTERNAL = ("InternalError", "internal_error")
CUT = "the upstream answered HTTP 200, then the connection closed before the reply was complete"


@dataclass(frozen=True)
class Expect:
    """What every client of the serve must see for one upstream failure."""

    status: int  # the HTTP status; for an error event after content, the event's status
    codes: tuple[str, str]  # (native, compat)
    message: str
    attempts: int | None  # requests that reached the upstream (None: no server sees them)
    event: bool = False  # the error comes as an event that ends a 200 stream, after content
    no_retry: bool = False  # x-should-retry: false (paid, or a retry cannot help)
    retry_after: str | None = None
    before: str = ""  # text streamed before an error event
    streams_only: bool = False


EXPECT: dict[str, Expect] = {
    "refused": Expect(
        502, UPSTREAM, "cannot reach the upstream: the connection was refused (nothing listens at that address)", None
    ),
    "unresolvable host": Expect(502, UPSTREAM, "cannot reach the upstream: the host name does not resolve", None),
    "tls to a plain-http port": Expect(
        502, UPSTREAM, "cannot reach the upstream: the TLS handshake failed (WRONG_VERSION_NUMBER)", None
    ),
    "silent server": Expect(504, TIMEOUT, f"timed out: no reply within {TIMEOUT_S:g} s (the upstream)", 2),
    "closed before the headers": Expect(
        502, UPSTREAM, "cannot reach the upstream: the server closed the connection without a reply", 2
    ),
    "closed after a 200's headers": Expect(502, UPSTREAM, CUT, 1, no_retry=True),
    "stream closed before its first event": Expect(502, UPSTREAM, CUT, 1, no_retry=True, streams_only=True),
    "stream closed midway": Expect(
        502,
        UPSTREAM,
        f"the stream broke before the answer was complete ({CUT}; 14 characters received)",
        1,
        event=True,
        before="one two three ",
        streams_only=True,
    ),
    "HTTP 500": Expect(500, INTERNAL, "An internal error has occurred.", 2),
    "HTTP 502": Expect(502, INTERNAL, "An internal error has occurred.", 2),
    "HTTP 503": Expect(
        503,
        ("ServiceUnavailable", "service_unavailable"),
        "Service temporarily unavailable, possibly overloaded or not ready.",
        2,
    ),
    "HTTP 429": Expect(
        429, ("Throttling.RateQuota", "limit_requests"), "Requests rate limit exceeded, please try again later.", 2
    ),
    "HTTP 401": Expect(
        502,
        UPSTREAM,
        "the upstream service refused this server's own credentials (HTTP 401); the server's operator must fix "
        "its upstream key",
        1,
        no_retry=True,
    ),
    "HTTP 403": Expect(
        502,
        UPSTREAM,
        "the upstream service refused this server's own credentials (HTTP 403); the server's operator must fix "
        "its upstream key",
        1,
        no_retry=True,
    ),
    "HTTP 400": Expect(400, ("InvalidParameter", "invalid_parameter_error"), "Invalid parameter.", 1),
    "429 as a stream's first event": Expect(
        429,
        ("Throttling.RateQuota", "limit_requests"),
        "Requests rate limit exceeded, please try again later.",
        2,
        streams_only=True,
    ),
    "500 as an event after content": Expect(
        500, INTERNAL, "An internal error has occurred.", 1, event=True, before="one two three ", streams_only=True
    ),
    "HTTP 400 as an HTML page": Expect(
        502,
        UPSTREAM,
        "the upstream answered HTTP 400 Bad Request (an HTML page from a proxy, not the service)",
        1,
        no_retry=True,
    ),
    "HTTP 502 as an HTML page": Expect(
        502, UPSTREAM, "the upstream answered HTTP 502 Bad Gateway (an HTML page from a proxy, not the service)", 2
    ),
    "200 that is not JSON": Expect(502, UPSTREAM, "the upstream's reply is not JSON: 'hello there'", 1, no_retry=True),
}


@dataclass(frozen=True)
class Case:
    name: str
    site: Callable[[DashScopeServer, FaultServer], Site]
    expect: Expect
    backends: tuple[str, ...] = ("gateway-compat", "gateway-native", "engine")


# Failures beyond the parity matrix: a Retry-After too long to wait for here, and a stream that stalls after content.
EXTRA = [
    Case(
        "HTTP 429 with a long Retry-After",
        lambda ds, fs: _dashscope(ds, Reply(status=429, headers={"Retry-After": "120"}, times=4)),
        Expect(
            429,
            ("Throttling.RateQuota", "limit_requests"),
            "Requests rate limit exceeded, please try again later.",
            1,  # more than qwenvl waits: not retried by the serve, passed on for the caller to wait
            retry_after="120",
        ),
    ),
    Case(
        "stream silent after content",
        lambda ds, fs: _fault(fs, "sse-data-then-comments"),
        Expect(
            504,
            TIMEOUT,
            "the stream broke before the answer was complete (timed out: the stream sent no data for "
            f"{TIMEOUT_S:g} s (the upstream); 6 characters received)",
            1,
            event=True,
            before="hello ",
            streams_only=True,
        ),
        backends=("gateway-compat", "engine"),  # the fault server's events are compat chunks
    ),
]
CASES = [Case(f.name, f.site, EXPECT[f.name]) for f in FAILURES] + EXTRA
BACKENDS = ["gateway-compat", "gateway-native", "engine"]


def test_every_parity_failure_has_a_serve_expectation() -> None:
    assert {f.name for f in FAILURES} == set(EXPECT)


# --- what one client saw ------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One client's view; None where that client cannot see the field (the SDKs hide some headers)."""

    status: int | None = None
    code: str | None = None
    message: str | None = None
    event: bool = False
    no_retry: bool | None = None
    retry_after: str | None = None
    before: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_URL = re.compile(r"https?://[^\s;)]*[^\s;):]")


def _ask(stream: bool) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "hi"}]


def via_openai(url: str, stream: bool) -> Seen:
    sdk = openai.OpenAI(base_url=url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0, timeout=60)
    text: list[str] = []
    try:
        if stream:
            for chunk in sdk.chat.completions.create(model=MODEL, messages=_ask(True), stream=True):
                text += [c.delta.content or "" for c in chunk.choices]
        else:
            sdk.chat.completions.create(model=MODEL, messages=_ask(False))
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return Seen(
            e.status_code,
            body.get("code"),
            body.get("message"),
            no_retry=e.response.headers.get("x-should-retry") == "false",
            retry_after=e.response.headers.get("retry-after"),
        )
    except openai.APIError as e:  # an error event inside the stream
        body = e.body if isinstance(e.body, dict) else {}
        return Seen(None, body.get("code"), body.get("message"), event=True, before="".join(text))
    return Seen(200, extra={"text": "".join(text), "no error": True})


def via_dashscope(url: str, stream: bool) -> Seen:
    old = dashscope.base_http_api_url
    dashscope.base_http_api_url = url + "/api/v1"
    try:
        call = dashscope.MultiModalConversation.call(
            api_key=SERVE_KEY,
            model=MODEL,
            messages=[{"role": "user", "content": [{"text": "hi"}]}],
            stream=stream,
            incremental_output=True,
        )
        responses = list(call) if stream else [call]
    finally:
        dashscope.base_http_api_url = old
    text: list[str] = []
    for r in responses:
        if r.status_code != 200:
            return Seen(r.status_code, r.code, r.message, event=bool(text), before="".join(text))
        content = r.output.choices[0].message.content if r.output and r.output.choices else []
        text += [c.get("text", "") for c in content or []]
    return Seen(200, extra={"text": "".join(text), "no error": True})


def via_httpx(url: str, protocol: str, stream: bool) -> Seen:
    headers = {"Authorization": f"Bearer {SERVE_KEY}"}
    if protocol == "compat":
        path, body = COMPAT, {"model": MODEL, "messages": _ask(stream), "stream": stream}
    else:
        path = NATIVE
        body = {
            "model": MODEL,
            "input": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
            "parameters": {"incremental_output": True},
        }
        if stream:
            headers["X-DashScope-SSE"] = "enable"
    with httpx.Client(timeout=60) as h, h.stream("POST", url + path, json=body, headers=headers) as r:
        if r.status_code != 200 or not r.headers.get("content-type", "").startswith("text/event-stream"):
            r.read()
            data = r.json()
            err = data.get("error", data) if protocol == "compat" else data
            if r.status_code == 200:
                return Seen(200, extra={"no error": True})
            return Seen(
                r.status_code,
                err.get("code"),
                err.get("message"),
                no_retry=r.headers.get("x-should-retry") == "false",
                retry_after=r.headers.get("retry-after"),
                extra={
                    "shape": sorted(data)
                    == (["error", "request_id"] if protocol == "compat" else ["code", "message", "request_id"])
                },
            )
        return _read_sse(r, protocol)


def _read_sse(r: httpx.Response, protocol: str) -> Seen:
    text: list[str] = []
    status: int | None = None
    ended = False
    lines = r.iter_lines()
    for line in lines:
        if line.startswith(":HTTP_STATUS/"):
            status = int(line.split("/", 1)[1])
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            ended = True
            continue
        chunk = json.loads(data)
        err = chunk.get("error") if protocol == "compat" else (chunk if "code" in chunk else None)
        if err:
            return Seen(
                status if protocol == "native" else None,
                err.get("code"),
                err.get("message"),
                event=True,
                before="".join(text),
                extra={"after the error": [x for x in lines if x.strip()]},
            )
        if protocol == "compat":
            text += [c["delta"].get("content") or "" for c in chunk["choices"]]
        else:
            choice = chunk["output"]["choices"][0]
            text += [c.get("text", "") for c in choice["message"]["content"]]
            ended = ended or choice["finish_reason"] not in ("null", None)
    return Seen(200, extra={"text": "".join(text), "ended": ended, "no error": True})


WAYS: dict[str, Callable[[str, bool], Seen]] = {
    "openai": via_openai,
    "dashscope": via_dashscope,
    "httpx-compat": lambda url, stream: via_httpx(url, "compat", stream),
    "httpx-native": lambda url, stream: via_httpx(url, "native", stream),
}


def expected_for(way: str, e: Expect) -> Seen:
    protocol = "native" if way in ("dashscope", "httpx-native") else "compat"
    code = e.codes[0] if protocol == "native" else e.codes[1]
    if e.event:
        status = e.status if way in ("dashscope", "httpx-native") else None
        return Seen(status, code, e.message, event=True, before=e.before)
    sees_headers = way in ("openai", "httpx-compat", "httpx-native")
    return Seen(
        e.status,
        code,
        e.message,
        no_retry=e.no_retry if sees_headers else None,
        retry_after=e.retry_after if sees_headers else None,
    )


# --- the serve in front of one failing upstream -------------------------------------------------------------------


@pytest.fixture
def upstreams() -> Iterator[tuple[DashScopeServer, FaultServer]]:
    with DashScopeServer(api_key=API_KEY) as ds, FaultServer() as fs:
        yield ds, fs


def serve_in_front(site: Site, backend: str) -> Served:
    if backend == "engine":
        client = qwenvl.AsyncClient(
            backend="openai", api_key=API_KEY, base_url=site.url("openai"), model=ENGINE_MODEL, **UPSTREAM_REQUEST
        )
        settings = ServeSettings(api_key=SERVE_KEY, pass_model_names=False)
    else:
        protocol = backend.removeprefix("gateway-")
        client = qwenvl.AsyncClient(
            api_key=API_KEY, protocol=protocol, base_url=site.url("dashscope"), **UPSTREAM_REQUEST
        )
        settings = ServeSettings(api_key=SERVE_KEY)
    return Served(create_app(client, settings))


def compare(want: Seen, got: Seen) -> list[tuple[str, Any, Any]]:
    out = []
    if got.extra.get("no error"):
        return [("no error", "an error", got.extra)]
    for name in ("status", "code", "message", "event", "no_retry", "retry_after", "before"):
        w, g = getattr(want, name), getattr(got, name)
        if name == "message" and isinstance(g, str):
            g = _URL.sub("<url>", g)
        if w != g:
            out.append((name, w, g))
    if got.extra.get("shape") is False:
        out.append(("shape", "the protocol's error body", "other keys"))
    if got.extra.get("after the error"):
        out.append(("after the error", [], got.extra["after the error"]))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_an_upstream_failure_reaches_every_client_of_the_serve_as_its_protocol_says(upstreams, case, backend):
    if backend not in case.backends:
        pytest.skip(f"{case.name}: not met through {backend}")
    site = case.site(*upstreams)
    e = case.expect
    mismatches: list[str] = []
    with serve_in_front(site, backend) as served:
        for way, ask in WAYS.items():
            for stream in (False, True):
                if e.streams_only and not stream:
                    continue
                want = expected_for(way, e)
                if not stream and e.event:
                    continue
                site.before("openai" if backend == "engine" else "dashscope")
                got = ask(served.url, stream)
                attempts = site.attempts()
                found = compare(want, got)
                if attempts != e.attempts:
                    found.append(("attempts", e.attempts, attempts))
                mismatches += [f"[{name}] {way} stream={stream}: want {w!r}, got {g!r}" for name, w, g in found]
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("backend", ["gateway-compat", "engine"])
def test_the_openai_sdk_never_resends_what_the_upstream_may_have_charged(upstreams, backend):
    """The openai SDK retries a 5xx by itself (here twice): not one the serve marks ``x-should-retry: false`` (the
    upstream answered 200 and then failed, or refused the server's key), but a 503 it does (the control: 2 attempts
    by the serve, times 3 by the SDK)."""
    ds, fs = upstreams
    html = b"<!DOCTYPE html><html><body>Bad Request</body></html>"
    sites = {
        "cut": (_fault(fs, "cut"), 1),
        "401": (_dashscope(ds, Reply(status=401, times=9)), 1),
        "not JSON": (_dashscope(ds, Reply(raw_body=b"hello there", content_type="text/plain", times=9)), 1),
        "HTML 400": (_dashscope(ds, Reply(status=400, raw_body=html, content_type="text/html", times=9)), 1),
        "503": (_dashscope(ds, Reply(status=503, times=9)), 6),
    }
    seen = {}
    for name, (site, _) in sites.items():
        with serve_in_front(site, backend) as served:
            sdk = openai.OpenAI(base_url=served.url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=2)
            site.before("openai" if backend == "engine" else "dashscope")
            with pytest.raises(openai.APIStatusError):
                sdk.chat.completions.create(model=MODEL, messages=_ask(False))
            seen[name] = site.attempts()
    assert seen == {name: attempts for name, (_, attempts) in sites.items()}


def test_a_gateway_without_its_own_key_is_a_bad_gateway_not_the_callers_auth(upstreams):
    ds, _ = upstreams
    client = qwenvl.AsyncClient(base_url=ds.url, **UPSTREAM_REQUEST)  # no key anywhere: the environment is isolated
    with Served(create_app(client, ServeSettings(api_key=SERVE_KEY))) as served:
        for way in ("httpx-compat", "httpx-native"):
            for stream in (False, True):
                seen = WAYS[way](served.url, stream)
                assert (seen.status, seen.code) == (502, "upstream_error" if way == "httpx-compat" else UPSTREAM[0])
                assert seen.message == (
                    "this server has no API key for its upstream service; the server's operator must set one"
                )
    assert ds.requests == []
