"""`-` is how a verb reads standard input, for every option that takes a file to read (README, "The verbs").

A new user found `echo '{...}' | qwenvl analyze --file -` answered "request file not found: -" (exit 3), while
`batch --requests -` worked. Now `analyze --file -` and every `--schema -` read standard input; standard input
given to two things at once is refused naming both; and options that write a file or name a folder refuse `-`
clearly (exit 2, naming the option) instead of making a file or folder named "-".
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import run_cli, write_image
from dashscope_server import Reply

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}


@pytest.fixture
def files(isolated_env: Path) -> Path:
    write_image(isolated_env / "a.png")
    (isolated_env / "dir").mkdir()
    write_image(isolated_env / "dir" / "b.png")
    return isolated_env


def test_analyze_reads_its_request_from_standard_input(files: Path, server, env) -> None:
    server.enqueue(Reply(text="a red square"))
    p = run_cli("analyze", "--file", "-", input='{"prompt": "p", "image": "a.png"}\n', env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["text"] == "a red square"
    assert len(server.requests) == 1


def test_analyze_names_standard_input_in_its_errors(files: Path, server, env) -> None:
    p = run_cli("analyze", "--file", "-", input="{not json", env=env)
    assert p.returncode == 2, p.stderr
    assert "standard input (--file -) is not valid JSON" in p.stderr
    assert not server.requests


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "a.png", "-p", "title?", "--schema", "-"],
        ["extract", "a.png", "--schema", "-"],
        ["analyze", "--request", '{"prompt": "p", "image": "a.png"}', "--schema", "-"],
    ],
)
def test_schema_from_standard_input(args: list[str], files: Path, server, env) -> None:
    server.enqueue(Reply(text='{"title": "red"}'))
    p = run_cli(*args, input=json.dumps(SCHEMA), env=env)
    assert p.returncode == 0, p.stderr
    assert "red" in p.stdout
    assert "title" in json.dumps(server.requests[0].json)  # the schema was sent with the request


def test_batch_schema_from_standard_input(files: Path, server, env) -> None:
    server.enqueue(Reply(text='{"title": "red"}'))
    p = run_cli("batch", "dir", "-p", "title?", "--schema", "-", "-o", "r.jsonl", input=json.dumps(SCHEMA), env=env)
    assert p.returncode == 0, p.stderr
    line = json.loads((files / "r.jsonl").read_text().splitlines()[0])
    assert line["status"] == "ok" and line["result"]["json"] == {"title": "red"}


def test_a_schema_from_standard_input_that_is_not_one(files: Path, server, env) -> None:
    for text, says in (("[1, 2]", "holds no JSON Schema"), ("nope", "is not valid JSON")):
        p = run_cli("ask", "a.png", "-p", "x", "--schema", "-", input=text, env=env)
        assert p.returncode == 2, p.stderr
        assert "standard input (--schema -)" in p.stderr and says in p.stderr
    assert not server.requests


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "-", "-p", "x", "--schema", "-"],
        ["ask", "a.png", "-p", "-", "--schema", "-"],
        ["analyze", "--file", "-", "--schema", "-"],
        ["batch", "--requests", "-", "--schema", "-", "-o", "r.jsonl"],
        # verbs that read the schema before their files: refused all the same, before either is read
        ["extract", "-", "--schema", "-"],
        ["ocr", "-", "--schema", "-"],
        ["ground", "-", "dog", "--schema", "-"],
        ["events", "-", "--schema", "-"],
        ["batch", "--requests", "-", "-p", "-", "-o", "r.jsonl"],
    ],
)
@pytest.mark.parametrize("piped", ["schema", "picture"])
def test_standard_input_given_to_two_things_is_refused(args: list[str], piped: str, files: Path, server, env) -> None:
    # a picture piped in (what a user means by `extract - --schema - < a.png`) is not read as the schema either
    p = run_cli(*args, input=json.dumps(SCHEMA) if piped == "schema" else (files / "a.png").read_bytes(), env=env)
    assert p.returncode == 2, p.stderr
    assert "standard input can give" in p.stderr and "not both" in p.stderr
    assert "not UTF-8" not in p.stderr  # neither use read it
    assert not server.requests


@pytest.mark.parametrize(
    "args, option",
    [
        (["ocr", "a.png", "-o", "-"], "-o"),
        (["extract", "a.png", "--schema", "s.json", "--csv", "-"], "--csv"),
        (["analyze", "--request", '{"prompt": "p"}', "--output", "-"], "--output"),
        (["ground", "a.png", "dog", "--out", "-"], "--out"),
        (["events", "a.png", "a.png", "--sheet", "-"], "--sheet"),
        (["batch", "dir", "-p", "x", "-o", "-"], "-o"),
        (["batch", "dir", "-p", "x", "-o", "r.jsonl", "--csv", "-"], "--csv"),
        (["skill", "--install", "-"], "--install"),
        (["mcp", "--allow-dir", "-"], "--allow-dir"),
        (["serve", "--upload-dir", "-"], "--upload-dir"),
        (["serve", "--batch-dir", "-"], "--batch-dir"),
    ],
)
def test_options_that_write_or_name_a_folder_refuse_dash(
    args: list[str], option: str, files: Path, server, env
) -> None:
    (files / "s.json").write_text(json.dumps(SCHEMA))
    p = run_cli(*args, env=env)
    assert p.returncode == 2, p.stderr
    assert option in p.stderr and "'-' is not" in p.stderr, p.stderr
    assert "hint:" in p.stderr
    assert not (files / "-").exists() and not server.requests


def test_a_result_names_standard_input_as_given(files: Path, server, env) -> None:
    """`ground - x --json` said "image": "/tmp/qwenvl-stdin-.../stdin" (a temporary copy, deleted on exit): every
    result names the file the user gave as "-" as "-" (tokens already did)."""
    from test_tasks_events import SEED_ANSWER, make_clip

    png = (files / "a.png").read_bytes()
    (files / "s.json").write_text(json.dumps(SCHEMA))
    cases = [
        (["ground", "-", "dog", "--json"], png, '[{"bbox_2d": [1, 1, 50, 50], "label": "dog"}]', "image"),
        (["ocr", "-", "--format", "json"], png, "TEXT", "source"),
        (["extract", "-", "--schema", "s.json", "--jsonl"], png, '{"title": "x"}', "file"),
        (["events", "-", "--json"], make_clip(files / "clip.mp4").read_bytes(), json.dumps(SEED_ANSWER), "video"),
        (["tokens", "-", "--json"], png, None, None),
    ]
    for args, data, answer, key in cases:
        if answer is not None:
            server.enqueue(Reply(text=answer))
        p = run_cli(*args, input=data, env=env)
        assert p.returncode == 0, (args, p.stderr)
        assert "qwenvl-stdin" not in p.stdout + p.stderr, (args, p.stdout)
        if key is not None:
            assert json.loads(p.stdout)[key] == "-", (args, p.stdout)
    server.enqueue(Reply(text='{"title": "x"}'))  # the CSV's file column too
    p = run_cli("extract", "-", "--schema", "s.json", "--csv", "t.csv", input=png, env=env)
    assert p.returncode == 0, p.stderr
    table = list(csv.DictReader((files / "t.csv").read_text().splitlines()))
    assert [row["file"] for row in table] == ["-"], table
