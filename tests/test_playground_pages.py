"""The playground reads a PDF as ``qwenvl ocr`` does: one request per page, each page shown as it arrives with its
number and what the pages took so far, an error on one page keeping the pages read, Stop ending the reading after
the page under way, and the page breaks / ``<!-- page N -->`` markers of the CLI's output in the text downloaded.
Find on a PDF reads page by page too (``qwenvl ground`` reads one page a request), each page's boxes drawn on it.

A real browser (Debian's chromium through Playwright) against ``qwenvl serve``'s app on loopback, in front of the
fake DashScope cloud; the PDFs are made here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from dashscope_server import DashScopeServer, Reply, _media
from test_playground import browser, page, site  # noqa: F401  (the browser, the served app, a page on it)
from test_serve import SERVE_KEY, data_url

HEADERS = {"Authorization": f"Bearer {SERVE_KEY}"}
USAGE = {"prompt_tokens": 1000, "completion_tokens": 20, "total_tokens": 1020}


def write_pdf(path: Path, pages: int) -> Path:
    sheets = []
    for n in range(pages):
        sheet = Image.new("RGB", (595, 842), "white")
        ImageDraw.Draw(sheet).rectangle((100, 100 + 50 * n, 300, 200 + 50 * n), fill=(30, 30, 30))
        sheets.append(sheet)
    sheets[0].save(path, save_all=True, append_images=sheets[1:])
    return path


def model_calls(server: DashScopeServer) -> list:
    return [r for r in server.requests if r.path.endswith(("/chat/completions", "/generation"))]


def images_sent(request) -> list[str]:
    return [url for kind, urls in _media("compat", request.json) for url in urls if kind == "image"]


def start_ocr(pg, pdf: Path, fmt: str) -> None:
    pg.check("input[value=ocr]")
    if fmt != "text" or pg.query_selector("#format"):  # plain text is the default
        pg.select_option("#format", fmt)
    pg.set_input_files("#files", str(pdf))
    pg.wait_for_function("document.querySelector('#estimate').textContent.length > 0")
    pg.click("#send")


def pages_shown(pg) -> list[str]:
    return pg.eval_on_selector_all(".msg.assistant section.page", "els => els.map(e => e.dataset.page)")


def downloaded(pg) -> str:
    with pg.expect_download() as info:
        pg.click(".msg.assistant .tools .save")
    return Path(info.value.path()).read_text(encoding="utf-8")


def test_ocr_reads_a_pdf_page_by_page_showing_each_page_and_the_total(page, server, isolated_env):  # noqa: F811
    pdf = write_pdf(isolated_env / "three.pdf", 3)
    gate = threading.Event()
    server.enqueue(
        Reply(text="First page", usage=USAGE),
        Reply(text="Second page", usage=USAGE, hold=gate),
        Reply(text="```markdown\nThird page\n```", usage=USAGE),
    )
    start_ocr(page, pdf, "markdown")
    # page 1 is shown, with its number and what it took, while page 2 is still being read
    page.wait_for_selector(".msg.assistant section.page[data-page='1']")
    assert pages_shown(page) == ["1"]
    assert "First page" in page.inner_text(".msg.assistant section.page[data-page='1'] pre")
    assert "1 page read · 1,000 tokens in, 20 out" in page.inner_text(".msg.assistant .spent")
    assert "Reading page 2 of 3" in page.inner_text(".msg.assistant .text")
    gate.set()
    page.wait_for_selector(".msg.assistant section.page[data-page='3']")
    assert pages_shown(page) == ["1", "2", "3"]
    spent = page.inner_text(".msg.assistant .spent")
    assert "3 pages read · 3,000 tokens in, 60 out · ¥" in spent, spent
    assert "Read 3 of 3 pages" in page.inner_text(".msg.assistant .text")
    # one request per page, each with that page alone
    calls = model_calls(server)
    assert [len(images_sent(c)) for c in calls] == [1, 1, 1]
    assert len({images_sent(c)[0] for c in calls}) == 3  # three different pages
    # the text downloaded is what `qwenvl ocr --format markdown` writes: each page begun by its marker
    assert downloaded(page) == (
        "<!-- page 1 -->\n\nFirst page\n\n<!-- page 2 -->\n\nSecond page\n\n<!-- page 3 -->\n\nThird page\n\n"
    )
    # plain text: each page ended by a form feed, as pdftotext (and `qwenvl ocr`) ends them
    server.enqueue(Reply(text="one"), Reply(text="two"))
    start_ocr(page, write_pdf(isolated_env / "two.pdf", 2), "text")
    second = "document.querySelectorAll('.msg.assistant')[1]"
    page.wait_for_function(f"{second} && {second}.querySelectorAll('section.page').length === 2")
    with page.expect_download() as info:
        page.locator(".msg.assistant").nth(1).locator(".tools .save").click()
    assert Path(info.value.path()).read_text(encoding="utf-8") == "one\n\ftwo\n\f"


def test_a_page_that_fails_keeps_the_pages_read_and_reads_no_further(page, server, isolated_env):  # noqa: F811
    pdf = write_pdf(isolated_env / "three.pdf", 3)
    server.enqueue(
        Reply(text="First page"),
        Reply(status=400, error_code="InvalidParameter", error_message="The image is too small."),
    )
    start_ocr(page, pdf, "text")
    page.wait_for_selector("#error:not([hidden])")
    line = page.inner_text("#error")
    assert "page 2" in line and "The image is too small." in line and "\n" not in line.strip()
    assert pages_shown(page) == ["1"]  # the page read is kept, in the log
    assert "First page" in page.inner_text(".msg.assistant section.page pre")
    assert "stopped at page 2" in page.inner_text(".msg.assistant .text")
    assert "Page 2 failed" in page.inner_text(".msg.assistant")
    assert len(model_calls(server)) == 2  # page 3 was not asked for
    assert downloaded(page) == "First page\n\f"
    # Continue reads on from the page that failed: page 1 is not asked for (nor paid) again
    server.enqueue(Reply(text="Second page", usage=USAGE), Reply(text="Third page", usage=USAGE))
    page.click(".msg.assistant button.continue")
    page.wait_for_selector(".msg.assistant section.page[data-page='3']")
    page.wait_for_selector("#stop", state="hidden")
    assert pages_shown(page) == ["1", "2", "3"]
    calls = model_calls(server)
    assert len(calls) == 4 and images_sent(calls[3]) != images_sent(calls[0])
    assert images_sent(calls[2]) == images_sent(calls[1])  # page 2 again, the one that failed
    assert "Read 3 of 3 pages" in page.inner_text(".msg.assistant .text")
    assert not page.query_selector(".msg.assistant button.continue")
    assert downloaded(page) == "First page\n\fSecond page\n\fThird page\n\f"
    page.reload()  # kept across a reload, as any answer
    page.wait_for_selector(".msg.assistant section.page[data-page='3']")


def test_stop_ends_the_reading_after_the_page_under_way(page, server, isolated_env):  # noqa: F811
    pdf = write_pdf(isolated_env / "three.pdf", 3)
    gate = threading.Event()
    server.enqueue(Reply(text="First page", hold=gate), Reply(text="never asked", times=2))
    start_ocr(page, pdf, "text")
    page.wait_for_function("document.querySelector('#stop') && !document.querySelector('#stop').hidden")
    for _ in range(400):  # page 1's request has reached the cloud
        if model_calls(server):
            break
        page.wait_for_timeout(25)
    page.click("#stop")
    gate.set()  # page 1's answer comes: it is kept (it is paid for), and no other page is asked for
    page.wait_for_selector("#stop", state="hidden")
    assert pages_shown(page) == ["1"]
    assert "First page" in page.inner_text(".msg.assistant section.page pre")
    assert "Stopped after page 1 of 3" in page.inner_text(".msg.assistant .text")
    assert len(model_calls(server)) == 1
    assert page.is_hidden("#error")
    assert page.inner_text(".msg.assistant button.continue") == "Continue from page 2"


def test_find_on_a_pdf_reads_and_draws_each_page(page, server, isolated_env):  # noqa: F811
    pdf = write_pdf(isolated_env / "two.pdf", 2)
    box = '```json\n[{"bbox_2d": [100, 100, 500, 500], "label": "block"}]\n```'
    server.enqueue(Reply(text=box), Reply(text="[]"))
    page.check("input[value=find]")
    page.set_input_files("#files", str(pdf))
    page.fill("#prompt", "the black block")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".msg.assistant section.page[data-page='2']")
    page.wait_for_selector(".msg.assistant section.page[data-page='1'] canvas[data-drawn='1']")
    page.wait_for_selector(".msg.assistant section.page[data-page='2'] canvas[data-drawn='0']")
    # drawn on page 1 as sent (the rendered page): the box's left edge at 10% of its width, in the box colour
    w, h, edge, inside = page.evaluate("""() => {
        const c = document.querySelector(".msg.assistant section.page[data-page='1'] canvas");
        const at = (x, y) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data).slice(0, 3);
        return [c.width, c.height, at(Math.round(c.width * 0.1), Math.round(c.height * 0.3)),
                at(Math.round(c.width * 0.3), Math.round(c.height * 0.45))];
    }""")
    assert w > 500 and h > 700, (w, h)
    assert edge == [255, 45, 85] and inside == [255, 255, 255], (edge, inside)
    assert "Found 1 box: block" in page.inner_text(".msg.assistant section.page[data-page='1'] h3")
    assert "Nothing found" in page.inner_text(".msg.assistant section.page[data-page='2'] h3")
    calls = model_calls(server)
    assert [len(images_sent(c)) for c in calls] == [1, 1]


def test_the_endpoints_read_one_page_and_refuse_a_page_that_does_not_apply(site, server, isolated_env, png):  # noqa: F811
    pdf = data_url(write_pdf(isolated_env / "two.pdf", 2), "application/pdf")
    server.enqueue(Reply(text="second"))
    body = {"model": "qwen3-vl-plus", "image": pdf, "page": 2}
    r = httpx.post(site.url + "/qwenvl/v1/ocr", json=body, headers=HEADERS, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    read = (out["page"], out["page_count"], out["next"], out["text"], out["marked"])
    assert read == (2, 2, None, "second", "second\n\f")
    for extra, words in (
        ({"image": pdf, "page": 3}, "the PDF has 2 pages; page 3 is out of range"),
        ({"image": pdf, "page": 0}, "page must be 1 or more"),
        ({"image": pdf, "page": "1"}, "page must be a whole number, not a string"),
        ({"image": data_url(png), "page": 1}, "page applies to a PDF only"),
    ):
        for route in ("ocr", "ground"):
            sent = {"model": "qwen3-vl-plus", "query": "x", **extra}
            r = httpx.post(site.url + f"/qwenvl/v1/{route}", json=sent, headers=HEADERS, timeout=60)
            assert r.status_code == 400, (route, r.text)
            assert words in r.json()["error"]["message"], (route, r.text)
    assert len(model_calls(server)) == 1  # nothing sent for a refused page


def test_the_estimate_of_a_pdf_read_page_by_page_is_per_page(page, site, isolated_env):  # noqa: F811
    """60 pages are over qwen-vl-max's context as one request (Ask, Extract: "Cannot send"), not as 60 (OCR, Find):
    the estimate before sending follows the mode, each page priced as its own request."""
    pdf = write_pdf(isolated_env / "long.pdf", 60)
    page.select_option("#model", "qwen-vl-max")
    page.check("input[value=ocr]")
    page.set_input_files("#files", str(pdf))
    page.wait_for_function("document.querySelector('#estimate').textContent.includes('before sending')")
    assert "60 pages" in page.inner_text("#attachments")
    one = httpx.post(
        site.url + "/qwenvl/v1/estimate",
        json={"model": "qwen-vl-max", "images": [data_url(write_pdf(isolated_env / "one.pdf", 1), "application/pdf")]},
        headers=HEADERS,
        timeout=60,
    ).json()
    assert f"Media: {60 * one['total_tokens']:,} tokens" in page.inner_text("#estimate")
    page.check("input[value=ask]")  # sent whole: over the context, said before sending
    page.wait_for_function("document.querySelector('#estimate').textContent.includes('Cannot send')")
    assert "over the model's context" in page.inner_text("#attachments")
    page.check("input[value=find]")
    page.wait_for_function("document.querySelector('#estimate').textContent.includes('before sending')")
