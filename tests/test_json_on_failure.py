"""With --json (and `ocr --format json`), stdout holds JSON whatever happens (README, "Errors and exit codes").

A new user found `ocr doc.pdf --format json` printed nothing when page 1 failed (their `json.load` failed) but a
JSON with `stopped_at` when page 2 did. Now OCR's JSON always comes, with `stopped_at` and the `error`; and every
verb with --json that fails before it has a result prints `{"error": {...}}` (one line), the error line on stderr
and the error's exit code as ever. Without --json stdout stays empty on a failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli, write_image
from dashscope_server import Reply

FAILURE = Reply(status=500, error_code="InternalError", error_message="boom", times=10)
ERROR_KEYS = {"type", "message", "hint", "status", "request_id", "exit_code"}


@pytest.fixture
def doc(isolated_env: Path) -> Path:
    pages = [Image.new("RGB", (400, 560), c) for c in ("white", "lightgray", "white")]
    pages[0].save(isolated_env / "doc.pdf", save_all=True, append_images=pages[1:])
    write_image(isolated_env / "a.png")
    return isolated_env / "doc.pdf"


def test_ocr_json_when_the_first_page_fails(server, env, doc: Path) -> None:
    server.enqueue(FAILURE)
    p = run_cli("ocr", "doc.pdf", "--format", "json", "--max-retries", "0", env=env)
    assert p.returncode == 5, p.stderr
    out = json.loads(p.stdout)
    assert out["pages"] == [] and out["stopped_at"] == 1 and out["text"] == ""
    assert set(out["error"]) == ERROR_KEYS and out["error"]["status"] == 500 and out["error"]["exit_code"] == 5
    assert "error:" in p.stderr and "Traceback" not in p.stderr
    assert "no text found" not in p.stderr  # it was never read


def test_ocr_json_when_a_later_page_fails_says_the_error_too(server, env, doc: Path) -> None:
    server.enqueue(Reply(text="page one"), FAILURE)
    p = run_cli("ocr", "doc.pdf", "--format", "json", "--max-retries", "0", env=env)
    assert p.returncode == 5, p.stderr
    out = json.loads(p.stdout)
    assert [pg["page"] for pg in out["pages"]] == [1] and out["stopped_at"] == 2
    assert out["error"]["exit_code"] == 5
    assert "page 2 failed: only page 1 shown" in p.stderr


def test_ocr_json_for_an_input_error_before_any_page(server, env, doc: Path) -> None:
    p = run_cli("ocr", "missing.pdf", "--format", "json", env=env)
    assert p.returncode == 3
    assert json.loads(p.stdout)["error"]["exit_code"] == 3
    assert not server.requests


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "a.png", "-p", "what?", "--json"],
        ["ground", "a.png", "dog", "--json"],
        ["events", "a.png", "a.png", "--json"],
    ],
)
def test_a_service_failure_with_json_is_json(args: list[str], server, env, doc: Path) -> None:
    server.enqueue(FAILURE)
    p = run_cli(*args, "--max-retries", "0", env=env)
    assert p.returncode == 5, p.stderr
    assert len(p.stdout.splitlines()) == 1  # one document, one line
    error = json.loads(p.stdout)["error"]
    assert set(error) == ERROR_KEYS and error["status"] == 500 and "boom" in error["message"]
    assert error["request_id"]  # the service's id, to quote when asking for help
    assert p.stderr.startswith("error:")
    server.enqueue(FAILURE)
    plain = run_cli(*[a for a in args if a != "--json"], "--max-retries", "0", env=env)
    assert plain.returncode == 5 and plain.stdout == ""  # without --json, nothing on stdout


@pytest.mark.parametrize(
    "args, code",
    [
        (["ask", "missing.png", "-p", "what?", "--json"], 3),
        (["tokens", "nothing/*.png", "--json"], 3),
        (["batch", "a.png", "-o", "r.jsonl", "--json"], 2),  # no prompt
        (["ground", "a.png", "dog", "--json", "--out", "a.png"], 2),  # an output over its input
    ],
)
def test_an_error_before_any_result_with_json_is_json(args: list[str], code: int, server, env, doc: Path) -> None:
    p = run_cli(*args, env=env)
    assert p.returncode == code, p.stderr
    error = json.loads(p.stdout)["error"]
    assert error["exit_code"] == code and error["message"] in p.stderr.splitlines()[0]
    assert not server.requests


def test_success_with_json_is_one_document(server, env, doc: Path) -> None:
    server.enqueue(Reply(text="a red square"))
    p = run_cli("ask", "a.png", "-p", "what?", "--json", env=env)
    assert p.returncode == 0 and json.loads(p.stdout)["text"] == "a red square"


@pytest.mark.parametrize("how", ["service", "planning"])
def test_ocr_json_of_an_image_stops_at_no_page_however_it_fails(server, env, doc: Path, how: str) -> None:
    """An image has no page: ``stopped`` true and ``stopped_at`` null (as its page is), whether its request failed or
    planning it did (a refused option: nothing sent); the JSON names the model asked; the library says the same."""
    import qwenvl
    from conftest import API_KEY
    from qwenvl.tasks.ocr import OCRResult, plan_pages, send_pages

    args = ["--max-tokens", "99999999"] if how == "planning" else []
    if how == "service":
        server.enqueue(FAILURE)
    p = run_cli("ocr", "a.png", "--format", "json", "--max-retries", "0", *args, env=env)
    assert p.returncode in (2, 5), p.stderr
    out = json.loads(p.stdout)
    assert out["pages"] == [] and out["stopped"] is True and out["stopped_at"] is None, out
    assert out["model"] == "qwen3-vl-plus", out  # the model asked: none answered
    fields = {"max_tokens": 99999999} if how == "planning" else {}
    result = OCRResult(source="a.png", format="text")
    with qwenvl.Client(api_key=API_KEY, base_url=server.url, usage_log=False, max_retries=0) as client:
        if how == "service":
            server.enqueue(FAILURE)
        plans = plan_pages(client, str(doc.parent / "a.png"), **fields)
        with pytest.raises(qwenvl.QwenVLError):
            send_pages(client, str(doc.parent / "a.png"), plans, result=result)
    assert result.stopped and result.stopped_at is None
