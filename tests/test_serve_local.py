"""`qwenvl serve` in front of a model in this process: the official SDKs against a tiny random Qwen2.5-VL,
built by the test and loaded through the real `from_pretrained` path (no download). Skipped, with the reason,
without torch and transformers (`pip install "qwenvl[local]"`)."""

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


# --- what a client of a model in process reads: its served name, the model's own context, tokens as they come ---


def _served_like_the_cli(tiny: Path, **settings: object) -> Served:
    """A serve of ``tiny`` set up as ``qwenvl serve --backend transformers --model <folder>`` does: served under
    the folder's name, the path as given accepted too (unlisted)."""
    from qwenvl.backends.transformers import served_name

    client = qwenvl.AsyncClient(backend="transformers", model=str(tiny), device="cpu")
    name = served_name(str(tiny))
    model_map: dict[str, str | None] = {name: str(tiny), str(tiny): str(tiny)}
    app = create_app(
        client,
        ServeSettings(
            api_key=SERVE_KEY,
            model_map=model_map,
            unlisted_models=[str(tiny)],
            pass_model_names=False,
            **settings,  # type: ignore[arg-type]
        ),
    )
    return Served(app)


def _ready(url: str, seen: list[dict]) -> None:
    import time

    import httpx

    deadline = time.monotonic() + 300
    while True:
        r = httpx.get(url + "/ready", timeout=30)
        seen.append(r.json())
        if r.status_code == 200:
            return
        assert time.monotonic() < deadline, r.json()
        time.sleep(0.05)


def test_every_reply_names_the_served_model_and_no_server_path(tiny, isolated_env):
    """/ready, the playground's estimate and ground, and errors (the context check, high resolution, video without
    torchvision) name the model as /v1/models does, never the folder it was loaded from; hints carry no shell
    command, install advice or a model this server does not serve. The context is the checkpoint's own
    (max_position_embeddings 4096 in text_config), not the family's table entry (131,072)."""
    import httpx

    photo = write_image(isolated_env / "photo.png", size=(64, 64))
    url = "data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode()
    folder, name = str(tiny), tiny.name
    headers = {"Authorization": f"Bearer {SERVE_KEY}"}
    with _served_like_the_cli(tiny) as s, httpx.Client(base_url=s.url, headers=headers, timeout=120) as h:
        seen: list[dict] = []
        _ready(s.url, seen)
        replies = [json.dumps(r) for r in seen]
        listed = h.get("/v1/models")
        assert [m["id"] for m in listed.json()["data"]] == [name]
        (entry,) = listed.json()["data"]  # vLLM's fields, the family, local: the checkpoint's own context
        assert (entry["max_model_len"], entry["family"], entry["local"], entry["root"]) == (
            4096,
            "qwen2.5-vl",
            True,
            name,
        )
        replies.append(listed.text)

        def chat(**params: object) -> httpx.Response:
            content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]
            body = {"model": name, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **params}
            return h.post("/compatible-mode/v1/chat/completions", json=body)

        r = chat(max_tokens=100_000_000)
        assert r.status_code == 400 and f"too long for {name}'s context of 4,096 tokens" in r.text, r.text
        replies.append(r.text)
        r = chat(vl_high_resolution_images=True)
        assert r.status_code == 400 and f"{name} does not support high-resolution images" in r.text, r.text
        assert "qwen3-vl-plus" not in r.text and "qwen-vl-max" not in r.text  # models this server does not serve
        replies.append(r.text)
        frames = {"role": "user", "content": [{"type": "video", "video": [url] * 4}, {"type": "text", "text": "x"}]}
        r = chat(messages=[frames])
        replies.append(r.text)
        if r.status_code == 400:  # without torchvision: said without install advice
            assert "pip" not in r.text and "`" not in r.text, r.text
        r = h.post("/qwenvl/v1/estimate", json={"model": name, "images": [url]})
        assert r.status_code == 200 and r.json()["model"] == name, r.text
        replies.append(r.text)
        r = h.post("/qwenvl/v1/ground", json={"model": name, "image": url, "query": "a dot"})
        assert r.status_code == 200 and r.json()["model"] == name, r.text
        replies.append(r.text)
        native = {"model": name, "input": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}}
        r = h.post(
            "/api/v1/services/aigc/multimodal-generation/generation",
            json={**native, "parameters": {"max_tokens": 100_000_000}},
        )
        assert r.status_code == 400 and r.json()["code"] == "InvalidParameter", r.text
        assert "parameters.max_tokens" in r.text
        replies.append(r.text)
    for reply in replies:
        assert folder not in reply and str(tiny.parent) not in reply, reply


