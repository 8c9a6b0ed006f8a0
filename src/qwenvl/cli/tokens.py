"""`qwenvl tokens FILE...`: what each image, video or PDF costs in tokens and money, sending nothing.

Each file is checked and prepared exactly as `ask` would prepare it (``qwenvl.media.prepare``), so the sizes,
formats, bytes and token counts are those of the request that would be sent. ``--fast`` works from the headers
instead (estimate-only mode: nothing decoded, encoded or rendered): the same sizes and tokens, without the
bytes ("-"), and the likely format for images other than JPEG. The cost covers the media's input tokens only:
the prompt and the answer come on top.
"""

from __future__ import annotations

import os
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from qwenvl.backends.family import family_model
from qwenvl.cli.common import make_client, out_console, pass_opts, print_json
from qwenvl.config import BACKENDS, ENGINES, FAMILIES
from qwenvl.errors import UsageError
from qwenvl.media.prepare import PreparedItem, prepare_messages
from qwenvl.media.sources import classify, read_bytes, sniff
from qwenvl.media.tokens import cost
from qwenvl.models import DEFAULT_MODEL, PRICE_CURRENCY, ModelInfo, model_info
from qwenvl.plan import media_options
from qwenvl.types import ImagePart, Message, Request, TextPart, VideoPart


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option("-m", "--model", help="Model name or snapshot (default qwen3-vl-plus, or $QWENVL_MODEL).")
@click.option("--detail", type=click.Choice(["auto", "low", "high"]),
              help="Image detail: low = smaller budget, high = vl_high_resolution_images.")
@click.option("--high-res/--no-high-res", "vl_high_resolution_images", default=None,
              help="vl_high_resolution_images: up to 16384 tokens per image.")
@click.option("--min-pixels", type=click.IntRange(min=1))
@click.option("--max-pixels", type=click.IntRange(min=1))
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), help="Video sampling rate (default 2).")
@click.option("--pages", help='PDF pages, e.g. "1-3,5" (default: all).')
@click.option("--no-resize", is_flag=True, help="Estimate for the files as they are (still checked).")
@click.option("--fast", is_flag=True, help="Sizes and tokens from the file headers only (no bytes, much faster).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False),
              help="Count for a local model: openai (asks the server at --base-url which model) or transformers "
                   "(--model is its folder or hub id).")
@click.option("--base-url", help="--backend openai: the server, e.g. http://127.0.0.1:8000/v1.")
@click.option("--engine", type=click.Choice(ENGINES, case_sensitive=False), help="--backend openai: its engine.")
@click.option("--family", type=click.Choice(FAMILIES, case_sensitive=False),
              help="A local model's family when its name does not say (qwen2.5-vl: 28 px, qwen3-vl: 32 px).")
@pass_opts
def tokens(opts: dict[str, Any]) -> None:
    """Tokens and estimated cost of images, videos and PDFs, as they would be sent: qwenvl tokens *.jpg

    Nothing is sent. FILES are local files, https:// URLs (tokens unknown: the service fetches them),
    file:// or data: URLs.
    """
    local = None
    if opts["backend"] or opts["family"] or os.environ.get("QWENVL_BACKEND"):
        local = make_client(opts)
    if local is not None and local.is_local:
        model = local.resolve_model(opts["model"])
        model_name = model.name
    else:
        model_name = opts["model"] or os.environ.get("QWENVL_MODEL") or DEFAULT_MODEL
        model = family_model(model_name, opts["family"]) if opts["family"] else model_info(model_name)
    try:
        request = Request(prompt="tokens", model=model_name, detail=opts["detail"] or "auto",
                          vl_high_resolution_images=opts["vl_high_resolution_images"],
                          min_pixels=opts["min_pixels"], max_pixels=opts["max_pixels"], fps=opts["fps"],
                          pages=opts["pages"], prepare=not opts["no_resize"])
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise UsageError(str(exc).splitlines()[-1] if str(exc) else "invalid options") from None
    if local is not None and local.is_local and hasattr(local.backend, "adapt"):
        request = local.backend.adapt(request)  # e.g. the local processor's own lower pixel bound
    options = media_options(request, model, "native", estimate_only=opts["fast"])

    rows: list[dict[str, Any]] = []
    for ref in opts["files"]:
        part = _part(ref)
        prepared = prepare_messages([Message(role="user", content=[part, TextPart(text="?")])], options)
        items = prepared.items
        for index, item in enumerate(items, 1):
            label = ref if len(items) == 1 else f"{ref} [{index}/{len(items)}]"
            rows.append(_row(label, item, model))

    known = [r["tokens"] for r in rows if r["tokens"] is not None]
    total_tokens = sum(known)
    total_cost = cost(model, total_tokens)
    unknown = len(rows) - len(known)
    if opts["as_json"]:
        print_json({
            "model": model.name, "factor": model.factor, "currency": PRICE_CURRENCY, "items": rows,
            "total": {"tokens": total_tokens, "cost": total_cost, "items": len(rows), "unknown": unknown},
        })
        return
    _print_table(rows, model, total_tokens, total_cost, unknown)


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


def _row(label: str, item: PreparedItem, model: ModelInfo) -> dict[str, Any]:
    frames = len(item.sent) if isinstance(item.sent, list) else None
    return {
        "source": label, "kind": item.kind, "width": item.width, "height": item.height, "frames": frames,
        "mime": item.mime, "bytes_sent": item.bytes_sent, "tokens": item.tokens,
        "cost": cost(model, item.tokens) if item.tokens is not None else None, "notes": list(item.notes),
    }


def _size(row: dict[str, Any]) -> str:
    if row["width"] is None or row["height"] is None:
        return "unknown (remote)"
    size = f"{row['width']}x{row['height']}"
    if row["frames"]:
        size = f"{row['frames']} frames of {size}"
    if row["mime"]:
        size += f" {row['mime'].split('/')[-1].upper()}"
    return size


def _bytes(n: int) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"¥{value:.5f}"


def _print_table(rows: list[dict[str, Any]], model: ModelInfo, total_tokens: int, total_cost: float | None,
                 unknown: int) -> None:
    console = out_console()
    table = Table(title=f"{model.name} ({model.factor}x{model.factor} px per token)", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("sent as")
    table.add_column("inline", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column(f"cost ({PRICE_CURRENCY})", justify="right")
    for row in rows:
        table.add_row(row["source"], _size(row), _bytes(row["bytes_sent"]),
                      "unknown" if row["tokens"] is None else f"{row['tokens']:,}", _money(row["cost"]))
    suffix = f" + {unknown} unknown" if unknown else ""
    table.add_section()
    table.add_row(f"total ({len(rows)} item{'s' if len(rows) != 1 else ''})", "", "",
                  f"{total_tokens:,}{suffix}", _money(total_cost) if total_tokens or not unknown else "unknown")
    console.print(table)
    estimated = False
    for row in rows:
        for note in row["notes"]:
            if note.startswith("estimate only"):  # said once, below
                estimated = True
                continue
            console.print(f"[dim]{escape(row['source'])}: {escape(note)}[/]", highlight=False)
    if estimated:
        console.print("[dim]Estimate only: sizes and tokens from the file headers (nothing decoded or encoded); "
                      "the bytes sent are known when a request is prepared.[/]", highlight=False)
    console.print("[dim]Media input tokens only; the prompt and the answer come on top.[/]", highlight=False)
