"""The task verbs' JSON says the same thing the same way: a PDF page is ``"page"`` (null for an image) in ground's
JSON as in OCR's; a reading that stopped names the model asked and no page 0 for an image; a figure not computed is
null, never a false 0.

A new user found `ground doc.pdf title --page 2 --json` without "page", `ocr beach.jpg --format json --model
qwen3-vl-plsu` with "model": null and "stopped_at": 0, and `tokens beach.jpg --fast --json` with "bytes_sent": 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli, write_image
from dashscope_server import DashScopeServer, Reply

BOXES = '[{"bbox_2d": [100, 200, 500, 900], "label": "title"}]'


@pytest.fixture
def media(isolated_env: Path) -> Path:
    write_image(isolated_env / "beach.jpg", (120, 80), fmt="JPEG")
    pages = [Image.new("RGB", (60, 80), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    pages[0].save(isolated_env / "doc.pdf", save_all=True, append_images=pages[1:])
    return isolated_env


def test_ground_json_names_the_page(media: Path, server: DashScopeServer, env: dict[str, str]) -> None:
    server.enqueue(Reply(text=BOXES, times=2))
    out = json.loads(run_cli("ground", "doc.pdf", "title", "--page", "2", "--json", env=env).stdout)
    assert out["page"] == 2 and out["image"] == "doc.pdf" and out["boxes"]
    out = json.loads(run_cli("ground", "beach.jpg", "title", "--json", env=env).stdout)
    assert "page" in out and out["page"] is None  # as an OCR page of an image is


def test_ocr_json_of_a_failed_image_names_the_model_asked_and_no_page(
    media: Path, server: DashScopeServer, env: dict[str, str]
) -> None:
    server.enqueue(Reply(status=404, error_code="ModelNotFound", error_message="Model not exist."))
    p = run_cli("ocr", "beach.jpg", "--format", "json", "--model", "qwen3-vl-plsu", "--max-retries", "0", env=env)
    assert p.returncode != 0
    out = json.loads(p.stdout)
    assert out["model"] == "qwen3-vl-plsu" and out["stopped"] is True and out["stopped_at"] is None, out
    assert out["error"]["exit_code"] == p.returncode


def test_tokens_fast_says_bytes_not_computed_as_null(media: Path) -> None:
    fast = json.loads(run_cli("tokens", "beach.jpg", "--fast", "--json").stdout)["items"][0]
    assert fast["bytes_sent"] is None and fast["tokens"] > 0
    full = json.loads(run_cli("tokens", "beach.jpg", "--json").stdout)["items"][0]
    assert full["bytes_sent"] > 0
    table = run_cli("tokens", "beach.jpg", "--fast")
    assert table.returncode == 0, table.stderr
