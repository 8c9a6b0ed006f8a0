"""On --json, a failure that was paid for keeps what was paid: an answer still not valid JSON (for the schema) after
its repair request gives ``{"error": {..., "raw_text", "errors", "usage", "cost", "currency", "local", "requests",
"request_ids"}}`` on stdout, the same facts as the ``paid:`` line on stderr, for every verb whose answer is JSON.

A new user found `events clip.mp4 --json` and `ask beach.jpg -p x --schema inv.schema.json --json` printed only
``{"error": {"type": "StructuredOutputError", ..., "request_id": null, "exit_code": 5}}``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli, write_image
from dashscope_server import DashScopeServer, Reply
from test_tasks_events import make_clip

SCHEMA = '{"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}'


@pytest.fixture
def media(isolated_env: Path) -> Path:
    write_image(isolated_env / "beach.jpg", (64, 48), fmt="JPEG")
    (isolated_env / "inv.schema.json").write_text(SCHEMA)
    make_clip(isolated_env / "clip.mp4")
    return isolated_env


CASES = {
    "ask --schema": ["ask", "beach.jpg", "-p", "x", "--schema", "inv.schema.json", "--json"],
    "ask --json-mode": ["ask", "beach.jpg", "-p", "x", "--json-mode", "--json"],
    "events": ["events", "clip.mp4", "--json"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_json_error_keeps_the_paid_answer(
    case: str, media: Path, server: DashScopeServer, env: dict[str, str], protocol: str
) -> None:
    server.enqueue(Reply(text="Sorry, no JSON here.", usage=None, times=2))
    p = run_cli(*CASES[case], "--protocol", protocol, env=env)
    assert p.returncode == 5, p.stderr
    assert len(server.requests) == 2  # the answer and its repair, both paid
    error = json.loads(p.stdout)["error"]
    assert error["type"] == "StructuredOutputError" and error["exit_code"] == 5
    assert error["raw_text"] == "Sorry, no JSON here." and error["errors"]
    assert error["requests"] == 2 and len(error["request_ids"]) == 2
    assert error["request_id"] == error["request_ids"][-1]
    assert error["usage"]["input_tokens"] > 0 and error["usage"]["output_tokens"] > 0
    assert error["cost"] > 0 and error["currency"] == "CNY" and error["local"] is False
    # the same facts as the paid: line on stderr
    paid = next(line for line in p.stderr.splitlines() if line.startswith("paid:"))
    assert all(rid in paid for rid in error["request_ids"])
    assert f"{error['usage']['input_tokens']:,} in" in paid
