"""`qwenvl serve`'s Batch API (src/qwenvl/server/batches.py): the official openai SDK and `qwenvl batch --mode
batch-api` against a served app on loopback, in front of a local engine double (tests/engine_server.py) or the fake
DashScope cloud (tests/dashscope_server.py, whose replies can be held in flight); jobs and files in a real folder
and SQLite database, a restart on the same folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import qwenvl
from conftest import API_KEY, run_cli, write_image
from dashscope_server import DashScopeServer, Reply
from engine_server import EngineServer
from qwenvl.batch.batchapi import MAX_LINE_BYTES, MAX_LINES
from qwenvl.server.app import ServeSettings, create_app
from qwenvl.server.batches import BatchStore
from test_serve import SERVE_KEY, Served
from test_serve_checks import wait_healthy

openai = pytest.importorskip("openai")

TERMINAL = ("completed", "failed", "expired", "cancelled")
MODEL = "qwen3-vl-plus"  # the name the cloud code sends; served here by the engine's model


def line(cid: str, text: str, model: str = MODEL, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


class Stopping(Served):
    """A served app whose stop is checked: the thread must end (a server still stopping when its test moved on
    raced the next test for the machine, and its runner outlived its event loop)."""

    def __exit__(self, *exc: object) -> None:
        began = time.monotonic()
        super().__exit__(*exc)
        self.thread.join(60)  # a generous bound on a busy machine; the stop itself takes a fraction of a second
        assert not self.thread.is_alive(), f"the server was still stopping after {time.monotonic() - began:.0f} s"
        STOPS.append(time.monotonic() - began)


STOPS: list[float] = []  # how long each server of these tests took to stop (seconds)


def engine_serve(engine: EngineServer, folder: Path, **settings: Any) -> Served:
    client = qwenvl.AsyncClient(backend="openai", base_url=engine.base_url, retry_backoff_s=0.01)
    settings.setdefault("api_key", SERVE_KEY)
    settings.setdefault("pass_model_names", False)
    settings.setdefault("fetch_urls", True)
    settings.setdefault("model_map", {MODEL: None})
    return Stopping(create_app(client, ServeSettings(**settings), batches=BatchStore(folder)))


def cloud_serve(upstream: DashScopeServer, folder: Path, **settings: Any) -> Served:
    client = qwenvl.AsyncClient(api_key=API_KEY, base_url=upstream.url, retry_backoff_s=0.01, max_retries=0)
    settings.setdefault("api_key", SERVE_KEY)
    return Stopping(create_app(client, ServeSettings(**settings), batches=BatchStore(folder)))


def sdk(s: Served) -> Any:
    return openai.OpenAI(base_url=s.url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0, timeout=30)


def until(check: Callable[[], Any], what: str, deadline_s: float = 60) -> Any:
    """``check()`` until it is truthy; fails after ``deadline_s`` seconds (a generous bound on a busy machine)."""
    deadline = time.monotonic() + deadline_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {deadline_s} s"
        time.sleep(0.05)


def finished(oai: Any, batch_id: str, deadline_s: float = 60) -> Any:
    return until(
        lambda: (b := oai.batches.retrieve(batch_id)).status in TERMINAL and b, f"batch {batch_id} ends", deadline_s
    )


def records(oai: Any, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    text = oai.files.content(file_id).text
    out = [json.loads(x) for x in text.splitlines()]
    ids = [r["custom_id"] for r in out]
    assert len(ids) == len(set(ids)), ids  # every line once
    return {r["custom_id"]: r for r in out}


def user_texts(upstream: DashScopeServer) -> list[str]:
    said = []
    for r in upstream.requests:
        if r.path.endswith("/chat/completions") and isinstance(r.json, dict):
            said.append(r.json["messages"][-1]["content"])
    return said


# --- the openai SDK, a local engine -----------------------------------------------------------------------------


def test_openai_sdk_batch_on_a_local_engine_answers_as_the_chat_route(tmp_path, png):
    with EngineServer(engine="vllm", details=True, served="qwen2.5-vl-tiny") as eng, engine_serve(eng, tmp_path) as s:
        oai = sdk(s)
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(png)}}
        lines = [line(f"t{i}", f"question {i}", max_tokens=20) for i in range(4)]
        lines.append({**line("img", ""), "body": {"model": MODEL, "messages": [{"role": "user", "content": [image]}]}})
        lines.append(line("streamed", "no", stream=True))  # the Batch API does not stream: this line's 400
        lines.append({**line("nomsg", ""), "body": {"model": MODEL}})  # no messages: this line's 400
        f = oai.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        assert (f.object, f.purpose, f.filename, f.bytes) == ("file", "batch", "in.jsonl", len(jsonl(lines)))
        assert oai.files.retrieve(f.id).id == f.id and oai.files.content(f.id).content == jsonl(lines)
        b = oai.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "1"}
        )
        assert b.status == "validating" and b.metadata == {"run": "1"} and b.expires_at == b.created_at + 86400
        b = finished(oai, b.id)
        assert b.status == "completed", b
        assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (7, 5, 2)
        assert b.model == MODEL and b.completed_at and b.in_progress_at and b.finalizing_at
        ok, bad = records(oai, b.output_file_id), records(oai, b.error_file_id)
        assert set(ok) == {"t0", "t1", "t2", "t3", "img"} and set(bad) == {"streamed", "nomsg"}

        # each line's body is what POST /chat/completions answers for the same body (text and usage)
        for cid in ("t1", "img"):
            rec = ok[cid]
            assert rec["id"].startswith("batch_req_") and rec["error"] is None
            body = rec["response"]["body"]
            assert rec["response"]["status_code"] == 200 and body["id"] == "chatcmpl-" + rec["response"]["request_id"]
            same = next(x for x in lines if x["custom_id"] == cid)["body"]
            direct = oai.chat.completions.create(**same)
            assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
            assert body["usage"] == direct.usage.model_dump(exclude_none=True)
            assert body["model"] == MODEL
        assert ok["img"]["response"]["body"]["choices"][0]["message"]["content"].startswith("images=1 ")
        assert b.usage.input_tokens == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in ok.values())
        for cid in ("streamed", "nomsg"):
            rec = bad[cid]
            assert rec["response"]["status_code"] == 400 and rec["error"]["message"]
            assert rec["response"]["body"]["error"]["message"] == rec["error"]["message"]
            assert rec["response"]["body"]["request_id"] == rec["response"]["request_id"]
        direct_err = httpx.post(
            s.url + "/compatible-mode/v1/chat/completions",
            json=next(x for x in lines if x["custom_id"] == "nomsg")["body"],
            headers={"Authorization": f"Bearer {SERVE_KEY}"},
        )
        assert direct_err.status_code == 400
        assert direct_err.json()["error"]["message"] == bad["nomsg"]["error"]["message"]
        assert len(eng.chats()) == 5 + 2  # 5 lines once each (the 2 direct calls), the bad lines never sent

        # lists and pages, filters, the result files, deletion
        b2 = oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="48h")
        page = oai.batches.list(limit=1)
        assert [x.id for x in page.data] == [b2.id] and page.has_more
        assert [x.id for x in oai.batches.list(limit=1, after=b2.id).data] == [b.id]
        assert {x.id for x in oai.batches.list().data} == {b.id, b2.id}
        assert finished(oai, b2.id).status == "completed"
        listed = {x.id: x for x in oai.files.list()}
        assert listed[b.output_file_id].purpose == "batch_output" and listed[f.id].purpose == "batch"
        assert {x.id for x in oai.files.list(purpose="batch")} == {f.id}
        done = oai.files.delete(b.output_file_id)
        assert done.deleted and done.id == b.output_file_id
        with pytest.raises(openai.NotFoundError):
            oai.files.content(b.output_file_id)


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


def test_requests_refused_in_the_compat_envelope(tmp_path):
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as eng, engine_serve(eng, tmp_path) as s:
        oai = sdk(s)
        f = oai.files.create(file=("in.jsonl", jsonl([line("a", "hi")])), purpose="batch")
        cases: list[tuple[Callable[[], Any], type, str]] = [
            (
                lambda: oai.files.create(file=("in.jsonl", b"{}\n"), purpose="assistants"),
                openai.BadRequestError,
                "purpose",
            ),
            (lambda: oai.files.create(file=("in.txt", b"{}\n"), purpose="batch"), openai.BadRequestError, ".jsonl"),
            (lambda: oai.files.retrieve("file-nope"), openai.NotFoundError, "file-nope"),
            (lambda: oai.batches.retrieve("batch_nope"), openai.NotFoundError, "batch_nope"),
            (lambda: oai.batches.cancel("batch_nope"), openai.NotFoundError, "batch_nope"),
            (
                lambda: oai.batches.create(
                    input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
                ),
                openai.NotFoundError,
                "file-nope",
            ),
            (
                lambda: oai.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"),
                openai.BadRequestError,
                "endpoint",
            ),
            (
                lambda: oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="2h"),
                openai.BadRequestError,
                "completion_window",
            ),
            (lambda: oai.batches.list(limit=1000), openai.BadRequestError, "limit"),
        ]
        for call, kind, said in cases:
            with pytest.raises(kind) as got:
                call()
            assert said in got.value.message, got.value.message
            assert got.value.body["message"] and got.value.response.headers["x-request-id"]
        wrong_key = openai.OpenAI(base_url=s.url + "/compatible-mode/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong_key.batches.list()
        with pytest.raises(openai.AuthenticationError):
            wrong_key.files.content(f.id)
        r = httpx.post(s.url + "/v1/files", content=b"x", headers={"Authorization": f"Bearer {SERVE_KEY}"})
        assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]


def _bad_files() -> list[tuple[str, bytes, int | None, str]]:
    good = [line(f"c{i}", f"q{i}") for i in range(3)]
    return [
        ("not utf-8", jsonl(good[:1]) + b'{"custom_id": "\xff\xfe"}\n', 2, "UTF-8"),
        ("not json", jsonl(good[:2]) + b"{nope\n", 3, "not valid JSON"),
        ("repeated id", jsonl([*good, line("c1", "again")]), 4, "repeated"),
        ("wrong url", jsonl([good[0], {**good[1], "url": "/v1/embeddings"}]), 2, "url must be"),
        ("two models", jsonl([good[0], line("x", "q", model="qwen3-vl-flash")]), 2, "one model per file"),
        ("not served", jsonl([line("x", "q", model="gpt-4o")]), 1, "gpt-4o"),
        (
            "no custom_id",
            jsonl([{"method": "POST", "url": "/v1/chat/completions", "body": {"model": MODEL}}]),
            1,
            "custom_id",
        ),
        ("empty", b"\n\n", None, "no lines"),
        ("too long a line", jsonl(good[:1]) + b'{"x": "' + b"a" * MAX_LINE_BYTES + b'"}\n', 2, "6 MB"),
        (
            "too many lines",
            jsonl([line(str(i), "q") for i in range(MAX_LINES + 1)]),
            MAX_LINES + 1,
            str(MAX_LINES),
        ),
    ]


def test_a_file_that_breaks_a_rule_fails_its_job_naming_the_line(tmp_path):
    """Validation as the service does it: the job fails as a whole, ``errors.data`` naming the line; nothing runs."""
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as eng, engine_serve(eng, tmp_path) as s:
        oai = sdk(s)
        for name, data, at, said in _bad_files():
            f = oai.files.create(file=("in.jsonl", data), purpose="batch")
            b = oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
            b = finished(oai, b.id)
            assert b.status == "failed" and b.failed_at, (name, b)
            [error] = b.errors.data
            assert error.code == "invalid_file" and error.line == at and said in error.message, (name, error)
            assert b.output_file_id is None and b.error_file_id is None
        assert eng.chats() == []  # nothing was answered


# --- cancel, expiry and restart (the fake cloud holds a line in flight) ----------------------------------------


def held_upstream(server: DashScopeServer, answered: int) -> threading.Event:
    """The next ``answered`` lines are answered at once, the one after is held until the event is set."""
    gate = threading.Event()
    server.enqueue(*([Reply(times=answered)] if answered else []), Reply(hold=gate))
    return gate


def submit(oai: Any, n: int, words: str = "line") -> Any:
    f = oai.files.create(file=("in.jsonl", jsonl([line(f"l{i}", f"{words} {i}") for i in range(n)])), purpose="batch")
    return oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def test_cancel_keeps_what_was_answered_and_names_the_rest(server, tmp_path):
    gate = held_upstream(server, 2)
    with cloud_serve(server, tmp_path, batch_concurrency=1) as s:
        oai = sdk(s)
        b = submit(oai, 6)
        until(lambda: len(user_texts(server)) == 3, "the third line in flight")
        assert oai.batches.retrieve(b.id).request_counts.completed == 2  # counts as lines are answered
        c = oai.batches.cancel(b.id)
        assert c.status == "cancelling" and c.cancelling_at
        time.sleep(0.3)
        assert oai.batches.retrieve(b.id).status == "cancelling"  # the line in flight is answered first
        gate.set()
        b = finished(oai, b.id)
        assert b.status == "cancelled" and b.cancelled_at
        assert (b.request_counts.completed, b.request_counts.failed) == (3, 0)
        ok, bad = records(oai, b.output_file_id), records(oai, b.error_file_id)
        assert set(ok) == {"l0", "l1", "l2"} and set(bad) == {"l3", "l4", "l5"}
        assert all(r["response"] is None and r["error"]["code"] == "batch_cancelled" for r in bad.values())
        assert user_texts(server) == ["line 0", "line 1", "line 2"]  # no new line after the cancel
        assert oai.batches.cancel(b.id).status == "cancelled"  # a job that is over stays as it is


def test_lines_not_run_by_expires_at_are_batch_expired(server, tmp_path):
    gate = held_upstream(server, 1)
    with cloud_serve(server, tmp_path, batch_concurrency=1) as s:
        oai = sdk(s)
        b = submit(oai, 4)
        waiting = submit(oai, 2)  # behind the first: never started
        until(lambda: len(user_texts(server)) == 2, "the second line in flight")
        runner = s.server.config.app.state.batches
        runner.clock = lambda: time.time() + 2 * 86400  # the 24 h window is over
        gate.set()
        b = finished(oai, b.id)
        assert b.status == "expired" and b.expired_at
        ok, bad = records(oai, b.output_file_id), records(oai, b.error_file_id)
        assert set(ok) == {"l0", "l1"} and set(bad) == {"l2", "l3"}
        assert all(r["error"]["code"] == "batch_expired" for r in bad.values())
        w = finished(oai, waiting.id)
        assert w.status == "expired" and (w.request_counts.total, w.request_counts.completed) == (2, 0)
        assert w.output_file_id is None and set(records(oai, w.error_file_id)) == {"l0", "l1"}
        assert len(user_texts(server)) == 2


def test_a_restart_resumes_the_lines_not_answered_and_keeps_the_rest(server, tmp_path):
    gate = held_upstream(server, 3)  # the first job's line, then l0 and l1
    with cloud_serve(server, tmp_path, batch_concurrency=1, shutdown_grace_s=0.5) as s:  # l2 is cut at 0.5 s
        oai = sdk(s)
        done = submit(oai, 1, "first job")
        until(lambda: oai.batches.retrieve(done.id).status == "completed", "the first job")
        b = submit(oai, 5)
        until(lambda: len(user_texts(server)) == 4, "line l2 in flight")  # 1 + l0, l1 answered, l2 held
    # the server stopped with l2 in flight (not answered); a crash cut the output file's last line mid-write
    out = tmp_path / "jobs" / b.id / "output.jsonl"
    assert len(out.read_bytes().splitlines()) == 2
    with out.open("ab") as f:
        f.write(b'{"id": "batch_req_x", "custom_id": "l3", "respo')
    gate.set()
    with cloud_serve(server, tmp_path, batch_concurrency=1) as s:
        oai = sdk(s)
        b = finished(oai, b.id)
        assert b.status == "completed" and b.request_counts.completed == 5
        ok = records(oai, b.output_file_id)
        assert sorted(ok) == ["l0", "l1", "l2", "l3", "l4"]
        texts = user_texts(server)
        assert texts.count("line 0") == texts.count("line 1") == 1  # answered before the restart: not again
        assert texts.count("line 3") == texts.count("line 4") == 1
        assert oai.batches.retrieve(done.id).status == "completed"  # the finished job and its files are kept
        assert set(records(oai, oai.batches.retrieve(done.id).output_file_id)) == {"l0"}
        assert {x.id for x in oai.batches.list().data} == {done.id, b.id}


def test_interactive_requests_are_answered_while_a_batch_runs(server, tmp_path):
    """The batch takes ``batch_concurrency`` lines at a time: with one held, a chat request is answered at once."""
    gate = held_upstream(server, 0)
    with cloud_serve(server, tmp_path, batch_concurrency=1) as s:
        oai = sdk(s)
        b = submit(oai, 3)
        until(lambda: len(user_texts(server)) == 1, "the first line in flight")
        r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "now"}])
        assert r.choices[0].message.content.startswith("echo: now")
        assert len(user_texts(server)) == 2  # the batch did not take a second line meanwhile
        gate.set()
        assert finished(oai, b.id).status == "completed"


# --- qwenvl batch --mode batch-api against serve ---------------------------------------------------------------


def test_qwenvl_batch_api_mode_runs_unchanged_on_a_local_engine(tmp_path, isolated_env):
    write_image(isolated_env / "a.png")
    write_image(isolated_env / "b.png", color=(0, 0, 250))
    with (
        EngineServer(engine="vllm", details=True, served="qwen2.5-vl-tiny") as eng,
        engine_serve(eng, tmp_path / "state") as s,
    ):
        args = ["batch", "a.png", "b.png", "-p", "Caption", "-o", "o.jsonl", "--mode", "batch-api"]
        args += ["--model", MODEL, "--poll-interval", "0.05", "--base-url", s.url, "--json"]
        p = run_cli(*args, env={"DASHSCOPE_API_KEY": SERVE_KEY}, timeout=120)
        assert p.returncode == 0, p.stderr
        summary = json.loads(p.stdout)
        assert summary["ok"] == 2 and len(summary["batch_ids"]) == 1
        out = [json.loads(x) for x in Path("o.jsonl").read_text().splitlines()]
        assert {r["status"] for r in out} == {"ok"} and {r["mode"] for r in out} == {"batch-api"}
        assert all(r["result"]["text"].startswith("images=1 ") for r in out)
        assert len(eng.chats()) == 2
        job = sdk(s).batches.retrieve(summary["batch_ids"][0])
        assert job.status == "completed" and job.request_counts.completed == 2


def test_two_servers_on_one_folder_run_each_line_once(server, tmp_path):
    """``--workers N``: every process answers the routes from the one folder, one of them runs the jobs."""
    with cloud_serve(server, tmp_path) as first, cloud_serve(server, tmp_path) as second:
        one, two = sdk(first), sdk(second)
        jobs = [submit(one, 3, "from one"), submit(two, 3, "from two")]
        for job in jobs:
            done = finished(one if job is jobs[1] else two, job.id)  # each seen through the other server
            assert done.status == "completed" and done.request_counts.completed == 3
        texts = user_texts(server)
        assert sorted(texts) == sorted(f"from {w} {i}" for w in ("one", "two") for i in range(3))
        assert {x.id for x in one.batches.list().data} == {x.id for x in two.batches.list().data}
        one.close()
        two.close()


def test_concurrent_first_requests_make_one_backend(server, monkeypatch):
    """A batch's first lines reach a fresh client at once: each made a backend in its worker thread, one was kept,
    and the others' connections were never closed (seen as unclosed transports when the server stopped)."""
    import asyncio

    from qwenvl.backends import dashscope

    made: list[object] = []
    real = dashscope.AsyncDashScopeBackend.__init__

    def counted(self: object, *a: Any, **k: Any) -> None:
        made.append(self)
        time.sleep(0.2)  # a slow construction (importing httpx), so that the requests overlap
        real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(dashscope.AsyncDashScopeBackend, "__init__", counted)

    async def main() -> list[str]:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url) as client:
            answers = await asyncio.gather(*(client.complete(prompt=f"q{i}") for i in range(4)))
        return [a.text for a in answers]

    assert sorted(asyncio.run(main())) == [f"echo: q{i} [images=0 videos=0]" for i in range(4)]
    assert len(made) == 1


