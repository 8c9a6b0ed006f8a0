"""From a Request to a Call: the message list, the generation parameters and the prepared media.

Everything that both protocols (and every backend) share is decided here once; the protocol modules
only place these values where their wire format wants them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from qwenvl import env as qenv
from qwenvl import structured
from qwenvl._constants import FETCH_TIMEOUT_MAX_S
from qwenvl.errors import MediaError, UsageError
from qwenvl.media import MediaOptions, PreparedItem, prepare_messages
from qwenvl.media.prepare import PreparedCache
from qwenvl.media.resize import image_budget, service_budget
from qwenvl.media.sources import (
    OPTION_MEDIA,
    check_options_apply,
    check_pages_apply,
    check_video_options_apply,
    first_names,
    option_given,
    ref_kinds,
)
from qwenvl.models import PAID_PROTOCOLS, VIDEO_FPS, ModelInfo, model_info, no_family_error, typo_error
from qwenvl.spelling import nearest
from qwenvl.types import (
    BUILT_WIRE_KEYS,
    GENERATION_FIELDS,
    PASS_THROUGH_PARAMS,
    ImagePart,
    Message,
    Request,
    TextPart,
    VideoPart,
    reserved_extra_hint,
)

log = logging.getLogger("qwenvl")


@dataclass
class Call:
    """A planned request, everything up to the wire (``Client.plan``): what ``send`` sends and ``preview`` shows.

    ``request`` is the validated Request, ``model`` the model's rules (``qwenvl.models.ModelInfo``),
    ``messages`` the turns ready for the wire (every media reference prepared: resized, encoded, sampled),
    ``history`` the same turns with the user's own references (for ``Response.messages``), ``params`` the
    generation parameters under protocol-neutral names, ``media`` one ``PreparedItem`` per image, video or PDF
    page (width × height in pixels as sent, bytes, estimated tokens), ``schema`` the JSON Schema of structured
    output. A Call planned with ``estimate_only=True`` has placeholder media and cannot be sent (UsageError).
    ``request_id`` (default None) is the id a server in front gave the request (``qwenvl serve``): the usage log
    records it instead of the service's, so the log and the server's caller name the request alike.

    Made by ``Client.plan`` rather than by hand; building one raises nothing (the dataclass checks nothing)."""

    request: Request
    model: ModelInfo
    messages: list[Message]  # ready for the wire: every media reference prepared
    history: list[Message]  # the same turns with the user's own references, for Response.messages
    params: dict[str, Any]  # generation parameters, protocol-neutral names
    media: list[PreparedItem] = field(default_factory=list)
    schema: dict[str, Any] | None = None
    estimate_only: bool = False  # planned for an estimate: media are placeholders; never sent (ensure_sendable)
    request_id: str | None = None  # the id its own caller knows it by (qwenvl serve's): the usage log records it


def ensure_sendable(call: Call) -> None:
    """Refuse a call planned with ``estimate_only``: its media are ``estimate://`` placeholders, not files."""
    if call.estimate_only:
        raise UsageError(
            "this call was planned with estimate_only=True (sizes and tokens only, media not "
            "prepared) and cannot be sent",
            hint="Plan it again without estimate_only to send it.",
        )


def _takes_oss(protocol: str) -> bool:
    """Whether the protocol named ``protocol`` sends ``oss://`` references (False for one not registered)."""
    from qwenvl import protocols

    return protocol in protocols.names() and protocols.get(protocol).oss_references


def media_options(request: Request, model: ModelInfo, protocol: str, *, estimate_only: bool = False) -> MediaOptions:
    """The media preparation a request asks for; ``estimate_only`` for sizes and tokens without preparing.

    UsageError when it asks for high-resolution images (``--high-res``, ``detail="high"``) from a model
    that has no ``vl_high_resolution_images`` (QVQ and the other 28-px models): refused rather than ignored,
    so that an estimate never counts a budget the service would not apply (``ModelInfo.high_res``)."""
    check_high_res(request, model)
    check_budget(request, model)
    return MediaOptions(
        model=model,
        protocol=protocol,
        oss_references=_takes_oss(protocol),
        detail=request.detail,
        vl_high_resolution_images=high_resolution(request),
        min_pixels=request.min_pixels,
        max_pixels=request.max_pixels,
        prepare=request.prepare,
        fps=request.fps,
        pages=request.pages,
        fetch_urls=request.fetch_urls,
        fetch_timeout_s=min(request.timeout_s, FETCH_TIMEOUT_MAX_S),
        video_as=request.video_as,
        estimate_only=estimate_only,
    )


def check_high_res(request: Request, model: ModelInfo) -> None:
    """Refuse high-resolution images for a (known) model that does not support them."""
    if high_resolution(request) and (model.known or model.local_family) and not model.high_res:
        how = "--detail high" if request.vl_high_resolution_images is None else "--high-res"
        raise UsageError(
            f"{model.name} does not support high-resolution images ({how}, "
            f"vl_high_resolution_images): it is a {model.factor}-px {model.family} model",
            hint="Drop the option (images get the default budget of "
            f"{model.image_tokens} tokens), or use qwen3-vl-plus or qwen-vl-max.",
        )


