"""Faults a new user of the library met, each as a kind: durations, blank values, async tasks, the key hint,
client lifecycle, media objects, swapped arguments, non-object schemas, lenient JSON, chat commands, snapshots.
Against the loopback DashScope double, both protocols, sync and async."""

from __future__ import annotations

import asyncio
import math

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli
from qwenvl._constants import MAX_DURATION_S
from qwenvl.errors import UsageError

# --- 1. durations: non-finite and absurdly large values are refused, everywhere ---------------------------------

BAD_SECONDS = [math.inf, -math.inf, math.nan, 1e12, MAX_DURATION_S * 2]


@pytest.mark.parametrize("value", BAD_SECONDS)
def test_client_timeout_must_be_finite_and_at_most_a_day(server, value):
    for cls in (qwenvl.Client, qwenvl.AsyncClient):
        with pytest.raises(UsageError, match="timeout_s"):
            cls(api_key=API_KEY, base_url=server.url, timeout_s=value, usage_log=False)


@pytest.mark.parametrize("value", BAD_SECONDS)
def test_call_timeout_is_refused_before_sending(server, protocol, png, value):
    with make_client(server, protocol, usage_log=False) as client:
        with pytest.raises(UsageError, match="timeout_s"):
            client.complete(prompt="hi", image=str(png), timeout_s=value)

        async def go() -> None:
            async with qwenvl.AsyncClient(
                api_key=API_KEY, protocol=protocol, base_url=server.url, usage_log=False
            ) as aclient:
                with pytest.raises(UsageError, match="timeout_s"):
                    await aclient.complete(prompt="hi", image=str(png), timeout_s=value)

        asyncio.run(go())
    assert server.requests == []


def test_a_day_is_the_longest_timeout_and_is_accepted(server, png):
    with make_client(server, usage_log=False, timeout_s=MAX_DURATION_S) as client:
        assert client.ask("hi", str(png)).text


@pytest.mark.parametrize("value", [math.inf, math.nan, 1e12])
def test_other_float_fields_refuse_non_finite(value):
    with pytest.raises(qwenvl.UsageError):
        qwenvl.Client(usage_log=False).request(prompt="hi", temperature=value, fps=value)


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "photo.png", "hi", "--timeout", "1e12"],
        ["ask", "photo.png", "hi", "--timeout", "inf"],
        ["ask", "photo.png", "hi", "--timeout", "nan"],
        ["batch", "in.jsonl", "-o", "out.jsonl", "--poll-interval", "1e12"],
        ["serve", "--request-timeout", "1e12"],
        ["batch", "status", "batch_1", "--timeout", "1e12"],
    ],
)
def test_cli_durations_are_usage_errors(env, png, args):
    args = [str(png) if a == "photo.png" else a for a in args]
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert "internal error" not in result.stderr


def test_library_duration_settings(tmp_path):
    from qwenvl.batch.runner import Batch
    from qwenvl.server.app import ServeSettings

    with pytest.raises(UsageError, match="request_timeout_s"):
        ServeSettings(request_timeout_s=math.inf)
    with pytest.raises(UsageError, match="poll_interval_s"):
        Batch([], tmp_path / "out.jsonl", poll_interval_s=1e12, usage_log=False, cache=False)


# --- 2. blank values are refused; empty collections that mean "none" are not sent --------------------------------


@pytest.mark.parametrize(
    "option",
    ["base_url", "model", "api_key", "protocol", "region", "backend"],
)
def test_blank_client_options_are_refused(option):
    for cls in (qwenvl.Client, qwenvl.AsyncClient):
        with pytest.raises(UsageError, match=f"^{option} is empty$") as info:
            cls(**{option: ""}, usage_log=False)
        assert option in (info.value.hint or "")
        with pytest.raises(UsageError, match=f"{option} is empty"):
            cls(**{option: "  "}, usage_log=False)


@pytest.mark.parametrize("field", ["model", "system", "stop", "base_url", "pages", "tool_choice", "image", "video"])
def test_blank_request_fields_are_refused(server, protocol, field):
    with make_client(server, protocol, usage_log=False) as client, pytest.raises(UsageError, match=f"{field} is empty"):
        client.complete(prompt="hi", **{field: ""})
    assert server.requests == []


def test_blank_item_of_a_stop_list_is_refused(server):
    with make_client(server, usage_log=False) as client, pytest.raises(UsageError, match="stop is empty"):
        client.complete(prompt="hi", stop=["END", ""])


def test_empty_tools_are_not_sent(server, protocol):
    with make_client(server, protocol, usage_log=False) as client:
        client.complete(prompt="hi", tools=[])
    body = server.requests[-1].json
    assert "tools" not in body and "tools" not in body.get("parameters", {})


def test_blank_rule_has_one_wording_library_and_cli(env, png):
    result = run_cli("ask", str(png), "hi", "--model", "", env=env)
    assert result.returncode == 2
    with pytest.raises(UsageError) as info:
        qwenvl.Client(model="", usage_log=False)
    assert "is empty" in result.stderr and str(info.value.message) == "model is empty"
    assert "Give a value, or leave" in result.stderr and info.value.hint.startswith("Give a value, or leave")
