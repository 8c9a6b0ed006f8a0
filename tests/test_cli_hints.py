"""Every error the CLI prints is one ``error:`` line and a ``hint:`` line that names something that works on that
verb; click's own usage errors too; numbers out of range are refused while parsing; the thinking budget has one
rule; ``tokens`` and ``--dry-run`` say sizes and exactness honestly; ``--help`` and the README agree."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import click
import pytest
from PIL import Image

import qwenvl
from conftest import API_KEY, run_cli, write_image
from qwenvl.errors import UsageError
from qwenvl.plan import plan

SRC = Path(qwenvl.__file__).parent
README = SRC.parents[1] / "README.md"

# Raise sites that keep no hint of their own, and why (everything else must give one).
NO_HINT = {
    "estimate.py": "re-raised with the region's own hint",
    "protocols/inbound.py": "the server's reply to a client (an HTTP 400 body), never a CLI error",
}


def _raise_sites() -> list[tuple[str, int, str]]:
    """(file, line, call) of every ``UsageError(...)`` / ``MediaError(...)`` raised or returned without ``hint=``."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("server/") or rel in NO_HINT:  # server/: HTTP errors for the server's clients
            continue
        src = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(src)):
            call = node.exc if isinstance(node, ast.Raise) else node.value if isinstance(node, ast.Return) else None
            if not isinstance(call, ast.Call):
                continue
            name = call.func.id if isinstance(call.func, ast.Name) else None  # not click.UsageError: main.py hints it
            if name in ("UsageError", "MediaError") and not any(k.arg == "hint" for k in call.keywords):
                found.append((rel, call.lineno, (ast.get_source_segment(src, call) or "")[:100]))
    return found


def test_every_raise_site_gives_a_hint():
    assert _raise_sites() == []


def _one_error_and_hint(stderr: str) -> tuple[str, str]:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), stderr
    assert "Usage:" not in stderr and "Try '" not in stderr and "Traceback" not in stderr, stderr
    return lines[0], lines[1]


@pytest.fixture
def files(isolated_env: Path) -> Path:
    write_image(isolated_env / "a.png")
    (isolated_env / "emptydir").mkdir()
    (isolated_env / "s.json").write_text('{"type": "object"}')
    (isolated_env / "dup.jsonl").write_text('{"id": "a", "prompt": "x", "image": "a.png"}\n' * 2)
    (isolated_env / "empty.jsonl").write_text("\n")
    (isolated_env / "req.jsonl").write_text('{"prompt": "x", "image": "a.png"}\n')
    (isolated_env / "req.json").write_text('{"prompt": "x", "image": "a.png"}')
    return isolated_env