def check_budget(request: Request, model: ModelInfo) -> None:
    """Refuse contradictory budget options (UsageError, exit 2), in the user's own terms: ``detail="low"`` with
    ``vl_high_resolution_images`` on, ``detail="high"`` with it off (False, not None), and a ``max_pixels`` below
    the model's minimum image (``ModelInfo.min_pixels``, 4 tokens) when ``min_pixels`` is not given (an explicit
    min above max is the Request's own check). ``max_pixels`` is ignored with high resolution, as the service does."""
    if request.detail == "low" and request.vl_high_resolution_images:
        raise UsageError(
            "--detail low and --high-res contradict each other (a smaller budget, and the high-resolution one)",
            hint="Keep one: --detail low for fewer tokens, or --high-res for up to 16384 tokens per image.",
        )
    if request.detail == "high" and request.vl_high_resolution_images is False:
        raise UsageError(
            "--detail high and --no-high-res contradict each other (detail high is the high-resolution budget)",
            hint="Keep one: --detail high for up to 16384 tokens per image, or --no-high-res for the default.",
        )
    given = request.max_pixels
    if given is not None and request.min_pixels is None and not high_resolution(request) and given < model.min_pixels:
        raise UsageError(
            f"max_pixels (--max-pixels) {given:,} is below {model.name}'s smallest image of {model.min_pixels:,} "
            f"pixels ({model.min_image_tokens} tokens of {model.factor}x{model.factor} px)",
            hint=f"Give --max-pixels / max_pixels of at least {model.min_pixels:,} (the default budget is "
            f"{model.default_max_pixels:,}).",
        )


def structured_output_supported(request: Request, model: ModelInfo) -> bool:
    """Whether ``response_format`` may be sent: the model accepts it (stable and latest qwen-vl-max/plus,
    Qwen3-VL) and, for Qwen3-VL, only in non-thinking mode [vision, 2025-11-18; issue 10]. Otherwise JSON
    mode still works through the prompt's instruction and the answer's validation (``structured``)."""
    if not model.structured_output or model.thinking_only:
        return False
    return not request.enable_thinking


def high_resolution(request: Request) -> bool | None:
    """``vl_high_resolution_images`` as sent: the explicit value, else True for detail=high."""
    if request.vl_high_resolution_images is not None:
        return request.vl_high_resolution_images
    return True if request.detail == "high" else None


def image_pixels(request: Request, model: ModelInfo) -> dict[str, int]:
    """The ``min_pixels``/``max_pixels`` put beside each image of the request's new turn (pixels; only those
    that are set): the request's own, and for ``detail="low"`` without a ``max_pixels`` and without high
    resolution the model's low-detail budget (``low_detail_tokens``), so that URLs get the low budget too.
    Raises nothing."""
    max_pixels = request.max_pixels
    if max_pixels is None and request.detail == "low" and not high_resolution(request):
        max_pixels = model.low_detail_tokens * model.pixels_per_token
    return {k: v for k, v in (("min_pixels", request.min_pixels), ("max_pixels", max_pixels)) if v is not None}


def video_pixels(request: Request) -> dict[str, int]:
    """The ``min_pixels``/``max_pixels`` put beside the request's video (pixels per frame; only those that are set):
    the request's own, which bound the frames as they bound images (the official preprocessor takes them per video
    item, qwen-vl-utils ``fetch_video``; qwenvl samples with them, ``qwenvl.media.video.frame_budget``: they can
    only lower the service's frame budget). ``detail`` and high resolution are the images' budget, not the
    frames'. Raises nothing."""
    return {k: v for k, v in (("min_pixels", request.min_pixels), ("max_pixels", request.max_pixels)) if v is not None}


def build_messages(request: Request, model: ModelInfo | None = None) -> list[Message]:
    """System prompt, history, then the new user turn (media first, then the prompt, as the skill does). The new
    turn's parts carry the request's per-media options (``pages``, ``prepare=False``, ``video_as="file"``, the
    pixel bounds, ``fps``): a history sends each turn's media as that turn did, whatever a later request says."""
    model = model or model_info(request.model)
    messages: list[Message] = []
    if request.system and not (request.messages and request.messages[0].role == "system"):
        messages.append(Message(role="system", content=request.system))
    messages.extend(request.messages)
    if request.prompt is not None:
        parts: list[TextPart | ImagePart | VideoPart] = []
        pixels: dict[str, Any] = dict(image_pixels(request, model))
        # the turn's own media options go with its parts, so that a history sends them again as this turn did
        own = None if request.prepare else False
        for ref in request.image_list():
            parts.append(ImagePart(image=ref, pages=request.pages, prepare=own, **pixels))
        if request.video is not None:
            as_file: Literal["file"] | None = "file" if request.video_as == "file" else None
            parts.append(
                VideoPart(
                    video=request.video,
                    fps=request.fps,
                    video_as=as_file,
                    prepare=own,
                    min_pixels=request.min_pixels,
                    max_pixels=request.max_pixels,
                )
            )  # the frames' bounds too (``video_pixels``)
        prompt = request.prompt
        note = structured.instruction(json_mode=request.json_mode, schema=request.schema)
        if note:
            prompt = f"{prompt}\n\n{note}"
        parts.append(TextPart(text=prompt))
        messages.append(Message(role="user", content=parts))
    elif not messages or messages[-1].role not in ("user", "tool"):
        raise UsageError(
            "the message history must end with a user (or tool) turn when no prompt is given",
            hint="End the history with a user message, or give a prompt.",
        )
    return messages


