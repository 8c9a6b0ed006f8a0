"""Qwen's <tool_call> blocks read from a model's answer (qwenvl.protocols.toolcalls): whole and streamed."""

from __future__ import annotations

import json

import pytest

from qwenvl.protocols import toolcalls
from qwenvl.protocols.toolcalls import StreamSplitter, parse

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


def names_args(parsed: toolcalls.Parsed) -> list[tuple[str, object]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.tool_calls or []]


def test_one_call_alone():
    p = parse(CALL)
    assert p.content == ""
    assert names_args(p) == [("get_weather", {"city": "Paris", "unit": "°C"})]
    call = p.tool_calls[0]
    assert call["type"] == "function" and call["id"].startswith("call_") and len(call["id"]) == 29
    assert call["function"]["arguments"] == '{"city": "Paris", "unit": "°C"}'  # a JSON string, non-ASCII kept


def test_text_around_and_between_blocks_is_the_content():
    p = parse(f"  Let me check.\n{CALL}\n{CALL2}\nDone checking. ")
    assert p.content == "  Let me check.\nDone checking. "
    assert [n for n, _ in names_args(p)] == ["get_weather", "get_time"]
    assert p.tool_calls[0]["id"] != p.tool_calls[1]["id"]
    assert parse(f"{CALL}\n\nThen I will answer.").content == "Then I will answer."


def test_no_block_is_plain_text_unchanged():
    for text in ("", "hello", "  spaced  \n", "a <tool_cal b", "</tool_call> alone"):
        assert parse(text) == toolcalls.Parsed(text, None)


def test_an_unclosed_last_block_is_a_call_when_its_json_is_whole():
    p = parse('Sure.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n')
    assert p.content == "Sure." and names_args(p) == [("f", {"x": 1})]


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "f", "arguments": {"x": 1}',  # cut short
        "not json at all",
        '["f", {}]',  # not an object
        '{"arguments": {}}',  # no name
        '{"name": 3, "arguments": {}}',  # a name that is not a string
        '{"name": "f"}',  # no arguments
        "[" * 100000,  # nested too deeply for json
    ],
)
def test_a_malformed_block_leaves_the_whole_answer_as_text(body):
    """vLLM's hermes parser: any block that is not a call -> no calls, the model's output as content."""
    text = f"Hi.\n{CALL}\n<tool_call>\n{body}\n</tool_call>"
    assert parse(text) == toolcalls.Parsed(text, None)


def test_arguments_of_any_json_type_are_kept_as_json():
    p = parse('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert p.tool_calls[0]["function"]["arguments"] == '"{\\"a\\": 1}"'  # as vLLM: json.dumps of the value


ANSWERS = [
    "",
    "Plain answer with no call at all.\n",
    "  Trailing spaces and <tool_ but never a call   ",
    CALL,
    f"Let me check.\n\n{CALL}",
    f" Two calls: \n{CALL}\n{CALL2}\n after é ",
    f"Before\n{CALL}\n<tool_call>\n{{broken\n</tool_call>\nafter",
    'Cut: <tool_call>\n{"name": "f", "arguments": {"x": 1}}',
    "x <tool_call> y",
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_streamed_deltas_equal_the_content_however_the_answer_is_cut(answer):
    expected = parse(answer).content
    for cut in range(len(answer) + 1):
        for pieces in ([answer[:cut], answer[cut:]], list(answer)):
            s = StreamSplitter()
            shown = "".join(s.feed(p) for p in pieces)
            assert shown + s.rest(expected) == expected, (cut, pieces)
            assert toolcalls.START not in shown and not shown.endswith(("<", " ", "\n"))
    for size in range(1, 8):  # pieces of every length up to 7 characters, cut at every offset
        for offset in range(size):
            pieces = [answer[:offset]] + [answer[i : i + size] for i in range(offset, len(answer), size)]
            s = StreamSplitter()
            assert "".join(s.feed(p) for p in pieces) + s.rest(expected) == expected


def test_streamed_text_before_a_call_comes_before_the_call_is_whole():
    s = StreamSplitter()
    assert s.feed("Let me ") == "Let me"  # the space waits: it may precede a block
    assert s.feed("check.\n<tool") == " check."
    assert s.feed("_call>\n{") == ""
    assert s.feed('"name": "f", "arguments": {}}</tool_call> and more') == ""
    assert s.rest(parse(s.buffer).content) == "\nand more"
