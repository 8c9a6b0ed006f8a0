"""The CLI as a user runs it, against the loopback DashScope server: in this process (``run_cli``), and for the
smoke tests (exit codes 2 to 5 as the shell sees them, no traceback, ``python -m qwenvl`` and the installed
``qwenvl`` command) in a process of its own (``run_cli_process``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sysconfig
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from conftest import API_KEY, run_cli, run_cli_process, write_image
from dashscope_server import Reply

# --- analyze: the skill's interface ------------------------------------------------------------------------


def test_analyze_prints_the_skills_result_shape(server, env, png):
    req = json.dumps({"prompt": "describe", "image": png.name})
    p = run_cli("analyze", "--request", req, "--print-response", env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) == {"text", "model", "usage"}
    assert result["text"] == "echo: describe [images=1 videos=0]"
    assert result["model"] == "qwen3-vl-plus"
    assert result["usage"]["prompt_tokens"] == 110  # usage exactly as the service sent it
    body = server.requests[-1].json
    assert body["max_tokens"] == 512 and body["temperature"] == 0.2  # the skill's defaults
    assert body["messages"][0]["content"][0]["type"] == "image_url"


def test_analyze_file_json_mode_output(server, env, png, isolated_env):
    (isolated_env / "req.json").write_text(
        json.dumps({"prompt": "fields", "image": str(png), "model": "qwen3-vl-flash", "max_tokens": 100})
    )
    server.enqueue(Reply(text='```json\n{"title": "Bill", "amount": 3}\n```'))
    out = isolated_env / "deep" / "dir" / "result.json"
    p = run_cli("analyze", "--file", "req.json", "--json-mode", "--output", str(out), env=env)
    assert p.returncode == 0, p.stderr
    result = json.loads(out.read_text())
    assert result["json"] == {"title": "Bill", "amount": 3} and result["model"] == "qwen3-vl-flash"
    assert server.requests[-1].json["response_format"] == {"type": "json_object"}
    assert p.stdout == ""  # --output without --print-response prints nothing, like the skill


def test_analyze_schema_and_native_protocol(server, env, png, isolated_env):
    schema = isolated_env / "invoice.schema.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"title": {"type": "string"}, "amount": {"type": "number"}},
                "required": ["title", "amount"],
            }
        )
    )
    server.enqueue(Reply(text='{"title": "T", "amount": 9.5}'))
    p = run_cli(
        "analyze",
        "--request",
        json.dumps({"prompt": "extract", "image": str(png)}),
        "--schema",
        str(schema),
        "--protocol",
        "native",
        "--print-response",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["json"] == {"title": "T", "amount": 9.5}
    assert server.requests[-1].path.endswith("/multimodal-generation/generation")


@pytest.mark.parametrize("how", [["--json-mode"], []])  # the flag, or "json_mode" in the request
def test_analyze_json_mode_not_json_is_one_request(server, env, png, protocol, how):
    server.enqueue(Reply(text="not json at all"), Reply(text="a paid repair nobody asked for"))
    req = {"prompt": "x", "image": str(png), **({} if how else {"json_mode": True})}
    p = run_cli("analyze", "--request", json.dumps(req), "--protocol", protocol, *how, "--print-response", env=env)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert "json" not in result and result["text"] == "not json at all"  # the first (and only) answer
    assert "warning" in p.stderr and 'no "json"' in p.stderr
    assert len(server.requests) == 1  # as in the skill: no second paid request


def test_analyze_schema_still_repairs_once(server, env, png, isolated_env):
    (isolated_env / "s.json").write_text(json.dumps({"type": "object", "required": ["a"]}))
    server.enqueue(Reply(text="nope"), Reply(text='{"a": 1}'))
    p = run_cli(
        "analyze",
        "--request",
        json.dumps({"prompt": "x", "image": str(png)}),
        "--schema",
        "s.json",
        "--print-response",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["json"] == {"a": 1} and len(server.requests) == 2


def test_analyze_request_level_keys(server, env, png):
    req = {
        "prompt": "x",
        "image": str(png),
        "base_url": server.compat_base,
        "timeout_s": 30,
        "detail": "high",
        "max_retries": 0,
        "retry_backoff_s": 0.01,
    }
    server.enqueue(Reply(status=503, error_code="ServiceUnavailable", error_message="busy"))
    p = run_cli("analyze", "--request", json.dumps(req), env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 5  # max_retries 0 from the request: no retry
    assert len(server.requests) == 1
    assert server.requests[0].json["vl_high_resolution_images"] is True


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["--request", "{not json"], 2, "not valid JSON"),
        (["--request", '{"image": "a.png"}'], 2, "prompt"),
        (["--request", '{"prompt": "x", "max_tokens": "lots"}'], 2, "max_tokens"),
        (["--request", '{"prompt": "  "}'], 2, "empty"),
        (["--request", '{"prompt": "x", "image": "missing.png"}'], 3, "not found"),
        (["--request", '{"prompt": "x"}', "--region", "mars"], 2, "unknown region"),
        (["--file", "nope.json"], 3, "request file not found"),  # a file named by an option: an input error
        ([], 2, "give one of --request JSON or --file"),
    ],
)
def test_analyze_bad_input(server, env, args, code, needle):
    p = run_cli("analyze", *args, env=env)
    assert p.returncode == code, p.stderr
    assert needle in p.stderr
    assert "Traceback" not in p.stderr
    assert server.requests == []


def test_text_file_named_png(server, env, isolated_env):
    (isolated_env / "fake.png").write_text("hello")
    p = run_cli_process("ask", "fake.png", "-p", "what?", env=env)
    assert p.returncode == 3 and "fake.png" in p.stderr and "Traceback" not in p.stderr
    assert server.requests == []


def test_no_key_exit_4_with_help(server, png):
    p = run_cli_process(
        "analyze",
        "--request",
        json.dumps({"prompt": "x", "image": str(png)}),
        env={"DASHSCOPE_COMPATIBLE_BASE_URL": server.compat_base},
    )
    assert p.returncode == 4
    assert "DASHSCOPE_API_KEY" in p.stderr and "credentials" in p.stderr
    assert server.requests == []


def test_bad_key_exit_4_and_key_never_printed(server, png):
    p = run_cli(
        "ask",
        str(png),
        "-p",
        "x",
        env={"DASHSCOPE_API_KEY": "sk-bad-secret-value", "DASHSCOPE_COMPATIBLE_BASE_URL": server.compat_base},
    )
    assert p.returncode == 4
    assert "sk-bad-secret-value" not in p.stdout + p.stderr


def test_dead_server_exit_5():
    p = run_cli_process(
        "ask", "-p", "x", "--base-url", "http://127.0.0.1:9", "--max-retries", "0", env={"DASHSCOPE_API_KEY": API_KEY}
    )
    assert p.returncode == 5 and "cannot reach" in p.stderr and "Traceback" not in p.stderr


def test_an_escaped_exception_is_a_traceback_in_process_too(server, env, monkeypatch):
    """What escapes the CLI (a bug) is one line and exit 5; with QWENVL_DEBUG the traceback, exit 1: in the
    tests' in-process runner as in a process, so "no Traceback" assertions mean the same in both."""

    def broken(opts):
        raise RuntimeError("boom")

    monkeypatch.setattr("qwenvl.cli.ask.make_client", broken)
    p = run_cli("ask", "-p", "x", env=env)
    assert p.returncode == 5 and "internal error: RuntimeError: boom" in p.stderr and "Traceback" not in p.stderr
    assert p.exception is None
    p = run_cli("ask", "-p", "x", env={**env, "QWENVL_DEBUG": "1"})
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr and "RuntimeError: boom" in p.stderr
    assert isinstance(p.exception, RuntimeError)
    assert "QWENVL_DEBUG" not in os.environ and logging.getLogger("qwenvl").propagate  # nothing left behind
    assert server.requests == []