def generation_params(request: Request, model: ModelInfo | None = None) -> dict[str, Any]:
    """Protocol-neutral generation parameters; ``response_format`` only where the model takes it."""
    model = model or model_info(request.model)
    params: dict[str, Any] = {}
    for name in GENERATION_FIELDS:
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    high = high_resolution(request)
    if high is not None:
        params["vl_high_resolution_images"] = high
    fmt = structured.response_format(json_mode=request.json_mode, schema=request.schema)
    if fmt is not None and structured_output_supported(request, model):
        params["response_format"] = fmt
    for key, value in request.extra.items():
        params[key] = value
    return params


# --- the context window ----------------------------------------------------------------------------------------
# Text tokens without the tokenizer (none ships with qwenvl): approximate, and said so wherever shown.
CHARS_PER_TEXT_TOKEN = 3.0  # the likely count: a rough average over Chinese and English text (estimates, warnings)
# The fewest tokens text can be (ours, for refusals: never refuse what could fit): Qwen's BPE tokenizer averages
# about 4-4.5 characters a token on English prose and 1-1.5 on Chinese; 8 and 4 are bounds no ordinary text beats.
MAX_ASCII_CHARS_PER_TOKEN = 8.0
MAX_OTHER_CHARS_PER_TOKEN = 4.0
# The service's largest input is the context less 2K tokens, less 4K when thinking [card: qwen-vl-max 128K context,
# max input 126K; qwen3-vl-flash 256K, max input 254K, 252K when thinking; the error "Range of input length should
# be [1, 129024]" on a 128K model]; qwenvl keeps room for the answer's max_tokens too, when larger.
CONTEXT_RESERVE_TOKENS = 2048
CONTEXT_RESERVE_THINKING_TOKENS = 4096
CONTEXT_WARN_SHARE = 0.9  # a request likely over 90% of the window is warned of (the text count is approximate)


def estimate_text_tokens(call: Call) -> int:
    """The likely tokens of the text of ``call``'s messages (every turn: system, history, the prompt):
    characters / ``CHARS_PER_TEXT_TOKEN``, approximate (no tokenizer). Raises nothing."""
    return text_tokens(call.messages)[0]


def text_tokens(messages: list[Message]) -> tuple[int, int]:
    """(likely, fewest) tokens of the messages' text (``CHARS_PER_TEXT_TOKEN``; ``MAX_ASCII_CHARS_PER_TOKEN`` and
    ``MAX_OTHER_CHARS_PER_TOKEN`` for the lower bound). Approximate: no tokenizer, the chat template's few tokens
    per turn and tool definitions left out. Raises nothing."""
    chars = other = 0
    for message in messages:
        text = message.text()
        chars += len(text)
        other += len(text) - len(text.encode("ascii", "ignore"))
    likely = math.ceil(chars / CHARS_PER_TEXT_TOKEN)
    fewest = math.ceil((chars - other) / MAX_ASCII_CHARS_PER_TOKEN + other / MAX_OTHER_CHARS_PER_TOKEN)
    return likely, fewest


def answer_room(request: Request, model: ModelInfo) -> int:
    """The tokens of the window kept for the answer: ``max_tokens``, and at least the service's reserve
    (``CONTEXT_RESERVE_TOKENS``, ``CONTEXT_RESERVE_THINKING_TOKENS`` when the model thinks). Raises nothing."""
    return max(request.max_tokens, answer_reserve(request, model))


def answer_space(call: Call, share: float = 1.0) -> int:
    """The tokens of ``share`` of ``call.model``'s context window left for the answer after its media and the likely
    count of its text (``text_tokens``): with ``share`` 1, what ``max_tokens`` can be at most for the request to fit
    (``check_context``); with ``CONTEXT_WARN_SHARE``, at most for it to fit without a warning that it is near the
    window. Negative when the input alone is over. Raises nothing."""
    total = sum(i.tokens or 0 for i in call.media)
    return math.floor(share * call.model.context_tokens) - total - text_tokens(call.history)[0]


_QUIET_CONTEXT: ContextVar[bool] = ContextVar("qwenvl_quiet_context", default=False)


@contextmanager
def quiet_context() -> Iterator[None]:
    """Within it, ``check_context`` returns its warning without logging it: for a caller that plans with a value of
    its own choosing and changes it when it comes near the window (``tasks.grounding.plan_task``), so that no
    warning is said of a default the user did not give. Raises nothing."""
    token = _QUIET_CONTEXT.set(True)
    try:
        yield
    finally:
        _QUIET_CONTEXT.reset(token)


