"""`qwenvl batch` and qwenvl.batch.Batch against the loopback server: outputs, bad input, cost guard,
retries and 429s, the cache, and resume after SIGKILL."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, run_cli, write_image
from dashscope_server import DashScopeServer, Reply
from qwenvl.batch import Batch, BatchItem
from qwenvl.batch.journal import journal_path
from qwenvl.errors import PermissionDeniedError, UsageError


@pytest.fixture
def env(server) -> dict[str, str]:
    return {"DASHSCOPE_API_KEY": API_KEY}


def model_calls(server) -> list:
    return [r for r in server.requests if r.path.endswith("/chat/completions")]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_requests(path: Path, n: int, **fields) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"q{i:03d}", "prompt": f"question {i:03d}", **fields}) + "\n")
    return path


def batch(server, items, output="out.jsonl", **kw) -> Batch:
    kw.setdefault("api_key", API_KEY)
    return Batch(items, output, base_url=server.url, **kw)


# --- outputs -----------------------------------------------------------------------------------------------


def test_files_folders_and_globs(server, env, isolated_env):
    photos = isolated_env / "photos"
    (photos / "sub").mkdir(parents=True)
    write_image(photos / "a.png")
    write_image(photos / "sub" / "b.jpg", fmt="JPEG")
    (photos / "notes.txt").write_text("not media")
    (photos / ".hidden.png").write_bytes(b"x")
    write_image(isolated_env / "c.png", color=(1, 2, 3))  # distinct: identical bytes could be a cache hit
    write_image(isolated_env / "d.png", color=(4, 5, 6))
    p = run_cli(
        "batch",
        "photos",
        "c.png",
        "d*.png",
        "-p",
        "Caption this",
        "-o",
        "out/caps.jsonl",
        "--csv",
        "out/caps.csv",
        "--base-url",
        server.url,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    lines = read_jsonl(isolated_env / "out" / "caps.jsonl")
    assert [r["id"] for r in lines] == ["photos/a.png", "photos/sub/b.jpg", "c.png", "d.png"]
    first = lines[0]
    assert first["status"] == "ok" and first["input"] == "photos/a.png"
    assert first["result"]["text"] == "echo: Caption this [images=1 videos=0]"
    assert first["result"]["request_id"] and first["usage"]["input_tokens"] == 110
    assert first["cost"] > 0 and first["cached"] is False and first["attempts"] == 1
    summary = json.loads(p.stderr.strip().splitlines()[-1])  # not a terminal: one JSON line on stderr
    assert summary["event"] == "summary" and summary["ok"] == 4 and summary["error"] == 0
    assert summary["sent"] == 4 and summary["cost"] > 0
    rows = list(csv.DictReader((isolated_env / "out" / "caps.csv").read_text(encoding="utf-8").splitlines()))
    assert [r["id"] for r in rows] == [r["id"] for r in lines]
    assert rows[0]["text"].startswith("echo: Caption this") and rows[0]["status"] == "ok"
    assert not list((isolated_env / "out").glob(".*.tmp"))
    assert len(model_calls(server)) == 4


def test_requests_file_flags_override_and_json_summary(server, env, isolated_env):
    write_image(isolated_env / "x.png")
    reqs = isolated_env / "reqs.jsonl"
    reqs.write_text(
        json.dumps({"id": "one", "prompt": "first", "image": "x.png", "max_tokens": 50})
        + "\n\n"
        + json.dumps({"id": 2, "prompt": "second", "model": "qwen3-vl-plus"})
        + "\n"
        + json.dumps({"prompt": "third (no id)"})
        + "\n"
    )
    p = run_cli(
        "batch",
        "--requests",
        str(reqs),
        "-o",
        "res.jsonl",
        "-m",
        "qwen3-vl-flash",
        "--json",
        "--base-url",
        server.url,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ok"] == 3
    lines = read_jsonl(isolated_env / "res.jsonl")
    assert [r["id"] for r in lines] == ["one", "2", "4"]  # the line number when there is no id
    assert lines[0]["input"] == "x.png" and lines[1]["input"] is None
    bodies = sorted((r.json for r in model_calls(server)), key=lambda b: b["messages"][-1]["content"][-1]["text"])
    assert {b["model"] for b in bodies} == {"qwen3-vl-flash"}  # -m overrides the lines
    assert bodies[0]["max_tokens"] == 50


def test_schema_extraction(server, env, isolated_env):
    (isolated_env / "s.json").write_text(
        json.dumps({"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]})
    )
    write_image(isolated_env / "inv.png")
    server.enqueue(Reply(text='{"total": 12.5}'))
    p = run_cli(
        "batch", "inv.png", "-p", "Extract", "--schema", "s.json", "-o", "o.jsonl", "--base-url", server.url, env=env
    )
    assert p.returncode == 0, p.stderr
    [line] = read_jsonl(isolated_env / "o.jsonl")
    assert line["result"]["json"] == {"total": 12.5}
    assert model_calls(server)[0].json["response_format"] == {"type": "json_object"}


def test_library_batch(server):
    items = [BatchItem(id=f"t{i}", request={"prompt": f"text {i}"}) for i in range(10)]
    job = batch(server, items, concurrency=3)
    est = job.estimate()
    assert est.items == est.pending == est.to_send == 10 and est.input_tokens > 0 and est.cost_max > est.cost_input
    summary = job.run()
    assert summary.ok == 10 and summary.sent == 10 and summary.total == 10 and summary.pending == 0
    assert [r["result"]["text"] for r in read_jsonl(Path("out.jsonl"))] == [
        f"echo: text {i} [images=0 videos=0]" for i in range(10)
    ]


# --- bad input ---------------------------------------------------------------------------------------------


def test_invalid_and_missing_files_are_item_errors(server, env, isolated_env):
    write_image(isolated_env / "good.png")
    (isolated_env / "bad.png").write_text("this is text, not a PNG")
    p = run_cli(
        "batch",
        "good.png",
        "bad.png",
        "missing.png",
        "-p",
        "Caption",
        "-o",
        "o.jsonl",
        "--base-url",
        server.url,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    lines = {r["id"]: r for r in read_jsonl(isolated_env / "o.jsonl")}
    assert lines["good.png"]["status"] == "ok"
    assert lines["bad.png"]["status"] == "error" and lines["bad.png"]["error"]["type"] == "MediaError"
    assert "not an image" in lines["bad.png"]["error"]["message"] and lines["bad.png"]["error"]["hint"]
    assert lines["missing.png"]["error"]["type"] == "MediaError"
    assert len(model_calls(server)) == 1  # the bad ones were never sent
    assert json.loads(p.stderr.strip().splitlines()[-1])["error"] == 2


def test_a_401_stops_the_batch_at_once(server, isolated_env):
    reqs = write_requests(isolated_env / "r.jsonl", 40)
    p = run_cli(
        "batch",
        "--requests",
        str(reqs),
        "-o",
        "o.jsonl",
        "--concurrency",
        "2",
        "--base-url",
        server.url,
        env={"DASHSCOPE_API_KEY": "sk-wrong-key-000000"},
    )
    assert p.returncode == 4, p.stderr
    assert "HTTP 401" in p.stderr and "stopped at once" in p.stderr and "a rerun sends them" in p.stderr
    assert len(model_calls(server)) <= 2  # nothing after the first answers
    assert "Traceback" not in p.stderr
    p = run_cli(
        "batch", "--requests", str(reqs), "-o", "o.jsonl", "--base-url", server.url, env={"DASHSCOPE_API_KEY": API_KEY}
    )
    assert p.returncode == 0, p.stderr
    assert len(read_jsonl(isolated_env / "o.jsonl")) == 40


def test_403_stops_too(server):
    server.enqueue(Reply(status=403, times=100))
    with pytest.raises(PermissionDeniedError) as info:
        batch(server, [BatchItem(id=str(i), request={"prompt": "x"}) for i in range(5)], concurrency=1).run()
    assert info.value.status == 403 and "stopped at once" in info.value.hint


@pytest.mark.parametrize("where", ["a-file/out.jsonl", "."])
def test_an_output_that_cannot_be_written_is_refused_before_any_request(server, env, isolated_env, where):
    (isolated_env / "a-file").write_text("I am a file, not a folder")
    write_image(isolated_env / "x.png")
    p = run_cli("batch", "x.png", "-p", "Caption", "-o", where, "--base-url", server.url, env=env)
    assert p.returncode == 2, p.stderr
    assert "is a file, not a folder" in p.stderr or "is a directory" in p.stderr
    assert server.requests == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": oops}\n', "r.jsonl line 2: not valid JSON"),
        ('["a list"]\n', "r.jsonl line 1: expected a JSON object"),
        ('{"id": "a", "prompt": "x", "colour": "red"}\n', "r.jsonl line 1: invalid request: colour"),
        ('{"id": "a", "prompt": "x", "max_tokens": "many"}\n', "r.jsonl line 1: invalid request: max_tokens"),
        (
            '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n',
            "r.jsonl line 2: id 'a' is already used on line 1",
        ),
    ],
)
def test_a_malformed_requests_file_names_the_line(server, env, isolated_env, line, message):
    (isolated_env / "r.jsonl").write_text(line)
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "o.jsonl", "--base-url", server.url, env=env)
    assert p.returncode == 2, p.stderr
    assert message in " ".join(p.stderr.split())
    assert server.requests == []


def test_usage_errors(server, env, isolated_env):
    write_image(isolated_env / "x.png")
    cases = [
        (["x.png", "-o", "o.jsonl"], "no prompt"),
        (["-p", "hi", "-o", "o.jsonl"], "nothing to do"),
        (["x.png", "-p", "hi", "--requests", "r.jsonl", "-o", "o.jsonl"], "not both"),
        (["x.png", "-p", "hi", "-o", "o.jsonl", "--mode", "batch-api", "--region", "intl"], "Beijing"),
    ]
    for args, message in cases:
        p = run_cli("batch", *args, "--base-url", server.url, env=env)
        assert p.returncode == 2 and message in p.stderr, (args, p.stderr)
    assert server.requests == []


# --- cost guard --------------------------------------------------------------------------------------------


def test_over_max_cost_is_refused_off_a_terminal_unless_yes(server, env, isolated_env):
    reqs = write_requests(isolated_env / "r.jsonl", 5, max_tokens=2000)
    p = run_cli(
        "batch", "--requests", str(reqs), "-o", "o.jsonl", "--max-cost", "0.01", "--base-url", server.url, env=env
    )
    assert p.returncode == 2
    assert "above --max-cost" in p.stderr and "nothing was sent" in p.stderr and "--yes" in p.stderr
    assert server.requests == [] and not (isolated_env / "o.jsonl").exists()
    p = run_cli(
        "batch",
        "--requests",
        str(reqs),
        "-o",
        "o.jsonl",
        "--max-cost",
        "0.01",
        "--yes",
        "--base-url",
        server.url,
        env=env,
    )
    assert p.returncode == 0 and len(model_calls(server)) == 5


def test_dry_run_prints_the_estimate_and_sends_nothing(server, env, isolated_env):
    write_image(isolated_env / "a.png", size=(640, 480))
    (isolated_env / "bad.png").write_text("nope")
    p = run_cli(
        "batch", "a.png", "bad.png", "-p", "Caption", "-o", "o.jsonl", "--dry-run", "--base-url", server.url, env=env
    )
    assert p.returncode == 0, p.stderr
    est = json.loads(p.stdout)
    assert est["event"] == "estimate" and est["items"] == 2 and est["invalid"] == 1 and est["to_send"] == 1
    assert est["input_tokens"] > 300 and est["max_output_tokens"] == 512 and est["currency"] == "CNY"
    assert est["cost_max"] > est["cost_input"] > 0
    assert server.requests == [] and not (isolated_env / "o.jsonl").exists()


# --- retries, 429 ------------------------------------------------------------------------------------------


def test_429s_lower_concurrency_and_every_item_still_finishes(server):
    server.enqueue(Reply(delay_s=0.05, times=8), Reply(status=429, headers={"Retry-After": "0.2"}, times=6))
    items = [BatchItem(id=f"i{i}", request={"prompt": f"p{i}"}) for i in range(40)]
    summary = batch(server, items, concurrency=8).run()
    assert summary.ok == 40 and summary.rate_limited == 6 and summary.error == 0
    lines = read_jsonl(Path("out.jsonl"))
    assert sum(r["attempts"] > 1 for r in lines) >= 1
    assert len(model_calls(server)) == 46


def test_5xx_is_retried_by_the_batch_with_backoff(server):
    server.enqueue(Reply(status=500, times=2))
    item = BatchItem(id="x", request={"prompt": "p", "retry_backoff_s": 0.01})
    assert batch(server, [item], concurrency=1).run().ok == 1
    assert read_jsonl(Path("out.jsonl"))[0]["attempts"] == 3


def test_5xx_after_the_retries_is_an_item_error(server):
    server.enqueue(Reply(status=503, times=10))
    items = [BatchItem(id="x", request={"prompt": "p", "retry_backoff_s": 0.01, "max_retries": 1})]
    assert batch(server, items, concurrency=1).run().error == 1
    [line] = read_jsonl(Path("out.jsonl"))
    assert line["error"]["type"] == "InternalServerError" and line["error"]["status"] == 503
    assert line["attempts"] == 2 and line["error"]["request_id"]


# --- cache, rerun, resume ----------------------------------------------------------------------------------


def test_second_identical_run_sends_nothing(server, env, isolated_env):
    reqs = write_requests(isolated_env / "r.jsonl", 6)
    assert (
        run_cli("batch", "--requests", str(reqs), "-o", "one.jsonl", "--base-url", server.url, env=env).returncode == 0
    )
    assert len(model_calls(server)) == 6
    p = run_cli("batch", "--requests", str(reqs), "-o", "two.jsonl", "--base-url", server.url, "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert len(model_calls(server)) == 6  # all six answered from the cache
    summary = json.loads(p.stdout)
    assert summary["cached"] == 6 and summary["sent"] == 0 and summary["cost"] == 0
    two = read_jsonl(isolated_env / "two.jsonl")
    assert all(r["cached"] and r["cost"] == 0 for r in two)
    assert [r["result"]["text"] for r in two] == [r["result"]["text"] for r in read_jsonl(isolated_env / "one.jsonl")]
    assert (
        run_cli(
            "batch", "--requests", str(reqs), "-o", "three.jsonl", "--no-cache", "--base-url", server.url, env=env
        ).returncode
        == 0
    )
    assert len(model_calls(server)) == 12


def test_rerun_with_the_same_output_sends_only_what_is_unfinished(server):
    items = [BatchItem(id=f"i{i}", request={"prompt": f"p{i}"}) for i in range(5)]
    batch(server, items[:3], cache=False).run()
    assert len(model_calls(server)) == 3
    summary = batch(server, items, cache=False).run()  # two more inputs
    assert len(model_calls(server)) == 5 and summary.this_run == 2 and summary.total == 5
    assert [r["id"] for r in read_jsonl(Path("out.jsonl"))] == [f"i{i}" for i in range(5)]
    batch(server, items, cache=False).run()
    assert len(model_calls(server)) == 5
    changed = [BatchItem(id=i.id, request={"prompt": "another question"}) for i in items[:2]]
    with pytest.raises(UsageError, match="another question"):  # their answers are not silently replaced
        batch(server, changed, cache=False).run()
    assert len(model_calls(server)) == 5
    batch(server, changed, cache=False, fresh=True).run()  # the same ids asked something else: sent again
    assert len(model_calls(server)) == 7
    assert [r["result"]["text"] for r in read_jsonl(Path("out.jsonl"))] == [
        "echo: another question [images=0 videos=0]"
    ] * 2  # inputs no longer given leave the output


def test_retry_errors(server, isolated_env):
    (isolated_env / "bad.png").write_text("nope")
    server.enqueue(Reply(status=400, error_message="refused"))
    items = [BatchItem(id="a", request={"prompt": "p"}), BatchItem(id="b", request={"prompt": "q", "image": "bad.png"})]
    assert batch(server, items, concurrency=1, cache=False).run().error == 2
    assert batch(server, items, cache=False).run().this_run == 0
    write_image(isolated_env / "bad.png")  # fixed
    summary = batch(server, items, cache=False, retry_errors=True).run()
    assert summary.ok == 2 and summary.this_run == 2


def test_an_output_that_is_not_ours_is_not_overwritten(server, env, isolated_env):
    (isolated_env / "precious.jsonl").write_text('{"mine": true}\n')
    reqs = write_requests(isolated_env / "r.jsonl", 2)
    p = run_cli("batch", "--requests", str(reqs), "-o", "precious.jsonl", "--base-url", server.url, env=env)
    assert p.returncode == 2 and "--fresh" in p.stderr and server.requests == []
    p = run_cli("batch", "--requests", str(reqs), "-o", "precious.jsonl", "--fresh", "--base-url", server.url, env=env)
    assert p.returncode == 0 and len(read_jsonl(isolated_env / "precious.jsonl")) == 2


def test_duplicate_ids_are_refused():
    with pytest.raises(UsageError, match="given twice"):
        Batch([BatchItem(id="a", request={"prompt": "x"})] * 2, "o.jsonl")


def test_resume_after_sigkill(server, isolated_env):
    n = 40
    reqs = write_requests(isolated_env / "r.jsonl", n)
    gate = threading.Event()  # at most 20 answers before the kill: the run cannot finish first on a busy machine
    server.enqueue(Reply(delay_s=0.25, times=20), Reply(hold=gate, times=10_000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    env["DASHSCOPE_API_KEY"] = API_KEY
    cmd = [
        sys.executable,
        "-m",
        "qwenvl",
        "batch",
        "--requests",
        str(reqs),
        "-o",
        "out.jsonl",
        "--no-cache",
        "--concurrency",
        "4",
        "--base-url",
        server.url,
    ]
    journal = journal_path(isolated_env / "out.jsonl")

    def done_ids() -> set[str]:
        conn = sqlite3.connect(journal)
        try:
            return {r[0] for r in conn.execute("SELECT id FROM items WHERE status = 'ok'")}
        finally:
            conn.close()

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        finished: set[str] = set()
        while time.monotonic() < deadline and len(finished) < 10:
            time.sleep(0.05)
            if journal.exists():
                with contextlib.suppress(sqlite3.Error):  # being created right now
                    finished = done_ids()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        gate.set()
    assert proc.returncode == -signal.SIGKILL and 10 <= len(finished) <= 20
    finished = done_ids()  # what survived the kill (committed before it)
    first_run = {
        r.json["messages"][-1]["content"][-1]["text"] for r in model_calls(server) if r.json
    }  # a body cut by the kill was never answered
    if (isolated_env / "out.jsonl").exists():  # never half-written: whole JSON lines only
        assert all(json.loads(line)["status"] == "ok" for line in (isolated_env / "out.jsonl").read_text().splitlines())
    # the resumed run, in this process, against a server of its own: a request the killed run had sent may
    # still reach the first one (from its listen backlog) after the kill
    with DashScopeServer(api_key=API_KEY) as again:
        p = run_cli(*cmd[3:-1], again.url, env={"DASHSCOPE_API_KEY": API_KEY})
        resent = [r.json["messages"][-1]["content"][-1]["text"] for r in model_calls(again)]
    assert p.returncode == 0, p.stderr
    assert len(resent) == n - len(finished)  # only the unfinished ones
    assert not {f"question {i[1:]}" for i in finished} & set(resent)
    assert {f"question {i[1:]}" for i in finished} <= first_run
    lines = read_jsonl(isolated_env / "out.jsonl")
    assert [r["id"] for r in lines] == [f"q{i:03d}" for i in range(n)]  # each exactly once, in input order
    assert all(r["status"] == "ok" for r in lines)
    assert not list(isolated_env.glob(".out.jsonl.*.tmp"))


class _EchoBackend:
    """A custom in-memory backend: no HTTP, no key, its own answers (the seam a local model plugs into)."""

    name = "echo"
    protocol = "compat"
    media_form = "data-url"

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.lock = __import__("threading").Lock()

    def complete(self, call):
        from qwenvl.protocols.common import make_response

        text = call.messages[-1].text()
        with self.lock:
            self.prompts.append(text)
        return make_response(
            text=f"echo {text}",
            model="echo",
            usage={"input_tokens": 2, "output_tokens": 1},
            request_id="r",
            finish_reason="stop",
            reasoning=None,
            tool_calls=None,
            protocol="compat",
        )

    def stream(self, call):
        from qwenvl.types import StreamEvent

        response = self.complete(call)
        yield StreamEvent(type="text", text=response.text)
        yield StreamEvent(type="done", response=response)

    def close(self) -> None:
        pass


def test_a_batch_runs_on_a_given_client_with_a_custom_backend(isolated_env):
    from qwenvl.batch import Batch, BatchItem

    backend = _EchoBackend()
    client = qwenvl.Client(backend=backend, cache=True)  # no DashScope key anywhere
    items = [BatchItem(id=f"i{n}", request={"prompt": f"question {n}"}) for n in range(20)]
    summary = Batch(items, isolated_env / "out.jsonl", client=client, concurrency=4).run()
    assert summary.ok == 20 and sorted(backend.prompts) == sorted(f"question {n}" for n in range(20))
    lines = read_jsonl(isolated_env / "out.jsonl")
    assert {line["result"]["text"] for line in lines} == {f"echo question {n}" for n in range(20)}
    again = Batch(items, isolated_env / "again.jsonl", client=client, concurrency=4).run()  # the client's cache
    assert again.ok == 20 and len(backend.prompts) == 20
    assert client.complete(prompt="question 3").text == "echo question 3"  # the client is still open


def test_a_batch_refuses_what_it_would_ignore_or_cannot_take(isolated_env):
    """Settings beside client= (the client's win: they would be ignored), items that are not BatchItems, and a
    closed batch: each a UsageError that says so, not a silent choice or an AttributeError or a disk-space hint."""
    items = [BatchItem(id="a", request={"prompt": "hi"})]
    with qwenvl.Client(backend=_EchoBackend()) as client:
        for extra in ({"backend": "openai"}, {"model": "qwen3-vl-flash"}, {"engine": "vllm"}):
            with pytest.raises(UsageError, match=f"takes its settings from the client: {next(iter(extra))}"):
                Batch(items, isolated_env / "out.jsonl", client=client, **extra)
        for bad in ({"id": "a", "request": {"prompt": "hi"}}, "photo.jpg"):
            with pytest.raises(UsageError, match=f"batch item 2 is a {type(bad).__name__}, not a BatchItem"):
                Batch([*items, bad], isolated_env / "out.jsonl", client=client)
        job = Batch(items, isolated_env / "out.jsonl", client=client)
        assert job.run().ok == 1
        job.close()
        job.close()  # twice is fine
        for again in (job.run, job.estimate):
            with pytest.raises(UsageError, match="this Batch is closed"):
                again()


def test_a_batch_runs_on_a_given_backend_without_a_key(isolated_env, monkeypatch):
    """``Batch(backend=instance)``: the batch's own clients (one per shard) share the caller's backend."""
    from qwenvl.batch import Batch, BatchItem

    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    backend = _EchoBackend()
    items = (BatchItem(id=f"i{n}", request={"prompt": f"question {n}"}) for n in range(30))  # a generator
    summary = Batch(items, isolated_env / "out.jsonl", backend=backend, concurrency=16, cache=False).run()
    assert summary.ok == 30 and sorted(backend.prompts) == sorted(f"question {n}" for n in range(30))
    assert {line["result"]["text"] for line in read_jsonl(isolated_env / "out.jsonl")} == {
        f"echo question {n}" for n in range(30)
    }


def test_a_typo_in_a_batch_subcommand_is_named_not_taken_for_a_missing_file(isolated_env):
    for typo, meant in (("stauts", "status"), ("cancle", "cancel")):
        p = run_cli("batch", typo, "batch_123")
        assert p.returncode == 2 and f"Did you mean 'qwenvl batch {meant}'?" in p.stderr, p.stderr
    p = run_cli("batch", "photso/", "-p", "x", "-o", "out.jsonl")  # a missing input, not like a subcommand
    assert p.returncode == 3 and "no such file or folder: photso/" in p.stderr
    (isolated_env / "stat").mkdir()  # a folder named like a subcommand is an input all the same
    write_image(isolated_env / "stat" / "a.png")
    p = run_cli("batch", "stat", "-p", "x", "-o", "out.jsonl", "--dry-run", env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 0 and json.loads(p.stdout)["items"] == 1, p.stderr


def test_requests_on_standard_input(server, env, isolated_env):
    """`--requests -` as `-` everywhere else (it was "cannot read the requests file -: no such file")."""
    png = write_image(isolated_env / "a.png")
    lines = "".join(json.dumps({"id": f"r{n}", "prompt": f"q{n}", "image": str(png)}) + "\n" for n in range(3))
    url = server.url
    p = run_cli("batch", "--requests", "-", "-o", "out.jsonl", "--base-url", url, env=env, input=lines)
    assert p.returncode == 0, p.stderr
    assert [line["id"] for line in read_jsonl(isolated_env / "out.jsonl")] == ["r0", "r1", "r2"]
    bad = '{"id": "a", "prompt": "x"}\nnope\n'
    p = run_cli("batch", "--requests", "-", "-o", "bad.jsonl", "--base-url", url, env=env, input=bad)
    assert p.returncode == 2 and "stdin line 2: not valid JSON" in p.stderr
    p = run_cli("batch", "--requests", "-", "-p", "-", "-o", "both.jsonl", "--base-url", url, env=env, input=lines)
    assert p.returncode == 2 and "not both" in p.stderr
    assert len(model_calls(server)) == 3


def test_batch_help_and_readme_name_the_same_subcommands():
    """`qwenvl batch --help` is `qwenvl batch run --help` (its usage line says run): the help says that `batch
    ARGS` is short for `batch run ARGS`, and names status and cancel; the README names each subcommand."""
    from qwenvl.cli.batch import batch

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    p = run_cli("batch", "--help")
    assert p.returncode == 0 and "Usage: qwenvl batch run" in p.stdout
    help_text = " ".join(p.stdout.split())
    assert "`qwenvl batch ARGS` is short for `qwenvl batch run ARGS`" in help_text
    for name in batch.commands:
        assert f"qwenvl batch {name}" in readme, name
        assert name == "run" or f"qwenvl batch {name}" in help_text, name
    assert "`qwenvl batch ARGS` is short for `qwenvl batch run ARGS`" in readme


def test_no_key_fails_before_the_input_is_read_unless_something_may_be_answered_without_one(server, env, isolated_env):
    """Without a key a batch with nothing finished and nothing cached fails at once (exit 4), before its input
    is read (a bad line further down is not reached); one whose output holds finished items is estimated first
    (it may need no request: here it needs none), as is a dry run."""
    reqs = write_requests(isolated_env / "r.jsonl", 3)
    with reqs.open("a") as fh:
        fh.write("not json\n")
    no_key = {k: v for k, v in env.items() if k != "DASHSCOPE_API_KEY"}
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "o.jsonl", env=no_key)
    assert p.returncode == 4 and "no DashScope API key found" in p.stderr and "line 4" not in p.stderr, p.stderr
    assert not (isolated_env / "o.jsonl").exists()
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "o.jsonl", "--dry-run", env=no_key)
    assert p.returncode == 2 and "line 4" in p.stderr, p.stderr  # a dry run reads it: needs no key
    good = write_requests(isolated_env / "good.jsonl", 3)
    p = run_cli("batch", "--requests", str(good), "-o", "o.jsonl", "-y", "--base-url", server.url, env=env)
    assert p.returncode == 0, p.stderr
    sent = len(server.requests)
    p = run_cli("batch", "--requests", str(good), "-o", "o.jsonl", env=no_key)  # all finished: no key needed
    assert p.returncode == 0, p.stderr
    assert len(server.requests) == sent


def test_a_batch_the_cache_answers_is_the_accounts_own(server, isolated_env):
    """Every item answered by the response cache: no request is made. The answers are the account's (the cache
    keys them by a hash of the key): with the same key nothing is sent; without a key none of them is another
    account's to replay, so the key is asked for (exit 4), and nothing is sent either."""
    env = {"DASHSCOPE_API_KEY": API_KEY, "DASHSCOPE_COMPATIBLE_BASE_URL": server.compat_base}
    good = write_requests(isolated_env / "good.jsonl", 3)
    p = run_cli("batch", "--requests", str(good), "-o", "o.jsonl", "-y", "--base-url", server.url, env=env)
    assert p.returncode == 0, p.stderr
    sent = len(server.requests)
    p = run_cli("batch", "--requests", str(good), "-o", "again.jsonl", "-y", env=env)
    assert p.returncode == 0, p.stderr
    assert len(server.requests) == sent
    assert [r["status"] for r in read_jsonl(isolated_env / "again.jsonl")] == ["ok"] * 3
    no_key = {k: v for k, v in env.items() if k != "DASHSCOPE_API_KEY"}
    p = run_cli("batch", "--requests", str(good), "-o", "other.jsonl", env=no_key)
    assert p.returncode == 4 and "no DashScope API key found" in p.stderr
    assert len(server.requests) == sent
