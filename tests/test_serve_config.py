"""How `qwenvl serve`, `qwenvl mcp` and the local backends are configured and started: an upstream that is the
server itself is refused, the settings come from the same flags and variables as for every verb, options that
contradict each other or do not apply to the backend are refused (exit 2), a key the openai backend's server wants
is an AuthenticationError (exit 4) naming the one variable that backend reads, what a transformers model needs is
checked before listening, a hub that cannot be reached fails fast and quietly, and an MCP caller cannot make the
server load another model."""

from __future__ import annotations

import asyncio
import socket
import time
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

import qwenvl
from conftest import run_cli, run_cli_process, write_image
from engine_server import EngineServer
from qwenvl._constants import SERVE_PORT
from qwenvl.config import DEFAULT_OPENAI_BASE_URL, DTYPES
from qwenvl.errors import AuthenticationError, UsageError
from qwenvl.server.app import ServeSettings, create_app
from qwenvl.server.security import is_own_address
from test_serve import Served

try:  # at collection, as test_mcp's own tests do: the SDK's stdio client binds its errlog (stderr) when imported
    import test_mcp
except pytest.skip.Exception:  # no mcp extra: the MCP tests below skip
    test_mcp = None  # type: ignore[assignment]
from test_serve_checks import chat, serving, wait_ready

KEY_VAR = "QWENVL_OPENAI_API_KEY"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _closed_port() -> int:
    return _free_port()  # nothing listens there once the probe socket is closed


# --- 1. an upstream that is the server's own address --------------------------------------------------------------


def test_the_default_port_and_the_default_upstream_differ():
    assert urlsplit(DEFAULT_OPENAI_BASE_URL).port != SERVE_PORT


@pytest.mark.parametrize(
    ("url", "host", "port", "own"),
    [
        ("http://127.0.0.1:8000/v1", "127.0.0.1", 8000, True),
        ("http://localhost:8000/v1", "127.0.0.1", 8000, True),
        ("http://[::1]:8000/v1", "127.0.0.1", 8000, True),
        ("http://0.0.0.0:8000/v1", "127.0.0.1", 8000, True),
        ("http://127.0.0.1:8000/v1", "0.0.0.0", 8000, True),
        ("http://127.0.0.1:8000/v1", "::", 8000, True),
        ("http://127.0.0.1:8001/v1", "127.0.0.1", 8000, False),
        ("http://127.0.0.1/v1", "127.0.0.1", 80, True),
        ("https://127.0.0.1/v1", "127.0.0.1", 80, False),
        ("http://127.0.0.1:8000/v1", "127.0.0.1", 0, False),
        ("http://192.0.2.7:8000/v1", "127.0.0.1", 8000, False),
        ("http://no-such-host.invalid:8000/v1", "127.0.0.1", 8000, False),
    ],
)
def test_own_address(url, host, port, own):
    assert is_own_address(url, host, port) is own


def test_serve_refuses_its_own_address_as_upstream_before_listening():
    # the defaults of before: listen on 8000 and call http://127.0.0.1:8000/v1, a request to itself
    p = run_cli_process("serve", "--backend", "openai", "--model", "foo", "--no-auth", "--port", "8000", timeout=60)
    assert p.returncode == 2 and "own address" in p.stderr and "qwenvl serve (openai) on" not in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    port = _free_port()
    for upstream in (f"http://127.0.0.1:{port}/v1", f"http://localhost:{port}/v1", f"http://[::1]:{port}/v1"):
        r = run_cli("serve", "--backend", "openai", "--upstream", upstream, "--port", str(port), "--no-auth")
        assert r.returncode == 2 and "own address" in r.stderr, r.stderr
    # the gateway too: a DashScope endpoint that is this server
    r = run_cli(
        "serve",
        "--upstream",
        f"http://127.0.0.1:{port}",
        "--port",
        str(port),
        "--no-auth",
        env={"DASHSCOPE_API_KEY": "sk-test"},
    )
    assert r.returncode == 2 and "own address" in r.stderr, r.stderr