def test_native_stream_events_from_a_model_in_process_carry_real_counts(tiny):
    import httpx

    with _served_like_the_cli(tiny) as s:
        _ready(s.url, [])
        body = {
            "model": tiny.name,
            "input": {"messages": [{"role": "user", "content": [{"text": "count to ten"}]}]},
            "parameters": {"incremental_output": True, "max_tokens": 12, "temperature": 0},
        }
        headers = {"Authorization": f"Bearer {SERVE_KEY}", "X-DashScope-SSE": "enable"}
        r = httpx.post(s.url + "/api/v1/services/aigc/multimodal-generation/generation", json=body, headers=headers)
        assert r.status_code == 200, r.text
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    final = events[-1]["usage"]
    assert final["input_tokens"] > 0 and final["output_tokens"] == 12
    counts = [e["usage"]["output_tokens"] for e in events[:-1]]
    assert all(e["usage"]["input_tokens"] == final["input_tokens"] for e in events[:-1]), events
    assert counts == sorted(counts) and all(0 < c <= 12 for c in counts), counts


def test_tokens_stream_as_they_are_generated_not_at_word_ends(tiny):
    """transformers' TextIteratorStreamer held text back until a space; ours hands out each token's text at once
    and holds back only a character still incomplete (a two-byte "é" is two tokens of this byte-level vocabulary)."""
    import queue

    import torch
    from transformers import AutoTokenizer

    from qwenvl.backends.transformers import _token_streamer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    streamer = _token_streamer(tokenizer, timeout=5)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt: skipped

    def after(text: str) -> list[str]:
        got = []
        for token in tokenizer.encode(text, add_special_tokens=False):
            streamer.put(torch.tensor([token]))
            try:
                got.append(streamer.text_queue.get_nowait())
            except queue.Empty:
                got.append("")
        return got

    assert after("nospaces") == list("nospaces")  # a character per token, none held back
    assert after("é") == ["", "é"]  # the first byte alone is no character yet
    assert streamer.generated == len("nospaces") + 2
    streamer.end()
    assert streamer.text_queue.get_nowait() == "" and streamer.text_queue.get_nowait() is streamer.stop_signal


def test_json_object_through_serve_is_a_whole_json_object_or_an_error(tiny, isolated_env):
    """A random model's garbage (with a ``[]`` in it, cut off at max_tokens) is never a 200 to json_object: the
    answer must be one JSON object, whole, and not cut off."""
    import httpx

    with _served_like_the_cli(tiny) as s:
        _ready(s.url, [])
        for seed in (1, 2, 3):
            r = httpx.post(
                s.url + "/compatible-mode/v1/chat/completions",
                headers={"Authorization": f"Bearer {SERVE_KEY}"},
                json={
                    "model": tiny.name,
                    "messages": [{"role": "user", "content": "Return JSON with key a"}],
                    "response_format": {"type": "json_object"},
                    "max_tokens": 30,
                    "seed": seed,
                },
                timeout=300,
            )
            if r.status_code == 200:
                choice = r.json()["choices"][0]
                assert choice["finish_reason"] == "stop"
                assert isinstance(json.loads(choice["message"]["content"]), dict)
            else:
                assert "JSON" in r.json()["error"]["message"]


def test_an_unsupported_parameter_is_named_as_each_protocol_sends_it(tiny, isolated_env):
    """native: ``parameters.enable_search`` (as ``parameters.top_k`` is); compat: ``enable_search``, in ``param``."""
    import httpx

    with _served_like_the_cli(tiny) as s:
        _ready(s.url, [])
        auth = {"Authorization": f"Bearer {SERVE_KEY}"}
        messages = [{"role": "user", "content": "hi"}]
        r = httpx.post(
            s.url + "/api/v1/services/aigc/multimodal-generation/generation",
            json={"model": tiny.name, "input": {"messages": messages}, "parameters": {"enable_search": True}},
            headers=auth,
            timeout=120,
        )
        assert r.status_code == 400 and "'parameters.enable_search'" in r.json()["message"], r.text
        r = httpx.post(
            s.url + "/compatible-mode/v1/chat/completions",
            json={"model": tiny.name, "messages": messages, "enable_search": True},
            headers=auth,
            timeout=120,
        )
        error = r.json()["error"]
        assert r.status_code == 400 and "'enable_search'" in error["message"] and error["param"] == "enable_search"
