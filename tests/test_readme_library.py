"""The README's library section against the code: every Request and Response field is named there (a field added
without a word in the README is caught here), and nothing it names as a field is gone."""

from __future__ import annotations

import re
from pathlib import Path

import qwenvl

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