# --- 5. serve reads the settings every verb reads -----------------------------------------------------------------


def test_serve_reads_qwenvl_backend_and_model():
    # transformers from $QWENVL_BACKEND (not a gateway wanting a DashScope key), the model from $QWENVL_MODEL
    p = run_cli_process(
        "serve", "--no-auth", "--port", "0", env={"QWENVL_BACKEND": "transformers", "QWENVL_MODEL": "./not-here"}
    )
    # either way the transformers backend was chosen: its model checked, or (no torch here) its packages
    import importlib.util

    local = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
    said = "'./not-here' is neither a model folder" if local else "--backend transformers needs torch and transformers"
    assert p.returncode == 2 and said in p.stderr, p.stderr
    with (
        EngineServer(engine="vllm", served="qwen2.5-vl-test") as srv,
        serving(env={"QWENVL_BACKEND": "openai", "QWENVL_OPENAI_BASE_URL": srv.base_url}) as url,
    ):
        assert [m["id"] for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]] == ["qwen2.5-vl-test"]
        assert chat(url, "qwen2.5-vl-test").status_code == 200


# --- 6. contradictions and options of another backend --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--api-key", "k", "--no-auth"], "contradict"),
        (["--backend", "transformers", "--model", "m/x", "--upstream", "http://x/v1"], "--upstream does not apply"),
        (["--backend", "transformers", "--model", "m/x", "--region", "intl"], "--region does not apply"),
        (["--backend", "transformers", "--model", "m/x", "--protocol", "native"], "--protocol does not apply"),
        (["--backend", "openai", "--model", "m", "--device", "cpu"], "--device does not apply"),
        (["--backend", "openai", "--model", "m", "--region", "intl"], "--region does not apply"),
        (["--engine", "vllm"], "--engine does not apply"),
        (["--dtype", "float32"], "--dtype does not apply"),
        (["--family", "qwen3-vl"], "--family does not apply"),
    ],
)
def test_serve_refuses_contradictions_and_options_of_another_backend(args, words):
    auth = [] if "--no-auth" in args else ["--no-auth"]
    r = run_cli("serve", *args, *auth, "--port", "0", env={"DASHSCOPE_API_KEY": "sk-test"})
    assert r.returncode == 2 and words in r.stderr, r.stderr


def test_serve_refuses_them_in_its_own_process():
    p = run_cli_process("serve", "--backend", "transformers", "--model", "m/x", "--region", "xx", "--no-auth")
    assert p.returncode == 2 and "--region does not apply to --backend transformers" in p.stderr, p.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--backend", "transformers", "-m", "m/x", "--region", "intl"], "--region does not apply"),
        (["--backend", "transformers", "-m", "m/x", "--base-url", "http://x/v1"], "--base-url does not apply"),
        (["--backend", "openai", "-m", "m", "--dtype", "float32"], "--dtype does not apply"),
        (["--backend", "dashscope", "--engine", "vllm"], "--engine does not apply"),
        (["--backend", "dashscope", "--device", "cpu"], "--device does not apply"),
    ],
)
def test_ask_and_chat_refuse_options_of_another_backend(args, words):
    for verb in (["ask", "hi"], ["chat"]):
        r = run_cli(*verb[:1], *args, *verb[1:], env={"DASHSCOPE_API_KEY": "sk-test"}, input="")
        assert r.returncode == 2 and words in r.stderr, (verb, r.stderr)


def test_the_library_refuses_them_too():
    # in the library's words (its keywords), not the CLI's flags
    with pytest.raises(UsageError, match=r"^region does not apply to backend='transformers'"):
        qwenvl.Client(backend="transformers", model="m/x", region="intl")
    with pytest.raises(UsageError, match=r"^device does not apply"):
        qwenvl.AsyncClient(backend="openai", device="cpu")
    with pytest.raises(UsageError, match=r"^base_url does not apply"):
        qwenvl.Client(backend="transformers", model="m/x", base_url="http://x/v1")
    qwenvl.Client(backend="openai", engine="auto", protocol="openai").close()  # their own values pass


