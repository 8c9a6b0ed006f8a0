"""`--mode batch-api`: the DashScope Batch API flow end to end against tests/batch_server.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_server import BatchServer
from conftest import API_KEY, run_cli, write_image
from qwenvl.batch import Batch, BatchItem, batchapi
from qwenvl.batch.batchapi import BatchAPI, check_region
from qwenvl.errors import AuthenticationError, UsageError
from qwenvl.models import estimate_cost


@pytest.fixture
def bserver() -> Iterator[BatchServer]:
    with BatchServer(api_key=API_KEY) as srv:
        yield srv


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
    api_batch(bserver, items).run()
    [line] = read_jsonl("out.jsonl")
    assert line["error"]["type"] == "StructuredOutputError"  # the echo reply is not JSON
    assert line["error"]["raw_text"].startswith("echo: count")
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


def test_expired_job_leaves_items_pending_for_the_next_run(bserver):
    bserver.final_status = "expired"
    items = [BatchItem(id=f"i{i}", request={"prompt": f"q{i}"}) for i in range(2)]
    first = api_batch(bserver, items).run()
    assert first.pending == 2 and first.ok == 0
    bserver.final_status = "completed"
    second = api_batch(bserver, items).run()
    assert second.ok == 2 and paths(bserver).count("POST /batches") == 2


def test_failed_validation_is_each_items_error(bserver):
    bserver.fail_validation = "the file is not valid JSONL"
    items = [BatchItem(id=f"i{i}", request={"prompt": f"q{i}"}) for i in range(2)]
    summary = api_batch(bserver, items).run()
    assert summary.error == 2
    [line, _] = read_jsonl("out.jsonl")
    assert line["error"]["type"] == "BatchJobError" and "not valid JSONL" in line["error"]["message"]


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
    assert p.returncode == 5 and "HTTP 404" in p.stderr
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
        "0",
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
        assert job["status"] == "validating" and job["request_counts"]["total"] == 1
        while job["status"] != "completed":
            job = api.retrieve(job["id"])
        [line] = [json.loads(x) for x in api.content(job["output_file_id"]).splitlines()]
        assert (
            line["custom_id"] == "1"
            and line["response"]["body"]["choices"][0]["message"]["content"] == "echo: hi [images=0 videos=0]"
        )
