"""Model and service text that holds terminal control sequences, printed by ground, events, batch and usage on a
real terminal (a pseudo-terminal): shown escaped, never acted on (``qwenvl.cli.common.shown``; the other verbs are
in test_chat_tty.py)."""

from __future__ import annotations

import json
import os
import sys

import pexpect

from batch_server import BatchServer
from conftest import API_KEY, write_image
from dashscope_server import Reply
from qwenvl.store import default_usage_log_path
from qwenvl.store.usage import Entry, UsageLog
from test_chat_tty import HOSTILE, RAW, _is_safe

SHORT = "cat\x1b[2J\x1b]0;pwned\x07\x1b[31m red\u202e"  # one line: a label, a model name, a status


def on_terminal(cwd, *args: str, columns: int = 250) -> str:
    """What ``qwenvl ARGS`` shows on a terminal ``columns`` wide (stdout and stderr both are the pseudo-terminal)."""
    env = {**os.environ, "DASHSCOPE_API_KEY": API_KEY, "TERM": "xterm", "COLUMNS": str(columns), "LINES": "40"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "qwenvl", *args],
        env=env,
        cwd=str(cwd),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, columns),
    )
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close()
    return child.before


def _short_is_safe(seen: str) -> None:
    assert "\x1b[2J" not in seen and "\x1b]0;pwned" not in seen and "\u202e" not in seen
    assert r"cat\x1b[2J\x1b]0;pwned\x07\x1b[31m red\u202e" in seen


def test_ground_labels_the_model_name_and_the_raw_answer_are_escaped(server, isolated_env):
    write_image(isolated_env / "a.png", (200, 100))
    boxes = [{"bbox_2d": [10, 10, 500, 500], "label": HOSTILE}, {"point_2d": [300, 300], "label": SHORT}]
    server.enqueue(Reply(text=json.dumps(boxes), model=SHORT))
    seen = on_terminal(isolated_env, "ground", "a.png", "things", "--base-url", server.url)
    _is_safe(seen)  # the labels, on stdout
    _short_is_safe(seen)
    # the point's label (stdout); the model in the summary line, its warning and the usage line (stderr)
    assert seen.count(r"cat\x1b[2J") == 4
    server.enqueue(Reply(text=HOSTILE))  # no boxes: the answer itself is shown
    seen = on_terminal(isolated_env, "ground", "a.png", "things", "--base-url", server.url)
    assert "no boxes" in seen
    for raw in RAW:  # (rich expands the tab: its width is the terminal's)
        assert raw not in seen
    for escaped in (r"\x1b[2J", r"\x1b]0;pwned\x07", r"\x1b[31m four", r"\u202e", r"five\rsix"):
        assert escaped in seen


def test_events_are_escaped(server, isolated_env):
    for i in range(3):
        write_image(isolated_env / f"f{i}.png", color=(80 * i, 10, 10))
    timeline = {"events": [{"start_time": "00:00:00", "end_time": "00:00:01", "event": HOSTILE}]}
    server.enqueue(Reply(text=json.dumps(timeline), model=SHORT))
    seen = on_terminal(isolated_env, "events", "f0.png", "f1.png", "f2.png", "--base-url", server.url)
    _is_safe(seen)
    _short_is_safe(seen)  # the model, in the usage line


def test_batch_status_and_its_progress_show_the_service_text_escaped(isolated_env):
    with BatchServer(api_key=API_KEY) as bserver:
        bserver.batches["batch_hostile"] = {
            "id": "batch_hostile",
            "object": "batch",
            "status": "failed",
            "input_file_id": SHORT,
            "created_at": 1,
            "request_counts": {"total": 1, "completed": 0, "failed": 1},
            "errors": {"object": "list", "data": [{"code": SHORT, "message": HOSTILE, "line": 1}]},
        }
        seen = on_terminal(isolated_env, "batch", "status", "batch_hostile", "--base-url", bserver.url)
    for raw in RAW:
        assert raw not in seen
    assert r"\x1b[2J" in seen and r"cat\x1b[2J\x1b]0;pwned\x07\x1b[31m red\u202e" in seen


def test_batch_run_on_a_terminal_shows_nothing_raw(server, isolated_env):
    """A run's progress and summary on a terminal: the items' failures (service text) stay in the output."""
    write_image(isolated_env / "a.png")
    requests = isolated_env / "r.jsonl"
    requests.write_text(json.dumps({"id": SHORT, "prompt": "x", "image": "a.png"}) + "\n")
    server.enqueue(Reply(status=400, error_code=SHORT, error_message=HOSTILE))
    seen = on_terminal(
        isolated_env,
        "batch",
        "--requests",
        "r.jsonl",
        "-o",
        "out.jsonl",
        "--max-retries",
        "0",
        "--base-url",
        server.url,
    )
    assert "1 failed" in seen
    for raw in RAW:
        assert raw not in seen
    (row,) = [json.loads(line) for line in (isolated_env / "out.jsonl").read_text().splitlines()]
    assert row["id"] == SHORT and row["status"] == "error"  # the output keeps them as they are


def test_usage_shows_a_logged_model_name_escaped(isolated_env):
    log = UsageLog(default_usage_log_path())
    log.record(Entry(model=SHORT, protocol="compat", outcome="ok", input_tokens=10, output_tokens=2, cost=0.01))
    log.record(Entry(model="qwen3-vl-plus", protocol="compat", outcome="ok", input_tokens=1, output_tokens=1))
    log.close()
    seen = on_terminal(isolated_env, "usage")
    _short_is_safe(seen)
    assert "qwen3-vl-plus" in seen


def test_the_usage_line_keeps_the_request_id_whole_on_an_80_column_terminal(server, isolated_env):
    """ask's and ocr's usage line is longer than 80 columns: the terminal wraps it (soft wrap), rich never breaks
    it, so the request id is one piece when copied; a model name that looks like rich markup is shown as given."""
    write_image(isolated_env / "a.png", (200, 100))
    for verb in (["ask", "a.png", "what is this?"], ["ocr", "a.png"]):
        server.enqueue(Reply(text="an answer", model="qwen3-vl-plus[bold]x[/bold]"))
        seen = on_terminal(isolated_env, *verb, "--base-url", server.url, columns=80)
        lines = [line for line in seen.splitlines() if "request " in line]
        assert len(lines) == 1, seen  # one line (the terminal wraps it), the id after its label
        assert "qwen3-vl-plus[bold]x[/bold]" in lines[0], lines[0]
        request_id = lines[0].split("request ")[1].split("\x1b")[0].strip()
        assert len(request_id) >= 16 and " " not in request_id, lines[0]