BAD = [  # (arguments, exit code, words in the error line)
    # click's own: one error line and a hint, "Did you mean" kept
    (["ask", "a.png", "x", "--modle", "m"], 2, "No such option '--modle'"),
    (["bogus"], 2, "No such command 'bogus'"),
    (["--bogus"], 2, "No such option '--bogus'"),
    (["config", "-m", "x"], 2, "No such option '-m'"),
    (["usage", "--model", "x"], 2, "No such option '--model'"),
    (["models", "--model", "x"], 2, "No such option '--model'"),
    (["skill", "--region", "cn"], 2, "No such option '--region'"),
    (["ask", "a.png", "x", "--protocol", "comp"], 2, "'comp' is not one of"),
    (["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl", "--mode", "x"], 2, "'x' is not one of"),
    (["ocr"], 2, "Missing argument"),
    # the kinds of the user's report
    (["batch", "run", "--requests", "dup.jsonl", "-o", "o.jsonl", "--dry-run"], 2, "is already used on line 1"),
    (["batch", "run", "--requests", "empty.jsonl", "-o", "o.jsonl", "--dry-run"], 2, "has no requests"),
    (["batch", "run", "a.png", "--requests", "req.jsonl", "-o", "o.jsonl"], 2, "not both"),
    (["batch", "run", "emptydir", "-p", "x", "-o", "o.jsonl"], 3, "no media files found in emptydir"),
    (["batch", "run", "nodir/", "-p", "x", "-o", "o.jsonl"], 3, "no such file or folder"),
    (["tokens", "emptydir"], 3, "no media files found in emptydir"),
    (["tokens", "nothing*.png"], 3, "no file matches"),
    (["ask", "a.png", "x", "--min-pixels", "1000", "--max-pixels", "100", "--dry-run"], 2, "min_pixels is larger"),
    (["tokens", "a.png", "--min-pixels", "1000", "--max-pixels", "100"], 2, "min_pixels is larger"),
    (["ocr", "a.png", "-o", "emptydir", "--dry-run"], 2, "is a directory"),
    (["ocr", "a.png", "-o", "/dev/null", "--dry-run"], 2, "not a regular file"),
    (["ground", "a.png", "cat", "--out", "emptydir"], 2, "is a directory"),
    (["extract", "a.png", "--schema", "s.json", "--csv", "/dev/null"], 2, "not a regular file"),
    (["analyze", "--request", "{}", "--file", "req.json"], 2, 'has no "prompt"'),  # --request used, as the skill
    (["ask", "a.png", "x", "y", "z"], 2, "neither files nor URLs"),
    (["ask", "a.png", "-p", "  "], 2, "the prompt is empty"),
    (["events"], 2, "Missing argument"),
    (["extract", "--schema", "s.json", "-p", "x"], 2, "Missing argument"),
    (["skill", "--force"], 2, "--force applies to --install only"),
    (["mcp", "--api-key", "k"], 2, "apply to --http only"),
]


@pytest.mark.parametrize(("args", "code", "words"), BAD, ids=[" ".join(a[:3]) for a, _, _ in BAD])
def test_bad_invocations_say_one_error_and_a_hint(files, args, code, words):
    p = run_cli(*args, env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == code, (p.returncode, p.stderr)
    error, hint = _one_error_and_hint(p.stderr)
    assert words in error
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", hint))
    command = run_cli(*[a for a in args if not a.startswith("-")][:2], "--help").stdout
    if " --help" not in hint:  # a flag a hint names is one the verb takes
        for flag in flags - {"--help"}:
            assert flag in command, (flag, hint)


def test_click_errors_keep_did_you_mean(files):
    p = run_cli("ask", "a.png", "x", "--modle", "m")
    _, hint = _one_error_and_hint(p.stderr)
    assert "Did you mean" in hint and "--model" in hint and "`qwenvl ask --help`" in hint


@pytest.mark.parametrize(
    ("verb", "given", "meant", "not_offered"),
    [
        (["ask", "a.png", "x"], "--max-token", "Did you mean --max-tokens?", "--backend"),  # difflib's far match
        (["ask", "a.png", "x"], "--temp", "Did you mean --temperature?", "--stop"),  # a prefix click misses
        (["ocr", "a.png"], "--tmperature", "Did you mean --temperature?", "--help"),
        (["batch", "run", "a.png", "-p", "x"], "--concurency", "Did you mean --concurrency?", "--currency"),
    ],
)
def test_did_you_mean_offers_the_close_options_only(files, verb, given, meant, not_offered):
    p = run_cli(*verb, given, "1")
    assert p.returncode == 2, p.stderr
    _, hint = _one_error_and_hint(p.stderr)
    assert hint.startswith("hint: " + meant), hint
    assert not_offered not in hint.split("?")[0], hint


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        (["--max-tok", "5"], 'hint: max_tokens is a request key for analyze: put "max_tokens": 5 in the request JSON'),
        (["--temp=0.2"], 'hint: temperature is a request key for analyze: put "temperature": 0.2 in the request'),
        (["--system", "be brief"], 'hint: system is a request key for analyze: put "system": "be brief" in the'),
        (["--modle", "x"], "hint: Did you mean --model?"),  # an option of analyze stays click's did-you-mean
    ],
)
def test_analyze_points_an_unknown_option_near_a_request_key_to_the_request_json(files, given, hint):
    """``qwenvl analyze --req '{...}' --print --max-tok 5``: analyze takes request keys in its JSON, not as flags;
    the hint says so with the value given, not "Did you mean --max-retries?"."""
    p = run_cli("analyze", "--req", '{"prompt": "d", "image": "a.png"}', "--print", *given, "--dry-run")
    assert p.returncode == 2, p.stderr
    error, said = _one_error_and_hint(p.stderr)
    assert error.startswith(f"error: No such option '{given[0].split('=')[0]}'"), error
    assert said.startswith(hint), said
    assert "--max-retries" not in said


