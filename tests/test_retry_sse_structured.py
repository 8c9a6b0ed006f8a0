"""Pure pieces: the retry policy, the SSE decoder, JSON extraction and validation."""

from __future__ import annotations

import email.utils

import pytest

from qwenvl import structured
from qwenvl.errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    MediaError,
    RateLimitError,
    SchemaDefinitionError,
    status_error,
)
from qwenvl.protocols.sse import SSEDecoder
from qwenvl.retry import parse_retry_after, retry_delay, should_retry


@pytest.mark.parametrize(
    "exc,retry",
    [
        (status_error(429, "x"), True),
        (status_error(500, "x"), True),
        (status_error(502, "x"), True),
        (status_error(503, "x"), True),
        (status_error(504, "x"), True),
        (status_error(400, "x"), False),
        (status_error(401, "x"), False),
        (status_error(403, "x"), False),
        (status_error(404, "x"), False),
        (status_error(501, "x"), False),
        (APIConnectionError("x"), True),
        (APITimeoutError("x"), True),
        (status_error(429, "x", retry_after=3600), False),
    ],
)
def test_should_retry(exc, retry):
    assert should_retry(exc) is retry


def test_status_classes():
    assert isinstance(status_error(429, "x"), RateLimitError)
    assert isinstance(status_error(400, "x"), BadRequestError)


@pytest.mark.parametrize("attempt,rng,expected", [(0, 0.0, 1.5), (1, 0.0, 3.0), (2, 0.0, 6.0), (0, 1.0, 1.125)])
def test_backoff_with_jitter(attempt, rng, expected):
    assert retry_delay(attempt, 1.5, rng=lambda: rng) == pytest.approx(expected)


def test_retry_after_is_a_floor():
    assert retry_delay(0, 0.1, retry_after=2.0, rng=lambda: 0.0) == 2.0
    assert retry_delay(3, 1.0, retry_after=2.0, rng=lambda: 0.0) == 8.0


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=lambda: now) == pytest.approx(30, abs=1)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_sse_decoder_dashscope_native_block():
    d = SSEDecoder()
    lines = [
        "id:1",
        "event:result",
        ":HTTP_STATUS/200",
        'data:{"a":1}',
        "",
        "id:2",
        "event:error",
        "status:429",
        'data:{"code":"Throttling"}',
        "",
    ]
    events = [e for e in (d.feed(line) for line in lines) if e]
    assert [(e.id, e.event, e.status, e.data) for e in events] == [
        ("1", "result", None, '{"a":1}'),
        ("2", "error", 429, '{"code":"Throttling"}'),
    ]


def test_sse_decoder_multiline_and_flush():
    d = SSEDecoder()
    assert d.feed("data: first") is None
    assert d.feed("data: second") is None
    assert d.feed("").data == "first\nsecond"
    d.feed("data: [DONE]")
    assert d.flush().data == "[DONE]"
    assert d.flush() is None


@pytest.mark.parametrize(
    "text,value",
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ("```\n[1, 2]\n```", [1, 2]),
        ('Sure! Here is the data: {"a": {"b": [1]}} Hope it helps.', {"a": {"b": [1]}}),
        ('noise {"x": 1} and a longer {"y": [1, 2, 3]} tail', {"y": [1, 2, 3]}),
    ],
)
def test_extract_json(text, value):
    assert structured.extract_json(text) == value


def test_extract_json_failures():
    for text in ("", "no json here", '{"unterminated": '):
        with pytest.raises(structured.NoJSONFound):
            structured.extract_json(text)


def test_validate_reports_paths():
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "number"}}},
        "required": ["items", "total"],
    }
    errors = structured.validate({"items": [1, "two"]}, schema)
    assert any("items/1" in e for e in errors) and any("total" in e for e in errors)


def test_load_schema_rejects_bad_schemas(tmp_path):
    with pytest.raises(SchemaDefinitionError, match="not valid JSON"):
        structured.load_schema("{nope")
    with pytest.raises(SchemaDefinitionError, match="JSON Schema"):
        structured.load_schema({"type": "objekt"})
    with pytest.raises(MediaError, match="not found"):  # a file that cannot be read: an input error (exit 3)
        structured.load_schema(tmp_path / "missing.json")
    assert structured.load_schema('{"type": "object"}') == {"type": "object"}
    assert "JSON" in structured.instruction(json_mode=True, schema=None)
    assert "json" in structured.instruction(json_mode=False, schema={"type": "object"}).lower()
