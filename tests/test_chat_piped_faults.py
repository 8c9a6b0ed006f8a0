"""Piped chat: a cancelled answer is not "every turn answered", and /image expands a glob as every verb does.

A new user found `printf 'first\\nsecond\\n' | qwenvl chat photo.jpg` with Ctrl-C during the first answer said
"(answer cancelled...)" and exited 0, which the README keeps for "every turn was answered"; and
`echo '/image m/folder/*' | qwenvl chat` said "file not found: m/folder/*" while `qwenvl chat "m/folder/*.png"`
expands the glob.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import API_KEY, ctrl_c_reaches_children, run_cli, write_image
from dashscope_server import Reply
from qwenvl.chat import Conversation
from qwenvl.client import Client


def test_a_piped_chat_with_a_cancelled_answer_exits_130(server, png: Path, isolated_env: Path) -> None:
    words = " ".join(f"word{i}" for i in range(90))
    server.enqueue(Reply(text=words, chunk_delay_s=0.3))  # about 9 s unless cancelled
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "ALIBABA_CLOUD_"))}
    env.update({"DASHSCOPE_API_KEY": API_KEY, "COLUMNS": "200"})
    (isolated_env / "lines.txt").write_bytes(b"first\nsecond\n")
    with ctrl_c_reaches_children(), (isolated_env / "lines.txt").open("rb") as lines:
        child = subprocess.Popen(
            [sys.executable, "-m", "qwenvl", "chat", str(png), "--base-url", server.url],
            stdin=lines,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=isolated_env,
        )
    try:
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline:  # the first answer is streaming
            time.sleep(0.05)
        assert server.requests, "the first turn was never sent"
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    stderr = err.decode()
    assert "answer cancelled" in stderr, stderr
    assert b"echo: second" in out  # the chat went on with the next message...
    assert child.returncode == 130, stderr  # ...and the script learns a turn was not answered
    assert "Traceback" not in stderr


def test_a_piped_chat_interrupted_while_waiting_for_input_exits_130(server, png: Path, isolated_env: Path) -> None:
    """Ctrl-C while the next piped line is awaited ends the chat as interrupted (lines still to come are never
    answered): exit 130, not "every turn was answered"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "ALIBABA_CLOUD_"))}
    env.update({"DASHSCOPE_API_KEY": API_KEY, "COLUMNS": "200"})
    with ctrl_c_reaches_children():
        child = subprocess.Popen(
            [sys.executable, "-m", "qwenvl", "chat", str(png), "--base-url", server.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=isolated_env,
        )
    try:
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        child.stdin.write(b"first\n")
        child.stdin.flush()  # the pipe stays open: the chat waits for the next line after answering
        assert b"echo: first" in child.stdout.readline()
        time.sleep(0.5)  # the turn ends (its answer is printed just before), then the next line is awaited
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:  # on a busy machine Ctrl-C landed in the turn's end: a cancelled answer,
            child.stdin.close()  # so the chat waits on; the end of input then ends it, with that turn's 130
        assert child.wait(timeout=60) == 130
        assert "Traceback" not in child.stderr.read().decode()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def folder(isolated_env: Path) -> Path:
    (isolated_env / "m" / "folder").mkdir(parents=True)
    write_image(isolated_env / "m" / "folder" / "a.png")
    write_image(isolated_env / "m" / "folder" / "b.png", color=(0, 200, 0))
    return isolated_env / "m" / "folder"


def test_image_command_expands_a_glob(server, env, folder: Path) -> None:
    p = run_cli("chat", env=env, input="/image m/folder/*\nwhat are these?\n")
    assert p.returncode == 0, p.stderr
    assert "attached m/folder/a.png, m/folder/b.png: 2 files" in p.stderr
    assert "echo: what are these? [images=2" in p.stdout


def test_image_command_glob_that_matches_nothing_is_an_input_error(server, env, folder: Path) -> None:
    p = run_cli("chat", env=env, input="/image m/folder/*.jpg\nhello\n")
    assert p.returncode == 3, p.stderr
    assert "no file matches 'm/folder/*.jpg'" in p.stderr
    assert "echo: hello [images=0" in p.stdout or "echo: hello" in p.stdout  # the chat went on


def test_the_library_conversation_expands_the_same_way(server, folder: Path, isolated_env: Path) -> None:
    with Client(api_key=API_KEY, base_url=server.url) as client:
        conv = Conversation(client)
        result = conv.command("/image 'm/folder/*.png'")
        assert result.outcome == "attached" and result.attached == ["m/folder/a.png", "m/folder/b.png"]
        assert conv.pending == 2
        missing = conv.command("image", "nothing/*.png")
        assert missing.outcome == "not-attached" and "no file matches" in str(missing.error)
        assert conv.pending == 2
