"""`--mode batch-api` when the service fails: whole jobs that fail, expire or are cancelled (exit 5, the job and
the service's reason named), a refused input file (recorded, not uploaded again), the job list read page by
page, result files streamed, several jobs cancelled at once, and hints that name actions that work. All against
tests/batch_server.py."""

from __future__ import annotations

import json
import threading
import time

import pytest

from batch_server import BatchServer
from conftest import API_KEY, run_cli
from qwenvl.batch import Batch, BatchItem, batchapi
from qwenvl.batch.batchapi import BatchAPI
from qwenvl.errors import APIError, MalformedResponseError
from test_batch_api import cli_args, read_jsonl, write_requests

ENV = {"DASHSCOPE_API_KEY": API_KEY}


def error_line(stderr: str) -> str:
    """The one-line reason of a failed run (the line that starts with "error:")."""
    [line] = [x for x in stderr.splitlines() if x.startswith("error:")]
    return line


def count(srv: BatchServer, method: str, path: str) -> int:
    return srv.count(method, path)


# --- 1. a job that fails as a whole: exit 5, one line naming the job and the service's error -------------------


def test_a_failed_job_exits_5_naming_the_job_and_its_errors(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 2)
    bserver.fail_validation = "the model does not support batch"
    p = run_cli(*cli_args(bserver), env=ENV)
    [job_id] = bserver.batches
    assert p.returncode == 5, p.stderr
    line = error_line(p.stderr)
    assert job_id in line and "failed" in line and "the model does not support batch" in line
    assert "--retry-errors" in p.stderr and "Traceback" not in p.stderr
    out = read_jsonl(isolated_env / "out.jsonl")
    assert [r["error"]["type"] for r in out] == ["BatchJobFailedError"] * 2


def test_a_validation_error_file_exits_5_naming_the_job_and_the_files_error(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 2)
    bserver.fail_validation = "line 2: messages must not be empty"
    bserver.validation_error_file = True  # `errors` is null: the reason is in the error file
    p = run_cli(*cli_args(bserver, "--json"), env=ENV)
    [job_id] = bserver.batches
    assert bserver.batches[job_id]["errors"] is None and bserver.batches[job_id]["error_file_id"]
    assert p.returncode == 5, p.stderr
    line = error_line(p.stderr)
    assert job_id in line and "messages must not be empty" in line
    summary = json.loads(p.stdout)
    assert summary["error"] == 2 and summary["service_errors"] == 2
    assert all("messages must not be empty" in r["error"]["message"] for r in read_jsonl(isolated_env / "out.jsonl"))


def test_an_expired_job_that_answered_nothing_exits_5_and_its_items_stay_pending(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 3)
    bserver.final_status, bserver.expire_after = "expired", 0
    p = run_cli(*cli_args(bserver, "--json"), env=ENV)
    [job_id] = bserver.batches
    assert p.returncode == 5, p.stderr
    line = error_line(p.stderr)
    assert job_id in line and "expired without answering 3 of its 3 items" in line
    assert "completion window expired" in line  # the service's words, from its error file
    assert "run the same command again" in p.stderr
    summary = json.loads(p.stdout)
    assert (summary["ok"], summary["error"], summary["pending"]) == (0, 0, 3)
    bserver.final_status = "completed"
    p = run_cli(*cli_args(bserver, "--json"), env=ENV)  # the hint works: a new job answers them
    assert p.returncode == 0 and json.loads(p.stdout)["ok"] == 3 and bserver.created() == 2


def test_a_job_cancelled_before_answering_anything_exits_5(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 2)
    bserver.hold = True
    p = run_cli(*cli_args(bserver, "--no-wait", "--json"), env=ENV)
    assert p.returncode == 0, p.stderr  # submitted and running: nothing failed yet
    [job_id] = json.loads(p.stdout)["batch_ids"]
    assert run_cli("batch", "cancel", job_id, "--base-url", bserver.url, env=ENV).returncode == 0
    bserver.hold = False
    p = run_cli(*cli_args(bserver, "--json"), env=ENV)
    assert p.returncode == 5, p.stderr
    line = error_line(p.stderr)
    assert job_id in line and "was cancelled without answering 2 of its 2 items" in line
    assert json.loads(p.stdout)["pending"] == 2