def answer_reserve(request: Request, model: ModelInfo) -> int:
    """The service's reserve for the answer, whatever ``max_tokens`` is: ``CONTEXT_RESERVE_THINKING_TOKENS`` when
    the model thinks, else ``CONTEXT_RESERVE_TOKENS``; 0 for a local model (``ModelInfo.local_family``: no service
    keeps room, ``max_tokens`` alone does). Raises nothing."""
    if model.local_family:
        return 0
    thinking = request.enable_thinking or (request.enable_thinking is None and model.thinking_default)
    return CONTEXT_RESERVE_THINKING_TOKENS if thinking else CONTEXT_RESERVE_TOKENS


def check_context(
    items: list[PreparedItem],
    model: ModelInfo,
    request: Request | None = None,
    messages: list[Message] | None = None,
) -> list[str]:
    """Refuse a request that cannot fit the model's context window (``ModelInfo.context_tokens``), before
    anything is sent (the service would refuse it after receiving, for large media after uploading, every byte).

    Media: every kind counts (images, PDF pages, frame lists, sampled videos, in every turn); items of unknown
    size (remote URLs) count 0. Their tokens alone over the window: MediaError (exit 3), what to send fewer of.
    With ``request`` and ``messages`` (``plan`` gives them), for a model whose window is known (listed, or a
    local model's family): the text of every turn counts too (``text_tokens``), with the answer's room
    (``answer_room``). When even the fewest tokens the text can be, with the media and that room, exceed the
    window: UsageError (exit 2) saying how much text to cut. When the likely count passes ``CONTEXT_WARN_SHARE``
    of the window: a warning (returned, and logged on the ``qwenvl`` logger, which the CLI prints on stderr),
    since the text count is approximate. Returns the warnings ([] when it fits well)."""
    known = [i for i in items if i.tokens is not None]
    total = sum(i.tokens or 0 for i in known)
    if total > model.context_tokens:
        kinds: dict[str, int] = {}
        for item in known:
            kind = "video" if item.kind == "video" else "image"
            kinds[kind] = kinds.get(kind, 0) + 1
        what = " and ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in kinds.items())
        raise MediaError(
            f"{what} at this budget are about {total:,} tokens, over {model.name}'s context of "
            f"{model.context_tokens:,} tokens",
            source=known[0].document or known[0].source,
            hint=_smaller_media_hint(kinds),
        )
    if request is None or messages is None or not (model.known or model.local_family):
        return []
    likely, fewest = text_tokens(messages)
    room = answer_room(request, model)
    window = model.context_tokens
    media = f", the media {total:,}" if total else ""
    if total + fewest + room > window:
        chars = sum(len(m.text()) for m in messages)
        spare = window - total - room
        keep = max(0, int(spare * chars / likely)) if likely else 0  # at the likely rate: what should fit
        turns = " and the conversation so far" if len(messages) > 1 else ""
        earlier = chars - len(messages[-1].text())
        reserve = answer_reserve(request, model)
        if request.max_tokens > reserve and total + fewest + reserve <= window:
            # the answer's room is what leaves too little: the text fits with a smaller max_tokens
            lower = max(window - total - likely, reserve)
            hint = (
                f"Lower --max-tokens ({request.max_tokens:,}) to at most about {lower:,}"
                + (", or cut the text" if window - total - likely < reserve else "")
                + "; token counts of text are approximate (counted without a tokenizer)."
            )
        elif len(messages) > 1 and earlier > keep:  # no cut of the new message can make it fit: the history is long
            hint = (
                f"The earlier turns alone are {earlier:,} characters, more than fits: start a new conversation "
                "(/reset in the chat, or send fewer earlier messages); token counts of text are approximate."
            )
        else:
            hint = (
                f"Cut the text to under about {keep:,} characters"
                + (" (or start a new conversation: /reset in the chat)" if len(messages) > 1 else "")
                + (", or send fewer media" if total else "")
                + "; token counts of text are approximate (counted without a tokenizer)."
            )
        kept_by = "max_tokens" if model.local_family else "max_tokens or the service's reserve"
        raise UsageError(
            f"too long for {model.name}'s context of {window:,} tokens: the text{turns} is {chars:,} characters, "
            f"at least {fewest:,} token{'s' if fewest != 1 else ''} (likely about {likely:,}){media}, and {room:,} "
            f"are kept for the answer ({kept_by}); nothing was sent",
            hint=hint,
        )
    if total + likely + room > CONTEXT_WARN_SHARE * window:
        note = (
            f"the request is likely about {total + likely:,} input tokens (text approximate: {likely:,}{media}) "
            f"with {room:,} kept for the answer, near or over {model.name}'s context of {window:,}: it may be refused"
        )
        if not _QUIET_CONTEXT.get():
            log.warning("%s", note)
        return [note]
    return []


def _smaller_media_hint(kinds: Mapping[str, int]) -> str:
    """What makes media of ``kinds`` ("image", "video": counts) take fewer tokens, naming only the options that
    apply to them (``qwenvl.media.sources.OPTION_MEDIA``: ``--detail`` is the images' budget, ``--fps`` the
    video's). Raises nothing."""
    fewer = " or ".join(w for k, w in (("image", "images"), ("video", "frames")) if k in kinds)
    ways = [
        *(["--detail low"] if "image" in kinds else []),
        "--max-pixels",
        *(["a lower --fps"] if "video" in kinds else []),
    ]
    return f"Send fewer {fewer}, or a smaller budget ({', '.join(ways)})."