@pytest.mark.parametrize(
    ("param", "error", "hint"),
    [
        ("noequals", "'noequals' is not KEY=VALUE", "Give it as --param KEY=VALUE"),
        ("temperature=1", "'temperature' cannot be given with --param", "Use --temperature"),
        ("max_tokens=9", "'max_tokens' cannot be given with --param", "Use --max-tokens"),
        ('search_options={"a":1,"a":2}', "the key 'a' is given twice", "Give each key of a JSON object once"),
    ],
)
def test_param_errors_have_hints_of_their_own(files, param, error, hint):
    """A bad --param is said in the CLI's words (no "extra", no "request field") with a hint for it, not the
    generic "--help lists the options"."""
    for verb in (["ask", "a.png", "x"], ["ocr", "a.png"], ["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl"]):
        p = run_cli(*verb, "--param", param, env={"DASHSCOPE_API_KEY": API_KEY})
        assert p.returncode == 2, p.stderr
        said, told = _one_error_and_hint(p.stderr)
        assert error in said and "extra" not in said and "request field" not in said, said
        assert told.startswith("hint: " + hint), told


def test_a_repeated_param_hint_names_the_key(files):
    p = run_cli("ask", "a.png", "x", "--param", "enable_search=true", "--param", "enable_search=false")
    assert p.returncode == 2
    said, told = _one_error_and_hint(p.stderr)
    assert "'enable_search' is given twice" in said and told.startswith("hint: Keep one --param enable_search=")


def test_missing_file_hint_is_one_rule_on_every_verb(files):
    """A missing file: "Check the path" on every verb; "-p" only where the verb needs a prompt and has none."""
    for args in (
        ["extract", "nope.png", "--schema", "s.json"],
        ["events", "nope.mp4"],
        ["ask", "nope.png", "hi"],
        ["ocr", "nope.png"],
        ["ground", "nope.png", "cat"],
        ["chat", "nope.png"],
    ):
        p = run_cli(*args, env={"DASHSCOPE_API_KEY": API_KEY})
        assert p.returncode == 3, (args, p.stderr)
        _, hint = _one_error_and_hint(p.stderr)
        # the flag as a word (the hint names the temporary folder's path, which may hold "-p" itself)
        assert not re.search(r"(?<![\w/.-])-p\b", hint), (args, hint)
        assert "Check the path" in hint or "Did you mean" in hint, (args, hint)
    p = run_cli("ask", "no/such.png")  # ask needs a prompt, and this may be it
    _, hint = _one_error_and_hint(p.stderr)
    assert "Check the path" in hint and 'give it with -p "..."' in hint


def test_a_hint_never_asks_for_what_was_given(files):
    p = run_cli("ask", "a.png", "hi", "--base-url", "http://127.0.0.1:9", env={"QWENVL_REGION": "mars"})
    assert p.returncode == 2
    error, hint = _one_error_and_hint(p.stderr)
    assert "unknown region 'mars'" in error and "--base-url" not in hint and "Leave it out" in hint
    p = run_cli("ask", "a.png", "hi", "--region", "mars")  # not given: the endpoint is suggested
    _, hint = _one_error_and_hint(p.stderr)
    assert "give the endpoint itself with --base-url" in hint