def test_mcp_refuses_them():
    pytest.importorskip("mcp")
    p = run_cli_process("mcp", "--backend", "transformers", "--model", "m/x", "--region", "intl")
    assert p.returncode == 2 and "--region does not apply" in p.stderr, p.stderr


# --- 2. a key the openai backend's server wants ----------------------------------------------------------------------


def test_a_key_the_engine_wants_is_exit_4_naming_the_variable_the_backend_reads(isolated_env):
    img = write_image(isolated_env / "photo.png", (32, 32))
    with EngineServer(engine="vllm", api_key="engine-key") as srv:
        base = ["ask", "--backend", "openai", "--base-url", srv.base_url, str(img), "hi"]
        for extra, env in (
            (["-m", srv.served], {}),  # the chat itself
            ([], {}),  # the model listing
            ([], {KEY_VAR: "wrong"}),
            (["-m", srv.served], {"DASHSCOPE_API_KEY": "engine-key"}),  # a variable this backend does not read
            (["-m", srv.served, "--no-stream"], {}),
        ):
            r = run_cli(*base, *extra, env=env)
            assert r.returncode == 4, (extra, env, r.stderr)
            hint = r.stderr.split("hint:", 1)[1]
            assert KEY_VAR in hint and "DASHSCOPE_API_KEY" not in hint, r.stderr
            assert "give --model" not in r.stderr
        assert run_cli(*base, env={KEY_VAR: "engine-key"}).returncode == 0


def test_a_key_refused_in_the_library_sync_async_and_stream():
    with EngineServer(engine="vllm", api_key="engine-key") as srv:
        with qwenvl.Client(backend="openai", base_url=srv.base_url) as client:
            for call in (lambda: client.ask("hi"), lambda: list(client.stream(prompt="hi"))):
                with pytest.raises(AuthenticationError) as info:
                    call()
                assert KEY_VAR in (info.value.hint or "") and info.value.exit_code == 4

        async def run() -> None:
            async with qwenvl.AsyncClient(backend="openai", base_url=srv.base_url, model=srv.served) as client:
                with pytest.raises(AuthenticationError, match="401") as info:
                    await client.ask("hi")
                assert KEY_VAR in (info.value.hint or "")

        asyncio.run(run())


def test_serve_with_an_engine_that_wants_a_key():
    with EngineServer(engine="vllm", api_key="engine-key") as srv:
        # before listening: exit 4, the variable named
        p = run_cli_process("serve", "--backend", "openai", "--upstream", srv.base_url, "--no-auth", "--port", "0")
        assert p.returncode == 4 and KEY_VAR in p.stderr and "on http://" not in p.stderr, p.stderr
        # an engine that starts wanting a key later: /ready says why, in the operator's words
        client = qwenvl.AsyncClient(backend="openai", base_url=srv.base_url, model=srv.served)
        with Served(create_app(client, ServeSettings(model_map={"m": None}, pass_model_names=False))) as s:
            r = httpx.get(s.url + "/ready", timeout=30)
            assert r.status_code == 503 and KEY_VAR in r.json()["reason"], r.json()
        with serving("--backend", "openai", "--upstream", srv.base_url, env={KEY_VAR: "engine-key"}) as url:
            assert wait_ready(url)["ready"] is True


# --- 3, 4. what a transformers model needs, checked before listening ---------------------------------------------


def test_dtype_and_device_have_one_table():
    from qwenvl.backends.transformers import TransformersBackend

    for bad in ("float64", "bogus", "int8"):
        with pytest.raises(UsageError, match=", ".join(DTYPES)):
            TransformersBackend(model="m/x", dtype=bad)
        r = run_cli("ask", "--backend", "transformers", "-m", "m/x", "--dtype", bad, "hi")
        assert r.returncode == 2 and "float32" in r.stderr, r.stderr
    with pytest.raises(UsageError, match="unknown device"):
        TransformersBackend(model="m/x", device="tpu")


