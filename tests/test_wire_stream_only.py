"""Issue 8 item 3: a stream-only model (QVQ) is streamed on the wire by every path, and the answer assembled."""

from __future__ import annotations

import asyncio
import json

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import STREAM_ONLY_MESSAGE, Reply
from qwenvl.backends.dashscope import policy_for
from qwenvl.models import model_info
from test_tasks_events import make_clip


def _streamed(server) -> list[bool]:
    """For each model request: was it a streaming one (compat "stream": true, native SSE header)?"""
    out = []
    for req in server.requests:
        if req.path.endswith("/chat/completions"):
            out.append(req.json.get("stream") is True)
        elif req.path.endswith("/generation"):
            out.append(req.headers.get("X-DashScope-SSE") == "enable")
    return out


def test_the_table_marks_qvq_stream_only():
    assert model_info("qvq-max").stream_only and model_info("qvq-plus-latest").stream_only
    assert model_info("qvq-max-2025-05-15").stream_only and model_info("qvq-next").stream_only  # guessed family
    assert not model_info("qwen3-vl-plus").stream_only


def test_the_fake_refuses_non_streaming_qvq(server, protocol):
    """The loopback server behaves as the service does (so the tests below would fail without the fix)."""
    with make_client(server, protocol, max_retries=0) as c:
        # a stream-only call forced past the backend's rule: straight to the transport with stream=False
        call = c.plan(prompt="hi", model="qvq-max")
        w = c.backend._wire
        with pytest.raises(qwenvl.BadRequestError, match="only support stream"):
            c.backend.transport.post_json(w.url(call), w.body(call, False), policy_for(call), w.headers(call, False))


def test_complete_streams_and_assembles_sync(server, protocol, png):
    server.enqueue(Reply(text="a red square", reasoning="let me look"))
    with make_client(server, protocol) as c:
        r = c.complete(prompt="what?", image=str(png), model="qvq-max")
    assert r.text == "a red square" and r.reasoning == "let me look"
    assert r.usage.input_tokens == 110 and r.finish_reason == "stop"
    assert _streamed(server) == [True]


def test_complete_streams_and_assembles_async(server, protocol, png):
    server.enqueue(Reply(text="a red square", reasoning="hmm"))

    async def go():
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as c:
            return await c.complete(prompt="what?", image=str(png), model="qvq-plus")

    r = asyncio.run(go())
    assert r.text == "a red square" and r.reasoning == "hmm"
    assert _streamed(server) == [True]


def test_json_mode_repair_also_streams(server, protocol):
    """The structured-output repair request is a second call: it streams too."""
    server.enqueue(Reply(text="not json"), Reply(text='{"a": 1}'))
    with make_client(server, protocol) as c:
        r = c.complete(prompt="give json", model="qvq-max", json_mode=True)
    assert r.json == {"a": 1}
    assert _streamed(server) == [True, True]


@pytest.mark.parametrize(
    "verb", ["ask-json", "ask-no-stream", "ground", "ocr", "extract", "events", "analyze", "batch"]
)
def test_every_verb_streams_for_qvq(server, env, isolated_env, verb, protocol):
    png = write_image(isolated_env / "p.png", (200, 120))
    text = {
        "ground": '[{"bbox_2d": [10, 10, 50, 50], "label": "x"}]',
        "extract": '{"name": "Bob"}',
        "events": '{"events": [{"start_time": "00:00:00", "end_time": "00:00:01", "event": "red"}]}',
    }.get(verb, "the answer")
    server.enqueue(Reply(text=text, reasoning="thinking it over"))
    common = ["--protocol", protocol, "-m", "qvq-max"]
    if verb == "ask-json":
        args = ["ask", str(png), "what", "--json", *common]
    elif verb == "ask-no-stream":
        args = ["ask", str(png), "what", "--no-stream", *common]
    elif verb == "ground":
        args = ["ground", str(png), "x", *common]
    elif verb == "ocr":
        args = ["ocr", str(png), *common]
    elif verb == "extract":
        (isolated_env / "s.json").write_text(json.dumps({"type": "object", "properties": {"name": {"type": "string"}}}))
        args = ["extract", str(png), "--schema", "s.json", *common]
    elif verb == "events":
        make_clip(isolated_env / "clip.mp4")
        args = ["events", "clip.mp4", *common]
    elif verb == "analyze":
        args = [
            "analyze",
            "--request",
            json.dumps({"prompt": "what", "image": str(png), "model": "qvq-max"}),
            "--protocol",
            protocol,
        ]
    else:
        args = ["batch", str(png), "-p", "what", "-o", "out.jsonl", *common]
    p = run_cli(*args, env=env)
    assert STREAM_ONLY_MESSAGE not in p.stderr
    assert p.returncode == 0, p.stderr
    assert _streamed(server) and all(_streamed(server)), _streamed(server)
