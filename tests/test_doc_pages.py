"""Documents over the cloud API: a turn's media options kept in its history, multi-page OCR priced and capped
before sending, pages already paid for kept on a failure, OCR pages written as they are read, page identity by
the real page number, and the library's page selections in the forms users write."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import Reply, _media
from qwenvl.plan import build_messages
from qwenvl.types import Request


def write_pdf(path: Path, pages: int = 5) -> Path:
    images = [Image.new("RGB", (595, 842), "white") for _ in range(pages)]
    images[0].save(path, save_all=True, append_images=images[1:])
    return path


@pytest.fixture
def multi(isolated_env: Path) -> Path:
    return write_pdf(isolated_env / "multi.pdf")


def model_calls(server) -> list:
    return [r for r in server.requests if r.path.endswith(("/chat/completions", "/generation"))]


def sent_media(server, protocol: str, request) -> list[str]:
    return [url for _, urls in _media(protocol, request.json) for url in urls]


# --- 1. a turn's media options go with it into the history ----------------------------------------------------


def test_history_sends_again_the_pages_its_turn_sent(server, protocol, multi):
    with make_client(server, protocol) as c:
        r = c.complete(prompt="one", image=str(multi), pages="2")
        c.complete(prompt="two", messages=r.messages)
    first, second = model_calls(server)[-2:]
    assert len(sent_media(server, protocol, first)) == 1
    assert sent_media(server, protocol, second) == sent_media(server, protocol, first)  # the same page, once
    assert r.messages[0].media()[0].pages == "2"


def test_async_history_and_prepare_false_are_kept(server, protocol, isolated_env):
    big = write_image(isolated_env / "big.png", size=(3000, 2000))

    async def turns() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as c:
            r = await c.complete(prompt="one", image=str(big), prepare=False)
            await c.complete(prompt="two", messages=r.messages)

    asyncio.run(turns())
    first, second = model_calls(server)[-2:]
    # sent as given in turn 1 (not resized), and so again in turn 2
    assert sent_media(server, protocol, second) == sent_media(server, protocol, first)


def test_video_as_file_and_pages_go_on_the_new_turns_parts():
    request = Request(prompt="p", image="a.pdf", pages=[2, 3], video="v.mp4", video_as="file", fps=1.0)
    parts = build_messages(request)[-1].media()
    assert parts[0].pages == "2,3"
    assert (parts[1].video_as, parts[1].fps) == ("file", 1.0)


def test_chat_and_its_saved_session_keep_the_page_selection(server, env, multi):
    p = run_cli("chat", "multi.pdf", "--pages", "2", "--session", "doc", env=env, input="What is it?\nAgain?\n")
    assert p.returncode == 0, p.stderr
    calls = model_calls(server)
    assert [len(sent_media(server, "compat", r)) for r in calls] == [1, 1]
    saved = json.loads((Path.home() / ".qwenvl" / "sessions" / "doc.json").read_text())
    assert saved["messages"][0]["content"][0]["pages"] == "2"
    p = run_cli("chat", "--session", "doc", env=env, input="And now?\n")
    assert p.returncode == 0, p.stderr
    assert len(sent_media(server, "compat", model_calls(server)[-1])) == 1


def test_a_batch_request_line_with_a_history_keeps_its_pages(server, multi, isolated_env):
    with make_client(server) as c:
        r = c.complete(prompt="one", image=str(multi), pages="4")
    line = {"id": "q1", "prompt": "two", "messages": [m.model_dump(mode="json", exclude_none=True) for m in r.messages]}
    (isolated_env / "r.jsonl").write_text(json.dumps(line) + "\n")
    env = {"DASHSCOPE_API_KEY": API_KEY}
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "out.jsonl", "--base-url", server.url, "--yes", env=env)
    assert p.returncode == 0, p.stderr
    first, second = model_calls(server)[-2:]
    assert sent_media(server, "compat", second) == sent_media(server, "compat", first)


# --- 6. the library's page selections in the forms users write; every refused field with a hint ---------------


@pytest.mark.parametrize(("pages", "sent"), [(2, 1), ([2, 3], 2), ((1, "3-5"), 4), ("2-", 4)])
def test_pages_as_a_number_a_list_or_a_range(server, protocol, multi, pages, sent):
    with make_client(server, protocol) as c:
        r = c.complete(prompt="S", image=str(multi), pages=pages)
    assert len(sent_media(server, protocol, model_calls(server)[-1])) == sent
    assert isinstance(r.messages[0].media()[0].pages, str)


@pytest.mark.parametrize(
    "fields",
    [
        {"pages": 2.5},
        {"pages": True},
        {"max_tokens": "a"},
        {"stream": "yes"},
        {"extra": [1]},
        {"fps": "x"},
        {"messages": [{"role": "bob", "content": "x"}]},
    ],
)
def test_every_refused_request_field_has_a_hint(multi, fields):
    c = qwenvl.Client(api_key=API_KEY)
    with pytest.raises(qwenvl.UsageError) as info:
        c.plan(prompt="S", image=str(multi), **fields)
    name = next(iter(fields))
    assert info.value.hint and name in info.value.hint, (str(info.value), info.value.hint)


def test_page_zero_is_refused_with_a_hint(multi):
    with pytest.raises(qwenvl.UsageError) as info:
        qwenvl.Client(api_key=API_KEY).plan(prompt="S", image=str(multi), pages=0)
    assert "page 0" in str(info.value) and info.value.hint


# --- 5. a PDF page is known by its page number ----------------------------------------------------------------


def test_tokens_and_dry_run_name_pages_by_their_number(server, env, multi):
    p = run_cli("tokens", "multi.pdf", "--pages", "2,4", env=env)
    assert p.returncode == 0, p.stderr
    assert "multi.pdf page 2" in p.stdout and "multi.pdf page 4" in p.stdout and "[1/2]" not in p.stdout
    for fast in ([], ["--fast"]):
        rows = json.loads(run_cli("tokens", "multi.pdf", "--pages", "4,2", "--json", *fast, env=env).stdout)["items"]
        assert [(r["source"], r["page"]) for r in rows] == [("multi.pdf", 4), ("multi.pdf", 2)]
    one = json.loads(run_cli("tokens", "multi.pdf", "--pages", "3", "--json", env=env).stdout)["items"]
    assert [(r["source"], r["page"]) for r in one] == [("multi.pdf", 3)]
    p = run_cli("ask", "what?", "multi.pdf", "--pages", "2,4", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    media = json.loads(p.stdout)["media"]
    assert [(m["source"], m["page"]) for m in media] == [("multi.pdf", 2), ("multi.pdf", 4)]


def test_library_call_media_know_their_page(multi):
    call = qwenvl.Client(api_key=API_KEY).plan(prompt="S", image=str(multi), pages="3,5")
    assert [(m.document, m.page, m.label) for m in call.media] == [
        (str(multi), 3, f"{multi} page 3"),
        (str(multi), 5, f"{multi} page 5"),
    ]


# --- 2. a multi-page job priced and capped before sending -------------------------------------------------------


@pytest.fixture
def long_pdf(isolated_env: Path) -> Path:
    return write_pdf(isolated_env / "long.pdf", 60)  # 60 pages of ~2.5K tokens: over qwen-vl-max's 128K context


def test_tokens_counts_a_pdf_over_the_context_and_says_so(env, long_pdf):
    p = run_cli("tokens", "long.pdf", "--model", "qwen-vl-max", "--fast", "--json", env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [r["page"] for r in out["items"]] == list(range(1, 61))
    assert out["total"]["tokens"] > 131_072 and "cannot be sent as one request" in out["warnings"][0]
    p = run_cli("tokens", "long.pdf", "--model", "qwen-vl-max", "--fast", env=env)
    assert p.returncode == 0 and "warning:" in p.stderr and "qwenvl ocr" in p.stderr


def test_ocr_dry_run_prices_every_page_and_names_the_file(server, env, long_pdf):
    p = run_cli("ocr", "long.pdf", "--model", "qwen-vl-max", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["requests"] == 60
    assert out["media"][0]["source"] == "long.pdf" and out["media"][0]["page"] == 1
    one = out["estimate"]["input_tokens"]
    assert out["total"]["input_tokens"] == 60 * one  # every page's request, each like the first
    assert out["total"]["cost_max"] > out["estimate"]["cost_max"] * 59
    assert not model_calls(server)


def test_ocr_has_a_cost_cap(server, env, multi):
    p = run_cli("ocr", "multi.pdf", "--max-cost", "0.0001", env=env)
    assert p.returncode == 2 and "nothing was sent" in p.stderr and "--yes" in p.stderr
    assert not model_calls(server)
    p = run_cli("ocr", "multi.pdf", "--max-cost", "0.0001", "--yes", env=env)
    assert p.returncode == 0, p.stderr
    assert len(model_calls(server)) == 5


def test_library_ocr_is_priced_and_capped(server, protocol, multi):
    with make_client(server, protocol) as c:
        est = qwenvl.tasks.estimate_ocr(c, str(multi), pages=[2, 3])
        assert (est.to_send, est.currency) == (2, "CNY") and est.cost_max > est.cost_input > 0
        with pytest.raises(qwenvl.UsageError, match="nothing was sent"):
            qwenvl.tasks.ocr(c, str(multi), max_cost=0.0001)
        assert qwenvl.tasks.ocr(c, str(multi), pages=2, max_cost=1.0).pages[0].page == 2

    async def capped() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as ac:
            await qwenvl.tasks.aocr(ac, str(multi), max_cost=0.0001)

    with pytest.raises(qwenvl.UsageError, match="nothing was sent"):
        asyncio.run(capped())
    assert len(model_calls(server)) == 1


def test_extract_over_many_files_is_priced_and_capped(server, env, isolated_env):
    for name in ("a.png", "b.png", "c.png"):
        write_image(isolated_env / name)
    (isolated_env / "s.json").write_text('{"type": "object", "properties": {"t": {"type": "string"}}}')
    p = run_cli("extract", "a.png", "b.png", "c.png", "--schema", "s.json", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["requests"] == 3 and out["total"]["input_tokens"] == 3 * out["estimate"]["input_tokens"]
    p = run_cli("extract", "a.png", "b.png", "--schema", "s.json", "--max-cost", "0", env=env)
    assert p.returncode == 2 and "nothing was sent" in p.stderr
    assert not model_calls(server)


# --- 3. pages already paid for travel with the error ----------------------------------------------------------


def test_library_ocr_error_carries_the_pages_read(server, protocol, multi):
    from qwenvl.tasks.ocr import partial

    server.enqueue(Reply(text="ONE"), Reply(text="TWO"), Reply(status=500))
    with make_client(server, protocol, max_retries=0) as c, pytest.raises(qwenvl.InternalServerError) as info:
        qwenvl.tasks.ocr(c, str(multi))
    got = partial(info.value)
    assert got is info.value.partial and got is not None
    assert [(p.page, p.text) for p in got.pages] == [(1, "ONE"), (2, "TWO")] and got.stopped_at == 3
    assert len(got.responses) == 2

    server.enqueue(Reply(text="ONE"), Reply(status=500))

    async def reading() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url, max_retries=0) as ac:
            await qwenvl.tasks.aocr(ac, str(multi), pages="1-3")

    with pytest.raises(qwenvl.InternalServerError) as info:
        asyncio.run(reading())
    assert [p.text for p in info.value.partial.pages] == ["ONE"] and info.value.partial.stopped_at == 2


def test_cli_says_how_to_resume_from_the_failed_page(server, env, multi):
    server.enqueue(Reply(text="ONE"), Reply(text="TWO"), Reply(status=500))
    p = run_cli("ocr", "multi.pdf", "--max-retries", "0", env=env)
    assert p.returncode == 5 and p.stdout == "ONE\n\fTWO\n\f"
    assert "page 3 failed: only pages 1, 2 shown" in p.stderr and "--pages 3-" in p.stderr
    server.enqueue(Reply(text="ONE"), Reply(status=500))
    p = run_cli("ocr", "multi.pdf", "--pages", "1,3-4", "--max-retries", "0", env=env)
    assert "--pages 3-4" in p.stderr


def test_a_resume_note_that_cannot_be_made_never_hides_the_error(server, env, multi, monkeypatch):
    """The note reads the document again; when that fails (a URL not fetched again), the reading's own error is
    the one reported, with its exit code."""
    import qwenvl.cli.ocr as cli_ocr
    from qwenvl.errors import UsageError

    def fails(*args: object) -> str:
        raise UsageError("the service cannot read a PDF file")

    monkeypatch.setattr(cli_ocr, "pages_left", fails)
    server.enqueue(Reply(text="ONE"), Reply(status=500))
    p = run_cli("ocr", "multi.pdf", "--max-retries", "0", env=env)
    assert p.returncode == 5 and "cannot read a PDF" not in p.stderr, p.stderr
    assert "page 2 failed" in p.stderr


@pytest.mark.parametrize(
    ("pages", "stopped", "left"),
    [(None, 3, "3-"), ("1,3-4", 3, "3-4"), ("1-2,4", 2, "2,4"), ("5,1", 5, "5,1"), ("1,4-5", 2, "4-")],
)
def test_pages_left(multi, pages, stopped, left):
    from qwenvl.tasks.ocr import pages_left

    assert pages_left(str(multi), pages, stopped) == left


# --- 4. each page written as it is read; a reader that left stops the spending --------------------------------


def cli_process(args: list[str], server) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "ALIBABA_CLOUD_"))}
    env.update({"DASHSCOPE_API_KEY": API_KEY, "DASHSCOPE_COMPATIBLE_BASE_URL": server.compat_base})
    return subprocess.Popen(  # unbuffered: readline takes no byte past its line, communicate gets the rest
        [sys.executable, "-m", "qwenvl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0
    )


@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_each_page_is_written_as_it_is_read(server, multi, fmt):
    held = threading.Event()
    server.enqueue(Reply(text="PAGE-ONE"), Reply(text="PAGE-TWO", hold=held))
    proc = cli_process(["ocr", str(multi), "--pages", "1-2", "--format", fmt], server)
    try:
        assert proc.stdout is not None
        first = b""  # arrives while page 2 is still held by the server (Markdown: after its page marker)
        while not first.endswith(b"PAGE-ONE\n"):
            line = proc.stdout.readline()
            assert line, first
            first += line
        assert first == (b"<!-- page 1 -->\n\nPAGE-ONE\n" if fmt == "markdown" else b"PAGE-ONE\n")
        assert not held.is_set() and proc.poll() is None
    finally:
        held.set()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    whole = (  # what OCRResult.text gives, page by page
        b"<!-- page 1 -->\n\nPAGE-ONE\n\n<!-- page 2 -->\n\nPAGE-TWO\n\n"
        if fmt == "markdown"
        else b"PAGE-ONE\n\fPAGE-TWO\n\f"
    )
    assert first + out == whole


def test_a_reader_that_left_stops_the_reading(server, isolated_env):
    pdf = write_pdf(isolated_env / "twenty.pdf", 20)
    proc = cli_process(["ocr", str(pdf)], server)
    assert proc.stdout is not None
    assert proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err  # SIGPIPE's status, as the README says
    assert len(model_calls(server)) < 20


def test_a_file_that_cannot_be_sent_does_not_stop_an_extract_over_many(server, env, isolated_env):
    """The estimate before sending leaves out a file that cannot be sent (it fails on its turn, as the README
    says); the others are priced and sent."""
    write_image(isolated_env / "good.png")
    (isolated_env / "bad.png").write_text("not an image")
    (isolated_env / "s.json").write_text('{"type": "object", "properties": {"t": {"type": "string"}}}')
    server.enqueue(Reply(text='{"t": "x"}'))
    p = run_cli("extract", "good.png", "bad.png", "--schema", "s.json", "--jsonl", env=env)
    assert len(model_calls(server)) == 1, p.stderr  # good.png was sent
    assert "bad.png" in p.stderr and p.returncode != 0


def test_the_pages_read_before_an_error_are_in_the_librarys_words(server, multi):
    """``exc.partial`` is an OCRResult as the library returns one: its warnings name keyword arguments (a page cut
    off at max_tokens says "raise max_tokens", never the CLI's "--max-tokens"), sync and async."""
    from qwenvl.tasks.ocr import partial

    server.enqueue(Reply(text="ONE", finish_reason="length"), Reply(status=500))
    with make_client(server, max_retries=0) as c, pytest.raises(qwenvl.InternalServerError) as info:
        qwenvl.tasks.ocr(c, str(multi))
    said = " ".join(partial(info.value).warnings + partial(info.value).pages[0].warnings)
    assert "max_tokens" in said and "--" not in said

    server.enqueue(Reply(text="ONE", finish_reason="length"), Reply(status=500))

    async def reading() -> BaseException:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, max_retries=0) as ac:
            try:
                await qwenvl.tasks.aocr(ac, str(multi))
            except qwenvl.InternalServerError as exc:
                return exc
        raise AssertionError("no error")

    exc = asyncio.run(reading())
    said = " ".join(partial(exc).warnings + partial(exc).pages[0].warnings)
    assert "max_tokens" in said and "--" not in said


def test_a_library_cap_that_cannot_be_checked_says_how_to_run_uncapped_in_its_words(server, multi, monkeypatch):
    monkeypatch.setenv("QWENVL_UNLISTED_MODELS", "my-vl-model")
    with make_client(server) as c, pytest.raises(qwenvl.UsageError) as info:
        qwenvl.tasks.ocr(c, str(multi), model="my-vl-model", max_cost=1.0)
    assert "max_cost=None" in (info.value.hint or "") and "--yes" not in (info.value.hint or "")
