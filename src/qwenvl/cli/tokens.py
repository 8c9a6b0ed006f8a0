"""`qwenvl tokens FILE...`: what each image, video or PDF costs in tokens and money, sending nothing.

The estimate itself is ``qwenvl.estimate.estimate_files`` (each file checked and prepared exactly as `ask` would
prepare it; ``--fast`` from the headers only, without the bytes: "-"); this module renders it. The cost covers
the media's input tokens only: the prompt and the answer come on top. It is in the region's currency
(``--region``: ¥ in Beijing, $ in Singapore and Virginia), every item at the price tier of the files' total.
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from qwenvl.cli.common import out_console, pass_opts, print_json
from qwenvl.estimate import estimate_files
from qwenvl.models import format_cost


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option("-m", "--model", help="Model name or snapshot (default qwen3-vl-plus, or $QWENVL_MODEL).")
@click.option("--region", help="Prices of this region: cn (CNY, default, or $QWENVL_REGION), intl or us (USD).")
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

    Nothing is sent. FILES are local files, https:// URLs (tokens unknown: the service fetches them),
    file:// or data: URLs.
    """
    result = estimate_files(opts["files"], model=opts["model"], detail=opts["detail"],
                            vl_high_resolution_images=opts["vl_high_resolution_images"],
                            min_pixels=opts["min_pixels"], max_pixels=opts["max_pixels"], fps=opts["fps"],
                            pages=opts["pages"], prepare=not opts["no_resize"], fast=opts["fast"],
                            region=opts["region"])
    if opts["as_json"]:
        print_json(result)
        return
    _print_table(result)


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


def _print_table(result: dict[str, Any]) -> None:
    rows = result["items"]
    total_tokens, total_cost, unknown = (result["total"][k] for k in ("tokens", "cost", "unknown"))
    currency = result["currency"]

    def _money(value: float | None) -> str:
        return format_cost(value, currency, digits=5)

    console = out_console()
    tier = f", {result['price_tier']} input tier" if result["price_tier"] not in (None, "any") else ""
    table = Table(title=f"{result['model']} ({result['factor']}x{result['factor']} px per token{tier})",
                  title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("sent as")
    table.add_column("inline", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column(f"cost ({currency})", justify="right")
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