def test_a_file_over_the_size_limit_is_refused_and_not_kept(tmp_path, monkeypatch):
    from qwenvl.server import batches

    monkeypatch.setattr(batches, "MAX_FILE_BYTES", 10_000)  # the service's 500 MB, scaled down
    monkeypatch.setattr(batches, "COPY_CHUNK", 1024)
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as eng, engine_serve(eng, tmp_path) as s:
        oai = sdk(s)
        big = jsonl([line(f"c{i}", "x" * 100) for i in range(200)])
        assert len(big) > 10_000 + 1024
        with pytest.raises(openai.APIStatusError) as got:
            oai.files.create(file=("in.jsonl", big), purpose="batch")
        assert got.value.status_code == 413 and "larger than" in got.value.message
        assert list(oai.files.list()) == [] and not list((tmp_path / "files").glob("*"))
        ok = oai.files.create(file=("in.jsonl", jsonl([line("a", "hi")])), purpose="batch")
        assert [f.id for f in oai.files.list()] == [ok.id]


def test_a_job_cancelled_before_it_ran_names_every_line(server, tmp_path):
    gate = held_upstream(server, 0)
    with cloud_serve(server, tmp_path, batch_concurrency=1) as s:
        oai = sdk(s)
        running = submit(oai, 2)
        until(lambda: len(user_texts(server)) == 1, "the first job's line in flight")
        waiting = submit(oai, 3, "waiting")
        assert oai.batches.cancel(waiting.id).status == "cancelling"
        w = finished(oai, waiting.id)
        assert w.status == "cancelled" and (w.request_counts.total, w.request_counts.completed) == (3, 0)
        bad = records(oai, w.error_file_id)
        assert set(bad) == {"l0", "l1", "l2"} and {r["error"]["code"] for r in bad.values()} == {"batch_cancelled"}
        gate.set()
        assert finished(oai, running.id).status == "completed"
        assert not any(t.startswith("waiting") for t in user_texts(server))


