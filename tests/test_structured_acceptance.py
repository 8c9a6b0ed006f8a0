"""A structured answer (JSON mode, a schema) is the whole answer: never a JSON fragment found in prose, never a
cut-off answer, and an object in JSON mode (``response_format`` ``json_object``). Sync and async, both
protocols, streamed and not."""

from __future__ import annotations

import asyncio

import pytest

import qwenvl
from conftest import API_KEY, make_client
from dashscope_server import DashScopeServer, Reply
from qwenvl import structured
from qwenvl.errors import StructuredOutputError

BAD = [
    ("Sure! The list [] is empty, and here is more text", "stop"),
    ("garbage \x01 [] garbage", "length"),
    ("I think {} maybe", "stop"),
    ("[]", "stop"),  # JSON mode asks for an object
    ('{"a": 1}', "length"),  # parses, but the answer was cut off
]


@pytest.mark.parametrize("text,finish", BAD)
def test_json_mode_refuses_fragments_arrays_and_cut_answers(
    server: DashScopeServer, protocol: str, text: str, finish: str
) -> None:
    server.enqueue(Reply(text=text, finish_reason=finish, times=2))
    with make_client(server, protocol) as c, pytest.raises(StructuredOutputError):
        c.ask("Return JSON with key a", json_mode=True)


@pytest.mark.parametrize("text,finish", BAD[:3])
def test_json_mode_refuses_fragments_async_and_streamed(server: DashScopeServer, text: str, finish: str) -> None:
    server.enqueue(Reply(text=text, finish_reason=finish, times=4))

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, retry_backoff_s=0.01) as c:
            with pytest.raises(StructuredOutputError):
                await c.ask("Return JSON with key a", json_mode=True)

    asyncio.run(go())
    with make_client(server) as c, pytest.raises(StructuredOutputError):
        for _ in c.stream(prompt="Return JSON with key a", json_mode=True):
            pass


@pytest.mark.parametrize(
    "text,value",
    [('  {"a": 1}\n', {"a": 1}), ('```json\n{"a": 1}\n```', {"a": 1}), ('\n```\n{"a": [1]}\n```\n', {"a": [1]})],
)
def test_json_mode_takes_the_whole_answer_bare_or_fenced(server: DashScopeServer, text: str, value: object) -> None:
    server.enqueue(Reply(text=text))
    with make_client(server) as c:
        assert c.ask("Return JSON with key a", json_mode=True).json == value


def test_a_schema_answer_is_the_whole_answer_too() -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    assert structured.parse_answer("[1, 2]", schema) == ([1, 2], [])
    value, errors = structured.parse_answer("Here: [1, 2] done", schema)
    assert value is None and errors == ["the answer has text around its JSON: it must be the JSON alone"]
    assert structured.parse_answer("no json", schema)[1] == ["no JSON value found in the answer"]
    assert structured.parse_answer("[1]", None, json_object=True)[1] == [
        "the answer is an array, not a JSON object (JSON mode asks for an object)"
    ]