def check_thinking_budget(request: Request, model: ModelInfo) -> None:
    """The one rule for ``thinking_budget`` (every protocol, library and CLI): the budget bounds the model's
    thinking, and DashScope documents it only beside ``enable_thinking: true`` (reference/dashscope-api.md §3,
    the qwen3-vl-flash card: ``"enable_thinking":true,"thinking_budget":81920``). So a budget beside
    ``enable_thinking=False`` contradicts it, and a budget alone on a model that does not think by default
    (``ModelInfo.thinking_default``: the hybrid Qwen3-VL models) bounds nothing while the user may believe
    thinking is on: both are a UsageError (exit 2), nothing is sent. Thinking is never turned on by
    implication (it changes the answer, its length and the price). A thinking-only model (QVQ) takes a budget
    alone."""
    if request.thinking_budget is None:
        return
    if request.enable_thinking is False:
        raise UsageError(
            f"thinking_budget {request.thinking_budget:,} with thinking turned off (enable_thinking=False): "
            "the budget applies only while the model thinks",
            hint="Leave the budget out, or turn thinking on (--thinking / enable_thinking=True) to think within it.",
        )
    if request.enable_thinking is None and not model.thinking_default:
        raise UsageError(
            f"thinking_budget {request.thinking_budget:,} without thinking: {request.model} does not think unless "
            "asked, and the budget applies only while it thinks",
            hint="Add --thinking / enable_thinking=True to think within the budget, or leave the budget out.",
        )


def media_option_fields(request: Request) -> dict[str, str]:
    """The media options ``request`` gives that only some media read (``qwenvl.media.sources.OPTION_MEDIA``), by
    field name, each named as the library's user knows it: ``pages``, ``fps``, ``video_as`` other than "frames",
    ``detail`` other than "auto", ``vl_high_resolution_images`` (either value, given), ``prepare=False``. Raises
    nothing."""
    return {name: name for name in OPTION_MEDIA if option_given(name, getattr(request, name))}


def request_kinds(request: Request) -> frozenset[str]:
    """The kinds of media of ``request``'s new turn (``qwenvl.media.sources.ref_kinds``): its images (and PDFs),
    and its video (a file or URL, or a frame list: "frames"). Raises nothing."""
    kinds = set(ref_kinds(request.image_list()))
    video = request.video
    if isinstance(video, list):
        kinds |= ref_kinds(video, frames=True) if len(video) > 1 else {"frames"}
    elif video is not None:
        video_kinds = ref_kinds([video])
        kinds |= video_kinds if video_kinds != {"image"} else {"video"}  # given as the video: sampled as one
    return frozenset(kinds)


def check_media_options(request: Request) -> None:
    """Options that only some media read, given where the request's new turn has none of them: UsageError (in the
    library's words: "vl_high_resolution_images applies to images and PDFs only") rather than silently nothing
    (``qwenvl.media.sources.check_options_apply``, the one rule, and ``OPTION_MEDIA``, what reads what). A remote
    URL that is not a known video or PDF by its path might be any kind. The media of ``messages`` (earlier turns,
    prepared when they were sent) are not the request's. Every verb, batch line, chat turn and library call is
    planned through ``plan``."""
    given = media_option_fields(request)
    if given and (request.image_list() or request.video is not None):
        check_options_apply(given, request_kinds(request))
    elif given:  # no media in the new turn: those of a PDF or a video are refused, those of images are left
        refs = request.image_list()
        check_pages_apply(request.pages, refs, "pages")
        check_video_options_apply([n for n in ("fps", "video_as") if n in given], refs)


def check_video_ability(model: ModelInfo, what: str = "a video") -> None:
    """The one rule for a model's video ability (``ModelInfo.video``, the model table: qwen-vl-ocr takes images
    only): ``what`` (a video, a frame list, "clip.mp4") given to a listed model that takes no video is a UsageError
    (exit 2) before anything is sent or priced, rather than a paid request the service refuses or misreads. Used
    by ``plan`` (every verb, batch item, chat turn and library call) and ``estimate_files`` (``tokens``)."""
    if model.known and not model.video:
        raise UsageError(
            f"{model.name} does not take video ({what} given): it reads images and PDF pages only",
            hint="Use a model that takes video, e.g. qwen3-vl-plus (`qwenvl models` lists each one's abilities), "
            "or leave out the video.",
        )


def request_video(request: Request) -> str | None:
    """What of ``request`` is a video, for a message: its video (or frame list), or one in an earlier turn; None
    when it has none. Raises nothing."""
    if request.video is not None:
        return (
            "a frame list" if isinstance(request.video, list) else first_names([request.video])
        )  # a data: URL's label
    if any(isinstance(p, VideoPart) for m in request.messages for p in m.media()):
        return "a video in an earlier turn"
    return None


