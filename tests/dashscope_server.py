"""A fake DashScope cloud for Qwen-VL client tests (stdlib HTTP server + jsonschema).

It speaks both wire protocols exactly as documented in
/work/shared/reference/dashscope-api.md (section numbers below refer to that file) and
gives byte-level control of the wire: scripted errors, malformed bodies, delays, streams
cut midway, SSE error events.

    with DashScopeServer(api_key="sk-test") as srv:
        srv.compat_base   # base_url for the OpenAI-compatible client
        srv.native_base   # base_url for the DashScope-native client
        srv.enqueue(Reply(status=429, headers={"Retry-After": "1"}))
        ...
        srv.requests[-1].json

Endpoints
  POST /compatible-mode/v1/chat/completions                  OpenAI-compatible (section 3)
  POST /api/v1/services/aigc/multimodal-generation/generation  DashScope-native (2.1, 2.2)
  GET  /compatible-mode/v1/models                            the models (OpenAI-compatible list; auth checked)
  GET  /api/v1/uploads?action=getPolicy&model=M              temporary-upload policy (2.3)
  POST /oss                                                  fake OSS form upload (2.3)

Order of checks for the two model endpoints: auth (401) -> JSON parse -> jsonschema ->
model allow-list -> media URL rules (oss:// header, upload exists) -> scripted Reply (or
the default echo reply). A scripted Reply therefore only answers *valid* requests; a
client bug is never hidden behind a scripted success.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy as email_policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonschema

COMPAT_PATH = "/compatible-mode/v1/chat/completions"
NATIVE_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
UPLOADS_PATH = "/api/v1/uploads"
MODELS_PATH = "/compatible-mode/v1/models"
OSS_PATH = "/oss"
OSS_RESOLVE_HEADER = "X-DashScope-OssResourceResolve"
NATIVE_SSE_HEADER = "X-DashScope-SSE"

# Model allow-list: exact names, or any name "<known>-<suffix>" (snapshots, "-latest").
KNOWN_MODELS = (
    "qwen3-vl-plus",
    "qwen3-vl-flash",
    "qwen-vl-max",
    "qwen-vl-plus",
    "qvq-max",
    "qvq-plus",
    "qwen-vl-ocr",
    "qwen2.5-vl-72b-instruct",
    "qwen2.5-vl-32b-instruct",
    "qwen2.5-vl-7b-instruct",
    "qwen2.5-vl-3b-instruct",
)
# The live service has been seen answering an unknown model with 404 as well as 400; the
# fake picks 400 for both protocols (compat code "model_not_found", native "InvalidParameter").
MODEL_NOT_FOUND_STATUS = 400
# QVQ refuses non-streaming calls (issue 8: "This model only support stream mode"), in both protocols.
STREAM_ONLY_MODELS = ("qvq-max", "qvq-plus")
STREAM_ONLY_MESSAGE = "This model only support stream mode, please enable the stream parameter to access the model."
STREAM_WORDS_PER_CHUNK = 3  # streams split the answer into deltas of ~3 words


def model_exists(name: str) -> bool:
    return any(name == m or name.startswith(m + "-") for m in KNOWN_MODELS)


# == Request schemas (JSON Schema 2020-12). These ARE the documented request shapes. =============
_FORMATS = jsonschema.FormatChecker(formats=())
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.+)", re.S)
BAD_URL_MESSAGE = "The provided URL does not appear to be valid. Ensure it is correctly formatted."


@_FORMATS.checks("media-url", raises=ValueError)
def _is_media_url(value: object) -> bool:
    """Every image/video/audio value: http(s) URL, oss:// reference, or a base64 data URL."""
    if not isinstance(value, str) or re.match(r"(https?://[^\s/?#]+|oss://\S+)", value):
        return True
    m = _DATA_URL.fullmatch(value)
    if not m:
        raise ValueError("expected an http(s) URL, an oss:// reference or data:<mime>;base64,<payload>")
    try:
        base64.b64decode(m.group(2), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"data URL payload is not valid base64 ({exc})") from None
    return True


_STR, _BOOL, _INT = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
_OBJ = {"type": "object"}
_MEDIA = {"type": "string", "format": "media-url"}
_PIXELS = {"type": "integer", "minimum": 1}
_FPS = {"type": "number", "exclusiveMinimum": 0}


def _closed(props: dict, required: tuple = ()) -> dict:
    """An object with exactly these keys (additionalProperties false)."""
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


def _tagged(tag: str, variants: dict[str, dict]) -> dict:
    """An object discriminated by `tag` (role/type); if/then per value gives precise errors."""
    return {
        "type": "object",
        "required": [tag],
        "properties": {tag: {"enum": list(variants)}},
        "allOf": [
            {"if": {"required": [tag], "properties": {tag: {"const": k}}}, "then": v} for k, v in variants.items()
        ],
    }


