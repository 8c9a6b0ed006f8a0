"""The prompt's text counts against the model's context window with the media and the answer's room: a request
that cannot fit is refused before anything is sent (UsageError, exit 2, with how much to cut), one that may not
fit is warned of. Library and CLI, both protocols, sync and async, batch items, a chat that grows too long."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli
from dashscope_server import Reply
from qwenvl.errors import UsageError
from qwenvl.models import model_info
from qwenvl.plan import MAX_ASCII_CHARS_PER_TOKEN, answer_room, check_context, text_tokens
from qwenvl.types import Message, Request

TOO_LONG = "word " * 2_000_000  # 10 MB: at least 1.25M tokens, over any window
NEAR = "word " * 230_000  # 1.15 MB: likely 383K tokens (over 256K), at least 144K (fits): warned, not refused


def model_requests(server) -> list:
    return [r for r in server.requests if r.path.endswith(("/chat/completions", "/generation"))]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "sent"])
def test_a_prompt_past_the_window_is_refused_unsent(server, env, protocol, dry_run):
    p = run_cli("ask", "-p", "-", "--protocol", protocol, *(["--dry-run"] if dry_run else []), env=env, input=TOO_LONG)
    assert p.returncode == 2, p.stderr
    assert "too long for qwen3-vl-plus's context of 262,144 tokens" in p.stderr, p.stderr
    assert "10,000,000 characters" in p.stderr and "nothing was sent" in p.stderr
    assert "Cut the text to under about" in p.stderr and "approximate" in p.stderr
    assert model_requests(server) == []


def test_a_prompt_near_the_window_is_warned_of(server, env):
    p = run_cli("ask", "-p", "-", "--dry-run", env=env, input=NEAR)
    assert p.returncode == 0, p.stderr
    assert "near or over qwen3-vl-plus's context of 262,144" in p.stderr and "may be refused" in p.stderr, p.stderr


def test_max_tokens_takes_room_in_the_window(server):
    """Text that fits with the service's 2K reserve does not with a 32K answer's room."""
    model = model_info("qwen3-vl-plus")
    chars = int((model.context_tokens - 20_000) * MAX_ASCII_CHARS_PER_TOKEN)
    text = "x" * chars
    with make_client(server) as client:
        client.plan(prompt=text, estimate_only=True)  # at least 242K tokens + 2K: fits (warned)
        with pytest.raises(UsageError, match="32,768 are kept for the answer"):
            client.plan(prompt=text, max_tokens=32_768, estimate_only=True)
    assert answer_room(Request(prompt="x", max_tokens=100), model) == 2048
    assert answer_room(Request(prompt="x", max_tokens=100, enable_thinking=True), model) == 4096


def test_library_sync_and_async_refuse(server, caplog):
    with make_client(server) as client:
        with pytest.raises(UsageError, match="too long for qwen3-vl-plus's context"):
            client.plan(prompt=TOO_LONG)
        with caplog.at_level(logging.WARNING, logger="qwenvl"):
            client.plan(prompt=NEAR)
        assert any("may be refused" in r.getMessage() for r in caplog.records)

    async def run() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url) as aclient:
            with pytest.raises(UsageError, match="too long"):
                await aclient.complete(prompt=TOO_LONG)

    asyncio.run(run())
    assert model_requests(server) == []


def test_history_and_system_count_too(server):
    half = "word " * 300_000  # 1.5 MB each: at least 187,500 tokens, fits alone, not together
    with make_client(server) as client:
        client.plan(prompt=half, estimate_only=True)
        with pytest.raises(UsageError, match="the text and the conversation so far") as info:
            client.plan(prompt=half, system=half, estimate_only=True)
        assert "/reset" in (info.value.hint or "")


def test_batch_item_past_the_window_fails_unsent(server, env, isolated_env):
    lines = [{"id": "long", "prompt": TOO_LONG}, {"id": "short", "prompt": "hello"}]
    (isolated_env / "r.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "o.jsonl", "--base-url", server.url, env=env)
    out = {x["id"]: x for x in map(json.loads, (isolated_env / "o.jsonl").read_text().splitlines())}
    assert out["long"]["status"] == "error" and "too long" in json.dumps(out["long"]), (p.stderr, out["long"])
    assert out["short"]["status"] == "ok"
    assert len(model_requests(server)) == 1


def test_a_chat_that_grows_past_the_window_says_so_before_sending(server, env):
    """qwen-vl-ocr's 38,192-token window: the third 120K-character message (with the two before) cannot fit."""
    server.enqueue(Reply(text="ok"), Reply(text="ok"), Reply(text="still here"))
    line = "word " * 24_000
    p = run_cli("chat", "--model", "qwen-vl-ocr", env=env, input=f"{line}\n{line}\n{line}\nhi\n")
    assert p.returncode == 0 or p.returncode == 2, p.stderr
    assert "too long for qwen-vl-ocr's context of 38,192 tokens" in p.stderr, p.stderr
    assert "the conversation is unchanged" in p.stderr
    sent = model_requests(server)
    assert len(sent) == 3  # the first two, then "hi" after the refused one: the chat went on
    assert sent[-1].json["messages"][-1]["content"][-1]["text"] == "hi"


def test_text_tokens_bounds():
    likely, fewest = text_tokens([Message(role="user", content="abc" * 100), Message(role="user", content="图" * 40)])
    assert likely == 114 and fewest == 38 + 10


def test_a_short_message_after_a_long_history_is_told_to_start_anew(server):
    """Found by a new user: a 5-character message after a long history was told to cut "the text" to 780,287
    characters; it is the earlier turns that do not fit."""
    history = [
        Message(role="user", content="word " * 40_000),
        Message(role="assistant", content="ok"),
        Message(role="user", content="word " * 40_000),
        Message(role="assistant", content="ok"),
    ]
    with make_client(server) as client, pytest.raises(UsageError) as info:
        client.plan(prompt="hello", messages=history, model="qwen-vl-ocr")
    assert "start a new conversation" in (info.value.hint or "") and "Cut the text" not in (info.value.hint or "")


def test_a_max_tokens_too_large_for_the_text_says_to_lower_it(server, env):
    """When the text would fit but max_tokens leaves it no room, the hint says to lower max_tokens (it used to
    say to cut the text to under 0 characters)."""
    model = model_info("qwen3-vl-plus")
    text = "x" * int((model.context_tokens - 20_000) * MAX_ASCII_CHARS_PER_TOKEN)
    with make_client(server) as client, pytest.raises(UsageError) as info:
        client.plan(prompt=text, max_tokens=32_768, estimate_only=True)
    hint = info.value.hint or ""
    assert "Lower max_tokens (32,768) to at most about" in hint and "Cut the text" not in hint, hint
    p = run_cli("ask", "-p", "-", "--max-tokens", "32768", "--dry-run", env=env, input=text)
    assert p.returncode == 2 and "Lower --max-tokens (32,768)" in p.stderr, p.stderr


def test_a_local_model_keeps_max_tokens_alone_for_the_answer():
    """No service keeps a reserve for a local model: its room is max_tokens, and the refusal says so."""
    import dataclasses

    local = dataclasses.replace(model_info("qwen3-vl-plus"), local_family=True, known=False)
    assert answer_room(Request(prompt="x", max_tokens=100), local) == 100
    text = "x" * int(local.context_tokens * MAX_ASCII_CHARS_PER_TOKEN * 1.5)
    with pytest.raises(UsageError) as info:
        check_context([], local, Request(prompt=text, max_tokens=100), [Message(role="user", content=text)])
    assert "(max_tokens); nothing was sent" in str(info.value) and "service" not in str(info.value)
