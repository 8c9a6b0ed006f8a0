"""Every schema, however it arrives, is checked before anything is sent (SchemaDefinitionError, exit 2), and an
answer that cannot be validated never raises jsonschema's own exception; a failed structured answer keeps what
it cost."""

from __future__ import annotations

import asyncio
import json

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import Reply
from qwenvl import structured
from qwenvl.errors import SchemaDefinitionError, StructuredOutputError

BAD_SCHEMAS = {
    "unknown type": {"type": "objectx"},
    "nested unknown type": {"type": "object", "properties": {"a": {"type": "strin"}}},
    "bad $ref": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
    "bad regex": {"type": "string", "pattern": "(unclosed"},
    "bad patternProperties": {"type": "object", "patternProperties": {"[": {}}},
    "format not a string": {"type": "string", "format": 5},
    "not an object": [{"type": "object"}],
}
GOOD = {
    "type": "object",
    "properties": {"a": {"$ref": "#/$defs/name"}, "b": {"type": "string", "pattern": "^[0-9]+$"}},
    "$defs": {"name": {"type": "string"}},
    "required": ["a"],
}


@pytest.mark.parametrize("name", list(BAD_SCHEMAS))
def test_library_sync_sends_nothing_for_a_bad_schema(server, protocol, png, name):
    with make_client(server, protocol) as c:
        with pytest.raises(SchemaDefinitionError) as info:
            c.complete(prompt="extract", image=str(png), schema=BAD_SCHEMAS[name])
        with pytest.raises(SchemaDefinitionError):  # as JSON text
            c.complete(prompt="extract", schema=json.dumps(BAD_SCHEMAS[name]))
    assert "\n" not in str(info.value) and info.value.hint
    assert server.requests == []


def test_library_async_and_request_object_send_nothing(server, protocol, png):
    async def main() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as c:
            with pytest.raises(SchemaDefinitionError, match="does not resolve"):
                await c.complete(prompt="x", image=str(png), schema=BAD_SCHEMAS["bad $ref"])
            with pytest.raises(SchemaDefinitionError, match="objectx"):
                await c.complete(prompt="x", schema={"type": "objectx"})

    asyncio.run(main())
    with pytest.raises(SchemaDefinitionError):
        qwenvl.Request(prompt="x", schema={"type": "objectx"})
    assert server.requests == []


def test_a_good_schema_with_refs_and_patterns_works(client, server):
    server.enqueue(Reply(text='{"a": "x", "b": "12"}'))
    assert client.complete(prompt="x", schema=GOOD).json == {"a": "x", "b": "12"}
    assert len(server.requests) == 1


def test_validating_an_answer_never_raises_jsonschemas_own_errors():
    for schema in ({"type": "objectx"}, {"$ref": "#/nowhere"}, {"properties": {"a": {"type": "nope"}}}):
        with pytest.raises(SchemaDefinitionError) as info:
            structured.validate({"a": 1}, schema)
        assert "\n" not in str(info.value)
    assert structured.validate({"a": 1}, GOOD)  # the real errors are still reported as lines


def test_cli_ask_extract_analyze_send_nothing_for_a_bad_schema(server, env, png, isolated_env):
    (isolated_env / "ref.json").write_text(json.dumps(BAD_SCHEMAS["bad $ref"]))
    for args in (
        ("ask", str(png), "-p", "x", "--schema", "ref.json"),
        ("extract", str(png), "--schema", "ref.json"),
        ("analyze", "--request", json.dumps({"prompt": "x", "image": str(png), "schema": {"type": "objectx"}})),
        ("analyze", "--request", json.dumps({"prompt": "x", "image": str(png)}), "--schema", "ref.json"),
    ):
        p = run_cli(*args, "--base-url", server.url, env=env)
        assert p.returncode == 2, (args, p.stderr)
        assert "error: not a valid JSON Schema" in p.stderr and "Traceback" not in p.stderr
    assert server.requests == []


def test_batch_request_line_with_a_bad_schema_sends_nothing(server, env, isolated_env):
    write_image(isolated_env / "x.png")
    reqs = isolated_env / "reqs.jsonl"
    reqs.write_text(
        json.dumps({"id": "bad", "prompt": "x", "image": "x.png", "schema": {"type": "objectx"}})
        + "\n"
        + json.dumps({"id": "good", "prompt": "y", "schema": GOOD})
        + "\n"
    )
    p = run_cli("batch", "--requests", str(reqs), "-o", "res.jsonl", "--base-url", server.url, env=env)
    assert p.returncode == 2 and "reqs.jsonl line 1: not a valid JSON Schema" in p.stderr, p.stderr
    assert server.requests == []  # the file is refused before anything is sent


# --- what a failed structured answer paid ---------------------------------------------------------------------

STRICT = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}


def test_the_error_carries_both_paid_requests_sync_and_async(server, protocol):
    server.enqueue(Reply(text="no idea"), Reply(text='{"total": "x"}'))
    with make_client(server, protocol) as c:
        with pytest.raises(StructuredOutputError) as info:
            c.complete(prompt="extract", schema=STRICT)
        one = c.complete(prompt="extract")  # one request's usage, for comparison (no schema)
    exc = info.value
    assert exc.requests == 2 and len(exc.request_ids) == 2 and len(set(exc.request_ids)) == 2
    assert exc.request_ids[-1] == exc.response.request_id
    assert exc.response.usage.input_tokens > one.usage.input_tokens  # both requests counted

    async def main() -> StructuredOutputError:
        server.enqueue(Reply(text="no idea"), Reply(text="still none"))
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as ac:
            with pytest.raises(StructuredOutputError) as ainfo:
                await ac.complete(prompt="extract", schema=STRICT)
        return ainfo.value

    aexc = asyncio.run(main())
    assert aexc.requests == 2 and len(aexc.request_ids) == 2