def test_key_from_dotenv(server, png, isolated_env):
    (isolated_env / ".env").write_text(f"DASHSCOPE_API_KEY='{API_KEY}'\n")
    p = run_cli("ask", str(png), "-p", "x", "--base-url", server.url)
    assert p.returncode == 0, p.stderr


# --- ask ----------------------------------------------------------------------------------------------------


def test_ask_streams_text(server, env, png, protocol):
    p = run_cli("ask", str(png), "what is this", "--protocol", protocol, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "echo: what is this [images=1 videos=0]\n"
    req = server.requests[-1]
    if protocol == "compat":
        assert req.json["stream"] is True
    else:
        assert req.headers["X-DashScope-SSE"] == "enable"


def test_ask_json_output(server, env, png):
    p = run_cli("ask", str(png), "-p", "x", "--json", "--max-tokens", "64", env=env)
    data = json.loads(p.stdout)
    assert data["text"].startswith("echo: x") and data["usage"]["input_tokens"] == 110
    assert server.requests[-1].json["max_tokens"] == 64


def test_ask_stream_cut_exit_5_keeps_partial(server, env):
    server.enqueue(Reply(text="one two three four five six seven eight nine", stream_cut_after=1))
    p = run_cli("ask", "-p", "count", "--max-retries", "0", env=env)
    assert p.returncode == 5
    assert p.stdout.startswith("one two three")
    assert "partial" in p.stderr and "Traceback" not in p.stderr


def test_ask_dry_run_sends_nothing(server, env, png):
    p = run_cli("ask", str(png), "-p", "x", "--dry-run", env={})
    assert p.returncode == 0, p.stderr
    assert "no DashScope API key found" in json.loads(p.stdout)["headers"]["Authorization"]  # not "Bearer ***"
    p = run_cli("ask", str(png), "-p", "x", "--dry-run", env={"DASHSCOPE_API_KEY": "sk-x"})
    data = json.loads(p.stdout)
    assert data["headers"]["Authorization"] == "Bearer ***"
    url = data["body"]["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and "chars)" in url
    assert server.requests == []


def test_ask_param_passthrough_and_options(server, env):
    p = run_cli(
        "ask",
        "-p",
        "x",
        "--param",
        "repetition_penalty=1.1",
        "--param",
        "enable_search=true",
        "--top-k",
        "5",
        "--seed",
        "3",
        "--stop",
        "###",
        "--thinking",
        "--thinking-budget",
        "100",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    body = server.requests[-1].json
    assert body["repetition_penalty"] == 1.1 and body["enable_search"] is True and body["top_k"] == 5
    assert body["enable_thinking"] is True and body["thinking_budget"] == 100 and body["stop"] == ["###"]


def test_ask_shows_reasoning_on_stderr(server, env):
    server.enqueue(Reply(text="42", reasoning="six times seven"))
    p = run_cli("ask", "-p", "answer?", "--thinking", env=env)
    assert p.stdout == "42\n"
    assert "six times seven" in p.stderr
    server.enqueue(Reply(text="42", reasoning="six times seven"))
    p = run_cli("ask", "-p", "answer?", "--thinking", "--hide-reasoning", env=env)
    assert "six times seven" not in p.stderr


def test_usage_errors_exit_2(server, env):
    for args in (
        ["ask"],
        ["ask", "-p", ""],
        ["ask", "-p", "x", "--temperature", "9"],
        ["ask", "-p", "x", "--protocol", "grpc"],
        ["nonsense"],
    ):
        p = run_cli(*args, env=env)
        assert p.returncode == 2, (args, p.stderr)
        assert "Traceback" not in p.stderr
    p = run_cli_process("ask", "-p", "x", "--temperature", "9", env=env)  # as the shell sees it
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert server.requests == []


def test_schema_file_not_json_is_usage_error(server, env, isolated_env):
    (isolated_env / "bad.json").write_text("{oops")
    p = run_cli("ask", "-p", "x", "--schema", "bad.json", env=env)
    assert p.returncode == 2 and "not valid JSON" in p.stderr
    (isolated_env / "bad2.json").write_text('{"type": "objekt"}')
    p = run_cli("ask", "-p", "x", "--schema", "bad2.json", env=env)
    assert p.returncode == 2 and "JSON Schema" in p.stderr
    assert server.requests == []


# --- chat ---------------------------------------------------------------------------------------------------


def test_chat_session_saved_and_resumed(server, env, png, isolated_env):
    p = run_cli("chat", str(png), "--session", "trip", env=env, input="first question\nsecond one\n/exit\n")
    assert p.returncode == 0, p.stderr
    assert "echo: first question [images=1 videos=0]" in p.stdout
    assert "echo: second one [images=1 videos=0]" in p.stdout  # the image stays in the history
    body = server.requests[-1].json
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    saved = Path.home() / ".qwenvl" / "sessions" / "trip.json"
    data = json.loads(saved.read_text())
    assert len(data["messages"]) == 4
    assert "base64" not in saved.read_text()  # references, not inline data

    p = run_cli("chat", "--session", "trip", env=env, input="third\n")
    assert p.returncode == 0, p.stderr
    assert "resumed" in p.stderr
    body = server.requests[-1].json
    assert len(body["messages"]) == 5
    assert json.loads(saved.read_text())["messages"][-1]["content"].startswith("echo: third")
    p = run_cli("chat", "--list-sessions", env=env)
    assert p.stdout.split() == ["trip"]


def test_chat_survives_a_bad_attachment_and_service_errors(server, env):
    server.enqueue(Reply(status=400, error_code="InvalidParameter", error_message="bad thing"))
    p = run_cli("chat", env=env, input="/image missing.png\nhello\nagain\nonce more\n")
    assert p.returncode == 5, p.stderr  # piped: the chat goes on, and the exit status says a turn failed
    assert "not found" in p.stderr and "bad thing" in p.stderr
    assert "echo: once more" in p.stdout


def test_python_m_and_version():
    p = run_cli_process("--version")
    assert p.returncode == 0 and "qwenvl" in p.stdout


def test_the_installed_command():
    """The ``qwenvl`` console script the package installs runs ``qwenvl.cli.main:main``."""
    [entry] = entry_points(group="console_scripts", name="qwenvl")
    assert entry.value == "qwenvl.cli.main:main"
    script = Path(sysconfig.get_path("scripts")) / "qwenvl"
    p = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("qwenvl"), p.stderr
    p = subprocess.run([str(script), "nonsense"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "No such command" in p.stderr and "Traceback" not in p.stderr
    assert "`qwenvl --help` lists the commands." in p.stderr  # not "the options"


def test_ask_pdf_pages(server, env, isolated_env):
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument.new()
    for _ in range(3):
        pdf.new_page(300, 400)
    pdf.save(str(isolated_env / "doc.pdf"))
    p = run_cli("ask", "doc.pdf", "-p", "summarise", env=env)
    assert p.returncode == 0 and "[images=3" in p.stdout
    p = run_cli("ask", "doc.pdf", "-p", "summarise", "--pages", "2-3", "--protocol", "native", env=env)
    assert p.returncode == 0 and "[images=2" in p.stdout
    p = run_cli("ask", "doc.pdf", "-p", "summarise", "--pages", "7", env=env)
    assert p.returncode == 3 and "has 3 pages" in p.stderr and "out of range" in p.stderr


def test_dry_run_and_tokens_on_video_and_pdf(server, env, isolated_env):
    import av
    import numpy as np
    import pypdfium2 as pdfium

    with av.open(str(isolated_env / "clip.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        for i in range(40):
            for packet in s.encode(av.VideoFrame.from_ndarray(np.full((96, 160, 3), i * 6, np.uint8), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(300, 400)
    pdf.new_page(300, 400)
    pdf.save(str(isolated_env / "doc.pdf"))
    for media, kinds in (("clip.mp4", ["video"]), ("doc.pdf", ["image", "image"])):
        p = run_cli("ask", media, "-p", "x", "--dry-run", env=env)
        assert p.returncode == 0, p.stderr
        data = json.loads(p.stdout)
        assert [m["kind"] for m in data["media"]] == kinds
        assert all(m["tokens"] for m in data["media"]) and data["estimate"]["media_tokens_exact"]
        # the prompt's tokens are approximate, so the input's total is not exact
        assert data["estimate"]["text_tokens_approx"] > 0 and data["estimate"]["input_tokens_exact"] is False
        assert data["estimate"]["cost_input"] > 0
        t = run_cli("tokens", media, "--json", env=env)
        assert t.returncode == 0, t.stderr
        assert sum(i["tokens"] for i in json.loads(t.stdout)["items"]) == data["estimate"]["media_tokens"]
    video = json.loads(run_cli("ask", "clip.mp4", "-p", "x", "--dry-run", env=env).stdout)
    part = video["body"]["messages"][0]["content"][0]
    assert part["type"] == "video" and len(part["video"]) == 8 and part["fps"] == 2.0  # 4 s at 2 fps
    assert server.requests == []


def test_config_shows_where_the_key_comes_from_never_the_key(isolated_env):
    p = run_cli("config", env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 0 and "environment DASHSCOPE_API_KEY" in p.stdout and API_KEY not in p.stdout
    data = json.loads(run_cli("config", "--json", "--region", "intl").stdout)
    assert data["api_key"] is None
    assert data["endpoints"]["native"] == "https://dashscope-intl.aliyuncs.com/api/v1"
    (isolated_env / ".env").write_text(f"DASHSCOPE_API_KEY={API_KEY}\n")
    data = json.loads(run_cli("config", "--json", "--base-url", "http://127.0.0.1:8000").stdout)
    assert data["api_key"] == ".env DASHSCOPE_API_KEY"
    assert data["endpoints"]["compat"] == "http://127.0.0.1:8000/compatible-mode/v1"
    assert run_cli("config", "--region", "mars").returncode == 2


# --- files named by options, and the key: the same answer on every verb -------------------------------------------

# Every option that names a file or folder qwenvl READS, as (verb..., option). A new FILE/DIR option must be
# listed here or in _WRITTEN, so that its missing/folder cases are tested (test_every_file_option_is_classified).
_READ = {
    ("ask", "--schema"),
    ("chat", "--schema"),
    ("extract", "--schema"),
    ("batch run", "--schema"),
    ("batch run", "--requests"),
    ("analyze", "--schema"),
    ("analyze", "--file"),
    ("mcp", "--allow-dir"),
}
_WRITTEN = {  # output files: unwritable is a usage error (exit 2), not this kind
    ("ground", "--out"),
    ("ocr", "--output"),
    ("extract", "--csv"),
    ("events", "--sheet"),
    ("batch run", "--output"),
    ("batch run", "--csv"),
    ("analyze", "--output"),
    ("skill", "--install"),
    ("serve", "--upload-dir"),
    ("serve", "--batch-dir"),
}
_REFUSED = {("ground", "--schema"), ("ocr", "--schema"), ("events", "--schema")}  # take no schema: exit 2


def _verbs() -> dict[str, Any]:
    import click

    from qwenvl.cli.main import cli

    out: dict[str, click.Command] = {}

    def walk(cmd: click.Command, name: str) -> None:
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{name} {sub_name}".strip())
        if not getattr(cmd, "commands", None):
            out[name] = cmd

    walk(cli, "")
    return out


def test_every_file_option_is_classified():
    """Options whose value is a file or folder (metavar FILE/DIR, or a path-taking name) are each either read
    (tested below for missing and folder paths) or written."""
    found = set()
    for name, cmd in _verbs().items():
        for p in cmd.params:
            metavar = (p.metavar or "").upper()
            long = next((o for o in p.opts if o.startswith("--")), None)
            if long and ("FILE" in metavar or "DIR" in metavar or long in ("--schema", "--upload-dir")):
                found.add((name, long))
    assert found == _READ | _WRITTEN | _REFUSED


def _read_case(verb_option: tuple[str, str], path: str, png: Path) -> tuple[list[str], str | None]:
    """argv for a run where the file named by the option is ``path``, everything else valid; stdin text."""
    request = json.dumps({"prompt": "x", "image": str(png)})
    return {
        ("ask", "--schema"): (["ask", str(png), "-p", "x", "--schema", path], None),
        ("chat", "--schema"): (["chat", "--schema", path], "hello\n"),
        ("extract", "--schema"): (["extract", str(png), "--schema", path], None),
        ("batch run", "--schema"): (["batch", str(png), "-p", "x", "-o", "o.jsonl", "--schema", path], None),
        ("batch run", "--requests"): (["batch", "--requests", path, "-o", "o.jsonl"], None),
        ("analyze", "--schema"): (["analyze", "--request", request, "--schema", path], None),
        ("analyze", "--file"): (["analyze", "--file", path], None),
        ("mcp", "--allow-dir"): (["mcp", "--allow-dir", path], ""),
    }[verb_option]


@pytest.mark.parametrize("kind", ["missing", "folder", "fifo"])
def test_a_file_named_by_an_option_that_cannot_be_read_is_an_input_error(server, env, png, isolated_env, kind):
    """Every option that reads a file (and a schema named inside a request or a requests line, and a saved session):
    missing, a folder, a pipe -> exit 3, one error line naming the path, a hint, nothing sent, nothing written."""
    import os

    if kind == "fifo" and os.name != "posix":
        pytest.skip("named pipes are POSIX")
    target = isolated_env / f"the-{kind}.json"
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    runs = []
    for verb_option in sorted(_READ):
        if verb_option == ("mcp", "--allow-dir") and kind != "missing":
            continue  # a folder is what it takes (a file instead: below)
        runs.append(_read_case(verb_option, target.name, png))
    runs.append((["mcp", "--allow-dir", str(png)], ""))  # a file where a folder is named
    request = {"prompt": "x", "image": str(png), "schema": target.name}  # a schema file named inside a request
    runs.append((["analyze", "--request", json.dumps(request)], None))
    (isolated_env / "r.jsonl").write_text(json.dumps({"id": 1, **request}) + "\n")
    runs.append((["batch", "--requests", "r.jsonl", "-o", "o.jsonl"], None))
    sessions = Path.home() / ".qwenvl" / "sessions"  # a saved session that is not a file (the user named it)
    sessions.mkdir(parents=True, exist_ok=True)
    if kind != "missing":  # a missing session is a new one
        (sessions / "trip.json").mkdir() if kind == "folder" else os.mkfifo(sessions / "trip.json")
        runs.append((["chat", "--session", "trip"], "hello\n"))
    for args, stdin in runs:
        p = run_cli(*args, env=env, input=stdin, timeout=60)
        named = (
            str(png) if args[:3] == ["mcp", "--allow-dir", str(png)] else "trip.json" if "trip" in args else target.name
        )
        assert p.returncode == 3, (args, p.stderr)
        errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and named in errors[0], (args, p.stderr)
        assert "hint:" in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert "JSON Schema validator" not in p.stderr, (args, p.stderr)  # not a content problem
        assert "Type a message" not in p.stderr  # chat stopped before its banner
    assert server.requests == [] and not (isolated_env / "o.jsonl").exists()


def test_a_schema_whose_content_is_wrong_stays_a_usage_error(server, env, png, isolated_env):
    """The file could be read, its content is the problem: exit 2 with the schema hint, as before."""
    (isolated_env / "bad.json").write_text('{"type": "object"')
    (isolated_env / "invalid.json").write_text('{"type": "objekt"}')
    for name in ("bad.json", "invalid.json"):
        for args in (["ask", str(png), "-p", "x", "--schema", name], ["extract", str(png), "--schema", name]):
            p = run_cli(*args, env=env)
            assert p.returncode == 2 and "JSON Schema validator" in p.stderr, (args, p.stderr)
    assert server.requests == []


def test_missing_file_hints_name_the_near_file_or_the_folder(server, env, png, isolated_env):
    (isolated_env / "invoice.schema.json").write_text('{"type": "object"}')
    p = run_cli("ask", str(png), "-p", "x", "--schema", "invoice.shema.json", env=env)
    assert p.returncode == 3 and "hint: Did you mean invoice.schema.json?" in p.stderr, p.stderr
    p = run_cli("batch", "--requests", "nothing.jsonl", "-o", "o.jsonl", env=env)
    assert p.returncode == 3 and "requests file not found: nothing.jsonl" in p.stderr, p.stderr
    assert f"current folder ({isolated_env})" in p.stderr
    write_image(isolated_env / "photo.png")
    p = run_cli("ask", "phot.png", "what is it?", env=env)  # the prompt is elsewhere: the hint is about the path
    assert p.returncode == 3 and "Did you mean photo.png?" in p.stderr, p.stderr
    assert server.requests == []


# Verbs that send to the model (a missing key is certain failure), and those that never need a key.
_SENDS = {
    "ask": ["ask", "{png}", "-p", "x"],
    "chat": ["chat"],
    "ground": ["ground", "{png}", "the dog"],
    "ocr": ["ocr", "{png}"],
    "extract": ["extract", "{png}", "--schema", "s.json"],
    "events": ["events", "{png}", "{png}"],
    "analyze": ["analyze", "--request", '{"prompt": "x", "image": "{png}"}'],
    "batch run": ["batch", "ok.png", "-p", "x", "-o", "o.jsonl"],  # (a tiny image would be an invalid item, not sent)
    "batch status": ["batch", "status", "batch_1"],
    "batch cancel": ["batch", "cancel", "batch_1"],
    "serve": ["serve", "--no-auth", "--port", "0"],  # checked before listening
}
_NO_KEY = {"tokens", "usage", "models", "config", "skill", "mcp"}  # mcp: the estimate tool needs none; calls say it


def test_no_key_fails_at_once_on_every_verb_that_sends(server, isolated_env):
    """No key anywhere: every verb that would send says so first (exit 4), before planning (a 5 px image, which
    planning refuses with exit 3, is never reached) and before the chat's banner; dry runs and tokens need none."""
    assert set(_verbs()) == set(_SENDS) | _NO_KEY  # a new verb must be placed in one of them
    from PIL import Image

    Image.new("RGB", (5, 5), "red").save(isolated_env / "tiny.png")  # refused when planned (side of 10 px or less)
    write_image(isolated_env / "ok.png")
    (isolated_env / "s.json").write_text('{"type": "object"}')
    no_key = {"DASHSCOPE_COMPATIBLE_BASE_URL": server.compat_base, "DASHSCOPE_HTTP_BASE_URL": server.native_base}
    for verb, argv in _SENDS.items():
        args = [a.replace("{png}", "tiny.png") for a in argv]
        p = run_cli(*args, env=no_key, input="hello\n", timeout=60)
        assert p.returncode == 4, (verb, p.stderr)
        assert "no DashScope API key found" in p.stderr and "DASHSCOPE_API_KEY" in p.stderr, (verb, p.stderr)
        assert "Type a message" not in p.stderr and "Traceback" not in p.stderr, (verb, p.stderr)
    for verb in ("ask", "ground", "ocr", "extract", "events", "analyze", "batch run"):  # a dry run needs no key
        args = [a.replace("{png}", "ok.png") for a in _SENDS[verb]]
        p = run_cli(*args, "--dry-run", env=no_key)
        assert p.returncode == 0, (verb, p.stderr)
    p = run_cli("tokens", "tiny.png", env=no_key)
    assert "no DashScope API key" not in p.stderr
    assert server.requests == []


def test_no_key_is_not_needed_by_a_local_backend(isolated_env, png):
    from engine_server import EngineServer

    with EngineServer(engine="vllm") as engine:
        local = ["--backend", "openai", "--base-url", engine.base_url]
        p = run_cli("chat", *local, input="hello\n")
        assert p.returncode == 0 and "Type a message" in p.stderr, p.stderr
        p = run_cli("ask", str(png), "-p", "x", *local)
        assert p.returncode == 0, p.stderr
        assert len(engine.chats()) == 2


def test_region_hint_names_only_what_the_verb_takes(isolated_env):
    """models has no --base-url: its unknown-region error names no base_url (a request key) nor the flag; verbs
    with the flag keep the hint."""
    p = run_cli("models", "--region", "mars")
    assert p.returncode == 2 and "unknown region 'mars'" in p.stderr
    assert "base_url" not in p.stderr and "--base-url" not in p.stderr, p.stderr
    assert "hint: Leave it out for cn (Beijing)." in p.stderr, p.stderr
    p = run_cli("ask", "-p", "x", "--region", "mars")
    assert p.returncode == 2, p.stderr
    assert "hint: Leave it out for cn (Beijing), or give the endpoint itself with --base-url." in p.stderr
    p = run_cli("analyze", "--request", '{"prompt": "x"}', "--region", "mars")
    assert p.returncode == 2 and "--base-url" in p.stderr, p.stderr


def test_every_hint_on_every_verb_names_only_what_the_verb_takes():
    """Each hint in the package, fitted to each verb: every flag it names is one that verb has; a verb that takes
    JSON requests may be given request keys instead, others the flag's environment variable."""
    import re

    from qwenvl.cli.common import fit_hint
    from test_wire_hints import _hint_texts

    hints = _hint_texts()
    for name, cmd in _verbs().items():
        flags = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]}
        for where, text in hints:
            fitted = re.sub(r"`[^`]*`", "", fit_hint(text, cmd))
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", fitted):
                assert flag in flags, (name, where, text, fitted)
    verbs = _verbs()
    timeout = "The service took too long; raise the time-out (--timeout) or retry later."
    assert fit_hint(timeout, verbs["ask"]) == timeout
    assert fit_hint(timeout, verbs["batch status"]) == timeout  # it takes --timeout (a hanging service)
    assert fit_hint(timeout, verbs["models"]) == "The service took too long; raise the time-out or retry later."
    rate = "Rate limit or quota reached: retry later, lower concurrency, or raise --max-retries."
    assert fit_hint(rate, verbs["models"]) == "Rate limit or quota reached: retry later, lower concurrency."
    backend = "Use --backend openai for another OpenAI-compatible server."
    assert fit_hint(backend, verbs["models"]) == "Use QWENVL_BACKEND=openai for another OpenAI-compatible server."
