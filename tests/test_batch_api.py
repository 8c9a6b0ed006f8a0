"""`--mode batch-api`: the DashScope Batch API flow end to end against tests/batch_server.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batch_server import BatchServer
from conftest import API_KEY, run_cli, write_image
from qwenvl.batch import Batch, BatchItem, batchapi
from qwenvl.batch.batchapi import BatchAPI, check_region
from qwenvl.errors import APIError, AuthenticationError, MalformedResponseError, UsageError
from qwenvl.models import estimate_cost


def read_jsonl(path: Path | str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def uploads(srv: BatchServer) -> list[list[dict]]:
    return [
        [json.loads(line) for line in data.splitlines()] for fid, data in srv.files.items() if srv.file_meta.get(fid)
    ]


def api_batch(srv, items, output="out.jsonl", **kw) -> Batch:
    kw.setdefault("poll_interval_s", 0.01)
    return Batch(items, output, api_key=API_KEY, base_url=srv.url, mode="batch-api", **kw)


def paths(srv) -> list[str]:
    return [f"{r.method} {r.path.split('/compatible-mode/v1')[-1]}" for r in srv.batch_requests()]


def test_end_to_end(bserver, isolated_env):
    write_image(isolated_env / "a.png")
    (isolated_env / "bad.png").write_text("not an image")
    bserver.line_errors["t2"] = (400, "data_inspection_failed", "Input data may contain inappropriate content.")
    items = [BatchItem(id=f"t{i}", request={"prompt": f"question {i}"}) for i in range(4)]
    items += [
        BatchItem(id="img", request={"prompt": "what is it", "image": "a.png"}, input="a.png"),
        BatchItem(id="bad", request={"prompt": "x", "image": "bad.png"}, input="bad.png"),
    ]
    job = api_batch(bserver, items, csv="out.csv")
    est = job.estimate()
    assert est.price_factor == 0.5 and est.invalid == 1 and est.to_send == 5
    seen: list[str] = []
    summary = job.run(progress=lambda p: seen.append(p.phase))
    assert {"upload", "poll", "merge"} <= set(seen)
    assert summary.ok == 4 and summary.error == 2 and summary.pending == 0 and len(summary.batch_ids) == 1

    assert paths(bserver)[:2] == ["POST /files", "POST /batches"]
    assert paths(bserver).count("GET /batches/" + summary.batch_ids[0]) == bserver.polls_to_complete
    create = next(r for r in bserver.batch_requests() if r.path.endswith("/batches"))
    assert create.json == {
        "input_file_id": create.json["input_file_id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    upload = next(r for r in bserver.batch_requests() if r.path.endswith("/files"))
    assert upload.headers["Authorization"] == f"Bearer {API_KEY}"
    [lines] = uploads(bserver)
    assert [line["custom_id"] for line in lines] == ["t0", "t1", "t2", "t3", "img"]
    assert all(line["method"] == "POST" and line["url"] == "/v1/chat/completions" for line in lines)
    assert lines[4]["body"]["messages"][-1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert lines[0]["body"]["max_tokens"] == 512 and "stream" not in lines[0]["body"]

    out = {r["id"]: r for r in read_jsonl("out.jsonl")}
    assert list(out) == ["t0", "t1", "t2", "t3", "img", "bad"]
    assert out["t0"]["result"]["text"] == "echo: question 0 [images=0 videos=0]"
    assert out["t0"]["mode"] == "batch-api" and out["t0"]["batch_id"] == summary.batch_ids[0]
    assert out["img"]["result"]["usage"]["image_tokens"] == 100
    assert out["t2"]["status"] == "error" and out["t2"]["error"]["status"] == 400
    assert out["t2"]["error"]["code"] == "data_inspection_failed"
    assert out["bad"]["error"]["type"] == "MediaError"
    # half price: compare with the realtime price of the same usage
    u = out["img"]["usage"]
    full = estimate_cost("qwen3-vl-plus", u["input_tokens"], u["output_tokens"])
    assert out["img"]["cost"] == pytest.approx(full / 2)
    assert Path("out.csv").read_text().count("\n") == 7
    logged = job.usage_log.summarize(days=1)  # the batch's own log (the default file)
    assert logged[0]["requests"] == 5 and logged[0]["errors"] == 1


def test_structured_output_is_checked_without_repair(bserver):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    items = [BatchItem(id="s", request={"prompt": "count", "schema": schema})]
    job = api_batch(bserver, items)
    summary = job.run()
    [line] = read_jsonl("out.jsonl")
    assert line["error"]["type"] == "StructuredOutputError"  # the echo reply is not JSON
    assert line["error"]["raw_text"].startswith("echo: count")
    # the answer was paid (at half price): the record, the summary and the usage log say so
    u = line["usage"]
    assert line["attempts"] == 1 and len(line["request_ids"]) == 1
    full = estimate_cost("qwen3-vl-plus", u["input_tokens"], u["output_tokens"])
    assert line["cost"] == pytest.approx(full / 2) and summary.cost == pytest.approx(line["cost"], abs=1e-6)
    [logged] = job.usage_log.summarize(days=1)
    assert logged["cost"] == pytest.approx(line["cost"], abs=1e-6)
    [body] = [x["body"] for x in uploads(bserver)[0]]
    assert body["response_format"] == {"type": "json_object"}


def test_split_by_model_and_by_size(bserver, monkeypatch):
    monkeypatch.setattr(batchapi, "MAX_LINES", 3)
    items = [BatchItem(id=f"p{i}", request={"prompt": f"q{i}"}) for i in range(7)]
    items += [BatchItem(id=f"f{i}", request={"prompt": f"q{i}", "model": "qwen3-vl-flash"}) for i in range(2)]
    summary = api_batch(bserver, items).run()
    assert summary.ok == 9 and len(summary.batch_ids) == 4
    files = uploads(bserver)
    assert sorted(len(f) for f in files) == [1, 2, 3, 3]
    for f in files:
        assert len({line["body"]["model"] for line in f}) == 1  # one model per file


def test_a_line_over_the_size_limit_is_an_item_error(bserver, monkeypatch):
    monkeypatch.setattr(batchapi, "MAX_LINE_BYTES", 300)
    items = [BatchItem(id="small", request={"prompt": "hi"}), BatchItem(id="big", request={"prompt": "long " * 200})]
    summary = api_batch(bserver, items).run()
    out = {r["id"]: r for r in read_jsonl("out.jsonl")}
    assert summary.ok == 1 and out["big"]["error"]["type"] == "UsageError"
    assert "per line" in out["big"]["error"]["message"]
    assert [line["custom_id"] for line in uploads(bserver)[0]] == ["small"]


def test_no_wait_then_resume_collects_the_same_job(bserver):
    items = [BatchItem(id=f"i{i}", request={"prompt": f"q{i}"}) for i in range(3)]
    first = api_batch(bserver, items, wait=False).run()
    assert first.pending == 3 and len(first.batch_ids) == 1
    assert not Path("out.jsonl").read_text()  # nothing finished yet
    # a realtime run must not send what a Batch API job holds
    with pytest.raises(UsageError, match="Batch API job"):
        Batch(items, "out.jsonl", api_key=API_KEY, base_url=bserver.url).estimate()
    second = api_batch(bserver, items).run()
    assert second.ok == 3 and second.batch_ids == first.batch_ids
    assert paths(bserver).count("POST /files") == 1 and paths(bserver).count("POST /batches") == 1
    third = api_batch(bserver, items).run()
    assert third.this_run == 0 and paths(bserver).count("POST /files") == 1


def test_expired_job_keeps_its_answers_and_the_rest_is_sent_next_time(bserver):
    bserver.final_status, bserver.expire_after = "expired", 2
    items = [BatchItem(id=f"i{i}", request={"prompt": f"q{i}"}) for i in range(5)]
    first = api_batch(bserver, items).run()
    assert (first.ok, first.error, first.pending) == (2, 0, 3)
    [failure] = first.job_failures
    note = failure["message"]
    assert "3 of its 5 items" in note and "expired" in note and first.batch_ids[0] in note
    assert "completion window expired" in note  # the service's own words (its error file)
    error = first.service_failure()  # exit 5: the service did not answer everything
    assert error is not None and error.exit_code == 5 and str(error).startswith(note)
    assert "run the same command again" in (error.hint or "")
    out = read_jsonl("out.jsonl")
    assert [r["id"] for r in out] == ["i0", "i1"] and all(r["status"] == "ok" for r in out)
    assert out[0]["cost"] > 0  # answered before the window ended: billed, kept
    bserver.final_status = "completed"
    second = api_batch(bserver, items).run()
    assert (second.ok, second.pending, second.this_run) == (5, 0, 3) and not second.notes
    assert not second.job_failures and second.service_failure() is None
    assert bserver.created() == 2
    assert [line["custom_id"] for line in uploads(bserver)[1]] == ["i2", "i3", "i4"]  # only the unanswered
    assert [r["id"] for r in read_jsonl("out.jsonl")] == [f"i{i}" for i in range(5)]


def test_failed_validation_is_each_items_error(bserver):
    bserver.fail_validation = "the file is not valid JSONL"
    items = [BatchItem(id=f"i{i}", request={"prompt": f"q{i}"}) for i in range(2)]
    summary = api_batch(bserver, items).run()
    assert summary.error == 2
    [line, _] = read_jsonl("out.jsonl")
    assert line["error"]["type"] == "BatchJobFailedError" and "not valid JSONL" in line["error"]["message"]
    assert f"qwenvl batch status {summary.batch_ids[0]}" in line["error"]["hint"]  # the job's own id, not "ID"
    assert summary.service_errors == 2  # the service failed the job: exit 5


def test_bad_key_is_an_authentication_error(bserver):
    items = [BatchItem(id="i", request={"prompt": "q"})]
    with pytest.raises(AuthenticationError):
        Batch(items, "out.jsonl", api_key="sk-wrong-000000", base_url=bserver.url, mode="batch-api").run()


@pytest.mark.parametrize(
    ("region", "base_url"),
    [
        ("intl", None),
        ("us", None),
        ("singapore", None),
        (None, "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"),
    ],
)
def test_vl_batch_is_beijing_only(region, base_url):
    with pytest.raises(UsageError, match="Beijing"):
        check_region(region, base_url)
    with pytest.raises(UsageError, match="Beijing"):
        Batch(
            [BatchItem(id="i", request={"prompt": "q"})], "o.jsonl", region=region, base_url=base_url, mode="batch-api"
        ).estimate()
    check_region("cn", None)
    check_region(None, "http://127.0.0.1:8000")


def test_status_and_cancel_commands(bserver, isolated_env):
    bserver.polls_to_complete = 4
    items = [BatchItem(id="i", request={"prompt": "q"})]
    [job_id] = api_batch(bserver, items, wait=False).run().batch_ids
    env = {"DASHSCOPE_API_KEY": API_KEY}
    p = run_cli("batch", "status", job_id, "--base-url", bserver.url, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{job_id}: in_progress") and "input_file_id" in p.stdout
    p = run_cli("batch", "cancel", job_id, "--base-url", bserver.url, "--json", env=env)
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "cancelling"
    p = run_cli("batch", "status", job_id, "--base-url", bserver.url, "--json", env=env)
    assert json.loads(p.stdout)["status"] == "cancelled"
    p = run_cli("batch", "status", "batch_nope", "--base-url", bserver.url, env=env)
    assert p.returncode == 3 and "HTTP 404" in p.stderr and "batch_nope" in p.stderr  # the user's input
    p = run_cli("batch", "status", job_id, "--region", "intl", env=env)
    assert p.returncode == 2 and "Beijing" in p.stderr


def test_cli_batch_api_mode(bserver, isolated_env):
    write_image(isolated_env / "a.png")
    write_image(isolated_env / "b.png", color=(0, 0, 250))
    env = {"DASHSCOPE_API_KEY": API_KEY}
    p = run_cli(
        "batch",
        "a.png",
        "b.png",
        "-p",
        "Caption",
        "-o",
        "o.jsonl",
        "--mode",
        "batch-api",
        "--poll-interval",
        "0.01",
        "--base-url",
        bserver.url,
        "--json",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["ok"] == 2 and len(summary["batch_ids"]) == 1
    assert [r["id"] for r in read_jsonl(isolated_env / "o.jsonl")] == ["a.png", "b.png"]


def test_batch_api_client_directly(bserver):
    with BatchAPI(API_KEY, base_url=bserver.url) as api:
        f = api.upload(
            "x.jsonl",
            b'{"custom_id":"1","method":"POST","url":"/v1/chat/completions",'
            b'"body":{"model":"qwen3-vl-plus","messages":[{"role":"user","content":"hi"}]}}\n',
        )
        job = api.create(f["id"])
        assert job["status"] == "validating" and job["request_counts"]["total"] == 0  # counted when validated
        while job["status"] != "completed":
            job = api.retrieve(job["id"])
        assert job["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
        [line] = [json.loads(x) for x in api.content(job["output_file_id"]).splitlines()]
        assert (
            line["custom_id"] == "1"
            and line["response"]["body"]["choices"][0]["message"]["content"] == "echo: hi [images=0 videos=0]"
        )


# --- the service's life cycle, faults and interruptions -------------------------------------------------------


def items_of(n: int, prefix: str = "i") -> list[BatchItem]:
    return [BatchItem(id=f"{prefix}{i}", request={"prompt": f"q{i}"}) for i in range(n)]


def write_requests(path: Path, n: int, prompt: str = "q") -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"{prompt}{i}"}) + "\n" for i in range(n)))
    return path


def cli_args(srv: BatchServer, *extra: str) -> list[str]:
    return [
        "batch",
        "--requests",
        "reqs.jsonl",
        "-o",
        "out.jsonl",
        "--mode",
        "batch-api",
        "--poll-interval",
        "0.02",
        "--retry-backoff-s",
        "0.01",
        "--base-url",
        srv.url,
        "--no-cache",
        *extra,
    ]


ENV = {"DASHSCOPE_API_KEY": API_KEY}


def test_statuses_in_order_with_request_counts(bserver):
    bserver.polls_to_complete = 4
    seen: list[str] = []
    summary = api_batch(bserver, items_of(4)).run(progress=lambda p: seen.append(p.detail))
    assert summary.ok == 4
    statuses = [d.split()[0] for d in seen if d and d.split()[0] in batchapi.TERMINAL | {"in_progress", "finalizing"}]
    assert statuses[:3] == ["in_progress", "in_progress", "finalizing"] and statuses[-1] == "completed"
    assert "in_progress (2 of 4 requests answered)" in seen and "finalizing (4 of 4 requests answered)" in seen


def test_output_has_the_realtime_shape_at_half_the_cost(bserver, isolated_env):
    write_image(isolated_env / "a.png")
    items = [
        BatchItem(id="t", request={"prompt": "hello"}),
        BatchItem(id="img", request={"prompt": "what", "image": "a.png"}, input="a.png"),
    ]
    Batch(items, "rt.jsonl", api_key=API_KEY, base_url=bserver.url, cache=False).run()
    summary = api_batch(bserver, items, output="ba.jsonl", cache=False).run()
    rt = {r["id"]: r for r in read_jsonl("rt.jsonl")}
    ba = {r["id"]: r for r in read_jsonl("ba.jsonl")}
    for key in rt:
        assert set(ba[key]) == set(rt[key]) | {"mode", "batch_id"}
        assert set(ba[key]["result"]) == set(rt[key]["result"])
        assert ba[key]["result"]["text"] == rt[key]["result"]["text"]
        assert ba[key]["usage"] == rt[key]["usage"] and ba[key]["currency"] == rt[key]["currency"] == "CNY"
        assert ba[key]["cost"] == pytest.approx(rt[key]["cost"] / 2)  # batchapi.PRICE_FACTOR [batch]
        assert ba[key]["result"]["request_id"]  # the line's request id, for support
    assert summary.cost == pytest.approx(sum(r["cost"] for r in ba.values()), abs=1e-6)
    # the usage log (the default one, shared by both runs) has the realtime price and the batch's half
    logged = sum(r["cost"] for r in api_batch(bserver, [], output="x.jsonl").usage_log.summarize(days=1))
    assert logged == pytest.approx(sum(r["cost"] for r in rt.values()) + summary.cost, abs=1e-6)


def test_failed_lines_keep_their_error_and_the_rest_is_kept(bserver):
    bserver.line_errors["i1"] = (400, "data_inspection_failed", "Input data may contain inappropriate content.")
    bserver.line_errors["i3"] = (500, "internal_error", "An internal error has occurred.")
    summary = api_batch(bserver, items_of(4)).run()
    assert (summary.ok, summary.error, summary.pending) == (2, 2, 0)
    out = {r["id"]: r for r in read_jsonl("out.jsonl")}
    assert out["i1"]["error"]["code"] == "data_inspection_failed" and out["i1"]["error"]["status"] == 400
    assert out["i1"]["error"]["request_id"]
    assert out["i3"]["error"]["status"] == 500
    # --retry-errors sends exactly the failed lines again, in a new job
    bserver.line_errors.clear()
    again = api_batch(bserver, items_of(4), retry_errors=True).run()
    assert again.ok == 4 and [x["custom_id"] for x in uploads(bserver)[1]] == ["i1", "i3"]


def test_validation_failure_names_the_line(bserver, monkeypatch):
    bserver.fail_validation = None
    original = batchapi._plan_line

    def bad_url(batch, item):  # a line the service refuses: the job fails validation as a whole
        it, line, group = original(batch, item)
        if item.id == "i1" and isinstance(line, bytes):
            line = line.replace(b'"url":"/v1/chat/completions"', b'"url":"/v1/chat/nope"')
        return it, line, group

    monkeypatch.setattr(batchapi, "_plan_line", bad_url)
    summary = api_batch(bserver, items_of(3)).run()
    assert summary.error == 3
    out = read_jsonl("out.jsonl")
    assert all("(line 2)" in r["error"]["message"] and r["error"]["code"] == "invalid_file" for r in out)


def test_split_by_file_size(bserver, monkeypatch):
    monkeypatch.setattr(batchapi, "MAX_FILE_BYTES", 1500)
    items = [BatchItem(id=f"i{i}", request={"prompt": f"{i} " + "x" * 400}) for i in range(7)]
    summary = api_batch(bserver, items).run()
    assert summary.ok == 7 and len(summary.batch_ids) == len(uploads(bserver)) > 1
    assert all(meta["bytes"] <= 1500 for meta in bserver.file_meta.values())
    assert sorted(x["custom_id"] for f in uploads(bserver) for x in f) == sorted(i.id for i in items)


def test_the_files_limits_are_the_services(bserver):
    """50,000 lines and 6 MB per line (reference/dashscope-api.md section 5, [batch]); the file cap is ours, under
    the service's 500 MB."""
    assert batchapi.MAX_LINES == 50_000 and batchapi.MAX_LINE_BYTES == 6_000_000
    assert batchapi.MAX_FILE_BYTES <= 500_000_000


