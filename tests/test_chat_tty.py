"""`qwenvl chat` on a real terminal (a pseudo-terminal): line editing and history with prompt_toolkit."""

from __future__ import annotations

import os
import sys

import pexpect
import pytest

from conftest import API_KEY, ctrl_c_reaches_children, run_cli
from dashscope_server import Reply
from qwenvl.errors import terminal_safe


def test_chat_line_editing_and_history(server, png, isolated_env):
    env = {**os.environ, "DASHSCOPE_API_KEY": API_KEY, "TERM": "xterm", "COLUMNS": "120", "LINES": "30"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "qwenvl", "chat", str(png), "--base-url", server.url, "--session", "tty"],
        env=env,
        cwd=str(isolated_env),
        encoding="utf-8",
        timeout=30,
        dimensions=(30, 120),
    )
    try:
        child.expect("you>")
        child.send("hello wrld")
        child.send("\x1b[D\x1b[D\x1b[D")  # left arrow x3: the cursor moves back into the word...
        child.send("o")  # ...where the missing letter goes: line editing
        child.send("\r")
        child.expect(r"echo: hello world \[images=1")
        child.expect("you>")
        child.send("\x1b[A")  # up arrow: the previous line from the history
        child.send("\r")
        child.expect(r"echo: hello world \[images=1")
        child.expect("you>")
        child.send("\x04")  # Ctrl-D ends the conversation
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert [r.json["messages"][-1]["content"][-1]["text"] for r in server.requests] == ["hello world"] * 2
    assert "+hello world" in (isolated_env.parent / "home" / ".qwenvl" / "chat_history").read_text()


def _spawn(server, isolated_env, *args: str) -> pexpect.spawn:
    env = {**os.environ, "DASHSCOPE_API_KEY": API_KEY, "TERM": "xterm", "COLUMNS": "120", "LINES": "30"}
    with ctrl_c_reaches_children():
        return pexpect.spawn(
            sys.executable,
            ["-m", "qwenvl", "chat", *args, "--base-url", server.url],
            env=env,
            cwd=str(isolated_env),
            encoding="utf-8",
            timeout=30,
            dimensions=(30, 120),
        )


def test_ctrl_c_cancels_the_answer_then_ends_the_chat_at_the_prompt(server, png, isolated_env):
    words = " ".join(f"word{i}" for i in range(90))
    server.enqueue(Reply(text=words, chunk_delay_s=0.4))  # 30 chunks: about 12 s if nobody stops it
    child = _spawn(server, isolated_env, str(png), "--session", "cc")
    try:
        child.expect("you>")
        child.send("/help\r")  # answered here: never sent
        child.expect("/reset")
        child.expect("you>")
        child.send("/foo\r")
        child.expect("unknown command")
        child.expect("you>")
        child.send("tell me a long story\r")
        child.expect("word3")  # the answer is streaming...
        child.send("\x03")  # ...Ctrl-C: this answer is cancelled, the chat goes on
        child.expect("answer cancelled")
        child.expect("you>")
        child.send("short one\r")
        child.expect(r"echo: short one \[images=1")
        child.expect("you>")
        child.send("\x03")  # Ctrl-C at the prompt ends the chat
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    model_calls = [r for r in server.requests if r.json]
    assert len(model_calls) == 2  # /help and /foo were never sent
    second = model_calls[1].json["messages"]
    assert [m["role"] for m in second] == ["user"]  # the cancelled turn is not in the conversation
    assert second[0]["content"][-1]["text"] == "short one"
    assert second[0]["content"][0]["type"] == "image_url"  # the attachment stayed for the next try


# An answer that would clear the screen, retitle the window and colour what follows, with a bidi override.
HOSTILE = "one\x1b[2J two\x1b]0;pwned\x07 three\x1b[31m four\u202e five\rsix\tseven\nnext line"
RAW = ("\x1b[2J", "\x1b]0;pwned", "\x1b[31m four", "\u202e", "five\rsix")


def _run_on_terminal(server, isolated_env, *args: str, send: str = "") -> str:
    env = {**os.environ, "DASHSCOPE_API_KEY": API_KEY, "TERM": "xterm", "COLUMNS": "200", "LINES": "30"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "qwenvl", *args, "--base-url", server.url],
        env=env,
        cwd=str(isolated_env),
        encoding="utf-8",
        timeout=30,
        dimensions=(30, 200),
    )
    try:
        if send:
            child.expect("you>")
            child.send(send)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    return child.before


def _is_safe(seen: str) -> None:
    for raw in RAW:
        assert raw not in seen
    for escaped in (r"\x1b[2J", r"\x1b]0;pwned\x07", r"\x1b[31m four", r"\u202e", r"five\rsix"):
        assert escaped in seen  # shown, escaped, not lost
    assert "six\tseven" in seen.replace("\r\n", "\n") or "six    seven" in seen  # tabs and lines kept


@pytest.mark.parametrize("verb", [("ask", "x"), ("ask", "x", "--no-stream"), ("ocr",)])
def test_model_text_is_made_safe_on_a_terminal(server, png, isolated_env, verb):
    """Answers and reasoning, streamed or whole, printed to a terminal cannot drive it (every verb prints through
    ``shown``)."""
    server.enqueue(Reply(text=HOSTILE, reasoning="think\x1b[2J hard" if verb[0] == "ask" else None))
    seen = _run_on_terminal(server, isolated_env, *verb, str(png))
    _is_safe(seen)
    if verb[0] == "ask":
        assert r"think\x1b[2J hard" in seen


def test_chat_answers_and_history_are_made_safe_on_a_terminal(server, png, isolated_env):
    server.enqueue(Reply(text=HOSTILE))
    seen = _run_on_terminal(server, isolated_env, "chat", send="hi\r/history\r\x04")
    _is_safe(seen)
    assert seen.count(r"\x1b[2J") == 2  # the answer, then the history


def test_a_piped_answer_stays_byte_exact(server, png, env):
    server.enqueue(Reply(text=HOSTILE))
    p = run_cli("ask", "x", str(png), env=env)
    assert p.returncode == 0 and p.stdout == HOSTILE + "\n"


def test_terminal_safe_keeps_lines_and_tabs_and_shows_every_other_control():
    assert terminal_safe("a\r\nb\tc\x1b[0m\x07\x9b\u2066") == "a\nb\tc\\x1b[0m\\x07\\x9b\\u2066"
    assert terminal_safe("plain, ünïcode ✓") == "plain, ünïcode ✓"
