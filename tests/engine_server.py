"""Loopback doubles of OpenAI-compatible engines: vLLM, llama.cpp's server, Ollama, and a strict generic server.

Each behaves as the reference notes say its engine does (../shared/reference/serving.md, local-models.md):

- every engine: ``GET /v1/models`` lists the served model (``owned_by`` vllm / llamacpp / library, or none for
  generic); a request for another model is a 404 (vLLM's "The model `x` does not exist."); message parts must be
  plain OpenAI parts (``type`` plus ``text``/``image_url``/``video_url``, nothing beside them: DashScope's
  ``max_pixels`` beside ``image_url`` is refused here so that a leak is caught).
- vllm: ``GET /version``; takes ``top_k``, ``chat_template_kwargs``, ``mm_processor_kwargs``; a frame list is
  ``data:video/jpeg;base64,<f1>,<f2>,...``; usage counts image tokens in ``prompt_tokens`` and, with
  ``details=True`` (``--enable-prompt-tokens-details``), gives ``prompt_tokens_details.multimodal_tokens``.
- llamacpp: ``GET /props``; ``prompt_tokens`` leaves the image tokens out; a stream carries no usage.
- ollama: ``GET /api/version``; only ``data:image/{jpeg,jpg,png,webp};base64,`` images (an http URL gets
  Ollama's 400 "image URLs are not currently supported, please use base64 encoded data instead"), no video.
- generic: plain OpenAI fields only (an unknown top-level field is a 400).

The answer describes what the server saw, so tests check media end to end: ``"images=2 sizes=64x48,32x32
frames=0 | <last user text>"``. Token counts: a text token per whitespace-separated word of every message,
image tokens ``(w/factor)*(h/factor)`` per image (factor from ``family``: 28 or 32), video tokens
``ceil(frames/2) * grid``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

PLAIN_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "stream",
    "stream_options",
    "n",
    "presence_penalty",
    "frequency_penalty",
}
EXTRA_FIELDS = {
    "vllm": {"top_k", "chat_template_kwargs", "mm_processor_kwargs"},
    "llamacpp": {"top_k", "chat_template_kwargs"},
    "ollama": set(),
    "generic": set(),
}
OWNED_BY = {"vllm": "vllm", "llamacpp": "llamacpp", "ollama": "library", "generic": None}
OLLAMA_DATA = re.compile(r"data:(image/(jpeg|jpg|png|webp))?;base64,")


@dataclass
class Seen:
    path: str
    json: Any
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # the listen backlog: hundreds of clients may connect at once (load tests)
    daemon_threads = True


@dataclass
class EngineServer:
    engine: str = "vllm"
    served: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    root: str | None = None  # /v1/models "root" (vLLM: the path the model was loaded from)
    max_model_len: int | None = None  # /v1/models "max_model_len" (vLLM: the context it serves the model with)
    family_factor: int = 28
    details: bool = False  # vLLM --enable-prompt-tokens-details
    owned_by: str | None = "default"  # "default": the engine's own; None: leave it out (detection by probes)
    api_key: str | None = None  # when set, requests (and GET /v1/models) must carry it
    files: dict[str, bytes] = field(default_factory=dict)  # GET /files/<name> (remote images for tests)
    requests: list[Seen] = field(default_factory=list)

    def __enter__(self) -> EngineServer:
        handler = type("Handler", (_Handler,), {"srv": self})
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def chats(self) -> list[Seen]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def grid(width: int, height: int, factor: int, min_pixels: int = 0, max_pixels: int = 16384 * 28 * 28) -> int:
    """Placeholder tokens of an image as Qwen's processor resizes it (qwen-vl-utils smart_resize), written here
    from Qwen's published rule so the double does not borrow the code under test."""
    min_pixels = min_pixels or 4 * factor * factor
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return (h // factor) * (w // factor)


def _image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


class _Handler(BaseHTTPRequestHandler):
    srv: EngineServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, obj: Any, content_type: str = "application/json") -> None:
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        if self.srv.engine == "ollama":
            self._send(
                status, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
            )
        else:
            self._send(
                status,
                {
                    "object": "error",
                    "message": message,
                    "type": "BadRequestError",
                    "code": status,
                    "error": {"message": message, "type": "BadRequestError", "code": status},
                },
            )

    def do_GET(self) -> None:
        srv, path = self.srv, self.path.split("?")[0]
        self.srv.requests.append(Seen(path, None, dict(self.headers)))
        if path.startswith("/v1/") and srv.api_key and self.headers.get("Authorization") != f"Bearer {srv.api_key}":
            return self._error(401, "invalid api key")  # vLLM's --api-key guards every /v1 path, the listing too
        if path == "/v1/models":
            entry: dict[str, Any] = {"id": srv.served, "object": "model", "created": 0}
            owner = OWNED_BY[srv.engine] if srv.owned_by == "default" else srv.owned_by
            if owner:
                entry["owned_by"] = owner
            if srv.root:
                entry["root"] = srv.root
            if srv.max_model_len:
                entry["max_model_len"] = srv.max_model_len
            return self._send(200, {"object": "list", "data": [entry]})
        probes = {
            "vllm": ("/version", {"version": "0.11.0"}),
            "ollama": ("/api/version", {"version": "0.12.7"}),
            "llamacpp": ("/props", {"default_generation_settings": {}, "total_slots": 1}),
        }
        if srv.engine in probes and path == probes[srv.engine][0]:
            return self._send(200, probes[srv.engine][1])
        if path.startswith("/files/") and path[7:] in srv.files:
            return self._send(200, srv.files[path[7:]], "image/png")
        self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        srv = self.srv
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return self._error(400, "body is not JSON")
        srv.requests.append(Seen(self.path, body, dict(self.headers)))
        if self.path != "/v1/chat/completions":
            return self._send(404, {"detail": "Not Found"})
        if srv.api_key and self.headers.get("Authorization") != f"Bearer {srv.api_key}":
            return self._error(401, "invalid api key")
        if body.get("model") != srv.served:
            return self._error(404, f"The model `{body.get('model')}` does not exist.")
        try:
            seen = self._check(body)
        except BadRequest as exc:
            return self._error(exc.status, str(exc))
        answer = (
            f"images={len(seen['images'])} sizes={','.join(seen['images'])} frames={seen['frames']} | {seen['text']}"
        )
        words = answer.split()[: body.get("max_tokens") or 10_000]
        usage = self._usage(seen, len(words))
        if body.get("stream"):
            return self._stream(body, words, usage)
        self._send(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": srv.served,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}
                ],
                "usage": usage,
            },
        )

    def _check(self, body: dict[str, Any]) -> dict[str, Any]:
        srv = self.srv
        unknown = set(body) - PLAIN_FIELDS - EXTRA_FIELDS[srv.engine]
        if unknown:
            raise BadRequest(400, f"unknown fields: {sorted(unknown)}")
        sizes: list[str] = []
        media_tokens = {"image": 0, "video": 0}
        frames = 0
        text_words = 0
        last_text = ""
        f = srv.family_factor
        for m in body["messages"]:
            content = m.get("content")
            if isinstance(content, str):
                text_words += len(content.split())
                if m["role"] == "user":
                    last_text = content
                continue
            for part in content:
                kind = part.get("type")
                if set(part) != {"type", kind}:
                    raise BadRequest(400, f"unexpected fields beside {kind}: {sorted(set(part) - {'type', kind})}")
                if kind == "text":
                    text_words += len(part["text"].split())
                    last_text = part["text"]
                elif kind == "image_url":
                    url = part["image_url"]["url"]
                    if srv.engine == "ollama" and not OLLAMA_DATA.match(url):
                        raise BadRequest(
                            400,
                            "image URLs are not currently supported, please use base64 encoded data instead"
                            if url.startswith("http")
                            else "invalid image input",
                        )
                    if not url.startswith("data:"):
                        raise BadRequest(400, "this double only takes data: URLs")
                    img = _image(base64.b64decode(url.split(",", 1)[1]))
                    sizes.append(f"{img.width}x{img.height}")
                    media_tokens["image"] += grid(img.width, img.height, f)
                elif kind == "video_url":
                    if srv.engine not in ("vllm",):
                        raise BadRequest(400, "video is not supported")
                    url = part["video_url"]["url"]
                    if not url.startswith("data:video/jpeg;base64,"):
                        raise BadRequest(400, "this double only takes frame lists")
                    payloads = url.split(",")[1:]
                    first = _image(base64.b64decode(payloads[0]))
                    frames += len(payloads)
                    media_tokens["video"] += math.ceil(len(payloads) / 2) * grid(first.width, first.height, f)
                else:
                    raise BadRequest(400, f"unknown part type {kind!r}")
        return {"images": sizes, "frames": frames, "text": last_text, "text_words": text_words, "media": media_tokens}

    def _usage(self, seen: dict[str, Any], completion: int) -> dict[str, Any]:
        srv = self.srv
        media = seen["media"]["image"] + seen["media"]["video"]
        markers = 2 * (len(seen["images"]) + (1 if seen["frames"] else 0))
        prompt = seen["text_words"] + (0 if srv.engine == "llamacpp" else media + markers)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if srv.engine == "vllm" and srv.details:
            mm = {k: v for k, v in seen["media"].items() if v}
            usage["prompt_tokens_details"] = {"cached_tokens": 0, **({"multimodal_tokens": mm} if mm else {})}
        return usage

    def _stream(self, body: dict[str, Any], words: list[str], usage: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(obj: Any) -> None:
            data = f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": self.srv.served}
        for i, word in enumerate(words):
            text = word if i == 0 else " " + word
            chunk({**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
        chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        include = (body.get("stream_options") or {}).get("include_usage")
        if include and self.srv.engine != "llamacpp":
            chunk({**base, "choices": [], "usage": usage})
        chunk("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
