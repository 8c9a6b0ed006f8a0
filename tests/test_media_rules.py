"""Media rules a try-out user found broken, each fixed as a kind (every verb, library and CLI): options that do
not apply to the media are refused, never ignored; a model's abilities are enforced for media; each verb's
options, folder walks and refusals say what it takes; remote PDFs are documents; hints name a fix that works;
``--help`` shows each verb's own defaults; estimates and labels say what is true."""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

import qwenvl
from conftest import make_client, run_cli, write_image
from dashscope_server import DashScopeServer, Reply
from qwenvl.errors import MediaError, UsageError
from test_backend_openai import make_video


@pytest.fixture
def media(isolated_env: Path) -> Path:
    """clip.mp4 (4 s of 320x240 at 10 fps), multi.pdf (5 pages), doc.png, frames/f0..3.jpg, in the working folder."""
    make_video(isolated_env / "clip.mp4", frames=40, size=(320, 240))
    pages = [Image.new("RGB", (600, 800), "white") for _ in range(5)]
    pages[0].save(isolated_env / "multi.pdf", save_all=True, append_images=pages[1:])
    write_image(isolated_env / "doc.png")
    (isolated_env / "frames").mkdir()
    for i in range(4):
        Image.new("RGB", (320, 240), (i * 50, 0, 0)).save(isolated_env / "frames" / f"f{i}.jpg")
    (isolated_env / "s.json").write_text('{"type": "object", "properties": {"a": {"type": "string"}}}')
    os.chdir(isolated_env)
    return isolated_env


def _error(stderr: str) -> tuple[str, str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    error = next((line for line in lines if line.startswith("error:")), "")
    hint = next((line for line in lines if line.startswith("hint:")), "")
    return error, hint


# -- 1. options that do not apply to the media are refused, or applied --------------------------------------------


def test_max_pixels_bounds_the_frames_of_a_video(media: Path, env: dict[str, str]) -> None:
    """Found by a try-out: ``ask clip.mp4 --max-pixels 20000`` sent frames of 320x256, the option ignored."""
    p = run_cli("ask", "clip.mp4", "S", "--max-pixels", "20000", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    part = out["body"]["messages"][0]["content"][0]
    assert part["max_pixels"] == 20000  # beside the video on the wire, as beside an image
    (item,) = out["media"]
    assert item["width"] * item["height"] <= 20000 and len(part["video"]) == 8
    p = run_cli("tokens", "clip.mp4", "--max-pixels", "20000", "--json", env=env)
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)["items"]
    assert row["width"] * row["height"] <= 20000


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["ask", "clip.mp4", "S", "--high-res"], "--high-res"),
        (["ask", "clip.mp4", "S", "--no-high-res"], "--no-high-res"),
        (["ask", "clip.mp4", "S", "--detail", "low"], "--detail"),
        (["ask", "clip.mp4", "S", "--no-resize"], "--no-resize"),
        (["ask", "multi.pdf", "S", "--no-resize"], "--no-resize"),
        (["tokens", "multi.pdf", "--no-resize"], "--no-resize"),
        (["tokens", "clip.mp4", "--high-res"], "--high-res"),
        (["events", "frames/f0.jpg", "frames/f1.jpg", "frames/f2.jpg", "--video-as", "file"], "--video-as"),
        (["events", "clip.mp4", "--detail", "high"], "--detail"),
        (["ocr", "multi.pdf", "--no-resize"], "--no-resize"),
        (["batch", "run", "clip.mp4", "-p", "hi", "-o", "o.jsonl", "--high-res"], "--high-res"),
    ],
)
def test_an_option_the_media_do_not_read_is_refused(media: Path, env: dict[str, str], args: list[str], flag: str):
    """Found by a try-out: --high-res, --detail, --no-resize on a video (and --no-resize on a PDF, --video-as on a
    frame list) were sent and ignored; each is refused (exit 2) in the flag's words, nothing sent."""
    p = run_cli(*args, "--protocol", "native", "--dry-run", env=env) if args[0] != "tokens" else run_cli(*args, env=env)
    assert p.returncode == 2, (args, p.stdout, p.stderr)
    error, hint = _error(p.stderr)
    assert error.startswith(f"error: {flag} applies to ") and f"Leave out {flag}" in hint, (args, p.stderr)


