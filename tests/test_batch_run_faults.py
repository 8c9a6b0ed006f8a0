"""`qwenvl batch` faults a new user met: a rerun asking another question on the same output, a dead or hanging
service, a lock file left behind by an early exit, unrounded costs, Batch API calls without a deadline."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest

from conftest import API_KEY, run_cli, write_image
from dashscope_server import Reply
from fault_server import FaultServer
from qwenvl.batch import Batch, BatchItem
from qwenvl.batch.journal import lock_path
from qwenvl.errors import UsageError
from qwenvl.models import round_cost


def model_calls(server) -> list:
    return [r for r in server.requests if r.path.endswith("/chat/completions")]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_requests(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- one question per output ---------------------------------------------------------------------------------


def test_a_rerun_with_another_model_or_prompt_is_refused_and_loses_nothing(server, isolated_env):
    env = {"DASHSCOPE_API_KEY": API_KEY}
    (isolated_env / "many").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        write_image(isolated_env / "many" / name)
    base = ("batch", "many", "-o", "jr.jsonl", "--base-url", server.url, "--no-cache")
    assert run_cli(*base, "-p", "jr", env=env).returncode == 0
    before = (isolated_env / "jr.jsonl").read_bytes()
    assert len(model_calls(server)) == 3
    # the same question with its defaults given explicitly (as options or QWENVL_MODEL) is the same question
    same = ("-p", "jr", "-m", "qwen3-vl-plus", "--max-tokens", "512", "-t", "0.2", "--detail", "auto")
    assert run_cli(*base, *same, env=env).returncode == 0
    assert run_cli(*base, "-p", "jr", env={**env, "QWENVL_MODEL": "qwen3-vl-plus"}).returncode == 0
    assert len(model_calls(server)) == 3 and (isolated_env / "jr.jsonl").read_bytes() == before
    for change, named in (
        (("-p", "jr", "--model", "qwen3-vl-flash"), "(--model / model changed)"),
        (("-p", "jr fixed"), "(--prompt / prompt changed)"),
        (("-p", "jr fixed", "--max-tokens", "9"), "(--max-tokens / max_tokens, --prompt / prompt changed)"),
    ):
        p = run_cli(*base, *change, env=env)
        assert p.returncode == 2, p.stderr
        assert f"another question {named}" in p.stderr and "3 of its 3 answered items" in p.stderr, p.stderr
        assert "--fresh" in p.stderr and "-o another.jsonl" in p.stderr
        assert len(model_calls(server)) == 3 and (isolated_env / "jr.jsonl").read_bytes() == before
    # --fresh says what it replaces and, off a terminal, needs --yes
    p = run_cli(*base, "-p", "jr", "--model", "qwen3-vl-flash", "--fresh", env=env)
    assert p.returncode == 2 and "--fresh replaces the 3 answers" in p.stderr and "--yes" in p.stderr, p.stderr
    assert len(model_calls(server)) == 3 and (isolated_env / "jr.jsonl").read_bytes() == before
    p = run_cli(*base, "-p", "jr", "--model", "qwen3-vl-flash", "--fresh", "--yes", env=env)
    assert p.returncode == 0, p.stderr
    assert len(model_calls(server)) == 6
    assert {r["result"]["model"] for r in read_jsonl(isolated_env / "jr.jsonl")} == {"qwen3-vl-flash"}
    # the network settings are not the question: changing them resumes
    assert run_cli(*base, "-p", "jr", "--model", "qwen3-vl-flash", "--timeout", "30", env=env).returncode == 0
    assert len(model_calls(server)) == 6
    # a dry run with --fresh shows what would be replaced
    p = run_cli(*base, "-p", "other", "--fresh", "--dry-run", env=env)
    assert p.returncode == 0 and json.loads(p.stdout)["replaced"] == 3, p.stderr


def test_the_library_refuses_another_question_unless_fresh(server, isolated_env):
    items = [BatchItem(id=f"i{i}", request={"prompt": "p"}) for i in range(3)]
    Batch(items, "o.jsonl", api_key=API_KEY, base_url=server.url, cache=False).run()
    other = [BatchItem(id=f"i{i}", request={"prompt": "p", "model": "qwen3-vl-flash"}) for i in range(3)]
    with Batch(other, "o.jsonl", api_key=API_KEY, base_url=server.url, cache=False) as job:
        with pytest.raises(UsageError, match="3 of its 3 answered items"):
            job.estimate()
        with pytest.raises(UsageError, match="another question"):
            job.run()
    assert len(model_calls(server)) == 3
    with Batch(other, "o.jsonl", api_key=API_KEY, base_url=server.url, cache=False, fresh=True) as job:
        assert job.estimate().replaced == 3
        assert job.run().ok == 3
    assert len(model_calls(server)) == 6


def test_failed_items_whose_request_changed_are_sent_again(server, isolated_env):
    """Only answers are protected: an item that ended in an error is simply re-done with its new request."""
    server.enqueue(Reply(status=400, times=1))
    items = [BatchItem(id="x", request={"prompt": "p", "max_retries": 0})]
    Batch(items, "o.jsonl", api_key=API_KEY, base_url=server.url, cache=False).run()
    assert read_jsonl(Path("o.jsonl"))[0]["status"] == "error"
    fixed = [BatchItem(id="x", request={"prompt": "p fixed", "max_retries": 0})]
    assert Batch(fixed, "o.jsonl", api_key=API_KEY, base_url=server.url, cache=False).run().ok == 1


# --- a service that cannot be reached ----------------------------------------------------------------------


def test_a_dead_server_stops_the_batch_early_with_exit_5(isolated_env):
    (isolated_env / "photos").mkdir()
    for i in range(13):
        write_image(isolated_env / "photos" / f"p{i}.png")
    url = f"http://127.0.0.1:{closed_port()}"
    env = {"DASHSCOPE_API_KEY": API_KEY}
    p = run_cli(
        "batch", "photos", "-p", "hi", "-o", "dead.jsonl", "--base-url", url, "--retry-backoff-s", "0.01", env=env
    )
    assert p.returncode == 5, p.stderr
    assert "cannot be reached" in p.stderr and "stopped at once" in p.stderr and "Traceback" not in p.stderr
    lines = read_jsonl(isolated_env / "dead.jsonl")  # what finished (errors) is kept; the rest is pending
    assert 3 <= len(lines) < 13 and all(r["error"]["type"] == "APIConnectionError" for r in lines)
    # the hint says what this run left, truly: nothing answered, the failed ones need --retry-errors
    said = " ".join(p.stderr.split())
    assert f"{len(lines)} failed for the service's reasons (recorded: --retry-errors sends them again)" in said
    assert "answered" not in said
    assert f"{13 - len(lines)} not sent (a rerun sends them)" in said
    assert not lock_path(isolated_env / "dead.jsonl").exists()


def test_a_hanging_server_stops_the_batch_by_its_deadline(isolated_env):
    with FaultServer("silent") as fault:
        reqs = write_requests(isolated_env / "r.jsonl", 20)
        started = time.monotonic()
        p = run_cli(
            "batch",
            "--requests",
            str(reqs),
            "-o",
            "o.jsonl",
            "--base-url",
            fault.url,
            "--timeout",
            "1",
            "--max-retries",
            "0",
            "--concurrency",
            "2",
            env={"DASHSCOPE_API_KEY": API_KEY},
            timeout=90,
        )
        # the server read the requests and never answered: too slow (they were delivered), not unreachable
        assert p.returncode == 5 and "the service answers too slowly" in p.stderr, p.stderr
        assert fault.total() < 20 and time.monotonic() - started < 80


def test_items_failed_by_the_service_exit_5_and_items_failed_by_their_input_exit_0(server, isolated_env):
    env = {"DASHSCOPE_API_KEY": API_KEY}
    write_image(isolated_env / "a.png")
    (isolated_env / "bad.png").write_text("not an image")
    p = run_cli("batch", "a.png", "bad.png", "-p", "x", "-o", "in.jsonl", "--base-url", server.url, env=env)
    assert p.returncode == 0, p.stderr  # the file is at fault, not the service
    server.enqueue(Reply(status=503, times=100))
    reqs = write_requests(isolated_env / "r.jsonl", 2)
    args = ("batch", "--requests", str(reqs), "-o", "svc.jsonl", "--base-url", server.url, "--max-retries", "0")
    p = run_cli(*args, env=env)
    assert p.returncode == 5, p.stderr
    assert "2 items of svc.jsonl failed for the service's reasons" in p.stderr and "--retry-errors" in p.stderr
    summary = json.loads(p.stderr.splitlines()[0])
    assert summary["service_errors"] == 2 and summary["error"] == 2
    server.reset()
    assert run_cli(*args, "--retry-errors", env=env).returncode == 0


# --- no lock file left behind ------------------------------------------------------------------------------


def test_no_early_exit_leaves_the_lock_file(server, isolated_env, monkeypatch):
    env = {"DASHSCOPE_API_KEY": API_KEY}
    reqs = write_requests(isolated_env / "r.jsonl", 2)
    lock = lock_path(isolated_env / "o.jsonl")
    p = run_cli("batch", "--requests", str(reqs), "-o", "o.jsonl", "--dry-run", env={})
    assert p.returncode == 0 and not lock.exists(), p.stderr
    (isolated_env / "bad.jsonl").write_text("not json\n")
    p = run_cli("batch", "--requests", "bad.jsonl", "-o", "o.jsonl", "--dry-run", env=env)
    assert p.returncode == 2 and not lock.exists(), p.stderr
    p = run_cli("batch", "--requests", str(reqs), "-o", "o.jsonl", "--base-url", server.url, "--max-cost", "0", env=env)
    assert p.returncode == 2 and "--max-cost" in p.stderr and not lock.exists(), p.stderr
    assert run_cli("batch", "--requests", str(reqs), "-o", "o.jsonl", "--base-url", server.url, env=env).returncode == 0
    assert not lock.exists()  # a run that ends deletes it
    p = run_cli("batch", "--requests", str(reqs), "-o", "o.jsonl", "-p", "other", env={})  # a refusal
    assert p.returncode == 2 and not lock.exists(), p.stderr
    p = run_cli("batch", "--requests", str(reqs), "-o", "n.jsonl", env={})  # no key
    assert p.returncode == 4 and not lock_path(isolated_env / "n.jsonl").exists(), p.stderr
    # Ctrl-C during the estimate
    job = Batch([BatchItem(id="a", request={"prompt": "p"})], "c.jsonl", api_key=API_KEY, base_url=server.url)

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(job.planner, "plan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        job.estimate()
    job.close()
    assert not lock_path(isolated_env / "c.jsonl").exists()


# --- costs rounded -----------------------------------------------------------------------------------------


def _rounded(value: float | None) -> bool:
    return value is None or value == round_cost(value)


def test_every_cost_of_batch_json_is_rounded(server, isolated_env):
    env = {"DASHSCOPE_API_KEY": API_KEY}
    reqs = write_requests(isolated_env / "r.jsonl", 7)
    p = run_cli("batch", "--requests", str(reqs), "-o", "o.jsonl", "--dry-run", env=env)
    est = json.loads(p.stdout)
    assert est["cost_input"] > 0 and _rounded(est["cost_input"]) and _rounded(est["cost_max"]), p.stdout
    assert not re.search(r"\d{11,}", p.stdout)
    p = run_cli("batch", "--requests", str(reqs), "-o", "o.jsonl", "--base-url", server.url, "--json", env=env)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["cost"] > 0 and _rounded(summary["cost"]) and not re.search(r"\d{11,}", p.stdout)
    assert all(_rounded(r["cost"]) for r in read_jsonl(isolated_env / "o.jsonl"))


# --- Batch API calls have deadlines ------------------------------------------------------------------------


def test_batch_api_calls_give_up_by_their_deadline_on_a_hanging_server(isolated_env):
    env = {"DASHSCOPE_API_KEY": API_KEY}
    reqs = write_requests(isolated_env / "r.jsonl", 2)
    with FaultServer("silent") as fault:
        net = ("--base-url", fault.url, "--timeout", "2", "--max-retries", "0")
        for args in (
            ("batch", "--requests", str(reqs), "-o", "o.jsonl", "--mode", "batch-api", "--region", "cn", *net),
            ("batch", "status", "batch_x", "--region", "cn", *net),
            ("batch", "cancel", "batch_x", "--region", "cn", *net),
        ):
            started = time.monotonic()
            p = run_cli(*args, env=env, timeout=90)
            assert p.returncode == 5, (args, p.stderr)
            assert "Traceback" not in p.stderr and time.monotonic() - started < 80


def test_a_flag_no_item_can_take_is_a_usage_error_not_an_error_on_every_item(server, isolated_env):
    """Flags apply to every item: --max-tokens over the model's limit, a --param that overrides a built field, or
    --thinking with --json-mode made every item an error and the run exit 0; now exit 2 before anything is sent
    (a dry run too), as ask does."""
    env = {"DASHSCOPE_API_KEY": API_KEY}
    (isolated_env / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        write_image(isolated_env / "imgs" / name)
    base = ("batch", "imgs", "-p", "q", "-o", "out.jsonl", "--base-url", server.url)
    for flags, words in (
        (("--max-tokens", "100000"), "is above qwen3-vl-plus's limit"),
        (("--param", "model=x"), "'model' cannot be given with --param"),
        (("--thinking", "--json-mode"), "needs enable_thinking off"),
    ):
        for dry in ((), ("--dry-run",)):
            p = run_cli(*base, *flags, *dry, env=env)
            assert p.returncode == 2 and words in p.stderr, (flags, p.stderr)
    assert model_calls(server) == [] and not (isolated_env / "out.jsonl").exists()
    # a requests file whose lines choose the model: the model's rules stay per line
    (isolated_env / "r.jsonl").write_text(
        json.dumps({"id": "a", "prompt": "q", "model": "qwen3-vl-plus"}) + "\n", encoding="utf-8"
    )
    p = run_cli(
        "batch", "--requests", "r.jsonl", "-o", "r.out", "--max-tokens", "1000", "--base-url", server.url, env=env
    )
    assert p.returncode == 0, p.stderr


def test_batch_without_a_key_has_the_same_hint_as_every_verb(server, isolated_env):
    """For an endpoint that is not DashScope's (a qwenvl serve --no-auth), the missing-key hint says any key will
    do; batch used the plain hint."""
    (isolated_env / "imgs").mkdir()
    write_image(isolated_env / "imgs" / "a.png")
    for verb in (("batch", "imgs", "-p", "q", "-o", "o.jsonl"), ("ask", "imgs/a.png", "-p", "q")):
        p = run_cli(*verb, "--base-url", server.url, env={})
        assert p.returncode == 4 and "any key will do" in p.stderr, (verb, p.stderr)
    assert model_calls(server) == []


def test_a_rerun_on_fewer_inputs_says_where_the_other_answers_are(server, isolated_env):
    """A rerun on a subset rewrote the output without the other items' answers and said nothing; they are kept
    in the journal (the full input brings them back, nothing re-sent), and now the run says so."""
    env = {"DASHSCOPE_API_KEY": API_KEY}
    (isolated_env / "imgs").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        write_image(isolated_env / "imgs" / name)
    base = ("-p", "q", "-o", "sub.jsonl", "--base-url", server.url)
    assert run_cli("batch", "imgs", *base, env=env).returncode == 0
    sent = len(model_calls(server))
    p = run_cli("batch", "imgs/a.png", *base, env=env)
    assert p.returncode == 0 and len(read_jsonl(isolated_env / "sub.jsonl")) == 1
    assert "2 answers of earlier runs are for items not in this input" in " ".join(p.stderr.split()), p.stderr
    p = run_cli("batch", "imgs", *base, "--json", env=env)
    assert p.returncode == 0 and len(read_jsonl(isolated_env / "sub.jsonl")) == 3
    assert len(model_calls(server)) == sent and json.loads(p.stdout.splitlines()[-1])["notes"] == []
