"""`qwenvl serve`'s Batch API in front of a model in this process (a tiny random Qwen2.5-VL built by the test,
loaded through the real `from_pretrained` path): each line is answered as the chat route answers its body.
Skipped, with the reason, without torch and transformers (`pip install "qwenvl[local]"`)."""

from __future__ import annotations

import base64
import json
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
from qwenvl.server.batches import BatchStore
from test_serve import SERVE_KEY, Served
from test_serve_batch import finished, jsonl, records
from tiny_models import build


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("qwen2.5-vl", tmp_path_factory.mktemp("models") / "qwen2.5-vl-tiny")


def test_openai_sdk_batch_on_a_model_in_process(tiny, isolated_env, tmp_path):
    openai = pytest.importorskip("openai")
    from qwenvl.backends.transformers import served_name

    photo = write_image(isolated_env / "photo.png", size=(224, 224))
    url = "data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode()
    name = served_name(str(tiny))
    client = qwenvl.AsyncClient(backend="transformers", model=str(tiny), device="cpu")
    settings = ServeSettings(api_key=SERVE_KEY, model_map={name: str(tiny)}, pass_model_names=False)
    image = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this?"}]
    bodies = {
        "text": {"model": name, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]},
        "image": {"model": name, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": image}]},
        "too-long": {"model": name, "max_tokens": 100_000_000, "messages": [{"role": "user", "content": "Hi"}]},
    }
    lines = [{"custom_id": k, "method": "POST", "url": "/v1/chat/completions", "body": b} for k, b in bodies.items()]
    with Served(create_app(client, settings, batches=BatchStore(tmp_path / "state"))) as s:
        sdk = openai.OpenAI(base_url=s.url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0, timeout=300)
        f = sdk.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        b = sdk.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        b = finished(sdk, b.id, deadline_s=600)  # loading the model and answering on a busy CPU
        assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (2, 1), b
        ok, bad = records(sdk, b.output_file_id), records(sdk, b.error_file_id)
        for cid in ("text", "image"):
            body = ok[cid]["response"]["body"]
            direct = sdk.chat.completions.create(**bodies[cid])
            assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
            assert body["usage"] == direct.usage.model_dump(exclude_none=True) and body["model"] == name
        assert ok["image"]["response"]["body"]["usage"]["prompt_tokens_details"]["image_tokens"] == 64 + 2
        said = bad["too-long"]
        assert said["response"]["status_code"] == 400 and f"{name}'s context" in said["error"]["message"]
        assert str(tiny) not in json.dumps(said)  # the model by its served name, never the server's folder
