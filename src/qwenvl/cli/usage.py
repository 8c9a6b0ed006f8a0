"""`qwenvl usage`: what the requests of the last days cost, by day and model (from the local usage log)."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from qwenvl.cli.common import Verb, out_console, pass_opts, print_json, shown
from qwenvl.errors import safe_line
from qwenvl.models import LOCAL, format_cost, round_cost
from qwenvl.store import UsageLog, usage_log_enabled


@click.command(cls=Verb)
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True, help="How many days back.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@pass_opts
def usage(opts: dict[str, Any]) -> None:
    """Requests, errors, tokens and estimated cost by day and model, from the local usage log.

    Costs carry their currency (¥ for Beijing, $ for Singapore and Virginia) and are totalled per currency.
    Answers of local models (--backend openai or transformers) cost nothing: their cost reads "local" (null in
    --json, with "local": true) and is not in the totals. A model with no known price has cost "unknown" (null
    in --json): the totals leave its answers out and say how many, as they do for requests with no answer that
    may have been billed (cancelled, or timed out once sent). Cached answers are counted, never paid; a refused
    request (an HTTP error) or one that never connected costs nothing.

    Every request qwenvl sends is logged (time, model, tokens, cost, latency, outcome; never prompts or
    answers) in usage.db in the data folder. QWENVL_LOG=0 turns the log off.
    """
    log = UsageLog()  # the default file, read even when logging is off (what was logged before is shown)
    rows = log.summarize(opts["days"])
    totals = {k: sum(r[k] for r in rows) for k in ("requests", "errors", "cached", "input_tokens", "output_tokens")}
    # Costs are summed per currency, never across (CNY in Beijing, USD in Singapore and Virginia).
    # A local model's rows (the openai and transformers backends) have no cost: shown as "local", never money.
    costs: dict[str, float] = {}
    for r in rows:
        if r["cost"] is not None:
            costs[r["currency"]] = costs.get(r["currency"], 0.0) + r["cost"]
    # answers of a model with no known price: in no cost (unknown, not free), said beside the totals
    unpriced = sum(r["unpriced"] for r in rows)
    # requests with no answer that may have been billed (cancelled, timed out once sent): cost unknown, likewise
    maybe = sum(r["maybe_billed"] for r in rows)
    if opts["as_json"]:  # sums of floats: 0.01974, not 0.01974000000000005; a local row's cost is null
        rows = [{**r, "cost": None if r["cost"] is None else round_cost(r["cost"])} for r in rows]
        # "local_requests": the requests answered by local models, which have no price and are in no cost
        local = sum(r["requests"] for r in rows if r.get("local"))
        total = {
            **totals,
            "cost": {c: round_cost(v) for c, v in costs.items()},
            "local_requests": local,
            "unpriced_requests": unpriced,
            "maybe_billed_requests": maybe,
        }
        print_json({"days": opts["days"], "rows": rows, "total": total, "log": str(log.path)})
        return
    console = out_console()
    if not rows:
        where = "off (QWENVL_LOG=0)" if not usage_log_enabled() else safe_line(log.path)
        console.print(f"no requests in the last {opts['days']} days (usage log: {escape(where)})", highlight=False)
        return
    table = Table(title=f"qwenvl usage, last {opts['days']} days", title_justify="left")
    for name in ("day", "model", "requests", "errors", "cached", "input tokens", "output tokens", "≈ cost"):
        table.add_column(name, justify="left" if name in ("day", "model") else "right")

    def cells(r: dict[str, Any], cost: str) -> list[str]:
        return [
            f"{r['requests']:,}",
            f"{r['errors']:,}",
            f"{r['cached']:,}",
            f"{r['input_tokens']:,}",
            f"{r['output_tokens']:,}",
            cost,
        ]

    for r in rows:
        cost = format_cost(r["cost"], r["currency"], local=r["local"])
        if r["cost"] is not None and (r["unpriced"] or r["maybe_billed"]):  # a part of it is unknown, as in the total
            cost += " + ?"
        table.add_row(r["day"], escape(shown(r["model"] or "?")), *cells(r, cost))
    table.add_section()
    paid = " + ".join(format_cost(v, c) for c, v in sorted(costs.items()))
    if not paid:  # only local rows (no money), or only requests of unknown cost
        paid = "unknown" if unpriced or maybe else LOCAL
    elif unpriced or maybe:  # a sum that leaves requests out is not the whole cost
        paid += " + ?"
    table.add_row("total", "", *cells(totals, paid))
    console.print(table)
    if unpriced:
        console.print(
            f"The totals leave out {unpriced:,} answer{'s' if unpriced > 1 else ''} of a model with no known price "
            "(cost unknown; `qwenvl models` lists the prices).",
            highlight=False,
        )
    if maybe:
        console.print(
            f"The totals leave out {maybe:,} request{'s' if maybe > 1 else ''} with no answer that may have been "
            "billed (cancelled, or timed out after it was sent): cost unknown.",
            highlight=False,
        )
