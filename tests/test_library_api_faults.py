"""Faults a new user integrating the library met, each as a kind: lifecycle misuse from threads and loops ends
as ClientClosedError, a pydantic validator's refusal is said about the answer, the typed API holds under
``mypy --strict``, wrong-typed objects are refused at construction, a conversation takes one turn at a time,
and other APIs' names of a field are understood. Against the loopback DashScope double."""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from pydantic import BaseModel, field_validator

import qwenvl
import qwenvl.client
from conftest import API_KEY, make_client
from dashscope_server import Reply
from qwenvl.chat import Conversation
from qwenvl.errors import ClientClosedError, StructuredOutputError, UsageError
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
    with pytest.raises(UsageError, match="session is"):
        Conversation(aclient, session=3)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="fields is"):
        Conversation(aclient, fields=["model"])  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="takes no keyword 'thinking'") as err:
        Conversation(aclient, thinking=True)  # type: ignore[arg-type]
    assert 'fields={"enable_thinking": ...}' in (err.value.hint or "")
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


# --- lifecycle misuse from threads and loops: ClientClosedError, never a raw exception; nothing paid lost --------


def _outcomes(path) -> list[str]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT outcome FROM requests ORDER BY id")]
    finally:
        conn.close()


def _arrived(server, n: int = 1) -> None:
    import time

    deadline = time.monotonic() + 30
    while len([r for r in server.requests if r.method == "POST"]) < n:
        assert time.monotonic() < deadline, "the request never arrived"
        time.sleep(0.02)


def _in_thread(fn):
    import threading

    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_close_waits_for_a_call_in_flight_and_refuses_the_next(server, protocol, tmp_path):
    server.enqueue(Reply(delay_s=1.0, text="late but whole"))
    client = make_client(server, protocol, usage_log=tmp_path / "u.db")
    thread, out = _in_thread(lambda: client.ask("x"))
    _arrived(server)
    client.close()  # waits for the answer (CLOSE_WAIT_S)
    thread.join(60)
    assert isinstance(out[0], qwenvl.Response) and out[0].text == "late but whole", out
    with pytest.raises(ClientClosedError):
        client.ask("again")
    assert _outcomes(tmp_path / "u.db") == ["ok"]


def test_an_attempt_retried_during_the_close_wait_is_logged_as_any_other(server, tmp_path):
    """close() waits with the connections open: a call in flight that meets a 503 is retried and answers, and the
    retried attempt is a usage-log row of its own (it was left out once close had been called)."""
    server.enqueue(Reply(status=503, delay_s=0.8), Reply(delay_s=0.3, text="after a retry"))
    client = make_client(server, usage_log=tmp_path / "u.db", retry_backoff_s=0.01)
    thread, out = _in_thread(lambda: client.ask("x"))
    _arrived(server)
    client.close()
    thread.join(60)
    assert isinstance(out[0], qwenvl.Response) and out[0].text == "after a retry", out
    assert _outcomes(tmp_path / "u.db") == ["InternalServerError", "ok"]


def test_close_past_its_wait_cancels_the_call_as_client_closed_and_logs_it(server, tmp_path):
    import threading
    import time

    gate = threading.Event()
    server.enqueue(Reply(hold=gate), Reply(hold=gate, times=3))
    client = make_client(server, usage_log=tmp_path / "u.db")
    streamed = make_client(server, usage_log=tmp_path / "s.db")
    thread, out = _in_thread(lambda: client.ask("x"))
    sthread, sout = _in_thread(lambda: list(streamed.stream(prompt="y")))
    _arrived(server, 2)
    started = time.monotonic()
    client.close(wait_s=0.3)
    streamed.close()  # a stream is not waited for
    assert time.monotonic() - started < 20
    thread.join(60)
    sthread.join(60)
    gate.set()
    for result in (out[0], sout[0]):
        assert isinstance(result, ClientClosedError), repr(result)
        assert "closed while the request was in flight" in str(result)
    assert _outcomes(tmp_path / "u.db") == ["cancelled"]
    assert _outcomes(tmp_path / "s.db") == ["cancelled"]


def test_aclose_waits_for_a_task_in_flight_and_cancels_past_its_wait(server, tmp_path, monkeypatch):
    import threading

    gate = threading.Event()
    server.enqueue(Reply(delay_s=0.5, text="whole"), Reply(hold=gate, times=3))

    async def go() -> None:
        aclient = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=tmp_path / "u.db")
        task = asyncio.ensure_future(aclient.ask("x"))
        await asyncio.to_thread(_arrived, server)
        await aclient.aclose()
        assert (await task).text == "whole"
        with pytest.raises(ClientClosedError):
            await aclient.ask("again")
        monkeypatch.setattr(qwenvl.client, "CLOSE_WAIT_S", 0.3)
        aclient = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=tmp_path / "u.db")
        task = asyncio.ensure_future(aclient.ask("held"))
        await asyncio.to_thread(_arrived, server, 2)
        await aclient.aclose()
        with pytest.raises(ClientClosedError, match="in flight"):
            await task

    asyncio.run(go())
    gate.set()
    assert _outcomes(tmp_path / "u.db") == ["ok", "cancelled"]


