"""Faults a shell power user met against the cloud double, each fixed as a kind: a batch under sustained 429s keeps
the bounds its help promises and says so off a terminal; ..."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import qwenvl
import qwenvl.batch.runner as runner
import qwenvl.cli.batch as cli_batch
from conftest import API_KEY, run_cli, write_image
from dashscope_server import Reply
from test_batch_api import read_jsonl

ENV = {"DASHSCOPE_API_KEY": API_KEY}


def images(folder: Path, n: int) -> Path:
    folder.mkdir(exist_ok=True)
    for i in range(n):
        write_image(folder / f"img{i:03d}.png", size=(64 + i, 48), color=(i * 7 % 256, 0, 0))
    return folder


def summary_of(stderr: str) -> dict:
    return next(json.loads(line) for line in stderr.splitlines() if line.startswith('{"event": "summary"'))


# --- 1. a batch under 429s: bounded, and never silent ------------------------------------------------------------


def test_a_retry_after_beyond_the_cap_stops_a_batch_at_once_with_when_to_retry(server, isolated_env):
    imgs = images(isolated_env / "imgs", 2)
    server.enqueue(Reply(status=429, headers={"Retry-After": "300"}, times=10))
    t0 = time.monotonic()
    p = run_cli(
        "batch", str(imgs), "-p", "Describe", "-o", "d.jsonl", "--base-url", server.url, "--no-cache",
        "--max-retries", "0", "--concurrency", "1", env=ENV,
    )  # fmt: skip
    assert time.monotonic() - t0 < 15  # not 20 s of waiting, nor the 300 s asked (bounds a hang, generously)
    assert p.returncode == 5, p.stderr
    assert "try again after" in p.stderr and "300 s" in p.stderr
    assert "rate limited" in p.stderr  # the stop hint says why the item was not answered
    assert len(server.requests) == 1  # nothing else was sent into the wait
    # nothing recorded as failed: the same command resumes them
    assert [r["status"] for r in read_jsonl(isolated_env / "d.jsonl")] == []
    server.reset()
    p = run_cli("batch", str(imgs), "-p", "Describe", "-o", "d.jsonl", "--base-url", server.url, "--no-cache", env=ENV)
    assert p.returncode == 0, p.stderr
    assert [r["status"] for r in read_jsonl(isolated_env / "d.jsonl")] == ["ok", "ok"]


def test_sustained_429s_slow_a_batch_say_so_off_a_terminal_then_stop_resumably(
    server, isolated_env, monkeypatch: pytest.MonkeyPatch
):
    imgs = images(isolated_env / "imgs", 12)
    monkeypatch.setattr(runner, "RATE_LIMIT_STALL_S", 1.5)
    monkeypatch.setattr(cli_batch, "RATE_LIMIT_NOTICE_S", 0.5)
    server.enqueue(Reply(times=3), Reply(status=429, headers={"Retry-After": "0.1"}, times=100000))
    p = run_cli(
        "batch", str(imgs), "-p", "Describe", "-o", "d.jsonl", "--base-url", server.url, "--no-cache",
        "--retry-errors", "--retry-backoff-s", "0.05", "--concurrency", "2", "--max-retries", "1", env=ENV,
    )  # fmt: skip
    assert p.returncode == 5, p.stderr
    assert "answered only 429 (rate limited)" in p.stderr and "the same command later to resume" in p.stderr
    notices = [line for line in p.stderr.splitlines() if line.startswith("rate limited: ")]
    assert notices and "429 so far" in notices[0]
    assert len(notices) < 20  # at most one per interval, not one per 429
    assert 3 < len(server.requests) < 1000
    rows = read_jsonl(isolated_env / "d.jsonl")
    assert [r["status"] for r in rows] == ["ok"] * 3  # no item recorded as failed for the 429s: left to send
    assert "not sent (a rerun sends them)" in p.stderr
    server.reset()
    p = run_cli("batch", str(imgs), "-p", "Describe", "-o", "d.jsonl", "--base-url", server.url, "--no-cache", env=ENV)
    assert p.returncode == 0, p.stderr
    assert [r["status"] for r in read_jsonl(isolated_env / "d.jsonl")] == ["ok"] * 12


def test_batch_waits_on_429_are_at_most_the_promised_20_s():
    from qwenvl._constants import MAX_RETRY_DELAY_S
    from qwenvl.batch.limiter import AdaptiveLimiter

    lim = AdaptiveLimiter(4, clock=lambda: 0.0)
    assert lim.on_rate_limited(None, retry_after=19.0) == 19.0
    assert lim.on_rate_limited(None, retry_after=60.0) == MAX_RETRY_DELAY_S == 20.0


# --- 2. an explicit credentials profile with no key is "no key", never another place's key ----------------------


@pytest.mark.parametrize("variable", ["ALIBABA_CLOUD_PROFILE", "ALICLOUD_PROFILE"])
def test_a_named_profile_with_no_key_is_no_key_not_the_sdk_key_file(server, isolated_env, variable, monkeypatch):
    from qwenvl.config import find_api_key
    from qwenvl.errors import MissingAPIKeyError

    home = Path.home()
    (home / ".alibabacloud").mkdir()
    (home / ".alibabacloud" / "credentials").write_text("[default]\ndashscope_api_key = sk-cred\n")
    (home / ".dashscope").mkdir()
    (home / ".dashscope" / "api_key").write_text("sk-file\n")
    write_image(isolated_env / "photo.png")
    assert find_api_key(env={variable: "nope"}, home=home) is None
    assert find_api_key(env={}, home=home).source == "~/.alibabacloud/credentials [default]"  # type: ignore[union-attr]
    p = run_cli("ask", "photo.png", "-p", "hi", "--base-url", server.url, env={variable: "nope"})
    assert p.returncode == 4, p.stderr
    assert "profile [nope]" in p.stderr and variable in p.stderr
    assert server.requests == []  # nothing sent, with no key nor another place's
    p = run_cli("config", env={variable: "nope"})
    assert "profile [nope]" in p.stdout and ".dashscope/api_key" not in p.stdout and "found in" not in p.stdout
    monkeypatch.setenv(variable, "nope")  # the library reads the same places
    with qwenvl.Client(base_url=server.url) as c, pytest.raises(MissingAPIKeyError, match=r"profile \[nope\]"):
        c.ask("hi", str(isolated_env / "photo.png"))
    assert server.requests == []
    monkeypatch.delenv(variable)
    # the profile that has the key is used
    p = run_cli("ask", "photo.png", "-p", "hi", "--base-url", server.url, env={variable: "default"})
    assert p.returncode == 4 and "sk-cred" not in p.stderr  # the double takes only its own key: sk-cred was sent
    assert server.requests[-1].headers.get("authorization", "").endswith("sk-cred")


# --- 3. what a structured repair paid is in every output: analyze --output, ask --json, batch -----------------------

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}


@pytest.mark.parametrize("fixed", [False, True], ids=["still-invalid", "repaired"])
def test_analyze_output_accounts_for_the_repair_request(server, isolated_env, protocol, fixed):
    write_image(isolated_env / "photo.png")
    (isolated_env / "s.json").write_text(json.dumps(SCHEMA))
    server.enqueue(Reply(text='{"a": 1}'), Reply(text='{"title": "x"}' if fixed else '{"a": 1}'))
    req = json.dumps({"prompt": "describe", "image": "photo.png"})
    p = run_cli(
        "analyze", "--request", req, "--schema", "s.json", "--output", "out/sch.json", "--protocol", protocol,
        "--base-url", server.url, env=ENV,
    )  # fmt: skip
    assert p.returncode == (0 if fixed else 5), p.stderr
    usage = json.loads((isolated_env / "out" / "sch.json").read_text())["usage"]
    inp, out = ("prompt_tokens", "completion_tokens") if protocol == "compat" else ("input_tokens", "output_tokens")
    assert usage[inp] == 2 * 110  # both requests' input (10 + 100 per image), in the service's own shape
    assert usage[out] == 2 + 2  # the double counts words: '{"a": 1}' is 2, '{"title": "x"}' 2
    assert usage["total_tokens"] == usage[inp] + usage[out]
    if protocol == "compat":
        assert usage["prompt_tokens_details"]["image_tokens"] == 200
    assert len(server.requests) == 2


def test_ask_json_usage_raw_accounts_for_the_repair_request(server, isolated_env):
    write_image(isolated_env / "photo.png")
    (isolated_env / "s.json").write_text(json.dumps(SCHEMA))
    server.enqueue(Reply(text='{"a": 1}'), Reply(text='{"title": "x"}'))
    p = run_cli("ask", "photo.png", "-p", "d", "--schema", "s.json", "--json", "--base-url", server.url, env=ENV)
    assert p.returncode == 0, p.stderr
    usage = json.loads(p.stdout)["usage"]
    assert usage["input_tokens"] == 220
    assert usage.get("raw", {"prompt_tokens": 220})["prompt_tokens"] == 220


# --- 4. a read time-out in a batch: the service answers too slowly, not "cannot be reached" ------------------------


def test_a_batch_whose_requests_time_out_after_delivery_says_the_service_is_too_slow(server, isolated_env):
    imgs = images(isolated_env / "imgs", 8)
    server.enqueue(Reply(delay_s=2, times=1000))
    p = run_cli(
        "batch", str(imgs), "-p", "slow", "-o", "s.jsonl", "--base-url", server.url, "--timeout", "0.5",
        "--max-retries", "0", "--no-cache", "--concurrency", "2", env=ENV,
    )  # fmt: skip
    assert p.returncode == 5, p.stderr
    assert "the service answers too slowly" in p.stderr and "cannot be reached" not in p.stderr
    assert "reached the service" in p.stderr and "--timeout" in p.stderr
    assert len(server.requests) >= 3  # they were delivered


def test_a_batch_that_cannot_connect_still_says_cannot_be_reached(isolated_env):
    import socket

    imgs = images(isolated_env / "imgs", 6)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = run_cli(
        "batch", str(imgs), "-p", "x", "-o", "c.jsonl", "--base-url", f"http://127.0.0.1:{port}",
        "--max-retries", "0", "--no-cache", env=ENV,
    )  # fmt: skip
    assert p.returncode == 5, p.stderr
    assert "the service cannot be reached" in p.stderr and "too slowly" not in p.stderr


# --- 5. a run stopped without its requests in flight counts them: sent, and abandoned (possibly paid) -----------


def test_a_second_interrupt_counts_the_requests_it_gave_up_as_sent_and_abandoned(bserver, isolated_env):
    from test_batch_user_faults import interrupted_run

    code, _, err = interrupted_run(bserver, isolated_env, second=True)
    assert code == 130, err
    [summary] = [json.loads(line) for line in err.splitlines() if line.startswith('{"event": "summary"')]
    assert len(bserver.chat_requests()) == 4
    assert summary["sent"] == 4 and summary["abandoned"] == 4 and summary["ok"] == 0
    # what the given-up requests cost is unknown (the service may bill them): never 0.0
    assert summary["cost"] is None and summary["cost_complete"] is False


def test_a_first_interrupt_counts_the_answers_it_awaited_once(bserver, isolated_env):
    from test_batch_user_faults import interrupted_run

    code, _, err = interrupted_run(bserver, isolated_env, second=False)
    assert code == 130, err
    [summary] = [json.loads(line) for line in err.splitlines() if line.startswith('{"event": "summary"')]
    assert summary["sent"] == 4 and summary["abandoned"] == 0 and summary["ok"] == 4
    assert summary["cost"] > 0 and summary["cost_complete"] is True


def test_a_summary_whose_cost_leaves_abandoned_requests_out_says_so_in_its_text_line(monkeypatch):
    import io
    import re

    from rich.console import Console

    from qwenvl.batch.runner import Summary
    from qwenvl.cli import batch as batch_cli

    def line(**kw) -> str:
        out = io.StringIO()
        monkeypatch.setattr(batch_cli, "err_console", lambda: Console(file=out, force_terminal=True, width=400))
        fields = dict(output="o.jsonl", total=4, ok=2, error=0, pending=2, this_run=2, cached=0, sent=4)
        summary = Summary(**fields, input_tokens=10, output_tokens=5, elapsed_s=1.0, **kw)
        batch_cli._show_summary(summary, {"as_json": False})
        return re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())

    assert "¥0.0112 + ?" in line(cost=0.0112, abandoned=2)
    assert "unknown" in line(cost=None, abandoned=2)
    assert "+ ?" not in line(cost=0.0112)


# --- 6. a model-name typo's hint names where the name came from, in text and in JSON --------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_models_typo_hint_names_the_argument_not_a_flag_or_variable(isolated_env, as_json):
    p = run_cli("models", "qwen3-vl-plsu", *(["--json"] if as_json else []))
    assert p.returncode == 2
    said = json.loads(p.stdout)["error"]["hint"] if as_json else p.stderr
    assert "qwenvl models qwen3-vl-plus" in said
    assert "--model" not in said and "QWENVL_MODEL" not in said


@pytest.mark.parametrize("verb", ["ask", "tokens", "extract"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_typo_in_qwenvl_model_is_named_there(server, isolated_env, verb, as_json):
    if verb == "extract" and as_json:
        pytest.skip("extract has no --json")
    write_image(isolated_env / "photo.png")
    (isolated_env / "s.json").write_text(json.dumps(SCHEMA))
    args = {"ask": ["-p", "hi"], "tokens": [], "extract": ["--schema", "s.json"]}[verb]
    p = run_cli(
        verb, "photo.png", *args, "--base-url", server.url, *(["--json"] if as_json else []),
        env={**ENV, "QWENVL_MODEL": "qwen3-vl-plsu"},
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    said = json.loads(p.stdout)["error"]["hint"] if as_json else p.stderr
    assert "QWENVL_MODEL=qwen3-vl-plus" in said and "--model" not in said
    # at a base URL not DashScope's own, an unknown name is first looked up in the server's model list (a GET,
    # Client.served_name); nothing is asked of the model
    assert [(r.method, r.path) for r in server.requests if r.method != "GET"] == []


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_typo_given_with_the_flag_is_named_by_the_flag(server, isolated_env, as_json):
    write_image(isolated_env / "photo.png")
    p = run_cli(
        "ask", "photo.png", "-p", "hi", "-m", "qwen3-vl-plsu", "--base-url", server.url,
        *(["--json"] if as_json else []), env=ENV,
    )  # fmt: skip
    said = json.loads(p.stdout)["error"]["hint"] if as_json else p.stderr
    assert p.returncode == 2 and "--model qwen3-vl-plus" in said and "QWENVL_MODEL=" not in said


def test_a_typo_in_an_analyze_request_is_named_by_its_key_in_json_too(server, isolated_env):
    req = json.dumps({"prompt": "x", "model": "qwen3-vl-plsu"})
    for extra in ([], ["--print-response"]):
        p = run_cli("analyze", "--request", req, "--base-url", server.url, *extra, env=ENV)
        assert p.returncode == 2 and "model qwen3-vl-plus" in p.stderr and "--model" not in p.stderr


# --- 7. analyze takes unique prefixes of its long options, as the skill's argparse does ---------------------------

# The skill's options (analyze_image.py, /work/shared/reference/seeds/003_*: --request, --file, --json-mode, --schema,
# --output, --max-retries, --retry-backoff-s, --print-response), parsed as its argparse does (allow_abbrev)
SKILL_FLAGS = {
    "--request": "value", "--file": "value", "--output": "value", "--schema": "value", "--max-retries": "value",
    "--retry-backoff-s": "value", "--json-mode": "flag", "--print-response": "flag",
}  # fmt: skip


def skill_parser():
    import argparse

    parser = argparse.ArgumentParser(exit_on_error=False)
    for flag, kind in SKILL_FLAGS.items():
        if kind == "flag":
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag)
    return parser


def skill_resolves(prefix: str) -> str | None:
    """The option argparse takes ``prefix`` for, None when it is ambiguous (or unknown)."""
    import argparse
    import contextlib
    import io

    parser = skill_parser()
    args = [prefix] if SKILL_FLAGS.get(prefix) == "flag" else [prefix, "v"]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            ns, _ = parser.parse_known_args(args + (["v"] if len(args) == 1 else []))
    except (argparse.ArgumentError, SystemExit):
        return None
    set_ = [f for f in SKILL_FLAGS if getattr(ns, f[2:].replace("-", "_")) not in (None, False)]
    return set_[0] if len(set_) == 1 else None


def test_analyze_resolves_every_prefix_the_skill_resolves_or_says_it_is_ambiguous():
    import click

    from qwenvl.cli.analyze import analyze

    ours = sorted(o for p in analyze.params for o in getattr(p, "opts", []) if o.startswith("--"))
    checked = 0
    for flag in SKILL_FLAGS:
        for n in range(3, len(flag) + 1):
            prefix = flag[:n]
            meant = skill_resolves(prefix)
            assert meant in (flag, None)
            candidates = [o for o in ours if o.startswith(prefix)]
            ctx = click.Context(analyze)
            if prefix in ours or len(candidates) == 1:
                expanded = analyze._expanded(ctx, [prefix] + ([] if SKILL_FLAGS[flag] == "flag" else ["v"]))
                assert expanded[0] == (prefix if prefix in ours else candidates[0])
                if meant is not None:
                    assert expanded[0] == meant, prefix  # the same option as the skill
                    checked += 1
            else:  # ambiguous here too (analyze has more options than the skill): said, naming them
                with pytest.raises(click.UsageError, match="ambiguous option") as exc:
                    analyze._expanded(ctx, [prefix, "v"])
                assert all(c in exc.value.message for c in candidates)
    assert checked >= 30


def test_abbreviated_flags_work_end_to_end_like_the_skill(server, isolated_env):
    write_image(isolated_env / "photo.png")
    req = json.dumps({"prompt": "describe", "image": "photo.png"})
    p = run_cli("analyze", "--req", req, "--print", "--out", "o/r.json", "--base-url", server.url, env=ENV)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["text"] and json.loads((isolated_env / "o" / "r.json").read_text())["text"]
    p = run_cli("analyze", f"--req={req}", "--print-respons", "--base-url", server.url, env=ENV)
    assert p.returncode == 0 and json.loads(p.stdout)["text"], p.stderr
    p = run_cli("analyze", "--re", req, "--base-url", server.url, env=ENV)
    assert p.returncode == 2 and "ambiguous option: --re could match" in p.stderr and "--request" in p.stderr
    p = run_cli("analyze", "--request", "--print", "--base-url", server.url, env=ENV)  # a value is not expanded
    assert p.returncode == 2 and "not valid JSON" in p.stderr
    assert len(server.requests) == 2


def test_other_verbs_do_not_take_prefixes(isolated_env):
    write_image(isolated_env / "photo.png")
    p = run_cli("ask", "photo.png", "--prom", "hi")
    assert p.returncode == 2 and "No such option" in p.stderr


# --- 8. cost warnings say what is true: --fresh with the cache on, --retry-errors only for what may answer ---------


def test_fresh_with_the_cache_on_says_the_cache_answers_not_paid_again(server, isolated_env):
    imgs = images(isolated_env / "imgs", 5)
    args = ["batch", str(imgs), "-p", "Describe", "-o", "r.jsonl", "--base-url", server.url]
    p = run_cli(*args, env=ENV)
    assert p.returncode == 0, p.stderr
    p = run_cli(*args, "--fresh", "--yes", env=ENV)
    assert p.returncode == 0, p.stderr
    assert "paid for again" not in p.stderr
    assert "with the cache on, 5 of this run's requests are answered from it at no cost" in " ".join(p.stderr.split())
    assert summary_of(p.stderr)["cached"] == 5 and summary_of(p.stderr)["sent"] == 0
    p = run_cli(*args, "--fresh", "--yes", "--no-cache", env=ENV)
    assert p.returncode == 0 and "(they are deleted, and paid for again)" in " ".join(p.stderr.split()), p.stderr


def test_input_failures_are_not_sent_to_retry_errors(server, isolated_env):
    from qwenvl.batch import Batch, BatchItem
    from qwenvl.errors import AuthenticationError

    write_image(isolated_env / "a.png")
    (isolated_env / "fake.png").write_text("not an image")
    (isolated_env / "empty.png").write_bytes(b"")
    items = [BatchItem(id=n, request={"prompt": "x", "image": n}) for n in ("fake.png", "empty.png", "a.png")]
    server.enqueue(Reply(status=401, times=10))
    with (
        Batch(items, "o.jsonl", api_key=API_KEY, base_url=server.url, concurrency=1) as job,
        pytest.raises(AuthenticationError) as exc,
    ):
        job.run()
    hint = exc.value.raw_hint or ""
    assert "2 failed for their input" in hint and "--retry-errors sends them again" not in hint
    assert "1 sent and refused" in hint


def test_a_summary_recommends_retry_errors_only_for_service_failures(isolated_env, monkeypatch):
    from rich.console import Console

    import qwenvl.cli.batch as cli
    from qwenvl.batch.runner import Summary

    console = Console(force_terminal=True, record=True, width=300)
    monkeypatch.setattr(cli, "err_console", lambda: console)
    s = Summary(output="o.jsonl", total=3, ok=1, error=2, pending=0, this_run=3, cached=0, sent=1,
                input_tokens=0, output_tokens=0, cost=0.0, elapsed_s=1.0)  # fmt: skip
    cli._show_summary(s, {"as_json": False})
    said = console.export_text()
    assert "2 failed for their input: their error says what to fix" in said
    assert "failed for the service's reasons" not in said
    s.service_errors = 1
    cli._show_summary(s, {"as_json": False})
    said = console.export_text()
    assert "1 failed for the service's reasons: --retry-errors sends them again" in said
    assert "1 failed for their input" in said


# --- 9. shell completion: through the batch shortcut, for option values, documented --------------------------------


def complete(words: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """What bash completion offers for ``words`` (the cursor after the last word, "" when it ends with a space),
    through click's completion protocol in a process of its own, as the shell runs it."""
    import os
    import subprocess
    import sys

    parts = words.split(" ")
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "ALIBABA_CLOUD_"))}
    full.update(env or {}, COMP_WORDS=words, COMP_CWORD=str(len(parts) - 1), _QWENVL_COMPLETE="bash_complete")
    p = subprocess.run([sys.executable, "-m", "qwenvl"], capture_output=True, text=True, env=full, timeout=120)
    assert p.returncode == 0, p.stderr
    return [tuple(line.split(",", 1)) for line in p.stdout.splitlines()]  # type: ignore[misc]


