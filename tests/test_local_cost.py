"""A local model's cost is said one way everywhere: it has no price, so text reads ``local`` and JSON gives
``"cost": null, "currency": null, "local": true`` (``qwenvl.models.cost_fields``), never 0.0 in a currency and
never "unknown". Each place a cost is computed, shown or stored is driven for real against a vLLM double on
loopback (tests/engine_server.py): tokens, --dry-run, the ask footer, batch (summary, lines, --max-cost), the
usage log (the library's and serve's), the playground's estimate endpoint and the MCP tools' cost fields."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import qwenvl
from conftest import run_cli
from engine_server import EngineServer
from qwenvl.models import LOCAL, answer_cost, cost_fields, format_cost
from qwenvl.store import UsageLog


@pytest.fixture
def engine() -> Iterator[EngineServer]:
    with EngineServer(engine="vllm") as srv:
        yield srv


def local(engine: EngineServer) -> list[str]:
    return ["--backend", "openai", "--base-url", engine.base_url]


def test_the_one_rule() -> None:
    assert cost_fields(0.0123456789012, "CNY", local=False) == {"cost": 0.0123456789, "currency": "CNY", "local": False}
    assert cost_fields(0.0, "CNY", local=True) == {"cost": None, "currency": None, "local": True}
    assert format_cost(0.0, "CNY", local=True) == LOCAL == "local"
    assert format_cost(None, None) == "unknown" and format_cost(0.5, "CNY") == "¥0.5000"


def test_tokens_says_local_not_unknown(engine: EngineServer, png: Path) -> None:
    """`qwenvl tokens --backend openai photo.jpg` showed the cost as "unknown"."""
    text = run_cli("tokens", *local(engine), str(png))
    assert text.returncode == 0, text.stderr
    rows = [line for line in text.stdout.splitlines() if png.name in line or "total" in line]
    assert rows and all("local" in line and "unknown" not in line and "¥" not in line for line in rows), text.stdout
    data = json.loads(run_cli("tokens", *local(engine), str(png), "--json").stdout)
    assert data["local"] is True and data["currency"] is None and data["total"]["cost"] is None
    assert all(item["cost"] is None for item in data["items"])


def test_dry_run_has_no_price_for_a_local_model(engine: EngineServer, png: Path) -> None:
    est = json.loads(run_cli("ask", *local(engine), "--dry-run", "hi", str(png)).stdout)["estimate"]
    assert est["local"] is True and est["currency"] is None
    assert est["cost_input"] is None and est["cost_max"] is None and est["price_tier"] is None


def test_the_ask_footer_says_local(engine: EngineServer, png: Path) -> None:
    from qwenvl.cli.common import usage_line

    with qwenvl.Client(backend="openai", base_url=engine.base_url) as client:
        response = client.ask("hi", str(png))
    assert answer_cost(response) is None  # was 0.0
    line = usage_line(response)
    assert "cost: local" in line and "¥" not in line and "$" not in line, line


def test_batch_summary_and_lines_carry_no_money(engine: EngineServer, png: Path) -> None:
    """`qwenvl batch --backend openai` reported "cost": 0.0, "currency": "CNY" in its summary. And --max-cost
    cannot be exceeded by a model with no price: it is said not to apply, and the run goes on."""
    p = run_cli(
        "batch",
        *local(engine),
        str(png),
        "-p",
        "hi",
        "-o",
        "out.jsonl",
        "--json",
        "--max-cost",
        "0.0001",
        "--csv",
        "out.csv",
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert (summary["cost"], summary["currency"], summary["local"]) == (None, None, True)
    assert "--max-cost does not apply: a local model has no price" in p.stderr
    line = json.loads(Path("out.jsonl").read_text().splitlines()[0])
    assert line["status"] == "ok" and (line["cost"], line["currency"], line["local"]) == (None, None, True)
    import csv

    (row,) = csv.DictReader(Path("out.csv").read_text().splitlines())
    assert row["cost"] == "local"
    dry = run_cli("batch", *local(engine), str(png), "-p", "other", "-o", "dry.jsonl", "--dry-run")
    estimate = json.loads(dry.stdout)
    assert (estimate["cost_max"], estimate["currency"], estimate["local"], estimate["unpriced"]) == (
        None,
        None,
        True,
        0,
    )


def test_the_usage_log_stores_no_price_for_a_local_answer(engine: EngineServer, png: Path) -> None:
    """The usage log held "cost": 0.0 in CNY for a local answer (hidden only by the summary's protocol test)."""
    with qwenvl.Client(backend="openai", base_url=engine.base_url) as client:
        client.ask("hi", str(png))
    log = UsageLog()
    log.flush()
    with sqlite3.connect(log.path) as conn:
        rows = conn.execute("SELECT protocol, cost, currency FROM requests").fetchall()
    log.close()
    assert rows == [("openai", None, None)]
    total = json.loads(run_cli("usage", "--json").stdout)["total"]  # the totals say what they leave out
    assert total["cost"] == {} and total["local_requests"] == 1


def test_serve_and_the_playground_estimate_in_front_of_a_local_model(engine: EngineServer, png: Path) -> None:
    from test_serve import COMPAT, SERVE_KEY, data_url, engine_gateway, post

    with engine_gateway(engine) as s:
        est = httpx.post(
            s.url + "/qwenvl/v1/estimate",
            json={"model": engine.served, "images": [data_url(png)]},
            headers={"Authorization": f"Bearer {SERVE_KEY}"},
            timeout=30,
        )
        assert est.status_code == 200, est.text
        body = est.json()
        assert (body["cost"], body["currency"], body["local"]) == (None, None, True)
        assert all(item["cost"] is None for item in body["items"])
        answer = post(s, COMPAT, {"model": engine.served, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
    rows = [r for r in UsageLog().summarize() if r["requests"]]
    assert rows and all(r["local"] and r["cost"] is None and r["currency"] is None for r in rows)


def test_the_mcp_tools_cost_fields(engine: EngineServer, png: Path) -> None:
    pytest.importorskip("mcp")
    from qwenvl.mcp_server import AskResult, billed, tool_error

    with qwenvl.Client(backend="openai", base_url=engine.base_url) as client:
        response = client.ask("hi", str(png))
    fields = billed(response, region=client.region)
    assert (fields["cost"], fields["currency"], fields["local"]) == (None, None, True)
    shown = AskResult(text="x", **fields).model_dump(mode="json")
    assert shown["local"] is True and shown["cost"] is None
    from qwenvl.errors import StructuredOutputError

    said = tool_error(StructuredOutputError("not JSON", raw_text="x", response=response))
    assert "cost local" in said.content[0].text  # type: ignore[union-attr]


def test_a_local_models_answers_are_never_said_to_be_paid(engine: EngineServer, png: Path) -> None:
    """A local call is not paid: a batch output holding a local model's answers to another question says they
    would be sent again (not "paid for again"), and --fresh says they are asked again."""
    p = run_cli("batch", *local(engine), str(png), "-p", "hi", "-o", "out.jsonl")
    assert p.returncode == 0, p.stderr
    again = run_cli("batch", *local(engine), str(png), "-p", "another question", "-o", "out.jsonl")
    assert again.returncode == 2 and "would be replaced and sent again" in again.stderr, again.stderr
    assert "paid" not in again.stderr
    fresh = run_cli("batch", *local(engine), str(png), "-p", "another question", "-o", "out.jsonl", "--fresh", "--yes")
    assert fresh.returncode == 0 and "they are deleted, and asked again" in fresh.stderr, fresh.stderr
    assert "paid" not in fresh.stderr
