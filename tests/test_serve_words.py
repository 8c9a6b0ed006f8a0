"""`qwenvl serve` answers an HTTP client in the words of its API, never the CLI's: a library error's message and
hint name the request field in the caller's protocol (``top_k`` in an OpenAI-compatible body,
``parameters.top_k`` in a native one), and leave out what only the server's operator can change (its flags such
as ``--engine``, a ``qwenvl`` command, an environment variable). One home for each message
(``qwenvl.wording``): the CLI still shows the same error with its flags. Both protocols, streamed or not, the
DashScope gateway and the openai backend in front of engines, against loopback doubles."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import qwenvl
from conftest import run_cli, write_image
from dashscope_server import DashScopeServer
from engine_server import EngineServer
from qwenvl.server.app import ServeSettings, create_app
from qwenvl.wording import api_surface, fit_hint
from test_serve import SERVE_KEY, Served

COMPAT = "/compatible-mode/v1/chat/completions"
NATIVE = "/api/v1/services/aigc/multimodal-generation/generation"
CLI_WORDS = re.compile(r"(?<![\w-])--[a-z]|`qwenvl|QWENVL_|DASHSCOPE_")


def body(protocol: str, model: str, content: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """A request in ``protocol``'s own shape: ``params`` at the top (compat) or in ``parameters`` (native)."""
    if protocol == "compat":
        parts = [
            {"type": "image_url", "image_url": {"url": c["image"]}} if "image" in c else {"type": "text", **c}
            for c in content
        ]
        return {"model": model, "messages": [{"role": "user", "content": parts}], **params}
    return {"model": model, "input": {"messages": [{"role": "user", "content": content}]}, "parameters": params}


def ask(url: str, protocol: str, model: str, content: list[dict[str, Any]], params: dict[str, Any]) -> tuple[int, str]:
    """(status, message) of the server's error answer."""
    headers = {"Authorization": f"Bearer {SERVE_KEY}"}
    path = COMPAT if protocol == "compat" else NATIVE
    r = httpx.post(url + path, json=body(protocol, model, content, params), headers=headers, timeout=60)
    data = r.json()
    return r.status_code, (data.get("error") or data)["message"]


@contextmanager
def serving(backend: str) -> Iterator[tuple[str, str]]:
    """(server URL, model to ask) for ``backend``: the gateway to the DashScope double, or the openai backend in
    front of an engine double (``openai-generic``: no top_k; ``openai-vllm``)."""
    if backend == "gateway":
        with DashScopeServer() as upstream:
            client = qwenvl.AsyncClient(base_url=upstream.url, api_key="sk-test", max_retries=0)
            with Served(create_app(client, ServeSettings(api_key=SERVE_KEY))) as s:
                yield s.url, "qvq-max"
        return
    with EngineServer(engine=backend.removeprefix("openai-")) as engine:
        client = qwenvl.AsyncClient(backend="openai", base_url=engine.base_url, max_retries=0)
        settings = ServeSettings(api_key=SERVE_KEY, pass_model_names=False, fetch_urls=True)
        with Served(create_app(client, settings)) as s:
            yield s.url, "any"


@pytest.fixture
def image(isolated_env: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(write_image(isolated_env / "a.png").read_bytes()).decode()


def field(protocol: str, name: str) -> str:
    return name if protocol == "compat" else f"parameters.{name}"


@pytest.mark.parametrize("protocol", ["compat", "native"])
@pytest.mark.parametrize("stream", [False, True])
def test_top_k_on_an_engine_without_it_names_the_request_field(protocol, stream, image):
    """The user's report: ``--backend openai`` answered a native request with top_k "Drop --top-k, or name the
    engine with --engine": CLI flags, and an engine the client cannot choose."""
    params: dict[str, Any] = {"top_k": 5, "stream": stream} if protocol == "compat" else {"top_k": 5}
    with serving("openai-generic") as (url, model):
        status, message = ask(url, protocol, model, [{"image": image}, {"text": "hi"}], params)
    assert status == 400
    assert message.endswith(f"(Drop {field(protocol, 'top_k')}.)"), message
    assert not CLI_WORDS.search(message) and "engine with" not in message, message


# backend, request parameters, the API's words the answer must hold ({f} a parameter: top_k / parameters.top_k)
CASES: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "thinking on a model without it": ("openai-vllm", {"enable_thinking": True}, ["leave out {enable_thinking}"]),
    "a budget with thinking off": (
        "gateway",
        {"enable_thinking": False, "thinking_budget": 100},
        ["turn thinking on ({enable_thinking}=true)"],
    ),
    "a budget without thinking": ("openai-vllm", {"thinking_budget": 100}, ["Add {enable_thinking}=true"]),
    "max_tokens over the model's limit": ("gateway", {"max_tokens": 10**6}, ["Give {max_tokens} of at most 8,192."]),
    "a misspelt parameter": ("gateway", {"temprature": 1}, ["Did you mean 'temperature'? Use {temperature}."]),
    "a parameter that is not a number": (
        "openai-vllm",
        {"repetition_penalty": "x"},
        ["is not a number: the service", "e.g. {repetition_penalty}=1.1"],
    ),
    "high resolution on a 28-px model": (
        "gateway",
        {"vl_high_resolution_images": True},
        ["does not support high-resolution images ({vl_high_resolution_images}):"],
    ),
}


