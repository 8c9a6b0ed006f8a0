"""On a terminal a verb of several requests (``ocr`` over a PDF's pages, ``extract`` over files) ends with one usage
summary for the run, not a line per request; ``--verbose`` shows each request's line above it. Off a terminal
nothing changes (no footer), and one request keeps its one line."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pexpect
import pytest

from conftest import API_KEY, write_image
from dashscope_server import Reply
from test_ocr_page_breaks import write_pdf

USAGE = {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010}


def on_terminal(server, folder: Path, *args: str, status: int = 0) -> str:
    env = {**os.environ, "DASHSCOPE_API_KEY": API_KEY, "TERM": "xterm", "COLUMNS": "250", "LINES": "30"}
    env = {k: v for k, v in env.items() if not k.startswith("QWENVL_")} | {"QWENVL_HOME": str(folder / ".q")}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "qwenvl", *args, "--base-url", server.url],
        env=env,
        cwd=str(folder),
        encoding="utf-8",
        timeout=60,
        dimensions=(30, 250),
    )
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == status, child.before
    return re.sub(r"\x1b\[[0-9;]*m", "", child.before)  # the footer is dimmed


def usage_lines(seen: str) -> list[str]:
    return [line for line in seen.splitlines() if " in / " in line]


@pytest.mark.parametrize("verbose", [False, True])
def test_ocr_over_pages_ends_with_one_summary(server, isolated_env, verbose):
    write_pdf(isolated_env / "doc.pdf", pages=3)
    server.enqueue(*(Reply(text=f"page {n}", usage=USAGE) for n in range(3)))
    seen = on_terminal(server, isolated_env, "ocr", "doc.pdf", "--yes", *(["--verbose"] if verbose else []))
    lines = usage_lines(seen)
    assert len(lines) == (4 if verbose else 1), seen
    assert "total of 3 answers" in lines[-1] and "3,000 in / 30 out tokens" in lines[-1] and "≈" in lines[-1]
    assert all("request " in line for line in lines[:-1])
    # one request keeps its one line, with its request id
    write_image(isolated_env / "scan.png")
    server.enqueue(Reply(text="words", usage=USAGE))
    lines = usage_lines(on_terminal(server, isolated_env, "ocr", "scan.png"))
    assert len(lines) == 1 and "total of" not in lines[0] and "request " in lines[0]


def test_extract_over_files_ends_with_one_summary(server, isolated_env):
    (isolated_env / "s.json").write_text(json.dumps({"type": "object"}))
    images = [write_image(isolated_env / f"f{n}.png", color=(30 * n, 9, 9)).name for n in range(3)]
    server.enqueue(Reply(text='{"a": 1}', usage=USAGE), Reply(text="no", usage=USAGE, times=2))
    server.enqueue(Reply(text='{"a": 3}', usage=USAGE))
    args = ("extract", *images, "--schema", "s.json", "--yes", "--max-retries", "0")
    seen = on_terminal(server, isolated_env, *args, status=5)
    lines = [line for line in usage_lines(seen) if not line.startswith("paid:")]
    assert len(lines) == 1, seen
    # the file whose answer was not valid (with its repair: two requests) is said beside its error, and counted
    assert "total of 3 answers" in lines[0] and "4,000 in / 40 out tokens" in lines[0], seen
