"""`qwenvl tokens FILE...`: what each image, video or PDF costs in tokens and money, sending nothing.

Each file is checked and prepared exactly as `ask` would prepare it (``qwenvl.media.prepare``), so the sizes,
formats, bytes and token counts are those of the request that would be sent. ``--fast`` works from the headers
instead (estimate-only mode: nothing decoded, encoded or rendered): the same sizes and tokens, without the
bytes ("-"), and the likely format for images other than JPEG and for PDF pages (``images.likely_mime``). The
cost covers the media's input tokens only: the prompt and the answer come on top, in the region's currency
(``--region``: ¥ in Beijing, $ in Singapore and Virginia), every item at the price tier of the files' total.
The estimate itself is ``qwenvl.estimate.estimate_files`` (shared with the MCP ``estimate`` tool); this module
renders it.
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from qwenvl import env as qenv
from qwenvl.cli.common import (
    FILE_NAME,
    FiniteFloat,
    Verb,
    as_given,
    check_pages,
    err_console,
    fit_hint,
    fit_line,
    make_client,
    media_flag_names,
    model_option,
    out_console,
    pass_opts,
    print_json,
    region_option,
    request_fields,
    with_stdin,
)
from qwenvl.config import BACKENDS, ENGINES, FAMILIES
from qwenvl.errors import EXIT_INPUT, safe_line
from qwenvl.estimate import estimate_files
from qwenvl.media.prepare import ESTIMATE_NOTES, format_bytes
from qwenvl.models import format_cost


@click.command(cls=Verb)
@click.argument("files", type=FILE_NAME, nargs=-1, required=True)
@model_option
@region_option
@click.option(
    "--detail",
    type=click.Choice(["auto", "low", "high"]),
    help="Image detail: auto = the model's default budget, low = smaller budget, high = vl_high_resolution_images.",
)
@click.option(
    "--high-res/--no-high-res",
    "vl_high_resolution_images",
    default=None,
    help="vl_high_resolution_images: up to 16384 tokens per image.",
)
@click.option("--min-pixels", type=click.IntRange(min=1), help="Smallest pixel count an image is resized to.")
@click.option(
    "--max-pixels", type=click.IntRange(min=1), help="Largest pixel count an image is resized to (its budget)."
)
@click.option("--fps", type=FiniteFloat(min=0, min_open=True), help="Video sampling rate (default 2).")
@click.option("--pages", callback=check_pages, help='PDF pages, e.g. "1-3,5" (default: all).')
@click.option(
    "--video-as",
    type=click.Choice(["frames", "file"]),
    help="A local video as it would be sent: sampled here into frames (default), or whole for the service to "
    "sample (its count is then about: ≈).",
)
@click.option("--no-resize", is_flag=True, help="Estimate for the files as they are (still checked).")
@click.option(
    "--fetch-urls",
    is_flag=True,
    help="Download remote files and size them here (a PDF URL's pages are rendered: it needs this).",
)
@click.option("--fast", is_flag=True, help="Sizes and tokens from the file headers only (no bytes, much faster).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option(
    "--backend",
    type=click.Choice(BACKENDS, case_sensitive=False),
    help="dashscope (default, or $QWENVL_BACKEND); for a local model: openai (asks the server at --base-url "
    "which model) or transformers "
    "(--model is its folder or hub id).",
)
@click.option("--base-url", metavar="URL", help="--backend openai: the server, e.g. http://127.0.0.1:8000/v1.")
@click.option("--engine", type=click.Choice(ENGINES, case_sensitive=False), help="--backend openai: its engine.")
@click.option(
    "--family",
    type=click.Choice(FAMILIES, case_sensitive=False),
    help="A local model's family when its name does not say (qwen2-vl, qwen2.5-vl: 28 px; qwen3-vl: 32 px).",
)
@pass_opts
def tokens(opts: dict[str, Any]) -> None:
    """Tokens and estimated cost of images, videos and PDFs, as they would be sent: qwenvl tokens *.jpg

    Nothing is sent. FILES are local files, folders (walked for images, videos and PDFs, as `batch` does),
    globs, https:// URLs (tokens unknown: the service fetches them), file:// or data: URLs, or - (a file on
    standard input). A file that
    cannot be sent is reported on its own row and the others go on; the exit status is then 3.
    """
    fields = request_fields(opts)  # the same options, model and region handling as every verb
    client = None
    # a local model's own rules, asked of its backend, or of the server at --base-url (a qwenvl serve says them)
    if opts["backend"] or qenv.backend() or opts.get("base_url"):
        client = make_client(opts, will_send=False)  # nothing is sent: no key needed
    paths = with_stdin(list(opts["files"]))  # "-": the file on standard input, as for every verb
    result = estimate_files(
        paths,
        fast=opts["fast"],
        region=opts["region"],
        client=client,
        family=opts["family"],
        pages_option="--pages",
        fps_option="--fps",
        option_names=media_flag_names(),
        **fields,
    )
    result = as_given(result)  # "-" was replaced by a temporary file: named as the user gave it
    command = click.get_current_context().command
    for row in result["items"]:  # a row's error and hint in this verb's words (the estimate's are as written)
        if row.get("error"):
            row["error"] = fit_line(row["error"])
        if row.get("hint"):
            row["hint"] = fit_hint(row["hint"], command) or None
    if opts["as_json"]:
        print_json(result)
    else:
        _print_table(result)
    failed, files = result["total"]["failed"], len({r["source"] for r in result["items"]})
    if failed:
        err_console().print(
            f"[bold red]{failed} of {files} file{'s' if files != 1 else ''} could not be estimated[/]", highlight=False
        )
        click.get_current_context().exit(EXIT_INPUT)


def _size(row: dict[str, Any]) -> str:
    if row["width"] is None or row["height"] is None:
        return "unknown (remote)"
    size = f"{row['width']}x{row['height']}"
    if row["frames"]:
        size = f"{row['frames']} frames of {size}"
    if row["mime"]:
        size += " " + "+".join(m.split("/")[-1].upper() for m in row["mime"].split(", "))  # frames may differ
    return size


def _label(row: dict[str, Any]) -> str:
    """A row's file, and a PDF page's number in the document (``doc.pdf page 2``)."""
    return f"{row['source']} page {row['page']}" if row.get("page") is not None else row["source"]


def _bytes(n: int | None) -> str:
    return format_bytes(n) if n else "-"


def _print_table(result: dict[str, Any]) -> None:
    rows, currency, local = result["items"], result["currency"], result["local"]
    total_tokens, total_cost, unknown = (result["total"][k] for k in ("tokens", "cost", "unknown"))

    console = out_console()
    tier = f", {result['price_tier']} input tier" if result["price_tier"] not in (None, "any") else ""
    table = Table(
        title=f"{result['model']} ({result['factor']}x{result['factor']} px per token{tier})", title_justify="left"
    )
    table.add_column("file", overflow="fold")
    table.add_column("sent as")
    table.add_column("inline", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("cost" if local else f"cost ({currency})", justify="right")
    for row in rows:
        if "error" in row:
            table.add_row(escape(safe_line(_label(row))), "[red]error[/] (below)", "", "-", "-")
            continue
        table.add_row(
            escape(safe_line(_label(row))),
            _size(row),
            _bytes(row["bytes_sent"]),
            "unknown" if row["tokens"] is None else f"{'' if row['tokens_exact'] else '≈'}{row['tokens']:,}",
            format_cost(row["cost"], currency, digits=5, local=local),
        )
    counted = [r for r in rows if "error" not in r]
    suffix = f" + {unknown} unknown" if unknown else ""
    table.add_section()
    table.add_row(
        f"total ({len(counted)} item{'s' if len(counted) != 1 else ''})",
        "",
        "",
        f"{'' if all(r['tokens_exact'] for r in counted if r['tokens'] is not None) else '≈'}{total_tokens:,}{suffix}",
        format_cost(total_cost, currency, digits=5, local=local) if total_tokens or not unknown or local else "unknown",
    )
    console.print(table)
    estimated = False
    for row in counted:
        for note in row["notes"]:
            if note in ESTIMATE_NOTES:  # said once, below
                estimated = True
                continue
            console.print(f"[dim]{escape(safe_line(_label(row)))}: {escape(safe_line(note))}[/]", highlight=False)
    for row in rows:  # an error in full below the table, where it does not stretch the "sent as" column
        if "error" in row:
            source = escape(safe_line(row["source"]))
            console.print(f"[red]{source}: error:[/] {escape(safe_line(row['error']))}", highlight=False)
            if row.get("hint"):
                console.print(f"[dim]{source}: hint: {escape(safe_line(row['hint']))}[/]", highlight=False)
    if estimated:
        console.print(
            "[dim]Estimate only: sizes and tokens from the file headers (nothing decoded or encoded); "
            "the bytes sent are known when a request is prepared.[/]",
            highlight=False,
        )
    console.print("[dim]Media input tokens only; the prompt and the answer come on top.[/]", highlight=False)
    for warning in result.get("warnings", []):
        err_console().print(
            f"[yellow]warning:[/] {escape(safe_line(fit_line(warning)))}", highlight=False, soft_wrap=True
        )