NUMBERS = [  # (verb and arguments, the option, a value out of range) per the ranges DashScope documents
    (["ask", "a.png", "x"], "--max-tokens", "0"),
    (["ask", "a.png", "x"], "--temperature", "2"),
    (["ask", "a.png", "x"], "--temperature", "-0.1"),
    (["ask", "a.png", "x"], "--top-p", "0"),
    (["ask", "a.png", "x"], "--top-p", "1.5"),
    (["ask", "a.png", "x"], "--top-k", "-1"),
    (["ask", "a.png", "x"], "--seed", "-1"),
    (["ask", "a.png", "x"], "--seed", str(2**31)),
    (["ask", "a.png", "x"], "--min-pixels", "0"),
    (["ask", "a.png", "x"], "--max-pixels", "-5"),
    (["ask", "a.png", "x"], "--fps", "0"),
    (["ask", "a.png", "x"], "--thinking-budget", "0"),
    (["ask", "a.png", "x"], "--timeout", "0"),
    (["ask", "a.png", "x"], "--max-retries", "-1"),
    (["ask", "a.png", "x"], "--retry-backoff-s", "-1"),
    (["chat"], "--timeout", "-3"),
    (["ocr", "a.png"], "--max-tokens", "-1"),
    (["ground", "a.png", "cat"], "--page", "0"),
    (["extract", "a.png", "--schema", "s.json"], "--fps", "-2"),
    (["events", "a.png"], "--fps", "-1"),
    (["analyze", "--file", "req.json"], "--max-retries", "-2"),
    (["tokens", "a.png"], "--fps", "0"),
    (["tokens", "a.png"], "--max-pixels", "0"),
    (["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl"], "--max-cost", "-1"),
    (["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl"], "--concurrency", "0"),
    (["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl"], "--rpm", "0"),
    (["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl"], "--tpm", "-1"),
    (["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl"], "--poll-interval", "-1"),
    (["batch", "status", "x"], "--timeout", "0"),
    (["usage"], "--days", "0"),
    (["serve"], "--port", "70000"),
    (["serve"], "--workers", "0"),
    (["serve"], "--request-timeout", "0"),
    (["mcp"], "--http", "-1"),
    (["mcp"], "--timeout", "-1"),
]


@pytest.mark.parametrize(("args", "option", "value"), NUMBERS, ids=[f"{a[0]} {o} {v}" for a, o, v in NUMBERS])
def test_numbers_out_of_range_are_refused_while_parsing(files, server, args, option, value):
    env = {
        "DASHSCOPE_API_KEY": API_KEY,
        "DASHSCOPE_HTTP_BASE_URL": server.url,
        "DASHSCOPE_COMPATIBLE_BASE_URL": server.url,
    }
    p = run_cli(*args, option, value, env=env)
    assert p.returncode == 2, p.stderr
    error, _ = _one_error_and_hint(p.stderr)
    assert f"Invalid value for '{option}'" in error or (option == "--temperature" and "'-t'" in error), error
    assert server.requests == []


def test_every_numeric_option_has_a_range():
    """No verb takes a bare int or float: each says its bounds (click.IntRange / FloatRange)."""
    from qwenvl.cli.main import cli

    def options(cmd: click.Command, path: str):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from options(sub, f"{path} {name}")
            return
        for param in cmd.params:
            yield path, param

    bare = [
        f"{path} {param.opts[0]}"
        for path, param in options(cli, "qwenvl")
        if isinstance(param.type, click.types.IntParamType | click.types.FloatParamType)
        and not isinstance(param.type, click.IntRange | click.FloatRange)
    ]
    assert bare == []


# -- thinking: one rule, library and CLI, every protocol ----------------------------------------------------------


