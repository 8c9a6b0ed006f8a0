"""Faults a new user integrating the library met, each as a kind: lifecycle misuse from threads and loops ends
as ClientClosedError, a pydantic validator's refusal is said about the answer, the typed API holds under
``mypy --strict``, wrong-typed objects are refused at construction, a conversation takes one turn at a time,
and other APIs' names of a field are understood. Against the loopback DashScope double."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel, field_validator

import qwenvl
from conftest import API_KEY, make_client
from dashscope_server import Reply
from qwenvl.chat import Conversation
from qwenvl.errors import StructuredOutputError, UsageError
from qwenvl.spelling import nearest

# --- other APIs' names of a request field: the suggestion is the field meant ------------------------------------


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("thinking", "enable_thinking"),
        ("max_new_tokens", "max_tokens"),
        ("max_completion_tokens", "max_tokens"),
        ("system_prompt", "system"),
        ("budget_tokens", "thinking_budget"),
    ],
)
def test_another_apis_name_of_a_field_suggests_the_field(server, given, meant):
    with make_client(server, usage_log=False) as client:
        with pytest.raises(UsageError) as err:
            client.complete(prompt="hi", **{given: 1})
        assert f"'{meant}'" in (err.value.hint or ""), err.value.hint
        conv = Conversation(client, fields={given: True})
        with pytest.raises(UsageError) as err:
            conv.send("hi")
        assert f"'{meant}'" in (err.value.hint or "") + str(err.value)
    assert not server.requests


def test_aliases_fit_flags_and_need_the_field_among_the_choices():
    assert nearest("--max-new-tokens", ["--max-tokens", "--model"]) == "--max-tokens"
    assert nearest("thinking", ["enable_thinking", "thinking_budget"]) == "enable_thinking"
    assert nearest("thinking", ["thinking_budget", "model"]) == "thinking_budget"  # no alias target: the ratio
    assert "enable_thinking" in (Conversation.__doc__ or "")
    assert "``thinking``" not in (Conversation.__doc__ or "")


# --- a pydantic validator's refusal of an answer: said about the answer, in the error and the repair prompt ------


class Positive(BaseModel):
    n: int

    @field_validator("n")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value


def _repair_text(server) -> str:
    bodies = [r.json for r in server.requests if r.method == "POST" and r.json]
    return json.dumps(bodies[-1]["messages"] if "messages" in bodies[-1] else bodies[-1]["input"]["messages"])


def test_a_model_validator_refusal_is_in_the_error_and_the_repair_prompt(server, protocol):
    server.enqueue(Reply(text='{"n": -1}'), Reply(text='{"n": -2}'))
    with make_client(server, protocol, usage_log=False) as client, pytest.raises(StructuredOutputError) as err:
        client.complete(prompt="n", schema=Positive)
    assert err.value.errors == ["at n: must be positive"]
    assert str(err.value).endswith("even after one retry: at n: must be positive"), str(err.value)
    repair = _repair_text(server)
    assert "at n: must be positive" in repair and "invalid request" not in repair
    # repaired: the second answer passes the validator
    server.enqueue(Reply(text='{"n": -1}'), Reply(text='{"n": 3}'))
    with make_client(server, protocol, usage_log=False) as client:
        assert client.complete(prompt="n", schema=Positive).parsed == Positive(n=3)


def test_a_model_validator_refusal_without_repair_and_with_a_failed_repair(server):
    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False) as aclient:
            server.enqueue(Reply(text='{"n": 0}'))
            with pytest.raises(StructuredOutputError) as err:
                await aclient.complete(prompt="n", schema=Positive, repair=False)
            assert err.value.errors == ["at n: must be positive"]
            server.enqueue(Reply(text='{"n": 0}'), Reply(status=400, error_message="bad"))
            with pytest.raises(StructuredOutputError) as err:
                await aclient.complete(prompt="n", schema=Positive)
            assert err.value.errors == ["at n: must be positive"], err.value
            assert "at n: must be positive; its repair request failed" in str(err.value)

    asyncio.run(go())


# --- wrong-typed objects are refused at construction (UsageError), never a late AttributeError -------------------


def test_wrong_http_clients_are_refused_at_construction(server):
    import httpx

    wrong = [(qwenvl.Client, httpx.AsyncClient()), (qwenvl.AsyncClient, httpx.Client()), (qwenvl.Client, "nope")]
    for cls, given in wrong:
        with pytest.raises(UsageError, match="http_client is") as err:
            cls(api_key=API_KEY, base_url=server.url, http_client=given, usage_log=False)
        assert "httpx." in (err.value.hint or "")
    with (
        httpx.Client() as right,
        qwenvl.Client(api_key=API_KEY, base_url=server.url, http_client=right, usage_log=False) as client,
    ):
        assert client.ask("hi").text
    from qwenvl.batch.batchapi import BatchAPI

    with pytest.raises(UsageError, match="http_client is"):
        BatchAPI(API_KEY, base_url=server.url, http_client=httpx.AsyncClient())
    assert len(server.requests) == 1  # the right one's


def test_wrong_backends_hooks_and_stores_are_refused_at_construction(server):
    from qwenvl.backends.dashscope import AsyncDashScopeBackend, DashScopeBackend

    sync_backend = DashScopeBackend(API_KEY, base_url=server.url)
    async_backend = AsyncDashScopeBackend(API_KEY, base_url=server.url)
    for cls, backend in ((qwenvl.Client, async_backend), (qwenvl.AsyncClient, sync_backend)):
        with pytest.raises(UsageError, match="backend"):
            cls(backend=backend, usage_log=False)
    for kw in ({"on_retry": "print"}, {"cache": 3}, {"usage_log": object()}):
        for cls in (qwenvl.Client, qwenvl.AsyncClient):
            with pytest.raises(UsageError):
                cls(api_key=API_KEY, base_url=server.url, **kw)
    sync_backend.close()


def test_conversations_batches_and_tasks_refuse_what_is_no_fitting_client(server, tmp_path):
    from qwenvl import tasks
    from qwenvl.batch import Batch, BatchItem

    for wrong in ("qwen3-vl-plus", None, object()):
        with pytest.raises(UsageError, match=r"qwenvl\.Client"):
            Conversation(wrong)
        with pytest.raises(TypeError, match="qwenvl client"):
            tasks.ground(wrong, "a.png", "cats")  # type: ignore[arg-type]
    aclient = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False)
    with pytest.raises(UsageError, match=r"await conv\.asend"):
        Conversation(aclient).send("hi")
    with pytest.raises(UsageError, match=r"await conv\.asend"):
        list(Conversation(aclient).stream("hi"))
    with pytest.raises(UsageError, match=r"qwenvl\.Client"):
        Batch([BatchItem(id="a", request={"prompt": "hi"})], tmp_path / "o.jsonl", client=aclient)  # type: ignore[arg-type]
    with make_client(server, usage_log=False) as client:

        async def go() -> None:
            with pytest.raises(UsageError, match=r"conv\.send"):
                await Conversation(client).asend("hi")

        asyncio.run(go())
    assert not server.requests


# --- one turn at a time: a second concurrent turn is refused before it is sent ---------------------------------


def test_a_second_concurrent_turn_is_refused_before_it_is_sent(server):
    import threading

    server.enqueue(Reply(delay_s=1, times=2))
    outcomes: list[object] = []
    with make_client(server, usage_log=False) as client:
        conv = Conversation(client)

        def turn(text: str) -> None:
            try:
                outcomes.append(conv.send(text))
            except UsageError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=turn, args=(f"q{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        refused = [o for o in outcomes if isinstance(o, UsageError)]
        assert len(outcomes) == 2 and len(refused) == 1, outcomes
        assert "turn in progress" in str(refused[0])
        assert len(conv.messages) == 2  # the answered turn, whole
        assert len([r for r in server.requests if r.method == "POST"]) == 1  # the refused one paid nothing
        conv.send("next")  # once the turn is over, the next one goes
        assert len(conv.messages) == 4


def test_a_second_concurrent_async_turn_is_refused_before_it_is_sent(server):
    server.enqueue(Reply(delay_s=1, times=2))

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False) as aclient:
            conv = Conversation(aclient)

            async def streamed() -> str:
                return "".join([e.text async for e in conv.astream("s")])

            outcomes = await asyncio.gather(conv.asend("a"), streamed(), return_exceptions=True)
            refused = [o for o in outcomes if isinstance(o, UsageError)]
            assert len(refused) == 1, outcomes
            assert len(conv.messages) == 2
            assert len([r for r in server.requests if r.method == "POST"]) == 1

    asyncio.run(go())
