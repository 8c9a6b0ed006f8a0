"""Readers of user files read no more than they need: a file over every limit is refused from its size before
anything is read (the limit and the size said), a file that is no image fails from its first bytes, and an
estimate (``tokens --fast``, a chat attachment) reads an image's header only. Every verb, library and CLI,
sync and async, batch items, chat attachments, data: URLs and standard input."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

import qwenvl
from conftest import API_KEY, make_client, run_cli
from qwenvl.chat import Conversation
from qwenvl.errors import MediaError
from qwenvl.media import sources
from qwenvl.models import MAX_IMAGE_BYTES, MAX_IMAGE_FILE_BYTES

MB = 1_000_000
READ_WHOLE = 20 * MB  # a reader that stays under this has not read the (larger) file whole


def sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """``head`` followed by zeros up to ``size`` bytes (a sparse file: no disk or time spent on the zeros)."""
    with path.open("wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def small_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 140, 200)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def peak() -> Iterator[Callable[[], int]]:
    """The most memory Python allocated during the test (bytes), as ``tracemalloc`` sees it."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- over every limit: refused from the size, before reading ----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["tokens", "huge.jpg", "--fast"], ["tokens", "huge.jpg"], ["ask", "huge.jpg", "-p", "what?"]],
    ids=["tokens-fast", "tokens", "ask"],
)
def test_a_file_over_the_image_limit_is_refused_unread(isolated_env, env, server, peak, args):
    sparse(isolated_env / "huge.jpg", 3 * 1024**3)
    p = run_cli(*args, env=env)
    said = p.stdout + p.stderr  # `tokens` reports each file's error in its table
    assert p.returncode == 3, said
    assert "3,221.2 MB" in said and f"at most {MAX_IMAGE_FILE_BYTES / MB:.1f} MB" in said, said
    assert "nothing was read" in said
    assert peak() < READ_WHOLE
    assert not [r for r in server.requests if "generation" in r.path or "completions" in r.path]


def test_a_valid_image_padded_past_the_limit_is_refused_unread(isolated_env, peak):
    sparse(isolated_env / "padded.jpg", 500 * MB, small_jpeg())
    p = run_cli("tokens", "padded.jpg", "--fast")
    said = p.stdout + p.stderr
    assert p.returncode == 3 and "500.0 MB" in said and "image file may be at most" in said, said
    assert peak() < READ_WHOLE


def test_an_estimate_reads_the_header_only(isolated_env, peak):
    """A valid 640x480 JPEG padded to 60 MB (within the limit): `tokens --fast` counts it from its header."""
    sparse(isolated_env / "padded.jpg", 60 * MB, small_jpeg())
    p = run_cli("tokens", "padded.jpg", "--fast", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["items"][0]["width"] == 640
    assert peak() < READ_WHOLE


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "full"])
def test_a_large_file_that_is_no_image_fails_from_its_first_bytes(isolated_env, peak, fast):
    sparse(isolated_env / "zeros.jpg", 60 * MB)
    p = run_cli("tokens", "zeros.jpg", *(["--fast"] if fast else []))
    said = p.stdout + p.stderr
    assert p.returncode == 3 and "not an image" in said, said
    assert peak() < READ_WHOLE


def test_standard_input_is_spooled_not_held(isolated_env, peak):
    data = small_jpeg() + bytes(60 * MB - len(small_jpeg()))
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    p = run_cli("tokens", "-", "--fast", "--json", input=data)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["items"][0]["width"] == 640
    assert peak() - base < READ_WHOLE


def test_no_resize_refuses_over_the_service_limit_unread(isolated_env):
    sparse(isolated_env / "big.png", 11 * MB, b"\x89PNG\r\n\x1a\n")
    p = run_cli("tokens", "big.png", "--no-resize")
    said = p.stdout + p.stderr
    assert p.returncode == 3 and f"at most {MAX_IMAGE_BYTES / MB:.1f} MB" in said, said
    assert "--no-resize" in said  # the hint: let qwenvl prepare it


# --- the library, sync and async; chat attachments; batch items; data: URLs ------------------------------------


def test_library_sync_and_async_refuse_unread(isolated_env, server, peak):
    huge = str(sparse(isolated_env / "huge.png", 2 * 1024**3))
    with make_client(server) as client:
        for estimate_only in (True, False):
            with pytest.raises(MediaError, match="image file may be at most"):
                client.plan(prompt="x", image=huge, estimate_only=estimate_only)

    async def run() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url) as aclient:
            with pytest.raises(MediaError, match="image file may be at most"):
                await aclient.complete(prompt="x", image=huge)

    asyncio.run(run())
    assert peak() < READ_WHOLE
    assert not [r for r in server.requests if "completions" in r.path]


def test_chat_attachment_refused_unread(isolated_env, server, peak):
    sparse(isolated_env / "huge.jpg", 2 * 1024**3)
    with make_client(server) as client:
        conv = Conversation(client)
        with pytest.raises(MediaError, match="image file may be at most"):
            conv.attach("huge.jpg")
        assert not conv.pending
    assert peak() < READ_WHOLE


def test_batch_item_over_the_limit_fails_unsent(isolated_env, server, env):
    photos = isolated_env / "photos"
    photos.mkdir()
    sparse(photos / "huge.jpg", 2 * 1024**3)
    (photos / "ok.jpg").write_bytes(small_jpeg())
    p = run_cli("batch", "run", "photos", "-p", "what?", "-o", "out.jsonl", env=env)
    lines = [json.loads(x) for x in (isolated_env / "out.jsonl").read_text().splitlines()]
    failed = [x for x in lines if x.get("error")]
    assert len(failed) == 1 and "may be at most" in json.dumps(failed[0]), (p.stderr, lines)
    assert len([r for r in server.requests if "completions" in r.path]) <= 1