@pytest.mark.parametrize("protocol_name", ["compat", "native", "openai"])
def test_thinking_budget_needs_thinking_in_the_library(protocol_name):
    for fields in ({"thinking_budget": 100}, {"thinking_budget": 100, "enable_thinking": False}):
        with pytest.raises(UsageError) as caught:
            plan(qwenvl.Request(prompt="x", model="qwen3-vl-plus", **fields), protocol_name)
        assert "thinking_budget 100" in caught.value.message and caught.value.hint
    call = plan(qwenvl.Request(prompt="x", model="qwen3-vl-plus", thinking_budget=100, enable_thinking=True), "compat")
    assert call.request.thinking_budget == 100
    plan(qwenvl.Request(prompt="x", model="qvq-max", thinking_budget=100), "native")  # always thinks: allowed


def test_thinking_budget_needs_thinking_in_the_cli(files, server, protocol):
    env = {"DASHSCOPE_API_KEY": API_KEY}
    base = ["ask", "a.png", "x", "--base-url", server.url, "--protocol", protocol]
    p = run_cli(*base, "--thinking-budget", "100", env=env)
    assert p.returncode == 2
    _, hint = _one_error_and_hint(p.stderr)
    assert "--thinking" in hint
    p = run_cli(*base, "--no-thinking", "--thinking-budget", "100", env=env)
    assert p.returncode == 2 and "thinking turned off" in p.stderr
    assert server.requests == []
    lines = '{"prompt": "x", "image": "a.png", "thinking_budget": 50}\n'
    Path("tb.jsonl").write_text(lines)
    p = run_cli("batch", "run", "--requests", "tb.jsonl", "-o", "o.jsonl", "--base-url", server.url, env=env)
    record = json.loads(Path("o.jsonl").read_text().splitlines()[0])  # a batch item's error: the others go on
    assert record["status"] == "error" and "thinking_budget 50 without thinking" in record["error"]["message"]
    assert record["error"]["hint"] and server.requests == []
    p = run_cli(*base, "--thinking", "--thinking-budget", "100", "--no-stream", env=env)
    assert p.returncode == 0, p.stderr
    body = server.requests[-1].json
    params = body.get("parameters", body)
    assert params["enable_thinking"] is True and params["thinking_budget"] == 100


# -- tokens and --dry-run: honest numbers ---------------------------------------------------------------------------


def _transparent_gradient(path: Path) -> Path:
    """A small PNG with transparency whose colours are many (a "photo" to the graphic test) but compress well."""
    img = Image.new("RGBA", (160, 120))
    img.putdata([(x * 3 % 256, y * 2, (x + y) % 256, 255 if (x - 80) ** 2 + (y - 60) ** 2 < 2500 else 0)
                 for y in range(120) for x in range(160)])  # fmt: skip
    img.save(path, optimize=True)
    return path


