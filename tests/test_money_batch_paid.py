"""An item's paid status and cost have one home (``batch.runner.Paid``): the first request and a structured-output
repair are both paid, a part answered from the response cache is not (0), and the output line, the journal and
the run's summary all say the same numbers. Pinned against a loopback server, real files and real SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import make_client
from dashscope_server import Reply
from qwenvl.batch import Batch, BatchItem
from qwenvl.batch.journal import journal_path
from qwenvl.models import estimate_cost
from qwenvl.store.exchange import key_for

MODEL = "qwen3-vl-plus"
FIRST = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
REPAIR = {"prompt_tokens": 1300, "completion_tokens": 20, "total_tokens": 1320}


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def run(server, tmp_path: Path, out: str) -> tuple[object, dict, dict]:
    items = [BatchItem(id="a", request={"prompt": "the totals as JSON", "json_mode": True, "model": MODEL})]
    with (
        make_client(server, usage_log=False, cache=tmp_path / "r.db") as c,
        Batch(items, tmp_path / out, client=c, concurrency=1) as job,
    ):
        summary = job.run()
    line = json.loads((tmp_path / out).read_text().splitlines()[0])
    with sqlite3.connect(journal_path(tmp_path / out)) as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT cost, cached, input_tokens, output_tokens FROM items").fetchone())
    return summary, line, row


def test_a_repaired_item_costs_both_requests(server, tmp_path):
    server.enqueue(Reply(text="not json", usage=FIRST), Reply(text='{"total": 3}', usage=REPAIR))
    summary, line, row = run(server, tmp_path, "o.jsonl")
    each = estimate_cost(MODEL, 1000, 100) + estimate_cost(MODEL, 1300, 20)  # each request at its own tier
    assert model_calls(server) == 2
    assert line["status"] == "ok" and line["cached"] is False and line["attempts"] == 2
    assert abs(line["cost"] - each) < 1e-9 and abs(row["cost"] - each) < 1e-9
    assert summary.sent == 2 and summary.cached == 0 and abs(summary.cost - round(each, 6)) < 1e-6
    assert summary.input_tokens == 2300 and summary.output_tokens == 120 and row["input_tokens"] == 2300


def test_a_repair_answered_from_the_cache_costs_the_first_request_only(server, tmp_path):
    # a first run pays both; the item's own answer is then dropped from the cache, its repair's kept: the rerun's
    # first request is paid, its repair is answered by the cache (free)
    server.enqueue(Reply(text="not json", usage=FIRST), Reply(text='{"total": 3}', usage=REPAIR))
    run(server, tmp_path, "first.jsonl")
    with make_client(server, usage_log=False, cache=tmp_path / "r.db") as c:
        item_key = key_for(c, c.plan(prompt="the totals as JSON", json_mode=True, model=MODEL))
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute("DELETE FROM responses WHERE key = ?", (item_key,)).rowcount == 1
    server.enqueue(Reply(text="not json", usage=FIRST))
    summary, line, row = run(server, tmp_path, "second.jsonl")
    first = estimate_cost(MODEL, 1000, 100)
    assert model_calls(server) == 3  # the rerun sent its first request only
    assert line["status"] == "ok" and line["cached"] is False and line["attempts"] == 1
    assert abs(line["cost"] - first) < 1e-9 and abs(row["cost"] - first) < 1e-9 and row["cached"] == 0
    assert summary.sent == 1 and summary.cached == 0 and abs(summary.cost - round(first, 6)) < 1e-6
    assert summary.input_tokens == 1000 and summary.output_tokens == 100
    assert line["usage"]["input_tokens"] == 1000  # what was paid


def test_a_repair_still_invalid_costs_both_requests(server, tmp_path):
    server.enqueue(Reply(text="not json", usage=FIRST), Reply(text="still not json", usage=REPAIR))
    summary, line, row = run(server, tmp_path, "o.jsonl")
    each = estimate_cost(MODEL, 1000, 100) + estimate_cost(MODEL, 1300, 20)
    assert line["status"] == "error" and line["attempts"] == 2 and line["cached"] is False
    assert abs(line["cost"] - each) < 1e-9 and abs(row["cost"] - each) < 1e-9
    assert summary.sent == 2 and summary.cached == 0 and summary.error == 1
    assert abs(summary.cost - round(each, 6)) < 1e-6


def test_the_library_answer_says_what_was_paid(server, protocol, tmp_path):
    """``Client.send``: a repair answered from the cache leaves the answer not ``cached`` (its first request was
    paid), ``requests`` 1, and ``answer_cost`` (the CLI's usage line, the usage log's rule) the first's cost."""
    from qwenvl.models import answer_cost

    ask = {"prompt": "the totals as JSON", "json_mode": True, "model": MODEL}
    with make_client(server, protocol, usage_log=False, cache=tmp_path / "r.db") as c:
        server.enqueue(Reply(text="not json"), Reply(text='{"total": 3}'))
        both = c.complete(**ask)
        assert both.requests == 2 and not both.cached and len(both.parts) == 2
        first_cost = answer_cost(both.parts[0])
        assert answer_cost(both) == first_cost + answer_cost(both.parts[1])
        with sqlite3.connect(tmp_path / "r.db") as db:
            db.execute("DELETE FROM responses WHERE key = ?", (key_for(c, c.plan(**ask)),))
        server.enqueue(Reply(text="not json"))
        mixed = c.complete(**ask)
    assert model_calls(server) == 3
    assert mixed.json == {"total": 3} and mixed.requests == 1 and not mixed.cached
    assert answer_cost(mixed) == first_cost
    assert mixed.usage.input_tokens == both.parts[0].usage.input_tokens  # the paid request's tokens
