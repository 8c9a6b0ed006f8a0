"""`qwenvl chat` on a real terminal (a pseudo-terminal): line editing and history with prompt_toolkit."""

from __future__ import annotations

import os
import sys

import pexpect

from conftest import API_KEY, ctrl_c_reaches_children
from dashscope_server import Reply


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