def test_a_failed_job_still_exits_5_on_a_rerun_without_submitting_and_retry_errors_submits(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 2)
    bserver.fail_validation = "quota of batch jobs exceeded"
    assert run_cli(*cli_args(bserver), env=ENV).returncode == 5
    [job_id] = bserver.batches
    bserver.fail_validation = None
    p = run_cli(*cli_args(bserver), env=ENV)  # nothing is sent again unasked, and the run still did not succeed
    assert p.returncode == 5 and bserver.created() == 1
    line = error_line(p.stderr)
    assert "2 items of out.jsonl failed for the service's reasons" in line and job_id in line
    assert "quota of batch jobs exceeded" in line and "--retry-errors" in p.stderr
    p = run_cli(*cli_args(bserver, "--retry-errors", "--json"), env=ENV)
    assert p.returncode == 0 and json.loads(p.stdout)["ok"] == 2 and bserver.created() == 2


def test_failed_lines_of_a_completed_job_exit_5_only_for_the_services_reasons(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 3)
    bserver.line_errors["r1"] = (400, "data_inspection_failed", "inappropriate content")
    p = run_cli(*cli_args(bserver), env=ENV)
    assert p.returncode == 0, p.stderr  # the item's own fault, as in realtime
    bserver.line_errors["r2"] = (500, "internal_error", "the worker crashed")
    p = run_cli(*cli_args(bserver, "--fresh", "--yes"), env=ENV)
    assert p.returncode == 5 and "the worker crashed" in error_line(p.stderr)


# --- 5. an input file the service refuses --------------------------------------------------------------------


def test_a_refused_upload_is_recorded_and_not_uploaded_again(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 2)
    bserver.fault("POST", "/files", status=400, times=100)
    p = run_cli(*cli_args(bserver), env=ENV)
    assert p.returncode == 5, p.stderr
    assert "refused the input file" in error_line(p.stderr) and "HTTP 400" in error_line(p.stderr)
    assert count(bserver, "POST", "/files") == 1
    p = run_cli(*cli_args(bserver), env=ENV)  # the same input: said, not uploaded again
    assert p.returncode == 5 and count(bserver, "POST", "/files") == 1
    assert "refused the input file" in error_line(p.stderr) and "--retry-errors" in p.stderr
    write_requests(isolated_env / "reqs.jsonl", 2, prompt="other")  # the input changed: sent again
    p = run_cli(*cli_args(bserver), env=ENV)
    assert p.returncode == 5 and count(bserver, "POST", "/files") == 2
    bserver.faults.clear()
    p = run_cli(*cli_args(bserver, "--retry-errors", "--json"), env=ENV)  # asked to retry: sent again
    assert p.returncode == 0 and json.loads(p.stdout)["ok"] == 2 and count(bserver, "POST", "/files") == 3


# --- 3. the job list, page after page ------------------------------------------------------------------------


def add_decoys(srv: BatchServer, n: int) -> None:
    """``n`` jobs of other input files, newer than any job made so far (the list is newest first)."""
    later = int(time.time()) + 1000
    for k in range(n):
        srv.batches[f"batch_decoy{k:04d}"] = {
            "id": f"batch_decoy{k:04d}",
            "object": "batch",
            "input_file_id": f"file-other-{k}",
            "status": "completed",
            "created_at": later + k,
            "request_counts": {"total": 1, "completed": 1, "failed": 0},
        }


def line_file(api: BatchAPI) -> str:
    line = {
        "custom_id": "1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": "hi"}]},
    }
    return api.upload("x.jsonl", json.dumps(line).encode() + b"\n")["id"]


def test_finding_a_job_by_its_input_file_reads_every_page(bserver):
    bserver.list_ignores_filter = True
    with BatchAPI(API_KEY, base_url=bserver.url) as api:
        file_id = line_file(api)
        job = api.create(file_id)
        add_decoys(bserver, 250)  # three pages of other jobs before it
        found = api.find(file_id)
        assert found is not None and found["id"] == job["id"]
        assert count(bserver, "GET", "/batches") == 3
        lists = [r for r in bserver.batch_requests() if r.method == "GET" and r.path.endswith("/batches")]
        assert [r.query.get("after") for r in lists] == [None, "batch_decoy0150", "batch_decoy0050"]
        assert api.find("file-nowhere") is None  # every page read, none has it