def test_a_5xx_on_a_poll_and_a_dropped_download_are_retried(bserver):
    bserver.fault("GET", "/batches/", status=500)
    bserver.fault("GET", "/content", cut=True)
    summary = api_batch(bserver, items_of(3), retry_backoff_s=0.01).run()
    assert summary.ok == 3 and bserver.created() == 1
    content = [r for r in bserver.batch_requests() if r.path.endswith("/content")]
    assert len(content) == 2 and content[0].path == content[1].path  # the cut one, then again


def test_a_lost_create_reply_does_not_create_a_second_job(bserver):
    bserver.fault("POST", "/batches", lost=True)
    summary = api_batch(bserver, items_of(2), retry_backoff_s=0.01).run()
    assert summary.ok == 2 and bserver.created() == 1
    assert bserver.count("POST", "/batches") == 1 and bserver.count("GET", "/batches") == 1  # found by its file
    lookup = next(r for r in bserver.batch_requests() if r.method == "GET" and r.path.endswith("/batches"))
    assert lookup.query["input_file_ids"] == next(iter(bserver.file_meta))


def test_a_run_stopped_between_upload_and_job_resumes_with_that_upload(bserver):
    # the create is lost and the service cannot be asked about it: the run stops with the upload journaled
    bserver.fault("POST", "/batches", lost=True)
    bserver.fault("GET", "/batches", status=503, times=3)
    with pytest.raises(APIError) as info:
        api_batch(bserver, items_of(2), retry_backoff_s=0.01).run()
    assert "run the same command again" in info.value.hint and "upload:" not in info.value.hint
    assert bserver.created() == 1 and len(bserver.file_meta) == 1
    # the next run finds the job the lost reply created: nothing uploaded or created again
    summary = api_batch(bserver, items_of(2), retry_backoff_s=0.01).run()
    assert summary.ok == 2 and bserver.created() == 1 and len(bserver.file_meta) == 1