def check_ocr_options(model: ModelInfo, given: str = "ocr_options (--param / extra)", *, plural: bool = False) -> None:
    """Refuse ``ocr_options`` (a built-in OCR task: ``table_parsing``...) for a model that does not read them
    (``ModelInfo.reads_ocr_options``: the qwen-vl-ocr models only): UsageError (exit 2, nothing sent), as an option
    that does not apply is refused, never sent to be ignored. ``given`` names where they came from (``ocr --task``,
    ``--ocr-options``: ``tasks.ocr.model_ocr_options``; else a request's ``extra``: ``plan``), ``plural`` when it
    names two. The one rule for the ocr verb, ``--param``, the library and ``qwenvl serve``."""
    if model.reads_ocr_options:
        return
    them = "them" if plural else "it"
    raise UsageError(
        f"{given} {'are' if plural else 'is'} read only by the qwen-vl-ocr models; {model.name} ({model.family}) "
        f"would ignore {them}: nothing was sent",
        hint=f"Add --model qwen-vl-ocr for a built-in task, or leave out {given.partition(' (the service')[0]}. A "
        "general model reads a table as asked (--format markdown).",
    )


def check_model_name(name: str, protocol: str) -> None:
    """The one check of a model's name before anything is sent: on DashScope's protocols (``PAID_PROTOCOLS``), a
    name that looks like a misspelling of a listed one or differs from it only in case or whitespace
    (``qwenvl.models.typo_error``: did you mean ...?) raises its UsageError unless ``$QWENVL_UNLISTED_MODELS``
    names it. Used by ``check_model_rules`` (every request) and ``Batch.check`` (a batch's ``model``, refused
    before anything is written). A name that names no Qwen-VL family (``qwenvl.models.no_family_error``: ``qwen-max``,
    ``nonsense-model``) is refused too, whatever that variable says: there are no rules to send it by."""
    if protocol in PAID_PROTOCOLS:
        refusal = typo_error(name, allowed=qenv.unlisted_models()) or no_family_error(name)
        if refusal is not None:
            raise refusal


def check_model_rules(request: Request, protocol: str, model: ModelInfo | None = None, *, served: bool = False) -> None:
    """The model's rules that do not depend on the media: UsageError for a thinking budget without thinking
    (``check_thinking_budget``), thinking or tools on a model without them,
    or ``max_tokens`` above a listed model's ``max_output_tokens`` (DashScope's protocols; a local server's limit
    is its own); on DashScope's protocols, a model name that looks like a misspelling of a listed one
    (``qwenvl.models.typo_error``: did you mean ...?) unless ``$QWENVL_UNLISTED_MODELS`` names it.
    ``model``, ``served``: as for ``plan`` (default: ``model_info(request.model)``; False)."""
    model = model or model_info(request.model)
    if not model.known and not model.local_family and not served:  # a misspelt model name: refused, not sent to
        # fail (a local model's name is its server's: a qwenvl serve in front of one lists it, ``Client.served_name``)
        check_model_name(request.model, protocol)
    check_thinking_budget(request, model)
    if request.enable_thinking and not model.thinking and (model.known or model.local_family):
        raise UsageError(
            f"{request.model} does not support thinking (enable_thinking): it is a {model.family} model",
            hint="Use a Qwen3-VL model (qwen3-vl-plus on DashScope), or leave out --thinking.",
        )
    if model.known and protocol in PAID_PROTOCOLS and request.max_tokens > model.max_output_tokens:
        raise UsageError(
            f"max_tokens {request.max_tokens:,} is above {request.model}'s limit of {model.max_output_tokens:,} "
            "output tokens",
            hint=f"Give --max-tokens / max_tokens of at most {model.max_output_tokens:,} (see `qwenvl models`).",
        )
    if request.tools and model.known and not model.tools:
        raise UsageError(
            f"{request.model} does not support tool calling (tools)", hint="Use a Qwen3-VL model such as qwen3-vl-plus."
        )


_NOTED: set[tuple[str, str]] = set()  # (protocol, key): each unknown parameter is noted once per process
_CLOSE = 0.8  # difflib ratio at or above which a key is taken for a misspelling (temprature, top-p, topk, maxtokens)


def _spelling(key: str) -> str:
    return key.strip().lower().replace("-", "_").replace(" ", "_")


# The pass-through parameters whose value is a number (DashScope's API reference: ``dashscope-api.md``), checked
# as such by ``check_extra`` ("nan", "inf" and quoted numbers were sent as text and refused by the service).
NUMERIC_PARAMS = frozenset({"repetition_penalty", "presence_penalty", "frequency_penalty", "top_logprobs", "n"})