def test_finding_a_job_stops_at_its_bound_and_its_deadline_without_creating_one(bserver, monkeypatch):
    bserver.list_ignores_filter = True
    with BatchAPI(API_KEY, base_url=bserver.url) as api:
        file_id = line_file(api)
        api.create(file_id)
        add_decoys(bserver, 250)
        monkeypatch.setattr(batchapi, "LIST_PAGES", 2)
        with pytest.raises(batchapi.BatchJobError, match="looked through 200 Batch API jobs") as info:
            api.find(file_id)
        assert file_id in str(info.value) and "Run the same command again" in (info.value.hint or "")
        monkeypatch.setattr(batchapi, "LIST_PAGES", 100)
        monkeypatch.setattr(batchapi, "LIST_DEADLINE_S", -1.0)  # past at once: one page, then stop
        before = count(bserver, "GET", "/batches")
        with pytest.raises(batchapi.BatchJobError, match="looked through 100 Batch API jobs"):
            api.find(file_id)
        assert count(bserver, "GET", "/batches") == before + 1


def test_a_lost_create_reply_finds_the_job_past_the_first_page(bserver):
    """The run that lost the create's reply looks the job up before creating another: on the third page."""
    bserver.list_ignores_filter = True
    add_decoys(bserver, 250)
    bserver.fault("POST", "/batches", lost=True)
    items = [BatchItem(id=f"i{i}", request={"prompt": f"q{i}"}) for i in range(2)]
    summary = Batch(
        items, "out.jsonl", api_key=API_KEY, base_url=bserver.url, mode="batch-api", poll_interval_s=0.01,
        retry_backoff_s=0.01,
    ).run()  # fmt: skip
    assert summary.ok == 2 and bserver.created() == 251  # one job of ours, not two


# --- 4. result files, streamed ---------------------------------------------------------------------------------


