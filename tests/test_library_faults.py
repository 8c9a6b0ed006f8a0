"""Faults a new user of the library met, each as a kind: durations, blank values, async tasks, the key hint,
client lifecycle, media objects, swapped arguments, non-object schemas, lenient JSON, chat commands, snapshots.
Against the loopback DashScope double, both protocols, sync and async."""

from __future__ import annotations

import asyncio
import math

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli
from qwenvl._constants import MAX_DURATION_S
from qwenvl.errors import UsageError

# --- 1. durations: non-finite and absurdly large values are refused, everywhere ---------------------------------

BAD_SECONDS = [math.inf, -math.inf, math.nan, 1e12, MAX_DURATION_S * 2]


@pytest.mark.parametrize("value", BAD_SECONDS)
def test_client_timeout_must_be_finite_and_at_most_a_day(server, value):
    for cls in (qwenvl.Client, qwenvl.AsyncClient):
        with pytest.raises(UsageError, match="timeout_s"):
            cls(api_key=API_KEY, base_url=server.url, timeout_s=value, usage_log=False)


@pytest.mark.parametrize("value", BAD_SECONDS)
def test_call_timeout_is_refused_before_sending(server, protocol, png, value):
    with make_client(server, protocol, usage_log=False) as client:
        with pytest.raises(UsageError, match="timeout_s"):
            client.complete(prompt="hi", image=str(png), timeout_s=value)

        async def go() -> None:
            async with qwenvl.AsyncClient(
                api_key=API_KEY, protocol=protocol, base_url=server.url, usage_log=False
            ) as aclient:
                with pytest.raises(UsageError, match="timeout_s"):
                    await aclient.complete(prompt="hi", image=str(png), timeout_s=value)

        asyncio.run(go())
    assert server.requests == []


def test_a_day_is_the_longest_timeout_and_is_accepted(server, png):
    with make_client(server, usage_log=False, timeout_s=MAX_DURATION_S) as client:
        assert client.ask("hi", str(png)).text


@pytest.mark.parametrize("value", [math.inf, math.nan, 1e12])
def test_other_float_fields_refuse_non_finite(value):
    with pytest.raises(qwenvl.UsageError):
        qwenvl.Client(usage_log=False).request(prompt="hi", temperature=value, fps=value)


@pytest.mark.parametrize(
    "part",
    [
        {"type": "video", "video": ["a.png", "b.png"], "fps": 0},
        {"type": "video", "video": ["a.png", "b.png"], "fps": math.inf},
        {"type": "video", "video": "clip.mp4", "fps": -2.0},
        {"type": "video", "video": "clip.mp4", "max_pixels": 0},
        {"type": "image", "image": "a.png", "min_pixels": 0},
        {"type": "image", "image": "a.png", "max_pixels": -5},
    ],
)
def test_a_message_parts_own_fps_and_pixels_follow_the_requests_rules(part):
    """A part's fps and pixel bounds are refused as the request's are (fps 0 once divided by zero while the
    frames were planned); nothing is read or sent."""
    history = [{"role": "user", "content": [part, {"type": "text", "text": "what happens?"}]}]
    with pytest.raises(qwenvl.UsageError):
        qwenvl.Client(usage_log=False).request(messages=history)


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "photo.png", "hi", "--timeout", "1e12"],
        ["ask", "photo.png", "hi", "--timeout", "inf"],
        ["ask", "photo.png", "hi", "--timeout", "nan"],
        ["batch", "in.jsonl", "-o", "out.jsonl", "--poll-interval", "1e12"],
        ["serve", "--request-timeout", "1e12"],
        ["batch", "status", "batch_1", "--timeout", "1e12"],
    ],
)
def test_cli_durations_are_usage_errors(env, png, args):
    args = [str(png) if a == "photo.png" else a for a in args]
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert f"Invalid value for '{args[-2]}'" in result.stderr  # the option named, not another refusal


def test_library_duration_settings(tmp_path):
    from qwenvl.batch.runner import Batch
    from qwenvl.server.app import ServeSettings

    with pytest.raises(UsageError, match="request_timeout_s"):
        ServeSettings(request_timeout_s=math.inf)
    with pytest.raises(UsageError, match="poll_interval_s"):
        Batch([], tmp_path / "out.jsonl", poll_interval_s=1e12, usage_log=False, cache=False)


