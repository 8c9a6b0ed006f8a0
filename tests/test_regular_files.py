"""Issue 9 item 2: only regular files are read.

A named pipe, a device, ``/dev/stdin`` (not meant as ``-``) or a socket given where a file is read is refused
at once, nothing sent, dry run included; a symlink loop says so. Every place a file is read on the user's
behalf: images, videos, PDFs (one ``classify``), schema files, request files, batch inputs, sessions.
Each call runs under a wall-clock bound: before the fix these blocked for ever.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import API_KEY, make_client, run_cli
from qwenvl.batch.inputs import expand_inputs, items_from_inputs, read_requests
from qwenvl.errors import MediaError
from qwenvl.media.sources import classify, open_regular, read_bytes
from qwenvl.sessions import Session
from qwenvl.structured import load_schema

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
BOUND = 20.0


def bounded(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) when it does not end within BOUND."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive(), "blocked reading something that is not a regular file"
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.fixture
def fifo(isolated_env: Path) -> Path:
    path = isolated_env / "pipe.jpg"
    os.mkfifo(path)
    return path


@pytest.fixture
def sock(isolated_env: Path):
    path = isolated_env / "s.png"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    yield path
    s.close()


@pytest.fixture
def loop(isolated_env: Path) -> Path:
    (isolated_env / "a.png").symlink_to(isolated_env / "b.png")
    (isolated_env / "b.png").symlink_to(isolated_env / "a.png")
    return isolated_env / "a.png"


def kinds(fifo: Path, sock: Path) -> list[tuple[str, str]]:
    return [(str(fifo), "named pipe"), ("/dev/zero", "character device"), (str(sock), "a socket")]


def test_classify_refuses_what_is_not_a_regular_file(fifo, sock, loop, isolated_env):
    for ref, what in kinds(fifo, sock):
        with pytest.raises(MediaError, match=what) as info:
            bounded(lambda ref=ref: classify(ref))
        assert "not a regular file" in str(info.value) and info.value.exit_code == 3
    with pytest.raises(MediaError, match="symlink loop"):
        classify(str(loop))
    (isolated_env / "dangling.png").symlink_to(isolated_env / "gone.png")
    with pytest.raises(MediaError, match="broken symlink"):
        classify(str(isolated_env / "dangling.png"))
    with pytest.raises(MediaError, match="file not found"):
        classify(str(isolated_env / "missing.png"))
    with pytest.raises(MediaError, match="is a directory"):
        classify(str(isolated_env))


def test_file_urls_too(fifo):
    with pytest.raises(MediaError, match="named pipe"):
        bounded(lambda: classify(fifo.as_uri()))


def test_open_regular_checks_what_was_opened(fifo, isolated_env):
    with pytest.raises(MediaError, match="named pipe"):
        bounded(lambda: open_regular(fifo))
    ok = isolated_env / "ok.bin"
    ok.write_bytes(b"abc")
    source = classify(str(ok))
    ok.unlink()
    os.mkfifo(ok)  # swapped for a pipe after the check: the read still refuses, at once
    with pytest.raises(MediaError, match="not a regular file"):
        bounded(lambda: read_bytes(source))


@pytest.mark.parametrize("field", ["image", "video", "images"])
def test_library_refuses_before_sending(server, fifo, field):
    value = [str(fifo)] if field == "images" else str(fifo)
    with make_client(server) as c, pytest.raises(MediaError, match="named pipe"):
        bounded(lambda: c.complete(prompt="x", **{field: value}))
    assert server.requests == []


@pytest.mark.parametrize("dry", [True, False])
def test_cli_refuses_a_pipe_exit_3(server, env, fifo, dry):
    args = ["ask", str(fifo), "-p", "what is it", "--base-url", server.url] + (["--dry-run"] if dry else [])
    p = run_cli(*args, env=env, timeout=BOUND)
    assert p.returncode == 3, p.stderr
    assert "named pipe" in p.stderr and "Traceback" not in p.stderr
    assert server.requests == []


def test_cli_dev_stdin_not_meant_as_dash(server, env):
    p = run_cli("ask", "/dev/stdin", "-p", "x", "--base-url", server.url, env=env, input="", timeout=BOUND)
    assert p.returncode == 3 and "not a regular file" in p.stderr, p.stderr
    assert server.requests == []


def test_cli_dev_zero_and_symlink_loop(server, env, loop):
    p = run_cli("ask", "/dev/zero", "-p", "x", "--base-url", server.url, env=env, timeout=BOUND)
    assert p.returncode == 3 and "character device" in p.stderr, p.stderr
    p = run_cli("ask", str(loop), "-p", "x", "--base-url", server.url, env=env, timeout=BOUND)
    assert p.returncode == 3 and "symlink loop" in p.stderr, p.stderr
    assert server.requests == []


def test_other_files_read_for_the_user(fifo, isolated_env, monkeypatch):
    """A schema, requests or session file that is a pipe is an input error (MediaError, exit 3), as media are."""
    with pytest.raises(MediaError, match="named pipe"):
        bounded(lambda: load_schema(str(fifo)))
    with pytest.raises(MediaError, match="named pipe"):
        bounded(lambda: read_requests(fifo))
    session = Session("pipe")
    session.path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(session.path)
    with pytest.raises(MediaError, match="named pipe"):
        bounded(lambda: Session.load("pipe"))


def test_cli_schema_and_request_files(server, env, fifo, png):
    p = run_cli("ask", str(png), "-p", "x", "--schema", str(fifo), "--base-url", server.url, env=env, timeout=BOUND)
    assert p.returncode == 3 and "named pipe" in p.stderr, p.stderr
    p = run_cli("analyze", "--file", str(fifo), "--base-url", server.url, env=env, timeout=BOUND)
    assert p.returncode == 3 and "named pipe" in p.stderr, p.stderr
    assert server.requests == []


def test_batch_folder_with_a_pipe_does_not_block(isolated_env, fifo):
    os.mkfifo(isolated_env / "notes")  # no media suffix: its first bytes would be read to sniff it
    refs = bounded(lambda: expand_inputs([str(isolated_env)]))
    assert refs == []  # a folder walk takes regular files only: pipes are skipped, even one named like an image
    named = bounded(lambda: items_from_inputs([str(fifo)], {"prompt": "x"}))  # named on its own: an item
    assert named[0].request["image"] == str(fifo)  # whose plan refuses it (next test)


def test_cli_batch_item_that_is_a_pipe_is_an_item_error(server, env, fifo, png):
    p = run_cli(
        "batch",
        str(png),
        str(fifo),
        "-p",
        "x",
        "-o",
        "out.jsonl",
        "--base-url",
        server.url,
        "-y",
        env={**env, "DASHSCOPE_API_KEY": API_KEY},
        timeout=BOUND + 20,
    )
    assert "Traceback" not in p.stderr
    lines = Path("out.jsonl").read_text().splitlines()
    assert len(lines) == 2 and sum('"named pipe' in line or "named pipe" in line for line in lines) == 1
    assert len(server.requests) == 1  # only the real image was sent
