"""The transformers backend on tiny random models of each family, built here (no download)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

import qwenvl
from conftest import run_cli_process as run_cli  # a model per process; PYTHONPATH blocks torch below
from conftest import write_image
from qwenvl.errors import APIConnectionError, MediaError, UsageError

try:
    import torch
    import transformers
except ImportError as exc:  # the CI installs them (see .ci/run); elsewhere say why these tests do not run
    print(f"test_backend_transformers: skipped, {exc.name} is not installed (pip install 'qwenvl[local]')")
    pytest.skip(f"{exc.name} is not installed (pip install 'qwenvl[local]')", allow_module_level=True)

from tiny_models import FAMILIES, build

MAX_NEW = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build(family, root / family, initializer_range=0.3) for family in FAMILIES}


def direct_generate(folder: Path, image_path: Path | None, prompt: str) -> tuple[str, int, int]:
    """What the cookbooks do, without torchvision: chat template, image processor, each <|image_pad|> expanded
    to grid.prod() // merge**2 copies, mm_token_type_ids, greedy generate. (text, prompt tokens, new tokens)."""
    from PIL import Image

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    proc = transformers.AutoImageProcessor.from_pretrained(folder)
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    content = ([{"type": "image"}] if image_path else []) + [{"type": "text", "text": prompt}]
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    extra = {}
    if image_path:
        out = proc(images=[Image.open(image_path).convert("RGB")], return_tensors="pt")
        n = int(out["image_grid_thw"][0].prod()) // proc.merge_size**2
        text = text.replace("<|image_pad|>", "<|image_pad|>" * n)
        extra = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    types = (enc["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).long()
    with torch.inference_mode():
        ids = model.generate(**enc, **extra, mm_token_type_ids=types, do_sample=False, max_new_tokens=MAX_NEW)
    new = ids[0, enc["input_ids"].shape[1] :]
    return tok.decode(new, skip_special_tokens=True), int(enc["input_ids"].shape[1]), int(new.shape[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_answer_and_prompt_tokens_equal_a_direct_generate(models, family, isolated_env):
    img = write_image(isolated_env / "a.png", (224, 224))
    expected_text, prompt_tokens, new_tokens = direct_generate(models[family], img, "What is in the picture?")
    with qwenvl.Client(backend="transformers", model=str(models[family])) as client:
        r = client.ask("What is in the picture?", str(img), temperature=0, max_tokens=MAX_NEW)
        assert (r.text, r.usage.input_tokens, r.usage.output_tokens) == (expected_text, prompt_tokens, new_tokens)
        # 224x224: a 16x16 grid (28 px), or 14x14 raised to the 64-token floor; + 2 vision markers (the service counts)
        assert r.usage.image_tokens == 64 + 2
        assert client.plan(prompt="x", image=str(img)).media[0].pixels is not None  # in memory, not base64
        events = list(
            client.stream(prompt="What is in the picture?", image=str(img), temperature=0, max_tokens=MAX_NEW)
        )
        assert "".join(e.text for e in events if e.type == "text") == expected_text
        assert events[-1].response.usage.input_tokens == prompt_tokens
    text_only = direct_generate(models[family], None, "Hello there")
    with qwenvl.Client(backend="transformers", model=str(models[family])) as client:
        r = client.ask("Hello there", temperature=0, max_tokens=MAX_NEW)
        assert (r.text, r.usage.input_tokens, r.usage.output_tokens) == text_only and r.usage.image_tokens is None


def test_sampling_seed_stop_and_async(models, isolated_env):
    import asyncio

    folder = str(models["qwen2.5-vl"])
    with qwenvl.Client(backend="transformers", model=folder) as client:
        a = client.ask("Tell me", temperature=1.0, top_p=0.95, top_k=50, seed=7, max_tokens=16)
        b = client.ask("Tell me", temperature=1.0, top_p=0.95, top_k=50, seed=7, max_tokens=16)
        c = client.ask("Tell me", temperature=1.0, top_p=0.95, top_k=50, seed=8, max_tokens=16)
        assert a.text == b.text and a.text != c.text
        full = client.ask("Tell me", temperature=0, max_tokens=16).text
        stop = full[3:5]
        cut = client.ask("Tell me", temperature=0, max_tokens=16, stop=[stop])
        assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
        streamed = list(client.stream(prompt="Tell me", temperature=0, max_tokens=16, stop=[stop]))
        assert "".join(e.text for e in streamed if e.type == "text") == cut.text
        assert client.ask("Tell me", temperature=0, max_tokens=3).finish_reason == "length"

    async def run() -> str:
        async with qwenvl.AsyncClient(backend="transformers", model=folder) as client:
            r = await client.ask("Tell me", temperature=0, max_tokens=16)
            deltas = [
                e.text async for e in client.stream(prompt="Tell me", temperature=0, max_tokens=16) if e.type == "text"
            ]
            assert "".join(deltas) == r.text
            return r.text

    assert asyncio.run(run()) == full


def test_cache_key_and_bad_input(models, isolated_env, monkeypatch):
    folder = models["qwen3-vl"]
    img = write_image(isolated_env / "a.png", (64, 64))
    with qwenvl.Client(backend="transformers", model=str(folder), cache=True) as client:
        first = client.ask("Same?", str(img), temperature=0, max_tokens=4)
        assert client.ask("Same?", str(img), temperature=0, max_tokens=4).cached
        write_image(isolated_env / "a.png", (64, 64), (0, 255, 0))  # same name, other pixels
        assert not client.ask("Same?", str(img), temperature=0, max_tokens=4).cached
        assert first.text is not None
    other = isolated_env / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UsageError, match="not a Qwen-VL model"):
        qwenvl.Client(backend="transformers", model=str(other)).ask("hi")
    with pytest.raises(UsageError, match="needs model: "):
        qwenvl.Client(backend="transformers").ask("hi")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(isolated_env / "hf"))
    with pytest.raises(APIConnectionError, match="HF_HUB_OFFLINE"):
        qwenvl.Client(backend="transformers", model="Qwen/Qwen2.5-VL-3B-Instruct").ask("hi")
    small = isolated_env / "small"
    shutil.copytree(folder, small)
    cfg = json.loads((small / "preprocessor_config.json").read_text())
    cfg["size"]["longest_edge"] = 128 * 128
    (small / "preprocessor_config.json").write_text(json.dumps(cfg))
    big = write_image(isolated_env / "big.png", (640, 640))
    with pytest.raises(MediaError, match="over the local model's budget"):
        qwenvl.Client(backend="transformers", model=str(small)).ask("hi", str(big), prepare=False)


def test_video_without_torchvision_names_the_install(models, isolated_env):
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision is installed here")
    except ImportError:
        pass
    frames = [str(write_image(isolated_env / f"f{i}.png", (64, 64), (i * 50, 0, 0))) for i in range(4)]
    with pytest.raises(UsageError, match="torchvision") as info:
        qwenvl.Client(backend="transformers", model=str(models["qwen2.5-vl"])).complete(prompt="x", video=frames)
    # the one pairing that works beside a CPU torch (local-models.md), the same in the hint and the README
    pin = "pip install torch==2.14.1 torchvision==0.29.1"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert pin in (info.value.hint or "") and pin in readme


def test_cli_verbs_and_errors(models, isolated_env):
    write_image(isolated_env / "a.png", (112, 84))
    base = ["--backend", "transformers", "--model", str(models["qwen2.5-vl"]), "-t", "0", "--max-tokens", "8"]
    (isolated_env / "s.json").write_text(json.dumps({"type": "object", "properties": {"name": {"type": "string"}}}))
    analyze = [
        "analyze",
        "--request",
        '{"prompt": "Describe", "image": "a.png", "temperature": 0, "max_tokens": 8}',
        *base[:4],
    ]
    for args in (
        ["ask", "a.png", "What is it?", *base],
        ["ground", "a.png", "the cat", "--json", *base],
        ["ocr", "a.png", *base],
        analyze,
        ["extract", "a.png", "--schema", "s.json", *base],
    ):
        p = run_cli(*args, timeout=300)
        assert p.returncode in (0, 5), (args, p.stderr)  # a random model's answer may not parse (exit 5)
        assert "Traceback" not in p.stderr
    frames = [str(write_image(isolated_env / f"f{i}.png", (64, 64), (i * 50, 0, 0))) for i in range(4)]
    p = run_cli("events", *frames, *base, timeout=300)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert p.returncode == 2 and "torchvision" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = run_cli("ground", "a.png", "the cat", *base, "--dry-run", timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["url"].startswith("in-process:")
    p = run_cli("tokens", "a.png", "--backend", "transformers", "--model", str(models["qwen3-vl"]), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["factor"] == 32
    for n in range(3):
        write_image(isolated_env / f"b{n}.png", (56 + 28 * n, 56))
    p = run_cli("batch", "run", "b0.png", "b1.png", "b2.png", "-p", "Describe", "-o", "out.jsonl", *base, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in (isolated_env / "out.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in lines) == ["ok"] * 3
    p = run_cli("ask", "a.png", "hi", "--backend", "transformers", "--model", str(isolated_env / "nowhere"))
    assert p.returncode == 2 and "neither a model folder nor" in p.stderr and "Traceback" not in p.stderr
    blocker = isolated_env / "block"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('blocked', name='torch')\n")
    env = {"PYTHONPATH": str(blocker) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = run_cli("ask", "a.png", "hi", *base, env=env)
    assert p.returncode == 2 and "qwenvl[local]" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert sys.executable


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_equal_the_official_processor(models, family, isolated_env):
    """Where torchvision is installed, AutoProcessor loads: qwenvl's inputs (built without it) must be its."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pytest.skip("torchvision is not installed: AutoProcessor cannot load a Qwen-VL folder")
    from transformers.video_utils import VideoMetadata

    from qwenvl.backends.transformers import build_inputs

    img = write_image(isolated_env / "im.png", (300, 200))
    frames = [str(write_image(isolated_env / f"f{i}.png", (96, 64), (i * 60, 10, 10))) for i in range(4)]
    client = qwenvl.Client(backend="transformers", model=str(models[family]))
    proc = transformers.AutoProcessor.from_pretrained(models[family])
    loaded = client.backend.loaded(str(models[family]))
    for kind, fields in (("image", {"image": str(img)}), ("video", {"video": frames, "fps": 1.0})):
        call = client.plan(prompt="What is it?", **fields)
        ours = build_inputs(loaded, call).tensors
        text = proc.apply_chat_template(
            [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": "What is it?"}]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        pics = call.media[0].pixels
        if kind == "image":
            out = proc(text=[text], images=[pics], return_tensors="pt")
        else:
            meta = [VideoMetadata(total_num_frames=4, fps=1.0, frames_indices=[0, 1, 2, 3])]
            out = proc(text=[text], videos=[pics], video_metadata=meta, do_sample_frames=False, return_tensors="pt")
        assert out["input_ids"].tolist() == ours["input_ids"].tolist()
        assert out["mm_token_type_ids"].tolist() == ours["mm_token_type_ids"].tolist()
        key = "pixel_values" if kind == "image" else "pixel_values_videos"
        assert torch.allclose(out[key], ours[key], atol=1e-5)
