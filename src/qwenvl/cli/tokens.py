"""`qwenvl tokens FILE...`: what each image, video or PDF costs in tokens and money, sending nothing.

Each file is checked and prepared exactly as `ask` would prepare it (``qwenvl.media.prepare``), so the sizes,
formats, bytes and token counts are those of the request that would be sent. ``--fast`` works from the headers
instead (estimate-only mode: nothing decoded, encoded or rendered): the same sizes and tokens, without the
bytes ("-"), and the likely format for images other than JPEG. The cost covers the media's input tokens only:
the prompt and the answer come on top.
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from qwenvl.batch.inputs import expand_inputs
from qwenvl.cli.common import (
    err_console,
    model_option,
    out_console,
    pass_opts,
    print_json,
    region_option,
    request_fields,
)
from qwenvl.client import Client
from qwenvl.errors import QwenVLError, UsageError
from qwenvl.media.prepare import PreparedItem, prepare_messages
from qwenvl.media.sources import classify, read_bytes, sniff
from qwenvl.media.tokens import cost
from qwenvl.models import PRICE_CURRENCY, ModelInfo, model_info
from qwenvl.plan import media_options
from qwenvl.types import ImagePart, Message, TextPart, VideoPart


@click.command()
@click.argument("files", nargs=-1, required=True)
@model_option
@region_option
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
@pass_opts
def tokens(opts: dict[str, Any]) -> None:
    """Tokens and estimated cost of images, videos and PDFs, as they would be sent: qwenvl tokens *.jpg

    Nothing is sent. FILES are local files, folders (walked for images, videos and PDFs, as `batch` does),
    globs, https:// URLs (tokens unknown: the service fetches them), file:// or data: URLs. A file that
    cannot be sent is reported on its own row and the others go on; the exit status is then 3.
    """
    fields = request_fields(opts)  # the same options, model and region handling as every verb
    try:
        client = Client(region=opts["region"])
    except UsageError as exc:  # its hint names --base-url, which tokens has no use for
        raise UsageError(exc.message) from None
    request = client.request(prompt="tokens", **fields)
    model = model_info(request.model)
    options = media_options(request, model, "native", estimate_only=opts["fast"])
    refs = expand_inputs(opts["files"])
    if not refs:
        raise UsageError("no media files found in " + ", ".join(opts["files"]))

    rows: list[dict[str, Any]] = []
    failures: list[QwenVLError] = []
    for ref in refs:
        try:
            part = _part(ref)
            prepared = prepare_messages([Message(role="user", content=[part, TextPart(text="?")])], options)
        except QwenVLError as exc:  # this file's row; the others go on
            failures.append(exc)
            rows.append({"source": ref, "error": str(exc), "hint": exc.hint})
            continue
        items = prepared.items
        for index, item in enumerate(items, 1):
            label = ref if len(items) == 1 else f"{ref} [{index}/{len(items)}]"
            rows.append(_row(label, item, model))

    counted = [r for r in rows if "error" not in r]
    known = [r["tokens"] for r in counted if r["tokens"] is not None]
    total_tokens = sum(known)
    total_cost = cost(model, total_tokens)
    unknown = len(counted) - len(known)
    if opts["as_json"]:
        print_json({
            "model": model.name, "factor": model.factor, "currency": PRICE_CURRENCY, "items": rows,
            "total": {"tokens": total_tokens, "cost": total_cost, "items": len(counted), "unknown": unknown,
                      "failed": len(failures)},
        })
    else:
        _print_table(rows, model, total_tokens, total_cost, unknown)
    if failures:
        err_console().print(f"[bold red]{len(failures)} of {len(refs)} file{'s' if len(refs) != 1 else ''} "
                            "could not be estimated[/]", highlight=False)
        click.get_current_context().exit(failures[0].exit_code)


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
        if "error" in row:
            table.add_row(escape(row["source"]), f"[red]error:[/] {escape(row['error'])}", "", "-", "-")
            continue
        table.add_row(escape(row["source"]), _size(row), _bytes(row["bytes_sent"]),
                      "unknown" if row["tokens"] is None else f"{row['tokens']:,}", _money(row["cost"]))
    counted = [r for r in rows if "error" not in r]
    suffix = f" + {unknown} unknown" if unknown else ""
    table.add_section()
    table.add_row(f"total ({len(counted)} item{'s' if len(counted) != 1 else ''})", "", "",
                  f"{total_tokens:,}{suffix}", _money(total_cost) if total_tokens or not unknown else "unknown")
    console.print(table)
    estimated = False
    for row in counted:
        for note in row["notes"]:
            if note.startswith("estimate only"):  # said once, below
                estimated = True
                continue
            console.print(f"[dim]{escape(row['source'])}: {escape(note)}[/]", highlight=False)
    for row in rows:
        if "error" in row and row.get("hint"):
            console.print(f"[dim]{escape(row['source'])}: {escape(row['hint'])}[/]", highlight=False)
    if estimated:
        console.print("[dim]Estimate only: sizes and tokens from the file headers (nothing decoded or encoded); "
                      "the bytes sent are known when a request is prepared.[/]", highlight=False)
    console.print("[dim]Media input tokens only; the prompt and the answer come on top.[/]", highlight=False)