def _tiny(tmp_path: Path) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import build

    return build("qwen2.5-vl", tmp_path / "qwen2.5-vl-tiny")


def test_attn_implementation_is_checked_with_its_valid_values(tmp_path):
    tiny = _tiny(tmp_path)
    import transformers

    from qwenvl.backends.transformers import attn_implementations, check_attn_implementation

    assert {"eager", "sdpa"} <= set(attn_implementations(transformers))
    assert check_attn_implementation("sdpa", transformers) == "sdpa"
    r = run_cli("ask", "--backend", "transformers", "-m", str(tiny), "--attn-implementation", "bogus", "hi")
    assert r.returncode == 2 and "sdpa" in r.stderr and "eager" in r.stderr, r.stderr
    assert "needs config.json" not in r.stderr


def test_serve_and_mcp_check_the_model_before_listening(tmp_path):
    tiny = _tiny(tmp_path)  # skipped without torch and transformers
    import torch

    cases: list[tuple[list[str], str]] = [
        (["--dtype", "bogus"], "bogus"),
        (["--attn-implementation", "bogus"], "sdpa"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA device"))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for f in tiny.iterdir():
        if not f.name.endswith(".safetensors"):
            (no_weights / f.name).write_bytes(f.read_bytes())
    for extra, words in cases:
        p = run_cli_process("serve", "--backend", "transformers", "--model", str(tiny), *extra, "--no-auth")
        assert p.returncode == 2 and words in p.stderr and "on http://" not in p.stderr, (extra, p.stderr)
    p = run_cli_process("serve", "--backend", "transformers", "--model", str(no_weights), "--no-auth", "--port", "0")
    assert p.returncode == 2 and "has no weights" in p.stderr and "on http://" not in p.stderr, p.stderr
    if find_spec("mcp") is not None:
        for args, words in ([["--model", str(no_weights)], "has no weights"], [[], "needs --model"]):
            p = run_cli_process("mcp", "--backend", "transformers", *args, input="")
            assert p.returncode == 2 and words in p.stderr, p.stderr
        if not torch.cuda.is_available():
            p = run_cli_process("mcp", "--backend", "transformers", "--model", str(tiny), "--device", "cuda", input="")
            assert p.returncode == 2 and "no CUDA device" in p.stderr, p.stderr


def test_a_model_that_fails_to_load_after_listening_is_503_never_400(tmp_path):
    tiny = _tiny(tmp_path)  # skips without torch and transformers (which bring numpy and safetensors)
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    for f in tiny.glob("*.safetensors"):  # sound files (the checks before listening pass), weights of wrong shapes
        with safe_open(str(f), framework="numpy") as weights:
            names = list(weights.keys())
        save_file({name: np.zeros((1,), dtype=np.float32) for name in names}, str(f))
    with serving("--backend", "transformers", "--model", str(tiny), "--device", "cpu") as url:
        deadline = time.monotonic() + 120
        while "cannot load" not in (reason := httpx.get(url + "/ready", timeout=30).json().get("reason", "")):
            assert time.monotonic() < deadline, reason
            time.sleep(0.3)
        r = chat(url, tiny.name)
        assert r.status_code == 503, r.text
        assert "not loaded" in r.json()["error"]["message"], r.text


# --- 7. a hub id that cannot be had ----------------------------------------------------------------------------------


def test_an_unreachable_hub_fails_fast_and_quietly(tmp_path):
    pytest.importorskip("transformers")
    from qwenvl.backends.transformers import download_command

    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    for args in (["ask", "--backend", "transformers", "--model", "Qwen/Qwen2.5-VL-3B-Instruct", "hi"],):
        p = run_cli_process(*args, env=env, timeout=120)
        assert p.returncode == 5, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 2 and "Retrying" not in p.stderr, p.stderr
        assert f"`{download_command()} Qwen/Qwen2.5-VL-3B-Instruct`" in lines[1], p.stderr
    p = run_cli_process(
        "serve", "--backend", "transformers", "--model", "Qwen/Qwen2.5-VL-3B-Instruct", "--no-auth", env=env
    )
    assert p.returncode == 5 and "Retrying" not in p.stderr and len(p.stderr.strip().splitlines()) == 2, p.stderr


def test_the_download_command_follows_the_installed_huggingface_hub(monkeypatch):
    import importlib.metadata

    from qwenvl.backends.transformers import download_command

    for installed, command in (
        ("0.36.0", "huggingface-cli download"),
        ("1.0.0", "hf download"),
        ("2.4.1", "hf download"),
    ):
        monkeypatch.setattr(importlib.metadata, "version", lambda name, v=installed: v)
        assert download_command() == command


# --- 8. MCP: one local model, no other loaded on a caller's word ----------------------------------------------------


def test_mcp_tools_use_the_configured_local_model_only(tmp_path):
    if test_mcp is None:
        pytest.skip("the mcp extra is not installed")
    import anyio

    stdio_session, text_of = test_mcp.stdio_session, test_mcp.text_of
    tiny = _tiny(tmp_path)
    other = tmp_path / "other-model"
    other.mkdir()
    for f in tiny.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    allowed = tmp_path / "files"
    allowed.mkdir()

    async def main() -> None:
        args = ["--backend", "transformers", "--model", str(tiny), "--device", "cpu", "--allow-dir", str(allowed)]
        async with stdio_session({}, *args) as c:
            for model in (str(other), "Qwen/Qwen2.5-VL-3B-Instruct", "../" + tiny.name + "-x"):
                r = await c.call_tool("ask", {"prompt": "hi", "model": model, "options": {"max_tokens": 2}})
                assert r.is_error and "runs one model" in text_of(r), (model, text_of(r))
                r = await c.call_tool("estimate", {"files": [str(allowed)], "model": model})
                assert r.is_error, text_of(r)
            for model in (str(tiny), tiny.name, None):
                call = {"prompt": "hi", "options": {"max_tokens": 2}} | ({"model": model} if model else {})
                r = await c.call_tool("ask", call)
                assert not r.is_error, (model, text_of(r))
                assert isinstance(r.structured_content, dict) and r.structured_content["model"] == tiny.name

    anyio.run(main)


def test_serve_answers_no_other_model_a_request_names(tmp_path):
    """A request's model never makes the server load another folder or fetch a hub id: 404 model_not_found."""
    tiny = _tiny(tmp_path)
    other = tmp_path / "other-model"
    other.mkdir()
    for f in tiny.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    with serving("--backend", "transformers", "--model", str(tiny), "--device", "cpu") as url:
        wait_ready(url)
        for model in (str(other), "Qwen/Qwen2.5-VL-3B-Instruct"):
            r = chat(url, model)
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
        assert [m["id"] for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]] == [tiny.name]


def test_mcp_names_the_openai_backends_key_before_serving():
    """mcp checks the engine before serving as serve does (``backends.preflight``): a key it refuses is exit 4 at
    once, the hint naming the variable the backend reads (no tool call needed to find out)."""
    if test_mcp is None:
        pytest.skip("the mcp extra is not installed")
    with EngineServer(engine="vllm", api_key="engine-key") as srv:
        r = run_cli("mcp", "--backend", "openai", "--base-url", srv.base_url, input="")
        assert r.returncode == 4, r.stderr
        hint = r.stderr.split("hint:", 1)[1]
        assert KEY_VAR in hint and "DASHSCOPE_API_KEY" not in hint, r.stderr
        assert (
            run_cli(
                "mcp", "--backend", "openai", "--base-url", srv.base_url, input="", env={KEY_VAR: "engine-key"}
            ).returncode
            == 0
        )
