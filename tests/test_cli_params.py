"""Options a new user tries: --param that would override what qwenvl builds, --max-tokens over the model's
limit, events on one still image, and where the key came from in key errors. Each for every verb and both
protocols, library and CLI, against the loopback server (nothing may reach it when refused)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import qwenvl
from conftest import make_client, run_cli, write_image
from qwenvl.errors import MediaError, UsageError
from qwenvl.tasks.events import plan_events

# verb, its arguments before the image's (the image is appended), and extra arguments after
VERBS = [
    ("ask", [], ["-p", "Describe"]),
    ("ground", [], ["the red square"]),
    ("ocr", [], []),
    ("extract", [], ["--schema", "s.json"]),
]


def model_calls(server) -> list:
    return [r for r in server.requests if "/chat/completions" in r.path or "/generation" in r.path]


@pytest.fixture
def image(isolated_env: Path) -> Path:
    (isolated_env / "s.json").write_text(json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}))
    return write_image(isolated_env / "beach.png")


@pytest.mark.parametrize("protocol", ["compat", "native"])
@pytest.mark.parametrize(
    ("param", "option"),
    [
        ("temperature=0.9", "-t"),
        ("model=qwen2.5-vl-72b-instruct", "--model"),
        ("max_tokens=100", "--max-tokens"),
        ("messages=1", None),
        ("input=1", None),
        ("stream=true", None),
        ("stream_options={}", None),
        ("timeout=3", "--timeout"),
    ],
)
def test_param_may_not_set_what_qwenvl_builds(server, env, image, protocol, param, option):
    for verb, before, after in VERBS:
        p = run_cli(verb, *before, str(image), *after, "--protocol", protocol, "--param", param, env=env)
        assert p.returncode == 2, (verb, p.stderr)
        key = param.split("=")[0]
        assert f"'{key}' cannot be given with --param" in p.stderr, p.stderr
        assert "--param is only for service parameters" in p.stderr, p.stderr  # the hint, in the CLI's words
        assert "extra" not in p.stderr, p.stderr  # not the library's field name
        if option == "-t":
            assert "--temperature" in p.stderr
        elif option:
            assert option in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert model_calls(server) == []


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_param_passes_through_what_qwenvl_has_no_option_for(server, env, image, protocol):
    p = run_cli(
        "ask", str(image), "-p", "Describe", "--protocol", protocol, "--param", "repetition_penalty=1.1", env=env
    )
    assert p.returncode == 0, p.stderr
    body = model_calls(server)[-1].json
    sent = body.get("parameters", body)  # native: under parameters
    assert sent["repetition_penalty"] == 1.1


def test_request_extra_is_refused_in_library_analyze_and_batch(server, env, image, isolated_env):
    with make_client(server) as client:
        with pytest.raises(UsageError) as info:
            client.plan(prompt="hi", image=str(image), extra={"temperature": 0.9})
        assert "Use temperature" in (info.value.hint or "")  # the library's words
        assert "--temperature" in (info.value.raw_hint or "")  # the flags, for the CLI to fit
        with pytest.raises(UsageError):
            client.request(prompt="hi", extra={"parameters": {}})
    req = json.dumps({"prompt": "Describe", "image": str(image), "extra": {"model": "qwen-vl-max"}})
    p = run_cli("analyze", "--request", req, env=env)
    assert p.returncode == 2 and "'model'" in p.stderr, p.stderr
    assert "hint: Use --model;" in p.stderr, p.stderr
    (isolated_env / "r.jsonl").write_text(
        json.dumps({"id": "a", "prompt": "Describe", "image": str(image), "extra": {"messages": []}}) + "\n"
    )
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "o.jsonl", env=env)
    assert p.returncode != 0 and "'messages'" in p.stderr, p.stderr
    assert model_calls(server) == []


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_max_tokens_above_the_models_limit_is_refused_before_sending(server, env, image, protocol):
    for verb, before, after in VERBS:
        p = run_cli(verb, *before, str(image), *after, "--protocol", protocol, "--max-tokens", "100000", env=env)
        assert p.returncode == 2, (verb, p.stderr)
        assert "32,768" in p.stderr and "qwen3-vl-plus" in p.stderr, p.stderr
    with make_client(server, protocol) as client:
        with pytest.raises(UsageError, match="32,768"):
            client.plan(prompt="hi", image=str(image), max_tokens=100_000)
        assert client.plan(prompt="hi", image=str(image), max_tokens=32_768).request.max_tokens == 32_768
        # a model the table does not list: its limit is not known, nothing is refused
        assert client.plan(prompt="hi", model="qwen9-vl-new", max_tokens=100_000).request.max_tokens == 100_000
    assert model_calls(server) == []


def test_max_tokens_above_the_limit_in_batch_requests_sends_nothing(server, env, image, isolated_env):
    (isolated_env / "r.jsonl").write_text(
        json.dumps({"id": "a", "prompt": "Describe", "image": str(image), "max_tokens": 100_000}) + "\n"
    )
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "o.jsonl", env=env)
    assert "Traceback" not in p.stderr
    (row,) = [json.loads(line) for line in Path("o.jsonl").read_text().splitlines()]  # the batch's rule: a row
    assert row["status"] == "error" and row["attempts"] == 0 and "32,768" in row["error"]["message"]
    assert model_calls(server) == []


def test_events_refuses_one_still_image_before_sending(server, env, image):
    p = run_cli("events", str(image), env=env)
    assert p.returncode == 3, p.stderr  # a wrong kind of input (tests/test_run_stops.py)
    assert "one still image" in p.stderr and "hint:" in p.stderr
    p = run_cli("events", str(image), "--dry-run", env=env)
    assert p.returncode == 3, p.stderr
    with make_client(server) as client:
        for video in (str(image), [str(image)]):
            with pytest.raises(MediaError, match="one still image"):
                plan_events(client, video)
        two = write_image(image.parent / "two.png", color=(0, 200, 0))
        assert plan_events(client, [str(image), str(two)]).request.video == [str(image), str(two)]
    assert model_calls(server) == []


def test_missing_key_names_the_profile_asked_for(isolated_env, image):
    p = run_cli("ask", str(image), "-p", "hi", env={"ALIBABA_CLOUD_PROFILE": "nonexist"})
    assert p.returncode == 4, p.stderr
    assert "[nonexist]" in p.stderr and "ALIBABA_CLOUD_PROFILE" in p.stderr
    assert "[default] in" not in p.stderr  # not the generic advice


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_a_401_names_where_the_key_came_from(server, image, isolated_env, protocol, monkeypatch):
    creds = Path.home() / ".alibabacloud" / "credentials"
    creds.parent.mkdir(parents=True)
    creds.write_text("[other]\ndashscope_api_key = sk-wrong-000000000000\n")
    env = {"ALIBABA_CLOUD_PROFILE": "other", "DASHSCOPE_COMPATIBLE_BASE_URL": server.compat_base}
    env["DASHSCOPE_HTTP_BASE_URL"] = server.native_base
    p = run_cli("ask", str(image), "-p", "hi", "--protocol", protocol, "--max-retries", "0", env=env)
    assert p.returncode == 4, p.stderr
    assert "~/.alibabacloud/credentials [other]" in p.stderr, p.stderr
    assert "Check DASHSCOPE_API_KEY" not in p.stderr
    # the library's error carries the same hint (sync and async)
    monkeypatch.setenv("ALIBABA_CLOUD_PROFILE", "other")
    client = qwenvl.Client(protocol=protocol, base_url=server.url, max_retries=0)
    with client, pytest.raises(qwenvl.errors.AuthenticationError) as info:
        client.complete(prompt="hi", image=str(image))
    assert "~/.alibabacloud/credentials [other]" in (info.value.hint or "")

    async def main() -> None:
        async with qwenvl.AsyncClient(protocol=protocol, base_url=server.url, max_retries=0) as aclient:
            await aclient.complete(prompt="hi", image=str(image))

    with pytest.raises(qwenvl.errors.AuthenticationError) as info:
        asyncio.run(main())
    assert "~/.alibabacloud/credentials [other]" in (info.value.hint or "")


# --- smaller ones -------------------------------------------------------------------------------------------


def test_argument_hints_name_only_options_the_verb_has(env, image):
    p = run_cli("ground", "nofile", "a dog", env=env)
    assert p.returncode == 2 and "neither files nor URLs" in p.stderr, p.stderr
    assert "-p" not in p.stderr.split("hint:")[1]  # ground has no -p
    p = run_cli("ask", "nofile", "a dog", env=env)
    assert p.returncode == 2 and '-p "..."' in p.stderr, p.stderr


def test_a_second_prompt_beside_p_is_a_usage_error(server, env, image):
    p = run_cli("ask", str(image), "-p", "x", "another prompt", env=env)
    assert p.returncode == 2, p.stderr
    assert "'another prompt'" in p.stderr and "file not found" not in p.stderr
    p = run_cli("ask", str(image), "-p", "x", "missing.png", env=env)  # a path-looking one is still an input error
    assert p.returncode == 3 and "file not found: missing.png" in p.stderr
    assert model_calls(server) == []


def test_tokens_reads_a_file_on_standard_input(image):
    p = run_cli("tokens", "-", "--json", input=image.read_bytes())
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)["items"]
    assert row["tokens"] and row["width"] == 64 and row["source"] == "-"
    p = run_cli("tokens", "-")
    assert p.returncode == 3 and "standard input is empty" in p.stderr


def test_prompt_from_stdin_loses_one_trailing_newline(server, env, image):
    p = run_cli("ask", str(image), "-p", "-", "--dry-run", env=env, input="What is it?\n")
    assert p.returncode == 0, p.stderr
    texts = [part["text"] for part in json.loads(p.stdout)["body"]["messages"][-1]["content"] if "text" in part]
    assert texts == ["What is it?"]


def test_stdin_on_a_terminal_names_the_verb_and_what_is_awaited(image, isolated_env):
    import os
    import sys

    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "TERM": "dumb", "COLUMNS": "200", "DASHSCOPE_API_KEY": "sk-x"}
    child = pexpect.spawn(
        sys.executable, ["-m", "qwenvl", "ocr", "-"], env=env, cwd=str(isolated_env), encoding="utf-8", timeout=30
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    assert "qwenvl ocr -" in child.before and "qwenvl ask" not in child.before, child.before
    child = pexpect.spawn(
        sys.executable,
        ["-m", "qwenvl", "ask", str(image), "-p", "-", "--dry-run"],
        env=env,
        cwd=str(isolated_env),
        encoding="utf-8",
        timeout=30,
    )
    child.expect("reading the prompt from standard input")
    child.sendline("hello")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_encoded_note_says_file_bytes_and_base64(isolated_env):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(isolated_env / "noise.png")
    p = run_cli("tokens", "noise.png")
    assert p.returncode == 0, p.stderr
    assert "file bytes" in p.stdout + p.stderr and "inline as base64" in p.stdout + p.stderr


def test_budget_options_that_contradict_are_usage_errors(server, env, image):
    p = run_cli("ask", str(image), "-p", "x", "--max-pixels", "100", env=env)
    assert p.returncode == 2, p.stderr
    assert "max_pixels (--max-pixels) 100 is below" in p.stderr and "4,096" in p.stderr
    assert "min_pixels (4096)" not in p.stderr  # not a value the user never set
    for flags in (["--detail", "low", "--high-res"], ["--detail", "high", "--no-high-res"]):  # both directions
        p = run_cli("ground", str(image), "dog", *flags, env=env)
        assert p.returncode == 2 and "contradict" in p.stderr, (flags, p.stderr)
        with make_client(server) as client, pytest.raises(UsageError, match="contradict"):
            detail = flags[1]
            client.plan(prompt="x", image=str(image), detail=detail, vl_high_resolution_images=detail == "low")
    with make_client(server) as client, pytest.raises(UsageError, match="below"):
        client.plan(prompt="x", image=str(image), max_pixels=100)
    assert model_calls(server) == []


def test_analyze_ignores_unknown_request_keys_as_the_skill_does(server, env, image, isolated_env):
    """The skill's analyze_image.py reads the keys it knows and ignores the rest: the drop-in sends the request
    without them and names them in one warning line (with the field a misspelt one was likely meant to be).
    With --request and --file both, the skill reads --request: so does the drop-in, and says so."""
    req = json.dumps({"prompt": "x", "image": str(image), "max_token": 5, "callback": "https://x", "max_tokens": 7})
    p = run_cli("analyze", "--request", req, "--file", "other.json", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["text"]
    warnings = [line for line in p.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: --request and --file both given: --request is used, other.json is not read",
        "warning: --request: ignored unknown keys max_token (did you mean max_tokens?), callback",
    ], p.stderr
    sent = model_calls(server)
    assert len(sent) == 1 and sent[0].json["max_tokens"] == 7
    assert "max_token" not in sent[0].json and "callback" not in sent[0].json


def test_ground_points_with_none_found_is_not_cut_off(server, env, image):
    from dashscope_server import Reply

    server.enqueue(Reply(text="There is no cat in the image, so no <points> can be given."))
    p = run_cli("ground", str(image), "cat", "--points", "--json", env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["truncated"] is False and not any("cut off" in w for w in out["warnings"]), out


@pytest.mark.parametrize(
    ("protocol", "url"),
    [
        ("compat", "/compatible-mode/v1/chat/completions"),
        ("native", "/api/v1/services/aigc/multimodal-generation/generation"),
    ],
)
def test_a_full_endpoint_as_base_url_is_refused_with_the_base(server, env, image, protocol, url):
    full = server.url + url
    p = run_cli("ask", str(image), "-p", "x", "--protocol", protocol, "--base-url", full, env=env)
    assert p.returncode == 2, p.stderr
    base = server.url + ("/compatible-mode/v1" if protocol == "compat" else "/api/v1")
    assert "full endpoint" in p.stderr and f"without it: {base}\n" in p.stderr, p.stderr
    assert model_calls(server) == []


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_param_response_format_may_not_override_json_mode_or_a_schema(server, env, image, protocol, isolated_env):
    """--param response_format beside --schema/--json-mode silently replaced what qwenvl builds from them; alone it
    still passes through (qwenvl serve relays a client's response_format that way)."""
    (isolated_env / "s.json").write_text('{"type": "object"}')
    fmt = 'response_format={"type": "text"}'
    for structured in (("--schema", "s.json"), ("--json-mode",)):
        p = run_cli("ask", str(image), "-p", "q", *structured, "--protocol", protocol, "--param", fmt, env=env)
        assert p.returncode == 2 and "'response_format' is built by qwenvl" in p.stderr, p.stderr
    assert model_calls(server) == []
    p = run_cli("ask", str(image), "-p", "q", "--protocol", protocol, "--param", fmt, env=env)
    assert p.returncode == 0, p.stderr
    body = model_calls(server)[-1].json
    assert body.get("parameters", body)["response_format"] == {"type": "text"}
