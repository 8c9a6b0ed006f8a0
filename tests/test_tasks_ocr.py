"""`qwenvl ocr` through the CLI: text, Markdown, lines with boxes, qwen-vl-ocr's ocr_options, PDFs."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import qwenvl
from conftest import API_KEY, run_cli, write_image
from dashscope_server import Reply


@pytest.fixture
def scan(isolated_env):
    return write_image(isolated_env / "scan.png", (640, 480), (255, 255, 255))


def params(server) -> dict:
    body = server.requests[-1].json
    return body.get("parameters", body)


def ocr(env, *args):
    p = run_cli("ocr", *args, env=env)
    assert "Traceback" not in p.stderr
    return p


def test_text(server, env, scan, protocol):
    server.enqueue(Reply(text="INVOICE 2024-001\nTotal: 42.00"))
    p = ocr(env, "scan.png", "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "INVOICE 2024-001\nTotal: 42.00\n"
    assert params(server)["max_tokens"] == 4096
    assert "ocr_options" not in params(server)


def test_markdown_unfenced(server, env, scan):
    server.enqueue(Reply(text="```markdown\n# Invoice\n\n| item | price |\n|---|---|\n| tea | 3 |\n```"))
    p = ocr(env, "scan.png", "--format", "markdown")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "# Invoice\n\n| item | price |\n|---|---|\n| tea | 3 |\n"


def test_json_lines_with_boxes_qwen3(server, env, scan, protocol):
    server.enqueue(
        Reply(
            text='```json\n[{"bbox_2d": [100, 100, 500, 200], "text_content": "INVOICE"},\n'
            ' {"bbox_2d": [100, 250, 900, 300], "text_content": "Total: 42.00"}]\n```'
        )
    )
    p = ocr(env, "scan.png", "--format", "json", "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["text"] == "INVOICE\nTotal: 42.00"
    assert out["pages"][0]["lines"] == [
        {"text": "INVOICE", "x1": 64, "y1": 48, "x2": 320, "y2": 96},
        {"text": "Total: 42.00", "x1": 64, "y1": 120, "x2": 576, "y2": 144},
    ]
    assert out["warnings"] == []


def test_qwen_vl_ocr_task_and_options_pass_through(server, env, scan, protocol):
    answer = {
        "words_info": [
            {"rotate_rect": [120, 40, 200, 40, 0], "location": [20, 20, 220, 20, 220, 60, 20, 60], "text": "HELLO"}
        ]
    }
    server.enqueue(Reply(text=json.dumps(answer)))
    p = ocr(
        env,
        "scan.png",
        "--model",
        "qwen-vl-ocr-latest",
        "--task",
        "advanced_recognition",
        "--format",
        "json",
        "--protocol",
        protocol,
    )
    assert p.returncode == 0, p.stderr
    assert params(server)["ocr_options"] == {"task": "advanced_recognition"}
    out = json.loads(p.stdout)  # qwen-vl-ocr answers in pixels of the image as seen (640x480 here)
    assert out["pages"][0]["lines"] == [{"text": "HELLO", "x1": 20, "y1": 20, "x2": 220, "y2": 60}]
    assert "may ignore" not in p.stderr

    server.enqueue(Reply(text='{"name": "Tea"}'))
    options = {"task": "key_information_extraction", "task_config": {"result_schema": {"name": "the name"}}}
    p = ocr(env, "scan.png", "-m", "qwen-vl-ocr", "--ocr-options", json.dumps(options), "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    assert params(server)["ocr_options"] == options


def test_ocr_options_in_extra_on_a_general_model_are_refused_everywhere(server, env, scan, protocol):
    """Found by a new user: `ocr --param ocr_options=...` (and `ask --param`) was sent to qwen3-vl-plus, which
    ignores it, while `ocr --task` on it is refused; the request's plan refuses it in the same words, for every path
    (the verbs, the library, serve)."""
    opts = 'ocr_options={"task": "table_parsing"}'
    for verb in (["ocr", "scan.png"], ["ask", "scan.png", "Read it"]):
        p = run_cli(*verb, "--param", opts, "--protocol", protocol, env=env)
        assert p.returncode == 2, p.stderr
        assert "ocr_options (--param) is read only by the qwen-vl-ocr models" in p.stderr, p.stderr
        assert "qwen3-vl-plus (qwen3-vl) would ignore it: nothing was sent" in p.stderr
    assert server.requests == []
    extra = {"ocr_options": {"task": "table_parsing"}}
    with qwenvl.Client(api_key=API_KEY, base_url=server.url, protocol=protocol) as client:
        with pytest.raises(qwenvl.UsageError) as err:
            client.ask("Read it", str(scan), extra=extra)
        assert "ocr_options (extra) is read only by the qwen-vl-ocr models" in str(err.value)
        client.ask("Read it", str(scan), extra=extra, model="qwen-vl-ocr")  # the model that reads it: sent
    assert params(server)["ocr_options"] == {"task": "table_parsing"}


def test_serve_refuses_ocr_options_for_a_model_that_does_not_read_them(server, scan):
    import httpx

    from qwenvl.server.app import ServeSettings, create_app
    from test_serve import SERVE_KEY, Served

    client = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url)
    body = {"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": "hi"}], "ocr_options": {"task": "x"}}
    with Served(create_app(client, ServeSettings(api_key=SERVE_KEY))) as s:
        reply = httpx.post(
            s.url + "/compatible-mode/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {SERVE_KEY}"},
            timeout=60,
        )
    assert reply.status_code == 400, reply.text
    assert "read only by the qwen-vl-ocr models" in reply.text
    assert not [r for r in server.requests if r.method == "POST"]


def test_ocr_options_on_a_general_model_are_refused(server, env, scan):
    """Found by a new user: `ocr --task table_parsing` on the default qwen3-vl-plus printed a note that it "may
    ignore it" and sent it; only the qwen-vl-ocr models read ocr_options (the official Qwen-OCR page), and an option
    that does not apply is refused, never ignored: exit 2, nothing sent, in the CLI's and the library's words."""
    for extra in (["--task", "table_parsing"], ["--ocr-options", '{"task": "table_parsing"}']):
        p = ocr(env, "scan.png", *extra)
        assert p.returncode == 2, p.stderr
        assert f"error: {extra[0]} (the service's ocr_options) is read only by the qwen-vl-ocr models" in p.stderr
        assert "qwen3-vl-plus (qwen3-vl) would ignore it" in p.stderr and "Add --model qwen-vl-ocr" in p.stderr
    assert server.requests == []
    with qwenvl.Client(api_key=API_KEY, base_url=server.url) as client, pytest.raises(qwenvl.UsageError) as err:
        qwenvl.tasks.ocr(client, str(scan), task="table_parsing")
    assert "task (the service's ocr_options)" in str(err.value) and "--" not in str(err.value)
    assert server.requests == []


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_empty_result_exits_0_with_a_note(server, env, scan, fmt):
    server.enqueue(Reply(text="" if fmt == "text" else "[]"))
    p = ocr(env, "scan.png", "--format", fmt)
    assert p.returncode == 0, p.stderr
    assert "no text found in scan.png" in p.stderr
    if fmt == "text":
        assert p.stdout == ""
    else:
        out = json.loads(p.stdout)
        assert out["text"] == "" and out["pages"][0]["lines"] == []


def test_json_answer_without_boxes_keeps_the_text(server, env, scan):
    server.enqueue(Reply(text="Just some words."))
    out = json.loads(ocr(env, "scan.png", "--format", "json").stdout)
    assert out["text"] == "Just some words." and out["pages"][0]["lines"] == []
    assert "no line boxes" in out["warnings"][0]


def test_cut_off_text_is_said(server, env, scan):
    server.enqueue(Reply(text="a long page that goes on", finish_reason="length"))
    p = ocr(env, "scan.png", "--max-tokens", "5")
    assert p.returncode == 0 and "cut off at max_tokens (5 tokens)" in p.stderr


def test_pdf_one_request_per_page(server, env, isolated_env, protocol):
    pages = [Image.new("RGB", (400, 560), c) for c in ("white", "lightgray", "white")]
    pages[0].save(isolated_env / "doc.pdf", save_all=True, append_images=pages[1:])
    server.enqueue(Reply(text="page one"), Reply(text=""), Reply(text="page three"))
    p = ocr(env, "doc.pdf", "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "page one\n\f\fpage three\n\f"  # each page ended by a form feed, a blank one too
    assert len(server.requests) == 3 and "no text found on page 2" in p.stderr
    server.reset()
    server.enqueue(Reply(text='[{"bbox_2d": [0, 0, 1000, 1000], "text_content": "all"}]'))
    out = json.loads(ocr(env, "doc.pdf", "--pages", "2", "--format", "json").stdout)
    assert len(server.requests) == 1 and out["pages"][0]["page"] == 2
    line = out["pages"][0]["lines"][0]  # in the rendered page's pixels
    assert (line["x2"], line["y2"]) == (out["pages"][0]["width"], out["pages"][0]["height"])


def test_a_failed_page_keeps_the_pages_read_before_it(server, env, isolated_env, client):
    """A PDF's page 3 fails after pages 1-2 were read (and paid for): their text is printed (or written to -o,
    with ``stopped_at`` in JSON), a note names the failed page, and the exit code is the error's. The library
    keeps them too, in the OCRResult given to ``send_pages``."""
    pages = [Image.new("RGB", (400, 560), c) for c in ("white", "lightgray", "white", "white")]
    pages[0].save(isolated_env / "doc.pdf", save_all=True, append_images=pages[1:])
    failure = Reply(status=500, error_code="InternalError", error_message="boom", times=10)
    server.enqueue(Reply(text="page one"), Reply(text="page two"), failure)
    p = ocr(env, "doc.pdf", "--max-retries", "0")
    assert p.returncode == 5 and p.stdout == "page one\n\fpage two\n\f", p.stderr
    assert "page 3 failed: only pages 1, 2 shown" in p.stderr and "error:" in p.stderr
    assert len(server.requests) == 3  # page 4 is not sent after the failure
    server.reset()
    server.enqueue(Reply(text="page one"), failure)
    p = ocr(env, "doc.pdf", "--max-retries", "0", "--format", "json", "-o", "out.json")
    out = json.loads((isolated_env / "out.json").read_text())
    assert p.returncode == 5 and out["stopped_at"] == 2 and [pg["page"] for pg in out["pages"]] == [1]
    server.reset()
    server.enqueue(failure)
    p = ocr(env, "doc.pdf", "--max-retries", "0", "-o", "none.txt")
    assert p.returncode == 5 and not (isolated_env / "none.txt").exists()  # nothing read: nothing written

    from qwenvl.errors import APIError
    from qwenvl.tasks.ocr import OCRResult, plan_pages, send_pages

    server.reset()
    server.enqueue(Reply(text="one"), failure)
    result = OCRResult(source="doc.pdf", format="text")
    with pytest.raises(APIError):
        send_pages(client, "doc.pdf", plan_pages(client, "doc.pdf", max_retries=0), result=result)
    assert result.text == "one\n\f" and result.stopped_at == 2 and len(result.responses) == 1


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["scan.png", "--ocr-options", "{task"], 2, "--ocr-options is not valid JSON"),
        (["scan.png", "--ocr-options", "[1]"], 2, "must be a JSON object"),
        (["scan.png", "--format", "xml"], 2, "Invalid value"),
        (["scan.png", "--pages", "1"], 2, "PDFs only"),
        (["scan.png", "--schema", "s.json"], 2, "--schema does not apply"),
        (["nothing.png"], 3, "not found"),
    ],
)
def test_ocr_bad_input(server, env, scan, args, code, needle):
    p = ocr(env, *args)
    assert p.returncode == code, p.stderr
    assert needle in p.stderr and server.requests == []


def test_library_ocr(client, server, scan):
    from qwenvl import tasks

    server.enqueue(Reply(text='[{"bbox_2d": [0, 0, 500, 500], "text_content": "Hi"}]'))
    r = tasks.ocr(client, str(scan), format="json")
    assert r.text == "Hi" and r.pages[0].lines[0].x2 == 320 and not r.empty
    server.enqueue(Reply(text="Hi"))
    r = tasks.ocr(client, str(scan), model="qwen-vl-ocr", task="text_recognition")
    assert r.text == "Hi" and params(server)["ocr_options"] == {"task": "text_recognition"}
    server.enqueue(Reply(text="   "))
    r = tasks.ocr(client, str(scan))
    assert r.empty and r.warnings == ["no text found"]
