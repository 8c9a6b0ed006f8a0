"""An OCR that stopped keeps the pages it wrote to -o (paid for): the ledger marks the file partial, a later run
that would replace it is refused (exit 2, nothing sent) unless --force, and both the note after the stop and the
refusal give a command that keeps the pages (text, markdown: the rest appended, which is what one run writes;
json: the rest into another file)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from conftest import run_cli
from dashscope_server import Reply
from test_ocr_page_breaks import write_pdf

ANSWERS = ("page one", "page two", "page three", "page four")
FAILURE = Reply(status=500, error_code="InternalError", error_message="boom", times=10)


def ocr(env: dict[str, str], *args: str):
    p = run_cli("ocr", *args, env=env)
    assert "Traceback" not in p.stderr, p.stderr
    return p


@pytest.mark.parametrize(("fmt", "name"), [("text", "stop.txt"), ("markdown", "stop.md"), ("json", "stop.json")])
def test_a_stopped_reading_keeps_its_pages_in_its_output(server, env, isolated_env: Path, fmt, name):
    write_pdf(isolated_env / "doc.pdf", pages=4)
    server.enqueue(*(Reply(text=a) for a in ANSWERS))
    whole = ocr(env, "doc.pdf", "--format", fmt, "-o", "whole")  # what one reading writes
    assert whole.returncode == 0, whole.stderr
    server.reset()
    server.enqueue(Reply(text=ANSWERS[0]), Reply(text=ANSWERS[1]), FAILURE)
    first = ocr(env, "doc.pdf", "--format", fmt, "--max-retries", "0", "-o", name)
    assert first.returncode == 5, first.stderr
    kept = (isolated_env / name).read_bytes()
    assert "page 3 failed: only pages 1, 2 kept in stop." in first.stderr, first.stderr
    assert "shown" not in first.stderr
    advice = first.stderr.split("run it again with ", 1)[1].split(" in place of", 1)[0]
    # the resumed run onto the same file, as the user tried it: refused before anything is sent, pages kept
    server.reset()
    server.enqueue(Reply(text=ANSWERS[2]), Reply(text=ANSWERS[3]))
    again = ocr(env, "doc.pdf", "--format", fmt, "-o", name, "--pages", "3-")
    assert again.returncode == 2, again.stderr
    assert "stopped" in again.stderr and advice in again.stderr and "--force" in again.stderr, again.stderr
    assert server.requests == [] and (isolated_env / name).read_bytes() == kept
    # the advice followed keeps every page
    args = shlex.split(advice)
    if fmt == "json":
        assert args[:2] == ["--pages", "3-"] and args[2] == "-o" and args[3] != name
        rest = ocr(env, "doc.pdf", "--format", fmt, *args)
        assert rest.returncode == 0, rest.stderr
        first_doc, rest_doc = json.loads(kept), json.loads((isolated_env / args[3]).read_text())
        assert [p["page"] for p in first_doc["pages"] + rest_doc["pages"]] == [1, 2, 3, 4]
    else:
        assert args == ["--pages", "3-", ">>", name]
        rest = ocr(env, "doc.pdf", "--format", fmt, "--pages", "3-")
        assert rest.returncode == 0, rest.stderr
        assert kept + rest.stdout.encode() == (isolated_env / "whole").read_bytes()  # what one run writes
    # --force still replaces it, and a complete output is then replaced by a re-run as before
    server.reset()
    server.enqueue(*(Reply(text=a) for a in ANSWERS), *(Reply(text=a) for a in ANSWERS))
    assert ocr(env, "doc.pdf", "--format", fmt, "-o", name, "--force").returncode == 0
    assert ocr(env, "doc.pdf", "--format", fmt, "-o", name).returncode == 0


def test_an_output_changed_since_is_said_so(server, env, isolated_env: Path):
    """A qwenvl output changed since it was written is refused as changed, not as never written by qwenvl."""
    import os

    write_pdf(isolated_env / "doc.pdf", pages=1)
    server.enqueue(Reply(text="hello"))
    assert ocr(env, "doc.pdf", "-o", "out.txt").returncode == 0
    st = os.stat(isolated_env / "out.txt")
    os.utime(isolated_env / "out.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touch
    p = ocr(env, "doc.pdf", "-o", "out.txt")
    assert p.returncode == 2 and "was changed since qwenvl wrote it" in p.stderr, p.stderr
    assert "not written by qwenvl" not in p.stderr
