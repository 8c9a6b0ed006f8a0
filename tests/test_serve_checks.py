"""`qwenvl serve` with a local backend: checked before it listens (exit 2 with one line), `/ready` true only when a
request could be answered, only the served names answered (404 model_not_found otherwise, the served name in the
response); no DashScope key for a server that is not DashScope's; `qwenvl config` for the local backends; local
models refuse what DashScope refuses (high-res on 28-px models, thinking on Qwen2.5-VL) and their hints name the
flag given."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

import qwenvl
from conftest import run_cli, run_cli_process, write_image
from engine_server import EngineServer
from qwenvl.errors import MissingAPIKeyError, UsageError
from qwenvl.server.app import ServeSettings, create_app
from test_serve import Served

COMPAT = "/compatible-mode/v1/chat/completions"
NATIVE = "/api/v1/services/aigc/multimodal-generation/generation"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``python -m qwenvl serve ARGS --no-auth --port P`` in its own process, until it answers /health."""
    port = _free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "QWENVL_"))} | (env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwenvl", "serve", *args, "--no-auth", "--port", str(port)],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert "Traceback" not in err, err


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Wait until the server ``proc`` started answers ``url``/health (at most ``timeout_s``); fail with its stderr
    if it exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.communicate(timeout=10)[1]
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


def wait_ready(url: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(url + "/ready", timeout=10)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 503 and r.json()["ready"] is False and r.json()["reason"]
        assert time.monotonic() < deadline, r.json()
        time.sleep(0.2)


def chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    return httpx.post(url + COMPAT, json=body, timeout=120)


def native(url: str, model: str) -> httpx.Response:
    body = {"model": model, "input": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}}
    return httpx.post(url + NATIVE, json=body, timeout=120)


# --- checked before listening ----------------------------------------------------------------------------------


def test_serve_refuses_a_transformers_model_that_cannot_load(isolated_env, tmp_path):
    pytest.importorskip("torch")  # without it, serve says that first (test_serve_without_torch_exits_2_...)
    pytest.importorskip("transformers")
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    for model, words in (
        (str(tmp_path / "nonexist"), "neither a model folder nor a Hugging Face hub id"),
        (str(not_a_model), "is not a model folder"),
    ):
        p = run_cli("serve", "--backend", "transformers", "--model", model, "--no-auth", "--port", "0")
        assert p.returncode == 2 and words in p.stderr, p.stderr
        assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr


def test_serve_without_torch_exits_2_naming_the_install(isolated_env, tmp_path):
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "torch.py").write_text('raise ModuleNotFoundError("No module named torch", name="torch")\n')
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    p = run_cli_process(
        "serve", "--backend", "transformers", "--model", str(folder), "--no-auth", "--port", "0",
        env={"PYTHONPATH": str(stub)},
    )  # fmt: skip
    assert p.returncode == 2 and "needs torch and transformers (torch is not installed)" in p.stderr, p.stderr
    assert "qwenvl[local]" in p.stderr and "Traceback" not in p.stderr


def test_serve_checks_the_engine_before_listening(isolated_env):
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as srv:
        p = run_cli("serve", "--backend", "openai", "--upstream", srv.base_url, "--model", "other", "--no-auth")
        assert p.returncode == 2 and "does not serve 'other'" in p.stderr, p.stderr
        dead = srv.base_url
    p = run_cli("serve", "--backend", "openai", "--upstream", dead, "--no-auth", "--port", "0")
    assert p.returncode == 5 and "does not answer" in p.stderr and "--model" in p.stderr, p.stderr


def test_an_engine_that_is_down_is_exit_5_and_checked_alike_by_every_verb(isolated_env, png):
    """The same fault, the same exit code (the README: an engine that is down is 5) and the same pre-flight check
    in serve and mcp (``backends.preflight``); ask finds it when it sends."""
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as srv:
        dead = srv.base_url
        p = run_cli("mcp", "--backend", "openai", "--base-url", dead, "--model", "other", input="")
        assert p.returncode == 2 and "does not serve 'other'" in p.stderr, p.stderr  # mcp checks as serve does
    runs = {
        "serve": run_cli("serve", "--backend", "openai", "--upstream", dead, "--api-key", "k", "--port", "0"),
        "mcp": run_cli("mcp", "--backend", "openai", "--base-url", dead, input=""),
        "ask": run_cli("ask", "--backend", "openai", "--base-url", dead, str(png), "hi", "--max-retries", "0"),
    }
    for verb, p in runs.items():
        assert p.returncode == 5 and "Traceback" not in p.stderr, (verb, p.stderr)
    p = run_cli("mcp", "--backend", "openai", "--base-url", dead, "--model", "m", input="")
    assert p.returncode == 0 and "does not answer yet" in p.stderr, p.stderr  # may start later: a warning, as serve


