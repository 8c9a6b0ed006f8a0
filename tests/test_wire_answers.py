"""Issue 8 item 4: nothing the service says is dropped (non-text items, cut-off answers, empty content)."""

from __future__ import annotations

import asyncio
import json

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import Reply
from test_tasks_events import make_clip

BOX = "<ref>shirt</ref><box>(30,6),(994,996)</box>"
ITEMS = [{"box": BOX}, {"result_image": "https://example.invalid/r.png"}]


# --- non-text content items ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_native_box_and_other_items_are_kept(server, stream, png):
    server.enqueue(Reply(content=[{"text": "Found: "}, *ITEMS]))
    with make_client(server, "native") as c:
        r = c.complete(prompt="where is the shirt", image=str(png), model="qwen-vl-max", stream=stream)
    assert r.text == "Found: " + BOX
    assert r.other_content == [{"result_image": "https://example.invalid/r.png"}]
    assert r.messages[-1].content == r.text


def test_async_keeps_items(server, png):
    server.enqueue(Reply(content=ITEMS))

    async def go():
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol="native", base_url=server.url) as c:
            return await c.complete(prompt="shirt", image=str(png), model="qwen-vl-max")

    r = asyncio.run(go())
    assert r.text == BOX and r.other_content == [ITEMS[1]]


def test_ground_reads_native_box_items(server, env, isolated_env):
    img = write_image(isolated_env / "p.png", (1000, 1000))
    server.enqueue(Reply(content=ITEMS))
    p = run_cli("ground", str(img), "shirt", "--protocol", "native", "-m", "qwen3-vl-plus", "--json", env=env)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert [(b["label"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in data["boxes"]] == [("shirt", 30, 6, 994, 996)]
    assert "result_image" in p.stderr and "not shown" in p.stderr


def test_ask_says_what_was_not_shown_and_json_keeps_it(server, env, png):
    server.enqueue(Reply(content=ITEMS), Reply(content=ITEMS))
    p = run_cli("ask", str(png), "shirt", "--protocol", "native", "-m", "qwen-vl-max", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == BOX + "\n"
    assert "1 item that is not text (result_image)" in p.stderr
    p = run_cli("ask", str(png), "shirt", "--protocol", "native", "-m", "qwen-vl-max", "--json", env=env)
    assert json.loads(p.stdout)["other_content"] == [ITEMS[1]]
    assert "not shown" not in p.stderr  # --json shows them


# --- cut off at max_tokens ----------------------------------------------------------------------------------

CUT = "cut off at max_tokens"


@pytest.mark.parametrize("mode", [[], ["--no-stream"], ["--json"]])
def test_ask_cut_off_says_so(server, env, png, protocol, mode):
    server.enqueue(Reply(text="a long answer that stops", finish_reason="length"))
    p = run_cli("ask", str(png), "describe", "--max-tokens", "5", "--protocol", protocol, *mode, env=env)
    assert p.returncode == 0, p.stderr
    assert f"{CUT} (5 tokens)" in p.stderr and "raise --max-tokens" in p.stderr


@pytest.mark.parametrize("mode", [[], ["--no-stream"]])
def test_ask_thinking_that_used_every_token(server, env, protocol, mode):
    """`ask --thinking --max-tokens 64` where everything went to reasoning: no answer, and it says why."""
    server.enqueue(Reply(text="", reasoning="step one step two step three", finish_reason="length"))
    p = run_cli("ask", "-p", "think", "--thinking", "--max-tokens", "64", "--protocol", protocol, *mode, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert "while the model was still thinking" in p.stderr and "--thinking-budget" in p.stderr


@pytest.mark.parametrize("verb", ["ground", "ocr", "extract", "events", "analyze"])
def test_every_task_verb_says_cut_off(server, env, isolated_env, verb):
    png = write_image(isolated_env / "p.png", (200, 120))
    text = {
        "ground": '[{"bbox_2d": [10, 10, 50, 50], "label": "x"}, {"bbox_2d": [1',
        "extract": '{"name": "Bob"}',
        "events": '{"events": [{"start_time": "00:00:00", "end_time": "00:00:01", "event": "red"}]}',
    }.get(verb, "some text")
    server.enqueue(Reply(text=text, finish_reason="length"))
    if verb == "extract":
        (isolated_env / "s.json").write_text(json.dumps({"type": "object", "properties": {"name": {"type": "string"}}}))
        args = ["extract", str(png), "--schema", "s.json"]
    elif verb == "events":
        make_clip(isolated_env / "clip.mp4")
        args = ["events", "clip.mp4"]
    elif verb == "analyze":
        args = ["analyze", "--request", json.dumps({"prompt": "what", "image": str(png)})]
    else:
        args = [verb, str(png), *(["x"] if verb == "ground" else [])]
    p = run_cli(*args, env=env)
    assert p.returncode == (5 if verb == "extract" else 0), p.stderr  # a cut-off structured answer is no success
    # each verb's words: analyze has no --max-tokens, its request has "max_tokens"
    assert CUT in p.stderr and ("raise max_tokens" if verb == "analyze" else "--max-tokens") in p.stderr
    assert verb != "analyze" or "--max-tokens" not in p.stderr
    assert p.stderr.count(CUT) == 1  # said once, not once by the task and again by the verb


# --- content null ------------------------------------------------------------------------------------------


def test_content_null_is_reported_not_printed(server, env, protocol):
    body = (
        {
            "id": "x",
            "model": "qwen3-vl-plus",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": None}}],
            "usage": {},
        }
        if protocol == "compat"
        else {
            "output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": None}}]},
            "usage": {},
            "request_id": "r",
        }
    )
    server.enqueue(Reply(raw_body=json.dumps(body).encode()), Reply(raw_body=json.dumps(body).encode()))
    p = run_cli("ask", "-p", "hi", "--no-stream", "--protocol", protocol, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert "the service sent no answer" in p.stderr
    # streaming request answered with plain JSON: the same
    p = run_cli("ask", "-p", "hi", "--protocol", protocol, env=env)
    assert p.stdout == "" and "the service sent no answer" in p.stderr


def test_library_content_null(server, protocol):
    body = (
        {
            "id": "x",
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": None}}],
        }
        if protocol == "compat"
        else {"output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": None}}]}}
    )
    server.enqueue(Reply(raw_body=json.dumps(body).encode()))
    with make_client(server, protocol) as c:
        r = c.complete(prompt="hi")
    assert r.text == "" and r.other_content is None


