"""Money and the response cache: an error outcome is never cached nor replayed, a replay is never counted as
paid, and a paid cost is never overwritten with 0 (library sync and async, both protocols, the batch, the CLI)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import Reply
from qwenvl.batch import Batch, BatchItem
from qwenvl.store import ResponseCache
from qwenvl.store.exchange import key_for

SCHEMA = {"type": "object", "properties": {"c": {"type": "string"}}, "required": ["c"]}


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("fields", [{"json_mode": True}, {"schema": SCHEMA}])
def test_an_invalid_structured_answer_is_never_replayed(server, protocol, fields, tmp_path):
    server.enqueue(Reply(text="bad", times=2))
    with make_client(server, protocol, usage_log=False, cache=tmp_path / "r.db") as c:
        for _ in range(2):
            before = model_calls(server)
            with pytest.raises(qwenvl.StructuredOutputError) as caught:
                c.complete(prompt="jj", temperature=0.9, **fields)
            assert model_calls(server) - before == 2  # the first answer and its repair: both asked again
            assert caught.value.requests == 2 and not caught.value.response.cached


def test_an_invalid_answer_async(server, protocol, tmp_path):
    server.enqueue(Reply(text="bad", times=2))

    async def main() -> list[tuple[int, bool]]:
        out = []
        async with qwenvl.AsyncClient(
            api_key=API_KEY, protocol=protocol, base_url=server.url, usage_log=False, cache=tmp_path / "r.db"
        ) as c:
            for _ in range(2):
                try:
                    await c.complete(prompt="jj", json_mode=True)
                except qwenvl.StructuredOutputError as exc:
                    out.append((exc.requests, exc.response.cached))
        return out

    assert asyncio.run(main()) == [(2, False), (2, False)]
    assert model_calls(server) == 4


@pytest.mark.parametrize(
    "reply",
    [
        Reply(text="half an ans", finish_reason="length"),  # cut off at max_tokens
        Reply(text="", finish_reason="content_filter"),  # filtered
        Reply(text="nope", finish_reason="content_filter"),
        Reply(text=""),  # empty
    ],
    ids=["length", "filtered-empty", "filtered", "empty"],
)
def test_error_outcomes_are_not_cached(server, protocol, reply, tmp_path):
    server.enqueue(reply)
    with make_client(server, protocol, usage_log=False, cache=tmp_path / "r.db") as c:
        first = c.ask("same")
        second = c.ask("same")
    assert not first.cached and not second.cached and model_calls(server) == 2
    assert first.finish_reason == reply.finish_reason or reply.finish_reason is None


def test_a_cut_off_structured_answer_is_not_cached(server, tmp_path):
    server.enqueue(Reply(text='{"c": "re', finish_reason="length", times=2))
    with make_client(server, usage_log=False, cache=tmp_path / "r.db") as c:
        for _ in range(2):
            with pytest.raises(qwenvl.StructuredOutputError) as caught:
                c.complete(prompt="x", schema=SCHEMA, max_tokens=5)
            assert caught.value.requests == 1 and not caught.value.response.cached
    assert model_calls(server) == 2


def test_a_repaired_answer_is_replayed_unpaid(server, protocol, tmp_path):
    server.enqueue(Reply(text="bad"), Reply(text='{"c": "red"}'))
    with make_client(server, protocol, usage_log=False, cache=tmp_path / "r.db") as c:
        first = c.complete(prompt="kk", schema=SCHEMA)
        assert first.json == {"c": "red"} and first.requests == 2 and not first.cached
        again = c.complete(prompt="kk", schema=SCHEMA)
    assert (
        again.json == {"c": "red"} and again.cached and again.requests == 0 and again.request_ids == [first.request_id]
    )
    assert [m.role for m in again.messages] == ["user", "assistant"]
    assert model_calls(server) == 2


def test_a_replay_is_zero_requests(server, tmp_path):
    with make_client(server, usage_log=False, cache=tmp_path / "r.db") as c:
        assert c.ask("x").requests == 1
        hit = c.ask("x")
    assert hit.cached and hit.requests == 0


def test_an_invalid_entry_an_older_version_stored_is_not_replayed(server, tmp_path):
    """A cache written before this rule may hold an invalid answer: it is ignored, the model is asked."""
    path = tmp_path / "r.db"
    server.enqueue(Reply(text="bad"))  # json_mode=False: a plain answer, cached as any
    with make_client(server, usage_log=False, cache=path) as c:
        call = c.plan(prompt="jj", json_mode=True)
        key = key_for(c, call)
        plain = c.ask("other")
        ResponseCache(path).put(key, plain.model_copy(update={"text": "bad", "messages": []}))
        server.enqueue(Reply(text='{"ok": 1}'))
        before = model_calls(server)
        r = c.send(call)
    assert r.json == {"ok": 1} and not r.cached and r.requests == 1 and model_calls(server) == before + 1
    assert len(server.requests[-1].json["messages"]) == 1  # the question itself, not a repair of the old answer


# --- the batch ------------------------------------------------------------------------------------------------


def test_cli_batch_retry_errors_reaches_the_model(server, env, isolated_env):
    (isolated_env / "s.json").write_text(json.dumps(SCHEMA))
    (isolated_env / "imgs").mkdir()
    write_image(isolated_env / "imgs" / "a.png")
    args = ("batch", "imgs", "-p", "colour", "--schema", "s.json", "-o", "cb.jsonl", "--base-url", server.url)
    p = run_cli(*args, "--yes", "--json", env=env)  # the echo answer is not JSON: an error, paid twice
    assert p.returncode == 0, p.stderr
    [line] = read_jsonl(isolated_env / "cb.jsonl")
    assert line["status"] == "error" and line["cost"] > 0 and line["cached"] is False and model_calls(server) == 2
    paid = line["cost"]
    server.enqueue(Reply(text='{"c": "red"}'))
    p = run_cli(*args, "--yes", "--json", "--retry-errors", env=env)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    [line] = read_jsonl(isolated_env / "cb.jsonl")
    assert model_calls(server) == 3  # sent again, not replayed from the cache
    assert line["status"] == "ok" and line["result"]["json"] == {"c": "red"} and line["cached"] is False
    assert summary["sent"] == 1 and summary["cached"] == 0 and summary["input_tokens"] > 0
    assert line["cost"] > 0 and summary["cost"] == line["cost"] and paid > 0


def test_batch_replay_keeps_the_paid_cost_and_counts_as_cached(server, tmp_path, monkeypatch):
    """An item that failed (paid) and is answered from the cache on --retry-errors: its line keeps the cost it
    was paid (never overwritten with 0), and the run counts it as cached, not sent."""
    monkeypatch.chdir(tmp_path)
    items = [BatchItem(id="a", request={"prompt": "colour", "schema": SCHEMA})]
    with make_client(server, usage_log=False, cache=tmp_path / "r.db") as c:
        server.enqueue(Reply(text="bad", times=2))
        with Batch(items, tmp_path / "o.jsonl", client=c) as job:
            first = job.run()
        [line] = read_jsonl(tmp_path / "o.jsonl")
        assert first.error == 1 and first.sent == 2 and line["cost"] > 0
        paid = line["cost"]
        server.enqueue(Reply(text='{"c": "red"}'))
        c.complete(prompt="colour", schema=SCHEMA)  # now the cache holds a valid answer to the same request
        sent = model_calls(server)
        with Batch(items, tmp_path / "o.jsonl", client=c, retry_errors=True) as job:
            again = job.run()
    [line] = read_jsonl(tmp_path / "o.jsonl")
    assert model_calls(server) == sent  # answered from the cache
    assert line["status"] == "ok" and line["cached"] is True and line["cost"] == paid
    assert again.cached == 1 and again.sent == 0 and again.input_tokens == 0


def test_batch_counts_an_item_sent_past_an_invalid_old_entry(server, tmp_path, monkeypatch):
    """The estimate sees an entry for the item (an invalid answer an older version stored): the item is still sent
    (the entry is not replayed), and the run counts it as sent, not cached."""
    monkeypatch.chdir(tmp_path)
    request = {"prompt": "colour", "json_mode": True}
    with make_client(server, usage_log=False, cache=tmp_path / "r.db") as c:
        plain = c.ask("other")
        key = key_for(c, c.plan(request))
        c.cache.put(key, plain.model_copy(update={"text": "bad", "messages": []}))
        server.enqueue(Reply(text='{"c": "red"}'))
        with Batch([BatchItem(id="a", request=request)], tmp_path / "o.jsonl", client=c) as job:
            summary = job.run()
    [line] = read_jsonl(tmp_path / "o.jsonl")
    assert line["status"] == "ok" and line["cached"] is False and line["cost"] > 0 and line["attempts"] == 1
    assert summary.sent == 1 and summary.cached == 0 and summary.input_tokens > 0
    assert len(server.requests[-1].json["messages"]) == 1  # the question itself, not a repair of the old answer


def test_a_retry_of_an_item_the_cache_did_not_answer_goes_through_the_limiter(server, tmp_path, monkeypatch):
    """An item the estimate expected the cache to answer takes no limiter slot; once sent after all (the entry was
    invalid), its retry after a 429 takes one, so the limiter's pauses and a stop apply (it was resent at once,
    without bound, before)."""
    import qwenvl.batch.runner as runner

    acquired: list[int] = []

    class Counting(runner.AdaptiveLimiter):
        def acquire(self, *args, **kwargs):
            acquired.append(1)
            return super().acquire(*args, **kwargs)

    monkeypatch.setattr(runner, "AdaptiveLimiter", Counting)
    monkeypatch.chdir(tmp_path)
    request = {"prompt": "colour", "json_mode": True}
    with make_client(server, usage_log=False, cache=tmp_path / "r.db") as c:
        plain = c.ask("other")
        key = key_for(c, c.plan(request))
        c.cache.put(key, plain.model_copy(update={"text": "bad", "messages": []}))
        server.enqueue(Reply(status=429, headers={"Retry-After": "0"}), Reply(text='{"c": "red"}'))
        with Batch([BatchItem(id="a", request=request)], tmp_path / "o.jsonl", client=c) as job:
            summary = job.run()
    [line] = read_jsonl(tmp_path / "o.jsonl")
    assert line["status"] == "ok" and summary.sent == 2
    assert len(acquired) == 1  # the first attempt expected the cache (no slot); the retry took one