def test_an_upload_without_a_job_gets_one_on_resume(bserver):
    bserver.fault("POST", "/batches", status=503, times=3)
    with pytest.raises(APIError):
        api_batch(bserver, items_of(2), retry_backoff_s=0.01).run()
    assert bserver.created() == 0 and len(bserver.file_meta) == 1
    summary = api_batch(bserver, items_of(2), retry_backoff_s=0.01).run()
    assert summary.ok == 2 and bserver.created() == 1 and len(bserver.file_meta) == 1  # the same file


def test_polls_failing_past_the_retries_exit_5_and_the_next_run_collects(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 3)
    bserver.fault("GET", "/batches/", status=503, times=100)
    p = run_cli(*cli_args(bserver), env=ENV)
    assert p.returncode == 5 and "Traceback" not in p.stderr
    [job_id] = bserver.batches
    assert job_id in p.stderr and "run the same command again" in p.stderr
    bserver.faults.clear()
    p = run_cli(*cli_args(bserver, "--json"), env=ENV)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ok"] == 3 and bserver.created() == 1


def test_a_401_while_waiting_stops_with_exit_4_and_keeps_the_job(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 2)
    p = run_cli(*cli_args(bserver, "--no-wait", "--json"), env=ENV)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["pending"] == 2
    bserver.api_key = "sk-rotated-0000000000"
    p = run_cli(*cli_args(bserver), env=ENV)
    assert p.returncode == 4 and "Traceback" not in p.stderr and "run the same command again" in p.stderr
    bserver.api_key = API_KEY
    p = run_cli(*cli_args(bserver, "--json"), env=ENV)
    assert p.returncode == 0 and json.loads(p.stdout)["ok"] == 2 and bserver.created() == 1


