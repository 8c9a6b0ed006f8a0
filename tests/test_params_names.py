"""Pass-through parameters by name (``--param KEY=VALUE``, ``Request(extra=...)``, a batch line's ``extra``, an
``analyze`` request's ``extra``): a misspelt name is refused before anything is sent ("Did you mean ...?"), an
unknown one is sent with a note, a key given twice is refused, every hint names only options the verb has, and
values (0, False, "", lists, objects) reach the wire as given. CLI and library, sync and async, both protocols,
against the loopback DashScope double."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import click
import pytest

import qwenvl
import qwenvl.plan
from conftest import API_KEY, make_client, run_cli, write_image
from qwenvl.cli.common import param_value
from qwenvl.cli.main import cli
from qwenvl.errors import UsageError
from qwenvl.plan import check_extra
from qwenvl.types import BUILT_WIRE_KEYS, PASS_THROUGH_PARAMS, Request


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each unknown key is noted once per process: each test starts with none noted."""
    monkeypatch.setattr(qwenvl.plan, "_NOTED", set())


@pytest.fixture
def media(isolated_env: Path) -> dict[str, str]:
    (isolated_env / "s.json").write_text(json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}))
    frames = [str(write_image(isolated_env / f"f{i}.png", color=(40 * i, 90, 30))) for i in range(4)]
    return {"image": str(write_image(isolated_env / "beach.png")), "frames": " ".join(frames)}


# every verb that has --param: its arguments, and what it reads on standard input
VERBS: dict[str, tuple[list[str], str | None]] = {
    "ask": (["ask", "{image}", "-p", "Describe"], None),
    "chat": (["chat", "{image}"], "Describe\n"),
    "ground": (["ground", "{image}", "the red square"], None),
    "ocr": (["ocr", "{image}"], None),
    "extract": (["extract", "{image}", "--schema", "s.json"], None),
    "events": (["events", "{frames}"], None),
    "batch": (["batch", "{image}", "-p", "Describe", "-o", "out.jsonl", "--yes"], None),
}


def verb_args(verb: str, media: dict[str, str]) -> list[str]:
    args = []
    for a in VERBS[verb][0]:
        args += a.format(**media).split(" ") if a == "{frames}" else [a.format(**media)]
    return args


def command(verb: str) -> click.Command:
    cmd = cli.commands[verb]
    return cmd.commands["run"] if isinstance(cmd, click.Group) else cmd


def flags_of(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in [*p.opts, *p.secondary_opts] if o.startswith("--")}


def hint_flags(stderr: str) -> set[str]:
    hints = [line for line in stderr.splitlines() if line.startswith("hint:")]
    text = re.sub(r"`[^`]*`", "", " ".join(hints))  # shell commands in backticks name other verbs
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


def model_calls(server) -> list:
    return [r for r in server.requests if "/chat/completions" in r.path or "/generation" in r.path]


def wire(body: dict, protocol: str) -> dict:
    return body if protocol == "compat" else body["parameters"]


def test_every_verb_with_param_is_listed():
    def walk(cmd: click.Command) -> list[click.Command]:
        return [c for sub in cmd.commands.values() for c in walk(sub)] if isinstance(cmd, click.Group) else [cmd]

    with_param = {c.name for c in walk(cli) if any(p.name == "extra" for p in c.params)}
    assert with_param == {command(v).name for v in VERBS}


# --- 1. a misspelt name is refused; an unknown one is sent with a note ---------------------------------------
@pytest.mark.parametrize("protocol", ["compat", "native"])
@pytest.mark.parametrize(
    ("param", "meant", "flag"),
    [
        ("temprature=0.5", "temperature", "--temperature"),
        ("top-p=0.9", "top_p", "--top-p"),
        ("Seed=1", "seed", "--seed"),
        ("presence_penality=1", "presence_penalty", None),
        ("enable_serch=true", "enable_search", None),
    ],
)
def test_a_misspelt_param_is_refused_on_every_verb(server, env, media, protocol, param, meant, flag):
    for verb in VERBS:
        p = run_cli(*verb_args(verb, media), "--protocol", protocol, "--param", param, env=env, input=VERBS[verb][1])
        assert p.returncode == 2, (verb, p.stderr)
        assert f"Did you mean '{meant}'?" in p.stderr and "nothing was sent" in p.stderr, (verb, p.stderr)
        assert flag is None or flag in p.stderr, (verb, p.stderr)
        assert hint_flags(p.stderr) <= flags_of(command(verb)), (verb, p.stderr)
        assert "Traceback" not in p.stderr
    assert model_calls(server) == []


