"""A response cache shared by two accounts never answers one with the other's answer: the cache key holds a hash
of the key in use (never the key itself) and DashScope's base URL. Library (sync and async, both protocols) and
``qwenvl batch`` (whose cache is on by default)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import qwenvl
from conftest import make_client, run_cli
from dashscope_server import Reply

KEY_A, KEY_B = "sk-account-a-0123456789", "sk-account-b-9876543210"


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def test_two_keys_sharing_a_cache_each_get_their_own_answer(server, protocol, tmp_path):
    cache = tmp_path / "shared" / "responses.db"
    server.api_key = KEY_A
    server.enqueue(Reply(text="the answer billed to A"))
    with make_client(server, protocol, api_key=KEY_A, cache=cache, usage_log=False) as a:
        assert a.ask("same question").text == "the answer billed to A"
        assert a.ask("same question").cached  # the account's own answer is replayed
    server.api_key = KEY_B  # another account, same endpoint, same model, same question
    server.enqueue(Reply(text="the answer billed to B"))
    with make_client(server, protocol, api_key=KEY_B, cache=cache, usage_log=False) as b:
        answer = b.ask("same question")
    assert answer.text == "the answer billed to B" and not answer.cached
    assert model_calls(server) == 2
    stored = b"".join(p.read_bytes() for p in cache.parent.iterdir())
    assert KEY_A.encode() not in stored and KEY_B.encode() not in stored  # never the key on disk


def test_async_client_keys_by_account_too(server, tmp_path):
    cache = tmp_path / "responses.db"

    async def ask(key: str) -> qwenvl.Response:
        async with qwenvl.AsyncClient(api_key=key, base_url=server.url, cache=cache, usage_log=False) as c:
            return await c.ask("same question")

    server.api_key = KEY_A
    server.enqueue(Reply(text="A's"))
    assert asyncio.run(ask(KEY_A)).text == "A's"
    server.api_key = KEY_B
    server.enqueue(Reply(text="B's"))
    answer = asyncio.run(ask(KEY_B))
    assert answer.text == "B's" and not answer.cached
    assert model_calls(server) == 2


def test_batch_runs_of_two_accounts_do_not_share_answers(server, isolated_env):
    requests = isolated_env / "r.jsonl"
    requests.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) + "\n" for i in range(3)))
    env = {"DASHSCOPE_COMPATIBLE_BASE_URL": server.compat_base, "DASHSCOPE_HTTP_BASE_URL": server.native_base}
    server.api_key = KEY_A
    p = run_cli("batch", "--requests", str(requests), "-o", "a.jsonl", "-y", env={**env, "DASHSCOPE_API_KEY": KEY_A})
    assert p.returncode == 0, p.stderr
    assert model_calls(server) == 3
    server.api_key = KEY_B
    server.enqueue(Reply(text="B's answer", times=3))
    p = run_cli("batch", "--requests", str(requests), "-o", "b.jsonl", "-y", env={**env, "DASHSCOPE_API_KEY": KEY_B})
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in Path("b.jsonl").read_text().splitlines()]
    assert model_calls(server) == 6
    assert [line["cached"] for line in lines] == [False] * 3
    assert {line["result"]["text"] for line in lines} == {"B's answer"}
