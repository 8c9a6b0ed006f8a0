"""The web playground in a real browser (Debian's chromium driven by Playwright, no browser download).

The server is `qwenvl serve`'s app in front of the streaming loopback upstream; the page is used as a person
would: key, file picker, estimate, ask, find, error, reload. Skipped, with the reason, when chromium or
Playwright is not installed (`.ci/run` installs both).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from dashscope_server import DashScopeServer, Reply
from test_serve import SERVE_KEY, Served, gateway

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def site(server: DashScopeServer) -> Iterator[Served]:
    with gateway(server) as s:
        yield s


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(site.url + "/")
    pg.fill("#keyinput", SERVE_KEY)  # the page asks for the key once (the models list needs it)
    pg.click("#keydialog button")
    pg.wait_for_function("document.querySelector('#model').options.length > 0")
    yield pg
    context.close()
    assert not errors, errors


ANSWER = "An orange square on a pale blue background, a little left of centre."


def canvas_pixel(pg, x: int, y: int) -> list[int]:
    return pg.evaluate(f"""() => {{
        const c = document.querySelector('.msg.assistant canvas');
        return Array.from(c.getContext('2d').getImageData({x}, {y}, 1, 1).data).slice(0, 3);
    }}""")


def test_estimate_ask_stream_find_error_reload(page, site, server, isolated_env, tmp_path):
    photo = isolated_env / "photo.png"
    picture = Image.new("RGB", (400, 300), (200, 220, 240))  # a pale sky with an orange square
    ImageDraw.Draw(picture).rectangle((40, 60, 200, 180), fill=(240, 160, 40))
    picture.save(photo)
    # 1. the estimate is shown before anything is sent, and it is the server's (the same as `qwenvl tokens`)
    page.set_input_files("#files", str(photo))
    page.wait_for_function("document.querySelector('#estimate').textContent.includes('before sending')")
    url = "data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode()
    want = httpx.post(
        site.url + "/qwenvl/v1/estimate",
        json={"model": "qwen3-vl-plus", "images": [url]},
        headers={"Authorization": f"Bearer {SERVE_KEY}"},
    ).json()
    assert f"{want['total_tokens']:,} tokens" in page.inner_text("#estimate")
    assert "400×300" in page.inner_text("#attachments")
    assert not [r for r in server.requests if "chat" in r.path]  # nothing sent yet

    # 2. ask: the answer streams in
    server.enqueue(Reply(text=ANSWER, chunk_delay_s=0.15))
    page.fill("#prompt", "What is this?")
    page.press("#prompt", "Enter")
    page.wait_for_function("document.querySelector('#stop') && !document.querySelector('#stop').hidden")
    seen = set()
    for _ in range(200):
        text = page.inner_text(".msg.assistant .text") if page.query_selector(".msg.assistant .text") else ""
        seen.add(text)
        if text == ANSWER:
            break
        page.wait_for_timeout(25)
    assert ANSWER in seen
    assert len([s for s in seen if s and s != ANSWER]) >= 1, seen  # it arrived in pieces
    sent = [r for r in server.requests if "chat" in r.path][-1].json
    assert sent["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/")

    # 3. find: boxes drawn at the right pixels (Qwen3-VL answers in 0-1000 relative coordinates)
    server.enqueue(Reply(text='```json\n[{"bbox_2d": [100, 200, 500, 600], "label": "square"}]\n```'))
    page.check("input[value=find]")
    page.fill("#prompt", "the square")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".msg.assistant canvas[data-drawn='1']")
    # the box is 40,60 - 200,180 in the 400x300 original; its left edge at x=40 is drawn in the box colour
    assert canvas_pixel(page, 40, 120) == [255, 45, 85]
    assert canvas_pixel(page, 120, 120) == [240, 160, 40]  # inside the box: the picture itself
    assert canvas_pixel(page, 300, 250) == [200, 220, 240]  # outside: untouched
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS"):
        page.screenshot(path=str(DOCS / "playground.png"))

    # 4. an error is one readable line
    server.enqueue(Reply(status=400, error_code="InvalidParameter", error_message="The image is too small."))
    page.check("input[value=ask]")
    page.fill("#prompt", "And now?")
    page.press("#prompt", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    line = page.inner_text("#error")
    assert "The image is too small." in line and "\n" not in line.strip() and "Traceback" not in line
    assert page.input_value("#prompt") == "And now?"  # the failed turn's prompt is given back

    # 5. a reload keeps the conversation (the failed turn is not kept)
    count = len(page.query_selector_all(".msg"))
    page.reload()
    page.wait_for_selector(".msg.assistant canvas[data-drawn='1']")
    assert len(page.query_selector_all(".msg")) == count == 4
    saved = json.loads(page.evaluate("localStorage.getItem('qwenvl-playground')"))
    assert saved["messages"][1]["text"] == ANSWER


def test_phone_sized_screen_and_keyboard(browser, site):
    context = browser.new_context(viewport={"width": 375, "height": 700})
    pg = context.new_page()
    pg.goto(site.url + "/")
    pg.fill("#keyinput", SERVE_KEY)
    pg.click("#keydialog button")
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 375  # nothing wider than the screen
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement.id") == "model"  # the first control takes the focus
    context.close()


def test_dark_mode_is_readable(browser, site):
    colours = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(color_scheme=scheme)
        pg = context.new_page()
        pg.goto(site.url + "/")
        colours[scheme] = pg.evaluate(
            "[getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color]"
        )
        context.close()
    assert colours["light"] != colours["dark"]
    assert colours["dark"][0] == "rgb(21, 21, 26)" and colours["dark"][1] == "rgb(236, 236, 241)"


def test_a_wrong_key_then_the_right_one_and_a_file_that_is_not_media(browser, site, isolated_env):
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.goto(site.url + "/")
    pg.fill("#keyinput", "wrong-key")
    pg.click("#keydialog button")
    pg.wait_for_selector("#error:not([hidden])")
    assert "Invalid API-key" in pg.inner_text("#error")
    pg.fill("#prompt", "hello")
    pg.press("#prompt", "Enter")  # asks for the key again: the right one this time
    pg.fill("#keyinput", SERVE_KEY)
    pg.click("#keydialog button")
    pg.wait_for_function("document.querySelector('#model').options.length > 0")  # the list is fetched again
    notes = isolated_env / "notes.txt"
    notes.write_text("not a picture")
    pg.set_input_files("#files", str(notes))
    pg.wait_for_selector("#error:not([hidden])")
    assert "notes.txt is not an image, a video or a PDF" in pg.inner_text("#error")
    assert not pg.query_selector_all("#attachments li")
    context.close()


def test_first_visit_to_a_server_with_a_key_lists_each_model_once_and_fetches_nothing_missing(browser, site):
    """A fresh profile on a server with a key: the first models call gets 401, the key dialog asks, and both the
    dialog's reload and the retried call fill the Model list; it shows each served name once. No request of the
    page gets a 404 (a favicon the browser would ask for)."""
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    missing: list[str] = []
    pg.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(site.url + "/")
    pg.fill("#keyinput", SERVE_KEY)
    pg.click("#keydialog button")
    pg.wait_for_function("document.querySelector('#model').options.length > 0")
    pg.wait_for_timeout(1000)  # both loads have ended
    names = pg.eval_on_selector_all("#model option", "els => els.map(e => e.value)")
    listed = [
        m["id"]
        for m in httpx.get(site.url + "/v1/models", headers={"Authorization": f"Bearer {SERVE_KEY}"}).json()["data"]
    ]
    assert names == listed and len(set(names)) == len(names), names
    icon = pg.eval_on_selector("link[rel=icon]", "el => el.href")
    assert icon.startswith("data:image/svg+xml"), icon
    assert not missing, missing
    assert not [e for e in errors if "favicon" in e or "404" in e], errors
    context.close()
