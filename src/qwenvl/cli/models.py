"""`qwenvl models [NAME]`: the model table (family, pixel rule, budgets, limits, abilities, prices by region)."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from qwenvl import env as qenv
from qwenvl.cli.common import Verb, out_console, pass_opts, print_json
from qwenvl.errors import safe_line
from qwenvl.models import (
    MODELS,
    SNAPSHOT_RULE,
    currency_of,
    describe,
    format_price,
    model_info,
    near_model,
    no_family_error,
    typo_error,
)


@click.command(cls=Verb)
@click.argument("name", required=False)
@click.option(
    "--region", metavar="REGION", help="Prices of this region: cn (CNY, default, or $QWENVL_REGION), intl or us (USD)."
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_opts
def models(opts: dict[str, Any]) -> None:
    """The models qwenvl knows, with their pixel rule, budgets, limits, abilities and prices.

    \b
    qwenvl models                     every model, prices per 1M tokens
                                      in CNY (Beijing)
    qwenvl models --region intl       the same in USD (Singapore;
                                      us = Virginia)
    qwenvl models qwen-vl-max-latest  one model, and how its name resolves
                                      (snapshot, -latest, guess)

    A request is billed entirely at the tier of its input length (e.g. qwen3-vl-plus: ≤32K, 32K-128K, >128K).
    A dated snapshot NAME-YYYY-MM-DD the table does not list takes NAME's facts (or those of the newest listed
    snapshot before it). Another Qwen name the table does not know gets a warning: its rules are guessed from the
    name; a name that says no family (nonsense-model) is unknown (exit 2).
    A name that looks like a misspelling of a listed one (or differs from it only in case) is refused (exit 2), as
    the other verbs refuse it, unless $QWENVL_UNLISTED_MODELS names it.
    """
    region = opts["region"]
    currency_of(region)  # an unknown region is a usage error before anything is printed
    if opts["name"]:
        typo = typo_error(opts["name"], allowed=qenv.unlisted_models())
        if typo is not None:  # what ask/tokens/batch would do with the name: refuse it
            near = near_model(opts["name"])  # the hint names what was given here: NAME, not --model
            unlisted = (typo.raw_hint or "").partition("; ")[2]
            typo.hint = (
                f"See `qwenvl models {near}`" + (f"; {unlisted}" if unlisted else ".")
                if near is not None
                else "`qwenvl models` lists the models DashScope serves."  # no model of that name in any case
            )
            raise typo
        unknown = no_family_error(opts["name"])
        if unknown is not None:  # never a family guessed for it, whatever $QWENVL_UNLISTED_MODELS says
            raise unknown
        info = model_info(opts["name"])
        data = describe(info, region)
        if opts["as_json"]:
            print_json(data)
        else:
            _print_one(data)
        return
    rows = [describe(m, region) for m in MODELS.values()]
    if opts["as_json"]:
        print_json({"currency": currency_of(region), "models": rows})
        return
    _print_table(rows)


def _prices(data: dict[str, Any], sep: str = "\n") -> str:
    tiers = data["prices_per_1m"]
    cur = data["currency"]
    if not tiers:
        return "unknown"
    return sep.join(
        f"{format_price(t['input'], cur)} / {format_price(t['output'], cur)}"
        + (f" {t['tier']}" if len(tiers) > 1 else "")
        for t in tiers
    )


def _abilities(data: dict[str, Any]) -> str:
    a = data["abilities"]
    names = []
    if a["thinking"]:
        names.append("thinking only" if a["thinking"] == "always" else "thinking")
    if a["tools"]:
        names.append("tools")
    if a["structured_output"]:
        names.append("json")
    if a["video"]:
        names.append("video")
    if a["stream_only"]:
        names.append("stream-only")
    return ", ".join(names) or "-"


def _budget(data: dict[str, Any]) -> str:
    t = data["image_tokens"]
    return f"{t['default']:,} / {t['high_res']:,}" if t["high_res"] else f"{t['default']:,} / -"


def _print_table(rows: list[dict[str, Any]]) -> None:
    cur = rows[0]["currency"] if rows else "CNY"
    table = Table(title=f"qwenvl models (prices per 1M tokens, input / output, {cur})", title_justify="left")
    for name, justify in (
        ("model", "left"),
        ("family", "left"),
        ("px/token", "right"),
        ("image tokens / high-res", "right"),
        ("context", "right"),
        ("max out", "right"),
        ("abilities", "left"),
        (f"price ({cur})", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for d in rows:
        table.add_row(
            d["name"],
            d["family"],
            f"{d['px_per_token']}",
            _budget(d),
            f"{d['context_tokens']:,}",
            f"{d['max_output_tokens']:,}",
            _abilities(d),
            _prices(d),
        )
    console = out_console()
    console.print(table)
    console.print(
        "[dim]A request is billed entirely at the tier of its input length. `qwenvl models NAME` for "
        f"one model; --region intl for USD. Snapshots: {escape(SNAPSHOT_RULE)}.[/]",
        highlight=False,
    )


def _print_one(d: dict[str, Any]) -> None:
    console = out_console()
    t = d["image_tokens"]
    high = f"{t['high_res']:,}" if t["high_res"] else "not supported"
    lines = [
        ("model", d["name"]),
        ("resolves to", f"{d['resolves_to']} ({d['resolution']})"),
        ("family", d["family"]),
        ("pixels per token", f"{d['px_per_token']}x{d['px_per_token']}"),
        (
            "image tokens",
            f"default {t['default']:,} (max_pixels {d['default_max_pixels']:,}), "
            f"high-res {high}, low detail {t['low_detail']:,}, "
            f"min {t['min']}",
        ),
        ("context", f"{d['context_tokens']:,} tokens, max output {d['max_output_tokens']:,}"),
        ("abilities", _abilities(d)),
    ]
    v = d["video"]
    if v:
        lines.append(
            (
                "video",
                f"up to {v['max_frames']:,} frames, {v['frame_tokens']:,} tokens per frame, "
                f"{v['total_tokens']:,} in all; local file < {v['file_max_bytes'] // 2**20} MB, "
                f"URL up to {v['url_max_bytes'] // 2**30} GB",
            )
        )
    lines.append((f"price ({d['currency']})", _prices(d, "; ") + (" per 1M tokens" if d["prices_per_1m"] else "")))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        console.print(f"[bold]{key.ljust(width)}[/]  {escape(safe_line(value))}", highlight=False)  # a name given
