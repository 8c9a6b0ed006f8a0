"""A damaged model file (a cut-off ``model.safetensors``, a tokenizer or processor JSON that is not JSON) is the
user's input fault, told in one line naming the file (exit 3), never an internal error; ``qwenvl serve`` tells its
callers without the server's paths, with the codes of the protocol they asked in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError as exc:
    pytest.skip(f"{exc.name} is not installed (pip install 'qwenvl[local]')", allow_module_level=True)

import httpx

import qwenvl
from conftest import run_cli
from qwenvl.server.app import ServeSettings, create_app
from test_serve import SERVE_KEY, Served
from tiny_models import build


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("qwen2.5-vl", tmp_path_factory.mktemp("models") / "qwen2.5-vl-tiny")


def damaged(tiny: Path, where: Path, name: str) -> Path:
    folder = where / "broken"
    shutil.copytree(tiny, folder)
    path = folder / name
    if name.endswith(".safetensors"):
        with path.open("r+b") as f:
            f.truncate(1000)
    else:
        path.write_text(path.read_text()[:50])
    return folder


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "preprocessor_config.json"])
def test_a_damaged_model_file_is_an_input_error_naming_it(tiny, tmp_path, name):
    folder = damaged(tiny, tmp_path, name)
    p = run_cli("ask", "--backend", "transformers", "--model", str(folder), "hi")
    assert p.returncode == 3, p.stderr
    assert f"{folder / name} is damaged" in p.stderr
    assert "internal error" not in p.stderr and "report" not in p.stderr
    with pytest.raises(qwenvl.MediaError, match="is damaged"):
        qwenvl.Client(backend="transformers", model=str(folder)).complete(prompt="hi", max_tokens=2)


def test_serve_tells_a_damaged_model_without_paths(tiny, tmp_path):
    folder = damaged(tiny, tmp_path, "model.safetensors")
    client = qwenvl.AsyncClient(backend="transformers", model=str(folder), device="cpu")
    app = create_app(client, ServeSettings(api_key=SERVE_KEY, model_map={"broken": str(folder)}))
    with Served(app) as s:
        seen: list[dict] = []
        with pytest.raises(AssertionError):  # never ready: the reason says why
            _ready_within(s.url, seen)
        reason = seen[-1]["reason"]
        assert "model.safetensors is damaged" in reason and str(tmp_path) not in reason, reason
        auth = {"Authorization": f"Bearer {SERVE_KEY}"}
        r = httpx.post(
            s.url + "/compatible-mode/v1/chat/completions",
            json={"model": "broken", "messages": [{"role": "user", "content": "hi"}]},
            headers=auth,
            timeout=60,
        )
        assert r.status_code == 503 and str(tmp_path) not in r.text, r.text
        assert r.json()["error"]["code"] == "model_not_loaded"
        r = httpx.post(
            s.url + "/api/v1/services/aigc/multimodal-generation/generation",
            json={"model": "broken", "input": {"messages": [{"role": "user", "content": "hi"}]}},
            headers=auth,
            timeout=60,
        )
        assert r.status_code == 503 and str(tmp_path) not in r.text, r.text
        assert r.json()["code"] == "ModelNotLoaded"


def _ready_within(url: str, seen: list[dict]) -> None:
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = httpx.get(url + "/ready", timeout=30)
        seen.append(r.json())
        assert r.status_code != 200
        if "loading" not in str(r.json().get("reason")):
            raise AssertionError(r.json())
        time.sleep(0.1)