def completed_job(api: BatchAPI, srv: BatchServer, n: int) -> dict:
    lines = b"".join(
        json.dumps(
            {
                "custom_id": str(i),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": f"q{i}"}]},
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )
    job = api.create(api.upload("x.jsonl", lines)["id"])
    while job["status"] != "completed":
        job = api.retrieve(job["id"])
    return job


def test_result_lines_are_read_as_they_arrive(bserver):
    with BatchAPI(API_KEY, base_url=bserver.url) as api:
        job = completed_job(api, bserver, 3)
        bserver.content_gate = threading.Event()  # the file's first line, then a pause
        lines = api.content_lines(job["output_file_id"])
        first = json.loads(next(lines))
        assert first["custom_id"] == "0" and not bserver.gate_gave_up  # read before the rest was sent
        bserver.content_gate.set()
        assert [json.loads(x)["custom_id"] for x in lines] == ["1", "2"]


def test_a_stalled_result_download_ends_at_its_deadline(bserver):
    # 5 s: what every answer before the stall has to meet (a busy machine); the stall is still ours to end, long
    # before the server gives up (content_gate_timeout)
    with BatchAPI(API_KEY, base_url=bserver.url, timeout_s=5, max_retries=0) as api:
        job = completed_job(api, bserver, 2)
        bserver.content_gate = threading.Event()  # never set: the server stalls after the first line
        started = time.monotonic()
        with pytest.raises(APIError):
            list(api.content_lines(job["output_file_id"]))
        assert time.monotonic() - started < bserver.content_gate_timeout  # not the server's patience: ours
        bserver.content_gate.set()


def test_a_result_download_cut_midway_goes_on_after_the_lines_given(bserver):
    with BatchAPI(API_KEY, base_url=bserver.url, retry_backoff_s=0.01) as api:
        job = completed_job(api, bserver, 20)
        whole = bserver.files[job["output_file_id"]].decode().splitlines()
        bserver.fault("GET", "/content", cut=True)
        assert list(api.content_lines(job["output_file_id"])) == whole  # each line once, none lost
        assert count(bserver, "GET", f"/files/{job['output_file_id']}/content") == 2


def test_a_merge_records_each_line_as_it_is_read(bserver, monkeypatch):
    """The journal is written line by line: a malformed line half-way keeps what came before (recorded once)."""
    items = [BatchItem(id=f"i{i}", request={"prompt": f"q{i}"}) for i in range(4)]
    job = Batch(items, "out.jsonl", api_key=API_KEY, base_url=bserver.url, mode="batch-api", wait=False)
    [job_id] = job.run().batch_ids
    while bserver.batches[job_id]["status"] != "completed":
        with BatchAPI(API_KEY, base_url=bserver.url) as api:
            api.retrieve(job_id)
    fid = bserver.batches[job_id]["output_file_id"]
    good = bserver.files[fid].splitlines(keepends=True)
    bserver.files[fid] = b"".join(good[:2]) + b"not json\n" + b"".join(good[2:])
    with pytest.raises(MalformedResponseError, match="line 3"):
        Batch(items, "out.jsonl", api_key=API_KEY, base_url=bserver.url, mode="batch-api").run()
    assert [r["id"] for r in read_jsonl("out.jsonl")] == ["i0", "i1"]
    bserver.files[fid] = b"".join(good)
    summary = Batch(items, "out.jsonl", api_key=API_KEY, base_url=bserver.url, mode="batch-api").run()
    assert (summary.ok, summary.this_run) == (4, 2) and bserver.created() == 1


# --- 6. cancel several jobs -------------------------------------------------------------------------------------


def test_cancel_takes_several_ids_and_says_what_happened_to_each(bserver, isolated_env):
    bserver.hold = True
    with BatchAPI(API_KEY, base_url=bserver.url) as api:
        running = [api.create(line_file(api))["id"] for _ in range(2)]
    bserver.hold = False
    with BatchAPI(API_KEY, base_url=bserver.url) as api:
        done = completed_job(api, bserver, 1)["id"]
    p = run_cli("batch", "cancel", *running, done, "--base-url", bserver.url, env=ENV)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"{running[0]}: cancelling") and "cancel requested" in lines[0]
    assert lines[1].startswith(f"{running[1]}: cancelling")
    assert lines[2].startswith(f"{done}: completed") and "nothing to cancel" in lines[2]
    # an unknown id among them: the others are still cancelled, the exit code is the worst result's
    p = run_cli("batch", "cancel", "batch_nope", running[0], "--base-url", bserver.url, "--json", env=ENV)
    assert p.returncode == 3 and "batch_nope: not cancelled" in p.stderr and "Traceback" not in p.stderr
    unknown, job = [json.loads(x) for x in p.stdout.splitlines()]  # one JSON line per id, in order
    assert unknown["id"] == "batch_nope" and unknown["error"]["exit_code"] == 3
    assert job["id"] == running[0] and job["status"] == "cancelling"  # asked twice: still on its way
    p = run_cli("batch", "cancel", running[0], "--base-url", bserver.url, env={"DASHSCOPE_API_KEY": "sk-wrong-0000"})
    assert p.returncode == 4
    p = run_cli("batch", "cancel", "--base-url", bserver.url, env=ENV)
    assert p.returncode == 2  # an id is required


# --- 2. hints name actions that work in the state they are given in -------------------------------------------


def test_a_realtime_run_over_an_uncollected_job_is_not_told_to_use_fresh(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 2)
    bserver.hold = True
    p = run_cli(*cli_args(bserver, "--no-wait", "--json"), env=ENV)
    [job_id] = json.loads(p.stdout)["batch_ids"]
    args = cli_args(bserver)
    at = args.index("--poll-interval")  # batch-api's only: refused in realtime
    realtime = [a if a != "batch-api" else "realtime" for a in args[:at] + args[at + 2 :]]
    p = run_cli(*realtime, env=ENV)
    assert p.returncode == 2 and job_id in p.stderr
    hint = p.stderr.split("hint:")[1]
    assert "--fresh" not in hint and f"qwenvl batch cancel {job_id}" in hint
    p = run_cli(*realtime, "--fresh", env=ENV)  # what the old hint said: refused
    assert p.returncode == 2
    bserver.hold = False  # the hint's action: collect with --mode batch-api
    assert run_cli(*cli_args(bserver), env=ENV).returncode == 0


def test_another_question_over_jobs_in_flight_counts_them_apart_and_is_not_told_to_use_fresh(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 3)
    bserver.hold = True
    p = run_cli(*cli_args(bserver, "--no-wait", "--json"), env=ENV)
    [job_id] = json.loads(p.stdout)["batch_ids"]
    write_requests(isolated_env / "reqs.jsonl", 3, prompt="another")
    p = run_cli(*cli_args(bserver), env=ENV)
    assert p.returncode == 2
    message, hint = p.stderr.split("hint:")
    assert "0 answered items and 3 items in Batch API jobs not collected yet" in message
    assert job_id in hint and "first collect" in hint
    p = run_cli(*cli_args(bserver, "--fresh"), env=ENV)  # bare --fresh is refused while the job is out
    assert p.returncode == 2 and "without --fresh" in p.stderr


def test_an_overdue_job_is_told_to_be_cancelled_and_that_works(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 2)
    bserver.hold = True
    p = run_cli(*cli_args(bserver, "--no-wait", "--json"), env=ENV)
    [job_id] = json.loads(p.stdout)["batch_ids"]
    bserver.batches[job_id]["expires_at"] = int(time.time()) - 2 * 3600
    p = run_cli(*cli_args(bserver), env=ENV)
    assert p.returncode == 5 and "stopped waiting" in p.stderr
    hint = p.stderr.split("hint:")[1]
    assert f"qwenvl batch cancel {job_id}" in hint and "collect them (nothing" not in hint
    bserver.hold = False
    assert run_cli("batch", "cancel", job_id, "--base-url", bserver.url, env=ENV).returncode == 0
    p = run_cli(*cli_args(bserver, "--json"), env=ENV)  # collects it (cancelled: nothing answered, exit 5) ...
    assert p.returncode == 5 and "was cancelled without answering" in error_line(p.stderr)
    p = run_cli(*cli_args(bserver, "--json"), env=ENV)  # ... and submits the rest in a new job
    assert p.returncode == 0 and json.loads(p.stdout)["ok"] == 2


def test_status_takes_several_ids_too(bserver, isolated_env):
    with BatchAPI(API_KEY, base_url=bserver.url) as api:
        done = completed_job(api, bserver, 2)["id"]
    p = run_cli("batch", "status", done, "batch_nope", done, "--base-url", bserver.url, env=ENV)
    assert p.returncode == 3 and "batch_nope: not shown" in p.stderr  # an unknown id: the user's input
    assert p.stdout.startswith(f"{done}: completed (2 of 2 requests answered)") and p.stdout.count(done + ":") == 1
    p = run_cli("batch", "status", done, "--base-url", bserver.url, "--json", env=ENV)
    assert p.returncode == 0 and json.loads(p.stdout)["id"] == done


def test_an_input_file_gone_before_its_job_was_created_is_said(bserver):
    items = [BatchItem(id=f"i{i}", request={"prompt": f"q{i}"}) for i in range(2)]
    bserver.fault("POST", "/batches", status=503, times=3)
    with pytest.raises(APIError):
        Batch(items, "out.jsonl", api_key=API_KEY, base_url=bserver.url, mode="batch-api", retry_backoff_s=0.01).run()
    bserver.files.clear()
    bserver.file_meta.clear()  # the service dropped the upload
    summary = Batch(
        items, "out.jsonl", api_key=API_KEY, base_url=bserver.url, mode="batch-api", poll_interval_s=0.01
    ).run()
    assert summary.ok == 2 and bserver.created() == 1 and len(bserver.file_meta) == 1  # in a new file, this run
    assert "is gone from the service" in summary.notes[0] and "uploaded again" in summary.notes[0]


def test_several_failed_jobs_are_all_in_the_summary_and_the_error_counts_the_rest(bserver):
    bserver.fail_validation = "no quota"
    items = [BatchItem(id=f"{m}-{i}", request={"prompt": f"q{i}", "model": m}) for m in ("qwen3-vl-plus", "qwen-vl-max")
             for i in range(2)]  # fmt: skip
    summary = Batch(
        items, "out.jsonl", api_key=API_KEY, base_url=bserver.url, mode="batch-api", poll_interval_s=0.01
    ).run()
    assert bserver.created() == 2 and len(summary.job_failures) == 2
    assert {f["batch_id"] for f in summary.job_failures} == set(bserver.batches)
    error = summary.service_failure()
    assert error is not None and "(and 1 more Batch API failure: see the summary)" in str(error)