def test_completion_goes_through_the_batch_shortcut_and_knows_option_values(isolated_env):
    assert ("plain", "--concurrency") in complete("qwenvl batch --con")
    assert ("plain", "--concurrency") in complete("qwenvl batch run --con")
    assert ("plain", "--concurrency") in complete("qwenvl batch photos/ --con")
    assert {v for _, v in complete("qwenvl batch --region ")} == {"cn", "intl", "us"}
    assert {v for _, v in complete("qwenvl ask --region ")} == {"cn", "intl", "us"}
    assert {v for _, v in complete("qwenvl batch status --region i")} == {"intl"}
    assert {v for _, v in complete("qwenvl config --protocol ")} == {"compat", "native", "openai"}
    assert ("plain", "qwen3-vl-plus") in complete("qwenvl ask -m qwen3-vl-pl")
    assert {"run", "status", "cancel"} <= {v for _, v in complete("qwenvl batch ")}
    assert ("file", "ph") in complete("qwenvl batch ph")  # the shell lists the files (click's "file" item)
    assert ("file", "ph") in complete("qwenvl ask ph")
    assert ("plain", "--print-response") in complete("qwenvl analyze --print")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_readme_completion_lines_give_a_script_for_each_shell(shell):
    import os
    import subprocess
    import sys

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"_QWENVL_COMPLETE={shell}_source qwenvl" in readme
    env = {**os.environ, "_QWENVL_COMPLETE": f"{shell}_source"}
    p = subprocess.run([sys.executable, "-m", "qwenvl"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and "_QWENVL_COMPLETE" in p.stdout, p.stderr
