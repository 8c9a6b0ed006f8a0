"""One home for each rule: the same decision made once, for every surface (library, CLI, estimate, batch, MCP,
serve), sync and async alike."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import qwenvl
import qwenvl.client
from conftest import API_KEY, make_client
from dashscope_server import Reply


def _outcomes(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT outcome FROM requests ORDER BY id")]
    finally:
        conn.close()


def _arrived(server, n: int = 1) -> None:
    deadline = time.monotonic() + 30
    while len([r for r in server.requests if r.method == "POST"]) < n:
        assert time.monotonic() < deadline, "the request never arrived"
        time.sleep(0.02)


# --- close(wait_s=): one wait, the condition, on both sides ------------------------------------------------------
def test_aclose_waits_on_the_condition_not_by_polling(server, tmp_path, monkeypatch):
    """aclose() waits for a task in flight with the sync close's condition (told when the call ends), not by waking
    every few milliseconds: no asyncio.sleep while it waits, and it ends once the call has answered."""
    server.enqueue(Reply(delay_s=0.6, text="whole"))
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float, *args, **kwargs):
        slept.append(delay)
        return await real_sleep(delay, *args, **kwargs)

    async def go() -> None:
        aclient = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=tmp_path / "u.db")
        task = asyncio.ensure_future(aclient.ask("x"))
        await asyncio.to_thread(_arrived, server)
        monkeypatch.setattr(qwenvl.client.asyncio, "sleep", counting_sleep)
        try:
            await asyncio.wait_for(aclient.aclose(wait_s=60), 60)
        finally:
            monkeypatch.setattr(qwenvl.client.asyncio, "sleep", real_sleep)
        assert task.done() and (await task).text == "whole"

    asyncio.run(go())
    assert slept == []
    assert _outcomes(tmp_path / "u.db") == ["ok"]


def test_a_cancelled_aclose_leaves_no_thread_waiting(server, tmp_path):
    """aclose() cancelled during its wait ends the worker thread's wait at once (it is told), rather than leaving it
    waiting out wait_s."""
    gate = threading.Event()
    server.enqueue(Reply(hold=gate, times=3))
    before = threading.active_count()

    async def go() -> None:
        aclient = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False)
        task = asyncio.ensure_future(aclient.ask("x"))
        await asyncio.to_thread(_arrived, server)
        closing = asyncio.ensure_future(aclient.aclose(wait_s=120))
        await asyncio.sleep(0.3)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        task.cancel()
        with pytest.raises(BaseException):  # noqa: B017 - cancelled, or cut by the close
            await task

    started = time.monotonic()
    asyncio.run(go())  # asyncio.run waits for the default executor's threads: the wait must have ended
    gate.set()
    assert time.monotonic() - started < 60
    deadline = time.monotonic() + 30
    while threading.active_count() > before + 2 and time.monotonic() < deadline:  # the server's own threads
        time.sleep(0.05)


# --- a backend given to the client: its retried attempts are logged, once -----------------------------------------
@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_a_given_backends_retried_attempts_are_logged_once(server, tmp_path, protocol):
    from qwenvl.backends.dashscope import DashScopeBackend

    told: list[int] = []
    server.enqueue(Reply(status=503), Reply(text="after a retry"))
    backend = DashScopeBackend(
        API_KEY, protocol=protocol, base_url=server.url, on_retry=lambda n: told.append(n.number)
    )
    with qwenvl.Client(backend=backend, usage_log=tmp_path / "u.db", retry_backoff_s=0.01) as client:
        assert client.ask("x").text == "after a retry"
        client.usage_log.flush()
    backend.close()
    assert told == [1]  # the backend's own hook, as its owner set it
    assert _outcomes(tmp_path / "u.db") == ["InternalServerError", "ok"]


def test_a_given_async_backends_retried_attempts_are_logged_once_streams_too(server, tmp_path):
    from qwenvl.backends.dashscope import AsyncDashScopeBackend

    server.enqueue(Reply(status=503), Reply(text="whole"), Reply(status=429), Reply(text="streamed"))

    async def go() -> None:
        backend = AsyncDashScopeBackend(API_KEY, base_url=server.url)
        client = qwenvl.AsyncClient(backend=backend, usage_log=tmp_path / "u.db", retry_backoff_s=0.01)
        assert (await client.ask("x")).text == "whole"
        events = [e async for e in client.stream(prompt="y")]
        assert events[-1].response.text == "streamed"
        await client.aclose()
        await backend.aclose()

    asyncio.run(go())
    assert _outcomes(tmp_path / "u.db") == ["InternalServerError", "ok", "RateLimitError", "ok"]


def test_a_made_backends_retried_attempt_is_logged_once_and_told(server, tmp_path):
    told: list[int] = []
    server.enqueue(Reply(status=503), Reply(text="ok"))
    client = make_client(server, usage_log=tmp_path / "u.db", retry_backoff_s=0.01, on_retry=lambda n: told.append(1))
    assert client.ask("x").text == "ok"
    client.close()
    assert told == [1]
    assert _outcomes(tmp_path / "u.db") == ["InternalServerError", "ok"]


# --- "may have been billed": decided once, when the row is written; old rows migrated once -------------------------
def test_old_usage_rows_are_migrated_once_and_the_summary_reads_the_flag(tmp_path):
    from qwenvl.store.db import connect
    from qwenvl.store.usage import MIGRATIONS, Entry, UsageLog

    path = tmp_path / "usage.db"
    conn = connect(path, MIGRATIONS[:2])  # a log written by a version before the flag
    now = time.time()
    rows = [
        ("qwen3-vl-plus", "compat", "cancelled", None, None),  # may have been billed
        ("qwen3-vl-plus", "compat", "APITimeoutError", None, None),  # may have been billed
        ("qwen3-vl-plus", "compat", "RateLimitError", 0.0, 429),  # refused: not billed
        ("qwen3-vl-plus", "compat", "APIConnectionError", 0.0, None),  # never delivered: cost 0
    ]
    with conn:
        for model, protocol, outcome, cost, status in rows:
            conn.execute(
                "INSERT INTO requests (time, model, protocol, outcome, cost, status, currency) VALUES (?,?,?,?,?,?,?)",
                (now, model, protocol, outcome, cost, status, "CNY" if cost is not None else None),
            )
    conn.close()
    log = UsageLog(path)
    try:
        (row,) = log.summarize()
        assert row["maybe_billed"] == 2 and row["errors"] == 4
        conn = sqlite3.connect(path)
        try:
            flags = [r[0] for r in conn.execute("SELECT maybe_billed FROM requests ORDER BY id")]
            applied = [r[0] for r in conn.execute("SELECT name FROM _migrations")]
        finally:
            conn.close()
        assert flags == [1, 1, 0, 0]
        assert "m003_maybe_billed" in applied
        # a new row says itself whether it may have been billed: the summary reads it, never re-derives it
        log.record(
            Entry(model="qwen3-vl-plus", protocol="compat", outcome="StreamInterruptedError", maybe_billed=False)
        )
        log.record(Entry(model="qwen3-vl-plus", protocol="compat", outcome="cancelled", maybe_billed=True))
        (row,) = log.summarize()
        assert row["maybe_billed"] == 3 and row["errors"] == 6
    finally:
        log.close()


def test_a_cancelled_request_is_written_with_its_flag(server, tmp_path):
    server.enqueue(Reply(delay_s=5))

    async def main() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=tmp_path / "u.db") as ac:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ac.ask("x"), 1)

    asyncio.run(main())
    conn = sqlite3.connect(tmp_path / "u.db")
    try:
        assert conn.execute("SELECT outcome, maybe_billed, cost FROM requests").fetchall() == [("cancelled", 1, None)]
    finally:
        conn.close()


# --- backends.preflight: no client below the client; `qwenvl mcp` checks the backend its tools use -----------------
def test_preflight_needs_no_client():
    """backends sit below the client (the pipeline's layering): preflight asks the backend itself."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from engine_server import EngineServer\n"
        "from qwenvl.backends import preflight\n"
        "with EngineServer(engine='vllm', served='qwen3-vl-tiny') as srv:\n"
        "    print(preflight('openai', {'base_url': srv.base_url}))\n"
        "print('qwenvl.client' in sys.modules)\n"
    )
    tests = str(Path(__file__).parent)
    env = {"PYTHONPATH": f"{Path(qwenvl.__file__).parent.parent}:{tests}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["('qwen3-vl-tiny', None)", "False"]


def test_mcp_checks_the_model_its_tools_would_use(isolated_env):
    """`qwenvl mcp --backend openai` checks, before serving, the backend its tools use (the client's own options):
    a $QWENVL_MODEL the engine does not serve is refused at start, as `qwenvl serve` refuses it, not every tool
    call's error."""
    from conftest import run_cli
    from engine_server import EngineServer

    with EngineServer(engine="vllm", served="qwen3-vl-tiny") as srv:
        out = run_cli(
            "mcp", "--backend", "openai", "--base-url", srv.base_url, env={"QWENVL_MODEL": "not-served"}, input=""
        )
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "not-served" in out.stderr


# --- "this option does not apply to these media": one structured refusal, every surface ---------------------------
def _refusal(exc: BaseException) -> tuple[str, str, frozenset[str]]:
    from qwenvl.errors import OptionNotAppliedError

    assert isinstance(exc, OptionNotAppliedError), repr(exc)
    assert exc.refusal is not None
    return exc.refusal.field, exc.refusal.option, exc.refusal.applies


def test_library_estimate_and_chat_refuse_with_the_same_data(server, png):
    from qwenvl.chat import Conversation
    from qwenvl.errors import UsageError
    from qwenvl.estimate import estimate_files

    with make_client(server) as client:
        with pytest.raises(UsageError) as planned:
            client.plan(prompt="x", image=str(png), fps=2)
        assert _refusal(planned.value)[:2] == ("fps", "fps") and "video" in _refusal(planned.value)[2]
        with pytest.raises(UsageError) as counted:
            estimate_files([png], client=client, fps=2, fps_option="--fps")
        assert _refusal(counted.value)[:2] == ("fps", "--fps")
        assert str(counted.value) == str(planned.value)  # one wording, in the library's words
        with pytest.raises(UsageError) as paged:
            client.plan(prompt="x", image=str(png), pages="1")
        assert _refusal(paged.value)[0] == "pages"
        conv = Conversation(client, fields={"pages": "1"})
        conv.attach(str(png))
        with pytest.raises(UsageError) as turned:
            conv.send("what is this?")
        assert _refusal(turned.value)[:2] == ("pages", "--pages")
    assert len(server.requests) == 0


def test_serve_names_the_field_an_option_refusal_is_about():
    from qwenvl.errors import UsageError
    from qwenvl.media.sources import check_options_apply
    from qwenvl.protocols.inbound import named_field

    with pytest.raises(UsageError) as caught:
        check_options_apply({"vl_high_resolution_images": "vl_high_resolution_images"}, frozenset({"video"}))
    assert named_field(caught.value, str(caught.value)) == "vl_high_resolution_images"


def test_batch_names_its_flag_from_the_refusal_not_its_text(server, png, isolated_env, monkeypatch):
    """`batch --requests` with a flag no line's media reads: refused in the flag's words (the refusal's field), for a
    library message that words the option its own way too (nothing parsed from the text)."""
    import json

    import qwenvl.media.sources as sources
    from conftest import run_cli

    requests = isolated_env / "r.jsonl"
    requests.write_text("".join(json.dumps({"id": f"i{n}", "prompt": "x", "image": str(png)}) + "\n" for n in range(3)))
    # the library's own words may change; the flag is named from the data
    monkeypatch.setattr(sources.NotApplied, "message", property(lambda self: f"the option {self.option} is not read"))
    env = {"DASHSCOPE_API_KEY": API_KEY, "QWENVL_BASE_URL": server.url}
    out = run_cli("batch", "--requests", str(requests), "--fps", "2", "-o", "out.jsonl", "--dry-run", env=env)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "--fps applies to videos only: no request takes it" in out.stderr, out.stderr
    assert len(server.requests) == 0


# --- a dry run, an estimate and `tokens` refuse what sending refuses ----------------------------------------------
def _video(path: Path) -> Path:
    from test_backend_openai import make_video

    return make_video(path)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--video-as", "file", "--upload", "inline", "--protocol", "native"), "an upload mode other than inline"),
        (("--video-as", "file"), "needs the native protocol"),
        (("--video-as", "file", "--protocol", "native", "--region", "intl"), "exists only in the Beijing region"),
    ],
)
def test_a_dry_run_refuses_the_upload_mode_sending_refuses(server, isolated_env, args, said):
    from conftest import run_cli

    _video(isolated_env / "a.mp4")
    env = {"DASHSCOPE_API_KEY": API_KEY}
    base = ("ask", "a.mp4", "-p", "hi", "--base-url", server.url, *args)
    sent = run_cli(*base, env=env)
    dry = run_cli(*base, "--dry-run", env=env)
    assert sent.returncode == dry.returncode == 2, (sent.stderr, dry.stderr)
    assert said in dry.stderr and dry.stderr == sent.stderr, (dry.stderr, sent.stderr)
    assert len(server.requests) == 0