def test_no_wait_again_collects_what_is_done(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 2)
    first = json.loads(run_cli(*cli_args(bserver, "--no-wait", "--json"), env=ENV).stdout)
    assert first["pending"] == 2 and "running" in first["notes"][0]
    second = json.loads(run_cli(*cli_args(bserver, "--no-wait", "--json"), env=ENV).stdout)  # one look: finalizing
    assert second["pending"] == 2 and bserver.created() == 1
    third = json.loads(run_cli(*cli_args(bserver, "--no-wait", "--json"), env=ENV).stdout)  # completed: merged
    assert third["ok"] == 2 and third["pending"] == 0 and not third["notes"] and bserver.created() == 1


def test_cancel_keeps_what_was_answered_and_reports_the_rest(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 4)
    bserver.polls_to_complete = 4
    p = run_cli(*cli_args(bserver, "--no-wait", "--json"), env=ENV)
    [job_id] = json.loads(p.stdout)["batch_ids"]
    p = run_cli("batch", "status", job_id, "--base-url", bserver.url, "--json", env=ENV)  # in_progress: 2 of 4 done
    assert json.loads(p.stdout)["request_counts"]["completed"] == 2
    p = run_cli("batch", "cancel", job_id, "--base-url", bserver.url, env=ENV)
    assert p.returncode == 0 and p.stdout.startswith(f"{job_id}: cancelling")
    p = run_cli(*cli_args(bserver, "--json"), env=ENV)
    summary = json.loads(p.stdout)
    assert (summary["ok"], summary["pending"]) == (2, 2)
    assert "was cancelled without answering 2 of its 4 items" in summary["job_failures"][0]["message"]
    assert p.returncode == 5 and job_id in p.stderr.splitlines()[-2]  # the error line names the job
    assert [r["id"] for r in read_jsonl(isolated_env / "out.jsonl")] == ["r0", "r1"]
    p = run_cli(*cli_args(bserver, "--json"), env=ENV)  # the rest, in a new job
    assert json.loads(p.stdout)["ok"] == 4 and bserver.created() == 2 and p.returncode == 0


