"""The usage log (written by the library for every request) and `qwenvl usage`."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli
from dashscope_server import Reply
from qwenvl.store import Entry, UsageLog, default_usage_log_path
from qwenvl.store.db import connect, migrate


def rows() -> list[dict]:
    """The rows of the default log file, as a separate reader sees them (clients commit theirs at close)."""
    path = default_usage_log_path()
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        conn.close()


def test_every_request_is_logged(server, protocol, png):
    with make_client(server, protocol) as c:
        r = c.ask("What colour?", str(png), model="qwen3-vl-flash")
    [row] = rows()
    assert row["model"] == "qwen3-vl-flash" and row["protocol"] == protocol and row["outcome"] == "ok"
    assert row["input_tokens"] == 110 and row["output_tokens"] == r.usage.output_tokens
    assert row["image_tokens"] == 100 and row["request_id"] == r.request_id
    assert row["cost"] == pytest.approx(110 / 1000 * 0.00015 + r.usage.output_tokens / 1000 * 0.0015)
    assert 0 <= row["latency_s"] < 10 and abs(row["time"] - time.time()) < 60
    assert str(default_usage_log_path()).startswith(str(qwenvl.sessions.home()))


def test_errors_streams_and_cache_hits(server):
    server.enqueue(Reply(status=400, error_code="invalid_parameter_error", error_message="bad"))
    with make_client(server, cache=True) as c:
        with pytest.raises(qwenvl.BadRequestError):
            c.ask("x")
        list(c.stream(prompt="streamed"))
        c.ask("y")
        c.ask("y")
    outcomes = [(r["outcome"], r["status"], r["code"]) for r in rows()]
    assert outcomes == [
        ("BadRequestError", 400, "invalid_parameter_error"),
        ("ok", None, None),
        ("ok", None, None),
        ("cached", None, None),
    ]
    assert rows()[-1]["cost"] == 0


def test_each_attempt_the_transport_retries_is_a_row(server):
    # every attempt that reached the service is recorded: the 503 retried, then the answer (tokens of the failed one
    # unknown; a refusal is not billed: cost 0)
    server.enqueue(Reply(status=503, times=1))
    with make_client(server, max_retries=2) as c:
        c.ask("x")
    assert [(r["outcome"], r["status"]) for r in rows()] == [("InternalServerError", 503), ("ok", None)]
    assert rows()[0]["cost"] == 0.0 and rows()[0]["input_tokens"] is None


def test_a_request_never_sent_is_not_logged(server):
    with pytest.raises(qwenvl.MissingAPIKeyError):
        qwenvl.Client(base_url=server.url).ask("x")
    assert rows() == []


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_switched_off(server, monkeypatch, value):
    monkeypatch.setenv("QWENVL_LOG", value)
    with make_client(server) as c:
        c.ask("x")
    assert rows() == []


def test_summary_by_day_and_model(server):
    with make_client(server) as c:
        c.ask("a")
        c.ask("b", model="qwen3-vl-flash")
        c.ask("c", model="qwen3-vl-flash")
    log = UsageLog()
    log.record(Entry(model="qwen3-vl-flash", protocol="compat", outcome="RateLimitError"))
    log.record(
        Entry(
            model="qwen3-vl-plus",
            protocol="compat",
            outcome="ok",
            input_tokens=1000,
            output_tokens=0,
            cost=0.001,
            time=time.time() - 10 * 86400,
        )
    )
    recent = log.summarize(days=3)
    assert [(r["model"], r["requests"], r["errors"]) for r in recent] == [
        ("qwen3-vl-flash", 3, 1),
        ("qwen3-vl-plus", 1, 0),
    ]
    assert recent[0]["input_tokens"] == 20 and recent[0]["cost"] > 0
    assert len({r["day"] for r in log.summarize(days=30)}) == 2


def test_usage_command(server):
    env = {"DASHSCOPE_API_KEY": API_KEY, "DASHSCOPE_COMPATIBLE_BASE_URL": server.compat_base}
    assert run_cli("ask", "-p", "hello", "--no-stream", env=env).returncode == 0
    p = run_cli("usage", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["total"]["requests"] == 1 and data["rows"][0]["model"] == "qwen3-vl-plus"
    p = run_cli("usage", "--days", "7")
    assert p.returncode == 0 and "qwen3-vl-plus" in p.stdout and "total" in p.stdout


def test_usage_json_costs_are_rounded_sums_not_float_noise():
    """0.1 + 0.2 is 0.30000000000000004 in floats: the JSON gives the sum as the table does, to 10 digits."""
    log = UsageLog()
    for cost in (0.1, 0.2):
        log.record(Entry(model="qwen3-vl-plus", protocol="compat", outcome="ok", input_tokens=1, cost=cost))
    log.close()
    p = run_cli("usage", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["rows"][0]["cost"] == 0.3 and data["total"]["cost"] == {"CNY": 0.3}
    assert "0.30000000000000004" not in p.stdout


def test_usage_command_with_no_log():
    p = run_cli("usage")
    assert p.returncode == 0 and "no requests" in p.stdout


def test_numbered_migrations_apply_once_and_in_order(tmp_path):
    calls = []

    def m001_a(conn):
        calls.append("a")
        conn.execute("CREATE TABLE t (x INTEGER)")

    def m002_b(conn):
        calls.append("b")
        conn.execute("ALTER TABLE t ADD COLUMN y TEXT")

    path = tmp_path / "m.db"
    connect(path, [m001_a]).close()
    conn = connect(path, [m001_a, m002_b])  # an old file gets the new migration only
    assert calls == ["a", "b"]
    assert migrate(conn, [m001_a, m002_b]) == []
    assert [r[1] for r in conn.execute("PRAGMA table_info(t)")] == ["x", "y"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_failed_migration_leaves_nothing_half_done(tmp_path):
    def m001_bad(conn):
        conn.execute("CREATE TABLE t (x INTEGER)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        connect(tmp_path / "m.db", [m001_bad])
    conn = sqlite3.connect(tmp_path / "m.db")
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchone() is None
    conn.close()


def test_local_models_answers_show_as_local_not_as_money(server, png):
    """Answers of a local model (a real openai-backend call to an engine on loopback, and a transformers-style
    row) are "local" in the table and null in --json, not ¥0; the totals count only DashScope's money. Cached
    answers are counted, never paid."""
    from engine_server import EngineServer

    with EngineServer(engine="vllm") as engine:
        p = run_cli("ask", str(png), "-p", "x", "--no-stream", "--backend", "openai", "--base-url", engine.base_url)
        assert p.returncode == 0, p.stderr
    env = {"DASHSCOPE_API_KEY": API_KEY, "DASHSCOPE_COMPATIBLE_BASE_URL": server.compat_base}
    assert run_cli("ask", "-p", "hello", "--no-stream", env=env).returncode == 0
    p = run_cli("usage", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    by_local = {r["local"]: r for r in data["rows"]}
    assert set(by_local) == {True, False}
    assert by_local[True]["cost"] is None and by_local[True]["currency"] is None
    assert by_local[True]["requests"] == 1 and by_local[True]["input_tokens"] > 0  # tokens still counted
    assert by_local[False]["cost"] > 0 and list(data["total"]["cost"]) == ["CNY"]
    table = run_cli("usage").stdout
    local_line = next(line for line in table.splitlines() if "Qwen2.5-VL" in line)
    assert "local" in local_line and "¥" not in local_line, table
    total_line = next(line for line in table.splitlines() if line.strip("│ ").startswith("total"))
    assert "¥" in total_line and "local" not in total_line  # only money in the total


def test_usage_with_only_local_rows_totals_no_money():
    log = UsageLog()
    log.record(Entry(model="my-local", protocol="openai", outcome="ok", input_tokens=5, output_tokens=2))
    log.record(Entry(model="qwen3-vl-plus", protocol="compat", outcome="cached", input_tokens=5, cost=0.0))
    log.close()
    data = json.loads(run_cli("usage", "--json").stdout)
    local = next(r for r in data["rows"] if r["model"] == "my-local")
    assert local["cost"] is None and local["local"] is True
    assert data["total"]["cost"] == {"CNY": 0.0}  # the cached row: nothing paid
    table = run_cli("usage").stdout
    assert "¥" not in next(line for line in table.splitlines() if "my-local" in line)
