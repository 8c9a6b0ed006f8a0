"""`qwenvl serve`'s Batch API, faults found in review (each fixed as a kind): a paid answer whose write failed is
written, never asked again; lines take the key's concurrency slots and leave one for interactive requests; one
shutdown budget from the signal, no new line after it; the runner ends with its event loop; a wrong client is
refused when the app is made. Real servers on loopback, the openai SDK, real SQLite and files."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from typing import Any

import httpx
import pytest

import qwenvl
from conftest import API_KEY, run_cli
from dashscope_server import DashScopeServer, Reply
from qwenvl._constants import SERVE_GRACE_S
from qwenvl.errors import UsageError
from qwenvl.server.app import ServeSettings, create_app
from qwenvl.server.batches import BatchStore, Runner
from test_serve import SERVE_KEY
from test_serve_batch import (
    MODEL,
    _serve_process,
    cloud_serve,
    finished,
    jsonl,
    line,
    records,
    sdk,
    submit,
    until,
    user_texts,
)

openai = pytest.importorskip("openai")


def chat(url: str, text: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    return httpx.post(
        url + "/compatible-mode/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {SERVE_KEY}"},
        timeout=60,
    )


def in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(fn(*args)), daemon=True)
    t.start()
    return t, got


# --- 1. an answer that arrived is kept (SQLite) and only its write retried -----------------------------------


def test_an_answer_whose_write_failed_is_written_not_asked_again(server, tmp_path, monkeypatch):
    """A full disk when a line's answer is appended: the job stops and resumes after RETRY_S, and the answer (paid)
    is written from the database: each line reaches the upstream once (it was asked again: paid twice)."""
    from qwenvl.server import batches

    monkeypatch.setattr(batches, "RETRY_S", 0.1)
    real, calls = batches._append, []

    def full_once(f: Any, data: bytes) -> None:
        calls.append(data)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(f, data)

    monkeypatch.setattr(batches, "_append", full_once)
    with cloud_serve(server, tmp_path, batch_concurrency=1) as s, sdk(s) as oai:
        b = finished(oai, submit(oai, 4).id)
        assert b.status == "completed" and b.request_counts.completed == 4
        assert sorted(records(oai, b.output_file_id)) == ["l0", "l1", "l2", "l3"]
    assert sorted(user_texts(server)) == [f"line {i}" for i in range(4)]  # each once
    store = BatchStore(tmp_path)
    try:
        assert store.kept_answers(b.id) == []  # written, then forgotten
    finally:
        store.close()


def test_a_job_cancelled_after_a_failed_write_keeps_that_answer(server, tmp_path, monkeypatch):
    """A kept answer of a job cancelled before its write was retried is in its output, not named as never run."""
    from qwenvl.server import batches

    monkeypatch.setattr(batches, "RETRY_S", 30.0)  # the job would resume only after the cancel
    real = batches._append
    failed = threading.Event()

    def full_first(f: Any, data: bytes) -> None:
        if not failed.is_set():
            failed.set()
            raise OSError(28, "No space left on device")
        real(f, data)

    monkeypatch.setattr(batches, "_append", full_first)
    with cloud_serve(server, tmp_path, batch_concurrency=1) as s, sdk(s) as oai:
        b = submit(oai, 3)
        assert failed.wait(60)
        oai.batches.cancel(b.id)
        b = finished(oai, b.id)
        assert b.status == "cancelled" and b.request_counts.completed == 1
        assert set(records(oai, b.output_file_id)) == {"l0"}
        assert set(records(oai, b.error_file_id)) == {"l1", "l2"}
    assert user_texts(server) == ["line 0"]


# --- 2. lines take the key's slots, bounded, leaving one for interactive requests ----------------------------


def test_batch_lines_take_the_keys_slots(server, tmp_path):
    """With 2 slots per key, a batch line and a chat request in flight fill them: the next chat request gets 429
    (batch lines took no slot: one batch could hold the backend while every interactive request was let in)."""
    line_gate, chat_gate = threading.Event(), threading.Event()
    server.enqueue(Reply(hold=line_gate), Reply(hold=chat_gate), Reply(times=10))
    try:
        with cloud_serve(server, tmp_path, max_concurrent_per_key=2, batch_concurrency=1) as s, sdk(s) as oai:
            b = submit(oai, 2)
            until(lambda: len(user_texts(server)) == 1, "the first line in flight")
            t, got = in_thread(chat, s.url, "interactive")
            until(lambda: len(user_texts(server)) == 2, "the chat request in flight")
            r = chat(s.url, "one too many")
            assert r.status_code == 429 and r.headers["retry-after"], r.text
            assert "too many concurrent requests" in r.json()["error"]["message"]
            chat_gate.set()
            line_gate.set()
            t.join(60)
            assert got and got[0].status_code == 200
            assert finished(oai, b.id).request_counts.completed == 2
    finally:
        line_gate.set()
        chat_gate.set()
    assert "one too many" not in user_texts(server)


def test_batch_lines_leave_a_slot_for_interactive_requests(server, tmp_path):
    """3 slots, batch_concurrency 2, one chat request in flight: the batch takes one line (one slot stays free for
    the next interactive request), and its second once the chat request is answered."""
    chat_gate, line_gate = threading.Event(), threading.Event()
    server.enqueue(Reply(hold=chat_gate), Reply(hold=line_gate, times=10))
    try:
        with cloud_serve(server, tmp_path, max_concurrent_per_key=3, batch_concurrency=2) as s, sdk(s) as oai:
            t, got = in_thread(chat, s.url, "interactive")
            until(lambda: len(user_texts(server)) == 1, "the chat request in flight")
            b = submit(oai, 4)
            until(lambda: len(user_texts(server)) == 2, "a line in flight")
            time.sleep(0.5)  # a second line would have started by now (it waits for the chat request's slot)
            assert len(user_texts(server)) == 2, user_texts(server)
            chat_gate.set()
            t.join(60)
            assert got and got[0].status_code == 200
            until(lambda: len(user_texts(server)) == 3, "the second line in flight, the chat request answered")
            line_gate.set()
            assert finished(oai, b.id).request_counts.completed == 4
    finally:
        chat_gate.set()
        line_gate.set()


def test_batch_concurrency_must_leave_a_slot(tmp_path, isolated_env):
    with pytest.raises(UsageError, match="must be below the concurrent requests per key"):
        ServeSettings(max_concurrent_per_key=4, batch_concurrency=4)
    with pytest.raises(UsageError, match="must be below"):
        ServeSettings(max_concurrent_per_key=1, batch_concurrency=2)
    assert ServeSettings(max_concurrent_per_key=4, batch_concurrency=3).batch_concurrency == 3
    assert ServeSettings(max_concurrent_per_key=1).batch_concurrency == 1  # one slot: shared
    p = run_cli(
        "serve", "--no-auth", "--port", "0", "--backend", "openai", "--upstream", "http://127.0.0.1:9/v1",
        "--max-concurrent", "4", "--batch-concurrency", "4", timeout=60,
    )  # fmt: skip
    assert p.returncode == 2 and "must be below" in p.stderr and "--batch-concurrency" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


# --- 3. one shutdown budget, no new line after the signal ------------------------------------------------------


def test_sigterm_stops_within_one_budget_and_takes_no_new_line(server, tmp_path):
    """SIGTERM with a chat request held and batch lines running (1 s each, 2 at a time, then at once): no new line
    starts after the signal, the lines in flight are written, the held request gets its 503, and the process ends
    within one budget (it took uvicorn's grace, then the runner's, then more, while the runner kept starting lines);
    after a restart the job completes with each line asked once."""
    chat_gate = threading.Event()
    server.enqueue(Reply(hold=chat_gate), Reply(delay_s=1, times=6), Reply(times=100))  # then at once
    proc, url = _serve_process(server, tmp_path)
    try:
        t, got = in_thread(chat, url, "interactive")
        until(lambda: len(user_texts(server)) == 1, "the chat request in flight")
        with openai.OpenAI(base_url=url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0, timeout=30) as oai:
            b = submit(oai, 12)
        until(lambda: len(user_texts(server)) >= 4, "lines in flight")
        before = len(user_texts(server)) - 1
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - began
        t.join(60)
    finally:
        chat_gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), (proc.returncode, err)
    assert "Traceback" not in err and "cannot schedule" not in err, err
    assert took < 2 * SERVE_GRACE_S, f"the shutdown took {took:.1f} s"  # one budget, not two and more
    assert got and got[0].status_code == 503 and got[0].json()["error"]["code"] == "server_shutting_down"
    sent = [x for x in user_texts(server) if x.startswith("line ")]
    assert len(sent) <= before + 2, (before, sent)  # at most the two being started as the signal came
    out = tmp_path / "jobs" / b.id / "output.jsonl"
    written = [json.loads(x)["custom_id"] for x in out.read_bytes().splitlines()]
    assert sorted(written) == sorted(f"l{x.split()[1]}" for x in sent)  # every line sent was answered and written
    proc, url = _serve_process(server, tmp_path)
    try:
        with openai.OpenAI(base_url=url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0, timeout=30) as oai:
            b = finished(oai, b.id, deadline_s=120)
        assert b.status == "completed" and b.request_counts.completed == 12
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert sorted(x for x in user_texts(server) if x.startswith("line ")) == sorted(f"line {i}" for i in range(12))


# --- 4. the runner ends with its event loop ---------------------------------------------------------------------


def test_the_runner_ends_when_its_loops_executor_is_shut(tmp_path, caplog):
    """The event loop going away (its executor shut down) ends the runner quietly: it logged the failure and tried
    again every tick, for as long as the loop ran."""
    store = BatchStore(tmp_path)
    store.add_file("file-x", tmp_path / "x.jsonl", 0, "x.jsonl", "batch")  # the database exists: the runner ticks

    async def answer(body: Any, rid: str) -> tuple[int, dict[str, Any]]:
        return 200, {}

    async def main() -> bool:
        runner = Runner(store, answer, lambda model: None, 1)
        runner.start()
        await asyncio.sleep(0.2)
        await asyncio.get_running_loop().shutdown_default_executor()
        runner.wake.set()
        assert runner.task is not None
        await asyncio.wait((runner.task,), timeout=10)
        ended = runner.task.done()
        runner.task.cancel()
        return ended

    caplog.set_level(logging.DEBUG, logger="qwenvl.serve")
    try:
        assert asyncio.run(main()), "the runner still ran 10 s after its loop's executor was shut"
    finally:
        store.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


# --- 5. a wrong client is refused when the app is made ---------------------------------------------------------


def test_create_app_refuses_a_client_that_is_not_async(tmp_path):
    sync = qwenvl.Client(api_key=API_KEY, base_url="http://127.0.0.1:9")
    try:
        with pytest.raises(TypeError, match=r"asynchronous client .*qwenvl\.AsyncClient.*Client"):
            create_app(sync, batches=BatchStore(tmp_path))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"not builtins\.str"):
            create_app("http://127.0.0.1:9", batches=BatchStore(tmp_path))  # type: ignore[arg-type]
    finally:
        sync.close()


def test_a_folder_made_before_the_answers_table_is_brought_up_to_date(server: DashScopeServer, tmp_path):
    """A state folder whose database predates the kept answers opens (the table is added) and its jobs run."""
    from qwenvl.server.batches import _files_m001
    from qwenvl.store.db import Database

    folder = tmp_path / "old"
    Database(folder / "batches.db", [_files_m001]).run(lambda c: c.execute("SELECT 1 FROM files").fetchall())
    with cloud_serve(server, folder) as s, sdk(s) as oai:
        f = oai.files.create(file=("in.jsonl", jsonl([line("a", "hi")])), purpose="batch")
        b = oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert finished(oai, b.id).status == "completed"
    store = BatchStore(folder)
    try:
        assert store.kept_answers(b.id) == []
    finally:
        store.close()