def test_a_job_overdue_past_its_window_stops_the_wait(bserver):
    bserver.hold = True
    job = api_batch(bserver, items_of(1), wait=False)
    [job_id] = job.run().batch_ids
    bserver.batches[job_id]["expires_at"] = int(time.time()) - 2 * 3600
    with pytest.raises(batchapi.BatchJobError, match="still validating") as info:
        api_batch(bserver, items_of(1)).run()
    assert job_id in info.value.hint and bserver.created() == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_process_resumes_without_submitting_twice(bserver, isolated_env, sig):
    """Ctrl-C (or a kill) while the job runs: after Ctrl-C the process says the job keeps running (and how to
    cancel it); the same command later collects that job, with nothing uploaded or created again."""
    write_requests(isolated_env / "reqs.jsonl", 3)
    bserver.hold = True
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")} | ENV
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwenvl", *cli_args(bserver)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert bserver.polled.wait(60), "the job was never polled"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    [job_id] = bserver.batches
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err
        assert f"job {job_id} keeps running" in err  # one job: singular
        assert f"qwenvl batch cancel {job_id} --base-url {bserver.url}" in err  # what reaches the same service
    bserver.hold = False
    p = run_cli(*cli_args(bserver, "--json"), env=ENV)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ok"] == 3
    assert bserver.created() == 1 and len(bserver.file_meta) == 1