@pytest.mark.parametrize("value", ["nan", "inf", "abc", '"1"', "true", "[1]"])
def test_a_numeric_param_that_is_not_a_number_is_refused_unsent(server, env, media, value):
    """Found by a new user: `presence_penalty=nan` went as the text "nan" and came back a 400 (exit 5)."""
    for key in ("presence_penalty", "repetition_penalty"):
        p = run_cli("ask", media["image"], "-p", "x", "--param", f"{key}={value}", env=env)
        assert p.returncode == 2 and f"{key}=" in p.stderr and "is not a number" in p.stderr, p.stderr
    with qwenvl.Client(api_key="sk-x", base_url=server.url) as client, pytest.raises(qwenvl.UsageError):
        client.plan(prompt="x", extra={"frequency_penalty": "0.5"})
    assert model_calls(server) == []
    p = run_cli("ask", media["image"], "-p", "x", "--param", "presence_penalty=0.5", env=env)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_an_unknown_param_is_sent_as_given_with_a_note(server, env, media, protocol):
    p = run_cli("ask", media["image"], "-p", "Describe", "--protocol", protocol, "--param", "x_house_flag=", env=env)
    assert f"'x_house_flag' is not a parameter qwenvl knows for the {protocol} protocol" in p.stderr, p.stderr
    assert "sent as given" in p.stderr and p.stderr.count("warning: 'x_house_flag'") == 1
    # the double is strict (it refuses names it does not know, 400); what counts is what reached the wire
    (call,) = model_calls(server)
    assert wire(call.json, protocol)["x_house_flag"] == ""


def test_a_name_known_to_the_other_protocol_is_noted_not_refused(server, env, media):
    assert check_extra({"frequency_penalty": 0.5}, "compat") == []
    (note,) = check_extra({"frequency_penalty": 0.5}, "native")
    assert "not a parameter qwenvl knows for the native protocol (it is one of the compat protocol's)" in note
    p = run_cli("ask", media["image"], "-p", "Describe", "--protocol", "native", "--param", "user=u1", env=env)
    assert "'user' is not a parameter qwenvl knows for the native protocol" in p.stderr, p.stderr
    assert wire(model_calls(server)[-1].json, "native")["user"] == "u1"


def test_known_names_come_with_their_sources_and_pass():
    for protocol, names in PASS_THROUGH_PARAMS.items():
        assert check_extra(dict.fromkeys(names, 1), protocol) == []
        assert not names & set(Request.model_fields) and not names & set(BUILT_WIRE_KEYS)  # one home each
    assert "dashscope-api.md" in (Path(qwenvl.types.__file__).read_text())


def test_the_openai_protocol_checks_only_qwenvls_own_names():
    """Local engines take parameters of their own (vLLM's min_p...): no note; a misspelt Request field is still
    refused."""
    assert check_extra({"min_p": 0.1, "repetition_penalty": 1.1}, "openai") == []
    with pytest.raises(UsageError) as info:
        check_extra({"max-tokens": 5}, "openai")
    assert "Did you mean 'max_tokens'?" in (info.value.hint or "") and "--max-tokens" in (info.value.raw_hint or "")


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_n_above_one_is_refused_it_would_bill_answers_never_read(server, env, media, protocol):
    p = run_cli("ask", media["image"], "-p", "Describe", "--protocol", protocol, "--param", "n=3", env=env)
    assert p.returncode == 2 and "n=3" in p.stderr, p.stderr
    assert model_calls(server) == []
    p = run_cli("ask", media["image"], "-p", "Describe", "--protocol", protocol, "--param", "n=1", env=env)
    assert p.returncode == 0, p.stderr


