"""The playground's notes (Find, OCR, Extract, the estimate) are in the words of a request's fields, never the
CLI's flags, and the page shows several as separate sentences."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from dashscope_server import DashScopeServer, Reply
from test_serve import data_url
from test_serve_faults import HEADERS, MODEL, gateway_to

APP_JS = Path(__file__).parent.parent / "src/qwenvl/server/static/app.js"


@pytest.mark.parametrize(
    "route,answer,extra",
    [
        ("ground", "I cannot tell [", {"query": "a dog"}),
        ("ocr", "Some text that goes on", {}),
    ],
)
def test_playground_notes_carry_no_cli_flags(server: DashScopeServer, png, route, answer, extra) -> None:
    server.enqueue(Reply(text=answer, finish_reason="length"))
    with gateway_to(server.url) as s:
        body = {"model": MODEL, "image": data_url(png), **extra}
        r = httpx.post(s.url + f"/qwenvl/v1/{route}", json=body, headers=HEADERS, timeout=30)
    assert r.status_code == 200, r.text
    notes = r.json()["warnings"]
    assert any("cut off" in n for n in notes), notes
    assert not any("--" in n for n in notes), notes
    assert any("max_tokens" in n for n in notes), notes


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_page_shows_notes_as_separate_sentences() -> None:
    source = APP_JS.read_text()
    start = source.index("function sentences(")
    end = source.index("\n}\n", start) + 3
    notes = [
        "the answer was cut off at max_tokens: kept the 0 complete boxes",
        "no boxes or points found in the answer",
    ]
    script = source[start:end] + f"console.log(sentences({json.dumps(notes)}));"
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == (
        "The answer was cut off at max_tokens: kept the 0 complete boxes. No boxes or points found in the answer."
    )
    assert "warnings.join(" not in source