_TOOLS = {
    "type": "array",
    "items": _closed(
        {
            "type": {"const": "function"},
            "function": _closed({"name": _STR, "description": _STR, "parameters": _OBJ, "strict": _BOOL}, ("name",)),
        },
        ("type", "function"),
    ),
}
_TOOL_CHOICE = {
    "anyOf": [
        {"enum": ["auto", "none", "required"]},
        _closed({"type": {"const": "function"}, "function": _closed({"name": _STR}, ("name",))}, ("type", "function")),
    ]
}
_TOOL_CALLS = {
    "type": "array",
    "items": _closed(
        {
            "index": _INT,
            "id": _STR,
            "type": {"const": "function"},
            "function": _closed({"name": _STR, "arguments": _STR}, ("name", "arguments")),
        },
        ("id", "function"),
    ),
}
_RESPONSE_FORMAT = {
    "type": "object",
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": ["text", "json_object", "json_schema"]},
        "json_schema": _closed(
            {"name": _STR, "schema": _OBJ, "strict": _BOOL, "description": _STR}, ("name", "schema")
        ),
    },
    "if": {"required": ["type"], "properties": {"type": {"const": "json_schema"}}},
    "then": {"required": ["json_schema"]},
    "else": {"not": {"required": ["json_schema"]}},
}
# Generation parameters shared by both protocols (compat: top level; native: `parameters`).
_GENERATION_PARAMS = {
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "exclusiveMaximum": 2},  # [0, 2)
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},  # (0, 1]
    "top_k": _INT,
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
    "stop": {"type": ["string", "array"], "items": _STR},
    "enable_thinking": _BOOL,
    "thinking_budget": {"type": "integer", "minimum": 1},
    "vl_high_resolution_images": _BOOL,
    "response_format": _RESPONSE_FORMAT,
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "repetition_penalty": {"type": "number", "exclusiveMinimum": 0},
    "n": {"type": "integer", "minimum": 1, "maximum": 4},
    "logprobs": _BOOL,
    "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
    "tools": _TOOLS,
    "tool_choice": _TOOL_CHOICE,
    "parallel_tool_calls": _BOOL,
    "enable_search": _BOOL,
    "search_options": _OBJ,
    "ocr_options": _OBJ,
}

# --- OpenAI-compatible: content parts are {"type": ...}; min/max_pixels and fps sit BESIDE
# image_url / video, never inside image_url (section 3).
_COMPAT_PART = _tagged(
    "type",
    {
        "text": _closed({"type": True, "text": _STR}, ("text",)),
        "image_url": _closed(
            {
                "type": True,
                "min_pixels": _PIXELS,
                "max_pixels": _PIXELS,
                "image_url": _closed({"url": _MEDIA, "detail": {"enum": ["auto", "low", "high"]}}, ("url",)),
            },
            ("image_url",),
        ),
        "video": _closed(
            {  # a video given as a list of frame images
                "type": True,
                "video": {"type": "array", "minItems": 1, "items": _MEDIA},
                "fps": _FPS,
                "min_pixels": _PIXELS,
                "max_pixels": _PIXELS,
            },
            ("video",),
        ),
        "video_url": _closed(
            {"type": True, "video_url": _closed({"url": _MEDIA}, ("url",)), "fps": _FPS}, ("video_url",)
        ),
    },
)
_COMPAT_CONTENT = {"type": ["string", "array"], "minItems": 1, "items": _COMPAT_PART}
_COMPAT_MESSAGE = _tagged(
    "role",
    {
        "system": _closed({"role": True, "content": _COMPAT_CONTENT, "name": _STR}, ("content",)),
        "user": _closed({"role": True, "content": _COMPAT_CONTENT, "name": _STR}, ("content",)),
        "assistant": _closed(
            {
                "role": True,
                "content": {**_COMPAT_CONTENT, "type": ["string", "array", "null"]},
                "name": _STR,
                "tool_calls": _TOOL_CALLS,
                "reasoning_content": _STR,
                "partial": _BOOL,
            }
        ),
        "tool": _closed({"role": True, "content": _COMPAT_CONTENT, "tool_call_id": _STR}, ("content", "tool_call_id")),
    },
)
COMPAT_REQUEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "POST /compatible-mode/v1/chat/completions",
    **_closed(
        {
            "model": {"type": "string", "minLength": 1},
            "messages": {"type": "array", "minItems": 1, "items": _COMPAT_MESSAGE},
            "stream": _BOOL,
            "stream_options": _closed({"include_usage": _BOOL}),
            "preserve_thinking": _BOOL,
            **_GENERATION_PARAMS,
        },
        ("model", "messages"),
    ),
    # stream_options is only allowed together with "stream": true
    "dependentSchemas": {"stream_options": {"required": ["stream"], "properties": {"stream": {"const": True}}}},
}

