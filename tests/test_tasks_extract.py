"""`qwenvl extract FILE... --schema S.json`: validated JSON per file, JSONL or CSV for many."""

from __future__ import annotations

import csv
import json

import pytest
from pydantic import BaseModel

from conftest import run_cli, write_image
from dashscope_server import Reply

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "amount": {"type": "number"}, "items": {"type": "array"}},
    "required": ["title", "amount"],
}


@pytest.fixture
def files(isolated_env):
    (isolated_env / "invoice.schema.json").write_text(json.dumps(SCHEMA))
    return [write_image(isolated_env / f"inv{i}.png", (200, 100)) for i in range(3)]


def extract(env, *args):
    p = run_cli("extract", *args, env=env)
    assert "Traceback" not in p.stderr
    return p


def test_one_file_prints_its_json(server, env, files, protocol):
    server.enqueue(Reply(text='```json\n{"title": "Tea", "amount": 3.5}\n```'))
    p = extract(env, "inv0.png", "--schema", "invoice.schema.json", "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"title": "Tea", "amount": 3.5}
    body = server.requests[-1].json
    prompt = json.dumps(body)
    assert "JSON Schema" in prompt and "Extract the information" in prompt
    assert (body.get("response_format") or body["parameters"]["response_format"]) == {"type": "json_object"}


def test_many_files_give_jsonl_and_a_failure_is_kept(server, env, files):
    server.enqueue(
        Reply(text='{"title": "A", "amount": 1}'),
        Reply(text="no idea"),
        Reply(text='{"title": "still no amount"}'),  # invalid, even repaired
        Reply(text='{"title": "C", "amount": 3, "items": [{"n": 1}]}'),
    )
    p = extract(env, "inv0.png", "inv1.png", "inv2.png", "--schema", "invoice.schema.json")
    assert p.returncode == 5  # the first failure's exit code
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert {k: lines[0][k] for k in ("file", "json")} == {"file": "inv0.png", "json": {"title": "A", "amount": 1}}
    # what each answer took, as ask's footer says it (the accounting of every task verb)
    assert lines[0]["requests"] == 1 and lines[0]["request_id"] and lines[0]["usage"]["input_tokens"] > 0
    assert lines[0]["cost"] > 0 and lines[0]["currency"] == "CNY"
    assert lines[1]["file"] == "inv1.png" and "amount" in lines[1]["error"]
    assert lines[1]["raw_text"] == '{"title": "still no amount"}'
    assert {k: lines[2][k] for k in ("file", "json")} == {
        "file": "inv2.png",
        "json": {"title": "C", "amount": 3, "items": [{"n": 1}]},
    }
    assert "1 of 3 files failed" in p.stderr
    assert len(server.requests) == 4  # one repair for the second file


def test_csv(server, env, files, isolated_env):
    server.enqueue(
        Reply(text='{"title": "A", "amount": 1, "items": [{"n": 1}]}'),
        Reply(text='{"title": "B, \\"quoted\\"", "amount": 2.5}'),
    )
    p = extract(env, "inv0.png", "inv1.png", "--schema", "invoice.schema.json", "--csv", "out/table.csv")
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    with open(isolated_env / "out" / "table.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows == [
        ["file", "title", "amount", "items"],
        ["inv0.png", "A", "1", '[{"n": 1}]'],
        ["inv1.png", 'B, "quoted"', "2.5", ""],
    ]


def test_jsonl_for_one_file(server, env, files):
    server.enqueue(Reply(text='{"title": "A", "amount": 1}'))
    p = extract(env, "inv0.png", "--schema", "invoice.schema.json", "--jsonl")
    line = json.loads(p.stdout)
    assert p.stdout.count("\n") == 1 and line["file"] == "inv0.png" and line["json"] == {"title": "A", "amount": 1}
    assert line["request_ids"] == [line["request_id"]] and line["requests"] == 1


def test_one_file_invalid_after_repair_exits_5_with_the_raw_answer(server, env, files):
    server.enqueue(Reply(text="nope"), Reply(text="still nope"))
    p = extract(env, "inv0.png", "--schema", "invoice.schema.json")
    assert p.returncode == 5 and "still nope" in p.stderr and p.stdout == ""


@pytest.mark.parametrize(
    "schema_text,needle",
    [
        ('{"type": "banana"}', "not a valid JSON Schema"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must be an object"),
    ],
)
def test_bad_schema_file_exits_2(server, env, files, isolated_env, schema_text, needle):
    (isolated_env / "bad.json").write_text(schema_text)
    p = extract(env, "inv0.png", "--schema", "bad.json")
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and server.requests == []


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["inv0.png"], 2, "needs --schema"),
        (["inv0.png", "missing.png", "--schema", "invoice.schema.json"], 3, "not found"),
        (["inv0.png", "--schema", "nowhere.json"], 3, "schema file not found"),  # an input file: exit 3
        (["inv0.png", "--schema", "invoice.schema.json", "--thinking"], 2, "only in non-thinking mode"),
    ],
)
def test_extract_bad_input(server, env, files, args, code, needle):
    p = extract(env, *args)
    assert p.returncode == code, p.stderr
    assert needle in p.stderr and server.requests == []


class Invoice(BaseModel):
    title: str
    amount: float


def test_library_pydantic_schema(client, server, files):
    from qwenvl import tasks

    server.enqueue(Reply(text='{"title": "Tea", "amount": 3}'))
    r = tasks.extract(client, str(files[0]), Invoice)
    assert r.parsed == Invoice(title="Tea", amount=3.0) and r.json == {"title": "Tea", "amount": 3}
    server.enqueue(Reply(text='{"title": "A", "amount": 1}'), Reply(text="x"), Reply(text="y"))
    results = list(tasks.extract_many(client, [str(f) for f in files[:2]], Invoice))
    assert results[0].ok and isinstance(results[0].parsed, Invoice)
    assert not results[1].ok and results[1].exit_code == 5


def test_csv_keeps_an_invalid_answer_paid_for(server, env, files, isolated_env):
    """A file whose answer and repair are both invalid JSON: its CSV row keeps the raw answer (a raw_answer column,
    added with that row), and stderr shows it and what it took, as for one file."""
    server.enqueue(Reply(text='{"title": "A", "amount": 1}'), Reply(text="nope {"), Reply(text="still nope {"))
    p = extract(env, "inv0.png", "inv1.png", "--schema", "invoice.schema.json", "--csv", "t.csv")
    assert p.returncode == 5, p.stderr
    with open(isolated_env / "t.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["file", "title", "amount", "items", "error", "raw_answer"]
    assert rows[1] == ["inv0.png", "A", "1", "", "", ""]
    assert rows[2][0] == "inv1.png" and rows[2][4] and rows[2][5] == "still nope {"
    assert "raw answer:" in p.stderr and "still nope {" in p.stderr and "paid:" in p.stderr, p.stderr