def test_fresh_is_refused_while_a_job_is_not_collected(bserver, isolated_env):
    write_requests(isolated_env / "reqs.jsonl", 2)
    p = run_cli(*cli_args(bserver, "--no-wait", "--json"), env=ENV)
    [job_id] = json.loads(p.stdout)["batch_ids"]
    for mode in ("batch-api", "realtime"):
        args = cli_args(bserver, "--fresh")
        if mode == "realtime":  # --poll-interval applies to batch-api only: refused in realtime
            at = args.index("--poll-interval")
            args = [a if a != "batch-api" else mode for a in args[:at] + args[at + 2 :]]
        p = run_cli(*args, env=ENV)
        assert p.returncode == 2 and job_id in p.stderr and "without --fresh" in p.stderr, p.stderr
    assert bserver.created() == 1 and len(bserver.chat_requests()) == 0
    assert run_cli(*cli_args(bserver), env=ENV).returncode == 0  # collected
    p = run_cli(*cli_args(bserver, "--fresh", "--json"), env=ENV)  # it would replace 2 answers: --yes
    assert p.returncode == 2 and "--fresh replaces the 2 answers" in p.stderr and bserver.created() == 1, p.stderr
    p = run_cli(*cli_args(bserver, "--fresh", "--yes", "--json"), env=ENV)
    assert p.returncode == 0 and json.loads(p.stdout)["ok"] == 2 and bserver.created() == 2


