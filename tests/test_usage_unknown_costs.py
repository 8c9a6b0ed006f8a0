"""`qwenvl usage` shows an unknown cost as unknown: a request with no answer that may have been billed (cancelled, or
timed out once sent) is in no total, which then says "+ ?" (or "unknown") and how many; a refusal (HTTP 4xx/5xx) or a
connection never made costs nothing. Real SQLite usage logs, written by the client against the loopback double."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, run_cli
from dashscope_server import Reply
from qwenvl.store import UsageLog


def _log(isolated_env: Path) -> Path:
    return Path.home() / ".qwenvl" / "usage.db"  # the default log `qwenvl usage` reads (QWENVL_HOME)


def _cancelled(server, log: Path) -> None:
    from test_money_attempts import timed_out_once_sent

    server.enqueue(Reply(hold=threading.Event()))  # no answer before the server stops

    async def main() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=log) as ac:
            with pytest.raises(TimeoutError):
                await timed_out_once_sent(server, ac.ask("x"))  # timed out once in flight (wait_for)

    asyncio.run(main())


def _usage_json(env: dict) -> dict:
    p = run_cli("usage", "--json", env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_a_day_of_cancelled_requests_costs_unknown_not_zero(server, env, isolated_env):
    log = _log(isolated_env)
    _cancelled(server, log)
    [row] = UsageLog(log).summarize(1)
    assert row["requests"] == 1 and row["errors"] == 1 and row["maybe_billed"] == 1
    assert row["cost"] is None and row["local"] is False  # unknown, never 0.0
    out = _usage_json(env)
    assert out["rows"][0]["cost"] is None
    assert out["total"]["cost"] == {} and out["total"]["maybe_billed_requests"] == 1
    p = run_cli("usage", env=env)
    assert p.returncode == 0 and "¥0" not in p.stdout and "unknown" in p.stdout, p.stdout
    assert "1 request with no answer that may have been billed" in " ".join(p.stdout.split())


def test_a_timed_out_request_beside_answers_makes_the_total_open(server, env, isolated_env):
    log = _log(isolated_env)
    server.enqueue(Reply(text="fine"), Reply(delay_s=3))
    with qwenvl.Client(api_key=API_KEY, base_url=server.url, usage_log=log, max_retries=0) as c:
        c.ask("a")
        with pytest.raises(qwenvl.APITimeoutError):
            c.ask("b", timeout_s=0.5)  # delivered, then no reply in time: it may have been billed
    [row] = UsageLog(log).summarize(1)
    assert row["maybe_billed"] == 1 and row["cost"] and row["cost"] > 0
    out = _usage_json(env)
    assert out["total"]["maybe_billed_requests"] == 1
    p = run_cli("usage", env=env)
    assert p.returncode == 0 and "+ ?" in p.stdout, p.stdout
    # the row itself says its cost is open, not only the total: each line with a cost has the marker
    costed = [line for line in p.stdout.splitlines() if "¥" in line]
    assert len(costed) == 2 and all("+ ?" in line for line in costed), p.stdout


def test_refusals_and_connections_never_made_cost_nothing(server, env, isolated_env):
    log = _log(isolated_env)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    server.enqueue(Reply(text="fine"), Reply(status=500), Reply(status=400, error_code="InvalidParameter"))
    with qwenvl.Client(api_key=API_KEY, base_url=server.url, usage_log=log, max_retries=0) as c:
        c.ask("a")
        for _ in range(2):
            with pytest.raises(qwenvl.APIError):
                c.ask("b")
    with (
        qwenvl.Client(api_key=API_KEY, base_url=closed, usage_log=log, max_retries=0) as c,
        pytest.raises(qwenvl.APIConnectionError),
    ):
        c.ask("c")
    rows = UsageLog(log).summarize(1)
    assert sum(r["errors"] for r in rows) == 3 and sum(r["maybe_billed"] for r in rows) == 0
    assert all(r["cost"] is not None for r in rows), rows
    out = _usage_json(env)
    assert out["total"]["maybe_billed_requests"] == 0 and out["total"]["errors"] == 3
    p = run_cli("usage", env=env)
    assert p.returncode == 0 and "+ ?" not in p.stdout and "unknown" not in p.stdout, p.stdout