# --- DashScope-native: content items carry exactly one of text/image/video/audio, plus
# optional per-item keys beside it (sections 2.1, 2.3).
_NATIVE_ITEM = {
    **_closed(
        {
            "text": _STR,
            "image": _MEDIA,
            "audio": _MEDIA,
            "video": {"type": ["string", "array"], "format": "media-url", "minItems": 1, "items": _MEDIA},
            "min_pixels": _PIXELS,
            "max_pixels": _PIXELS,
            "fps": _FPS,
            "enable_rotate": _BOOL,
        }
    ),
    "oneOf": [{"required": [k]} for k in ("text", "image", "video", "audio")],
}
_NATIVE_CONTENT = {"type": ["string", "array"], "minItems": 1, "items": _NATIVE_ITEM}
_NATIVE_MESSAGE = _tagged(
    "role",
    {
        "system": _closed({"role": True, "content": _NATIVE_CONTENT}, ("content",)),
        "user": _closed({"role": True, "content": _NATIVE_CONTENT}, ("content",)),
        "assistant": _closed(
            {
                "role": True,
                "content": {**_NATIVE_CONTENT, "type": ["string", "array", "null"]},
                "tool_calls": _TOOL_CALLS,
                "reasoning_content": _STR,
                "partial": _BOOL,
            }
        ),
        "tool": _closed({"role": True, "content": _NATIVE_CONTENT, "tool_call_id": _STR, "name": _STR}, ("content",)),
    },
)
NATIVE_REQUEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "POST /api/v1/services/aigc/multimodal-generation/generation",
    **_closed(
        {
            "model": {"type": "string", "minLength": 1},
            "input": _closed({"messages": {"type": "array", "minItems": 1, "items": _NATIVE_MESSAGE}}, ("messages",)),
            # Streaming is switched on by the X-DashScope-SSE header, so "stream" is NOT a
            # parameter here (even though the official SDK also copies it in, see 2.1).
            "parameters": _closed(
                {"result_format": {"enum": ["message", "text"]}, "incremental_output": _BOOL, **_GENERATION_PARAMS}
            ),
        },
        ("model", "input"),
    ),
}

_VALIDATORS = {
    "compat": jsonschema.Draft202012Validator(COMPAT_REQUEST_SCHEMA, format_checker=_FORMATS),
    "native": jsonschema.Draft202012Validator(NATIVE_REQUEST_SCHEMA, format_checker=_FORMATS),
}


def schema_error(proto: str, body: Any) -> str | None:
    """'<json path>: <message>' for the (up to 3) most relevant violations; None when valid."""
    errors = sorted(_VALIDATORS[proto].iter_errors(body), key=jsonschema.exceptions.relevance, reverse=True)
    messages = []
    for err in errors[:3]:
        err = jsonschema.exceptions.best_match([err])  # descend into oneOf/anyOf context
        if err.validator == "format":
            messages.append(f"{BAD_URL_MESSAGE} ({err.json_path}: {err.cause or err.message})")
        else:
            messages.append(f"{err.json_path}: {err.message}")
    return "; ".join(messages) or None


# == Error envelopes (section 2.4). Defaults beyond 400/401 are plausible but UNVERIFIED. ========
_ERROR_DEFAULTS = {  # status: (compat code, compat type, native code, message)
    400: ("invalid_parameter_error", "invalid_request_error", "InvalidParameter", "Invalid parameter."),
    401: ("invalid_api_key", "invalid_request_error", "InvalidApiKey", "Invalid API-key provided."),
    403: ("access_denied", "invalid_request_error", "AccessDenied", "Access denied."),
    404: ("model_not_found", "invalid_request_error", "ModelNotFound", "Model not exist."),
    429: (
        "limit_requests",
        "limit_requests",
        "Throttling.RateQuota",
        "Requests rate limit exceeded, please try again later.",
    ),
    500: ("internal_error", "internal_error", "InternalError", "An internal error has occurred."),
    503: (
        "service_unavailable",
        "internal_error",
        "ServiceUnavailable",
        "Service temporarily unavailable, possibly overloaded or not ready.",
    ),
}