def test_the_same_options_apply_where_an_image_reads_them(media: Path, env: dict[str, str]) -> None:
    for args in (["ask", "doc.png", "clip.mp4", "S", "--high-res"], ["ask", "doc.png", "S", "--no-resize"]):
        p = run_cli(*args, "--dry-run", env=env)
        assert p.returncode == 0, (args, p.stderr)


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"vl_high_resolution_images": True}, "vl_high_resolution_images"),
        ({"detail": "low"}, "detail"),
        ({"prepare": False}, "prepare"),
    ],
)
def test_the_library_refuses_them_in_its_own_words(media: Path, server: DashScopeServer, fields, name) -> None:
    with make_client(server) as client:
        with pytest.raises(UsageError, match=rf"^{name} applies to "):
            client.plan(prompt="S", video="clip.mp4", **fields)
        with pytest.raises(UsageError, match=rf"^{name} applies to "):
            qwenvl.estimate.estimate_files(["clip.mp4"], client=client, **fields)
    assert not server.requests


# -- 2. a model's abilities are enforced for media ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "clip.mp4", "S"],
        ["ask", "clip.mp4", "S", "--dry-run"],
        ["tokens", "clip.mp4"],
        ["events", "clip.mp4"],
        ["events", "frames/f0.jpg", "frames/f1.jpg", "frames/f2.jpg", "frames/f3.jpg"],
        ["chat", "clip.mp4"],
    ],
)
def test_a_video_to_a_model_that_takes_none_is_refused_before_sending(
    media: Path, server: DashScopeServer, env: dict[str, str], args: list[str]
) -> None:
    """Found by a try-out: qwen-vl-ocr lists no video ability, yet `ask clip.mp4 -m qwen-vl-ocr` sent the video
    and `tokens` priced it."""
    p = run_cli(*args, "-m", "qwen-vl-ocr", env=env, input="what?\n")
    assert p.returncode == 2, (args, p.stderr)
    error, hint = _error(p.stderr)
    assert error.startswith("error: qwen-vl-ocr does not take video") and "qwen3-vl-plus" in hint, p.stderr
    assert not server.requests


def test_the_library_and_each_batch_item_refuse_it(media: Path, server: DashScopeServer, env) -> None:
    with make_client(server, model="qwen-vl-ocr") as client:
        with pytest.raises(UsageError, match=r"^qwen-vl-ocr does not take video"):
            client.plan(prompt="S", video="clip.mp4")
        with pytest.raises(UsageError, match=r"^qwen-vl-ocr does not take video"):
            client.plan(prompt="S", video=["frames/f0.jpg", "frames/f1.jpg"])
        with pytest.raises(UsageError, match=r"^qwen-vl-ocr does not take video"):
            qwenvl.estimate.estimate_files(["clip.mp4"], client=client, model="qwen-vl-ocr")
        client.plan(prompt="S", images=["doc.png"])  # images it takes
    p = run_cli("batch", "run", "clip.mp4", "doc.png", "-p", "hi", "-o", "o.jsonl", "-m", "qwen-vl-ocr", env=env)
    rows = {json.loads(line)["file"] if "file" in json.loads(line) else json.loads(line).get("id"): json.loads(line)
            for line in Path("o.jsonl").read_text().splitlines()}  # fmt: skip
    assert len(rows) == 2, (p.stderr, rows)  # the other item answered
    bad = [r for r in rows.values() if "does not take video" in json.dumps(r)]
    assert len(bad) == 1 and len([r for r in server.requests if r.path.endswith("/completions")]) == 1, rows


# -- 3. each verb's options, folder walk and refusals say what it takes ---------------------------------------------


def _help_flags(verb: str) -> set[str]:
    p = run_cli(verb, "--help")
    assert p.returncode == 0, p.stderr
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", p.stdout))


@pytest.mark.parametrize(
    ("verb", "absent", "present"),
    [
        ("ocr", {"--fps", "--video-as", "--schema", "--json-mode"}, {"--pages", "--max-pixels"}),
        ("ground", {"--fps", "--video-as", "--schema", "--json-mode"}, {"--page", "--max-pixels"}),
        ("events", {"--pages", "--detail", "--high-res", "--schema", "--json-mode"}, {"--fps", "--video-as"}),
        ("extract", {"--json-mode"}, {"--fps", "--video-as", "--pages", "--schema"}),
    ],
)
def test_each_verb_help_lists_only_the_options_it_takes(verb: str, absent: set[str], present: set[str]) -> None:
    """Found by a try-out: ocr and ground listed --fps and --video-as, which they cannot use."""
    flags = _help_flags(verb)
    assert not absent & flags and present <= flags, (verb, absent & flags, present - flags)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["ocr", "doc.png", "--fps", "1"], 2, "--fps applies to videos only"),  # hidden, still refused in words
        (["events", "clip.mp4", "--pages", "1"], 2, "--pages applies to PDFs only"),
        (["ocr", "clip.mp4"], 3, "clip.mp4 is a video: ocr reads an image or a PDF"),
        (["ground", "clip.mp4", "dog"], 3, "clip.mp4 is a video: ground reads an image or a PDF"),
        (["events", "multi.pdf"], 3, "multi.pdf is a PDF: events reads a video, or several frames as images in order"),
    ],
)
def test_a_verb_refuses_what_it_cannot_read_in_its_own_words(media, server, env, args, code, says) -> None:
    """Found by a try-out: `ocr clip.mp4` said "not an image" with the hint to give it "as the video", and `events
    multi.pdf` to "pass it as a document": neither is something that verb can do."""
    p = run_cli(*args, env=env)
    assert p.returncode == code, (args, p.stderr)
    error, hint = _error(p.stderr)
    assert error == f"error: {says}", p.stderr
    assert "as the video" not in hint and "as a document" not in hint and hint, p.stderr
    assert not server.requests


