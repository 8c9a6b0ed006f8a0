"""What a new user types that is not quite right: text that is not UTF-8 (a Latin-1 terminal, a file piped in),
a number that is not finite, an empty name, a quoted glob or a folder, an option given twice. Each is refused at
once with one ``error:`` line naming the argument and a ``hint:`` line (exit 2 usage, 3 input), on every verb
where it can occur, before anything is sent; or, where the input means something, it works the same everywhere."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import Reply
from qwenvl.errors import UsageError

BAD = "caf\udce9"  # b"caf\xe9" (Latin-1) as Python decodes a command line: the byte kept as a lone surrogate (PEP 383)


def _one_error_and_hint(stderr: str) -> tuple[str, str]:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return lines[0], lines[1]


@pytest.fixture
def files(isolated_env: Path) -> Path:
    write_image(isolated_env / "a.png")
    (isolated_env / "s.json").write_text('{"type": "object", "properties": {"a": {"type": "string"}}}')
    return isolated_env


@pytest.fixture
def cli_env(server) -> dict[str, str]:
    return {"DASHSCOPE_API_KEY": API_KEY}


NOT_UTF8 = [  # (arguments, the argument the error names)
    (["ask", "a.png", "-p", BAD], "-p/--prompt"),
    (["ask", "a.png", BAD], "the prompt"),
    (["ask", BAD, "a.png"], "the prompt"),
    (["ask", "a.png", "-p", "x", "--system", BAD], "--system"),
    (["ask", "a.png", "-p", "x", "--stop", "ok", "--stop", BAD], "--stop"),
    (["ask", "a.png", "-p", "x", "--param", f"enable_search={BAD}"], "--param"),
    (["ask", "a.png", "-p", "x", "--param", f"{BAD}=1"], "--param"),
    (["ask", "a.png", "-p", "x", "-m", BAD], "-m/--model"),
    (["chat", "a.png", "--session", BAD], "--session"),
    (["chat", "a.png", "--system", BAD], "--system"),
    (["ground", "a.png", BAD], "QUERY"),
    (["extract", "a.png", "--schema", "s.json", "-p", BAD], "-p/--prompt"),
    (["events", "a.png", "-p", BAD], "-p/--prompt"),
    (["ocr", "a.png", "--task", BAD], "--task"),
    (["batch", "run", "a.png", "-p", BAD, "-o", "o.jsonl"], "-p/--prompt"),
    (["analyze", "--request", '{"prompt": "' + BAD + '", "image": "a.png"}'], "--request"),
    (["models", BAD], "NAME"),
]


@pytest.mark.parametrize(("args", "named"), NOT_UTF8, ids=[" ".join(a[:4]) for a, _ in NOT_UTF8])
@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_text_that_is_not_utf8_is_refused_naming_the_argument(files, server, args, named, protocol):
    base = server.compat_base if protocol == "compat" else server.native_base
    verb_takes_service = args[0] not in ("models",)
    extra = ["--base-url", base, "--protocol", protocol] if verb_takes_service else []
    p = run_cli(*args, *extra, env={"DASHSCOPE_API_KEY": API_KEY}, input="")
    assert p.returncode == 2, (p.returncode, p.stderr)
    error, hint = _one_error_and_hint(p.stderr)
    assert f"error: {named} is not UTF-8 text" in error
    assert "\\udce9" in error  # the bad byte shown escaped, as Python writes it
    assert "UTF-8" in hint
    assert server.requests == []  # refused before anything is sent


@pytest.mark.parametrize(
    "args", [["ask", "a.png", "-p", "-"], ["batch", "run", "a.png", "-p", "-", "-o", "o.jsonl"]], ids=["ask", "batch"]
)
def test_a_prompt_on_stdin_that_is_not_utf8_is_refused(files, server, args):
    p = run_cli(*args, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY}, input=b"caf\xe9\n")
    assert p.returncode == 2, p.stderr
    error, _ = _one_error_and_hint(p.stderr)
    assert "error: standard input (the prompt) is not UTF-8 text: caf\\udce9" in error
    assert server.requests == []


def test_a_chat_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(files, server):
    p = run_cli(
        "chat", "a.png", "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY}, input=b"caf\xe9\nhello\n"
    )
    assert p.returncode == 2, p.stderr  # the last failure's code, as for every failed turn of a piped chat
    assert "error: the message is not UTF-8 text: caf\\udce9" in p.stderr
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr
    assert len(server.requests) == 1 and "hello" in p.stdout  # the next line was asked


def test_a_file_name_that_is_not_utf8_still_names_its_file(files, server):
    name = os.fsdecode(b"na\xefve.png")  # "na\udcefve.png": any bytes are a valid file name
    write_image(files / name)
    p = run_cli("ask", name, "-p", "x", "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 0, p.stderr
    assert len(server.requests) == 1


def test_the_library_refuses_text_that_is_not_utf8_as_a_usage_error(server, protocol):
    with make_client(server, protocol) as client:
        for fields in ({"system": BAD}, {"stop": ["a", BAD]}, {"extra": {"k": BAD}}, {"model": BAD}):
            with pytest.raises(UsageError, match=r"is not UTF-8 text"):
                client.ask("x", **fields)
        with pytest.raises(UsageError, match=r"prompt is not UTF-8 text"):
            client.ask(BAD)
        messages = [qwenvl.Message(role="user", content=BAD)]
        with pytest.raises(UsageError, match=r"messages\[0\] is not UTF-8 text"):
            client.complete(messages=messages)

    async def in_async() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as client:
            with pytest.raises(UsageError, match=r"prompt is not UTF-8 text"):
                await client.ask(BAD)

    asyncio.run(in_async())
    assert server.requests == []


FLOATS = [  # every float option of every verb
    ["ask", "a.png", "-p", "x", "--timeout"],
    ["ask", "a.png", "-p", "x", "--retry-backoff-s"],
    ["ask", "a.png", "-p", "x", "--temperature"],
    ["ask", "a.png", "-p", "x", "--top-p"],
    ["ask", "a.png", "-p", "x", "--fps"],
    ["chat", "a.png", "--timeout"],
    ["tokens", "a.png", "--fps"],
    ["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl", "--rpm"],
    ["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl", "--tpm"],
    ["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl", "--max-cost"],
    ["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl", "--poll-interval"],
    ["batch", "status", "b1", "--timeout"],
    ["serve", "--request-timeout"],
]


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "Infinity"])
@pytest.mark.parametrize("args", FLOATS, ids=[" ".join((a[0], a[-1])) for a in FLOATS])
def test_a_float_option_refuses_what_is_not_a_finite_number(files, server, args, value):
    p = run_cli(*args, value, env={"DASHSCOPE_API_KEY": API_KEY}, input="")
    assert p.returncode == 2, (p.returncode, p.stderr)
    error, _ = _one_error_and_hint(p.stderr)
    assert f"'{args[-1]}'" in error, error
    assert "not a finite number" in error or "not in the range" in error, error  # (a bounded range says so)
    assert server.requests == []


def test_every_float_option_is_a_finite_float():
    """The one home: no float option of any verb is a plain float or a FloatRange that lets inf/nan through."""
    import click

    from qwenvl.cli.common import FiniteFloat
    from qwenvl.cli.main import cli

    def commands(group: click.Group):
        for command in group.commands.values():
            if isinstance(command, click.Group):
                yield from commands(command)
            else:
                yield command

    loose = [
        (command.name, param.name)
        for command in commands(cli)
        for param in command.params
        if isinstance(param.type, click.types.FloatParamType | click.FloatRange)
        and not isinstance(param.type, FiniteFloat)
    ]
    assert loose == []


@pytest.mark.parametrize("args", [[], ["batch"]], ids=["qwenvl", "qwenvl batch"])
def test_a_group_given_no_verb_shows_its_help_whole(args):
    p = run_cli(*args)
    assert p.returncode == 2  # as click: no command was run
    assert "error:" not in p.stderr and "\\n" not in p.stderr
    lines = p.stderr.splitlines()
    assert lines[0].startswith(f"Usage: qwenvl {' '.join(args)}".replace("  ", " ").rstrip() + " [OPTIONS] COMMAND")
    assert "Commands:" in lines and any(line.strip().startswith("run ") or "ask " in line for line in lines)


BLANK = [  # (arguments, the option the error names)
    (["chat", "a.png", "--session", ""], "--session"),
    (["chat", "a.png", "--session", "  "], "--session"),
    (["ask", "a.png", "-p", "x", "--schema", ""], "--schema"),
    (["ask", "a.png", "-p", "x", "--system", ""], "--system"),
    (["ask", "a.png", "-p", "x", "--stop", ""], "--stop"),
    (["ask", "a.png", "-p", "x", "--base-url", " "], "--base-url"),
    (["ask", "a.png", "-p", "x", "--region", ""], "--region"),
    (["ask", "a.png", "-p", "x", "--dtype", ""], "--dtype"),
    (["ocr", "a.png", "-o", ""], "--output"),
    (["ground", "a.png", "cat", "--out", ""], "--out"),
    (["extract", "a.png", "--schema", "s.json", "--csv", ""], "--csv"),
    (["events", "a.png", "--sheet", ""], "--sheet"),
    (["batch", "run", "a.png", "-p", "x", "-o", ""], "--output"),
    (["batch", "run", "a.png", "-p", "x", "-o", "o.jsonl", "--csv", ""], "--csv"),
    (["analyze", "--file", ""], "--file"),
    (["tokens", "a.png", "--model", ""], "--model"),
    (["skill", "--install", ""], "--install"),
    (["serve", "--api-key", ""], "--api-key"),
    (["mcp", "--allow-dir", ""], "--allow-dir"),
]


@pytest.mark.parametrize(("args", "flag"), BLANK, ids=[" ".join(a) for a, _ in BLANK])
def test_an_option_given_blank_is_refused_never_ignored(files, server, args, flag):
    p = run_cli(*args, env={"DASHSCOPE_API_KEY": API_KEY}, input="hello\n")
    assert p.returncode == 2, (p.returncode, p.stderr)
    error, hint = _one_error_and_hint(p.stderr)
    assert error.startswith("error: ") and error.endswith(f"{flag} is empty"), error
    assert flag in hint
    assert server.requests == []


TWICE = [
    (["ask", "a.png", "-p", "hi", "-p", "again"], "-p/--prompt"),
    (["ask", "a.png", "-p", "hi", "--prompt", "again"], "-p/--prompt"),
    (["ask", "a.png", "-p", "hi", "-m", "a", "--model", "b"], "-m/--model"),
    (["ask", "a.png", "-p", "hi", "--thinking", "--no-thinking"], "--thinking/--no-thinking"),
    (["ask", "a.png", "-p", "hi", "--timeout", "5", "--timeout", "9"], "--timeout"),
    (["ocr", "a.png", "-o", "a.txt", "-o", "b.txt"], "-o/--output"),
    (["ground", "a.png", "cat", "--out", "a.png", "--out", "b.png"], "--out"),
    (["batch", "run", "a.png", "-p", "x", "-o", "a.jsonl", "-o", "b.jsonl"], "-o/--output"),
    (["tokens", "a.png", "--fps", "1", "--fps", "2"], "--fps"),
    (["usage", "--days", "1", "--days", "2"], "--days"),
    (["chat", "a.png", "--session", "a", "--session", "b"], "--session"),
]


@pytest.mark.parametrize(("args", "label"), TWICE, ids=[" ".join(a) for a, _ in TWICE])
def test_an_option_that_takes_one_value_given_twice_is_refused(files, server, args, label):
    p = (
        run_cli(*args, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY})
        if args[0]
        in (
            "ask",
            "ocr",
            "ground",
            "chat",
        )
        else run_cli(*args, env={"DASHSCOPE_API_KEY": API_KEY})
    )
    assert p.returncode == 2, (p.returncode, p.stderr)
    error, hint = _one_error_and_hint(p.stderr)
    assert error == f"error: {label} is given twice: it takes one value"
    assert label in hint
    assert server.requests == []


def test_repeatable_options_and_repeated_flags_are_still_taken(files, server):
    p = run_cli(
        "ask", "a.png", "-p", "hi", "--stop", "a", "--stop", "b",
        "--no-stream", "--no-stream", "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert server.requests[0].json["stop"] == ["a", "b"]


@pytest.mark.parametrize(
    ("spec", "words", "hint"),
    [
        ("3-1", "page range '3-1' is reversed", "Write it as 1-3"),
        ("1,5-2", "page range '5-2' is reversed", "Write it as 2-5"),
        ("0-2", "has page 0", "--pages 1-3,5"),
        ("1-x", "bad page range '1-x'", "--pages 1-3,5"),
    ],
)
@pytest.mark.parametrize("verb", [["ask", "a.png", "-p", "x"], ["tokens", "a.png"], ["ocr", "a.png"]])
def test_a_page_range_is_checked_while_parsing_whatever_the_files(files, server, verb, spec, words, hint):
    p = run_cli(*verb, "--pages", spec, env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 2, p.stderr
    error, said = _one_error_and_hint(p.stderr)
    assert words in error and hint in said
    assert server.requests == []


@pytest.fixture
def photos(files: Path) -> Path:
    (files / "photos").mkdir()
    write_image(files / "photos" / "1.jpg", fmt="JPEG")
    write_image(files / "photos" / "2.jpg", fmt="JPEG", color=(0, 200, 0))
    (files / "one").mkdir()
    write_image(files / "one" / "only.png")
    return files


@pytest.mark.parametrize(
    ("args", "sent"),
    [
        (["ask", "photos/*.jpg", "-p", "Compare"], 1),  # one request with both images
        (["ask", "Compare these?", "photos/*.jpg"], 1),  # a "?" in the prompt is no glob
        (["chat", "photos/*.jpg"], 1),  # (the message on standard input)
        (["extract", "photos/*.jpg", "--schema", "s.json"], 2),  # one request per file
        (["extract", "photos", "--schema", "s.json"], 2),  # a folder, walked as batch and tokens do
        (["ground", "one/*.png", "cat"], 1),  # a glob matching one file, where the verb takes one
        (["ocr", "one/*"], 1),
    ],
)
def test_a_quoted_glob_is_expanded_on_every_verb(photos, server, args, sent):
    if args[0] == "extract":  # an answer of its own: the double's echo only quotes the schema (test_library_faults)
        server.enqueue(Reply(text='{"a": "x"}', times=sent))
    p = run_cli(*args, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY}, input="hi\n")
    assert p.returncode == 0, p.stderr
    assert len(server.requests) == sent
    if args[0] in ("ask", "chat"):
        assert "images=2" in p.stdout  # the double echoes how many images it got


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (
            ["ground", "photos/*.jpg", "cat"],
            2,
            "'photos/*.jpg' matches 2 files (photos/1.jpg, photos/2.jpg), and ground takes one",
        ),
        (["ocr", "photos/*.jpg"], 2, "'photos/*.jpg' matches 2 files (photos/1.jpg, photos/2.jpg), and ocr takes one"),
        (["extract", "nothing/*.jpg", "--schema", "s.json"], 3, "no file matches 'nothing/*.jpg'"),
        (["ask", "photos/*.gif", "-p", "x"], 3, "no file matches 'photos/*.gif'"),
    ],
)
def test_a_glob_that_cannot_be_used_says_why(photos, server, args, code, words):
    p = run_cli(*args, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == code, p.stderr
    error, _ = _one_error_and_hint(p.stderr)
    assert words in error
    assert server.requests == []


def test_a_quoted_glob_that_matches_a_folder_leaves_it_a_folder_as_the_shell_does(photos, server):
    """Found by a new user: `ask 'g/*'` walked a matched subfolder where the shell's `ask g/*` refuses it."""
    (photos / "photos" / "sub").mkdir()
    write_image(photos / "photos" / "sub" / "c.png")
    env = {"DASHSCOPE_API_KEY": API_KEY}
    p = run_cli("ask", "photos/*", "-p", "x", "--base-url", server.compat_base, env=env)
    assert p.returncode == 3 and "is a directory" in p.stderr, p.stderr
    assert server.requests == []
    p = run_cli("ask", "photos/**/*.png", "-p", "x", "--base-url", server.compat_base, env=env)
    assert p.returncode == 0 and "images=1" in p.stdout, p.stderr  # the file in the subfolder, by the pattern