# --- 2. blank values are refused; empty collections that mean "none" are not sent --------------------------------


@pytest.mark.parametrize(
    "option",
    ["base_url", "model", "api_key", "protocol", "region", "backend"],
)
def test_blank_client_options_are_refused(option):
    for cls in (qwenvl.Client, qwenvl.AsyncClient):
        with pytest.raises(UsageError, match=f"^{option} is empty$") as info:
            cls(**{option: ""}, usage_log=False)
        assert option in (info.value.hint or "")
        with pytest.raises(UsageError, match=f"{option} is empty"):
            cls(**{option: "  "}, usage_log=False)


@pytest.mark.parametrize("field", ["model", "system", "stop", "base_url", "pages", "tool_choice", "image", "video"])
def test_blank_request_fields_are_refused(server, protocol, field):
    with make_client(server, protocol, usage_log=False) as client, pytest.raises(UsageError, match=f"{field} is empty"):
        client.complete(prompt="hi", **{field: ""})
    assert server.requests == []


def test_blank_item_of_a_stop_list_is_refused(server):
    with make_client(server, usage_log=False) as client, pytest.raises(UsageError, match="stop is empty"):
        client.complete(prompt="hi", stop=["END", ""])


def test_empty_tools_and_stops_are_not_sent(server, protocol):
    with make_client(server, protocol, usage_log=False) as client:
        client.complete(prompt="hi", tools=[], stop=[])
    body = server.requests[-1].json
    for key in ("tools", "stop"):
        assert key not in body and key not in body.get("parameters", {})


def test_blank_rule_has_one_wording_library_and_cli(env, png):
    result = run_cli("ask", str(png), "hi", "--model", "", env=env)
    assert result.returncode == 2
    with pytest.raises(UsageError) as info:
        qwenvl.Client(model="", usage_log=False)
    assert "is empty" in result.stderr and str(info.value.message) == "model is empty"
    assert "Give a value, or leave" in result.stderr and info.value.hint.startswith("Give a value, or leave")


# --- 3. tasks with an AsyncClient: awaitable variants, the same request and reading -----------------------------


def _async_client(server, protocol: str = "compat") -> qwenvl.AsyncClient:
    return qwenvl.AsyncClient(
        api_key=API_KEY, protocol=protocol, base_url=server.url, retry_backoff_s=0.01, usage_log=False
    )


def test_async_tasks_send_what_the_sync_ones_send(server, protocol, png):
    from dashscope_server import Reply
    from qwenvl import tasks

    answer = '[{"bbox_2d": [100, 100, 500, 500], "label": "x"}]'
    server.enqueue(Reply(text=answer))
    with make_client(server, protocol, usage_log=False) as client:
        sync = tasks.ground(client, png, "x")
    sync_body = server.requests[-1].json

    async def go():
        async with _async_client(server, protocol) as aclient:
            server.enqueue(Reply(text=answer))
            g = await tasks.aground(aclient, png, "x")
            server.enqueue(Reply(text='{"total": 3}'))
            e = await tasks.aextract(aclient, png, {"type": "object", "properties": {"total": {"type": "number"}}})
            server.enqueue(Reply(text="some text"))
            o = await tasks.aocr(aclient, png)
            server.enqueue(Reply(text='{"total": 4}'))
            many = [x async for x in tasks.aextract_many(aclient, [png, "missing.png"], {"type": "object"})]
            return g, e, o, many

    g, e, o, many = asyncio.run(go())
    assert server.requests[-5].json == sync_body  # the same request
    assert [b.model_dump() for b in g.boxes] == [b.model_dump() for b in sync.boxes] and g.boxes
    assert g.image == str(png)
    assert e.json == {"total": 3}
    assert o.text == "some text"
    assert many[0].json == {"total": 4} and many[1].error and "missing.png" in many[1].error


