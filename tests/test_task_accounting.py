"""The task verbs say what they took, as `ask` does: their JSON carries ``usage`` (summed over their requests),
``cost``/``currency``/``local``, ``cached``, ``requests``, ``request_ids`` and ``request_id`` (``models.spent_fields``),
and `ask --json` the cost beside its usage and request id.

A new user found that ground, ocr, events and extract never reported a request id, usage or cost on success."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pexpect
import pytest
from PIL import Image

from conftest import API_KEY, run_cli, write_image
from dashscope_server import DashScopeServer, Reply
from test_tasks_events import SEED_ANSWER, make_clip

ACCOUNTING = ("usage", "cost", "currency", "local", "cached", "requests", "request_ids", "request_id")


@pytest.fixture
def media(isolated_env: Path) -> Path:
    write_image(isolated_env / "beach.jpg", (120, 80), fmt="JPEG")
    pages = [Image.new("RGB", (60, 80), c) for c in ((255, 0, 0), (0, 255, 0))]
    pages[0].save(isolated_env / "doc.pdf", save_all=True, append_images=pages[1:])
    make_clip(isolated_env / "clip.mp4")
    return isolated_env


CASES = {
    "ground": (["ground", "beach.jpg", "person", "--json"], '[{"bbox_2d": [1, 2, 500, 900], "label": "person"}]', 1),
    "events": (["events", "clip.mp4", "--json"], json.dumps(SEED_ANSWER), 1),
    "ocr (2 pages)": (["ocr", "doc.pdf", "--format", "json", "--yes"], "page text", 2),
    "ask": (["ask", "beach.jpg", "-p", "x", "--json"], "an answer", 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_json_says_what_the_verb_took(
    case: str, media: Path, server: DashScopeServer, env: dict[str, str], protocol: str
) -> None:
    args, answer, requests = CASES[case]
    server.enqueue(Reply(text=answer, times=requests))
    p = run_cli(*args, "--protocol", protocol, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["cost"] > 0 and out["currency"] == "CNY" and out["local"] is False, out
    assert out["requests"] == requests == len(server.requests)
    assert len(out["request_ids"]) == requests and all(out["request_ids"])
    if case != "ask":  # ask keeps its Response record (usage, request_id) and adds the cost
        assert set(ACCOUNTING) <= set(out)
        assert out["request_id"] == out["request_ids"][-1] and out["cached"] is False
        assert out["usage"]["input_tokens"] > 0 and out["usage"]["output_tokens"] > 0
    else:
        assert out["request_id"] == out["request_ids"][-1] and out["usage"]["input_tokens"] > 0


def _on_a_terminal(server: DashScopeServer, folder: Path, *args: str) -> str:
    """What ``qwenvl ARGS`` shows on a terminal (a pseudo-terminal: stdout and stderr together)."""
    env = {**os.environ, "DASHSCOPE_API_KEY": API_KEY, "TERM": "xterm", "COLUMNS": "200", "LINES": "30"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "qwenvl", *args, "--base-url", server.url],
        env=env,
        cwd=str(folder),
        encoding="utf-8",
        timeout=60,
        dimensions=(30, 200),
    )
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    return str(child.before)


@pytest.mark.parametrize("verb", [["ground", "beach.jpg", "person"], ["ask", "beach.jpg", "-p", "x"]])
def test_the_footer_follows_asks_rule(verb: list[str], media: Path, server: DashScopeServer) -> None:
    """On a terminal the footer (model · tokens · cost · request id) ends the text, on stderr; with --json the JSON
    carries it and there is no footer, for ask and the task verbs alike."""
    server.enqueue(Reply(text='[{"bbox_2d": [1, 2, 500, 900], "label": "person"}]', times=2))
    text = _on_a_terminal(server, media, *verb)
    footer = [line for line in text.splitlines() if "request " in line and "≈¥" in line]
    assert len(footer) == 1, text
    shown = _on_a_terminal(server, media, *verb, "--json")
    assert not [line for line in shown.splitlines() if "request " in line and "≈¥" in line], shown