# --- /ready and the served names --------------------------------------------------------------------------------


def test_openai_backend_is_ready_only_while_the_engine_answers(isolated_env):
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as srv:
        base = srv.base_url
        client = qwenvl.AsyncClient(backend="openai", base_url=base, max_retries=0)
        with Served(create_app(client, ServeSettings(pass_model_names=False))) as s:
            assert httpx.get(s.url + "/ready").json() == {"ready": True, "model_loaded": True}
    client = qwenvl.AsyncClient(backend="openai", base_url=base, max_retries=0)
    with Served(create_app(client, ServeSettings(pass_model_names=False))) as s:
        r = httpx.get(s.url + "/ready", timeout=30)
        assert r.status_code == 503 and r.json()["ready"] is False and "does not answer" in r.json()["reason"]


def test_serve_answers_only_the_engines_name_and_warns_when_it_is_down(isolated_env):
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as srv:
        with serving("--backend", "openai", "--upstream", srv.base_url) as url:
            assert wait_ready(url)["ready"] is True
            r = chat(url, "gpt-4o")
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            assert "qwen2.5-vl-tiny" in r.json()["error"]["message"]
            r = native(url, "gpt-4o")
            assert r.status_code == 404 and r.json()["code"] == "ModelNotFound"
            assert len(srv.chats()) == 0  # nothing reached the engine
            r = chat(url, "qwen2.5-vl-tiny")
            assert r.status_code == 200 and r.json()["model"] == "qwen2.5-vl-tiny"
            names = httpx.get(url + "/v1/models").json()["data"]
            assert [m["id"] for m in names] == ["qwen2.5-vl-tiny"]
        with serving("--backend", "openai", "--upstream", srv.base_url, "--model-name", "qwen-vl-max") as url:
            assert chat(url, "qwen2.5-vl-tiny").status_code == 404
            r = chat(url, "qwen-vl-max")
            assert r.status_code == 200 and r.json()["model"] == "qwen-vl-max"
            assert srv.chats()[-1].json["model"] == "qwen2.5-vl-tiny"
        dead = srv.base_url
    port = _free_port()
    args = ["serve", "--backend", "openai", "--upstream", dead, "--model", "m", "--no-auth", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwenvl", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "QWENVL_"))},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=30)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 503 and "does not answer" in r.json()["reason"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "warning: the engine at" in err and "does not answer yet" in err and "Traceback" not in err


def _tiny(tmp_path: Path) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import build

    return build("qwen2.5-vl", tmp_path / "qwen2.5-vl-tiny")


def test_transformers_serve_is_ready_once_loaded_and_answers_its_name_only(isolated_env, tmp_path):
    tiny = _tiny(tmp_path)
    with serving("--backend", "transformers", "--model", str(tiny), "--device", "cpu") as url:
        assert wait_ready(url) == {"ready": True, "model_loaded": True}
        r = chat(url, "gpt-4o")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = chat(url, str(tiny))
        assert r.status_code == 200 and r.json()["model"] == str(tiny)
        assert r.json()["usage"]["completion_tokens"] > 0


def test_transformers_ready_stays_503_with_the_reason_when_loading_fails(isolated_env, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen2_5_vl"}')  # a Qwen-VL config, no weights
    (broken / "preprocessor_config.json").write_text("{}")
    client = qwenvl.AsyncClient(backend="transformers", model=str(broken), device="cpu")
    with Served(create_app(client, ServeSettings(model_map={"local": None}, pass_model_names=False))) as s:
        deadline = time.monotonic() + 60
        while True:
            r = httpx.get(s.url + "/ready", timeout=30)
            assert r.status_code == 503 and r.json()["ready"] is False
            if "has no weights" in r.json()["reason"]:  # the load's own check (qwenvl.backends.transformers)
                break
            assert time.monotonic() < deadline, r.json()
            time.sleep(0.2)


# --- no DashScope key for another server ----------------------------------------------------------------------


def test_a_keyless_local_server_gets_a_hint_that_any_key_will_do(isolated_env):
    """A key is asked for before anything is sent (tests and proxies stand in for DashScope on other hosts);
    for an endpoint that is not DashScope's the hint says a server that takes no key accepts any."""
    photo = write_image(isolated_env / "beach.png", size=(64, 48))
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as srv:
        client = qwenvl.AsyncClient(backend="openai", base_url=srv.base_url)
        settings = ServeSettings(model_map={"qwen3-vl-plus": None}, pass_model_names=False, fetch_urls=True)
        with Served(create_app(client, settings)) as s:
            host = s.url.removeprefix("http://")
            p = run_cli("ask", str(photo), "hello", "--base-url", s.url)
            assert p.returncode == 4 and "no DashScope API key found" in p.stderr
            assert f"hint: {host} is not a DashScope endpoint" in p.stderr and "DASHSCOPE_API_KEY=local" in p.stderr
            assert not srv.chats()  # nothing was sent
            p = run_cli("config", "--base-url", s.url)
            said = " ".join(p.stdout.split())  # the library's and the CLI's hint (config.other_endpoint_key_hint)
            assert f"{host} is not a DashScope endpoint" in said and "DASHSCOPE_API_KEY=local" in said
            for protocol in ("compat", "native"):  # what the hint says works
                p = run_cli(
                    "ask", str(photo), "hello", "--base-url", s.url, "--protocol", protocol,
                    env={"DASHSCOPE_API_KEY": "local"},
                )  # fmt: skip
                assert p.returncode == 0 and p.stdout.startswith("images=1 "), p.stderr
    p = run_cli("ask", str(photo), "hello")  # DashScope's own endpoint: the plain hint
    assert p.returncode == 4 and "no DashScope API key found" in p.stderr and "DASHSCOPE_API_KEY=local" not in p.stderr
    with pytest.raises(MissingAPIKeyError) as info:
        qwenvl.Client(base_url="https://dashscope-intl.aliyuncs.com/compatible-mode/v1").check_key()
    assert "not a DashScope endpoint" not in (info.value.hint or "")


# --- qwenvl config -------------------------------------------------------------------------------------------


def test_config_shows_the_local_backend_in_use(isolated_env, monkeypatch):
    p = run_cli("config", "--backend", "openai", "--base-url", "http://127.0.0.1:8001/v1")
    assert p.returncode == 0, p.stderr
    assert "http://127.0.0.1:8001/v1  (in use)" in p.stdout and "not found" not in p.stdout
    assert "dashscope.aliyuncs.com" not in p.stdout
    monkeypatch.setenv("QWENVL_BACKEND", "openai")
    monkeypatch.setenv("QWENVL_OPENAI_BASE_URL", "http://127.0.0.1:8002/v1")
    p = run_cli("config", "--json")
    import json

    info = json.loads(p.stdout)
    assert info["backend"] == "openai" and info["endpoint"] == "http://127.0.0.1:8002/v1"
    assert info["endpoint_source"] == "QWENVL_OPENAI_BASE_URL" and info["dashscope_api_key_needed"] is False
    p = run_cli("config", "--backend", "transformers")
    assert "none needed" in p.stdout and "give --model" in p.stdout


# --- local models refuse what DashScope refuses; hints name the flag given ---------------------------------------


def test_local_models_refuse_high_res_and_thinking_as_dashscope_does(isolated_env, tmp_path):
    tiny = _tiny(tmp_path)
    big = write_image(isolated_env / "big.png", size=(4000, 3000))
    small = write_image(isolated_env / "small.png", size=(64, 48))
    for flag, words in (
        ("--high-res", "does not support high-resolution images (--high-res"),
        ("--thinking", "does not support thinking"),
    ):
        local = run_cli("ask", str(small), "hi", "--backend", "transformers", "-m", str(tiny), flag)
        assert local.returncode == 2 and words in local.stderr, local.stderr
    p = run_cli("ask", str(big), "hi", "--backend", "transformers", "-m", str(tiny), "--no-resize")
    assert p.returncode == 3 and "hint: Leave out --no-resize" in p.stderr, p.stderr
    assert "--no---" not in p.stderr and "--high-res" not in p.stderr
    with (
        qwenvl.Client(backend="transformers", model=str(tiny), device="cpu") as client,
        pytest.raises(UsageError, match="thinking"),
    ):
        client.ask("hi", enable_thinking=True)


def test_hints_keep_flags_whole():
    from qwenvl.cli.common import fit_hint
    from qwenvl.cli.main import cli

    ask = cli.commands["ask"]
    assert fit_hint("Drop --no-resize / --high-res.", ask) == "Drop --no-resize / --high-res."
    assert fit_hint("Use --no-resize / prepare=False.", ask) == "Use --no-resize."


def test_an_empty_model_name_is_refused(isolated_env):
    """``--model-name ""`` was accepted (then no client name could ever match it)."""
    p = run_cli("serve", "--model-name", " ", "--port", "0", "--no-auth", env={"DASHSCOPE_API_KEY": "sk-x"})
    assert p.returncode == 2 and "--model-name is empty" in p.stderr, p.stderr
