"""An answer that has fully arrived is the conversation's, whatever interrupts the chat after that (it was paid):
a Ctrl-C while the terminal is still being written to after the last delta keeps it; only an answer still
arriving is cancelled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import qwenvl.cli.render as render
from conftest import run_cli
from dashscope_server import DashScopeServer, Reply


def _interrupt_once(monkeypatch: pytest.MonkeyPatch, name: str) -> list[bool]:
    """``render.NAME`` raising KeyboardInterrupt (as a SIGINT arriving there would) the first time it is called."""
    real = getattr(render, name)
    raised: list[bool] = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        if not raised:
            raised.append(True)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(render, name, interrupted)
    return raised


def test_a_ctrl_c_after_the_answer_arrived_keeps_it(
    server: DashScopeServer, env: dict[str, str], isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.enqueue(Reply(text="the first answer"))
    raised = _interrupt_once(monkeypatch, "warn_answer")  # the notes after the answer: the stream is over
    p = run_cli("chat", "--session", "kept", env=env, input="first\nsecond\n")
    assert raised and p.returncode == 0, p.stderr
    assert "cancelled" not in p.stderr and "interrupted after the answer arrived: kept" in p.stderr, p.stderr
    assert "the first answer" in p.stdout
    second = server.requests[-1].json["messages"]  # the next turn carries the answer kept
    assert [m["role"] for m in second] == ["user", "assistant", "user"], second
    saved = json.loads(next((isolated_env.parent / "home" / ".qwenvl").rglob("kept*.json")).read_text())
    assert any(m.get("role") == "assistant" for m in saved["messages"]), saved


def test_a_ctrl_c_while_the_answer_arrives_cancels_it(
    server: DashScopeServer, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.enqueue(Reply(text="an answer cut short"))
    raised = _interrupt_once(monkeypatch, "shown")  # writing a delta: the stream is not over
    p = run_cli("chat", env=env, input="first\nsecond\n")
    assert raised and p.returncode == 130, p.stderr
    assert "answer cancelled: not added to the conversation" in p.stderr, p.stderr
    second = server.requests[-1].json["messages"]
    assert [m["role"] for m in second] == ["user"], second  # the cancelled answer is not in the conversation