def test_async_events(server, tmp_path):
    from conftest import write_image
    from dashscope_server import Reply
    from qwenvl import tasks

    frames = [write_image(tmp_path / f"f{i}.png", color=(i * 40, 0, 0)) for i in range(4)]
    server.enqueue(Reply(text='{"events": [{"start_time": "00:00:00", "end_time": "00:00:01", "event": "red"}]}'))

    async def go():
        async with _async_client(server) as aclient:
            return await tasks.aevents(aclient, frames, fps=2)

    timeline = asyncio.run(go())
    assert [e.event for e in timeline.events] == ["red"]


def test_sync_task_refuses_an_async_client_at_once(server, png):
    from qwenvl import tasks

    async def go():
        async with _async_client(server) as aclient:
            for name, args in (("ground", (png, "x")), ("ocr", (png,)), ("extract", (png, {"type": "object"}))):
                with pytest.raises(TypeError, match=rf"await tasks\.a{name}"):
                    getattr(tasks, name)(aclient, *args)
            with pytest.raises(TypeError, match=r"await tasks\.aevents"):
                tasks.events(aclient, "clip.mp4")

    with _no_warnings():
        asyncio.run(go())
    assert server.requests == []
    with make_client(server, usage_log=False) as client, pytest.raises(TypeError, match=r"tasks\.ground"):
        asyncio.run(tasks.aground(client, png, "x"))