def test_a_line_that_cannot_be_written_stops_the_job_which_resumes(server, tmp_path, monkeypatch, caplog):
    """A full disk when an answer is written: the job stops (logged), resumes, and each line is answered once in
    the output."""
    from qwenvl.server import batches

    monkeypatch.setattr(batches, "RETRY_S", 0.1)
    real, calls = batches._append, []

    def full_once(f: Any, data: bytes) -> None:
        calls.append(data)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(f, data)

    monkeypatch.setattr(batches, "_append", full_once)
    with cloud_serve(server, tmp_path, batch_concurrency=1) as s:
        oai = sdk(s)
        b = finished(oai, submit(oai, 4).id)
        assert b.status == "completed" and b.request_counts.completed == 4
        assert sorted(records(oai, b.output_file_id)) == ["l0", "l1", "l2", "l3"]
    assert "No space left on device" in caplog.text and "resumes" in caplog.text


def _serve_process(upstream: DashScopeServer, folder: Path) -> tuple[subprocess.Popen[str], str]:
    """A real `qwenvl serve` process (its own signal handling, its 5 s grace) on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "QWENVL_"))},
        "DASHSCOPE_API_KEY": API_KEY,
        "QWENVL_LOG": "0",
    }
    args = ["serve", "--port", str(port), "--api-key", SERVE_KEY, "--upstream", upstream.compat_base]
    args += ["--batch-dir", str(folder), "--batch-concurrency", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwenvl", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return proc, url


def test_sigterm_lets_the_lines_in_flight_finish_and_none_reaches_the_upstream_twice(server, tmp_path):
    """SIGTERM with two lines answered and two in flight (each answered in 1.5 s, within serve's 5 s budget): serve
    stops taking lines, waits for those two, writes them, then exits 143; after a restart the job completes and
    each line reached the upstream once (before: serve exited at once, and the two were sent again: paid twice)."""
    server.enqueue(Reply(delay_s=1.5, times=100))
    proc, url = _serve_process(server, tmp_path)
    try:
        oai = openai.OpenAI(base_url=url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0, timeout=30)
        b = submit(oai, 6)
        until(lambda: len(user_texts(server)) == 4, "lines l2 and l3 in flight")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), (proc.returncode, err)
    assert "Traceback" not in err, err
    assert sorted(user_texts(server)) == [f"line {i}" for i in range(4)]  # no new line after the signal
    out = tmp_path / "jobs" / b.id / "output.jsonl"
    assert sorted(json.loads(x)["custom_id"] for x in out.read_bytes().splitlines()) == ["l0", "l1", "l2", "l3"]
    proc, url = _serve_process(server, tmp_path)
    try:
        oai = openai.OpenAI(base_url=url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0, timeout=30)
        b = finished(oai, b.id)
        assert b.status == "completed" and b.request_counts.completed == 6
        assert sorted(records(oai, b.output_file_id)) == [f"l{i}" for i in range(6)]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert sorted(user_texts(server)) == [f"line {i}" for i in range(6)]  # each line reached the upstream once


def test_a_server_with_the_batch_api_stops_at_once(server, tmp_path):
    """Stopping wakes the runner's loop as it cancels it: the loop ends (on 3.11 ``asyncio.wait_for`` dropped the
    cancellation that raced the wake-up, and every shutdown waited out the runner's 10 s bound)."""
    s = cloud_serve(server, tmp_path)
    s.__enter__()
    s.server.should_exit = True
    s.thread.join(8)  # a bound against the old 10 s wait, far above the fraction of a second it takes
    assert not s.thread.is_alive(), "the server was still stopping after 8 s"


def test_an_answer_being_written_when_the_grace_ends_is_kept(server, tmp_path, monkeypatch):
    """A line whose answer has arrived (paid) is written even when the stop's grace period ends meanwhile: it is
    never dropped and asked of the upstream again after a restart."""
    import qwenvl.server.batches as batches

    writing, slow = threading.Event(), threading.Event()
    append = batches._append

    def slow_append(target, data):
        if not slow.is_set():
            slow.set()
            writing.set()
            time.sleep(1.5)  # longer than the grace period below
        append(target, data)

    monkeypatch.setattr(batches, "_append", slow_append)
    with cloud_serve(server, tmp_path, batch_concurrency=1, shutdown_grace_s=0.2) as s:
        b = submit(sdk(s), 3)
        assert writing.wait(60), "the first line's answer was not written"
    # kept, though the grace ended while it was being written: in the output file, or in the database until the
    # restart writes it
    out = tmp_path / "jobs" / b.id / "output.jsonl"
    written = [json.loads(x)["custom_id"] for x in out.read_bytes().splitlines()]
    store = BatchStore(tmp_path)
    try:
        assert written + [cid for cid, _ in store.kept_answers(b.id)] in (["l0"], ["l0", "l0"])
    finally:
        store.close()
    with cloud_serve(server, tmp_path, batch_concurrency=1) as s:
        oai = sdk(s)
        assert finished(oai, b.id).request_counts.completed == 3
    assert user_texts(server).count("line 0") == 1  # asked of the upstream once


def test_a_job_request_is_read_as_the_chat_routes_read_theirs(server, tmp_path):
    """POST /batches reads its body within the server's limit (413 over it) and answers bad JSON with a 400 in the
    compat envelope, as the chat routes do (it read the whole body unbounded)."""
    import httpx

    with cloud_serve(server, tmp_path, max_body_bytes=2000) as s:
        url = s.url + "/compatible-mode/v1/batches"
        auth = {"Authorization": f"Bearer {SERVE_KEY}"}
        big = {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "metadata": {"x": "y" * 5000}}
        r = httpx.post(url, json=big, headers=auth, timeout=30)
        assert r.status_code == 413, r.text
        r = httpx.post(url, content=b"{not json", headers={**auth, "content-type": "application/json"}, timeout=30)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_a_lines_error_is_the_chat_routes_error_param_included(server, tmp_path):
    """A refused line's error body is the one the chat route gives for the same body, ``param`` included (it was
    null for a line where the route names the field)."""
    import httpx

    bad = line("bad", "hi", max_tokens="many")
    with cloud_serve(server, tmp_path) as s:
        oai = sdk(s)
        f = oai.files.create(file=("in.jsonl", jsonl([bad])), purpose="batch")
        b = oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        b = finished(oai, b.id)
        got = records(oai, b.error_file_id)["bad"]["response"]["body"]["error"]
        r = httpx.post(
            s.url + "/compatible-mode/v1/chat/completions",
            json=bad["body"],
            headers={"Authorization": f"Bearer {SERVE_KEY}"},
            timeout=30,
        )
        route = r.json()["error"]
    assert route["param"] and got["param"] == route["param"]
    assert got["message"] == route["message"] and got["code"] == route["code"]
