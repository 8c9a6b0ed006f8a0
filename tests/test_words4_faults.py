"""Faults a new user found in the words of refusals, each fixed as a kind on every surface.

1. A request field of the wrong type gets a hint in the surface's words saying what the field takes, never the
   field's description (it cites the project's own sources): library (sync, async), CLI flags, ``analyze
   --request`` keys, ``batch --requests`` line keys, ``qwenvl serve`` bodies (both protocols), MCP tool arguments.
2. A bad value of a ``batch --requests`` line: the hint names the line's own key, not the CLI flag.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import DashScopeServer, Reply
from qwenvl.errors import QwenVLError, StructuredOutputError, UsageError
from qwenvl.types import Request

# what no hint may carry: a field's description, or a name of the project's own sources and classes
_INTERNAL = re.compile(r"reference/|§|\.md\b|ModelInfo|Request\.|Response\.|model_fields")
_DESCRIPTIONS = [
    info.description[:30] for info in Request.model_fields.values() if info.description and len(info.description) > 30
]


def leaks(text: str | None) -> list[str]:
    """What of ``text`` quotes a field's description or names an internal file or class."""
    text = text or ""
    found = [d for d in _DESCRIPTIONS if d in text]
    return found + _INTERNAL.findall(text)


def wrong(name: str) -> Any:
    """A value of the wrong type for the Request field ``name``: a number where an object is taken, else an object."""
    return 5 if "dict" in str(Request.model_fields[name].annotation) else {"a": 1}


FIELDS = sorted(Request.model_fields)
# the fields a wrong type of is told by what the field takes (a boolean, a number in its range)
TOLD = {
    "temperature": "temperature takes a number in [0, 2).",
    "seed": "seed takes an integer in [0, 2,147,483,647].",
    "top_p": "top_p takes a number in (0, 1].",
    "enable_thinking": "enable_thinking takes a boolean.",
    "vl_high_resolution_images": "vl_high_resolution_images takes a boolean.",
    "fps": "fps takes a number above 0.",
    "max_pixels": "max_pixels takes an integer 1 or more.",
}


def test_every_field_of_the_wrong_type_is_told_what_it_takes_in_the_library(server: DashScopeServer, png: Path) -> None:
    with make_client(server) as client:
        for name in FIELDS:
            fields = {"prompt": "x", "image": str(png), name: wrong(name)}
            with pytest.raises(QwenVLError) as caught:
                client.complete(**fields)
            hint = caught.value.hint
            assert not leaks(hint) and not leaks(caught.value.message), (name, hint)
            if name in TOLD:
                assert hint == TOLD[name], (name, hint)
            if name in TOLD:  # a word where a number or a boolean is taken: the same hint
                with pytest.raises(QwenVLError) as caught:
                    client.complete(prompt="x", image=str(png), **{name: "hot"})
                assert caught.value.hint == TOLD[name], (name, caught.value.hint)
    assert server.requests == []


def test_every_field_of_the_wrong_type_is_told_what_it_takes_in_the_async_library(
    server: DashScopeServer, png: Path
) -> None:
    async def main() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
            for name in FIELDS:
                with pytest.raises(QwenVLError) as caught:
                    await client.complete(**{"prompt": "x", "image": str(png), name: wrong(name)})
                assert not leaks(caught.value.hint), (name, caught.value.hint)
                if name in TOLD:
                    assert caught.value.hint == TOLD[name], (name, caught.value.hint)

    asyncio.run(main())
    assert server.requests == []


def test_the_cli_flags_of_the_wrong_type_quote_no_description(env: dict[str, str], isolated_env: Path) -> None:
    write_image(isolated_env / "x.png")
    for flag in ("--temperature", "--top-p", "--top-k", "--seed", "--max-tokens", "--fps", "--max-pixels"):
        r = run_cli("ask", "x.png", "-p", "hi", flag, "hot", env=env)
        assert r.returncode == 2 and flag in r.stderr and not leaks(r.stderr), (flag, r.stderr)