class _no_warnings:
    """No "coroutine was never awaited" RuntimeWarning while the block runs."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.seen = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        import gc

        gc.collect()
        self._catch.__exit__(*exc)
        assert not [w for w in self.seen if "never awaited" in str(w.message)]


def test_blank_task_arguments_are_refused(server, png):
    from qwenvl import tasks

    with make_client(server, usage_log=False) as client:
        with pytest.raises(UsageError, match="query is empty"):
            tasks.ground(client, png, " ")
        with pytest.raises(UsageError, match="task is empty"):
            tasks.ocr(client, png, task="")
        with pytest.raises(UsageError, match="prompt is empty"):
            tasks.extract(client, png, {"type": "object"}, prompt="")
    assert server.requests == []


# --- 4. the no-key hint: one home, the same in the library and the CLI ------------------------------------------


def test_no_key_hint_is_the_same_in_library_and_cli(server, png):
    from qwenvl.batch.batchapi import BatchAPI
    from qwenvl.errors import MissingAPIKeyError

    result = run_cli("ask", str(png), "hi", "--base-url", server.url)
    assert result.returncode == 4
    with qwenvl.Client(base_url=server.url, usage_log=False) as client, pytest.raises(MissingAPIKeyError) as sync:
        client.ask("hi", png)

    async def go():
        async with qwenvl.AsyncClient(base_url=server.url, usage_log=False) as aclient:
            await aclient.ask("hi", png)

    with pytest.raises(MissingAPIKeyError) as aio:
        asyncio.run(go())
    with pytest.raises(MissingAPIKeyError) as batch:
        BatchAPI(base_url=server.url)
    hint = sync.value.hint
    assert "DASHSCOPE_API_KEY=local" in hint and "is not a DashScope endpoint" in hint
    assert aio.value.hint == hint == batch.value.hint
    raw = sync.value.raw_hint  # the CLI shows the same hint; the library's adds that the key is an argument too
    assert " ".join(raw.split()) in " ".join(result.stderr.replace("hint:", "").split())
    assert hint.endswith("Client(api_key=...).") and "Client(api_key" not in result.stderr
    assert server.requests == []


# --- 5. client lifecycle: closed clients and a second event loop -------------------------------------------------


def test_closed_client_raises_one_typed_error(server, protocol, png):
    from qwenvl.errors import ClientClosedError

    client = make_client(server, protocol, usage_log=False)
    assert client.ask("hi", png).text
    client.close()
    client.close()  # twice: nothing
    sent = len(server.requests)
    for use in (
        lambda: client.ask("hi", png),
        lambda: list(client.stream(prompt="hi")),
        lambda: client.complete(prompt="hi", stream=True),
    ):
        with pytest.raises(ClientClosedError, match="this Client is closed") as info:
            use()
        assert "close()" in info.value.hint and info.value.exit_code == 2

    async def go():
        aclient = _async_client(server, protocol)
        assert (await aclient.ask("hi", png)).text
        await aclient.aclose()
        with pytest.raises(ClientClosedError, match="this AsyncClient is closed"):
            await aclient.ask("hi", png)
        with pytest.raises(ClientClosedError):
            [e async for e in aclient.stream(prompt="hi")]
        await aclient.aclose()

    asyncio.run(go())
    assert len(server.requests) == sent + 1


def test_async_client_serves_one_asyncio_run_after_another(server, png):
    aclient = _async_client(server)
    for _ in range(3):  # each loop's connections closed as it ends (no ResourceWarning: warnings are errors)
        assert asyncio.run(aclient.ask("hi", png)).text

    async def both():
        return [e.type async for e in aclient.stream(prompt="hi")]

    assert asyncio.run(both())[-1] == "done"
    asyncio.run(aclient.aclose())
    assert len(server.requests) == 4


def test_async_client_in_two_open_loops_at_once_says_so(server, png):
    import httpx

    from qwenvl.errors import ClientClosedError

    loop = asyncio.new_event_loop()
    aclient = _async_client(server)
    try:
        assert loop.run_until_complete(aclient.ask("hi", png)).text
        with pytest.raises(ClientClosedError, match="another event loop, still open") as info:
            asyncio.run(aclient.ask("hi", png))
        assert "one AsyncClient per event loop" in info.value.hint
    finally:
        loop.run_until_complete(aclient.aclose())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    # an http_client of the caller's cannot be made again in a new loop (no connection kept: none left open)
    http = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))
    aclient = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, http_client=http, usage_log=False)
    assert asyncio.run(aclient.ask("hi", png)).text
    with pytest.raises(ClientClosedError, match="another event loop"):
        asyncio.run(aclient.ask("hi", png))
    asyncio.run(http.aclose())
    assert len(server.requests) == 2


# --- 6. media as objects: os.PathLike everywhere a file is named; bytes and PIL images for images ---------------


def _sent_image(server, protocol: str) -> str:
    content = server.requests[-1].json
    messages = content["messages"] if protocol == "compat" else content["input"]["messages"]
    parts = messages[-1]["content"]
    return next(p["image_url"]["url"] if "image_url" in p else p["image"] for p in parts if "image" in str(p))


def test_images_as_path_bytes_and_pil(server, protocol, png):
    from PIL import Image

    with make_client(server, protocol, usage_log=False) as client:
        client.ask("hi", str(png))
        by_name = _sent_image(server, protocol)
        for image in (png, png.read_bytes(), bytearray(png.read_bytes()), Image.open(png)):
            assert "images=1" in client.ask("hi", image).text
            assert _sent_image(server, protocol) == by_name  # the same pixels, prepared the same way
        client.complete(prompt="hi", image=[png], images=[Image.new("RGBA", (40, 30))])
        with pytest.raises(qwenvl.MediaError):
            client.ask("hi", b"not an image at all")


def test_paths_in_histories_schemas_videos_and_tasks(server, png, tmp_path):
    import json

    from dashscope_server import Reply
    from qwenvl import tasks
    from qwenvl.types import ImagePart, Message, TextPart

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object"}))
    frames = [png, png.read_bytes()]
    with make_client(server, usage_log=False) as client:
        history = [Message(role="user", content=[ImagePart(image=png), TextPart(text="hi")])]
        history.append(Message(role="assistant", content="a red square"))
        assert "images=2" in client.complete(prompt="and now?", messages=history, image=png).text
        assert client.request(prompt="hi", schema=schema).schema == {"type": "object"}
        client.plan(prompt="frames", video=frames, fps=2)
        server.enqueue(Reply(text='{"a": 1}'))
        assert tasks.extract(client, png, schema).json == {"a": 1}
        server.enqueue(Reply(text="text"))
        read = tasks.ocr(client, png.read_bytes())
        assert read.text == "text"
        # a result names no data: URL (the whole file again): bytes and PIL images have no name
        assert read.source is None and read.to_json()["source"] is None
        server.enqueue(Reply(text="text"))
        assert tasks.ocr(client, png).source == str(png)
    assert json.loads(client.request(prompt="hi", image=png).model_dump_json())["image"] == str(png)


def test_conversation_attaches_paths_and_images(server, png):
    from PIL import Image

    from qwenvl.chat import Conversation

    with make_client(server, usage_log=False) as client:
        conv = Conversation(client)
        conv.attach(png, Image.open(png))
        assert "images=2" in conv.send("what?").text
        with pytest.raises(UsageError, match="image is empty"):
            conv.attach("")


# --- 7. swapped arguments -------------------------------------------------------------------------------------


def test_swapped_arguments_are_said_to_be_swapped(server, png):
    from qwenvl import tasks

    with make_client(server, usage_log=False) as client:
        for prompt in (str(png), "photo.png", "https://example.com/a.jpg"):
            with pytest.raises(UsageError, match="arguments look swapped") as info:
                client.ask(prompt, "What is this?")
            assert "client.ask('What is this?'" in info.value.hint
        with pytest.raises(UsageError, match="arguments look swapped"):
            client.complete(prompt=str(png), image="What is this?")
        with pytest.raises(UsageError, match="arguments look swapped") as info:
            tasks.ground(client, "the red square", png)
        assert "tasks.ground(client, " in info.value.hint
        with pytest.raises(qwenvl.MediaError, match=r"file not found: missing\.png"):  # a plain missing file
            client.ask("What is this?", "missing.png")
        with pytest.raises(qwenvl.MediaError, match="file not found: photo"):  # a sentence naming a file
            client.ask("Describe image.png", "photo")

    async def go():
        async with _async_client(server) as aclient:
            with pytest.raises(UsageError, match="arguments look swapped"):
                await aclient.ask(str(png), "What is this?")

    asyncio.run(go())
    assert server.requests == []


# --- 10. chat commands with their slash -------------------------------------------------------------------------


def test_conversation_commands_take_their_slash(server, png):
    from qwenvl.chat import Conversation

    with make_client(server, usage_log=False) as client:
        conv = Conversation(client)
        assert conv.command("/image", str(png)).outcome == "attached"
        assert conv.command(f"/image {png}").outcome == "attached" and conv.pending == 2
        assert conv.command("/history").outcome == "history"
        assert conv.command("/RESET").outcome == "cleared" and conv.pending == 0
        assert conv.command("/help").outcome == "help"
        assert conv.command("/quit").outcome == "end" and conv.command("exit").end
        assert conv.command("/nope").outcome == "unknown"
    assert server.requests == []


# --- 8. non-object root schemas: no json_object, prompts worded by the root's type ------------------------------


def _params(server, protocol: str, index: int = -1) -> dict:
    body = server.requests[index].json
    return body if protocol == "compat" else body.get("parameters", {})


def _last_user_text(server, protocol: str, index: int = -1) -> str:
    body = server.requests[index].json
    messages = body["messages"] if protocol == "compat" else body["input"]["messages"]
    content = messages[-1]["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


@pytest.mark.parametrize(
    ("schema", "kind"),
    [
        ({"type": "array", "items": {"type": "integer"}}, "array"),
        ({"$defs": {"row": {"type": "array"}}, "$ref": "#/$defs/row"}, "array"),
        ({"type": "string"}, "string"),
        ({"anyOf": [{"type": "array"}, {"type": "string"}]}, "value"),
    ],
)
def test_non_object_schema_sends_no_json_object(server, protocol, schema, kind):
    from dashscope_server import Reply

    server.enqueue(Reply(text="not json at all"), Reply(text="[1, 2]" if kind != "string" else '"ok"'))
    with make_client(server, protocol, usage_log=False) as client:
        r = client.complete(prompt="numbers", schema=schema)
    assert r.json in ([1, 2], "ok")
    assert "response_format" not in _params(server, protocol, -2)
    assert "response_format" not in _params(server, protocol, -1)
    assert f"corrected JSON {kind}," in _last_user_text(server, protocol)
    if kind != "value":
        assert f"The answer is a JSON {kind}." in _last_user_text(server, protocol, -2)


def test_object_schema_still_sends_json_object(server, protocol):
    from dashscope_server import Reply

    server.enqueue(Reply(text="nope"), Reply(text='{"a": 1}'))
    with make_client(server, protocol, usage_log=False) as client:
        client.complete(prompt="a", schema={"type": "object", "properties": {"a": {"type": "integer"}}})
    assert _params(server, protocol, -2)["response_format"] == {"type": "json_object"}
    assert "corrected JSON object," in _last_user_text(server, protocol)


# --- 9. lenient JSON extraction: the answer's own JSON, never the schema quoted back ----------------------------


@pytest.mark.parametrize("schema", [{"type": "object"}, {"type": "object", "properties": {"name": {"type": "string"}}}])
def test_an_answer_that_only_quotes_the_prompt_is_not_accepted(server, protocol, schema):
    # the double echoes the prompt, its schema included: that is no answer
    with make_client(server, protocol, usage_log=False) as client:
        with pytest.raises(qwenvl.StructuredOutputError, match="only the schema it was sent"):
            client.complete(prompt="Describe it", schema=schema, repair=False)
        with pytest.raises(qwenvl.StructuredOutputError) as info:
            client.complete(prompt="Describe it", schema=schema)
    assert info.value.requests == 2  # the repair request was sent, and its echo refused too


def test_an_answer_quoting_the_schema_among_prose_is_repaired_not_mined(server, protocol):
    """A structured answer is the JSON alone (``structured.answer_json``): prose quoting the schema beside a value,
    or two fences, is not taken apart for a fragment; the repair request asks for the JSON alone."""
    import json

    from dashscope_server import Reply

    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    quoting = f'You asked for {json.dumps(schema)} so here: {{"name": "cat"}} and a note {{"x": [1]}}.'
    fenced = f'Schema: ```json\n{json.dumps(schema)}\n``` Answer: ```json\n{{"name": "dog"}}\n```'
    server.enqueue(
        Reply(text=quoting), Reply(text='{"name": "cat"}'), Reply(text=fenced), Reply(text='{"name": "dog"}')
    )
    with make_client(server, protocol, usage_log=False) as client:
        assert client.complete(prompt="name it", schema=schema).json == {"name": "cat"}
        assert client.complete(prompt="name it", schema=schema).json == {"name": "dog"}
    assert len(server.requests) == 4  # each first answer repaired
    assert "text around its JSON" in json.dumps(server.requests[1].json)


# --- 11. dated snapshots inherit the facts of their model ----------------------------------------------------------


def test_dated_snapshot_inherits_its_models_facts(caplog):
    import logging

    from qwenvl.models import model_info

    with caplog.at_level(logging.WARNING, logger="qwenvl"):
        flash = model_info("qwen3-vl-flash-2026-01-22")  # named in the skill (reference/dashscope-api.md)
    assert flash.known and not caplog.records
    base = model_info("qwen3-vl-flash")
    assert (flash.factor, flash.image_tokens, flash.prices, flash.entry) == (
        base.factor,
        base.image_tokens,
        base.prices,
        "qwen3-vl-flash",
    )
    between = model_info("qwen-vl-max-2025-04-05")  # between two listed snapshots: the one before it
    assert between.known and between.entry == "qwen-vl-max-2025-04-02" and between.factor == 28
    listed = model_info("qwen-vl-max-2025-01-25")  # the table's own entry wins
    assert listed.entry == "" or listed.entry == "qwen-vl-max-2025-01-25"
    assert not model_info("qwen-vl-max-2020-01-01").known  # older than every listed snapshot: not in the table


def test_models_command_says_the_snapshot_rule():
    one = run_cli("models", "qwen3-vl-flash-2026-01-22")
    assert one.returncode == 0 and "warning" not in one.stderr
    assert "dated snapshot of qwen3-vl-flash" in one.stdout
    listing = run_cli("models")
    assert "NAME-YYYY-MM-DD" in " ".join(listing.stdout.split())


def test_blank_conversation_values_are_refused(server):
    from qwenvl.chat import Conversation

    with make_client(server, usage_log=False) as client:
        with pytest.raises(UsageError, match=r"^session is empty$"):
            Conversation(client, session=" ")
        with pytest.raises(UsageError, match="model is empty"):
            Conversation(client, fields={"model": ""}).send("hi")
    assert server.requests == []


def test_paths_for_estimates_and_batch_inputs(png):
    from qwenvl.batch.inputs import items_from_inputs
    from qwenvl.estimate import estimate_files

    assert estimate_files([png])["total"]["items"] == 1
    assert items_from_inputs([png], {"prompt": "hi"})[0].request["image"] == str(png)
