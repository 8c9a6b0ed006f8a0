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
from collections.abc import Sequence
from typing import Any

from qwenvl.errors import UsageError
from qwenvl.media.prepare import PreparedItem, prepare_messages
from qwenvl.media.sources import classify, read_bytes, sniff
from qwenvl.models import DEFAULT_MODEL, currency_of, model_info, price_for
from qwenvl.plan import media_options
from qwenvl.types import ImagePart, Message, Request, TextPart, VideoPart


def estimate_files(files: Sequence[str], *, model: str | None = None, detail: str | None = None,
                   vl_high_resolution_images: bool | None = None, min_pixels: int | None = None,
                   max_pixels: int | None = None, fps: float | None = None, pages: str | None = None,
                   prepare: bool = True, fast: bool = False, region: str | None = None) -> dict[str, Any]:
    """Tokens and cost of ``files`` (local paths, https/file/data URLs) for ``model``; nothing is sent.

    Returns ``{"model", "factor", "currency", "price_tier", "items": [...], "total": {"tokens", "cost", "items",
    "unknown"}}``;
    an item is ``{"source", "kind", "width", "height", "frames", "mime", "bytes_sent", "tokens", "cost", "notes"}``
    (a PDF gives one item per page, a remote URL ``tokens: None``: the service fetches and sizes it).
    ``model`` defaults to ``$QWENVL_MODEL``, then qwen3-vl-plus. Raises ``UsageError`` for invalid options and
    ``MediaError`` for a file that cannot be sent.
    """
    model_name = model or os.environ.get("QWENVL_MODEL") or DEFAULT_MODEL
    info = model_info(model_name)
    try:
        request = Request(prompt="tokens", model=model_name, detail=detail or "auto",
                          vl_high_resolution_images=vl_high_resolution_images, min_pixels=min_pixels,
                          max_pixels=max_pixels, fps=fps, pages=pages, prepare=prepare)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise UsageError(str(exc).splitlines()[-1] if str(exc) else "invalid options") from None
    options = media_options(request, info, "native", estimate_only=fast)

    rows: list[dict[str, Any]] = []
    for ref in files:
        part = _part(ref)
        prepared = prepare_messages([Message(role="user", content=[part, TextPart(text="?")])], options)
        items = prepared.items
        for index, item in enumerate(items, 1):
            label = ref if len(items) == 1 else f"{ref} [{index}/{len(items)}]"
            rows.append(_row(label, item))

    known = [r["tokens"] for r in rows if r["tokens"] is not None]
    total_tokens = sum(known)
    price = price_for(info, total_tokens, region=region)  # the tier of the whole request
    for row in rows:
        row["cost"] = price.cost(row["tokens"]) if price and row["tokens"] is not None else None
    return {"model": info.name, "factor": info.factor, "currency": currency_of(region),
            "price_tier": price.tier_label if price else None, "items": rows,
            "total": {"tokens": total_tokens, "cost": price.cost(total_tokens) if price else None,
                      "items": len(rows), "unknown": len(rows) - len(known)}}


def _part(ref: str) -> ImagePart | VideoPart:
    """A video part when the file's bytes say video, else an image part (PDFs are expanded into pages)."""
    source = classify(ref)
    if source.kind in ("file", "data"):
        head = _head(source)
        if (sniff(head) or "").startswith("video/"):
            return VideoPart(video=ref)
    return ImagePart(image=ref)


def _head(source: Any) -> bytes:
    if source.kind == "file" and source.path is not None:
        try:
            with source.path.open("rb") as fh:
                return fh.read(4096)
        except OSError:
            return b""  # prepare_messages reports it
    return read_bytes(source)[:4096]


def _row(label: str, item: PreparedItem) -> dict[str, Any]:
    frames = len(item.sent) if isinstance(item.sent, list) else None
    return {
        "source": label, "kind": item.kind, "width": item.width, "height": item.height, "frames": frames,
        "mime": item.mime, "bytes_sent": item.bytes_sent, "tokens": item.tokens, "cost": None,
        "notes": list(item.notes),
    }