def test_every_analyze_request_key_of_the_wrong_type_is_told_in_its_key(
    server: DashScopeServer, env: dict[str, str], isolated_env: Path
) -> None:
    write_image(isolated_env / "x.png")
    for name in FIELDS:
        req = json.dumps({"prompt": "hi", "image": "x.png", name: wrong(name)})
        r = run_cli("analyze", "--request", req, env=env)
        assert r.returncode in (2, 3) and "hint:" in r.stderr and not leaks(r.stderr), (name, r.stderr)
        if name in TOLD:
            assert f"hint: {TOLD[name]}" in r.stderr, (name, r.stderr)
    assert server.requests == []


def test_every_batch_line_key_of_the_wrong_type_is_told_in_the_lines_words(
    server: DashScopeServer, env: dict[str, str], isolated_env: Path
) -> None:
    write_image(isolated_env / "b.png")
    for name in FIELDS:
        (isolated_env / "r.jsonl").write_text(json.dumps({"prompt": "hi", "image": "b.png", name: wrong(name)}) + "\n")
        r = run_cli("batch", "--requests", "r.jsonl", "-o", "out.jsonl", "--yes", env=env)
        assert r.returncode in (2, 3) and "hint:" in r.stderr and not leaks(r.stderr), (name, r.stderr)
        if name in TOLD:
            assert f"hint: {TOLD[name]}" in r.stderr, (name, r.stderr)
    assert server.requests == []


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("max_tokens", 0, "hint: max_tokens takes a number 1 or more"),
        ("top_k", -1, "hint: top_k takes a number 0 or more"),
        ("detail", "hihg", "hint: Did you mean 'high'? detail is one of auto, low, high."),
        ("prompt", "", 'hint: Give the question as words ("prompt": "..."), e.g.'),
        ("temperature", "hot", "hint: temperature takes a number in [0, 2)."),
    ],
)
def test_a_bad_value_of_a_batch_line_is_named_by_the_lines_key(
    server: DashScopeServer, env: dict[str, str], isolated_env: Path, key: str, value: Any, hint: str
) -> None:
    write_image(isolated_env / "b.png")
    (isolated_env / "r.jsonl").write_text(json.dumps({"prompt": "Describe", "image": "b.png", key: value}) + "\n")
    r = run_cli("batch", "--requests", "r.jsonl", "-o", "out.jsonl", "--yes", env=env)
    assert r.returncode == 2 and hint in r.stderr, r.stderr
    assert not re.search(r"hint:.*--(?:max-tokens|top-k|detail|prompt|temperature)\b", r.stderr), r.stderr
    assert server.requests == []


def test_a_flag_given_over_a_batch_line_is_still_named_as_the_flag(
    server: DashScopeServer, env: dict[str, str], isolated_env: Path
) -> None:
    write_image(isolated_env / "b.png")
    (isolated_env / "r.jsonl").write_text(json.dumps({"prompt": "Describe", "image": "b.png"}) + "\n")
    r = run_cli("batch", "--requests", "r.jsonl", "-o", "out.jsonl", "--yes", "--top-k", "-1", env=env)
    assert r.returncode == 2 and "--top-k" in r.stderr, r.stderr


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_every_wire_field_of_the_wrong_type_quotes_no_description_in_serve(
    server: DashScopeServer, isolated_env: Path, protocol: str
) -> None:
    from qwenvl.server.app import ServeSettings, create_app
    from qwenvl.wording import WIRE_PARAMETERS
    from test_serve import SERVE_KEY, Served

    image = "data:image/png;base64," + base64.b64encode(write_image(isolated_env / "a.png").read_bytes()).decode()
    client = qwenvl.AsyncClient(base_url=server.url, api_key=API_KEY, max_retries=0)
    with Served(create_app(client, ServeSettings(api_key=SERVE_KEY))) as s:
        for name in WIRE_PARAMETERS:
            if protocol == "compat":
                content: list[dict[str, Any]] = [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": "hi"},
                ]
                body: dict[str, Any] = {"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": content}]}
                body[name] = wrong(name)
                path = "/compatible-mode/v1/chat/completions"
            else:
                content = [{"image": image}, {"text": "hi"}]
                body = {
                    "model": "qwen3-vl-plus",
                    "input": {"messages": [{"role": "user", "content": content}]},
                    "parameters": {name: wrong(name)},
                }
                path = "/api/v1/services/aigc/multimodal-generation/generation"
            r = httpx.post(s.url + path, json=body, headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=60)
            assert r.status_code == 400 and not leaks(r.text), (name, r.text)
    assert server.requests == []


