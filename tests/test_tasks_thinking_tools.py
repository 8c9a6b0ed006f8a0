"""Thinking and tools in both protocols, streamed and not; the CLI's thinking display and its refusals."""

from __future__ import annotations

import json

import pytest

from conftest import API_KEY, run_cli
from dashscope_server import Reply
from qwenvl import Message, UsageError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALL = {
    "id": "call_7",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Hangzhou", "unit": "celsius"}'},
}


def params(server, index: int = -1) -> dict:
    body = server.requests[index].json
    return body.get("parameters", body)


def messages(server, index: int = -1) -> list[dict]:
    body = server.requests[index].json
    return body["messages"] if "messages" in body else body["input"]["messages"]


def complete(client, stream: bool, **fields):
    if not stream:
        return client.complete(**fields)
    events = list(client.stream(**fields))
    assert events[-1].type == "done"
    return events[-1].response, events


# --- thinking ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_both_protocols(client, server, png, stream):
    server.enqueue(Reply(text="The answer is 4.", reasoning="Two plus two makes four."))
    out = complete(client, stream, prompt="2+2?", image=str(png), enable_thinking=True, thinking_budget=200)
    response = out[0] if stream else out
    assert response.reasoning == "Two plus two makes four." and response.text == "The answer is 4."
    assert response.usage.reasoning_tokens == 5
    assert params(server)["enable_thinking"] is True and params(server)["thinking_budget"] == 200
    if stream:
        kinds = [e.type for e in out[1]]
        assert kinds.index("reasoning") < kinds.index("text")  # thinking streams first
    assert response.messages[-1].reasoning == "Two plus two makes four."


@pytest.mark.parametrize("protocol_name", ["compat", "native"])
@pytest.mark.parametrize("stream_flag", [[], ["--no-stream"]])
def test_cli_shows_reasoning_dimmed_on_stderr(server, env, png, protocol_name, stream_flag):
    server.enqueue(Reply(text="Four.", reasoning="Adding two and two.", times=2))
    args = ["ask", str(png), "2+2?", "--thinking", "--thinking-budget", "64", "--protocol", protocol_name, *stream_flag]
    p = run_cli(*args, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "Four.\n"
    assert "Adding two and two." in p.stderr and "thinking" in p.stderr
    p = run_cli(*args, "--hide-reasoning", env=env)
    assert p.stdout == "Four.\n" and "Adding two" not in p.stderr


@pytest.mark.parametrize("flag", [["--json-mode"], ["--schema", "s.json"]])
def test_cli_structured_output_with_thinking_is_refused(server, env, png, isolated_env, flag):
    (isolated_env / "s.json").write_text('{"type": "object"}')
    p = run_cli("ask", str(png), "x", "--thinking", *flag, env=env)
    assert p.returncode == 2
    assert "needs enable_thinking off" in p.stderr and "Traceback" not in p.stderr
    assert server.requests == []


def test_library_structured_output_with_thinking_is_refused(client, png):
    with pytest.raises(UsageError, match="needs enable_thinking off"):
        client.complete(prompt="x", image=str(png), enable_thinking=True, json_mode=True)


# --- tools ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip(client, server, png, protocol, stream):
    server.enqueue(Reply(tool_calls=[CALL]))
    out = complete(
        client, stream, prompt="Is it raining where this was taken?", image=str(png), tools=TOOLS, tool_choice="auto"
    )
    first = out[0] if stream else out
    assert first.finish_reason == "tool_calls" and first.text == ""
    call = first.tool_calls[0]
    assert call["id"] == "call_7" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Hangzhou", "unit": "celsius"}
    assert params(server)["tools"] == TOOLS and params(server)["tool_choice"] == "auto"

    history = [
        *first.messages,
        Message(role="tool", tool_call_id="call_7", name="get_weather", content='{"sky": "rain", "temp": 18}'),
    ]
    server.enqueue(Reply(text="Yes: it is raining, 18 °C."))
    out = complete(
        client,
        stream,
        messages=history,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    final = out[0] if stream else out
    assert final.text == "Yes: it is raining, 18 °C." and final.finish_reason == "stop"
    sent = messages(server)
    assistant, tool = sent[-2], sent[-1]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["id"] == "call_7"
    assert assistant["tool_calls"][0]["function"]["arguments"] == CALL["function"]["arguments"]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "call_7"
    assert tool.get("name") == (None if protocol == "compat" else "get_weather")  # each protocol's shape
    text = tool["content"] if isinstance(tool["content"], str) else tool["content"][0]["text"]
    assert json.loads(text) == {"sky": "rain", "temp": 18}
    assert params(server)["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert [m.role for m in final.messages] == ["user", "assistant", "tool", "assistant"]


def test_two_tool_calls_streamed(client, server, png):
    second = {
        "id": "call_8",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Xi\'an"}'},
    }
    server.enqueue(Reply(tool_calls=[CALL, second]))
    response, _ = complete(client, True, prompt="both cities?", image=str(png), tools=TOOLS)
    assert [c["id"] for c in response.tool_calls] == ["call_7", "call_8"]
    assert [json.loads(c["function"]["arguments"])["city"] for c in response.tool_calls] == ["Hangzhou", "Xi'an"]


def test_tools_are_validated_as_request_fields(client):
    with pytest.raises(UsageError, match="tools"):
        client.plan(prompt="x", tools="get_weather")


@pytest.mark.parametrize("async_", [False, True])
def test_tool_choice_without_tools(client, server, png, protocol, async_):
    """tool_choice alone is refused by OpenAI-style APIs: "auto"/"none" without tools mean no tools and are not
    sent; a choice that asks for a tool (or names one the tools do not define) is refused before sending."""
    import asyncio

    import qwenvl

    async def acomplete(**fields):
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as aclient:
            return await aclient.complete(**fields)

    def call(**fields):
        return asyncio.run(acomplete(**fields)) if async_ else client.complete(**fields)

    for choice, tools in (("auto", None), ("none", []), ("none", None)):
        server.enqueue(Reply(text="fine"))
        assert call(prompt="Hi", image=str(png), tool_choice=choice, tools=tools).text == "fine"
        assert "tool_choice" not in params(server) and "tools" not in params(server)
    sent = len(server.requests)
    for choice, tools in (
        ("required", None),
        ({"type": "function", "function": {"name": "get_weather"}}, []),
        ({"type": "function", "function": {"name": "get_wether"}}, TOOLS),
    ):
        with pytest.raises(UsageError, match="tool_choice"):
            call(prompt="Hi", tool_choice=choice, tools=tools)
    assert len(server.requests) == sent