def test_ask_extract_and_analyze_say_what_a_failed_answer_paid(server, env, png, isolated_env):
    (isolated_env / "s.json").write_text(json.dumps(STRICT))
    for args in (
        ("ask", str(png), "-p", "x", "--schema", "s.json"),
        ("extract", str(png), "--schema", "s.json"),
        ("analyze", "--request", json.dumps({"prompt": "x", "image": str(png)}), "--schema", "s.json"),
    ):
        server.reset()
        server.enqueue(Reply(text="no idea"), Reply(text='{"total": "x"}'))
        p = run_cli(*args, "--base-url", server.url, env=env)
        assert p.returncode == 5, (args, p.stdout, p.stderr)
        assert "error: the answer is not valid JSON for the schema, even after one retry" in p.stderr
        paid = [line for line in p.stderr.splitlines() if line.startswith("paid: ")]
        assert len(paid) == 1 and "out tokens" in paid[0] and "2 requests" in paid[0], p.stderr
        assert paid[0].count(" request") == 1  # each id said once
        assert "≈" in paid[0]  # priced
        assert all(r.json and r.json.get("model") for r in server.requests) and len(server.requests) == 2


def test_a_local_models_failed_answer_is_used_not_paid(png, isolated_env):
    """A local model's answer costs no money: the line that says what a failed structured answer took reads
    ``used:`` (``cost: local``), never ``paid:``, in the CLI and in the MCP tool error."""
    from engine_server import EngineServer
    from qwenvl.mcp_server import tool_error

    (isolated_env / "s.json").write_text(json.dumps(STRICT))
    with EngineServer(engine="vllm") as engine:  # it answers what it saw: never JSON for the schema
        p = run_cli(
            "ask", str(png), "-p", "x", "--schema", "s.json", "--backend", "openai", "--base-url", engine.base_url
        )
        assert p.returncode == 5, p.stderr
        used = [line for line in p.stderr.splitlines() if line.startswith("used: ")]
        assert len(used) == 1 and "cost: local" in used[0] and "2 requests" in used[0], p.stderr
        assert "paid" not in p.stderr
        with (
            qwenvl.Client(backend="openai", base_url=engine.base_url, retry_backoff_s=0.01) as client,
            pytest.raises(StructuredOutputError) as caught,
        ):
            client.complete(prompt="x", image=str(png), schema=STRICT)
    said = tool_error(caught.value).content[0].text
    assert "\nused: 2 requests" in said and "cost local" in said and "paid" not in said, said


def test_analyze_json_mode_stays_lenient_as_the_skill(server, env, png):
    server.enqueue(Reply(text="not json"))
    p = run_cli(
        "analyze",
        "--request",
        json.dumps({"prompt": "x", "image": str(png)}),
        "--json-mode",
        "--base-url",
        server.url,
        env=env,
    )
    assert p.returncode == 0 and 'no "json"' in p.stderr and len(server.requests) == 1


def test_batch_record_and_summary_count_a_failed_structured_item(server, env, isolated_env):
    (isolated_env / "s.json").write_text(json.dumps(STRICT))
    write_image(isolated_env / "inv.png")
    server.enqueue(Reply(text="no idea"), Reply(text='{"total": "x"}'))
    p = run_cli(
        "batch",
        "inv.png",
        "-p",
        "Extract",
        "--schema",
        "s.json",
        "-o",
        "o.jsonl",
        "--json",
        "--base-url",
        server.url,
        env=env,
    )
    assert len(server.requests) == 2, p.stderr
    [line] = [json.loads(x) for x in (isolated_env / "o.jsonl").read_text().splitlines()]
    assert line["status"] == "error" and line["error"]["type"] == "StructuredOutputError"
    assert line["attempts"] == 2 and len(line["request_ids"]) == 2
    assert line["error"]["request_id"] == line["request_ids"][-1]
    assert line["usage"]["input_tokens"] > 0 and line["cost"] > 0 and line["currency"] == "CNY"
    summary = json.loads(p.stdout)
    assert summary["sent"] == 2 and summary["error"] == 1
    assert summary["cost"] == pytest.approx(line["cost"], abs=1e-6) and summary["cost"] > 0
    assert summary["input_tokens"] == line["usage"]["input_tokens"]


def test_a_repaired_answer_counts_both_requests(server, env, isolated_env, protocol):
    server.enqueue(Reply(text="no idea"), Reply(text='{"total": 1}'))
    with make_client(server, protocol) as c:
        r = c.complete(prompt="extract", schema=STRICT)
        assert r.json == {"total": 1} and r.requests == 2 and len(set(r.request_ids)) == 2
        assert c.complete(prompt="plain").requests == 1
    (isolated_env / "s.json").write_text(json.dumps(STRICT))
    write_image(isolated_env / "inv.png")
    server.reset()
    server.enqueue(Reply(text="no idea"), Reply(text='{"total": 1}'))
    p = run_cli(
        "batch",
        "inv.png",
        "-p",
        "x",
        "--schema",
        "s.json",
        "-o",
        "o.jsonl",
        "--json",
        "--base-url",
        server.url,
        env=env,
    )
    [line] = [json.loads(x) for x in (isolated_env / "o.jsonl").read_text().splitlines()]
    assert line["status"] == "ok" and line["attempts"] == 2 and len(line["request_ids"]) == 2, p.stderr
    assert json.loads(p.stdout)["sent"] == 2 == len(server.requests)