def test_a_flattened_image_goes_as_the_smaller_of_png_and_jpeg(isolated_env):
    from qwenvl.media import images

    path = _transparent_gradient(isolated_env / "alpha.png")
    p = run_cli("tokens", str(path), "--json")
    assert p.returncode == 0, p.stderr
    item = json.loads(p.stdout)["items"][0]
    flat = Image.new("RGB", (160, 120), "white")
    rgba = Image.open(path)
    flat.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    jpeg = images.encode_photo(flat)
    inline = lambda n, mime: len(f"data:{mime};base64,") + 4 * -(-n // 3)  # noqa: E731  # bytes_sent: the data URL
    assert item["mime"] == "image/png" and item["bytes_sent"] < inline(len(jpeg), "image/jpeg")
    assert item["bytes_sent"] == inline(len(images.encode_png(flat)), "image/png")  # lossless: the pixels flattened
    assert any("transparency flattened" in n for n in item["notes"])


def test_sizes_below_a_megabyte_are_said_in_kilobytes(isolated_env):
    from qwenvl.media.prepare import format_bytes

    assert format_bytes(110_000) == "110 kB" and format_bytes(136_400) == "136 kB"
    assert format_bytes(1_500) == "1.5 kB" and format_bytes(2_500_000) == "2.5 MB"
    assert format_bytes(999_999) == "1000 kB"
    path = _transparent_gradient(isolated_env / "alpha.png")
    p = run_cli("tokens", str(path))
    notes = [line for line in p.stdout.splitlines() if "encoded" in line]
    assert notes and "0.0 MB" not in notes[0] and "0.1 MB" not in notes[0] and " kB -> " in notes[0], p.stdout


def test_an_error_row_does_not_stretch_the_table(isolated_env):
    write_image(isolated_env / "ok.png")
    Image.new("RGB", (3000, 10)).save(isolated_env / "thin.png")
    p = run_cli("tokens", "ok.png", "thin.png")
    assert p.returncode == 3
    table = [line for line in p.stdout.splitlines() if "│" in line]
    assert table and max(len(line) for line in table) < 100, p.stdout
    assert "thin.png: error: thin.png is 3000x10 px" in p.stdout and "thin.png: hint: " in p.stdout


def test_dry_run_says_the_input_is_exact_only_when_every_part_is(files):
    p = run_cli("ask", "a.png", "what is it?", "--dry-run")
    estimate = json.loads(p.stdout)["estimate"]
    assert estimate["media_tokens_exact"] is True and estimate["text_tokens_approx"] > 0
    assert estimate["input_tokens_exact"] is False


# -- --help and the README ------------------------------------------------------------------------------------------


def _commands():
    from qwenvl.cli.main import cli

    for name, cmd in cli.commands.items():
        if isinstance(cmd, click.Group):
            for sub, subcmd in cmd.commands.items():
                yield f"{name} {sub}", subcmd
        else:
            yield name, cmd


def test_help_names_files_and_lists_every_choice():
    for path, cmd in _commands():
        for param in cmd.params:
            if not isinstance(param, click.Option) or param.is_flag:
                continue
            metavar = param.make_metavar(click.Context(cmd))
            named = " ".join(param.opts)
            if re.search(r"schema|file|output|csv|--out\b|--requests|dir\b", named):
                assert metavar != "TEXT", (path, named)
            if isinstance(param.type, click.Choice) and param.help:
                said = [c for c in param.type.choices if c in param.help]
                if len(said) > 1:  # a help that describes the choices describes them all
                    assert said == list(param.type.choices), (path, named, param.help)
    run = dict(_commands())["batch run"]
    fresh = next(p for p in run.params if p.name == "fresh")
    assert "--yes" in (fresh.help or "")


def test_readme_lists_every_serve_option():
    """The README's table of serve's options names every option `qwenvl serve --help` lists (it omitted
    --upstream, serve's only way to name another DashScope endpoint), and nothing serve does not take."""
    text = README.read_text(encoding="utf-8")
    table = re.search(r"\| option \| what \| default \|\n\|---\|---\|---\|\n((?:\|.*\|\n)+)", text)
    assert table, "the README has no table of serve's options"
    listed = {f for row in table[1].splitlines() for f in re.findall(r"`(--[a-z-]+)", row.split(" | ")[0])}
    serve = dict(_commands())["serve"]
    options = {o for p in serve.params for o in p.opts if o.startswith("--")} - {"--help"}
    assert listed == options, (options - listed, listed - options)


def test_readme_says_which_verbs_take_the_service_options():
    text = README.read_text(encoding="utf-8")
    assert "Every verb takes `--model`" not in text
    table = re.search(r"\| verb \| of these options \|\n\|---\|---\|\n((?:\|.*\|\n)+)", text)
    assert table
    commands = dict(_commands())
    service = {"--model", "--protocol", "--region", "--base-url", "--timeout", "--max-retries", "--retry-backoff-s"}
    service |= {"--backend", "--engine", "--family", "--device", "--dtype", "--attn-implementation"}
    service |= {"--upstream"}  # serve's base URL (it has no --base-url)
    for row in table[1].splitlines():
        verbs_cell, options_cell = row.strip("|").split("|")
        listed = set(re.findall(r"`(--[a-z-]+)`", options_cell))
        for verb in re.findall(r"`([a-z ]+)`", verbs_cell):
            taken = {o for p in commands[verb].params for o in p.opts} & service
            assert taken == listed, (verb, taken ^ listed)
