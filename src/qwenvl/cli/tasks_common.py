"""What the task verbs (ground, ocr, extract, events) share: warnings, dry runs, option checks."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape

from qwenvl.cli.common import as_given, err_console, fit_line, print_json, print_usage_line, shown
from qwenvl.cli.render import warn_answer
from qwenvl.errors import UsageError, safe_line
from qwenvl.interfaces import SupportsPreview
from qwenvl.models import format_cost, spent_fields
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


def verbose_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--verbose``: a verb of several requests (``ocr`` over pages, ``extract`` over files) shows each request's
    usage line (``print_usage_line``: model, tokens, cost, request id) above the run's one summary (``show_usage``)."""
    return click.option(
        "--verbose",
        is_flag=True,
        help="On a terminal, show each request's usage line (tokens, cost, request id) above the run's total.",
    )(fn)


def show_usage(
    *responses: Response | None,
    cut_off: bool = True,
    max_tokens: int | None = None,
    region: str | None = None,
    notes: bool = True,
    footer: bool = True,
    verbose: bool = False,
    also: Sequence[Response | None] = (),
) -> None:
    """The notes on each answer (``cut_off=False`` where the task's own warnings already say it was cut off;
    ``notes=False`` where the verb said them its way), then, on a terminal, the usage footer as ``ask`` shows it:
    one answer's line (``print_usage_line``), or for several one summary of the run (``run_usage_line``), with
    each one's line above it only when ``verbose``; none with ``footer=False`` (the verb's JSON carries it, as
    ``ask --json``'s does). ``also``: answers paid whose line the verb said beside their error (a failed structured
    answer: ``show_paid``), counted in the run's summary only."""
    given = [r for r in responses if r is not None]
    for response in given:
        if notes:
            warn_answer(response, max_tokens, include_cut_off=cut_off)
    console = err_console()
    if not footer or not console.is_terminal:
        return
    if len(given) == 1 or verbose:
        for response in given:
            print_usage_line(response, region, console)
    every = given + [r for r in also if r is not None]
    if len(every) > 1:
        console.print(f"[dim]{escape(run_usage_line(every, region))}[/]", highlight=False, soft_wrap=True)


def run_usage_line(responses: list[Response], region: str | None = None) -> str:
    """One line for a run's answers (as ``usage_line`` is for one): ``total of N answers``, the models, the tokens
    summed (a repair's included: an answer's usage counts every request of it), and the cost summed
    (``models.spent_fields``: ``cost: local`` for a local model's, ``cost unknown (no price)`` when one answer's
    price is unknown; the answers from the cache said, not paid). Raises UsageError for an unknown region."""
    spent = spent_fields(responses, region=region)
    u = spent["usage"]
    n = len(responses)
    parts = [f"total of {n} answers"]
    parts.append(", ".join(dict.fromkeys(r.model for r in responses)))
    if "input_tokens" in u:
        parts.append(f"{u['input_tokens']:,} in / {u.get('output_tokens', 0):,} out tokens")
    if u.get("image_tokens"):
        parts.append(f"{u['image_tokens']:,} image tokens")
    cached = sum(1 for r in responses if r.cached)
    if cached:
        parts.append("from the cache: not paid" if cached == n else f"{cached} from the cache")
    if spent["local"]:
        parts.append("cost: " + format_cost(None, None, local=True))
    elif cached < n:
        cost = spent["cost"]
        parts.append("≈" + format_cost(cost, spent["currency"]) if cost is not None else "cost unknown (no price)")
    return shown(" · ".join(parts), sys.stderr)  # the model names come from the service


def show_raw(text: str) -> None:
    """The model's answer on stderr (when nothing could be read from it), dimmed."""
    console = err_console()
    console.print("[dim]the answer was:[/]", highlight=False)
    console.print(
        shown(text.strip(), sys.stderr) or "(empty)", markup=False, highlight=False, soft_wrap=True, style="dim"
    )