# --- library: sync and async ----------------------------------------------------------------------------------
def test_library_refuses_a_misspelt_extra_sync_and_async(server, protocol, media):
    with make_client(server, protocol) as client:
        with pytest.raises(UsageError) as info:
            client.complete(prompt="hi", image=media["image"], extra={"temprature": 0.5})
        assert "Did you mean 'temperature'?" in (info.value.hint or "")
        assert "--temperature / temperature" in (info.value.raw_hint or "")  # the CLI keeps the flag, Python the field
        assert "Use temperature;" in (info.value.hint or "")  # the library's words
        with pytest.raises(UsageError, match="presence_penality"):
            list(client.stream(prompt="hi", image=media["image"], extra={"presence_penality": 1}))

    async def run() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as client:
            with pytest.raises(UsageError, match="'top-p' is not a parameter") as info:
                await client.complete(prompt="hi", image=media["image"], extra={"top-p": 0.5})
            assert "Did you mean 'top_p'?" in (info.value.hint or "")
            with pytest.raises(UsageError, match="temprature"):
                async for _ in client.stream(prompt="hi", image=media["image"], extra={"temprature": 1}):
                    pass

    asyncio.run(run())
    assert model_calls(server) == []


def test_library_notes_an_unknown_extra_once(server, media, caplog):
    caplog.set_level(logging.WARNING, logger="qwenvl")
    with make_client(server, "compat") as client:
        for _ in range(2):
            call = client.plan(prompt="hi", image=media["image"], extra={"x_house_flag": 1})
            assert call.params["x_house_flag"] == 1
    notes = [r.getMessage() for r in caplog.records if "x_house_flag" in r.getMessage()]
    assert notes == [
        "'x_house_flag' is not a parameter qwenvl knows for the compat protocol: sent as given; "
        "the service may ignore it"
    ]


FALSY = {"enable_search": False, "top_logprobs": 0, "presence_penalty": 0, "search_options": {}}


@pytest.mark.parametrize("stream", [False, True])
def test_library_sends_falsy_extra_values_sync_and_async(server, protocol, media, stream):
    with make_client(server, protocol) as client:
        client.complete(prompt="hi", image=media["image"], extra=FALSY, stream=stream)
    sent_sync = wire(model_calls(server)[-1].json, protocol)

    async def run() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as client:
            await client.complete(prompt="hi", image=media["image"], extra=FALSY, stream=stream)

    asyncio.run(run())
    sent_async = wire(model_calls(server)[-1].json, protocol)
    for sent in (sent_sync, sent_async):
        assert {k: sent[k] for k in FALSY} == FALSY
        assert all(type(sent[k]) is type(v) for k, v in FALSY.items())


# --- 2. a key given twice ---------------------------------------------------------------------------------------
def test_a_param_given_twice_is_refused_on_every_verb(server, env, media):
    for verb in VERBS:
        p = run_cli(
            *verb_args(verb, media),
            "--param",
            "enable_search=true",
            "--param",
            "enable_search=false",
            env=env,
            input=VERBS[verb][1],
        )
        assert p.returncode == 2 and "'enable_search' is given twice" in p.stderr, (verb, p.stderr)
        p = run_cli(
            *verb_args(verb, media), "--param", 'search_options={"a": 1, "a": 2}', env=env, input=VERBS[verb][1]
        )
        assert p.returncode == 2 and "the key 'a' is given twice" in p.stderr, (verb, p.stderr)
    assert model_calls(server) == []


def test_a_key_given_twice_in_a_request_line_or_analyze_request_is_refused(server, env, media, isolated_env):
    image = json.dumps(media["image"])
    line = f'{{"id": "a", "prompt": "Describe", "image": {image}, "extra": {{"top_logprobs": 1, "top_logprobs": 2}}}}'
    (isolated_env / "r.jsonl").write_text(line + "\n")
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "o.jsonl", "--yes", env=env)
    assert p.returncode == 2 and "r.jsonl line 1: the key 'top_logprobs' is given twice" in p.stderr, p.stderr
    image = json.dumps(media["image"])
    request = f'{{"prompt": "Describe", "image": {image}, "extra": {{"seed_x": 1, "seed_x": 2}}}}'
    p = run_cli("analyze", "--request", request, env=env)
    assert p.returncode == 2 and "the key 'seed_x' is given twice" in p.stderr, p.stderr
    assert model_calls(server) == []


