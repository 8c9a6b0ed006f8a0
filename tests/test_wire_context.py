"""Issue 8 item 3: the context guard covers every media kind (exit 3, nothing sent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import qwenvl
from conftest import make_client, run_cli
from test_tasks_events import make_clip


def _noise(path: Path, side: int) -> Path:
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (side // 10, side // 10, 3), dtype=np.uint8)).resize((side, side)).save(
        path, quality=60
    )
    return path


@pytest.fixture
def small_video_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """qwen-vl-ocr's small context (38,192 tokens) with a video ability: no listed model is both (a video's tokens
    are capped at 65,536, below every video model's context; qwen-vl-ocr takes no video and refuses one before the
    context is counted), so the guard's video paths are tested on the table's OCR row given video."""
    from dataclasses import replace

    from qwenvl import models

    monkeypatch.setitem(models.MODELS, "qwen-vl-ocr", replace(models.MODELS["qwen-vl-ocr"], video=True))


def test_qwen_vl_ocr_itself_refuses_a_video_before_counting(server, env, isolated_env) -> None:
    clip = make_clip(isolated_env / "short.mp4", seconds=2, fps=2, size=(64, 64))
    p = run_cli("ask", str(clip), "-p", "x", "-m", "qwen-vl-ocr", env=env)
    assert p.returncode == 2 and "qwen-vl-ocr does not take video" in p.stderr, p.stderr
    assert server.requests == []


@pytest.fixture
def pages(isolated_env) -> list[str]:
    """Six 3000x3000 scans: about 48,600 tokens for qwen-vl-ocr, over its context."""
    return [str(_noise(isolated_env / f"page{i}.jpg", 3000)) for i in range(6)]


@pytest.fixture
def long_clip(isolated_env) -> Path:
    return make_clip(isolated_env / "long.mp4", seconds=30, fps=4, size=(960, 960))


def test_six_pages_as_images_are_refused_locally(server, env, pages, protocol):
    p = run_cli("ask", *pages, "-p", "read them", "-m", "qwen-vl-ocr", "--protocol", protocol, env=env)
    assert p.returncode == 3, p.stderr
    assert "6 images" in p.stderr and "over qwen-vl-ocr's context of" in p.stderr and "hint:" in p.stderr
    assert server.requests == []


def test_the_same_pages_fit_a_large_context(server, pages):
    with make_client(server) as c:
        call = c.plan(prompt="read", images=pages, model="qwen3-vl-plus")
    assert sum(i.tokens for i in call.media) < call.model.context_tokens


@pytest.mark.parametrize("verb", ["ask-json", "batch"])
def test_other_paths_refuse_too(server, env, pages, verb, isolated_env):
    if verb == "ask-json":
        p = run_cli("ask", *pages, "-p", "x", "-m", "qwen-vl-ocr", "--json", env=env)
        assert p.returncode == 3, p.stderr
    else:  # the item fails with the same reason (batch goes on with the others and records it)
        line = {"id": "a", "prompt": "x", "images": pages, "model": "qwen-vl-ocr"}
        (isolated_env / "reqs.jsonl").write_text(json.dumps(line) + "\n")
        p = run_cli("batch", "--requests", "reqs.jsonl", "-o", "out.jsonl", env=env)
        assert "over qwen-vl-ocr's context" in (isolated_env / "out.jsonl").read_text()
    assert server.requests == []


def test_a_long_video_is_refused(server, env, long_clip, protocol, small_video_model):
    p = run_cli(
        "ask", str(long_clip), "-p", "what happens", "-m", "qwen-vl-ocr", "--fps", "4", "--protocol", protocol, env=env
    )
    assert p.returncode == 3, p.stderr
    assert "1 video" in p.stderr and "context" in p.stderr
    assert server.requests == []


def test_a_frame_list_is_refused(server, isolated_env, small_video_model):
    frames = [str(_noise(isolated_env / f"f{i:02}.jpg", 960)) for i in range(112)]  # about 40,800 tokens: over 38,192
    with make_client(server) as c, pytest.raises(qwenvl.MediaError, match=r"1 video .* over qwen-vl-ocr's context"):
        c.complete(prompt="x", video=frames, model="qwen-vl-ocr")
    assert server.requests == []


def test_a_mix_is_refused_sync_and_async(server, pages, isolated_env, small_video_model):
    clip = make_clip(isolated_env / "mid.mp4", seconds=20, fps=2, size=(960, 960))
    fields = dict(prompt="x", images=pages[:3], video=str(clip), model="qwen-vl-ocr")
    with make_client(server) as c:
        assert sum(i.tokens for i in c.plan(**{**fields, "images": pages[:1], "video": None}).media) < 34_000
        with pytest.raises(qwenvl.MediaError, match="3 images and 1 video"):
            c.complete(**fields)

    import asyncio

    async def go():
        async with qwenvl.AsyncClient(api_key="sk-x", base_url=server.url) as a:
            await a.complete(**fields)

    with pytest.raises(qwenvl.MediaError, match="context"):
        asyncio.run(go())
    assert server.requests == []
