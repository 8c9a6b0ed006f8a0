"""What a multi-file verb was paid for is on disk as it arrives, and its cost cap counts what it really paid.

``qwenvl extract FILE... --csv`` and its JSON lines are written (flushed) row by row: a 401 midway or a process
killed keeps the rows already answered. ``--max-cost`` is checked against the running spend, repair requests
included, before each file is sent."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import API_KEY, CHILD_ENV_DROPPED, run_cli, write_image
from dashscope_server import Reply

SCHEMA = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def files(folder: Path, n: int) -> list[str]:
    (folder / "s.json").write_text(json.dumps(SCHEMA))
    return [str(write_image(folder / f"f{i}.png", color=(40 * i, 90, 20))) for i in range(n)]


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_401_midway_keeps_the_csv_rows_already_paid(server, env, isolated_env):
    images = files(isolated_env, 3)
    server.enqueue(Reply(text='{"total": 1}'), Reply(status=401))
    p = run_cli("extract", *images, "--schema", "s.json", "--csv", "out.csv", "--yes", env=env)
    assert p.returncode == 4, p.stderr
    rows = read_csv(isolated_env / "out.csv")
    assert rows == [["file", "total"], [images[0], "1"]]
    assert model_calls(server) == 2


def test_csv_keeps_the_final_shape_when_a_column_appears_midway(server, env, isolated_env):
    images = files(isolated_env, 3)
    server.enqueue(
        Reply(text='{"total": 1}'), Reply(text='{"total": 2, "extra": "x"}'), Reply(text="not json", times=2)
    )
    p = run_cli("extract", *images, "--schema", "s.json", "--csv", "out.csv", "--yes", env=env)
    assert p.returncode == 5, p.stderr
    rows = read_csv(isolated_env / "out.csv")
    assert rows[0] == ["file", "total", "extra", "error", "raw_answer"]  # the answer paid for kept too
    assert [r[:3] for r in rows[1:]] == [[images[0], "1", ""], [images[1], "2", "x"], [images[2], "", ""]]
    assert rows[1][3] == rows[2][3] == "" and rows[3][3] and rows[3][4] == "not json"


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(CHILD_ENV_DROPPED)} | env
    return subprocess.Popen(
        [sys.executable, "-m", "qwenvl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full
    )


def test_a_killed_run_keeps_each_csv_row_as_it_arrived(server, env, isolated_env):
    images = files(isolated_env, 3)
    hold = threading.Event()
    server.enqueue(Reply(text='{"total": 7}'), Reply(hold=hold))
    proc = _start(["extract", *images, "--schema", "s.json", "--csv", "out.csv", "--yes"], env)
    try:
        assert wait_for(lambda: model_calls(server) == 2)  # the second file is in flight: the first answered
        out = isolated_env / "out.csv"
        assert wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 2)
        proc.send_signal(signal.SIGKILL)  # nothing runs after this: what is on disk is what was flushed
        proc.wait(30)
        rows = read_csv(out)
        assert rows == [["file", "total"], [images[0], "7"]]
    finally:
        hold.set()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_json_lines_reach_the_reader_as_each_answer_arrives(server, env, isolated_env):
    images = files(isolated_env, 2)
    hold = threading.Event()
    server.enqueue(Reply(text='{"total": 7}'), Reply(hold=hold))
    proc = _start(["extract", *images, "--schema", "s.json", "--yes"], env)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    try:
        reader.start()
        reader.join(60)
        assert got, "the first file's line did not arrive while the second was in flight"
        line = json.loads(got[0])
        assert line["file"] == images[0] and line["json"] == {"total": 7}
        assert not hold.is_set()  # the second answer is still held: the first line came as it arrived
    finally:
        hold.set()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_max_cost_counts_the_repairs_already_paid(server, env, isolated_env):
    images = files(isolated_env, 3)
    base = ["extract", *images, "--schema", "s.json", "--max-tokens", "50", "--csv", "out.csv"]
    dry = run_cli(*base[:-2], "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    total = json.loads(dry.stdout)["total"]
    per_file = total["input_tokens"] // 3
    # every request reports what the estimate priced for one file's request (its input, max_tokens out): a file
    # whose answer needs a repair costs two such requests
    usage = {"prompt_tokens": per_file, "completion_tokens": 50, "total_tokens": per_file + 50}
    server.enqueue(Reply(text="not json", usage=usage), Reply(text='{"total": 1}', usage=usage, times=1))
    server.enqueue(Reply(text="not json", usage=usage), Reply(text='{"total": 2}', usage=usage, times=1))
    server.enqueue(Reply(text='{"total": 3}', usage=usage, times=2))
    cap = total["cost_max"] * 1.0001  # the estimate passes; file 3 would take the real spend (5 requests) above it
    p = run_cli(*base, "--max-cost", repr(cap), env=env)
    assert p.returncode == 2, p.stderr
    assert "stopped before" in p.stderr and "repair requests included" in p.stderr and images[2] in p.stderr
    assert model_calls(server) == 4  # two files, each with its repair; the third not sent
    rows = read_csv(isolated_env / "out.csv")
    assert [r[:2] for r in rows] == [["file", "total"], [images[0], "1"], [images[1], "2"]]
    assert API_KEY not in p.stderr


def _pdf(path: Path, pages: int) -> Path:
    from PIL import Image

    frames = [Image.new("RGB", (300, 200), (20 * i, 100, 200)) for i in range(pages)]
    frames[0].save(path, "PDF", save_all=True, append_images=frames[1:])
    return path


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_ocr_output_file_keeps_each_page_as_it_is_read(server, env, isolated_env, fmt):
    doc = _pdf(isolated_env / "doc.pdf", 3)
    hold = threading.Event()
    server.enqueue(Reply(text="first page words"), Reply(hold=hold))
    out = isolated_env / f"out.{fmt}"
    proc = _start(["ocr", str(doc), "-f", fmt, "-o", str(out), "--yes"], env)
    try:
        assert wait_for(lambda: model_calls(server) == 2)  # page 2 in flight: page 1 read
        assert wait_for(lambda: out.exists() and "first page words" in out.read_text())
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if fmt == "json":
            document = json.loads(out.read_text())  # whole JSON: written atomically
            assert [p["text"] for p in document["pages"]] == ["first page words"]
        elif fmt == "text":  # each page as one run writes it: with its own page break
            assert out.read_text() == "first page words\n\f"
        else:
            assert out.read_text() == "<!-- page 1 -->\n\nfirst page words\n\n"
    finally:
        hold.set()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_ocr_output_file_is_whole_at_the_end(server, env, isolated_env):
    doc = _pdf(isolated_env / "doc.pdf", 3)
    server.enqueue(Reply(text="one"), Reply(text="two"), Reply(text="three"))
    p = run_cli("ocr", str(doc), "-f", "markdown", "-o", "out.md", "--yes", env=env)
    assert p.returncode == 0, p.stderr
    pages = "".join(f"<!-- page {n} -->\n\n{text}\n\n" for n, text in enumerate(["one", "two", "three"], 1))
    assert (isolated_env / "out.md").read_text() == pages