def test_every_mcp_option_of_the_wrong_type_quotes_no_description(
    server: DashScopeServer, env: dict[str, str], png: Path
) -> None:
    pytest.importorskip("mcp")
    from qwenvl.mcp_server import Options
    from test_mcp import run, stdio_session, text_of

    async def main() -> None:
        async with stdio_session(env) as c:
            for name in Options.model_fields:
                r = await c.call_tool("ask", {"prompt": "hi", "media": [str(png)], "options": {name: {"a": 1}}})
                assert r.is_error and not leaks(text_of(r)), (name, text_of(r))

    run(main)
    assert server.requests == []


# -- 3. a field a turn (or a task) sets itself is refused as such, never a raw TypeError ----------------------------

TURN_SET = ["prompt", "messages", "images", "video"]


@pytest.mark.parametrize("name", TURN_SET)
def test_a_conversation_refuses_a_field_each_turn_sets(server: DashScopeServer, name: str) -> None:
    from qwenvl.chat import Conversation

    value: Any = [] if name in ("messages", "images") else "x"
    with make_client(server) as client:
        with pytest.raises(UsageError) as caught:
            Conversation(client, fields={name: value})
        assert name in caught.value.message and "each turn" in caught.value.message
        conversation = Conversation(client)
        for turn in (conversation.send, lambda text, **kw: list(conversation.stream(text, **kw))):
            with pytest.raises(UsageError) as caught:
                turn("hi", **{name: value})
            assert name in caught.value.message and "each turn" in caught.value.message
        conversation.fields[name] = value  # set after it was made: refused at the turn, not a TypeError
        with pytest.raises(UsageError):
            conversation.send("hi")
    assert server.requests == []


@pytest.mark.parametrize("name", TURN_SET)
def test_an_async_conversation_refuses_a_field_each_turn_sets(server: DashScopeServer, name: str) -> None:
    from qwenvl.chat import Conversation

    value: Any = [] if name in ("messages", "images") else "x"

    async def main() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
            conversation = Conversation(client)
            with pytest.raises(UsageError):
                await conversation.asend("hi", **{name: value})
            with pytest.raises(UsageError):
                async for _ in conversation.astream("hi", **{name: value}):
                    pass

    asyncio.run(main())
    assert server.requests == []


@pytest.mark.parametrize(
    ("task", "name"), [("ground", "prompt"), ("ground", "images"), ("extract", "images"), ("events", "schema")]
)
def test_a_task_refuses_a_field_it_sets_itself(server: DashScopeServer, png: Path, task: str, name: str) -> None:
    import importlib

    grounding = importlib.import_module("qwenvl.tasks.grounding")
    extract = importlib.import_module("qwenvl.tasks.extract")
    events = importlib.import_module("qwenvl.tasks.events")
    value: Any = [str(png)] if name == "images" else "x"
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    with make_client(server) as client:
        with pytest.raises(UsageError) as caught:
            if task == "ground":
                grounding.plan_ground(client, str(png), "dog", **{name: value})
            elif task == "extract":
                extract.plan_extract(client, str(png), schema, **{name: value})
            else:
                events.plan_events(client, [str(png), str(png)], **{name: schema})
        assert name in caught.value.message and "sets" in caught.value.message, caught.value.message
    assert server.requests == []


