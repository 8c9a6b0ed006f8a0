"""Faithful both ways, CLI side: every value the user gives reaches the wire (issue 8, items 1, 2 and 8).

The CLI runs in process (click's runner, the real `qwenvl` group) against the loopback DashScope server, and the
body it sends is compared with the body the library sends for the same Request, verb by verb, option by option.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import make_client, run_cli, write_image
from dashscope_server import Reply
from qwenvl import retry, transport
from qwenvl.batch import runner
from qwenvl.cli.main import cli
from qwenvl.preview import preview
from qwenvl.tasks.events import plan_events, send_events
from qwenvl.tasks.extract import plan_extract
from qwenvl.tasks.grounding import plan_ground
from qwenvl.tasks.ocr import plan_pages, send_pages

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
EVENTS = json.dumps({"events": [{"start_time": "00:00:00", "end_time": "00:00:01", "event": "a wave"}]})


@pytest.fixture
def media(isolated_env: Path) -> dict[str, Any]:
    frames = [str(write_image(isolated_env / f"f{i}.png", color=(40 * i, 90, 30))) for i in range(4)]
    (isolated_env / "s.json").write_text(json.dumps(SCHEMA))
    return {
        "photo": str(write_image(isolated_env / "photo.png", size=(96, 64))),
        "frames": frames,
        "schema": str(isolated_env / "s.json"),
        "out": str(isolated_env / "out.jsonl"),
    }


def invoke(args: list[str], env: dict[str, str], input: str | bytes | None = None) -> Any:
    return CliRunner().invoke(cli, args, env=env, input=input, catch_exceptions=False)


# --- the verbs: (CLI arguments, the library call that sends the same request, the answer the fake gives) -------
Lib = Callable[[Any, dict[str, Any], dict[str, Any]], Any]


def _lib_stream(client: Any, m: dict[str, Any], f: dict[str, Any]) -> None:
    call = client.plan(prompt="describe", images=[m["photo"]], **f)
    list(client.send_stream(call))


def _lib_chat(client: Any, m: dict[str, Any], f: dict[str, Any]) -> None:
    list(client.send_stream(client.plan(prompt="describe", images=[m["photo"]], messages=[], **f)))


def _lib_analyze(client: Any, m: dict[str, Any], f: dict[str, Any]) -> None:
    client.complete({"prompt": "describe", "image": m["photo"], **f, "repair": False})


def _lib_ocr(client: Any, m: dict[str, Any], f: dict[str, Any]) -> None:
    send_pages(client, m["photo"], plan_pages(client, m["photo"], format="text", **f), format="text")


VERBS: dict[str, tuple[Callable[[dict[str, Any]], list[str]], Lib, str]] = {
    "ask": (lambda m: ["ask", m["photo"], "describe"], _lib_stream, "fine"),
    "ask --no-stream": (
        lambda m: ["ask", "describe", m["photo"], "--no-stream"],
        lambda c, m, f: c.complete(prompt="describe", images=[m["photo"]], **f),
        "fine",
    ),
    "chat": (lambda m: ["chat", m["photo"]], _lib_chat, "fine"),
    "analyze": (lambda m: ["analyze", "--print-response"], _lib_analyze, "fine"),
    "ground": (
        lambda m: ["ground", "the dog", m["photo"]],
        lambda c, m, f: c.send(plan_ground(c, m["photo"], "the dog", **f)),
        '[{"bbox_2d": [10, 10, 500, 500], "label": "dog"}]',
    ),
    "ocr": (lambda m: ["ocr", m["photo"]], _lib_ocr, "TEXT"),
    "extract": (
        lambda m: ["extract", m["photo"], "--schema", m["schema"]],
        lambda c, m, f: c.send(plan_extract(c, m["photo"], SCHEMA, **f)),
        '{"a": 1}',
    ),
    "events": (
        lambda m: ["events", *m["frames"]],
        lambda c, m, f: send_events(c, plan_events(c, m["frames"], **f)),
        EVENTS,
    ),
    "batch": (
        lambda m: ["batch", m["photo"], "-p", "describe", "-o", m["out"], "--yes"],
        lambda c, m, f: c.complete(prompt="describe", image=m["photo"], **f),
        "fine",
    ),
}

# --- the options: (CLI arguments, the Request fields they stand for, the wire parameter and its value) ---------
OPTIONS: dict[str, tuple[list[str], dict[str, Any], str, Any]] = {
    "temperature 0": (["--temperature", "0"], {"temperature": 0.0}, "temperature", 0.0),
    "seed 0": (["--seed", "0"], {"seed": 0}, "seed", 0),
    "top-k 0": (["--top-k", "0"], {"top_k": 0}, "top_k", 0),
    "no-thinking": (["--no-thinking"], {"enable_thinking": False}, "enable_thinking", False),
    "no-high-res": (["--no-high-res"], {"vl_high_resolution_images": False}, "vl_high_resolution_images", False),
    "param =0": (["--param", "presence_penalty=0"], {"extra": {"presence_penalty": 0}}, "presence_penalty", 0),
    # --param values: JSON when they parse (a bool false, a list), Python's False too, "" as given; never dropped
    "param =false": (["--param", "enable_search=false"], {"extra": {"enable_search": False}}, "enable_search", False),
    "param =False": (["--param", "enable_search=False"], {"extra": {"enable_search": False}}, "enable_search", False),
    "param object": (
        ["--param", 'search_options={"forced_search": false}'],
        {"extra": {"search_options": {"forced_search": False}}},
        "search_options",
        {"forced_search": False},
    ),
}


def cli_args(verb: str, m: dict[str, Any], option: list[str], fields: dict[str, Any], protocol: str) -> list[str]:
    args = VERBS[verb][0](m)
    if verb == "analyze":  # the skill's interface: generation values are request keys
        return [
            *args,
            "--request",
            json.dumps({"prompt": "describe", "image": m["photo"], **fields}),
            "--protocol",
            protocol,
        ]
    return [*args, *option, "--protocol", protocol]


def wire_params(body: dict[str, Any], protocol: str) -> dict[str, Any]:
    return body if protocol == "compat" else body["parameters"]


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_sends_every_option_as_the_library_does(server, env, media, protocol, verb, option):
    args, fields, key, value = OPTIONS[option]
    _, library, answer = VERBS[verb]
    server.enqueue(Reply(text=answer, times=2))
    result = invoke(cli_args(verb, media, args, fields, protocol), env, input="describe\n")
    if verb == "events" and key == "vl_high_resolution_images":  # an image budget: a video's frames have their own
        assert result.exit_code == 2 and f"{args[0]} applies to images and PDFs only" in result.stderr, result.stderr
        assert server.requests == []  # refused, never sent to be ignored (media.sources.OPTION_MEDIA)
        return
    assert result.exit_code == 0, result.output + result.stderr
    assert len(server.requests) == 1, "one request, no retry and no repair"
    sent_by_cli = server.requests[0].json
    with make_client(server, protocol) as client:
        library(client, media, dict(fields))
    sent_by_library = server.requests[1].json
    assert wire_params(sent_by_cli, protocol)[key] == value  # 0 and False are values...
    assert type(wire_params(sent_by_cli, protocol)[key]) is type(value)
    assert sent_by_cli == sent_by_library  # ...and the CLI sends exactly what the library sends


@pytest.mark.parametrize("option", list(OPTIONS))
def test_dry_run_shows_every_option_as_the_library_would_send_it(server, env, media, protocol, option):
    args, fields, key, value = OPTIONS[option]
    result = invoke(["ask", media["photo"], "-p", "describe", "--dry-run", *args, "--protocol", protocol], env)
    assert result.exit_code == 0, result.output + result.stderr
    shown = json.loads(result.stdout)["body"]
    with make_client(server, protocol) as client:
        call = client.plan(prompt="describe", images=[media["photo"]], **fields)
        expected = preview(call, protocol=protocol, stream=True)["body"]
    assert wire_params(shown, protocol)[key] == value and shown == expected
    assert server.requests == []


def test_tokens_no_high_res_is_a_value(media):
    def tokens(*args: str) -> int:
        result = CliRunner().invoke(cli, ["tokens", media["photo"], "--json", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["total"]["tokens"]

    Image.new("RGB", (3000, 3000), (9, 9, 9)).save(media["photo"])
    high = tokens("--detail", "high")
    assert tokens("--no-high-res") == tokens() < high == tokens("--high-res")  # False is a value, not dropped
    both = CliRunner().invoke(cli, ["tokens", media["photo"], "--detail", "high", "--no-high-res"])
    assert both.exit_code == 2 and "contradict" in both.output  # as --detail low --high-res is


# --- client-level settings: seen as requests at the server ----------------------------------------------------
def _network_args(verb: str, m: dict[str, Any], protocol: str) -> list[str]:
    return cli_args(verb, m, [], {}, protocol)


@pytest.mark.parametrize("verb", list(VERBS))
def test_max_retries_0_and_backoff_0(server, env, media, protocol, verb, monkeypatch):
    waits: list[float] = []  # each wait before a retry, as computed (the transport's, or the batch's own)

    def recorded(*args: Any, **kw: Any) -> float:
        waits.append(retry.retry_delay(*args, **kw))
        return waits[-1]

    monkeypatch.setattr(transport, "retry_delay", recorded)
    monkeypatch.setattr(runner, "retry_delay", recorded)
    server.enqueue(Reply(status=503, times=10))
    result = invoke([*_network_args(verb, media, protocol), "--max-retries", "0"], env, input="describe\n")
    assert len(server.requests) == 1  # --max-retries 0: no retry
    if verb not in ("batch", "chat", "extract"):  # these report a failed item / turn and go on
        assert result.exit_code == 5
    server.reset()
    server.enqueue(Reply(status=503, times=10))
    again = ["--fresh"] if verb == "batch" else []  # the batch would otherwise resume: nothing left to send
    invoke(
        [*_network_args(verb, media, protocol), "--max-retries", "2", "--retry-backoff-s", "0", *again],
        env,
        input="describe\n",
    )
    assert len(server.requests) == 3
    assert waits == [0.0, 0.0]  # backoff 0: no wait (the default, 1.5 s, would wait 1.1-1.5 s, then 2.3-3 s)


@pytest.mark.parametrize("verb", list(VERBS))
def test_timeout_is_used(server, env, media, verb):
    server.enqueue(Reply(text="late", delay_s=4))
    result = invoke(
        [*_network_args(verb, media, "compat"), "--max-retries", "0", "--timeout", "0.5"], env, input="describe\n"
    )
    assert len(server.requests) == 1
    assert "timed out" in result.output + result.stderr + (Path(media["out"]).read_text() if verb == "batch" else "")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--timeout", "0"], "--timeout"),
        (["--max-retries", "-1"], "--max-retries"),
        (["--max-retries", "21"], "max_retries"),  # the Request's own bound
        (["--model", ""], "--model is empty"),
        (["--region", " "], "--region is empty"),
        (["--pages", ""], "--pages is empty"),
    ],
)
def test_a_given_value_is_never_replaced_by_the_default(server, env, media, args, needle):
    result = invoke(["ask", media["photo"], "-p", "describe", *args], env)
    assert result.exit_code == 2 and needle in result.stderr
    assert server.requests == []


def test_library_keeps_0_and_false(server, protocol, media):
    with make_client(server, protocol, max_retries=0, retry_backoff_s=0) as client:
        server.enqueue(Reply(status=503, times=3))
        with pytest.raises(Exception, match=r"503|unavailable|Unavailable"):
            client.complete(prompt="x", temperature=0, seed=0, top_k=0, enable_thinking=False)
        assert len(server.requests) == 1  # Client(max_retries=0)
        params = wire_params(server.requests[0].json, protocol)
        assert (params["temperature"], params["seed"], params["top_k"], params["enable_thinking"]) == (0, 0, 0, False)


# --- arguments: a missing file never becomes the prompt -------------------------------------------------------
def _ask_texts(server) -> list[str]:
    out = []
    for r in server.requests:
        content = r.json["messages"][-1]["content"]
        out.append(content[-1]["text"])
    return out


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["ask", "{photo}", "nothere.jpg"], 3, "file not found: nothere.jpg"),
        (["ask", "nothere.jpg", "{photo}", "What is it?"], 3, "file not found: nothere.jpg"),
        (["ask", "{photo}", "scans/page"], 3, "file not found: scans/page"),
        (["ask", "{photo}", "clip.mp4", "-p", "x"], 3, "file not found: clip.mp4"),
        (["ask", "{photo}", "what", "is", "this"], 2, "3 arguments are neither files nor URLs"),
        (["ask", "{photo}"], 2, "no prompt"),
        (["ground", "{photo}", "nothere.png"], 3, "file not found: nothere.png"),
        (["ground", "beach.jpg", "dog"], 3, "file not found: beach.jpg"),
        (["ground", "{photo}", "{photo}"], 2, "one image and a query"),
        (["events", "nothere.mp4"], 3, "file not found: nothere.mp4"),
        (["extract", "{photo}", "gone/invoice.pdf", "--schema", "{schema}"], 3, "file not found: gone/invoice.pdf"),
        (["ocr", "nothere.png"], 3, "file not found: nothere.png"),
        (["chat", "nothere.png"], 3, "file not found: nothere.png"),
        (["ask", "-", "-p", "-"], 2, "not both"),
    ],
)
def test_a_missing_file_is_never_the_prompt(server, env, media, args, code, needle):
    args = [a.format(**media) for a in args]
    result = invoke(args, env, input="x\n")
    assert result.exit_code == code, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert server.requests == []


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "What is in this picture?", "{photo}"],
        ["ask", "{photo}", "What is in this picture?"],
        ["ask", "{photo}", "-p", "What is in this picture?"],
        ["ground", "What is in this picture?", "{photo}"],
        ["events", "What is in this picture?", "{frames}"],
    ],
)
def test_the_prompt_first_or_last(server, env, media, args):
    expanded: list[str] = []
    for a in args:
        expanded += media["frames"] if a == "{frames}" else [a.format(**media)]
    server.enqueue(Reply(text=EVENTS if args[0] == "events" else "[]"))
    result = invoke(expanded, env)
    assert result.exit_code == 0, result.stderr
    assert len(server.requests) == 1
    assert "What is in this picture?" in _ask_texts(server)[0]


def test_ask_reads_the_image_from_stdin(server, env, media):
    def copies() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("qwenvl-stdin-*/stdin"))

    before = copies()  # other processes on the machine may hold their own copies meanwhile
    p = run_cli("ask", "-", "-p", "What colour?", env=env, input=Path(media["photo"]).read_bytes())  # cat FILE |
    assert p.returncode == 0, p.stderr
    assert len(server.requests) == 1 and "images=1" in p.stdout
    part = server.requests[0].json["messages"][-1]["content"][0]
    assert part["image_url"]["url"].startswith("data:image/png;base64,")
    p = run_cli("ask", "What colour?", "-", env=env, input=b"")
    assert p.returncode == 3 and "standard input is empty" in p.stderr
    assert len(server.requests) == 1
    assert not copies() - before  # the copies these runs made are removed


@pytest.mark.parametrize("how", ["complete", "stream", "async"])
def test_repair_false_makes_one_request(server, protocol, how):
    import asyncio

    import qwenvl
    from conftest import API_KEY
    from qwenvl.errors import StructuredOutputError

    server.enqueue(Reply(text="not json", times=3))
    fields = {"prompt": "x", "json_mode": True, "repair": False}
    with pytest.raises(StructuredOutputError) as info:
        if how == "async":

            async def go() -> None:
                async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as client:
                    await client.complete(**fields)

            asyncio.run(go())
        else:
            with make_client(server, protocol) as client:
                if how == "stream":
                    list(client.stream(**fields))
                else:
                    client.complete(**fields)
    assert info.value.response.text == "not json" and info.value.response.json is None
    assert len(server.requests) == 1  # no repair request


@pytest.mark.parametrize("task", ["events", "extract"])
def test_an_empty_prompt_is_refused_not_replaced(server, media, task):
    from qwenvl.errors import UsageError

    with make_client(server) as client, pytest.raises(UsageError, match="prompt is empty"):
        if task == "events":
            plan_events(client, media["frames"], prompt="")
        else:
            plan_extract(client, media["photo"], SCHEMA, prompt="")
    assert server.requests == []
