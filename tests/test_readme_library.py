"""The README's library section against the code: every Request and Response field is named there (a field added
without a word in the README is caught here), and nothing it names as a field is gone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, write_image
from dashscope_server import DashScopeServer, Reply

README = Path(__file__).resolve().parents[1] / "README.md"


def _between(start: str, end: str) -> set[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(start) : text.index(end, text.index(start))]
    return set(re.findall(r"`(\w+)`", section))


def test_the_readme_names_every_request_field() -> None:
    named = _between("`Request` fields:", "`Response`:")
    assert set(qwenvl.Request.model_fields) - named == set()
    assert named - set(qwenvl.Request.model_fields) - {"Request", "StructuredOutputError"} == set()


def test_the_readme_names_every_response_field() -> None:
    named = _between("`Response`:", "`qwenvl.notes.answer_notes")
    assert set(qwenvl.Response.model_fields) - named == set()
    properties = {"parsed"}  # a property, not a field
    assert named - set(qwenvl.Response.model_fields) - properties - {"Response", "box"} == set()


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)


def test_every_python_block_of_the_readme_compiles() -> None:
    """``async with`` at module level (a SyntaxError) or any other block that cannot run as written is caught."""
    blocks = _python_blocks()
    assert len(blocks) >= 4
    for block in blocks:
        compile(block, "README.md", "exec")


def test_the_library_examples_run_as_written(
    server: DashScopeServer, isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The library section's block and the chat's Conversation block, executed as they stand against the loopback
    service (the files they name made in the current folder): the sync, streamed, structured and asyncio calls."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    monkeypatch.setenv("DASHSCOPE_COMPATIBLE_BASE_URL", server.compat_base)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", server.native_base)
    for name in ("photo.jpg", "a.png", "invoice.png", "beach.jpg"):
        write_image(isolated_env / name)
    library = next(b for b in _python_blocks() if "qwenvl.AsyncClient()" in b)
    conversation = next(b for b in _python_blocks() if "Conversation(" in b)
    # five echoed answers, then the invoice as JSON; the asyncio call is echoed again
    server.enqueue(*[Reply() for _ in range(5)], Reply(text='{"title": "Rent", "amount": 12.5}'))
    names: dict = {"__name__": "readme"}
    exec(compile(library, "README.md", "exec"), names)
    names["client"].close()  # (the README leaves its clients open)
    asked = [r for r in server.requests if r.json is not None]
    assert len(asked) == 7  # the asyncio block ran: its request reached the service
    names = {"__name__": "readme"}
    exec(compile(conversation, "README.md", "exec"), names)
    names["conv"].client.close()
    assert "What is here?" in capsys.readouterr().out