@pytest.mark.parametrize("protocol", ["compat", "native"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_library_error_is_said_in_the_api_s_words(case, protocol, image):
    backend, params, words = CASES[case]
    with serving(backend) as (url, model):
        status, message = ask(url, protocol, model, [{"image": image}, {"text": "hi"}], params)
    assert status == 400, message
    names = {
        k: field(protocol, k) for k in ("enable_thinking", "max_tokens", "temperature", "vl_high_resolution_images")
    }
    names["repetition_penalty"] = field(protocol, "repetition_penalty")
    for said in words:
        assert said.format(**names) in message, (said, message)
    assert not CLI_WORDS.search(message), message


def test_the_cli_keeps_its_flags_for_the_same_error(isolated_env):
    """One home: the CLI shows the error the server worded for its client in its own words."""
    png = write_image(isolated_env / "a.png")
    with EngineServer(engine="generic") as engine:
        p = run_cli("ask", str(png), "hi", "--top-k", "5", "--backend", "openai", "--base-url", engine.base_url)
    assert p.returncode == 2, p.stderr
    assert "hint: Drop --top-k, or name the engine with --engine if it does take it." in p.stderr, p.stderr


@pytest.mark.parametrize(
    ("hint", "compat", "native"),
    [
        ("Drop --top-k, or name the engine with --engine if it does take it.", "Drop top_k.", "Drop parameters.top_k."),
        (
            "Give --max-tokens / max_tokens of at most 8,192 (see `qwenvl models`).",
            "Give max_tokens of at most 8,192.",
            "Give parameters.max_tokens of at most 8,192.",
        ),
        (
            "Run again with QWENVL_DEBUG=1 for the details; if memory ran out, lower --max-pixels.",
            "If memory ran out, lower max_pixels.",
            "If memory ran out, lower max_pixels.",
        ),
        ("Use tool_choice 'auto' or 'none'; vLLM (--backend openai) honours it.", None, None),
        ("Send the file as a data: URL, or start the server with --allow-private-urls.", None, None),
        ("Raise --timeout, or let the service fetch it (without --fetch-urls).", "", ""),
    ],
)
def test_hints_in_each_protocol_s_words(hint, compat, native):
    for protocol, want in (("compat", compat), ("native", native)):
        fitted = fit_hint(hint, api_surface(protocol))
        assert not CLI_WORDS.search(fitted), fitted
        if want is not None:
            assert fitted == want, (protocol, fitted)


@pytest.mark.parametrize(
    ("protocol", "named"),
    [
        ("compat", ["top_k should be ", "temperature should be ", "detail is not a parameter of this API"]),
        (
            "native",
            [
                "parameters.top_k should be ",
                "parameters.temperature should be ",
                "parameters.detail is not a parameter of this API",
            ],
        ),
    ],
)
def test_a_bad_parameter_is_named_as_the_wire_names_it(protocol, named):
    """A value the request model refuses is named where it sits in the caller's body (``parameters.top_k`` in a
    native one), and a key of qwenvl's own Request (``detail``) is not a parameter of the API: no internal
    ``extra`` or library words."""
    from qwenvl.errors import UsageError
    from qwenvl.protocols.inbound import parse_compat_body, parse_native_body

    def body(params):
        messages = [{"role": "user", "content": "hi"}]
        if protocol == "compat":
            return parse_compat_body({"model": "m", "messages": messages, **params})
        return parse_native_body({"model": "m", "input": {"messages": messages}, "parameters": params})

    for params, words in (({"top_k": -5}, named[0]), ({"temperature": 5}, named[1]), ({"detail": "x"}, named[2])):
        with pytest.raises(UsageError) as info:
            body(params)
        message = str(info.value)
        assert words in message and "extra" not in message and "--param" not in message, message
    with pytest.raises(UsageError, match=r"messages\[0\]"):
        if protocol == "compat":
            parse_compat_body({"model": "m", "messages": [{"role": "robot", "content": "hi"}]})
        else:
            parse_native_body({"model": "m", "input": {"messages": [{"role": "robot", "content": "hi"}]}})