# -- 4. a failed repair: the error's response counts both requests; every error of a request has request_id --------

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.mark.parametrize("protocol", ["compat", "native"])
@pytest.mark.parametrize("way", ["sync", "stream", "async", "astream"])
def test_a_failed_repair_counts_both_requests_on_its_response(server: DashScopeServer, protocol: str, way: str) -> None:
    server.enqueue(Reply(text="not json"), Reply(text="still not json"))

    async def in_async() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, protocol=protocol, max_retries=0) as client:
            if way == "async":
                await client.complete(prompt="n?", schema=SCHEMA)
            else:
                async for _ in client.stream(prompt="n?", schema=SCHEMA):
                    pass

    with pytest.raises(StructuredOutputError) as caught:
        if way in ("async", "astream"):
            asyncio.run(in_async())
        else:
            with make_client(server, protocol) as client:
                if way == "sync":
                    client.complete(prompt="n?", schema=SCHEMA)
                else:
                    for _ in client.stream(prompt="n?", schema=SCHEMA):
                        pass
    exc = caught.value
    assert len(server.requests) == 2
    assert exc.requests == 2 and len(exc.request_ids) == 2 and len(set(exc.request_ids)) == 2, exc.request_ids
    assert exc.response is not None
    assert exc.response.requests == 2 and exc.response.request_ids == exc.request_ids
    assert exc.request_id == exc.request_ids[-1] == exc.response.request_id


def test_an_unrepaired_answer_has_its_one_request_id(server: DashScopeServer) -> None:
    server.enqueue(Reply(text="not json"))
    with make_client(server) as client, pytest.raises(StructuredOutputError) as caught:
        client.complete(prompt="n?", schema=SCHEMA, repair=False)
    assert caught.value.request_id is not None and caught.value.request_ids == [caught.value.request_id]


@pytest.mark.parametrize("protocol", ["compat", "native"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_request_carries_its_request_id(server: DashScopeServer, protocol: str, stream: bool) -> None:
    server.enqueue(Reply(status=400, error_code="InvalidParameter", error_message="bad"))
    with make_client(server, protocol) as client, pytest.raises(qwenvl.errors.APIStatusError) as caught:
        if stream:
            for _ in client.stream(prompt="hi"):
                pass
        else:
            client.complete(prompt="hi")
    assert caught.value.request_id, caught.value


# -- 5. a library hint naming a pass-through parameter is valid Python for the call ---------------------------------


def test_a_refused_pass_through_parameter_is_named_as_the_call_writes_it() -> None:
    import ast

    from qwenvl.backends.transformers import check_params
    from qwenvl.errors import UnsupportedParameterError

    for extra in ({"enable_search": True}, {"repetition_penalty": 0}):
        with pytest.raises(UnsupportedParameterError) as caught:
            check_params(Request(prompt="hi", extra=extra))
        key = next(iter(extra))
        assert f"--param {key}" in (caught.value.raw_hint or "")  # the CLI's words, kept for the CLI
        hint = caught.value.hint or ""
        said = re.search(r'extra=\{"\w+": [^}]*\}', hint)
        assert said and f'"{key}"' in said[0], hint
        ast.parse(f"f({said[0]})")  # valid Python for the call
        assert "--param" not in hint and "extra='" not in hint, hint


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ("Set --param repetition_penalty=1.1 to change it.", 'Set extra={"repetition_penalty": 1.1} to change it.'),
        ("Give a number, e.g. --param top_k=0.5.", 'Give a number, e.g. extra={"top_k": 0.5}.'),
        ("Keep one --param seed=...; two are ambiguous.", 'Keep one extra={"seed": ...}; two are ambiguous.'),
        ("Leave out --param enable_search.", 'Leave out extra={"enable_search": ...}.'),
    ],
)
def test_library_words_for_a_pass_through_parameter_are_python(raw: str, said: str) -> None:
    from qwenvl.wording import library_hint

    assert library_hint(raw) == said


def test_a_repair_cut_off_counts_both_requests(server: DashScopeServer) -> None:
    server.enqueue(Reply(text="not json"), Reply(text='{"n": ', finish_reason="length"))
    with make_client(server) as client, pytest.raises(StructuredOutputError) as caught:
        client.complete(prompt="n?", schema=SCHEMA)
    exc = caught.value
    assert exc.requests == 2 and len(exc.request_ids) == 2 and exc.request_id == exc.request_ids[-1]
    assert exc.response is not None and exc.response.requests == 2 and exc.response.request_ids == exc.request_ids
