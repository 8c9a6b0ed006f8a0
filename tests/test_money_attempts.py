"""Every attempt that reached the service is in the usage log, whatever ended it: a retried attempt as its error,
an interrupted one (Ctrl-C, a cancelled or timed-out task, a request in flight at exit) as ``cancelled``, with
tokens and cost unknown (None, never 0). Sync and async, plain and streamed, library and CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, ctrl_c_reaches_children, make_client
from dashscope_server import Reply


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
    except sqlite3.OperationalError:  # no table: nothing was ever logged
        return []
    finally:
        conn.close()


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def assert_cancelled(row: dict) -> None:
    assert row["outcome"] == "cancelled"
    assert row["cost"] is None and row["input_tokens"] is None and row["output_tokens"] is None


def aclient(server, protocol: str, log: Path) -> qwenvl.AsyncClient:
    return qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url, usage_log=log)


async def timed_out_once_sent(server, ask: Awaitable[object]) -> None:
    """``asyncio.wait_for(ask, ...)`` whose time is up once the server has the request (TimeoutError raised, the
    request cancelled): its time counts from the request's arrival, never from the call, so a busy machine that is
    slow to send it cannot make it time out before it is sent. Waiting for the arrival is bounded (60 s)."""
    task = asyncio.ensure_future(ask)
    deadline = time.monotonic() + 60
    while not model_calls(server) and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert model_calls(server), "the request was not sent"
    await asyncio.wait_for(task, 0)


def test_async_wait_for_timeout_is_logged_cancelled(server, protocol, tmp_path):
    log = tmp_path / "u.db"
    server.enqueue(Reply(hold=threading.Event()))  # no answer before the server stops

    async def main() -> None:
        async with aclient(server, protocol, log) as ac:
            with pytest.raises(TimeoutError):
                await timed_out_once_sent(server, ac.ask("x"))

    asyncio.run(main())
    assert model_calls(server) == 1
    [row] = rows(log)
    assert_cancelled(row)


def test_async_task_cancel_is_logged_cancelled(server, tmp_path):
    log = tmp_path / "u.db"
    server.enqueue(Reply(delay_s=5))

    async def main() -> None:
        async with aclient(server, "compat", log) as ac:
            task = asyncio.ensure_future(ac.ask("x"))
            while not model_calls(server):
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    [row] = rows(log)
    assert_cancelled(row)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_ctrl_c_during_a_sync_request_is_logged_cancelled(server, protocol, tmp_path):
    log = tmp_path / "u.db"
    server.enqueue(Reply(hold=threading.Event()))  # no answer before the server stops
    gone = threading.Event()

    def ctrl_c_once_sent() -> None:  # Ctrl-C once the request is in flight, however long sending it took
        if wait_for(lambda: model_calls(server) >= 1 or gone.is_set(), 60) and not gone.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    with ctrl_c_reaches_children(), make_client(server, protocol, usage_log=log) as c:
        timer = threading.Thread(target=ctrl_c_once_sent, daemon=True)
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                c.ask("x")
        finally:
            gone.set()
            timer.join(60)
    assert model_calls(server) == 1
    [row] = rows(log)
    assert_cancelled(row)


@pytest.mark.parametrize("stream", [False, True])
def test_timed_out_attempts_that_were_retried_are_rows(server, protocol, stream, tmp_path):
    log = tmp_path / "u.db"
    server.enqueue(Reply(hold=threading.Event(), times=2))  # no answer before the server stops
    with make_client(server, protocol, usage_log=log) as c:  # 3 s: what the third attempt's answer has to meet
        r = c.ask("slow", timeout_s=3, stream=stream)
    assert r.text and model_calls(server) == 3
    outcomes = [row["outcome"] for row in rows(log)]
    assert outcomes == ["APITimeoutError", "APITimeoutError", "ok"]
    assert all(row["cost"] is None and row["input_tokens"] is None for row in rows(log)[:2])


def test_async_retried_attempts_are_rows(server, tmp_path):
    log = tmp_path / "u.db"
    server.enqueue(Reply(status=429, times=1), Reply(status=503, times=1))

    async def main() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=log, retry_backoff_s=0.01) as ac:
            await ac.ask("x")

    asyncio.run(main())
    assert [(r["outcome"], r["status"]) for r in rows(log)] == [
        ("RateLimitError", 429),
        ("InternalServerError", 503),
        ("ok", None),
    ]


def test_a_request_in_flight_at_exit_is_logged_cancelled(server, tmp_path):
    """A request a daemon thread still waits for when the process exits (a batch's worker given up after a second
    Ctrl-C): reached the service, so in the log as cancelled."""
    log = tmp_path / "u.db"
    server.enqueue(Reply(hold=threading.Event()))  # no answer before the server stops
    script = (  # exits when its standard input closes: once the request is in flight, however long that took
        "import sys, threading, qwenvl\n"
        f"c = qwenvl.Client(api_key={API_KEY!r}, base_url={server.url!r}, usage_log={str(log)!r})\n"
        "threading.Thread(target=lambda: c.ask('x'), daemon=True).start()\n"
        "sys.stdin.read()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE")}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        sent = wait_for(lambda: model_calls(server) == 1 or proc.poll() is not None, 60)
        _, err = proc.communicate(input="", timeout=60)  # its standard input closed: it exits
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sent and proc.returncode == 0, err
    assert model_calls(server) == 1
    [row] = rows(log)
    assert_cancelled(row)


@pytest.mark.parametrize("stream", [False, True])
def test_cli_ctrl_c_during_ask_is_logged(server, env, isolated_env, stream):
    server.enqueue(Reply(delay_s=30, chunk_delay_s=5))
    args = ["ask", "hi"] + ([] if stream else ["--no-stream"])
    with ctrl_c_reaches_children():
        proc = subprocess.Popen(
            [sys.executable, "-m", "qwenvl", *args],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE")}, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        assert wait_for(lambda: model_calls(server) >= 1), "the request was not sent"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    log = Path(os.environ["QWENVL_HOME"]) / "usage.db"
    [row] = rows(log)
    assert_cancelled(row)


def test_a_request_never_sent_is_still_not_logged(server, tmp_path):
    log = tmp_path / "u.db"
    with pytest.raises(qwenvl.MissingAPIKeyError):
        qwenvl.Client(base_url=server.url, usage_log=log).ask("x")
    assert rows(log) == []