def check_extra(extra: Mapping[str, Any], protocol: str) -> list[str]:
    """Check the names of pass-through parameters (``Request.extra``, the CLI's ``--param``) for ``protocol``.

    A key that ``PASS_THROUGH_PARAMS`` (``qwenvl.types``, with its sources) lists for the protocol passes. A key
    that is not listed but is spelled like a listed one, a Request field or a wire key qwenvl builds (the same
    name in other case or with dashes, or a difflib ratio of 0.8 or more: ``temprature``, ``top-p``,
    ``presence_penality``) is a misspelling the service would ignore while the request is paid: UsageError whose
    hint says ``Did you mean ...?``. ``n`` other than 1 is refused too (qwenvl reads one answer, the service
    would bill every one). Any other key is sent as given: the returned notes (also logged once per process and
    key as a warning on the ``qwenvl`` logger, which the CLI prints on stderr) say that qwenvl does not know
    it, and name the other DashScope protocol when it is one of that protocol's. The plain ``openai`` protocol
    (local engines, each with parameters of its own) is checked only against Request fields and built keys, and
    gets no notes. Raises UsageError as said; nothing is sent."""
    known = PASS_THROUGH_PARAMS.get(protocol)
    names = set(Request.model_fields) | set(BUILT_WIRE_KEYS) | (known or set())
    where = f" of the {protocol} protocol" if known is not None else " qwenvl takes"
    notes = []
    for key in extra:
        if key == "n" or key in names:  # listed; or a Request field or built key, which Request refused already
            continue
        elsewhere = sorted(name for name, listed in PASS_THROUGH_PARAMS.items() if key in listed)
        spelled = _spelling(key)
        near = [n for n in sorted(names) if _spelling(n) == spelled] or [
            n for n in [nearest(spelled, sorted(names), cutoff=_CLOSE)] if n
        ]
        if near and not elsewhere:
            hint = f"Did you mean '{near[0]}'?"
            if near[0] in Request.model_fields or near[0] in BUILT_WIRE_KEYS:
                hint += " " + reserved_extra_hint([near[0]])
            raise UsageError(
                f"'{key}' is not a parameter{where} (extra, --param): it would be ignored; nothing was sent",
                hint=hint,
            )
        if known is None:
            continue
        also = f" (it is one of the {' and '.join(elsewhere)} protocol's)" if elsewhere else ""
        note = (
            f"'{key}' is not a parameter qwenvl knows for the {protocol} protocol{also}: sent as given; the service "
            "may ignore it"
        )
        notes.append(note)
        if (protocol, key) not in _NOTED:
            _NOTED.add((protocol, key))
            log.warning("%s", note)
    for key in sorted(NUMERIC_PARAMS & set(extra)):  # a number the service would refuse after the upload
        value = extra[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UsageError(
                f"{key}={value!r} is not a number (extra, --param): the service takes a number; nothing was sent",
                hint=f'Give a number, e.g. --param {key}=1.1 (a quoted "1" is text).',
            )
    if "n" in extra and extra["n"] != 1:
        raise UsageError(
            f"n={extra['n']!r}: qwenvl reads one answer per request, and the service would bill every one",
            hint="Leave out n (or give n=1); send the request again for another answer.",
        )
    return notes


def plan(
    request: Request,
    protocol: str,
    *,
    estimate_only: bool = False,
    model: ModelInfo | None = None,
    media_form: str = "data-url",
    prepared: PreparedCache | None = None,
    served: bool = False,
) -> Call:
    """Validate, build the messages and prepare every media item. Raises before anything is sent: UsageError for
    thinking or tools on a model without them, or ``max_tokens`` above a listed model's ``max_output_tokens``
    (DashScope's protocols; a local server's limit is its own), or a misspelt ``extra`` name (``check_extra``,
    which also warns of names it does not know); MediaError for media that cannot be sent.

    ``estimate_only``: the media are checked and their sizes and tokens computed from their headers, without
    being prepared (see ``qwenvl.media.prepare``); the Call is for estimates and can never be sent.
    ``model``: the model's rules when the backend knows them better than the name does (a local model);
    ``media_form``: what the backend takes, ``data-url`` or ``memory`` (prepared images kept decoded);
    ``prepared``: media prepared before are taken from it and what is prepared is kept in it (a client's own,
    ``qwenvl.media.prepare.PreparedCache``: a conversation's earlier turns are not prepared again);
    ``served``: the model's name is the one a server that is not DashScope's own lists (``Client.served_name``),
    not checked against the table's spellings (``check_model_name``)."""
    model = model or model_info(request.model)
    check_model_rules(request, protocol, model, served=served)
    video = request_video(request)
    if video is not None:
        check_video_ability(model, video)
    check_extra(request.extra, protocol)
    if "ocr_options" in request.extra:  # --param, the library, a served request: as ocr --task is refused
        check_ocr_options(model)
    check_media_options(request)
    history = build_messages(request, model)
    options = media_options(request, model, protocol, estimate_only=estimate_only)
    if media_form == "memory":
        options = replace(options, keep_pixels=True)
    media = prepare_messages(history, options, prepared)
    check_context(media.items, model, request, history)
    return Call(
        request=request,
        model=model,
        messages=media.messages,
        history=history,
        params=generation_params(request, model),
        media=media.items,
        schema=request.schema,
        estimate_only=estimate_only,
    )


# Request fields that say how a request travels, not what it asks: a batch rerun may change them freely.
TRANSPORT_FIELDS = frozenset({"max_retries", "retry_backoff_s", "timeout_s", "base_url", "stream"})


def question(request: Request, model: ModelInfo | None = None) -> dict[str, Any]:
    """What ``request`` asks the model, by Request field name: two requests with equal questions send the service
    the same request (the model as named, the messages as built, the generation parameters, the media budgets),
    so a batch rerun reuses the answers of an equal one (``qwenvl.batch.journal.fingerprint``) and names the
    fields of an unequal one. Nothing is read or prepared: the media are their references.

    Every field is at its effective value (a default given explicitly, ``max_tokens=512``, asks the same as
    leaving it out), the transport settings (``TRANSPORT_FIELDS``) are left out, and so is what asks nothing:

    - media options without the media they apply to: ``fps`` and ``video_as`` without a video; ``min_pixels``
      and ``max_pixels`` without an image or a video; ``detail``, ``pages`` and ``fetch_urls`` without an image;
      ``prepare`` and ``upload`` without either. ``fps`` at ``VIDEO_FPS`` (2, the service's and the sampler's default)
      is left out.
    - ``system`` when the history begins with its own system turn (it is not sent); an assistant turn's
      ``reasoning`` (never sent back); ``json_mode`` beside a ``schema`` (the same instruction and
      ``response_format``), ``repair`` without structured output; ``vl_high_resolution_images`` off (the
      service's default; ``detail="high"`` is it on); a ``stop`` string is the one-string list.
    - with ``model`` (a listed DashScope model's rules; None for a local one, or a name the table does not
      list, whose defaults are not facts): ``enable_thinking`` at the model's own default
      (``ModelInfo.thinking_default``); the images' pixel bounds as the service applies them and as they are
      prepared (``media.resize.service_budget``, ``image_budget``): each equal to the model's default is left
      out (``max_pixels`` under high resolution, which ignores it), and ``detail`` stays only when it lowers
      what is prepared below that. Images in the history (bounds of their own) keep the fields as given.

    The model's name is as given: a ``-latest`` alias or a dated snapshot is another name to the service, so
    another question. Raises nothing."""
    history_media = [p for m in request.messages for p in m.media()]
    refs = request.image_list()
    has_images = bool(refs) or any(isinstance(p, ImagePart) for p in history_media)
    has_video = request.video is not None or any(isinstance(p, VideoPart) for p in history_media)
    q: dict[str, Any] = {"model": request.model}
    if request.prompt is not None:
        q["prompt"] = request.prompt
    if request.system is not None and not (request.messages and request.messages[0].role == "system"):
        q["system"] = request.system
    if request.messages:
        q["messages"] = [m.model_dump(mode="json", exclude_none=True, exclude={"reasoning"}) for m in request.messages]
    if refs:
        q["image"] = refs
    if request.video is not None:
        q["video"] = request.video
    for name in GENERATION_FIELDS:
        value = getattr(request, name)
        if value is not None:
            q[name] = [value] if name == "stop" and isinstance(value, str) else value
    if model is not None and model.known and request.enable_thinking == model.thinking_default:
        q.pop("enable_thinking", None)
    if request.schema is not None:
        q["schema"] = request.schema
    elif request.json_mode:
        q["json_mode"] = True
    if "schema" in q or "json_mode" in q:
        q["repair"] = request.repair
    high = high_resolution(request)
    if high:
        q["vl_high_resolution_images"] = True
    if request.extra:
        q["extra"] = request.extra
    if has_images or has_video:
        q["prepare"], q["upload"] = request.prepare, request.upload
    if has_video:
        q["video_as"] = request.video_as
        if request.fps is not None and request.fps != VIDEO_FPS:
            q["fps"] = request.fps
        q.update(video_pixels(request))  # they bound the frames too
    if has_images:
        q.update(_image_budget(request, model, history_images=any(isinstance(p, ImagePart) for p in history_media)))
        if request.pages is not None:
            q["pages"] = request.pages
        if request.fetch_urls:
            q["fetch_urls"] = True
    return q


def _image_budget(request: Request, model: ModelInfo | None, *, history_images: bool) -> dict[str, Any]:
    """``question``'s pixel fields: the bounds the service applies to the new turn's images and ``detail`` where
    it lowers what is prepared, each left out at the model's default; as given without a listed model, with
    images in the history, or for bounds the plan refuses."""
    given = {"min_pixels": request.min_pixels, "max_pixels": request.max_pixels, "detail": request.detail}
    raw = {k: v for k, v in given.items() if v is not None and v != "auto"}
    if model is None or not model.known or history_images:
        return raw
    try:
        options = media_options(request, model, "compat")
        part = image_pixels(request, model)
        lo, hi = service_budget(options, **part)
        prepared = image_budget(options, **part)[1] if request.prepare else hi
    except UsageError:  # the plan refuses these bounds: the item fails before anything is sent
        return raw
    out: dict[str, Any] = {}
    if lo != model.min_pixels:
        out["min_pixels"] = lo
    if hi != (model.high_res_max_pixels if options.vl_high_resolution_images else model.default_max_pixels):
        out["max_pixels"] = hi
    if prepared != hi:
        out["detail"] = request.detail
    return out