def test_batch_records_say_cut_off(server, env, isolated_env, png):
    server.enqueue(Reply(text="half an answ", finish_reason="length"))
    p = run_cli("batch", str(png), "-p", "describe", "-o", "out.jsonl", env=env)
    assert p.returncode == 0, p.stderr
    [rec] = [json.loads(line) for line in (isolated_env / "out.jsonl").read_text().splitlines()]
    assert rec["result"]["finish_reason"] == "length"
    assert any(CUT in w for w in rec["warnings"])


def test_chat_says_cut_off(server, env):
    server.enqueue(Reply(text="half", finish_reason="length"))
    p = run_cli("chat", "--max-tokens", "3", env=env, input="hello\n")
    assert CUT in p.stderr, p.stderr


@pytest.mark.parametrize("verb", ["ask", "extract", "library"])
def test_structured_answer_cut_off_is_not_repaired(server, env, isolated_env, png, verb, protocol):
    """A JSON answer cut off at max_tokens: said so, and no second (paid) request that would be cut off too."""
    server.enqueue(Reply(text='{"name": "Bo', finish_reason="length"))
    (isolated_env / "s.json").write_text(json.dumps({"type": "object", "properties": {"name": {"type": "string"}}}))
    if verb == "library":
        with make_client(server, protocol) as c, pytest.raises(qwenvl.StructuredOutputError, match=CUT):
            c.complete(prompt="name?", json_mode=True, max_tokens=5)
    else:
        args = (
            ["ask", str(png), "name?", "--json-mode"] if verb == "ask" else ["extract", str(png), "--schema", "s.json"]
        )
        p = run_cli(*args, "--max-tokens", "5", "--protocol", protocol, env=env)
        assert p.returncode == 5 and CUT in p.stderr and "--max-tokens" in p.stderr
    assert len(server.requests) == 1
