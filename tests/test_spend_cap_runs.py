"""Every capped run of many requests counts what it really pays, structured-output repairs included, as it runs,
from one home (``batch.runner.SpendCap``): the library's ``Batch.run(max_cost=...)``, ``qwenvl batch --max-cost``,
``extract`` and ``ocr``. The estimate prices one request per item; a repair pays a second, which only the running
spend sees: the request that could take it above the cap is not sent, and what was answered is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import API_KEY, make_client, run_cli
from dashscope_server import Reply
from qwenvl.batch import Batch, BatchItem
from qwenvl.errors import UsageError

MODEL = "qwen3-vl-plus"
PROMPT = "the totals as JSON"


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def items(n: int) -> list[BatchItem]:
    return [
        BatchItem(id=f"i{k}", request={"prompt": PROMPT, "json_mode": True, "model": MODEL, "max_tokens": 50})
        for k in range(n)
    ]


def enqueue_two_repairs(server, per_item_tokens: int) -> None:
    """Each request reports what the estimate priced for one item's (its input, max_tokens out): the first two
    items need a repair (two such requests each), the third answers at once."""
    usage = {"prompt_tokens": per_item_tokens, "completion_tokens": 50, "total_tokens": per_item_tokens + 50}
    for k in range(2):
        server.enqueue(Reply(text="not json", usage=usage), Reply(text=json.dumps({"total": k}), usage=usage))
    server.enqueue(Reply(text='{"total": 2}', usage=usage))


def test_the_library_batch_stops_before_an_item_the_repairs_paid_for_would_take_above_max_cost(server, tmp_path):
    out = tmp_path / "o.jsonl"
    with make_client(server, usage_log=False, cache=False) as c, Batch(items(3), out, client=c, concurrency=1) as job:
        est = job.estimate()
        enqueue_two_repairs(server, est.input_tokens // 3)
        cap = est.cost_max * 1.0001  # the estimate passes; the third item would take the real spend above it
        with pytest.raises(UsageError) as caught:
            job.run(max_cost=cap)
    assert "stopped before i2" in str(caught.value) and "max_cost" in str(caught.value)
    assert model_calls(server) == 4  # two items, each with its repair; the third not sent
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["id"], x["status"]) for x in lines] == [("i0", "ok"), ("i1", "ok")]
    # the same call with room for it resumes: only the item not answered is sent
    server.reset()
    server.enqueue(Reply(text='{"total": 2}'))
    with make_client(server, usage_log=False, cache=False) as c, Batch(items(3), out, client=c, concurrency=1) as job:
        summary = job.run(max_cost=cap * 10)
    assert model_calls(server) == 1 and summary.ok == 3


def test_the_library_batch_refuses_an_estimate_above_max_cost_before_sending(server, tmp_path):
    with (
        make_client(server, usage_log=False, cache=False) as c,
        Batch(items(2), tmp_path / "o.jsonl", client=c, concurrency=1) as job,
    ):
        est = job.estimate()
        with pytest.raises(UsageError, match="above max_cost"):
            job.run(max_cost=est.cost_max / 2)
    assert model_calls(server) == 0


def test_batch_max_cost_counts_the_repairs_already_paid(server, env, isolated_env: Path):
    lines = [{"id": f"i{k}", "prompt": PROMPT, "json_mode": True, "model": MODEL} for k in range(3)]
    (isolated_env / "r.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    base = ["batch", "--requests", "r.jsonl", "-o", "out.jsonl", "--max-tokens", "50", "--concurrency", "1"]
    dry = run_cli(*base, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    est = json.loads(dry.stdout)
    enqueue_two_repairs(server, est["input_tokens"] // 3)
    p = run_cli(*base, "--max-cost", repr(est["cost_max"] * 1.0001), "--no-cache", env=env)
    assert p.returncode == 2, p.stderr
    assert "stopped before i2" in p.stderr and "repair requests included" in p.stderr and "--max-cost" in p.stderr
    assert "Traceback" not in p.stderr and API_KEY not in p.stderr
    assert model_calls(server) == 4
    done = [json.loads(x) for x in (isolated_env / "out.jsonl").read_text().splitlines()]
    assert [(x["id"], x["status"]) for x in done] == [("i0", "ok"), ("i1", "ok")]


def test_ocr_max_cost_counts_what_each_page_really_cost(server, env, isolated_env: Path):
    from test_ocr_page_breaks import write_pdf

    write_pdf(isolated_env / "doc.pdf", pages=3)
    base = ["ocr", "doc.pdf", "--max-tokens", "50", "-o", "out.txt"]
    dry = run_cli(*base, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    total = json.loads(dry.stdout)["total"]
    per_page = total["input_tokens"] // 3
    # each page really takes twice the input the estimate priced: the third page would take the spend above the cap
    usage = {"prompt_tokens": 2 * per_page, "completion_tokens": 50, "total_tokens": 2 * per_page + 50}
    server.enqueue(Reply(text="page one", usage=usage), Reply(text="page two", usage=usage), Reply(text="three"))
    p = run_cli(*base, "--max-cost", repr(total["cost_max"] * 1.0001), env=env)
    assert p.returncode == 2, p.stderr
    assert "stopped before page 3" in p.stderr and "--max-cost" in p.stderr and "Traceback" not in p.stderr
    assert model_calls(server) == 2
    assert (isolated_env / "out.txt").read_text() == "page one\n\fpage two\n\f"
    assert "--pages 3-" in p.stderr  # the way to read the rest, the pages kept


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_library_ocr_max_cost_counts_what_each_page_really_cost(server, tmp_path, kind):
    import asyncio

    import qwenvl
    from qwenvl import tasks
    from qwenvl.tasks.ocr import partial
    from test_ocr_page_breaks import write_pdf

    doc = str(write_pdf(tmp_path / "doc.pdf", pages=3))
    with make_client(server, usage_log=False, cache=False) as c:
        est = tasks.estimate_ocr(c, doc, max_tokens=50)
    per_page = est.input_tokens // 3
    usage = {"prompt_tokens": 2 * per_page, "completion_tokens": 50, "total_tokens": 2 * per_page + 50}
    server.enqueue(Reply(text="page one", usage=usage), Reply(text="page two", usage=usage), Reply(text="three"))
    cap = est.cost_max * 1.0001
    with pytest.raises(UsageError) as caught:
        if kind == "sync":
            with make_client(server, usage_log=False, cache=False) as c:
                tasks.ocr(c, doc, max_tokens=50, max_cost=cap)
        else:

            async def read() -> None:
                async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False, cache=False) as a:
                    await tasks.aocr(a, doc, max_tokens=50, max_cost=cap)

            asyncio.run(read())
    assert "stopped before page 3" in str(caught.value) and "max_cost" in str(caught.value)
    assert model_calls(server) == 2
    kept = partial(caught.value)
    assert kept is not None and [p.text for p in kept.pages] == ["page one", "page two"] and kept.stopped_at == 3


def test_the_batch_counts_a_request_in_flight_at_its_most(server, tmp_path, monkeypatch):
    """Two items at once: while one is in flight (held), the other's repair makes the paid spend 2 of the 3 items'
    most; the third item would fit what was paid, but not with the one in flight at its most: it is not sent, and
    the answer in flight is awaited and kept."""
    import threading

    import qwenvl.batch.runner as runner

    hold = threading.Event()
    decided: list[bool] = []
    reserve = runner.SpendCap.reserve

    def reserve_then_answer(self, most, what):  # the held answer comes once the third item is decided
        try:
            held = reserve(self, most, what)
        except UsageError:
            decided.append(False)
            raise
        else:
            decided.append(True)
            return held
        finally:
            if len(decided) == 3:
                hold.set()

    monkeypatch.setattr(runner.SpendCap, "reserve", reserve_then_answer)
    out = tmp_path / "o.jsonl"
    try:
        with (
            make_client(server, usage_log=False, cache=False) as c,
            Batch(items(3), out, client=c, concurrency=2) as job,
        ):
            est = job.estimate()
            per_item = est.input_tokens // 3
            usage = {"prompt_tokens": per_item, "completion_tokens": 50, "total_tokens": per_item + 50}
            server.enqueue(Reply(text='{"total": 0}', usage=usage, hold=hold))
            server.enqueue(Reply(text="not json", usage=usage), Reply(text='{"total": 1}', usage=usage))
            server.enqueue(Reply(text='{"total": 2}', usage=usage))
            with pytest.raises(UsageError) as caught:
                job.run(max_cost=est.cost_max * 1.0001)
    finally:
        hold.set()
    assert decided == [True, True, False]
    assert "stopped before i2" in str(caught.value) and "in flight" in str(caught.value)
    assert model_calls(server) == 3  # the held item, the other with its repair; the third not sent
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted((x["id"], x["status"]) for x in lines) == [("i0", "ok"), ("i1", "ok")]  # the one in flight kept