def test_one_async_client_in_several_threads_loops_says_client_closed(server):
    import collections
    import threading

    aclient = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False)
    seen: collections.Counter[str] = collections.Counter()

    def thread(i: int) -> None:
        async def asks() -> None:
            for j in range(6):
                try:
                    await aclient.ask(f"t{i}-{j}")
                    seen["ok"] += 1
                except Exception as exc:
                    seen[type(exc).__name__] += 1
                await asyncio.sleep(0.01)

        asyncio.run(asks())

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(seen) <= {"ok", "ClientClosedError"}, seen
    assert seen["ok"] >= 6 and sum(seen.values()) == 24, seen


def test_a_second_event_loop_while_the_first_has_a_call_in_flight_is_refused(server):
    """The race test above passes whether or not the loops overlap; here they do, for sure: a call held in one
    thread's loop, and another loop asking meanwhile is refused with ClientClosedError (nothing sent)."""
    import threading
    import time

    aclient = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False)
    server.enqueue(Reply(delay_s=1.5))
    answered: list[str] = []
    first = threading.Thread(target=lambda: answered.append(asyncio.run(aclient.ask("held")).text))
    first.start()
    deadline = time.monotonic() + 30
    while not any(r.method == "POST" for r in server.requests):
        assert time.monotonic() < deadline, "the first call was not sent"
        time.sleep(0.01)
    with pytest.raises(ClientClosedError):
        asyncio.run(aclient.ask("meanwhile"))
    first.join(30)
    assert answered and sum(r.method == "POST" for r in server.requests) == 1


# --- the typed API holds under mypy --strict: the README's examples pass, a user's typos are flagged ------------

README = Path(__file__).resolve().parents[1] / "README.md"

TYPOS = """\
import asyncio

from pydantic import BaseModel

import qwenvl
from qwenvl.batch import Batch, BatchItem
from qwenvl.chat import Conversation


class Invoice(BaseModel):
    amount: float


job = Batch([BatchItem(id="a", reqest={})], "o.jsonl")  # E
job.rnu()  # E
qwenvl.Clinet()  # E
client = qwenvl.Client(protocl="native")  # E
qwenvl.Client(http_client="nope")  # E
client.complete(promt="hi")  # E
client.complete(prompt="hi", max_tokens="300")  # E
client.ask("hi", imgae="a.png")  # E
client.ask("hi", 3)  # E
r = client.complete(prompt="x", schema=Invoice)
print(r.parsed_as(Invoice).amout)  # E
for event in client.stream(prompt="x"):
    print(event.response.text)  # E
Conversation("qwen3-vl-plus")  # E
try:
    client.ask("x")
except qwenvl.StructuredOutputError as exc:
    print(exc.response.txt)  # E


async def main() -> None:
    async with qwenvl.AsyncClient(http_client=None) as aclient:
        aclient.ask("x")  # E


asyncio.run(main())
"""


def test_mypy_strict_passes_the_readme_examples_and_flags_a_users_typos(tmp_path):
    api = pytest.importorskip("mypy.api")
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.DOTALL | re.M)
    examples = [b for b in blocks if "import qwenvl" in b]
    assert len(examples) >= 3
    for i, block in enumerate(examples):
        (tmp_path / f"readme_{i}.py").write_text(block, encoding="utf-8")
    (tmp_path / "typos.py").write_text(TYPOS, encoding="utf-8")
    source = Path(qwenvl.__file__).resolve().parents[1]  # the qwenvl these tests import, as a user's installed one
    cache = Path(tempfile.gettempdir()) / "qwenvl-test-mypy-cache"  # kept between runs: a warm run takes seconds
    os.environ["MYPYPATH"] = str(source)
    try:
        out, err, _ = api.run(
            [
                "--strict",
                "--follow-imports=silent",  # the library's own checks are its mypy config's, not a user's
                "--no-error-summary",
                "--show-error-codes",
                "--cache-dir",
                str(cache),
                "--config-file",
                os.devnull,
                *sorted(str(p) for p in tmp_path.glob("*.py")),
            ]
        )
    finally:
        del os.environ["MYPYPATH"]
    errors = [line for line in out.splitlines() if ": error:" in line]
    readme = [line for line in errors if "readme_" in line]
    assert not readme, "\n".join(readme)
    flagged = {int(line.split(":")[1]) for line in errors if "typos.py" in line}
    marked = {i for i, line in enumerate(TYPOS.splitlines(), 1) if line.endswith("# E")}
    assert flagged == marked, (sorted(marked - flagged), sorted(flagged - marked), out, err)


def test_the_typed_fields_and_lazy_exports_are_the_runtimes():
    import qwenvl.batch
    from qwenvl.types import RequestFields

    assert set(RequestFields.__annotations__) - {"timeout"} == set(qwenvl.Request.model_fields)
    assert sorted(qwenvl.batch.__all__) == sorted(qwenvl.batch._LAZY)
    for name in qwenvl.batch.__all__:
        assert getattr(qwenvl.batch, name) is not None
    with pytest.raises(AttributeError):
        qwenvl.batch.Bacth  # type: ignore[attr-defined]  # noqa: B018
