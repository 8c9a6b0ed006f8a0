"""What files cost before anything is sent: the sizes, tokens and price of each image, video frame list and PDF
page as it would be sent. The one home of the estimate behind ``qwenvl tokens`` and the MCP ``estimate`` tool.

Each file is checked and prepared exactly as a request would prepare it (``qwenvl.media.prepare``), so sizes,
formats, bytes and token counts are those of the request that would be sent; ``fast=True`` works from the headers
instead (estimate-only preparation: nothing decoded, encoded or rendered), giving the same sizes and tokens
without the bytes. The cost covers the media's input tokens only (the prompt and the answer come on top), in the
region's currency (¥ in Beijing, $ in Singapore and Virginia), every item at the price tier of the files' total
(one request carrying them all; ``qwenvl.models.price_for``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from qwenvl.backends.family import family_model
from qwenvl.backends.oss import storage_refusal
from qwenvl.config import UNKNOWN_REGION_HINT
from qwenvl.errors import QwenVLError, UsageError
from qwenvl.interfaces import SupportsEstimate
from qwenvl.media.prepare import PreparedItem, prepare_messages
from qwenvl.media.sources import check_options_apply, classify, first_names, media_kind, ref_kinds
from qwenvl.models import currency_of, media_costs, model_info
from qwenvl.plan import check_model_name, check_video_ability, media_option_fields, media_options, video_pixels
from qwenvl.types import ImagePart, Message, TextPart, VideoPart


def estimate_files(
    files: Sequence[str | os.PathLike[str]],
    *,
    fast: bool = False,
    region: str | None = None,
    client: SupportsEstimate | None = None,
    family: str | None = None,
    pages_option: str = "pages",
    fps_option: str = "fps",
    option_names: Mapping[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Tokens and cost of ``files`` for a request with ``fields`` (Request fields: ``model``, ``detail``,
    ``vl_high_resolution_images``, ``min_pixels``, ``max_pixels``, ``fps``, ``pages``, ``prepare``); nothing is
    sent.

    ``files`` are local files (``str`` or ``os.PathLike``), folders (walked for media as ``qwenvl batch`` does),
    globs, https/file/data URLs. Returns ``{"model", "factor", "currency", "local", "price_tier", "items": [...],
    "total": {"tokens", "cost", "items", "unknown", "failed"}, "warnings": [...]}`` (``warnings``: the items are
    over the model's context as one request; they are counted all the same); with a local ``client`` (a local model
    has no price: ``qwenvl.models.LOCAL``) ``local`` is True and ``currency`` and every ``cost`` None. An item is
    ``{"source", "kind", "width", "height", "frames", "mime", "bytes_sent", "tokens", "tokens_exact", "cost",
    "notes"}`` (``tokens_exact`` False where the service decides the count: a video sent whole,
    ``video_as="file"``, which it samples itself; a PDF gives one item per page, with its 1-based ``"page"`` number
    in the document; ``bytes_sent`` null in estimate-only mode (``fast``: nothing is
    encoded, so it is not known), 0 for a remote URL (nothing inline); a remote URL ``tokens: None``: the service
    fetches and sizes it), or ``{"source", "error", "hint"}`` for a file
    that cannot be sent (the others go on). The model comes from ``fields``, else ``client``'s default
    (``$QWENVL_MODEL``), else qwen3-vl-plus; a local ``client`` (``--backend openai|transformers``) gives its model's
    own rules, and ``family`` (qwen2.5-vl, qwen3-vl) the rules of a model whose name does not say. ``client`` is a
    ``Client`` or anything with the members of ``qwenvl.interfaces.SupportsEstimate``; ``region`` picks the currency
    (CNY in Beijing, USD elsewhere; ``qwenvl.models``). Tokens follow the billing page's rules
    (``qwenvl.media.tokens``); costs are in the currency's units, rounded to 10 significant digits.

    Raises ``UsageError`` for invalid options, an unknown region, or ``pages`` when no file counted is a PDF
    (``qwenvl.media.sources.check_options_apply``, which names it ``pages_option``: ``"--pages"`` on the CLI), or
    ``fps`` when none is a video (naming ``fps_option``), or any other option no file counted reads
    (``plan.media_option_fields``: ``detail``, ``prepare``...; named as ``option_names`` says, by field);
    ``MediaError`` (exit 3) when ``files`` name no media file (an empty folder: ``batch.inputs.no_media_found``),
    a missing folder or a glob that matches nothing (``batch.inputs.expand_inputs``); a file that cannot be sent
    is a row with ``error`` instead."""
    from qwenvl.batch.inputs import expand_inputs, no_media_found
    from qwenvl.client import Client

    fields = {k: v for k, v in fields.items() if v is not None}
    try:
        client = client or Client(region=region)
    except UsageError as exc:  # its hint names --base-url, which an estimate has no use for
        hint = f"{UNKNOWN_REGION_HINT}." if exc.field == "region" else None
        raise UsageError(exc.message, hint=hint, field=exc.field) from None
    request = client.request(prompt="tokens", **fields)
    # a model a server in front of a local engine serves (``Client.served_model``): its family's rules, no price
    # a name such a server lists is its own (``Client.served_name``; one it does not serve is refused there)
    own = False if family else getattr(client, "served_name", lambda name: False)(request.model)
    served = None if family else getattr(client, "served_model", lambda name: None)(request.model)
    by_backend = bool(getattr(client, "local_backend", getattr(client, "is_local", False)))
    # no price unless the backend's server says the model is paid for (``Client.is_local``: a qwenvl serve
    # forwarding to DashScope); a backend's model is never free for its address alone
    local = served is not None or (by_backend and bool(getattr(client, "is_local", True)))
    if served is not None:
        info = served
    elif by_backend:  # the local backend knows its model (and may adapt the budget)
        info = client.resolve_model(request.model if "model" in fields else None)
        if hasattr(client.backend, "adapt"):
            request = client.backend.adapt(request)
    else:
        info = family_model(request.model, family) if family else model_info(request.model)
        if not (family or info.known or own):  # a misspelt model, or one of no family: its estimate would be wrong
            check_model_name(request.model, getattr(client, "protocol", "compat"))
    # every file counted, whatever one request could hold: a PDF over the context is said below, not refused
    options = replace(media_options(request, info, "native", estimate_only=fast), context_check=False)
    refs = expand_inputs(list(files))
    if not refs:
        raise no_media_found([os.fspath(f) for f in files])
    names = {"pages": pages_option, "fps": fps_option, **(option_names or {})}
    given = {name: names.get(name, name) for name in media_option_fields(request)}
    check_options_apply(given, ref_kinds(refs))  # what it counted: e.g. no PDF, no pages to pick
    video = next((ref for ref in refs if media_kind(ref) == "video"), None)
    if video is not None:  # a model that takes no video: nothing to price
        check_video_ability(info, first_names([video]))
    if not (by_backend or getattr(client, "is_local", False)):  # what sending would refuse whatever the sizes
        whole = request.video_as == "file" and any(media_kind(r) == "video" and not classify(r).is_remote for r in refs)
        refusal = storage_refusal(
            request.upload, "native", region or client.region, whole_video=whole, local_items=False
        )  # counted as the native protocol sends it (a video whole: through temporary storage)
        if refusal is not None:
            raise refusal

    rows: list[dict[str, Any]] = []
    failed = 0
    for ref in refs:
        try:
            part = _part(ref, video_pixels(request))
            prepared = prepare_messages([Message(role="user", content=[part, TextPart(text="?")])], options)
        except QwenVLError as exc:  # this file's row; the others go on
            failed += 1
            # as written (in the CLI's flags, as the hint): each surface words both its way (tokens, MCP)
            rows.append({"source": ref, "error": exc.as_written(), "hint": exc.raw_hint})
            continue
        rows.extend(_row(ref, item) for item in prepared.items)

    counted = [r for r in rows if "error" not in r]
    known = [r["tokens"] for r in counted if r["tokens"] is not None]
    total_tokens = sum(known)
    price, costs, total_cost = media_costs(info, [r["tokens"] for r in counted], region=region or client.region)
    if local:
        price, costs, total_cost = None, [None] * len(counted), None
    for row, cost in zip(counted, costs, strict=True):
        row["cost"] = cost
    warnings = []
    if total_tokens > info.context_tokens:
        warnings.append(
            f"the {len(counted):,} items are about {total_tokens:,} tokens, over {info.name}'s context of "
            f"{info.context_tokens:,}: they cannot be sent as one request (`qwenvl ocr` sends a PDF one page per "
            "request: `qwenvl ocr FILE --dry-run` prices it; ask about fewer pages with --pages)"
        )
    return {
        "model": info.name,
        "factor": info.factor,
        "currency": None if local else currency_of(region or client.region),
        "local": local,
        "price_tier": price.tier_label if price else None,
        "items": rows,
        "total": {
            "tokens": total_tokens,
            "cost": total_cost,
            "items": len(counted),
            "unknown": len(counted) - len(known),
            "failed": failed,
        },
        "warnings": warnings,
    }


def _part(ref: str, pixels: dict[str, int]) -> ImagePart | VideoPart:
    """A video part for a video (``media_kind``) with the request's frame bounds ``pixels``
    (``plan.video_pixels``), else an image part (PDFs are expanded into pages)."""
    if media_kind(ref) == "video":
        return VideoPart(video=ref, min_pixels=pixels.get("min_pixels"), max_pixels=pixels.get("max_pixels"))
    return ImagePart(image=ref)


def _row(ref: str, item: PreparedItem) -> dict[str, Any]:
    frames = len(item.sent) if isinstance(item.sent, list) else None
    return {
        "source": ref,
        **({"page": item.page} if item.page is not None else {}),
        "kind": item.kind,
        "width": item.width,
        "height": item.height,
        "frames": frames,
        "mime": item.mime,
        "bytes_sent": None if item.estimate else item.bytes_sent,  # estimate-only: nothing encoded, not computed
        "tokens": item.tokens,
        "tokens_exact": item.tokens is not None and item.tokens_exact,
        "cost": None,
        "notes": list(item.notes),
    }
