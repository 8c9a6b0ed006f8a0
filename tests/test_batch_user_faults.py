"""Faults a new user met running `qwenvl batch` against the loopback doubles, each fixed as a kind (realtime and
Batch API modes, CLI and library): refusals before anything is sent, one JSON line per job id, options named as
the user gave them, notes in every output mode, Batch API messages, interrupts, a refused key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch_server import BatchServer
from conftest import API_KEY, run_cli, write_image
from qwenvl.batch import Batch, BatchItem
from qwenvl.errors import UsageError
from test_batch_api import read_jsonl

ENV = {"DASHSCOPE_API_KEY": API_KEY}


def images(folder: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        write_image(folder / f"i{i}.png", color=(i * 40 % 256, 10, 10))
        names.append(f"i{i}.png")
    return names


# --- 1. a rule every item fails: refused before anything is written or sent ---------------------------------


def test_stream_only_model_in_batch_api_is_refused_before_anything(bserver, isolated_env):
    names = images(isolated_env, 3)
    p = run_cli(
        "batch", *names, "-p", "x", "-o", "q.jsonl", "--mode", "batch-api", "-m", "qvq-max",
        "--base-url", bserver.url, env=ENV,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert "qvq-max answers only in stream mode" in p.stderr and "--mode realtime" in p.stderr
    assert not (isolated_env / "q.jsonl").exists() and not (isolated_env / "q.jsonl.journal").exists()
    assert bserver.requests == []
    # the hint works: the same command in realtime sends every item (streamed)
    p = run_cli("batch", *names, "-p", "x", "-o", "q.jsonl", "-m", "qvq-max", "--base-url", bserver.url, env=ENV)
    assert p.returncode == 0, p.stderr
    assert [r["status"] for r in read_jsonl(isolated_env / "q.jsonl")] == ["ok"] * 3
    assert len(bserver.chat_requests()) == 3


def test_library_batch_refuses_a_rule_every_item_fails(bserver, isolated_env):
    items = [BatchItem(id=f"t{i}", request={"prompt": "q", "model": "qvq-max"}) for i in range(3)]
    job = Batch(items, "o.jsonl", api_key=API_KEY, base_url=bserver.url, mode="batch-api", poll_interval_s=0.01)
    with pytest.raises(UsageError, match=r"stream mode.*every one of the 3 pending items.*nothing was sent") as exc:
        job.run()
    assert "mode='realtime'" in (exc.value.hint or "")  # the library's words (the CLI's: --mode realtime)
    job.close()
    assert not (isolated_env / "o.jsonl").exists() and not (isolated_env / "o.jsonl.journal").exists()
    assert bserver.requests == []


def test_mixed_requests_record_the_stream_only_items_with_a_hint_that_works(bserver, isolated_env):
    lines = [{"id": "a", "prompt": "q"}, {"id": "v", "prompt": "q", "model": "qvq-max"}]
    (isolated_env / "r.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["batch", "--requests", "r.jsonl", "-o", "o.jsonl", "--base-url", bserver.url]
    p = run_cli(*args, "--mode", "batch-api", "--poll-interval", "0.01", env=ENV)
    assert p.returncode == 0, p.stderr
    recs = {r["id"]: r for r in read_jsonl(isolated_env / "o.jsonl")}
    assert recs["a"]["status"] == "ok" and recs["v"]["status"] == "error"
    hint = recs["v"]["error"]["hint"]
    assert "--mode realtime --retry-errors" in hint
    p = run_cli(*args, "--mode", "realtime", "--retry-errors", env=ENV)  # what the hint says
    assert p.returncode == 0, p.stderr
    assert {r["id"]: r["status"] for r in read_jsonl(isolated_env / "o.jsonl")} == {"a": "ok", "v": "ok"}
    assert len(bserver.chat_requests()) == 1  # only the stream-only item, in realtime


# --- 2. batch status / cancel: one JSON line per id, an unknown id is the user's input, a malformed one usage ---


@pytest.mark.parametrize("verb", ["status", "cancel"])
def test_status_and_cancel_give_one_json_line_per_id(bserver, isolated_env, verb):
    bserver.hold = True
    [job_id] = Batch(
        [BatchItem(id="i", request={"prompt": "q"})], "o.jsonl", api_key=API_KEY, base_url=bserver.url,
        mode="batch-api", wait=False,
    ).run().batch_ids  # fmt: skip
    p = run_cli("batch", verb, job_id, "batch_unknown", "--base-url", bserver.url, "--json", env=ENV)
    assert p.returncode == 3, p.stderr  # an unknown id is an input error, not the service's (5)
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert [line["id"] for line in lines] == [job_id, "batch_unknown"]
    assert "error" not in lines[0] and lines[1]["error"]["exit_code"] == 3
    assert "batch_unknown" in lines[1]["error"]["message"] and "batch_unknown" in p.stderr
    p = run_cli("batch", verb, "batch_unknown", "--base-url", bserver.url, env=ENV)
    assert p.returncode == 3 and "batch_unknown" in p.stderr


@pytest.mark.parametrize("verb", ["status", "cancel"])
@pytest.mark.parametrize("bad", ["x/../y", "a b", "", "batch_1?x=2"])
def test_a_malformed_batch_id_is_a_usage_error_before_any_request(bserver, isolated_env, verb, bad):
    before = len(bserver.requests)
    p = run_cli("batch", verb, "batch_ok", bad, "--base-url", bserver.url, "--json", env=ENV)
    assert p.returncode == 2, p.stderr
    said = "an argument is empty" if not bad else "is not a Batch API job id"  # "": the one rule for a blank
    assert said in p.stderr and "Traceback" not in p.stderr
    assert len(bserver.requests) == before
    assert json.loads(p.stdout)["error"]["exit_code"] == 2  # --json: stdout holds JSON whatever happens (README)


# --- 7. a key refused: the requests sent were refused, not "not sent" ----------------------------------------


def test_a_refused_key_says_which_requests_were_sent_and_refused(bserver, isolated_env):
    names = images(isolated_env, 30)
    p = run_cli(
        "batch", *names, "-p", "x", "-o", "o.jsonl", "--concurrency", "4", "--base-url", bserver.url,
        env={"DASHSCOPE_API_KEY": "sk-wrong"},
    )  # fmt: skip
    assert p.returncode == 4, p.stderr
    said = " ".join(p.stderr.split())
    sent = len(bserver.chat_requests())
    assert 1 <= sent <= 4  # what was in flight when the first 401 came: no new request after it
    assert f"{sent} sent and refused by the service (authentication" in said
    assert f"{30 - sent} not sent" in said and "30 not sent" not in said


# --- 4. a rerun on fewer inputs: the note is on stderr in every output mode ------------------------------------


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_a_rerun_on_fewer_inputs_says_so_on_stderr(bserver, isolated_env, mode):
    names = images(isolated_env, 5)
    args = ["-p", "x", "-o", "o.jsonl", "--base-url", bserver.url, *mode]
    assert run_cli("batch", *names, *args, env=ENV).returncode == 0
    assert len(read_jsonl(isolated_env / "o.jsonl")) == 5
    p = run_cli("batch", *names[:2], *args, env=ENV)
    assert p.returncode == 0, p.stderr
    assert len(read_jsonl(isolated_env / "o.jsonl")) == 2
    notes = [line for line in p.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "3 answers of earlier runs are for items not in this input" in notes[0]
    assert len(bserver.chat_requests()) == 5  # nothing sent again


# --- 5. Batch API messages ---------------------------------------------------------------------------------


def submit_held(bserver: BatchServer, n: int = 2, **kw) -> str:
    bserver.hold = True
    items = [BatchItem(id=f"t{i}", request={"prompt": f"q{i}"}) for i in range(n)]
    with Batch(items, "o.jsonl", api_key=API_KEY, base_url=bserver.url, mode="batch-api", wait=False, **kw) as job:
        [job_id] = job.run().batch_ids
    return job_id


def test_status_shows_times_as_iso_and_keeps_them_raw_in_json(bserver, isolated_env):
    job_id = submit_held(bserver)
    created = bserver.batches[job_id]["created_at"]
    p = run_cli("batch", "status", job_id, "--base-url", bserver.url, env=ENV)
    assert p.returncode == 0, p.stderr
    from datetime import UTC, datetime

    iso = datetime.fromtimestamp(created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"  created_at: {iso}" in p.stdout and str(created) not in p.stdout
    assert "  expires_at: " in p.stdout and "Z\n" in p.stdout
    p = run_cli("batch", "status", job_id, "--base-url", bserver.url, "--json", env=ENV)
    assert json.loads(p.stdout)["created_at"] == created


def test_one_running_job_is_singular_and_commands_reach_the_same_service(bserver, isolated_env):
    (isolated_env / "r.jsonl").write_text('{"id": "a", "prompt": "q"}\n')
    bserver.hold = True
    args = ["batch", "--requests", "r.jsonl", "-o", "o.jsonl", "--mode", "batch-api", "--base-url", bserver.url]
    p = run_cli(*args, "--no-wait", env=ENV)
    assert p.returncode == 0, p.stderr
    [job_id] = bserver.batches
    said = " ".join(p.stderr.split())
    assert f"The Batch API job {job_id} keeps running" in said and "jobs" not in said.split("note:")[1]
    cancel = f"qwenvl batch cancel {job_id} --base-url {bserver.url}"
    assert cancel in said
    # the suggested command works as given (it reaches the same service)
    p = run_cli(*cancel.split()[1:], env=ENV)
    assert p.returncode == 0 and "cancel requested" in p.stdout
    # the collecting run now knows the job is being cancelled: it does not say it keeps running, nor to cancel it
    p = run_cli(*args, "--no-wait", env=ENV)
    said = " ".join(p.stderr.split())
    assert f"job {job_id} is being cancelled" in said
    assert "keeps running" not in said and "qwenvl batch cancel" not in said


def test_a_realtime_hint_over_a_job_names_the_base_url(bserver, isolated_env):
    job_id = submit_held(bserver, 1)
    with pytest.raises(UsageError) as exc:
        Batch([BatchItem(id="t0", request={"prompt": "q0"})], "o.jsonl", api_key=API_KEY, base_url=bserver.url).run()
    assert f"qwenvl batch cancel {job_id} --base-url {bserver.url}" in (exc.value.hint or "")
    assert "jobs" not in (exc.value.hint or "")


def test_an_item_failed_inside_a_job_has_its_batch_id(bserver, isolated_env):
    bserver.line_errors["t1"] = (400, "invalid_parameter_error", "bad image")
    items = [BatchItem(id=f"t{i}", request={"prompt": f"q{i}"}) for i in range(2)]
    with Batch(items, "o.jsonl", api_key=API_KEY, base_url=bserver.url, mode="batch-api", poll_interval_s=0.01) as job:
        summary = job.run()
    [job_id] = summary.batch_ids
    recs = {r["id"]: r for r in read_jsonl(isolated_env / "o.jsonl")}
    assert recs["t1"]["status"] == "error" and recs["t1"]["batch_id"] == job_id and recs["t1"]["mode"] == "batch-api"
    assert recs["t0"]["batch_id"] == job_id


def test_items_of_a_failed_job_have_its_batch_id(bserver, isolated_env):
    bserver.fail_validation = "no quota"
    items = [BatchItem(id=f"t{i}", request={"prompt": f"q{i}"}) for i in range(2)]
    with Batch(items, "o.jsonl", api_key=API_KEY, base_url=bserver.url, mode="batch-api", poll_interval_s=0.01) as job:
        [job_id] = job.run().batch_ids
    recs = read_jsonl(isolated_env / "o.jsonl")
    assert [r["status"] for r in recs] == ["error", "error"] and {r["batch_id"] for r in recs} == {job_id}
    assert f"qwenvl batch status {job_id} --base-url {bserver.url}" in recs[0]["error"]["hint"]


# --- 6. interrupts: said off a terminal, a second one says what it gives up, the JSON summary line -------------


def interrupted_run(server, isolated_env, *, second: bool, extra: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """A realtime batch of 12 requests at concurrency 4 as a process off a terminal, its requests held by the
    server; SIGINT once 4 are in flight (and, with ``second``, again once the first is said)."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from conftest import ctrl_c_reaches_children
    from dashscope_server import Reply

    (isolated_env / "r.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i:02d}", "prompt": f"q{i}"}) + "\n" for i in range(12))
    )
    gate = threading.Event()
    server.enqueue(Reply(hold=gate, times=10_000))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "ALIBABA_CLOUD_"))}
    env.update(DASHSCOPE_API_KEY=API_KEY, COLUMNS="1000")
    cmd = [sys.executable, "-m", "qwenvl", "batch", "--requests", "r.jsonl", "-o", "o.jsonl", "--no-cache",
           "--concurrency", "4", "--base-url", server.url, *extra]  # fmt: skip
    with ctrl_c_reaches_children():
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while len(server.chat_requests()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.chat_requests()) == 4, "no requests in flight"
        proc.send_signal(signal.SIGINT)
        if second:
            while not any("waiting up to" in line for line in err_lines) and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
        else:
            time.sleep(0.5)
            gate.set()  # the answers in flight come: awaited and recorded
        proc.wait(60)  # stderr is the reader thread's alone (communicate would read it too)
        out = proc.stdout.read()
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(10)
    proc.stdout.close()
    proc.stderr.close()
    return proc.returncode, out, "".join(err_lines)