def test_upload_oss_over_compat_is_refused_by_a_plan_and_an_estimate(server, png):
    from qwenvl.errors import UsageError

    with make_client(server) as client:
        for estimate_only in (False, True):
            with pytest.raises(UsageError, match="upload=oss works only with the native protocol"):
                client.plan(prompt="x", image=str(png), upload="oss", estimate_only=estimate_only)
        with pytest.raises(UsageError, match="upload=oss works only with the native protocol"):
            client.complete(prompt="x", image=str(png), upload="oss")
        client.plan(prompt="x", image="https://example.com/a.png", upload="oss")  # nothing local: nothing to upload
    assert len(server.requests) == 0


def test_tokens_refuses_a_whole_video_where_no_storage_exists(isolated_env):
    from conftest import run_cli

    _video(isolated_env / "a.mp4")
    out = run_cli("tokens", "a.mp4", "--video-as", "file", "--region", "intl")
    assert out.returncode == 2 and "exists only in the Beijing region" in out.stderr, out.stderr
    assert run_cli("tokens", "a.mp4", "--video-as", "file").returncode == 0


# --- a requests line's own fields are named as the line gives them ----------------------------------------------
def test_a_requests_lines_own_model_and_fields_are_named_in_its_hint(server, png, isolated_env):
    import json

    from conftest import run_cli

    lines = [
        {"id": "typo", "prompt": "hi", "image": str(png), "model": "qwen3-vl-plsu"},
        {"id": "long", "prompt": "hi", "image": str(png), "max_tokens": 99999},
        {"id": "fine", "prompt": "hi", "image": str(png)},
    ]
    requests = isolated_env / "r.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    env = {"DASHSCOPE_API_KEY": API_KEY}
    out = run_cli("batch", "--requests", str(requests), "-o", "out.jsonl", "--base-url", server.url, "--yes", env=env)
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in map(json.loads, (isolated_env / "out.jsonl").read_text().splitlines()) if "id" in r}
    typo, long = rows["typo"]["error"], rows["long"]["error"]
    assert "did you mean qwen3-vl-plus" in typo["message"]
    assert typo["hint"].startswith("Give model qwen3-vl-plus") and "--model" not in typo["hint"], typo
    assert long["hint"].startswith("Give max_tokens of at most") and "--max-tokens" not in long["hint"], long
    assert rows["fine"]["status"] == "ok"