def test_ocr_options_from_task_and_from_param_at_once_is_refused(server, env, media):
    p = run_cli(
        "ocr",
        media["image"],
        "-m",
        "qwen-vl-ocr",
        "--task",
        "text_recognition",
        "--param",
        'ocr_options={"task": "x"}',
        env=env,
    )
    assert p.returncode == 2 and "ocr_options is given twice" in p.stderr, p.stderr
    assert hint_flags(p.stderr) <= flags_of(command("ocr"))
    assert model_calls(server) == []


# --- batch lines: their extra is checked, and --param adds to it -------------------------------------------------
def test_a_misspelt_extra_in_a_request_line_sends_nothing(server, env, media, isolated_env):
    line = {"id": "a", "prompt": "Describe", "image": media["image"], "extra": {"presence_penality": 1}}
    (isolated_env / "r.jsonl").write_text(json.dumps(line) + "\n")
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "o.jsonl", "--yes", env=env)
    assert "Traceback" not in p.stderr
    (row,) = [json.loads(x) for x in Path("o.jsonl").read_text().splitlines()]
    assert row["status"] == "error" and "presence_penality" in row["error"]["message"], row
    assert model_calls(server) == []


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_param_adds_to_a_request_lines_extra(server, env, media, isolated_env, protocol):
    line = {"id": "a", "prompt": "Describe", "image": media["image"], "extra": {"enable_search": False}}
    (isolated_env / "r.jsonl").write_text(json.dumps(line) + "\n")
    p = run_cli(
        "batch",
        "--requests",
        "r.jsonl",
        "-o",
        "o.jsonl",
        "--yes",
        "--protocol",
        protocol,
        "--param",
        "top_logprobs=0",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    sent = wire(model_calls(server)[-1].json, protocol)
    assert sent["enable_search"] is False and sent["top_logprobs"] == 0


# --- 3. hints name only what the verb has -------------------------------------------------------------------------
RESERVED = sorted({*Request.model_fields, *BUILT_WIRE_KEYS} - {"extra"})


def test_every_reserved_param_hint_names_only_flags_the_verb_has(server, env, media):
    for verb in VERBS:
        for key in RESERVED:
            p = run_cli(*verb_args(verb, media), "--param", f"{key}=1", env=env, input=VERBS[verb][1])
            assert p.returncode == 2, (verb, key, p.stderr)
            assert hint_flags(p.stderr) <= flags_of(command(verb)), (verb, key, p.stderr)
            assert not re.search(r"Use [a-z_]+\b(?!\()", p.stderr), (verb, key, p.stderr)  # "Use tools", "Use image"
    assert model_calls(server) == []


def test_request_verbs_hints_name_request_keys(server, env, media):
    for key, shown in [
        ("tools", "Request(tools=...)"),
        ("temprature", "temperature"),
        ("max_completion_tokens", "Use max_tokens;"),
    ]:
        request = json.dumps({"prompt": "Describe", "image": media["image"], "extra": {key: 1}})
        p = run_cli("analyze", "--request", request, env=env)
        assert p.returncode == 2 and shown in p.stderr, p.stderr
        assert hint_flags(p.stderr) <= flags_of(command("analyze")), p.stderr
    assert model_calls(server) == []


# --- 4. how a --param VALUE is read ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", 1),
        ("0", 0),
        ("1.5", 1.5),
        ("false", False),
        ("False", False),
        ("TRUE", True),
        ("null", None),
        ('["a"]', ["a"]),
        ('{"forced_search": false}', {"forced_search": False}),
        ("", ""),
        ("abc", "abc"),
        ('"1"', "1"),
        ("none", "none"),  # a word, not Python's None: a parameter may take the text "none"
    ],
)
def test_param_values_are_read_as_json_else_as_text(raw, value):
    got = param_value(raw)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_param_values_reach_the_dry_run_body_as_read(env, media, protocol):
    p = run_cli(
        "ask",
        media["image"],
        "-p",
        "Describe",
        "--dry-run",
        "--protocol",
        protocol,
        "--param",
        "top_logprobs=1",
        "--param",
        'x_list=["a"]',
        "--param",
        "enable_search=false",
        "--param",
        "x_empty=",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    sent = wire(json.loads(p.stdout)["body"], protocol)
    assert sent["top_logprobs"] == 1 and type(sent["top_logprobs"]) is int
    assert sent["x_list"] == ["a"] and sent["enable_search"] is False and sent["x_empty"] == ""