def test_the_task_functions_refuse_it_too(media: Path, server: DashScopeServer) -> None:
    from qwenvl.tasks.events import plan_events
    from qwenvl.tasks.grounding import plan_ground
    from qwenvl.tasks.ocr import plan_pages

    with make_client(server) as client:
        with pytest.raises(MediaError, match="ocr reads"):
            list(plan_pages(client, "clip.mp4"))
        with pytest.raises(MediaError, match="ground reads"):
            plan_ground(client, "clip.mp4", "dog")
        with pytest.raises(MediaError, match="events reads"):
            plan_events(client, "multi.pdf")


def test_extract_reads_a_video_and_walks_folders_for_every_kind(media: Path, server, env) -> None:
    """Found by a try-out: `extract clip.mp4` was refused ("not an image"), `extract FOLDER` skipped its video
    without a word, and a folder of one video found "no media files"."""
    p = run_cli("extract", "clip.mp4", "--schema", "s.json", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    (part,) = [c for c in json.loads(p.stdout)["body"]["messages"][-1]["content"] if c["type"] == "video"]
    assert len(part["video"]) == 8
    (media / "bdir").mkdir()
    (media / "vdir").mkdir()
    for name in ("clip.mp4", "doc.png", "multi.pdf"):
        (media / "bdir" / name).write_bytes((media / name).read_bytes())
    (media / "vdir" / "clip.mp4").write_bytes((media / "clip.mp4").read_bytes())
    for _ in range(4):
        server.enqueue(Reply(text='{"a": "x"}'))
    p = run_cli("extract", "bdir", "vdir", "--schema", "s.json", "--jsonl", env=env)
    assert p.returncode == 0, p.stderr
    files = [json.loads(line)["file"] for line in p.stdout.splitlines()]
    assert sorted(files) == ["bdir/clip.mp4", "bdir/doc.png", "bdir/multi.pdf", "vdir/clip.mp4"], files


# -- 6. --help shows the defaults each verb sends ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "doc.png", "S"],
        ["ocr", "doc.png"],
        ["extract", "doc.png", "--schema", "s.json"],
        ["events", "clip.mp4"],
        ["ground", "doc.png", "dog"],
    ],
)
def test_help_defaults_are_what_each_verb_sends(media: Path, env: dict[str, str], args: list[str]) -> None:
    """Found by a try-out: ocr, extract, events and ground said `--max-tokens (default 512)` and sent 4096 or
    2048. Each shared option's shown default is checked against the verb's own --dry-run body."""
    text = " ".join(run_cli(args[0], "--help").stdout.split())
    body = json.loads(run_cli(*args, "--dry-run", env=env).stdout)["body"]
    for flag, key in (("--max-tokens", "max_tokens"), ("--temperature", "temperature")):
        shown = re.search(re.escape(flag) + r" [^(]*\(default ([0-9.]+)", text)
        assert shown is not None, (args[0], flag)
        assert float(shown.group(1)) == body[key], (args[0], flag, shown.group(1), body[key])


# -- 4. a PDF URL is a document, as a local PDF is -----------------------------------------------------------------


