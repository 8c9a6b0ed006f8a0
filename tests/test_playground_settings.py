"""Every setting the playground's panel shows (Max tokens, Temperature, Thinking) is used by every mode that can use
it (Ask, Find, OCR, Extract), or is visibly disabled with the reason where it cannot (Thinking for Extract, whose
answer is JSON); a value of 0 or off reaches the upstream intact; a value the library refuses is the page's one-line
error in every mode, nothing sent; an answer stopped at max_tokens says so in every mode, as Ask does.

A real browser (Debian's chromium through Playwright) against ``qwenvl serve``'s app on loopback, in front of the
fake DashScope cloud, which records each request body: the fields are asserted where they arrive, upstream.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from dashscope_server import DashScopeServer, Reply
from test_playground import browser, page, site  # noqa: F401  (the browser, the served app, a page on it)

MODES = ("ask", "find", "ocr", "extract")
# what each mode's answer is: valid for the mode (Find a box list, Extract JSON for the schema)
ANSWERS = {
    "ask": "A pale sky with an orange square in it",
    "find": '[{"bbox_2d": [100, 200, 500, 600], "label": "square"}]',
    "ocr": "Some text read off the picture",
    "extract": '{"colour": "orange"}',
}
SCHEMA = '{"type":"object","properties":{"colour":{"type":"string"}}}'


@pytest.fixture
def photo(isolated_env: Path) -> Path:
    path = isolated_env / "photo.png"
    picture = Image.new("RGB", (400, 300), (200, 220, 240))
    ImageDraw.Draw(picture).rectangle((40, 60, 200, 180), fill=(240, 160, 40))
    picture.save(path)
    return path


def model_calls(server: DashScopeServer) -> list:
    return [r for r in server.requests if r.path.endswith(("/chat/completions", "/generation"))]


def settings(pg, *, max_tokens: str = "", temperature: str = "", thinking: str = "") -> None:
    pg.select_option("#model", "qwen3-vl-plus")  # a model with a thinking mode, off by default
    pg.click("#settings summary")
    pg.fill("#max_tokens", max_tokens)
    pg.fill("#temperature", temperature)
    if thinking and pg.is_enabled("#thinking"):
        pg.select_option("#thinking", thinking)
    pg.click("#settings summary")


def send(pg, mode: str, photo: Path) -> None:
    """The photo sent in ``mode`` (a fresh conversation each time); waits for the answer or the error line."""
    pg.click("#new")
    pg.check(f"input[value={mode}]")
    if mode == "extract":
        pg.fill("#schema", SCHEMA)
    pg.set_input_files("#files", str(photo))
    pg.wait_for_function("document.querySelector('#estimate').textContent.includes('before sending')")
    pg.fill("#prompt", "the square" if mode in ("ask", "find") else "")
    pg.click("#send")
    pg.wait_for_function("!document.querySelector('#stop') || document.querySelector('#stop').hidden")


@pytest.mark.parametrize("mode", MODES)
def test_max_tokens_temperature_0_and_thinking_off_reach_the_upstream_in_every_mode(page, server, photo, mode):  # noqa: F811
    settings(page, max_tokens="6", temperature="0", thinking="off")
    server.enqueue(Reply(text=ANSWERS[mode]))
    send(page, mode, photo)
    assert page.is_hidden("#error"), page.inner_text("#error")
    body = model_calls(server)[-1].json
    assert body["max_tokens"] == 6, body  # the limit is the one set, not the task's roomy default
    assert body["temperature"] == 0, body  # 0 is a value, not "the default"
    if mode == "extract":
        assert body.get("enable_thinking") is not True, body
    else:
        assert body["enable_thinking"] is False, body  # thinking off is said, not left to the model's default


@pytest.mark.parametrize("mode", ("ask", "find", "ocr"))
def test_thinking_on_reaches_the_upstream(page, server, photo, mode):  # noqa: F811
    settings(page, thinking="on")
    server.enqueue(Reply(text=ANSWERS[mode], reasoning="thinking it over"))
    send(page, mode, photo)
    assert page.is_hidden("#error"), page.inner_text("#error")
    assert model_calls(server)[-1].json["enable_thinking"] is True


def test_thinking_is_disabled_with_its_reason_for_extract_and_never_sent(page, server, photo):  # noqa: F811
    settings(page, thinking="on")
    page.check("input[value=extract]")
    assert page.is_disabled("#thinking")
    page.click("#settings summary")
    note = page.inner_text("#settings-note")
    assert "Thinking does not apply to Extract" in note and "non-thinking mode" in note, note
    page.click("#settings summary")
    server.enqueue(Reply(text=ANSWERS["extract"]))
    send(page, "extract", photo)
    assert page.is_hidden("#error"), page.inner_text("#error")
    assert "enable_thinking" not in model_calls(server)[-1].json
    page.check("input[value=find]")  # the setting is kept for the modes it applies to
    assert page.is_enabled("#thinking") and page.input_value("#thinking") == "on"
    assert page.is_hidden("#settings-note")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "field,value,said",
    [
        ("max_tokens", "0", "max_tokens should be greater than or equal to 1"),
        ("temperature", "2.5", "temperature should be less than 2"),
        ("max_tokens", "1.5", "max_tokens must be an integer"),
    ],
)
def test_a_value_the_library_refuses_is_one_line_in_every_mode_nothing_sent(
    page,  # noqa: F811
    server,
    photo,
    mode,
    field,
    value,
    said,
):
    settings(page, **{field: value})
    send(page, mode, photo)
    page.wait_for_selector("#error:not([hidden])")
    line = page.inner_text("#error")
    assert said in line and "\n" not in line.strip(), line
    assert not model_calls(server)  # refused before anything is sent (nothing paid)
    assert page.query_selector_all("#attachments li")  # the photo is given back, nothing lost


@pytest.mark.parametrize("mode", MODES)
def test_an_answer_stopped_at_max_tokens_says_so_in_every_mode(page, server, photo, mode):  # noqa: F811
    settings(page, max_tokens="6")
    # Find: nothing complete in the cut answer ("Nothing found"), which says it was cut off
    text = {"find": '[{"bbox_2d": [100, 200', "extract": '{"colour": "or'}.get(mode, ANSWERS[mode])
    server.enqueue(Reply(text=text, finish_reason="length"))
    send(page, mode, photo)
    if mode == "extract":  # JSON cut off is no extraction: refused in one line that says why
        page.wait_for_selector("#error:not([hidden])")
        line = page.inner_text("#error")
        assert "cut off at max_tokens (6 tokens)" in line and "\n" not in line.strip(), line
        return
    assert page.is_hidden("#error"), page.inner_text("#error")
    shown = page.inner_text(".msg.assistant")
    assert "raise Max tokens in Settings" in shown or "Raise Max tokens in Settings" in shown, shown
    assert "cut off" in shown.lower(), shown
    if mode == "find":
        assert "Nothing found." in shown


@pytest.mark.parametrize("mode", ("ask", "find", "ocr"))
def test_thinking_on_a_model_without_it_is_refused_with_the_reason_in_every_mode(page, server, photo, mode):  # noqa: F811
    settings(page, thinking="on")
    page.select_option("#model", "qwen2.5-vl-72b-instruct")
    send(page, mode, photo)
    page.wait_for_selector("#error:not([hidden])")
    line = page.inner_text("#error")
    assert "does not support thinking" in line and "\n" not in line.strip(), line
    assert not model_calls(server)  # refused before anything is sent


def test_detail_low_is_shown_not_to_apply_to_ask_and_applies_elsewhere(page):  # noqa: F811
    assert page.is_disabled("#detail option[value=low]")  # the page opens in Ask
    page.check("input[value=ocr]")
    page.click("#settings summary")
    page.select_option("#detail", "low")
    page.check("input[value=ask]")
    assert page.is_disabled("#detail option[value=low]")
    assert "Detail low does not apply to Ask" in page.inner_text("#settings-note")
    page.check("input[value=ocr]")
    assert page.is_enabled("#detail option[value=low]") and page.is_hidden("#settings-note")
    assert page.input_value("#detail") == "low"  # kept for the modes it applies to