def test_an_interrupt_off_a_terminal_says_it_waits_and_prints_the_summary_line(bserver, isolated_env):
    code, _, err = interrupted_run(bserver, isolated_env, second=False)
    assert code == 130, err
    assert err.count("interrupted: waiting up to 10 s for the 4 requests in flight") == 1
    [summary] = [json.loads(line) for line in err.splitlines() if line.startswith('{"event": "summary"')]
    assert summary["interrupted"] is True and summary["ok"] == 4 and summary["pending"] == 8
    assert len(read_jsonl(isolated_env / "o.jsonl")) == 4 and len(bserver.chat_requests()) == 4


def test_an_interrupted_run_with_json_prints_its_summary_on_stdout(bserver, isolated_env):
    code, out, err = interrupted_run(bserver, isolated_env, second=False, extra=("--json",))
    assert code == 130, err
    summary = json.loads(out)
    assert summary["event"] == "summary" and summary["interrupted"] is True and summary["ok"] == 4


def test_a_second_interrupt_says_what_it_gives_up(bserver, isolated_env):
    code, _, err = interrupted_run(bserver, isolated_env, second=True)
    assert code == 130, err
    said = " ".join(err.split())
    assert "at a second interrupt, the run stopped without the answers of 4 requests in flight" in said
    assert "paid for again" in said
    assert err.count("interrupted: waiting up to") == 1  # the first message is not repeated
    [summary] = [json.loads(line) for line in err.splitlines() if line.startswith('{"event": "summary"')]
    assert (
        summary["interrupted"] is True and summary["ok"] == 0 and any("second interrupt" in n for n in summary["notes"])
    )


