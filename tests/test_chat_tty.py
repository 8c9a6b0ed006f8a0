"""`qwenvl chat` on a real terminal (a pseudo-terminal): line editing and history with prompt_toolkit."""

from __future__ import annotations

import os
import sys

import pexpect

from conftest import API_KEY


def test_chat_line_editing_and_history(server, png, isolated_env):
    env = {**os.environ, "DASHSCOPE_API_KEY": API_KEY, "TERM": "xterm", "COLUMNS": "120", "LINES": "30"}
    child = pexpect.spawn(sys.executable, ["-m", "qwenvl", "chat", str(png), "--base-url", server.url,
                                           "--session", "tty"], env=env, cwd=str(isolated_env),
                          encoding="utf-8", timeout=30, dimensions=(30, 120))
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
