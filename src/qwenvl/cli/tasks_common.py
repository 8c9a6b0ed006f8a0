"""What the task verbs (ground, ocr, extract, events) share: warnings, dry runs, option checks."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from qwenvl.cli.common import as_given, err_console, fit_line, print_json, print_usage_line, shown
from qwenvl.cli.render import warn_answer
from qwenvl.errors import UsageError, safe_line
from qwenvl.interfaces import SupportsPreview
from qwenvl.plan import Call
from qwenvl.types import Response

if TYPE_CHECKING:
    from qwenvl.batch.runner import Estimate


def refuse_structured(opts: dict[str, Any], verb: str) -> None:
    """The verbs that ask for their own answer format take neither --json-mode nor --schema."""
    for flag, key in (("--json-mode", "json_mode"), ("--schema", "schema_file")):
        if opts.get(key):
            raise UsageError(
                f"{verb} asks for its own answer format; {flag} does not apply here",
                hint="Use `qwenvl extract --schema FILE` or `qwenvl ask --schema FILE` for your own JSON.",
            )


def warn(messages: list[str], *, prefix: str = "warning") -> None:
    console = err_console()
    for message in messages:
        console.print(
            f"[yellow]{prefix}:[/] {escape(safe_line(fit_line(as_given(message))))}", highlight=False, soft_wrap=True
        )


def note(message: str) -> None:
    err_console().print(
        f"[cyan]note:[/] {escape(safe_line(fit_line(as_given(message))))}", highlight=False, soft_wrap=True
    )


def dry_run(client: SupportsPreview, call: Call, every: Estimate | None = None) -> None:
    """The request ``call`` would send (``Client.preview``), as JSON on stdout. ``every``: the estimate of every
    request the verb would send (``qwenvl.batch.runner.estimate_calls``) when ``call`` is the first of several
    (an OCR's pages, extract's files): added as ``"requests"`` (how many) and ``"total"`` (their input tokens,
    answers at most, costs: each request priced at its own tier), so the dry run shows the whole job's price."""
    preview = client.preview(call)
    if every is not None:
        out = every.to_dict()
        keys = ("input_tokens", "max_output_tokens", "unknown_media", "cost_input", "cost_max", "currency", "local")
        preview |= {"requests": every.to_send, "total": {k: out[k] for k in keys}}
    print_json(preview)


def show_usage(
    *responses: Response | None,
    cut_off: bool = True,
    max_tokens: int | None = None,
    region: str | None = None,
    notes: bool = True,
    footer: bool = True,
) -> None:
    """The notes on each answer (``cut_off=False`` where the task's own warnings already say it was cut off;
    ``notes=False`` where the verb said them its way), then, on a terminal, the usage line (``print_usage_line``),
    as ``ask`` shows it: not with ``footer=False`` (the verb's JSON carries it, as ``ask --json``'s does)."""
    for response in responses:
        if response is not None and notes:
            warn_answer(response, max_tokens, include_cut_off=cut_off)
    console = err_console()
    if footer and console.is_terminal:
        for response in responses:
            if response is not None:
                print_usage_line(response, region, console)


def show_raw(text: str) -> None:
    """The model's answer on stderr (when nothing could be read from it), dimmed."""
    console = err_console()
    console.print("[dim]the answer was:[/]", highlight=False)
    console.print(
        shown(text.strip(), sys.stderr) or "(empty)", markup=False, highlight=False, soft_wrap=True, style="dim"
    )