def test_a_folder_hint_names_what_then_works(photos, server):
    p = run_cli("ask", "photos", "-p", "x", "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 3
    _, hint = _one_error_and_hint(p.stderr)
    assert "photos/*.jpg" in hint or "dir/*.jpg" in hint
    again = run_cli(
        "ask", "photos/*.jpg", "-p", "x", "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY}
    )
    assert again.returncode == 0, again.stderr  # what the hint suggests works


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "URL", "-p", "x", "--fetch-urls"],
        ["ocr", "URL", "--fetch-urls"],
        ["analyze", "--request", '{"prompt": "x", "image": "URL", "fetch_urls": true}'],
    ],
)
def test_a_fetch_urls_failure_has_a_hint_of_its_own(files, server, args):
    url = f"http://127.0.0.1:{_closed_port()}/photo.png"
    args = [a.replace("URL", url) for a in args]
    p = run_cli(*args, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 3, p.stderr
    error, hint = _one_error_and_hint(p.stderr)
    assert f"cannot fetch {url}: the connection was refused" in error
    assert "Check the URL" in hint and "--help" not in hint
    assert server.requests == []


def test_history_of_an_empty_chat_says_it_is_empty(files, server):
    p = run_cli("chat", "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY}, input="/history\n")
    assert p.returncode == 0, p.stderr
    assert "the conversation is empty" in p.stderr
    p = run_cli("chat", "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY}, input="hi\n/history\n")
    assert "the conversation is empty" not in p.stderr and "user: hi" in p.stderr


@pytest.mark.parametrize(
    ("args", "flag", "name"),
    [
        (["ground", "a.png", "cat", "--out"], "--out", "g.txt"),
        (["ground", "a.png", "cat", "--out"], "--out", "boxes"),
        (["events", "a.png", "--sheet"], "--sheet", "sheet.json"),
    ],
)
def test_a_picture_output_whose_suffix_is_no_picture_format_is_refused(files, server, args, flag, name):
    p = run_cli(*args, name, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 2, p.stderr
    error, hint = _one_error_and_hint(p.stderr)
    assert error.startswith(f"error: {flag} {name}: ") and "picture format" in error
    assert ".png" in hint
    assert server.requests == [] and not (files / name).exists()


@pytest.mark.parametrize(("name", "fmt"), [("g.png", "PNG"), ("g.JPG", "JPEG"), ("g.webp", "WEBP")])
def test_a_picture_output_is_written_in_the_format_its_suffix_names(files, server, name, fmt):
    from PIL import Image

    p = run_cli(
        "ground", "a.png", "cat", "--out", name, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY}
    )
    assert p.returncode == 0, p.stderr
    with Image.open(files / name) as img:
        assert img.format == fmt


def test_a_file_name_that_is_not_utf8_is_shown_the_same_escaped_way_everywhere(files, server):
    name = os.fsdecode(b"na\xefve.png")
    write_image(files / name)
    missing = os.fsdecode(b"gone\xef.png")
    table = run_cli("tokens", name, env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "na\\udcefve.png" in table.stdout and "\ufffd" not in table.stdout
    p = run_cli("ask", missing, "-p", "x", "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY})
    error, _ = _one_error_and_hint(p.stderr)
    assert "gone\\udcef.png" in error and "\ufffd" not in p.stderr


README = Path(__file__).parents[1] / "README.md"


def _keys(text: str) -> list[str]:
    """The top-level keys of an indented JSON object, in order, as printed (2 spaces)."""
    import re

    return re.findall(r'^  "(\w+)":', text, flags=re.M)


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("$ qwenvl ocr receipt.png --format json", ["ocr", "receipt.png", "--format", "json"]),
        ('$ qwenvl ground beach.jpg "every person and dog" --json', ["ground", "receipt.png", "cat", "--json"]),
    ],
)
def test_the_readme_shows_json_output_as_it_is_printed(files, server, command, args):
    readme = README.read_text(encoding="utf-8")
    start = readme.index(command)
    block = readme[readme.index("\n", start) + 1 : readme.index("```", start)]
    write_image(files / "receipt.png")
    p = run_cli(*args, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("{\n  ") and block.startswith("{\n  ")  # indented, not one line
    assert _keys(block) == _keys(p.stdout)


@pytest.mark.parametrize(
    "args",
    [
        ["tokens", ""],
        ["tokens", "a.png", " "],
        ["batch", "run", "", "-p", "x", "-o", "o.jsonl"],
        ["ground", "a.png", ""],  # the query: was "empty media reference", exit 3
        ["ask", "", "-p", "x"],
        ["ocr", ""],
        ["extract", "a.png", "", "--schema", "s.json"],
        ["models", ""],  # printed the whole table
    ],
)
def test_an_empty_argument_is_refused_never_the_current_folder(files, server, args):
    """One rule for a blank argument on every verb: exit 2, one line (it was exit 3 on some verbs, 0 on others)."""
    p = run_cli(*args, env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 2, p.stderr
    error, _ = _one_error_and_hint(p.stderr)
    # a blank text beside a file (ground's query) is named as what it is
    expected = "the query is empty" if args[0] == "ground" else "an argument is empty: it names nothing"
    assert error == f"error: {expected}"
    assert "a.png" not in p.stdout and not (files / "o.jsonl").exists()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "[1, NaN]", '{"a": Infinity}'])
def test_a_param_value_that_is_not_a_finite_number_is_refused(files, server, value):
    p = run_cli(
        "ask", "a.png", "-p", "x", "--param", f"k={value}", "--base-url", server.compat_base,
        env={"DASHSCOPE_API_KEY": API_KEY},
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    error, hint = _one_error_and_hint(p.stderr)
    assert "is not a finite number" in error and "--param k=" in hint
    assert server.requests == []


def test_a_file_name_that_is_not_utf8_works_in_folders_globs_batch_and_sessions(files, server, isolated_env):
    """Found by a new user: folder walks, quoted globs, batch items and chat sessions crashed (exit 5) on a name
    holding bytes that are not UTF-8; `ask` on the file itself worked. Every one works now, the name escaped."""
    folder = files / "nf"
    folder.mkdir()
    name = os.fsdecode(b"na\xefve.png")
    write_image(folder / name)
    env = {"DASHSCOPE_API_KEY": API_KEY}
    base = ["--base-url", server.compat_base]
    assert run_cli("tokens", "nf", env=env).returncode == 0
    p = run_cli("ask", "nf/*.png", "-p", "x", *base, env=env)
    assert p.returncode == 0, p.stderr
    p = run_cli("batch", "nf", "-p", "x", "-o", "out.jsonl", "--yes", *base, env=env)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in (files / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["status"] for r in rows if "id" in r] == ["ok"] and rows[-1]["id"] == "nf/na\\udcefve.png"
    p = run_cli("batch", "nf", "-p", "x", "-o", "out.jsonl", "--yes", *base, env=env)  # a rerun: nothing sent
    assert p.returncode == 0, p.stderr
    before = len(server.requests)
    p = run_cli("chat", f"nf/{name}", "--session", "nu8", *base, env=env, input="hello\n")
    assert p.returncode == 0, p.stderr
    p = run_cli("chat", "--session", "nu8", *base, env=env, input="again\n")
    assert p.returncode == 0, p.stderr
    assert len(server.requests) == before + 2  # both turns sent, the second with the saved session's image
    assert json.dumps(server.requests[-1].json).count('"data:image/png') == 1


def test_extract_walks_a_folder_for_images_pdfs_and_videos(files, server):
    """Found by a new user: `extract FOLDER` picked up a video it then refused (exit 3, "1 of 5 files failed");
    then a try-out found the video skipped without a word: extract now reads a video as well."""
    from test_backend_openai import make_video

    (files / "g").mkdir()
    write_image(files / "g" / "a.png")
    make_video(files / "g" / "d.mp4")
    for _ in range(2):
        server.enqueue(Reply(text='{"a": "x"}'))  # an answer of its own: the echo only quotes the schema
    p = run_cli(
        "extract", "g", "--schema", "s.json", "--jsonl", "--base-url", server.compat_base,
        env={"DASHSCOPE_API_KEY": API_KEY},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert [json.loads(line)["file"] for line in p.stdout.splitlines()] == ["g/a.png", "g/d.mp4"]


def test_a_bad_file_on_standard_input_is_named_as_standard_input(files, server):
    """Found by a new user: the error named the temporary copy (/tmp/qwenvl-stdin-.../stdin)."""
    data = (files / "a.png").read_bytes()
    for verb in (["ask", "-", "-p", "x"], ["ocr", "-"]):
        p = run_cli(*verb, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY}, input=data[:60])
        assert p.returncode == 3, p.stderr
        error, _ = _one_error_and_hint(p.stderr)
        assert "standard input (-)" in error and "qwenvl-stdin" not in p.stderr, p.stderr


@pytest.mark.parametrize(("url", "says"), [("http://127.0.0.1:99999", "Port out of range"), ("http://h:abc", "Port")])
def test_a_base_url_whose_port_is_no_port_is_a_usage_error(files, url, says):
    """Found by a new user: port 99999 was tried and "refused" (exit 5); it is no port at all."""
    p = run_cli("ask", "a.png", "-p", "x", "--base-url", url, env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 2, p.stderr
    error, _ = _one_error_and_hint(p.stderr)
    assert "is not a valid URL" in error and says in error