def error_body(proto: str, status: int, rid: str, code: str | None = None, msg: str | None = None) -> dict:
    """The protocol's error envelope; code/message default from the status."""
    d = _ERROR_DEFAULTS.get(status) or _ERROR_DEFAULTS[500 if status >= 500 else 400]
    if proto == "compat":
        err = {"code": code or d[0], "param": None, "message": msg or d[3], "type": d[1]}
        return {"error": err, "id": f"chatcmpl-{rid}", "request_id": rid}
    return {"code": code or d[2], "message": msg or d[3], "request_id": rid}


# == Public data types ===========================================================================
class Headers(dict):
    """A dict of request headers with case-insensitive lookup (keys stored lower-case)."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes
    json: Any = None  # parsed body when it is JSON, else None
    received_at: float = field(default_factory=time.monotonic)  # when the request arrived (monotonic clock)


@dataclass
class Reply:
    """Scripted behaviour for the next model request(s). All fields optional."""

    text: str | None = None  # answer text (default: the echo text)
    reasoning: str | None = None  # thinking text, streamed before the answer
    finish_reason: str | None = None  # None -> "tool_calls" if tool_calls else "stop"
    usage: dict | None = None  # replaces the computed usage object verbatim
    model: str | None = None  # model echoed in the response (default: requested one)
    tool_calls: list | None = None  # OpenAI-style [{"id","type","function":{"name","arguments"}}]
    status: int | None = None  # >= 400: error reply in the protocol's envelope
    error_code: str | None = None
    error_message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    raw_body: bytes | None = None  # send exactly these bytes (status defaults to 200)
    content_type: str = "application/json"  # for raw_body
    delay_s: float = 0.0  # sleep before sending the status line
    hold: threading.Event | None = None  # answer only once the test sets it (or the server stops): "in flight"
    stream_cut_after: int | None = None  # streams: drop the connection after N chunks
    stream_error_after: int | None = None  # streams: send an SSE error event after N chunks
    chunk_delay_s: float = 0.0  # streams: pause between chunks
    times: int = 1  # how many consecutive requests use this reply
    content: list | None = None  # the answer as content items verbatim, e.g. [{"box": "<ref>a</ref><box>..."}]
    #   (native: the message content; streams send one item per event. compat: the same list as content)


# == Reading a request: media references, echo text, usage =======================================
def _messages(proto: str, body: dict) -> list[dict]:
    return body["messages"] if proto == "compat" else body["input"]["messages"]


def _media(proto: str, body: dict) -> list[tuple[str, list[str]]]:
    """(kind, urls) per media part, kind in image|video|audio; a frame list is one video."""
    found = []
    for msg in _messages(proto, body):
        content = msg.get("content")
        for part in content if isinstance(content, list) else []:
            if proto == "compat":
                kind = part["type"]
                if kind == "image_url":
                    found.append(("image", [part["image_url"]["url"]]))
                elif kind == "video":
                    found.append(("video", list(part["video"])))
                elif kind == "video_url":
                    found.append(("video", [part["video_url"]["url"]]))
            else:
                for kind in ("image", "video", "audio"):
                    if kind in part:
                        v = part[kind]
                        found.append((kind, list(v) if isinstance(v, list) else [v]))
    return found


def _last_user_text(proto: str, body: dict) -> str:
    for msg in reversed(_messages(proto, body)):
        if msg["role"] == "user":
            content = msg["content"]
            if isinstance(content, str):
                return content
            texts = [p["text"] for p in content if "text" in p and (proto == "native" or p["type"] == "text")]
            return " ".join(texts)
    return ""


def _split(text: str) -> list[str]:
    """Deterministic stream pieces of ~3 words; "".join(pieces) == text."""
    words = re.findall(r"\S+\s*|\s+", text)
    n = STREAM_WORDS_PER_CHUNK
    return ["".join(words[i : i + n]) for i in range(0, len(words), n)]


@dataclass
class _Answer:
    """What the fake model says for one request."""

    proto: str
    model: str
    text: str
    reasoning: str | None
    tool_calls: list | None
    finish_reason: str
    images: int
    usage_override: dict | None
    content: list | None = None

    def usage(self, text: str | None = None, reasoning: str | None = None) -> dict:
        """Usage for the answer (or for the part of it streamed so far)."""
        if self.usage_override is not None:
            return self.usage_override
        text = self.text if text is None else text
        reasoning = (self.reasoning or "") if reasoning is None else reasoning
        inp, r_tok = 10 + 100 * self.images, len(reasoning.split())
        out = len(text.split()) + r_tok
        if self.proto == "compat":
            u = {
                "prompt_tokens": inp,
                "completion_tokens": out,
                "total_tokens": inp + out,
                "prompt_tokens_details": {"image_tokens": 100 * self.images},
            }
            if self.reasoning is not None:
                u["completion_tokens_details"] = {"reasoning_tokens": r_tok}
            return u
        u = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
        if self.images:
            u["image_tokens"] = 100 * self.images
        if self.reasoning is not None:
            u["output_tokens_details"] = {"reasoning_tokens": r_tok}
        return u


def _tool_calls(calls: list) -> list:
    return [
        {"index": i, "id": c.get("id", f"call_{i}"), "type": "function", "function": dict(c["function"])}
        for i, c in enumerate(calls)
    ]


# == The server ==================================================================================
class DashScopeServer:
    """Fake DashScope cloud on 127.0.0.1:<random port>, served from a daemon thread."""

    # The live getPolicy answer carries the policy under "data"; the DashScope SDK exposes it
    # as `.output` (2.3). Both keys are sent so either reading works; narrow this to test one.
    POLICY_ENVELOPE_KEYS: tuple[str, ...] = ("data", "output")

    def __init__(self, api_key: str = "sk-test", host: str = "127.0.0.1", port: int = 0):
        self.api_key, self._addr = api_key, (host, port)
        self.uploads: dict[str, bytes] = {}  # OSS object key -> bytes
        self.upload_models: dict[str, str] = {}  # OSS object key -> model named in getPolicy
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._queue: collections.deque[list] = collections.deque()  # [Reply, remaining uses]
        self._policies: dict[str, dict] = {}  # upload_dir -> issued policy (+ "model")
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> DashScopeServer:
        self._stopping.clear()
        self._httpd = _Server(self._addr, _Handler)
        self._httpd.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, name="DashScopeServer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes delay_s / chunk_delay_s sleepers
        self._httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # drop idle keep-alive connections too
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        if self._thread:
            self._thread.join(5)
        self._httpd = self._thread = None

    def __enter__(self) -> DashScopeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- addresses -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def compat_base(self) -> str:
        return self.url + "/compatible-mode/v1"

    @property
    def native_base(self) -> str:
        return self.url + "/api/v1"

    # --- scripting and inspection ----------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far (all endpoints, in arrival order)."""
        with self._lock:
            return list(self._requests)

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend([r, r.times] for r in replies)

    def reset(self) -> None:
        """Forget requests, pending replies and uploads."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()
            self.uploads.clear()
            self.upload_models.clear()
            self._policies.clear()

    def _next_reply(self) -> Reply:
        with self._lock:
            if not self._queue:
                return Reply()
            entry = self._queue[0]
            entry[1] -= 1
            if entry[1] <= 0:
                self._queue.popleft()
            return entry[0]

    def _sleep(self, seconds: float) -> bool:
        """Sleep; False when the server is shutting down meanwhile."""
        return seconds <= 0 or not self._stopping.wait(seconds)

    def _hold(self, gate: threading.Event | None) -> bool:
        """Wait until ``gate`` is set; False when the server is shutting down first."""
        while gate is not None and not gate.wait(0.05):
            if self._stopping.is_set():
                return False
        return True


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # the listen backlog: hundreds of clients may connect at once (load tests)


def serve(**kwargs: Any) -> Iterator[DashScopeServer]:
    """Generator for a pytest fixture: `yield from serve(api_key=...)`."""
    with DashScopeServer(**kwargs) as srv:
        yield srv


class _Abort(Exception):
    """Raised to drop the connection without a (complete) response."""


# == Request handling ============================================================================
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid a 40 ms delayed-ACK stall
    server_version = "FakeDashScope/1.0"
    timeout = 30  # idle keep-alive connections

    @property
    def fake(self) -> DashScopeServer:
        return self.server.fake  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._conns.add(self.connection)

    def finish(self) -> None:
        with self.fake._lock:
            self.fake._conns.discard(self.connection)
        super().finish()

    # --- plumbing --------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _head(self, status: int, ctype: str, extra: dict[str, str], length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("x-request-id", self.rid)
        for k, v in extra.items():
            self.send_header(k, v)
        if length is None:  # a stream: chunked framing, so a cut is visible to the client
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(
        self, status: int, body: bytes | dict, ctype: str = "application/json", extra: dict | None = None
    ) -> None:
        if isinstance(body, dict):
            body = _dumps(body)
        self._head(status, ctype, extra or {}, len(body))
        self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- routing ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        self.rid = str(uuid.uuid4())
        parts = urlsplit(self.path)
        body = self._read_body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        self.req = RecordedRequest(
            self.command,
            parts.path,
            dict(parse_qsl(parts.query)),
            Headers((k.lower(), v) for k, v in self.headers.items()),
            body,
            parsed,
        )
        with self.fake._lock:
            self.fake._requests.append(self.req)
        route = {
            ("POST", COMPAT_PATH): lambda: self._model_call("compat"),
            ("POST", NATIVE_PATH): lambda: self._model_call("native"),
            ("GET", UPLOADS_PATH): self._get_policy,
            ("GET", MODELS_PATH): self._models,
            ("POST", OSS_PATH): self._oss_upload,
        }.get((self.command, parts.path.rstrip("/")))
        try:
            if route is None:
                self._send(
                    404,
                    {"code": "NotFound", "message": f"{self.command} {parts.path} not found", "request_id": self.rid},
                )
            else:
                route()
        except _Abort:
            self._abort()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = _dispatch

    def _models(self) -> None:
        if not self._authorized():
            return self._error("compat", 401, msg="Incorrect API key provided.")
        data = [{"id": name, "object": "model", "owned_by": "system"} for name in ("qwen3-vl-plus", "qwen-vl-max")]
        self._send(200, {"object": "list", "data": data})

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.fake.api_key}"

    def _error(
        self, proto: str, status: int, code: str | None = None, msg: str | None = None, extra: dict | None = None
    ) -> None:
        self._send(status, error_body(proto, status, self.rid, code, msg), extra=extra)

    # --- the two model endpoints -----------------------------------------------------------
    def _model_call(self, proto: str) -> None:
        if not self._authorized():
            return self._error(proto, 401, msg="Incorrect API key provided." if proto == "compat" else None)
        bad = "invalid_parameter_error" if proto == "compat" else "InvalidParameter"
        body = self.req.json
        if body is None:
            return self._error(proto, 400, bad, "The request body is not valid JSON.")
        problem = schema_error(proto, body)
        if problem:
            return self._error(proto, 400, bad, problem)
        if not model_exists(body["model"]):
            if proto == "compat":
                msg = f"The model `{body['model']}` does not exist or you do not have access to it."
                return self._error(proto, MODEL_NOT_FOUND_STATUS, "model_not_found", msg)
            return self._error(proto, MODEL_NOT_FOUND_STATUS, "InvalidParameter", "Model not exist.")
        streaming = (
            bool(body.get("stream"))
            if proto == "compat"
            else self.headers.get(NATIVE_SSE_HEADER, "").lower() == "enable"
        )
        if not streaming and any(body["model"] == m or body["model"].startswith(m + "-") for m in STREAM_ONLY_MODELS):
            return self._error(proto, 400, bad, STREAM_ONLY_MESSAGE)
        media = _media(proto, body)
        problem = self._check_oss(media, body["model"])
        if problem:
            return self._error(proto, 400, bad, problem)

        reply = self.fake._next_reply()
        if not self.fake._sleep(reply.delay_s) or not self.fake._hold(reply.hold):
            raise _Abort
        if reply.raw_body is not None:
            return self._send(reply.status or 200, reply.raw_body, reply.content_type, reply.headers)
        if reply.status is not None and reply.status >= 400 and reply.stream_error_after is None:
            return self._error(proto, reply.status, reply.error_code, reply.error_message, reply.headers)

        n_images = sum(kind == "image" for kind, _ in media)
        n_videos = sum(kind == "video" for kind, _ in media)
        if reply.text is not None:
            text = reply.text
        elif reply.tool_calls:
            text = ""
        else:
            text = f"echo: {_last_user_text(proto, body)} [images={n_images} videos={n_videos}]"
        tool_calls = _tool_calls(reply.tool_calls) if reply.tool_calls else None
        ans = _Answer(
            proto,
            reply.model or body["model"],
            text,
            reply.reasoning,
            tool_calls,
            reply.finish_reason or ("tool_calls" if tool_calls else "stop"),
            n_images,
            reply.usage,
            reply.content,
        )
        if proto == "compat":
            return (
                self._compat_stream(body, ans, reply)
                if body.get("stream")
                else self._send(200, self._compat_completion(ans), extra=reply.headers)
            )
        params = body.get("parameters", {})
        if self.headers.get(NATIVE_SSE_HEADER, "").lower() == "enable":
            return self._native_stream(params, ans, reply)
        self._send(
            200,
            self._native_payload(params, ans, text, ans.reasoning, tool_calls, ans.finish_reason, content=ans.content),
            extra=reply.headers,
        )

    def _check_oss(self, media: list[tuple[str, list[str]]], model: str) -> str | None:
        """oss:// references need the resolve header, an existing upload, the same model (2.3)."""
        refs = [u for _, urls in media for u in urls if u.startswith("oss://")]
        if refs and self.headers.get(OSS_RESOLVE_HEADER, "").lower() != "enable":
            return f"{BAD_URL_MESSAGE} oss:// resources need the request header '{OSS_RESOLVE_HEADER}: enable'."
        for ref in refs:
            key = ref[len("oss://") :]
            if key not in self.fake.uploads:
                return f"{BAD_URL_MESSAGE} The object {ref} does not exist (not uploaded or expired)."
            if self.fake.upload_models.get(key) != model:
                return f"The file {ref} was uploaded for model {self.fake.upload_models[key]}, not {model}."
        return None

    # --- OpenAI-compatible responses (section 3) -------------------------------------------
    def _compat_completion(self, ans: _Answer) -> dict:
        msg: dict[str, Any] = {"role": "assistant", "content": ans.text if ans.content is None else ans.content}
        if ans.reasoning is not None:
            msg["reasoning_content"] = ans.reasoning
        if ans.tool_calls:
            msg["tool_calls"] = ans.tool_calls
        return {
            "id": f"chatcmpl-{self.rid}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ans.model,
            "request_id": self.rid,
            "choices": [{"index": 0, "message": msg, "finish_reason": ans.finish_reason, "logprobs": None}],
            "usage": ans.usage(),
            "system_fingerprint": None,
        }

    def _compat_stream(self, body: dict, ans: _Answer, reply: Reply) -> None:
        deltas: list[dict] = [{"reasoning_content": p} for p in _split(ans.reasoning or "")]
        deltas += (
            [{"content": p} for p in _split(ans.text)]
            if ans.content is None
            else [{"content": [item]} for item in ans.content]
        )
        for i, call in enumerate(ans.tool_calls or []):  # OpenAI-style tool-call deltas
            fn, args = call["function"], call["function"]["arguments"]
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": fn["name"], "arguments": ""},
                        }
                    ]
                }
            )
            deltas += [
                {"tool_calls": [{"index": i, "function": {"arguments": args[j : j + 8]}}]}
                for j in range(0, len(args), 8)
            ]
        deltas = deltas or [{"content": ""}]
        deltas[0] = {"role": "assistant", **deltas[0]}
        base = {
            "id": f"chatcmpl-{self.rid}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": ans.model,
        }
        events = [
            _sse_compat(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": d,
                            "logprobs": None,
                            "finish_reason": ans.finish_reason if i == len(deltas) - 1 else None,
                        }
                    ],
                }
            )
            for i, d in enumerate(deltas)
        ]
        tail = []
        if body.get("stream_options", {}).get("include_usage"):
            tail.append(_sse_compat({**base, "choices": [], "usage": ans.usage()}))
        tail.append(b"data: [DONE]\n\n")
        status = reply.status or 500
        error = _sse_compat(error_body("compat", status, self.rid, reply.error_code, reply.error_message))
        self._stream("text/event-stream", events, tail, error, reply)

    # --- DashScope-native responses (sections 2.1, 2.2) ------------------------------------
    def _native_payload(
        self,
        params: dict,
        ans: _Answer,
        text: str,
        reasoning: str | None,
        tool_calls: list | None,
        finish: str,
        usage: dict | None = None,
        content: list | None = None,
    ) -> dict:
        if params.get("result_format") == "text":
            output: dict[str, Any] = {"text": text, "finish_reason": finish}
        else:
            msg: dict[str, Any] = {
                "role": "assistant",
                "content": content if content is not None else [{"text": text}] if text else [],
            }
            if reasoning is not None:
                msg["reasoning_content"] = reasoning
            if tool_calls:
                msg["tool_calls"] = tool_calls
            output = {"choices": [{"finish_reason": finish, "message": msg}]}
        return {"output": output, "usage": usage or ans.usage(), "request_id": self.rid}

    def _native_stream(self, params: dict, ans: _Answer, reply: Reply) -> None:
        incremental = bool(params.get("incremental_output"))
        steps = [("reasoning", p) for p in _split(ans.reasoning or "")]
        steps += (
            [("text", p) for p in _split(ans.text)] if ans.content is None else [("item", item) for item in ans.content]
        )
        if ans.tool_calls or not steps:
            steps.append(("tools", ""))
        events, text_so_far, reasoning_so_far = [], "", ""
        for i, (kind, piece) in enumerate(steps):
            text_so_far += piece if kind == "text" else ""
            reasoning_so_far += piece if kind == "reasoning" else ""
            last = i == len(steps) - 1
            if incremental:
                text = piece if kind == "text" else ""
                reasoning = piece if kind == "reasoning" else ""
            else:  # cumulative: every event carries everything so far (the service default)
                text, reasoning = text_so_far, reasoning_so_far
            data = self._native_payload(
                params,
                ans,
                text,
                reasoning if ans.reasoning is not None else None,
                ans.tool_calls if kind == "tools" else None,
                ans.finish_reason if last else "null",  # the STRING "null" while streaming
                ans.usage(text_so_far, reasoning_so_far),
                content=[piece] if kind == "item" else None,
            )
            events.append(b"id:%d\nevent:result\n:HTTP_STATUS/200\ndata:%s\n\n" % (i + 1, _dumps(data)))
        status = reply.status or 500
        error = b"id:%d\nevent:error\n:HTTP_STATUS/%d\nstatus:%d\ndata:%s\n\n" % (
            (reply.stream_error_after or 0) + 1,
            status,
            status,
            _dumps(error_body("native", status, self.rid, reply.error_code, reply.error_message)),
        )
        self._stream("text/event-stream;charset=UTF-8", events, [], error, reply)

    def _stream(self, ctype: str, events: list[bytes], tail: list[bytes], error: bytes, reply: Reply) -> None:
        """Write SSE events as HTTP chunks, honouring stream_cut_after / stream_error_after."""
        self._head(200, ctype, reply.headers, None)
        for i in range(len(events) + 1):
            if reply.stream_cut_after is not None and i >= reply.stream_cut_after:
                raise _Abort  # no final chunk, no [DONE], no terminating 0-chunk
            if reply.stream_error_after is not None and i >= reply.stream_error_after:
                self._chunk(error)
                break
            if i == len(events):
                for t in tail:
                    self._chunk(t)
                break
            self._chunk(events[i])
            if i < len(events) - 1 and not self.fake._sleep(reply.chunk_delay_s):
                raise _Abort
        self.wfile.write(b"0\r\n\r\n")

    # --- temporary uploads (section 2.3) ---------------------------------------------------
    def _get_policy(self) -> None:
        if not self._authorized():
            return self._error("native", 401)
        q = self.req.query
        if q.get("action") != "getPolicy" or not q.get("model"):
            return self._error("native", 400, "InvalidParameter", "Expected action=getPolicy and a model.")
        if not model_exists(q["model"]):
            return self._error("native", MODEL_NOT_FOUND_STATUS, "InvalidParameter", "Model not exist.")
        upload_dir = f"dashscope-instant/{uuid.uuid4().hex}/{time.strftime('%Y-%m-%d')}"
        policy = {
            "upload_host": self.fake.url + OSS_PATH,
            "upload_dir": upload_dir,
            "oss_access_key_id": "FAKE-AK-" + uuid.uuid4().hex[:16],
            "signature": base64.b64encode(uuid.uuid4().bytes).decode(),
            "policy": base64.b64encode(json.dumps({"dir": upload_dir}).encode()).decode(),
            "x_oss_object_acl": "private",
            "x_oss_forbid_overwrite": "true",
            "expire_in_seconds": 300,
            "max_file_size_mb": 100,  # seen in live answers; unused here
        }
        with self.fake._lock:
            self.fake._policies[upload_dir] = {**policy, "model": q["model"]}
        self._send(200, {"request_id": self.rid, **{k: policy for k in self.fake.POLICY_ENVELOPE_KEYS}})

    def _oss_upload(self) -> None:
        """A PostObject form upload; OSS answers in XML, and 204 unless success_action_status says 200."""
        ctype = self.headers.get("Content-Type", "")
        msg = BytesParser(policy=email_policy.default).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + self.req.body
        )
        form: dict[str, str] = {}
        file_bytes = None
        for part in msg.iter_parts() if msg.is_multipart() else []:
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if name == "file":
                file_bytes = payload
            elif name:
                form[name] = payload.decode("utf-8")
        key = form.get("key", "")
        pol = next((p for d, p in self.fake._policies.items() if key.startswith(d + "/")), None)
        if file_bytes is None or not key:
            return self._oss_error(400, "InvalidArgument", "multipart form needs 'key' and 'file' fields")
        signed = {
            "OSSAccessKeyId": "oss_access_key_id",
            "Signature": "signature",
            "policy": "policy",
            "x-oss-object-acl": "x_oss_object_acl",
            "x-oss-forbid-overwrite": "x_oss_forbid_overwrite",
        }
        if pol is None or any(form.get(f) != pol[p] for f, p in signed.items()):
            return self._oss_error(403, "AccessDenied", "Invalid according to Policy: Policy Condition")
        if key in self.fake.uploads:
            return self._oss_error(409, "FileAlreadyExists", "The object you specified already exists.")
        with self.fake._lock:
            self.fake.uploads[key] = file_bytes
            self.fake.upload_models[key] = pol["model"]
        self._send(200 if form.get("success_action_status") == "200" else 204, b"", "application/xml")

    def _oss_error(self, status: int, code: str, message: str) -> None:
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
            f"</Message><RequestId>{self.rid}</RequestId></Error>"
        )
        self._send(status, xml.encode(), "application/xml")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _sse_compat(obj: dict) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"