@pytest.mark.parametrize("estimate_only", [True, False])
def test_a_data_url_over_the_limit_is_refused_before_decoding(server, estimate_only):
    url = "data:image/png;base64," + base64.b64encode(bytes(11 * MB)).decode()
    source = sources.classify(url)
    assert sources.source_size(source) == 11 * MB
    with make_client(server) as client, pytest.raises(MediaError, match=r"sent as it is may be at most 10\.0 MB"):
        client.plan(prompt="x", image=url, prepare=False, estimate_only=estimate_only)


def test_read_bytes_with_a_limit_reads_nothing_over_it(isolated_env, peak):
    source = sources.classify(str(sparse(isolated_env / "f.bin", 200 * MB)))
    with pytest.raises(MediaError, match=r"200\.0 MB; a file may be at most 1\.0 MB \(nothing was read\)"):
        sources.read_bytes(source, limit=MB)
    assert peak() < READ_WHOLE
    assert os.path.getsize(isolated_env / "f.bin") == 200 * MB


# --- what a refused file is, in the words of what was given ------------------------------------------------------


def _animated(path: Path, fmt: str) -> Path:
    frames = [Image.new("RGB", (64, 64), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:])
    return path


@pytest.mark.parametrize(
    ("name", "fmt", "command"),
    [
        ("my anim.png", "PNG", "ffmpeg -i 'my anim.png' -frames:v 1 frame.png"),
        ("clip.gif", "GIF", "ffmpeg -i clip.gif -frames:v 1 frame.png"),
        ("sticker.webp", "WEBP", "magick 'sticker.webp[0]' frame.png"),
    ],
)
def test_an_animated_image_hint_names_the_real_file(isolated_env, name, fmt, command):
    _animated(isolated_env / name, fmt)
    p = run_cli("tokens", name, "--fast")
    said = p.stdout + p.stderr
    assert p.returncode == 3 and "animated" in said and command in said.replace("\n", " "), said
    assert "in.gif" not in said


@pytest.mark.parametrize(
    "args",
    [
        ["ocr", "fake.pdf"],
        ["ground", "fake.pdf", "the total"],
        ["extract", "fake.pdf", "--schema", "s.json"],
        ["ask", "fake.pdf", "-p", "what?"],
        ["tokens", "fake.pdf"],
        ["events", "fake.pdf", "red.png"],
    ],
    ids=["ocr", "ground", "extract", "ask", "tokens", "events-frames"],
)
def test_a_text_file_named_pdf_is_refused_as_not_a_pdf(isolated_env, env, server, args):
    """``echo hello > fake.pdf; qwenvl ocr fake.pdf``: the file was meant as a PDF (ocr reads PDFs), so the refusal
    says it is not one, and the hint names PDFs beside the images, not images alone."""
    (isolated_env / "fake.pdf").write_text("hello\n")
    (isolated_env / "s.json").write_text('{"type": "object", "properties": {"total": {"type": "string"}}}')
    Image.new("RGB", (64, 48), "red").save(isolated_env / "red.png")
    p = run_cli(*args, env=env)
    said = (p.stdout + p.stderr).replace("\n", " ")
    assert p.returncode == 3, said
    assert "fake.pdf is not a PDF (it holds text, whatever its name says)" in said, said
    assert "not an image" not in said and "PDF document starts with %PDF-" in said and "PNG" in said
    assert not [r for r in server.requests if "completions" in r.path or "generation" in r.path]


@pytest.mark.parametrize(
    "args",
    [["events", "bad.mp4"], ["events", "notes.txt"], ["ask", "bad.mp4", "-p", "what?"], ["tokens", "bad.mp4"]],
    ids=["events-mp4", "events-txt", "ask", "tokens"],
)
def test_a_text_file_given_as_a_video_is_named_as_neither(isolated_env, env, server, args):
    (isolated_env / "bad.mp4").write_text("hello, I am text\n")
    (isolated_env / "notes.txt").write_text("hello, I am text\n")
    p = run_cli(*args, env=env)
    said = (p.stdout + p.stderr).replace("\n", " ")
    assert p.returncode == 3, said
    assert "is neither a video nor an image qwenvl can read (it holds text" in said, said
    assert "Supported videos: MP4" in said and "images: BMP" in said
    assert not [r for r in server.requests if "completions" in r.path or "generation" in r.path]


def test_a_library_frame_list_of_one_text_file_is_named_as_neither(isolated_env, server):
    (isolated_env / "clip.bin").write_text("text\n")
    with make_client(server) as client, pytest.raises(MediaError, match="neither a video nor an image") as info:
        client.plan(prompt="what happens?", video=["clip.bin"], estimate_only=True)
    assert "Supported videos" in (info.value.hint or "")


def test_a_file_just_over_the_limit_is_said_in_bytes_and_the_hint_fits(isolated_env, env):
    """One byte over: "67.1 MB; ... at most 67.1 MB" read as no fault at all; the sizes are said in bytes then.
    With --no-resize, a file too large for preparation too is not told to let qwenvl prepare it."""
    sparse(isolated_env / "over.png", MAX_IMAGE_FILE_BYTES + 1)
    said = run_cli("tokens", "over.png", env=env)
    assert f"is {MAX_IMAGE_FILE_BYTES + 1:,} bytes" in said.stdout + said.stderr
    assert f"at most {MAX_IMAGE_FILE_BYTES:,} bytes" in said.stdout + said.stderr
    p = run_cli("ask", "over.png", "-p", "x", "--no-resize", "--dry-run", env=env)
    assert p.returncode == 3 and "drop --no-resize" not in p.stderr and "smaller file" in p.stderr, p.stderr
