"""What a request's parameters become on a local backend, and what a local answer is said to be: the transformers
backend's one table of parameters (``PARAMS``: honoured, harmless, or refused before generating, in the caller's
terms: library, CLI, `qwenvl serve` in both protocols), an engine's own refusal passed on as its 400, the usage
log marking every local answer local, image tokens counted as the estimate counts them, model loading without
progress bars, ``--served-model-name``, and the server's log of an internal error. Tiny random models built here
(no download); skipped, with the reason, without torch and transformers."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

try:
    import torch
    import transformers  # noqa: F401
except ImportError as exc:
    pytest.skip(f"{exc.name} is not installed (pip install 'qwenvl[local]')", allow_module_level=True)

import qwenvl
from conftest import run_cli, run_cli_process, write_image
from engine_server import EngineServer
from qwenvl.backends.transformers import PARAMS, _penalty_processor
from qwenvl.errors import StructuredOutputError, UnsupportedParameterError
from qwenvl.server.app import ServeSettings, create_app
from qwenvl.store.usage import UsageLog
from test_serve import Served
from test_serve_checks import serving
from tiny_models import build

COMPAT = "/compatible-mode/v1/chat/completions"
NATIVE = "/api/v1/services/aigc/multimodal-generation/generation"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"qwen3-vl": build("qwen3-vl", root / "tiny3"), "qwen2.5-vl": build("qwen2.5-vl", root / "tiny25")}


# --- 1. request parameters: one table ------------------------------------------------------------------------


def test_the_library_honours_or_refuses_each_parameter_before_generating(tiny, isolated_env):
    """``extra={"presence_penalty": 0.5}`` raised transformers' raw ValueError ("model_kwargs are not used") from
    ``generate()``; now it is honoured, and what cannot be is an UnsupportedParameterError at planning time."""
    with qwenvl.Client(backend="transformers", model=str(tiny["qwen3-vl"]), usage_log=False) as client:
        for extra in (
            {"presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1},
            {"logprobs": False, "parallel_tool_calls": True, "n": 1, "user": "u1", "min_p": 0.1},
            {"response_format": {"type": "text"}},
        ):
            r = client.complete(prompt="hi", extra=extra, max_tokens=3, temperature=0)
            assert r.usage.output_tokens == 3, extra
        refused = {
            "enable_search": True,
            "logprobs": True,
            "top_logprobs": 2,
            "presence_penalty": 2.5,
            "repetition_penalty": 0,
            "num_beams": 2,  # transformers' own generate() argument: not passed through unchecked
            "response_format": {"type": "xml"},
        }
        for key, value in refused.items():
            with pytest.raises(UnsupportedParameterError) as info:
                client.plan(prompt="hi", extra={key: value})  # planning: nothing loaded, nothing generated
            assert info.value.param == key and key in info.value.message and "transformers backend" in str(info.value)
            assert f"--param {key}" in (info.value.raw_hint or "")  # the CLI's words
            assert f'extra={{"{key}": ...}}' in (info.value.hint or "")  # the library's: valid Python for the call
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        with pytest.raises(UnsupportedParameterError, match="parallel_tool_calls"):
            client.plan(prompt="hi", tools=[tool], extra={"parallel_tool_calls": False})
        client.plan(prompt="hi", extra={"parallel_tool_calls": False})  # without tools: nothing to limit


def test_penalties_are_vllms(tiny):
    """presence/frequency penalties lower a generated token's logit by presence once and frequency per time it was
    generated; prompt tokens do not count (vLLM's ``apply_penalties``)."""
    processors = _penalty_processor(presence_penalty=1.0, frequency_penalty=0.5)
    prompt = torch.tensor([[3, 3, 4]])
    scores = torch.zeros(1, 8)
    assert torch.equal(processors(prompt, scores.clone()), scores)  # the first call sees the prompt alone
    out = processors(torch.tensor([[3, 3, 4, 5, 5, 7]]), scores.clone())
    assert out[0].tolist() == [0, 0, 0, 0, 0, -2.0, 0, -1.5]
    assert set(PARAMS) >= {"presence_penalty", "frequency_penalty", "repetition_penalty", "response_format"}


def test_response_format_is_structured_output_never_silently_ignored(tiny, isolated_env):
    """response_format json_object / json_schema is the library's structured output here (instruction, check, one
    repair): a random model's answer is not JSON, so the caller gets StructuredOutputError, not text claimed JSON."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    with qwenvl.Client(backend="transformers", model=str(tiny["qwen3-vl"]), usage_log=False) as client:
        call = client.plan(prompt="hi", extra={"response_format": {"type": "json_object"}})
        assert call.request.json_mode and "response_format" not in call.request.extra
        fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
        call = client.plan(prompt="hi", extra={"response_format": fmt})
        assert call.schema == schema
        with pytest.raises(StructuredOutputError) as info:
            client.complete(prompt="hi", extra={"response_format": fmt}, max_tokens=4, temperature=0)
        assert info.value.requests == 2 or "cut off" in info.value.message
        with pytest.raises(UnsupportedParameterError, match="json_schema"):
            client.plan(prompt="hi", extra={"response_format": {"type": "json_schema"}})


def test_the_cli_names_the_param_and_exits_2(tiny, isolated_env):
    """``--param presence_penalty=0.5`` exited 2 with a misleading memory hint; now it is honoured, and a parameter
    the backend cannot honour exits 2 naming ``--param NAME`` before the model loads."""
    model = str(tiny["qwen3-vl"])
    ok = run_cli("ask", "hi", "--backend", "transformers", "--model", model, "--max-tokens", "2", "--param",
                 "presence_penalty=0.5", "--temperature", "0")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    for param in ("enable_search=true", "logprobs=true", "frequency_penalty=7"):
        p = run_cli("ask", "hi", "--backend", "transformers", "--model", model, "--param", param)
        name = param.split("=")[0]
        assert p.returncode == 2 and f"--param {name}" in p.stderr and "memory" not in p.stderr, p.stderr
        assert "not supported by the local transformers backend" in p.stderr and "Traceback" not in p.stderr
    (isolated_env / "photos").mkdir()
    write_image(isolated_env / "photos" / "a.png", (64, 64))
    p = run_cli("batch", "photos", "-p", "Describe", "-o", "out.jsonl", "--backend", "transformers", "--model", model,
                "--param", "logprobs=true")  # fmt: skip
    assert p.returncode == 2 and "--param logprobs" in p.stderr, p.stderr  # refused at once, not on every item
    assert not list(isolated_env.glob("out.jsonl*"))


def _post(url: str, protocol: str, params: dict[str, Any], model: str, stream: bool = False) -> httpx.Response:
    if protocol == "compat":
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **params}
        return httpx.post(url + COMPAT, json=body, timeout=120)
    body = {
        "model": model,
        "input": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
        "parameters": params,
    }
    headers = {"X-DashScope-SSE": "enable"} if stream else {}
    return httpx.post(url + NATIVE, json=body, headers=headers, timeout=120)


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_serve_answers_400_naming_the_parameter(tiny, isolated_env, protocol):
    """A compat request with presence_penalty was 500 internal_error (streamed: 400 with transformers' own text);
    now honoured parameters answer 200 and the others 400 in the caller's protocol, naming the parameter."""
    client = qwenvl.AsyncClient(backend="transformers", model=str(tiny["qwen3-vl"]), device="cpu")
    with Served(create_app(client, ServeSettings(pass_model_names=False))) as s:
        for params in ({"presence_penalty": 0.5}, {"frequency_penalty": 0.2, "parallel_tool_calls": True}):
            for stream in (False, True):
                r = _post(s.url, protocol, {**params, "max_tokens": 2}, "any", stream)
                assert r.status_code == 200 and "error" not in r.text.lower(), r.text
        for params in ({"logprobs": True}, {"enable_search": True}, {"presence_penalty": 9}):
            for stream in (False, True):
                r = _post(s.url, protocol, {**params, "max_tokens": 2}, "any", stream)
                assert r.status_code == 400, r.text
                err = r.json()["error"] if protocol == "compat" else r.json()
                name = next(iter(params))
                assert name in err["message"] and "not supported by the local transformers backend" in err["message"]
                assert "--param" not in err["message"]  # the server's caller has no CLI
        r = _post(s.url, protocol, {"response_format": {"type": "json_object"}, "max_tokens": 4}, "any")
        assert r.status_code == 422, r.text  # not JSON, even after the repair: said, not passed off as JSON


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_an_engine_refusing_a_parameter_is_its_400_not_a_500(isolated_env, protocol):
    """The openai backend passes parameters on (each engine has its own): one the engine refuses comes back as the
    engine's 400, from the library (BadRequestError) and through `qwenvl serve`."""
    with EngineServer(engine="generic") as srv:
        with (
            qwenvl.Client(backend="openai", base_url=srv.base_url, usage_log=False) as sync,
            pytest.raises(qwenvl.BadRequestError, match="repetition_penalty"),
        ):
            sync.complete(prompt="hi", extra={"repetition_penalty": 1.1})
        client = qwenvl.AsyncClient(backend="openai", base_url=srv.base_url, max_retries=0)
        with Served(create_app(client, ServeSettings(pass_model_names=False))) as s:
            for stream in (False, True):
                r = _post(s.url, protocol, {"repetition_penalty": 1.1}, "any", stream)
                assert r.status_code == 400 and "repetition_penalty" in r.text, r.text


# --- 3. the usage log: every local answer is local ---------------------------------------------------------------


def test_every_transformers_answer_is_logged_local(tiny, isolated_env):
    """Rows were stored with protocol 'compat' (a cost of ¥0.0000, local false); library, CLI and serve now log the
    plain openai protocol with no price, and the totals count them as local requests."""
    model = str(tiny["qwen3-vl"])
    with qwenvl.Client(backend="transformers", model=model) as client:
        client.complete(prompt="hi", max_tokens=2)
    assert run_cli("ask", "hi", "--backend", "transformers", "--model", model, "--max-tokens", "2").returncode == 0
    client = qwenvl.AsyncClient(backend="transformers", model=model, device="cpu")
    with Served(create_app(client, ServeSettings(pass_model_names=False))) as s:
        assert _post(s.url, "compat", {"max_tokens": 2}, "any").status_code == 200
    log = UsageLog()
    with sqlite3.connect(log.path) as conn:
        rows = conn.execute("SELECT protocol, cost, currency FROM requests").fetchall()
    log.close()
    assert rows == [("openai", None, None)] * 3
    report = json.loads(run_cli("usage", "--json").stdout)
    assert [(r["local"], r["cost"], r["currency"]) for r in report["rows"]] == [(True, None, None)]
    assert report["total"]["local_requests"] == 3 and report["total"]["cost"] == {}
    assert "¥" not in run_cli("usage").stdout


# --- 4. image tokens: the estimate's count ------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen3-vl", "qwen2.5-vl"])
def test_image_tokens_are_the_estimates(tiny, isolated_env, family):
    """The estimate said 302 where the usage said 300 (tiny3; tiny25 393 vs 391): the usage counted the
    placeholders alone, the service (and the estimate) the two vision markers too. Now both say the same."""
    img = write_image(isolated_env / "a.png", (640, 480))
    with qwenvl.Client(backend="transformers", model=str(tiny[family]), usage_log=False) as client:
        estimate = client.plan(prompt="x", image=str(img), estimate_only=True).media[0].tokens
        r = client.ask("What is it?", str(img), max_tokens=2)
        loaded = client.backend.loaded(str(tiny[family]))
    from PIL import Image

    grid = loaded.image_processor(images=[Image.open(img).convert("RGB")])["image_grid_thw"]
    pads = int(grid[0].prod()) // loaded.image_processor.merge_size**2
    assert r.usage.image_tokens == estimate == pads + 2
    p = run_cli("tokens", str(img), "--backend", "transformers", "--model", str(tiny[family]), "--json")
    assert json.loads(p.stdout)["total"]["tokens"] == r.usage.image_tokens


# --- 5, 6: loading without progress bars; the served model's name -------------------------------------------------


def test_no_progress_bars_unless_debug(tiny, isolated_env):
    model = str(tiny["qwen2.5-vl"])
    quiet = run_cli_process("ask", "hi", "--backend", "transformers", "--model", model, "--max-tokens", "1",
                            timeout=300)  # fmt: skip
    assert quiet.returncode == 0 and "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr, quiet.stderr
    loud = run_cli_process("ask", "hi", "--backend", "transformers", "--model", model, "--max-tokens", "1",
                           env={"QWENVL_DEBUG": "1"}, timeout=300)  # fmt: skip
    assert loud.returncode == 0 and "Loading weights" in loud.stderr


def test_served_model_name(tiny, isolated_env, monkeypatch):
    """`serve --model ./tiny3` served the literal path: now the folder's name (listed by /v1/models), the path
    still accepted; ``--served-model-name`` (vLLM's option) replaces both."""
    folder = tiny["qwen3-vl"]
    monkeypatch.chdir(folder.parent)
    with serving("--backend", "transformers", "--model", f"./{folder.name}") as url:
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == [folder.name]
        for name in (folder.name, f"./{folder.name}"):
            r = _post(url, "compat", {"max_tokens": 1}, name)
            assert r.status_code == 200 and r.json()["model"] == name, r.text
        assert _post(url, "compat", {"max_tokens": 1}, "other").status_code == 404
    with serving("--backend", "transformers", "--model", str(folder), "--served-model-name", "qwen3-vl-local") as url:
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["qwen3-vl-local"]
        assert _post(url, "native", {"max_tokens": 1}, "qwen3-vl-local").status_code == 200
        assert _post(url, "native", {"max_tokens": 1}, str(folder)).status_code == 404


# --- 2. the server's log of an internal error -------------------------------------------------------------------


class _Broken:
    """A backend with a bug: every answer raises RuntimeError."""

    name = "broken"
    protocol = "openai"

    async def complete(self, call: Any) -> Any:
        raise RuntimeError("boom in the backend")

    async def stream(self, call: Any) -> Any:
        raise RuntimeError("boom in the backend")
        yield

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("debug", [False, True])
def test_an_internal_error_is_logged_with_its_type_and_message(isolated_env, caplog, capsys, monkeypatch, debug):
    """The log said only ``internal error while answering <id>``, even with QWENVL_DEBUG=1: now the exception's
    type and message always, its traceback with QWENVL_DEBUG=1 (the CLI's log line prints it)."""
    if debug:
        monkeypatch.setenv("QWENVL_DEBUG", "1")
    client = qwenvl.AsyncClient(backend=_Broken(), model="qwen3-vl-plus", usage_log=False)
    with Served(create_app(client, ServeSettings())) as s, caplog.at_level("ERROR", logger="qwenvl.serve"):
        r = _post(s.url, "compat", {}, "qwen3-vl-plus")
        assert r.status_code == 500 and "boom" not in r.text  # the caller sees no internals
    (record,) = [rec for rec in caplog.records if "internal error" in rec.getMessage()]
    assert "RuntimeError: boom in the backend" in record.getMessage()
    assert (record.exc_info is not None) is debug
    from qwenvl.cli.main import _WarningLine

    _WarningLine().emit(record)
    err = capsys.readouterr().err
    assert "RuntimeError: boom in the backend" in err and ("Traceback" in err) is debug