def test_a_flag_that_sets_the_field_keeps_its_name(png):
    from qwenvl.batch.inputs import in_line_words, read_requests
    from qwenvl.errors import UsageError

    path = Path(png).parent / "r.jsonl"
    path.write_text('{"prompt": "hi", "image": "a.png", "max_tokens": 5}\n')
    (item,) = read_requests(path, {"max_tokens": 99999})  # --max-tokens overrides the line's
    assert "max_tokens" not in item.own
    exc = in_line_words(item, UsageError("too many", hint="Give --max-tokens / max_tokens of at most 10."))
    assert exc.raw_hint == "Give --max-tokens / max_tokens of at most 10."


def test_an_engines_parameter_refusal_comes_at_planning_too(png):
    """What the engine cannot take (top_k on a generic engine, thinking on one without a switch) is refused by a
    plan and an estimate-only plan (a batch's estimate) as by sending, before anything is sent."""
    from engine_server import EngineServer
    from qwenvl.errors import UsageError

    with EngineServer(engine="generic", served="my-qwen3-vl") as srv:
        with qwenvl.Client(backend="openai", base_url=srv.base_url) as client:
            for fields in ({"top_k": 2}, {"enable_thinking": True}, {"extra": {"top_k": 2}}):
                for estimate_only in (False, True):
                    with pytest.raises(UsageError, match=r"top_k|thinking"):
                        client.plan(prompt="x", image=str(png), estimate_only=estimate_only, **fields)
        assert srv.chats() == []
