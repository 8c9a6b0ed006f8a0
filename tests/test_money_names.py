"""Money and model names: a cost cap that cannot be checked, a model the service does not have, a misspelt model
name, and a cost that is unknown (never shown as free). Against the loopback DashScope double."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import Reply
from qwenvl.batch import Batch, BatchItem
from qwenvl.batch.runner import Estimate, unpriced_error, within_budget
from qwenvl.models import model_info, near_model
from qwenvl.store import Entry, UsageLog

UNPRICED = "qwen3-vl-plus-preview"  # the double serves it (a qwen3-vl-plus-* name); the table has no price


def model_calls(server) -> list:
    return [r for r in server.requests if r.path.endswith(("/chat/completions", "/generation"))]


def write_requests(path: Path, n: int, **fields) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"q{i:03d}", "prompt": f"question {i:03d}", **fields}) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- 1. a cost cap that cannot be checked ----------------------------------------------------------------------


@pytest.mark.parametrize("cap", [["--max-cost", "0.000001"], []], ids=["given", "default"])
def test_a_cap_on_a_model_with_no_price_refuses_before_sending(server, env, isolated_env, cap):
    reqs = write_requests(isolated_env / "r.jsonl", 6)
    p = run_cli("batch", "--requests", str(reqs), "-o", "o.jsonl", "-m", UNPRICED, *cap, env=env)
    assert p.returncode == 2, p.stderr
    line = " ".join(p.stderr.split())
    assert "--max-cost" in line and "cannot be checked" in line and UNPRICED in line and "no known price" in line
    assert "nothing was sent" in line and "--yes" in line and "qwenvl models" in line
    assert "Traceback" not in p.stderr
    assert model_calls(server) == [] and not (isolated_env / "o.jsonl").exists()
    # --yes runs with no cap: every item sent, the summary's cost unknown (null), not 0.0
    p = run_cli("batch", "--requests", str(reqs), "-o", "o.jsonl", "-m", UNPRICED, *cap, "--yes", "--json", env=env)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert len(model_calls(server)) == 6
    assert summary["cost"] is None and summary["unpriced"] == 6 and summary["local"] is False
    assert all(rec["cost"] is None for rec in read_jsonl(isolated_env / "o.jsonl"))


def test_a_priced_model_under_the_cap_still_runs(server, env, isolated_env):
    reqs = write_requests(isolated_env / "r.jsonl", 3)
    p = run_cli("batch", "--requests", str(reqs), "-o", "o.jsonl", "-m", "qwen3-vl-flash", "--json", env=env)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["cost"] > 0 and summary["unpriced"] == 0


def test_dry_run_shows_an_unknown_cost_not_zero(server, env, isolated_env):
    reqs = write_requests(isolated_env / "r.jsonl", 4)
    p = run_cli("batch", "--requests", str(reqs), "-o", "o.jsonl", "-m", UNPRICED, "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    est = json.loads(p.stdout)
    assert est["cost_max"] is None and est["cost_input"] is None
    assert est["unpriced"] == 4 and est["unpriced_models"] == [UNPRICED]
    assert model_calls(server) == []


def test_a_mixed_requests_file_counts_the_priced_and_still_refuses(server, env, isolated_env):
    path = isolated_env / "r.jsonl"
    path.write_text(
        json.dumps({"id": "a", "prompt": "x", "model": "qwen3-vl-flash"})
        + "\n"
        + json.dumps({"id": "b", "prompt": "y", "model": UNPRICED})
        + "\n"
    )
    p = run_cli("batch", "--requests", str(path), "-o", "o.jsonl", "--dry-run", env=env)
    est = json.loads(p.stdout)
    assert est["cost_max"] > 0 and est["unpriced"] == 1  # the priced request's cost, the other said apart
    p = run_cli("batch", "--requests", str(path), "-o", "o.jsonl", env=env)
    assert p.returncode == 2 and "cannot be checked" in p.stderr and "1 of the 2 requests" in " ".join(p.stderr.split())
    assert model_calls(server) == []


def test_the_library_estimate_says_the_cap_cannot_be_checked(server):
    items = [BatchItem(id=str(i), request={"prompt": "x", "model": UNPRICED}) for i in range(3)]
    with Batch(items, "o.jsonl", api_key=API_KEY, base_url=server.url) as job:
        est = job.estimate()
    assert est.cost_max is None and est.unpriced == 3
    assert not within_budget(est, 20.0) and within_budget(est, None)
    err = unpriced_error(est, "max_cost=20")
    assert err is not None and UNPRICED in err.message and err.exit_code == 2
    assert unpriced_error(Estimate(local=True, unpriced=0), "x") is None
    assert model_calls(server) == []


# --- 2. a model the service does not have ---------------------------------------------------------------------


def test_a_missing_model_is_a_typed_error_in_both_protocols_sync_and_async(server, protocol):
    with make_client(server, protocol) as client, pytest.raises(qwenvl.ModelNotFoundError) as info:
        client.complete(prompt="x", model="qwen9-vl-future")
    err = info.value
    assert isinstance(err, qwenvl.BadRequestError) and isinstance(err, qwenvl.NotFoundError)
    assert err.status == 400 and "`qwenvl models`" in (err.hint or "")

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as ac:
            await ac.complete(prompt="x", model="qwen9-vl-future")

    with pytest.raises(qwenvl.ModelNotFoundError):
        asyncio.run(go())


@pytest.mark.parametrize(
    ("status", "code", "message"), [(404, "model_not_found", None), (400, None, "Model not exist.")]
)
def test_the_service_codes_for_a_missing_model_map_to_it(server, protocol, status, code, message):
    server.enqueue(Reply(status=status, error_code=code, error_message=message))
    with make_client(server, protocol) as client, pytest.raises(qwenvl.ModelNotFoundError) as info:
        client.complete(prompt="x")
    assert info.value.status == status


def test_a_batch_stops_at_the_first_missing_model_and_stays_resumable(server, env, isolated_env):
    reqs = write_requests(isolated_env / "r.jsonl", 30)
    args = ("batch", "--requests", str(reqs), "-o", "o.jsonl", "-m", "qwen9-vl-future", "--concurrency", "2", "--yes")
    p = run_cli(*args, env=env)
    assert p.returncode == 5, p.stderr
    line = " ".join(p.stderr.split())
    assert "qwen9-vl-future" in line and "stopped at once" in line and "model does not exist" in line
    assert "a rerun sends them" in line and "Traceback" not in p.stderr
    assert len(model_calls(server)) <= 2  # nothing after the first answers
    out = isolated_env / "o.jsonl"
    assert not out.exists() or read_jsonl(out) == []  # nothing recorded as failed: all still to send
    before = len(model_calls(server))
    p = run_cli(*args, env=env)  # the same command sends them again
    assert p.returncode == 5 and len(model_calls(server)) > before


def test_a_library_batch_stops_at_a_missing_model_in_the_native_protocol(server):
    items = [BatchItem(id=str(i), request={"prompt": "x", "model": "qwen9-vl-future"}) for i in range(10)]
    job = Batch(items, "n.jsonl", api_key=API_KEY, base_url=server.url, protocol="native", concurrency=1)
    with job, pytest.raises(qwenvl.ModelNotFoundError) as info:
        job.run()
    # native says only "Model not exist.": the message names the model
    assert "qwen9-vl-future" in info.value.message and "stopped at once" in (info.value.hint or "")
    assert len(model_calls(server)) == 1


# --- 3. did you mean, and the rules of an unlisted name ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("qwen3-vl-plsu", "qwen3-vl-plus"),
        ("qwen3-vl-flahs", "qwen3-vl-flash"),
        ("qwen-vl-plux", "qwen-vl-plus"),
        ("qwen3-vl-plus-preview", None),  # a variant, not a typo
        ("qwen3-vl-max", None),  # known words: maybe a newer model
        ("qwen3.5-vl-plus", None),  # a new version
        ("qwen3-vl-30b-a3b-instruct", None),
        ("qwen3-vl-plus", None),
        ("gpt-4o", None),
    ],
)
def test_near_model(name, meant):
    assert near_model(name) == meant


def test_an_unlisted_variant_takes_the_rules_of_its_longest_listed_prefix():
    info = model_info("qwen3-vl-plus-preview")
    assert info.entry == "qwen3-vl-plus" and not info.known and not info.has_price
    assert info.video_frame_tokens == model_info("qwen3-vl-plus").video_frame_tokens  # plus's, not flash's
    typo = model_info("qwen3-vl-plsu")
    assert typo.entry == "qwen3-vl-plus" and "did you mean qwen3-vl-plus?" in typo.resolution


@pytest.mark.parametrize("name", ["QWEN3-VL-PLUS", " qwen3-vl-plus", "qwen3-vl-plus ", "Qwen3-VL-Flash"])
def test_a_model_name_in_other_case_or_with_spaces_is_refused_not_priced(server, env, isolated_env, name):
    """DashScope's model names are lower case and exact: QWEN3-VL-PLUS was taken as known and priced, then sent
    verbatim and refused by the service (exit 5). Now refused before sending, CLI and library."""
    meant = name.strip().lower()
    info = model_info(name)
    assert not info.known and not info.has_price and info.entry == meant
    assert near_model(name) == meant
    write_image(isolated_env / "a.png")
    for args in (["ask", "a.png", "-p", "hi", "--dry-run"], ["ask", "a.png", "-p", "hi"], ["tokens", "a.png"]):
        p = run_cli(*args, "-m", name, env=env)
        assert p.returncode == 2 and f"did you mean {meant}?" in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr
    with make_client(server, "native") as client, pytest.raises(qwenvl.UsageError, match=f"did you mean {meant}"):
        client.complete(prompt="x", model=name)
    assert model_calls(server) == []
    assert model_info("Qwen/Qwen2.5-VL-7B-Instruct").known  # a Hugging Face id (local models) still resolves


def test_ask_with_a_misspelt_model_is_refused_before_sending(server, env, isolated_env):
    p = run_cli("ask", "-p", "hi", "-m", "qwen3-vl-plsu", env=env)
    assert p.returncode == 2, p.stderr
    assert "did you mean qwen3-vl-plus?" in p.stderr and "QWENVL_UNLISTED_MODELS" in p.stderr
    assert p.stderr.count("did you mean") == 1  # the refusal alone, no warning saying it again
    assert model_calls(server) == []
    # the user insists: sent as given (the double has no such model: exit 5, with the hint)
    p = run_cli("ask", "-p", "hi", "-m", "qwen3-vl-plsu", env={**env, "QWENVL_UNLISTED_MODELS": "qwen3-vl-plsu"})
    assert p.returncode == 5 and len(model_calls(server)) == 1 and "qwenvl models" in p.stderr


def test_a_batch_with_a_misspelt_model_sends_nothing(server, env, isolated_env):
    reqs = write_requests(isolated_env / "r.jsonl", 5)
    p = run_cli("batch", "--requests", str(reqs), "-o", "o.jsonl", "-m", "qwen3-vl-plsu", "--yes", env=env)
    assert p.returncode == 2 and "did you mean qwen3-vl-plus?" in p.stderr
    assert model_calls(server) == []


@pytest.mark.parametrize("model", ["qwen3-vl-plsu", "QWEN3-VL-PLUS"])
def test_the_library_batch_refuses_a_misspelt_model_before_writing(server, isolated_env, protocol, model):
    """Batch(model="qwen3-vl-plsu") ran with every item a UsageError line (one item, or items that also fail for
    their own reasons, escaped the all-items-alike refusal); the CLI's -m was refused. Now the same check refuses
    it before anything is written or sent."""
    write_image(isolated_env / "a.png")
    for images in (["a.png"], ["a.png", "missing.png"]):
        items = [BatchItem(id=f"i{i}", request={"prompt": "hi", "image": im}) for i, im in enumerate(images)]
        with (
            Batch(items, "nb2.jsonl", api_key=API_KEY, base_url=server.url, protocol=protocol, model=model) as job,
            pytest.raises(qwenvl.UsageError, match="did you mean qwen3-vl-plus"),
        ):
            job.run()
        assert not (isolated_env / "nb2.jsonl").exists() and model_calls(server) == []
        assert not list(isolated_env.glob("nb2.jsonl*"))


def test_the_library_refuses_a_misspelt_model_sync_and_async(server, protocol):
    with make_client(server, protocol) as client, pytest.raises(qwenvl.UsageError, match="did you mean"):
        client.complete(prompt="x", model="qwen3-vl-flahs")

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as ac:
            await ac.complete(prompt="x", model="qwen3-vl-flahs")

    with pytest.raises(qwenvl.UsageError, match="did you mean"):
        asyncio.run(go())
    assert model_calls(server) == []


def test_models_verb_says_did_you_mean_and_the_variant_rule(server):
    # what ask/tokens/batch would do with the name: refused as a misspelling, with how to insist
    p = run_cli("models", "qwen3-vl-plsu")
    assert p.returncode == 2 and "did you mean qwen3-vl-plus?" in p.stderr, p.stderr
    assert "QWENVL_UNLISTED_MODELS" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("models", "qwen3-vl-plsu", env={"QWENVL_UNLISTED_MODELS": "qwen3-vl-plsu"})
    assert p.returncode == 0 and "did you mean qwen3-vl-plus?" in p.stdout
    p = run_cli("models", "QWEN3-VL-PLUS")
    assert p.returncode == 2 and "did you mean qwen3-vl-plus?" in p.stderr
    p = run_cli("models", UNPRICED)
    assert "variant of qwen3-vl-plus" in p.stdout and "qwen3-vl-flash" not in p.stdout


# --- 4. an unknown cost is unknown, never free ---------------------------------------------------------------------


def test_usage_shows_an_unpriced_model_as_unknown_and_the_totals_say_so(server):
    with make_client(server) as client:
        client.complete(prompt="x", model=UNPRICED)
        client.complete(prompt="y", model="qwen3-vl-flash")
    data = json.loads(run_cli("usage", "--json").stdout)
    rows = {r["model"]: r for r in data["rows"]}
    assert rows[UNPRICED]["cost"] is None and rows[UNPRICED]["local"] is False and rows[UNPRICED]["unpriced"] == 1
    assert rows["qwen3-vl-flash"]["cost"] > 0 and rows["qwen3-vl-flash"]["unpriced"] == 0
    assert data["total"]["unpriced_requests"] == 1 and data["total"]["cost"]["CNY"] == rows["qwen3-vl-flash"]["cost"]
    table = run_cli("usage").stdout
    [row] = [line for line in table.splitlines() if UNPRICED in line]
    assert "unknown" in row and "¥0.0000" not in row
    assert "leave out 1 answer" in " ".join(table.split())
    [total] = [line for line in table.splitlines() if line.strip(" │┃|").startswith("total")]
    assert "+ ?" in total


def test_usage_of_only_unpriced_answers_totals_unknown():
    log = UsageLog()
    log.record(Entry(model=UNPRICED, protocol="compat", outcome="ok", input_tokens=3410, output_tokens=5))
    log.close()
    data = json.loads(run_cli("usage", "--json").stdout)
    assert data["rows"][0]["cost"] is None and data["total"]["cost"] == {} and data["total"]["unpriced_requests"] == 1
    table = run_cli("usage").stdout
    total = [line for line in table.splitlines() if line.strip(" │┃|").startswith("total")]
    assert total and "unknown" in total[0]
    # an error answer costs nothing: not unknown
    log = UsageLog()
    log.record(Entry(model="qwen3-vl-flash", protocol="compat", outcome="BadRequestError", currency="CNY"))
    log.close()
    rows = {r["model"]: r for r in json.loads(run_cli("usage", "--json").stdout)["rows"]}
    assert rows["qwen3-vl-flash"]["cost"] == 0.0 and rows["qwen3-vl-flash"]["unpriced"] == 0


# --- 5. many-file extract: what a schema failure paid ----------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.mark.parametrize("model", ["qwen3-vl-flash", UNPRICED])
def test_many_file_extract_lines_say_what_a_schema_failure_paid(server, env, isolated_env, protocol, model):
    (isolated_env / "s.json").write_text(json.dumps(SCHEMA))
    write_image(isolated_env / "a.png")
    write_image(isolated_env / "b.png")
    server.enqueue(Reply(text='{"n": 1}'), Reply(text="no idea"), Reply(text='{"m": 2}'))
    args = ("extract", "a.png", "b.png", "--schema", "s.json", "-m", model, "--protocol", protocol)
    if model == UNPRICED:  # several requests whose cost cannot be capped: refused unless --yes, as a batch is
        p = run_cli(*args, env=env)
        assert p.returncode == 2 and "cannot be checked" in p.stderr and "--yes" in p.stderr
        args += ("--yes",)
    p = run_cli(*args, env=env)
    assert p.returncode == 5, p.stderr
    ok, failed = (json.loads(line) for line in p.stdout.splitlines())
    assert (ok["file"], ok["json"], ok["requests"], len(ok["request_ids"])) == ("a.png", {"n": 1}, 1, 1)  # and its cost
    assert failed["raw_text"] == '{"m": 2}' and failed["requests"] == 2 and failed["local"] is False
    assert failed["usage"]["input_tokens"] > 0 and failed["usage"]["output_tokens"] > 0
    assert len(failed["request_ids"]) == 2 and failed["currency"] == "CNY"
    if model == UNPRICED:
        assert failed["cost"] is None
    else:
        assert failed["cost"] > 0
    line = " ".join(p.stderr.split())
    assert "paid:" in line and "2 requests (the repair included)" in line
    assert all(rid in line for rid in failed["request_ids"])


# --- 6. an interrupted or failed repair keeps the first, paid answer -----------------------------------------------


def _wait_for(cond, timeout: float = 60.0) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("verb", ["ask", "analyze"])
def test_ctrl_c_during_a_schema_repair_keeps_the_first_answer(server, env, isolated_env, verb):
    import signal
    import subprocess
    import sys

    from conftest import ctrl_c_reaches_children

    (isolated_env / "s.json").write_text(json.dumps(SCHEMA))
    write_image(isolated_env / "photo.png")
    server.enqueue(Reply(text='{"m": "first answer"}'), Reply(text='{"n": 1}', delay_s=60))
    if verb == "ask":
        args = ["ask", "photo.png", "-p", "x", "--schema", "s.json"]
    else:
        request = json.dumps({"prompt": "x", "image": "photo.png"})
        args = ["analyze", "--request", request, "--schema", "s.json", "--output", "out.json"]
    with ctrl_c_reaches_children():
        proc = subprocess.Popen(
            [sys.executable, "-m", "qwenvl", *args],
            env={**{k: v for k, v in __import__("os").environ.items() if not k.startswith("DASHSCOPE")}, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        assert _wait_for(lambda: len(model_calls(server)) >= 2), "the repair request was not sent"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, err
    line = " ".join(err.split())
    assert "Traceback" not in err and "interrupted" in line
    assert "first answer" in line and "raw answer" in line and "paid:" in line
    if verb == "analyze":
        kept = json.loads((isolated_env / "out.json").read_text())
        assert "first answer" in kept["text"] and "json" not in kept and kept["usage"]


def test_a_normal_schema_failure_in_analyze_writes_the_paid_answer_too(server, env, isolated_env):
    (isolated_env / "s.json").write_text(json.dumps(SCHEMA))
    server.enqueue(Reply(text="nope"), Reply(text="still nope"))
    p = run_cli("analyze", "--request", '{"prompt": "x"}', "--schema", "s.json", "--output", "o.json", env=env)
    assert p.returncode == 5 and "paid:" in p.stderr
    assert json.loads((isolated_env / "o.json").read_text())["text"] == "still nope"


def test_a_failed_repair_request_keeps_the_first_answer(server, protocol):
    server.enqueue(Reply(text='{"m": 1}'), Reply(status=500, times=5))
    with make_client(server, protocol, max_retries=0) as client, pytest.raises(qwenvl.StructuredOutputError) as info:
        client.complete(prompt="x", schema=SCHEMA)
    err = info.value
    assert err.raw_text == '{"m": 1}' and err.requests == 1 and err.response.usage.input_tokens
    assert isinstance(err.__cause__, qwenvl.InternalServerError) and "repair request failed" in err.message


def test_a_cancelled_async_repair_keeps_the_first_answer(server, protocol):
    from qwenvl.client import unrepaired

    server.enqueue(Reply(text='{"m": 1}'), Reply(text='{"n": 1}', delay_s=60))

    async def go() -> BaseException:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as ac:
            task = asyncio.create_task(ac.complete(prompt="x", schema=SCHEMA))
            while len(model_calls(server)) < 2:
                await asyncio.sleep(0.05)
            task.cancel()
            try:
                await asyncio.wait_for(task, 30)
            except asyncio.CancelledError as exc:
                return exc
            raise AssertionError("not cancelled")

    exc = asyncio.run(asyncio.wait_for(go(), 60))
    kept = unrepaired(exc)
    assert kept is not None and kept.raw_text == '{"m": 1}' and kept.response is not None


def test_a_batch_item_whose_repair_fails_is_recorded_with_its_cost_not_paid_again(server):
    server.enqueue(Reply(text='{"m": 1}'), Reply(status=500, times=5))
    items = [BatchItem(id="a", request={"prompt": "x", "schema": SCHEMA, "max_retries": 0})]
    with Batch(items, "o.jsonl", api_key=API_KEY, base_url=server.url, concurrency=1) as job:
        summary = job.run()
    [rec] = read_jsonl(Path("o.jsonl"))
    assert rec["status"] == "error" and rec["error"]["type"] == "StructuredOutputError"
    assert rec["cost"] > 0 and rec["usage"]["input_tokens"] > 0 and summary.cost > 0
    assert len(model_calls(server)) == 2  # the first answer, the repair: the item was not sent again


def test_one_home_for_did_you_mean():
    from qwenvl.spelling import closest, nearest

    assert closest("temp", ["top-p", "temperature", "timeout"]) == ["temperature"]  # begun by the name first
    assert closest("max-token", ["max-tokens", "backend"]) == ["max-tokens"]  # the far one left out
    assert nearest("max_token", ["max_tokens", "top_k"]) == "max_tokens" and nearest("zzz", ["max_tokens"]) is None


def test_tokens_with_a_misspelt_model_says_did_you_mean(isolated_env):
    write_image(isolated_env / "p.png")
    p = run_cli("tokens", "p.png", "-m", "qwen3-vl-flahs")
    assert p.returncode == 2 and "did you mean qwen3-vl-flash?" in p.stderr
    p = run_cli("tokens", "p.png", "-m", "qwen3-vl-flahs", env={"QWENVL_UNLISTED_MODELS": "qwen3-vl-flahs"})
    assert p.returncode == 0 and "unknown" in p.stdout
