"""`qwenvl serve` in front of a model in this process: the official SDKs against a tiny random Qwen2.5-VL,
built by the test and loaded through the real `from_pretrained` path (no download). Skipped, with the reason,
without torch and transformers (`pip install "qwenvl[local]"`)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError as exc:
    pytest.skip(f"{exc.name} is not installed (pip install 'qwenvl[local]')", allow_module_level=True)

import qwenvl
from conftest import write_image
from qwenvl.server.app import ServeSettings, create_app
from test_serve import SERVE_KEY, Served
from tiny_models import build


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("qwen2.5-vl", tmp_path_factory.mktemp("models") / "qwen2.5-vl-tiny")


def test_official_sdks_on_a_model_in_process(tiny, isolated_env):
    openai = pytest.importorskip("openai")
    dashscope = pytest.importorskip("dashscope")
    photo = write_image(isolated_env / "photo.png", size=(224, 224))
    url = "data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode()
    client = qwenvl.AsyncClient(backend="transformers", model=str(tiny), device="cpu")
    with Served(create_app(client, ServeSettings(api_key=SERVE_KEY, pass_model_names=False, fetch_urls=True))) as s:
        sdk = openai.OpenAI(base_url=s.url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0, timeout=120)
        r = sdk.chat.completions.create(
            model="qwen-vl-max",
            max_tokens=6,
            temperature=0,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "What is this?"},
                    ],
                }
            ],
        )
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0
        assert r.usage.prompt_tokens_details.image_tokens == 64 + 2  # 224x224 on Qwen2.5-VL: [1,16,16], 2 markers
        direct = qwenvl.Client(backend="transformers", model=str(tiny), device="cpu")
        same = direct.complete(prompt="What is this?", images=[str(photo)], max_tokens=6, temperature=0)
        assert r.choices[0].message.content == same.text  # the server adds nothing to the model's answer
        chunks = sdk.chat.completions.create(
            model="qwen-vl-max",
            max_tokens=6,
            temperature=0,
            stream=True,
            messages=[{"role": "user", "content": "hello"}],
        )
        assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(dashscope, "base_http_api_url", s.url + "/api/v1")
            r = dashscope.MultiModalConversation.call(
                api_key=SERVE_KEY,
                model="qwen-vl-max",
                max_tokens=6,
                messages=[{"role": "user", "content": [{"image": f"file://{photo}"}, {"text": "And this?"}]}],
            )
        assert r.status_code == 200, (r.code, r.message)
        assert r.usage["image_tokens"] == 64 + 2