@pytest.fixture
def web(media: Path) -> Iterator[str]:
    """The working folder served over loopback HTTP (a real server, its files as they are)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(media))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_pdf_url_is_refused_without_fetch_urls(web: str, server: DashScopeServer, env: dict[str, str]) -> None:
    """Found by a try-out: a .pdf URL was sent as an image_url (the service cannot read it), `tokens` called it a
    remote image, and with --fetch-urls the hint said to "pass it as a document"."""
    url = f"{web}/multi.pdf"
    for args in (["ask", url, "S"], ["ocr", url], ["extract", url, "--schema", "s.json"]):
        p = run_cli(*args, env=env)
        assert p.returncode == 2, (args, p.stderr)
        error, hint = _error(p.stderr)
        assert error == f"error: {url} is a PDF: the service cannot read a PDF file, and qwenvl renders its pages " \
            "only from a file it has", p.stderr  # fmt: skip
        assert hint.startswith("hint: Add --fetch-urls to download it") and "fetch_urls=True" not in hint, p.stderr
    p = run_cli("tokens", "https://example.com/d.pdf", "--json", env=env)
    (row,) = json.loads(p.stdout)["items"]
    assert "is a PDF" in row["error"] and row["hint"].startswith("Add --fetch-urls"), row
    assert not server.requests
    with make_client(server) as client, pytest.raises(UsageError, match="is a PDF"):
        client.plan(prompt="S", images=[url])


def test_a_pdf_url_is_fetched_and_rendered_with_fetch_urls(web: str, server, env: dict[str, str]) -> None:
    url = f"{web}/multi.pdf"
    p = run_cli("ask", url, "S", "--fetch-urls", "--pages", "2-3", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    parts = json.loads(p.stdout)["body"]["messages"][-1]["content"]
    assert [c["type"] for c in parts] == ["image_url", "image_url", "text"]
    assert all(c["image_url"]["url"].startswith("data:image/") for c in parts[:2])
    p = run_cli("tokens", url, "--fetch-urls", "--json", env=env)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["items"]
    assert len(rows) == 5 and all(r["tokens"] for r in rows), rows
    p = run_cli("ocr", url, "--fetch-urls", "--pages", "2", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    p = run_cli("ask", url, "S", "--fps", "1", env=env)  # a PDF by its URL: a video's option does not apply
    assert p.returncode == 2 and "--fps applies to videos only" in p.stderr, p.stderr


# -- 5. a hint names a fix that works, and no flag already given ----------------------------------------------------


def test_a_page_too_long_for_any_budget_is_not_told_to_raise_it(media: Path, env: dict[str, str]) -> None:
    """Found by a try-out: a 14400x20 pt page was "over 200:1" with the hint to raise --max-pixels, which fails
    the same; the hint's fix is followed here and works."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument.new()
    doc.new_page(1440, 1440)
    doc.new_page(14400, 20)
    doc.save(str(media / "huge.pdf"))
    doc.close()
    for extra in ([], ["--pages", "2"], ["--max-pixels", "20000000"]):
        p = run_cli("ask", "huge.pdf", "S", *extra, "--dry-run", env=env)
        assert p.returncode == 3, (extra, p.stderr)
        error, hint = _error(p.stderr)
        assert "page 2 (14400x20 pt) is 720:1, over the 200:1" in error, p.stderr
        assert "--max-pixels" not in hint and "--pages picks the others" in hint, (extra, p.stderr)
    p = run_cli("ask", "huge.pdf", "S", "--pages", "1", "--dry-run", env=env)  # the fix the hint names
    assert p.returncode == 0, p.stderr
    with pytest.raises(MediaError, match="720:1") as caught:
        _plan(env, "huge.pdf")  # the library's own hint
    assert "--max-pixels" not in (caught.value.raw_hint or "")


def _plan(env: dict[str, str], ref: str) -> None:
    with qwenvl.Client(api_key=env["DASHSCOPE_API_KEY"], base_url=env["DASHSCOPE_COMPATIBLE_BASE_URL"]) as client:
        client.plan(prompt="S", images=[ref])


@pytest.mark.parametrize(
    ("given", "cause", "fix"),
    [
        (["--upload", "inline", "--protocol", "native"], "--upload auto", ["--upload", "auto", "--protocol", "native"]),
        (["--protocol", "compat"], "--protocol native", ["--protocol", "native"]),
        (
            ["--upload", "inline"],
            "--protocol native and use --upload auto",
            ["--upload", "auto", "--protocol", "native"],
        ),
    ],
)
def test_a_whole_video_hint_names_what_is_missing(media, env, given: list[str], cause: str, fix: list[str]) -> None:
    """Found by a try-out: `--video-as file --upload inline --protocol native` was told "Add --protocol native"
    (already given); the cause was --upload inline. The hint's fix is followed and works."""
    p = run_cli("ask", "clip.mp4", "S", "--video-as", "file", *given, env=env)
    assert p.returncode == 2, p.stderr
    _, hint = _error(p.stderr)
    assert cause in hint and (given[-1] != "native" or "--protocol native" not in hint), (given, hint)
    p = run_cli("ask", "clip.mp4", "S", "--video-as", "file", *fix, env=env)
    assert p.returncode == 0, p.stderr


