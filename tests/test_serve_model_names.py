"""The model names `qwenvl serve` and `qwenvl mcp` are given, and those a client sends, follow the one rule every verb
follows (``plan.check_model_name``): a misspelling of a listed name is refused with did you mean ...? (unless
``QWENVL_UNLISTED_MODELS`` names it), a name of no Qwen-VL family is refused, and another name the table does not
know is passed on to the cloud. At start-up (exit 2, before listening), not at the first request; and on the wire
(the openai SDK against the gateway) in the API's words. ``serve`` takes ``-m`` as every verb does, and an unknown
short option is answered with the verb's long option of its letter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import run_cli
from dashscope_server import DashScopeServer
from test_serve import SERVE_KEY, gateway
from test_serve_words import CLI_WORDS

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("flag", ["--model", "-m"])
def test_serve_refuses_a_misspelt_model_at_start(isolated_env, env, flag):
    p = run_cli("serve", "--api-key", "k", "--port", "0", flag, "qwen3-vl-plsu", env=env, timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "did you mean qwen3-vl-plus?" in p.stderr and "qwenvl serve (" not in p.stderr, p.stderr


def test_serve_refuses_a_name_of_no_family_at_start(isolated_env, env):
    p = run_cli("serve", "--api-key", "k", "--port", "0", "--model", "nonsense", env=env, timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "nonsense is not a model qwenvl knows" in p.stderr and "qwenvl serve (" not in p.stderr, p.stderr


@pytest.mark.parametrize("where", ["flag", "variable"])
def test_mcp_refuses_a_misspelt_model_at_start(isolated_env, env, where):
    args = ["--model", "qwen3-vl-plsu"] if where == "flag" else []
    extra = {"QWENVL_MODEL": "qwen3-vl-plsu"} if where == "variable" else {}
    p = run_cli("mcp", *args, env={**env, **extra}, input="", timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "did you mean qwen3-vl-plus?" in p.stderr, p.stderr


def test_unknown_short_option_gets_the_long_one_of_its_letter(isolated_env):
    p = run_cli("ground", "-o", "x.png", "a.png", "red")
    assert p.returncode == 2
    assert "Did you mean --out?" in p.stderr, p.stderr


@pytest.fixture
def oai(server: DashScopeServer) -> Iterator[object]:
    openai = pytest.importorskip("openai")
    with gateway(server) as s:
        yield openai.OpenAI(base_url=s.url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0)


def _sent(server: DashScopeServer, name: str) -> bool:
    return any(r.json and r.json.get("model") == name for r in server.requests)


def test_gateway_refuses_a_misspelling_in_the_apis_words(oai, server):
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="qwen3-vl-plsu", messages=MESSAGES)  # type: ignore[attr-defined]
    assert info.value.status_code == 400 and info.value.body["code"] == "invalid_parameter_error"
    assert "did you mean qwen3-vl-plus?" in info.value.body["message"]
    assert not CLI_WORDS.search(info.value.body["message"]), info.value.body
    assert not _sent(server, "qwen3-vl-plsu")


def test_gateway_refuses_a_name_of_no_family(oai, server):
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="nonsense-model", messages=MESSAGES)  # type: ignore[attr-defined]
    assert info.value.body["code"] == "invalid_parameter_error"
    assert not _sent(server, "nonsense-model")


def test_gateway_passes_a_name_the_table_does_not_know_to_the_cloud(oai, server):
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.APIStatusError) as info:  # the cloud (the double) does not know it either
        oai.chat.completions.create(model="qwen3.5-vl-plus", messages=MESSAGES)  # type: ignore[attr-defined]
    assert info.value.body["code"] == "model_not_found", info.value.body
    assert _sent(server, "qwen3.5-vl-plus")


def test_gateway_passes_a_misspelling_named_unlisted(server, monkeypatch):
    openai = pytest.importorskip("openai")
    monkeypatch.setenv("QWENVL_UNLISTED_MODELS", "qwen3-vl-plsu")
    with gateway(server) as s:
        oai = openai.OpenAI(base_url=s.url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            oai.chat.completions.create(model="qwen3-vl-plsu", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found", info.value.body
    assert _sent(server, "qwen3-vl-plsu")