def test_resume_estimates_nothing_for_items_already_in_a_job(bserver, isolated_env):
    """A resumed run sends nothing new: its estimate is zero (so --max-cost does not stop the collection)."""
    write_requests(isolated_env / "reqs.jsonl", 3)
    assert run_cli(*cli_args(bserver, "--no-wait"), env=ENV).returncode == 0
    job = api_batch(bserver, [BatchItem(id=f"r{i}", request={"prompt": f"q{i}"}) for i in range(3)])
    est = job.estimate()
    assert (est.submitted, est.to_send, est.pending, est.finished, est.cost_max) == (3, 0, 0, 0, 0)
    p = run_cli(*cli_args(bserver, "--max-cost", "0", "--json"), env=ENV)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ok"] == 3 and bserver.created() == 1


def test_a_job_the_service_refuses_is_each_items_error(bserver):
    bserver.fault("POST", "/batches", status=400)
    summary = api_batch(bserver, items_of(2)).run()
    assert (summary.ok, summary.error, summary.pending) == (0, 2, 0) and bserver.created() == 0
    assert "refused the job" in summary.job_failures[0]["message"] and "HTTP 400" in summary.job_failures[0]["message"]
    out = read_jsonl("out.jsonl")
    assert all(r["error"]["type"] == "BatchJobFailedError" and "HTTP 400" in r["error"]["message"] for r in out)
    assert summary.service_failure() is not None
    again = api_batch(bserver, items_of(2), retry_errors=True).run()  # nothing is stuck in the journal
    assert again.ok == 2 and bserver.created() == 1


def test_a_malformed_result_line_stops_the_merge_and_nothing_is_paid_twice(bserver):
    bserver.corrupt_results = True
    bserver.line_errors["i1"] = (500, "internal_error", "boom")  # the error file too is read, and stops at its end
    with pytest.raises(MalformedResponseError, match="not a JSON object") as info:
        api_batch(bserver, items_of(2)).run()
    [job_id] = bserver.batches
    assert "Run the same command again" in info.value.hint and f"qwenvl batch status {job_id}" in info.value.hint
    assert [r["id"] for r in read_jsonl("out.jsonl")] == ["i0"]  # the lines before the bad one are kept
    bserver.line_errors.clear()
    for key in ("output_file_id", "error_file_id"):
        if bserver.batches[job_id][key]:  # the service mends its file
            fid = bserver.batches[job_id][key]
            bserver.files[fid] = bserver.files[fid].rsplit(b"\n", 2)[0] + b"\n"
    summary = api_batch(bserver, items_of(2)).run()
    assert (summary.ok, summary.error, summary.this_run) == (1, 1, 1) and bserver.created() == 1  # i0 not again
    assert [r["status"] for r in read_jsonl("out.jsonl")] == ["ok", "error"]
