"""From a Request to a Call: the message list, the generation parameters and the prepared media.

Everything that both protocols (and every backend) share is decided here once; the protocol modules
only place these values where their wire format wants them.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from qwenvl import structured
from qwenvl._constants import FETCH_TIMEOUT_MAX_S
from qwenvl.errors import MediaError, UsageError
from qwenvl.media import MediaOptions, PreparedItem, prepare_messages
from qwenvl.models import PAID_PROTOCOLS, ModelInfo, model_info
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

    Made by ``Client.plan`` rather than by hand; building one raises nothing (the dataclass checks nothing)."""

    request: Request
    model: ModelInfo
    messages: list[Message]  # ready for the wire: every media reference prepared
    history: list[Message]  # the same turns with the user's own references, for Response.messages
    params: dict[str, Any]  # generation parameters, protocol-neutral names
    media: list[PreparedItem] = field(default_factory=list)
    schema: dict[str, Any] | None = None
    estimate_only: bool = False  # planned for an estimate: media are placeholders; never sent (ensure_sendable)


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
    ``vl_high_resolution_images`` on, and a ``max_pixels`` below the model's minimum image
    (``ModelInfo.min_pixels``, 4 tokens) when ``min_pixels`` is not given (an explicit min above max is the
    Request's own check). ``max_pixels`` is ignored with high resolution, as the service does."""
    if request.detail == "low" and request.vl_high_resolution_images:
        raise UsageError(
            "--detail low and --high-res contradict each other (a smaller budget, and the high-resolution one)",
            hint="Keep one: --detail low for fewer tokens, or --high-res for up to 16384 tokens per image.",
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


def build_messages(request: Request, model: ModelInfo | None = None) -> list[Message]:
    """System prompt, history, then the new user turn (media first, then the prompt, as the skill does)."""
    model = model or model_info(request.model)
    messages: list[Message] = []
    if request.system and not (request.messages and request.messages[0].role == "system"):
        messages.append(Message(role="system", content=request.system))
    messages.extend(request.messages)
    if request.prompt is not None:
        parts: list[TextPart | ImagePart | VideoPart] = []
        max_pixels = request.max_pixels
        if max_pixels is None and request.detail == "low" and not high_resolution(request):
            max_pixels = model.low_detail_tokens * model.pixels_per_token  # so URLs get the low budget too
        pixels: dict[str, Any] = {
            k: v for k, v in (("min_pixels", request.min_pixels), ("max_pixels", max_pixels)) if v is not None
        }
        for ref in request.image_list():
            parts.append(ImagePart(image=ref, **pixels))
        if request.video is not None:
            parts.append(VideoPart(video=request.video, fps=request.fps))
        prompt = request.prompt
        note = structured.instruction(json_mode=request.json_mode, schema=request.schema)
        if note:
            prompt = f"{prompt}\n\n{note}"
        parts.append(TextPart(text=prompt))
        messages.append(Message(role="user", content=parts))
    elif not messages or messages[-1].role not in ("user", "tool"):
        raise UsageError("the message history must end with a user (or tool) turn when no prompt is given")
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


def check_context(items: list[PreparedItem], model: ModelInfo) -> None:
    """Refuse media whose tokens alone exceed the model's context window (``ModelInfo.context_tokens``).

    Every kind counts: images, PDF pages, frame lists and sampled videos, in every turn of the history; items of
    unknown size (remote URLs) count 0, so this is a lower bound and never refuses what could fit. The service
    would reject such a request after receiving (and, for large media, after the upload of) every byte.
    Raises MediaError (CLI exit 3) before anything is sent."""
    known = [i for i in items if i.tokens is not None]
    total = sum(i.tokens or 0 for i in known)
    if total <= model.context_tokens:
        return
    kinds: dict[str, int] = {}
    for item in known:
        kind = "video" if item.kind == "video" else "image"
        kinds[kind] = kinds.get(kind, 0) + 1
    what = " and ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in kinds.items())
    raise MediaError(
        f"{what} at this budget are about {total:,} tokens, over {model.name}'s context of "
        f"{model.context_tokens:,} tokens",
        source=known[0].source,
        hint="Send fewer images or frames, or a smaller budget (--detail low, --max-pixels, a lower --fps).",
    )


def check_model_rules(request: Request, protocol: str, model: ModelInfo | None = None) -> None:
    """The model's rules that do not depend on the media: UsageError for thinking or tools on a model without them,
    or ``max_tokens`` above a listed model's ``max_output_tokens`` (DashScope's protocols; a local server's limit
    is its own). ``model``: as for ``plan`` (default: ``model_info(request.model)``)."""
    model = model or model_info(request.model)
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
        near = [n for n in sorted(names) if _spelling(n) == spelled] or difflib.get_close_matches(
            spelled, sorted(names), n=1, cutoff=_CLOSE
        )
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
) -> Call:
    """Validate, build the messages and prepare every media item. Raises before anything is sent: UsageError for
    thinking or tools on a model without them, or ``max_tokens`` above a listed model's ``max_output_tokens``
    (DashScope's protocols; a local server's limit is its own), or a misspelt ``extra`` name (``check_extra``,
    which also warns of names it does not know); MediaError for media that cannot be sent.

    ``estimate_only``: the media are checked and their sizes and tokens computed from their headers, without
    being prepared (see ``qwenvl.media.prepare``); the Call is for estimates and can never be sent.
    ``model``: the model's rules when the backend knows them better than the name does (a local model);
    ``media_form``: what the backend takes, ``data-url`` or ``memory`` (prepared images kept decoded)."""
    model = model or model_info(request.model)
    check_model_rules(request, protocol, model)
    check_extra(request.extra, protocol)
    history = build_messages(request, model)
    options = media_options(request, model, protocol, estimate_only=estimate_only)
    if media_form == "memory":
        options = replace(options, keep_pixels=True)
    prepared = prepare_messages(history, options)
    check_context(prepared.items, model)
    return Call(
        request=request,
        model=model,
        messages=prepared.messages,
        history=history,
        params=generation_params(request, model),
        media=prepared.items,
        schema=request.schema,
        estimate_only=estimate_only,
    )