def test_a_variable_of_one_backend_is_not_offered_for_another(media: Path, env: dict[str, str]) -> None:
    """Found by a try-out: $QWENVL_BASE_URL was told "did you mean $QWENVL_OPENAI_BASE_URL?", which only the
    openai backend reads."""
    p = run_cli("ask", "doc.png", "S", "--dry-run", env={**env, "QWENVL_BASE_URL": "http://127.0.0.1:9"})
    assert p.returncode == 0, p.stderr
    (warning,) = [line for line in p.stderr.splitlines() if "QWENVL_BASE_URL" in line]
    assert "$DASHSCOPE_COMPATIBLE_BASE_URL" in warning and "--backend openai only" in warning, warning


def test_the_context_hint_names_only_options_the_media_take() -> None:
    from qwenvl.media.prepare import PreparedItem
    from qwenvl.models import model_info
    from qwenvl.plan import check_context

    model = model_info("qwen3-vl-plus")
    video = PreparedItem("clip.mp4", "video", ["f"], tokens=model.context_tokens + 1)
    with pytest.raises(MediaError) as caught:
        check_context([video], model)
    assert "--detail" not in (caught.value.raw_hint or "") and "--fps" in (caught.value.raw_hint or "")
    image = PreparedItem("a.png", "image", "a", tokens=model.context_tokens + 1)
    with pytest.raises(MediaError) as caught:
        check_context([image], model)
    assert "--detail low" in (caught.value.raw_hint or "") and "--fps" not in (caught.value.raw_hint or "")


# -- 7. estimates and labels say what is true ----------------------------------------------------------------------


def test_a_video_the_service_samples_is_not_counted_exactly(media: Path, env: dict[str, str]) -> None:
    """Found by a try-out: `--video-as file` reported "media_tokens_exact": true beside "about 12 frames" (the
    service samples it), and `tokens` had no --video-as."""
    p = run_cli("ask", "clip.mp4", "S", "--video-as", "file", "--protocol", "native", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    estimate = json.loads(p.stdout)["estimate"]
    assert estimate["media_tokens_exact"] is False and estimate["input_tokens_exact"] is False
    p = run_cli("ask", "clip.mp4", "S", "--dry-run", env=env)  # sampled here: the count is the billing rule's
    assert json.loads(p.stdout)["estimate"]["media_tokens_exact"] is True
    p = run_cli("tokens", "clip.mp4", "--video-as", "file", "--json", env=env)
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)["items"]
    assert row["tokens"] and row["tokens_exact"] is False and "about" in row["notes"][0], row
    p = run_cli("tokens", "clip.mp4", "--video-as", "file", env=env)
    assert "≈" in p.stdout, p.stdout
    p = run_cli("tokens", "clip.mp4", "--json", env=env)
    assert json.loads(p.stdout)["items"][0]["tokens_exact"] is True


def test_the_sheet_says_the_rate_the_frames_were_sent_at(media: Path, server: DashScopeServer) -> None:
    """Found by a try-out: a 1 h clip's sheet said "48 of 2000 frames at 2 fps"; it was sent at 0.5556 fps (2000
    frames, the model's cap, over 3600 s). The rate shown is the one in the body."""
    import av
    import numpy as np

    with av.open(str(media / "hour.mp4"), "w") as c:  # 1 h at 1 fps, 32x32: 3600 small frames
        s = c.add_stream("libx264", rate=1)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        s.options = {"g": "600"}
        for i in range(3600):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i % 250, np.uint8), format="rgb24")
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    from qwenvl.tasks.events import plan_events, sent_fps

    with make_client(server) as client:
        call = plan_events(client, "hour.mp4")
    (part,) = [p for p in qwenvl.protocols.get("compat").build_body(call, stream=False)["messages"][-1]["content"]
               if p["type"] == "video"]  # fmt: skip
    assert sent_fps(call) == part["fps"] and part["fps"] < 2, part["fps"]


def test_a_positional_batch_gives_each_option_to_the_items_that_read_it(media: Path, server, env) -> None:
    """--high-res and --no-resize over images, a PDF and a video: each item gets what its kind reads; none is
    refused for an option given for the others."""
    p = run_cli("batch", "run", "doc.png", "multi.pdf", "clip.mp4", "-p", "hi", "-o", "o.jsonl", "--high-res", env=env)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in Path("o.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and not [r for r in rows if "error" in r], rows
    bodies = [r.json for r in server.requests if r.path.endswith("/completions")]
    assert [b.get("vl_high_resolution_images") for b in bodies].count(True) == 2, bodies  # the image and the PDF