# --- 3. a refused rerun names the user's options, and the item when it is one item's own request --------------


@pytest.mark.parametrize(
    ("first", "then", "named"),
    [
        ((), ("--detail", "low"), "(--detail or --max-pixels / max_pixels changed)"),
        ((), ("--schema", "s.json"), "(--schema / schema changed)"),
        ((), ("--json-mode",), "(--json-mode / json_mode changed)"),
        (
            ("--param", "enable_search=true"),
            ("--param", "enable_search=false"),
            "(--param enable_search / extra changed)",
        ),
    ],
)
def test_a_refused_rerun_names_the_options_given(bserver, isolated_env, first, then, named):
    (isolated_env / "s.json").write_text('{"type": "object"}')
    names = images(isolated_env, 2)
    args = ["batch", *names, "-p", "x", "-o", "o.jsonl", "--base-url", bserver.url]
    assert run_cli(*args, *first, env=ENV).returncode == 0
    p = run_cli(*args, *then, env=ENV)
    assert p.returncode == 2, p.stderr
    said = " ".join(p.stderr.split())
    assert f"holds answers to another question {named}" in said
    assert "repair" not in said and "item " not in said  # every item changed: the options did, no item to name
    assert len(bserver.chat_requests()) == 2


def test_a_refused_rerun_names_the_item_whose_line_changed(bserver, isolated_env):
    lines = [{"id": "a", "prompt": "qa"}, {"id": "b", "prompt": "qb"}, {"id": "c", "prompt": "qc"}]
    write = lambda rows: (isolated_env / "r.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))  # noqa: E731
    write(lines)
    args = ["batch", "--requests", "r.jsonl", "-o", "o.jsonl", "--base-url", bserver.url]
    assert run_cli(*args, env=ENV).returncode == 0
    write([lines[0], {"id": "b", "prompt": "qb edited"}, lines[2]])
    p = run_cli(*args, env=ENV)
    assert p.returncode == 2, p.stderr
    said = " ".join(p.stderr.split())
    assert "item 'b' asks another question: its own request changed" in said and "1 of its 3 answered items" in said
    write([{"id": "a", "prompt": "qa edited"}, *lines[1:]])  # the first line (the recorded sample): its field named
    p = run_cli(*args, env=ENV)
    assert p.returncode == 2 and "(item 'a': --prompt / prompt changed)" in " ".join(p.stderr.split()), p.stderr
    assert len(bserver.chat_requests()) == 3


def test_library_realtime_batch_refuses_a_model_rule_every_item_fails(bserver, isolated_env):
    items = [BatchItem(id=f"t{i}", request={"prompt": "q", "model": "qwen-vl-max", "enable_thinking": True})
             for i in range(3)]  # fmt: skip
    refused = pytest.raises(UsageError, match=r"does not support thinking.*every one of the 3 pending items")
    with Batch(items, "o.jsonl", api_key=API_KEY, base_url=bserver.url) as job, refused:
        job.estimate()
    assert not (isolated_env / "o.jsonl").exists() and bserver.requests == []
    # items failing each for its own reason are recorded, and the others sent, as before
    mixed = [*items[:1], BatchItem(id="ok", request={"prompt": "q"})]
    with Batch(mixed, "o.jsonl", api_key=API_KEY, base_url=bserver.url) as job:
        summary = job.run()
    assert summary.ok == 1 and summary.error == 1 and len(bserver.chat_requests()) == 1


@pytest.mark.parametrize("poll_delay_s", [0.0, 1.0], ids=["between polls", "during a poll"])
def test_a_waiting_run_interrupted_after_a_cancel_says_the_job_is_being_cancelled(bserver, isolated_env, poll_delay_s):
    """The user cancels the job from another terminal while the run waits between two polls (or while a poll is
    still being answered: that case failed now and then), then presses Ctrl-C: the run looks once more and says
    the job is being cancelled; it does not tell them to cancel it."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import ctrl_c_reaches_children
    from qwenvl.batch.batchapi import BatchAPI

    (isolated_env / "r.jsonl").write_text('{"id": "a", "prompt": "q"}\n')
    bserver.hold = True
    bserver.poll_delay_s = poll_delay_s
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "ALIBABA_CLOUD_"))}
    env.update(DASHSCOPE_API_KEY=API_KEY, COLUMNS="1000")
    cmd = [sys.executable, "-m", "qwenvl", "batch", "--requests", "r.jsonl", "-o", "o.jsonl", "--mode", "batch-api",
           "--poll-interval", "600", "--base-url", bserver.url]  # fmt: skip
    with ctrl_c_reaches_children():
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert bserver.polled.wait(60), "the job was never polled"
        [job_id] = bserver.batches
        with BatchAPI(API_KEY, base_url=bserver.url) as api:
            assert api.cancel(job_id)["status"] == "cancelling"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    said = " ".join(err.split())
    assert f"job {job_id} is being cancelled" in said
    assert "keeps running" not in said and "qwenvl batch cancel" not in said
