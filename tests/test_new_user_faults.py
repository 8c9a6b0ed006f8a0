"""Faults a new user found and the last session left: each fixed as a kind, on every verb where it occurs.

A glob or a list that gives several files where one is taken says how many and which; every ``--help`` fits an
80-column terminal; a picture format that cannot hold the picture is refused before anything is sent; ``--pages``
with no PDF is refused on ``tokens`` as elsewhere; ``tokens --fast`` guesses a PDF page's encoding by the rule
that sends it; files read whole have a size bound, a fake PDF is refused fast, a huge non-video named .mp4 is
named a video; the blank-argument message has one wording."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest

from conftest import API_KEY, run_cli, write_image


def _video(path: Path, frames: int = 6) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=2)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(frames):
            for packet in s.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 30 % 256, np.uint8), "rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def _one_error_and_hint(stderr: str) -> tuple[str, str]:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), stderr
    assert "Traceback" not in stderr, stderr
    return lines[0], lines[1]


@pytest.fixture
def clips(isolated_env: Path) -> Path:
    (isolated_env / "g").mkdir()
    for name in ("a", "b", "c"):
        _video(isolated_env / "g" / f"{name}.mp4")
    write_image(isolated_env / "g" / "x.png")
    write_image(isolated_env / "g" / "y.png")
    return isolated_env


# -- 1. several files where one is taken: how many, and which -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["events", "g/*.mp4"], "3 videos given (g/a.mp4, g/b.mp4 and 1 more), and one question takes one video"),
        (["ask", "g/*.mp4", "-p", "x"], "3 videos given (g/a.mp4, g/b.mp4 and 1 more)"),
        (["ask", "g/a.mp4", "g/c.mp4", "-p", "x"], "2 videos given (g/a.mp4, g/c.mp4)"),
        (["chat", "g/a.mp4", "g/b.mp4"], "2 videos given (g/a.mp4, g/b.mp4)"),
        (["events", "g/a.mp4", "g/*.png"], "a video (g/a.mp4) and 2 images (g/x.png, g/y.png) given"),
        (["ground", "g/*.mp4", "cat"], "'g/*.mp4' matches 3 files (g/a.mp4, g/b.mp4 and 1 more), and ground takes one"),
        (["ocr", "g/*.png"], "'g/*.png' matches 2 files (g/x.png, g/y.png), and ocr takes one"),
        (["ground", "g/x.png", "g/y.png"], "2 files given (g/x.png, g/y.png) and no query"),
        # as separate arguments to a verb of fixed arguments (click said "unexpected extra arguments", and ground
        # had taken the second file for the query)
        (
            ["ocr", "g/x.png", "g/y.png", "g/a.mp4"],
            "3 files given (g/x.png, g/y.png and 1 more), and `qwenvl ocr` takes one",
        ),
        (["ground", "g/x.png", "g/y.png", "cat"], "2 files given (g/x.png, g/y.png), and `qwenvl ground` takes one"),
        (["ground", "g/x.png", "black", "cat"], "2 words given where `qwenvl ground` takes one query"),
    ],
)
def test_several_files_where_one_is_taken_are_counted_and_named(clips, server, args, words):
    p = run_cli(*args, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY}, input="")
    assert p.returncode == 2, p.stderr
    error, _ = _one_error_and_hint(p.stderr)
    assert words in error
    assert server.requests == []


# -- 2. every --help fits 80 columns ------------------------------------------------------------------------------


def _command_paths() -> list[tuple[str, ...]]:
    from qwenvl.cli.main import cli

    paths: list[tuple[str, ...]] = [()]
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        paths.append((name,))
        if isinstance(cmd, click.Group):
            paths += [(name, sub) for sub in cmd.list_commands(click.Context(cmd))]
    return paths


def test_every_help_fits_80_columns(isolated_env):
    paths = _command_paths()
    assert ("batch", "status") in paths and ("serve",) in paths  # the walk finds subcommands too
    long: list[str] = []
    for path in paths:
        p = run_cli(*path, "--help", env={"COLUMNS": "80"})
        assert p.returncode == 0, (path, p.stderr)
        long += [
            f"{' '.join(path) or 'qwenvl'} ({len(line)}): {line}" for line in p.stdout.splitlines() if len(line) > 80
        ]
    assert not long, "\n".join(long)


# -- 3. a picture format that cannot hold the picture at its size -------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["ground", "big.png", "cat", "--out", "x.ico"], "--out x.ico: an ICO picture is at most 256 px a side"),
        (["ground", "big.png", "cat", "--out", "x.icns"], "--out x.icns: an ICNS icon holds only squares"),
        (["events", "g/a.mp4", "--sheet", "s.ico"], "--sheet s.ico: an ICO picture is at most 256 px a side"),
    ],
)
def test_a_picture_format_too_small_for_the_picture_is_refused_before_sending(clips, server, args, words):
    write_image(clips / "big.png", size=(1024, 768))
    p = run_cli(*args, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 2, p.stderr
    error, hint = _one_error_and_hint(p.stderr)
    assert words in error and "1024x768" in error if args[0] == "ground" else words in error
    assert ".png" in hint
    assert server.requests == []
    assert not any(clips.glob(args[-1]))


def test_an_icon_that_holds_the_picture_is_written_full_size(clips, server):
    from PIL import Image

    from dashscope_server import Reply

    write_image(clips / "small.png", size=(200, 100))
    server.enqueue(Reply(text='[{"bbox_2d": [100, 200, 500, 1000], "label": "cat"}]'))
    p = run_cli(
        "ground",
        "small.png",
        "cat",
        "--out",
        "x.ico",
        "--base-url",
        server.compat_base,
        env={"DASHSCOPE_API_KEY": API_KEY},
    )
    assert p.returncode == 0, p.stderr
    with Image.open(clips / "x.ico") as written:
        assert written.size == (200, 100)  # Pillow's default would be 64x32, the picture shrunk into a square


def test_the_library_never_writes_a_picture_smaller_than_drawn(isolated_env):
    from PIL import Image

    from qwenvl.errors import UsageError
    from qwenvl.tasks.draw import contact_sheet, save

    with pytest.raises(UsageError, match="at most 256 px"):
        save(Image.new("RGB", (300, 200)), isolated_env / "a.ico")
    with pytest.raises(UsageError, match="WEBP picture is at most 16,383 px"):
        contact_sheet([Image.new("RGB", (8, 8))] * 80, [0.0] * 80, isolated_env / "s.webp", thumb_width=3000)
    assert not list(isolated_env.iterdir())


def test_the_mcp_ground_tool_refuses_an_icon_too_small_before_sending(server, env, isolated_env):
    pytest.importorskip("mcp")
    import anyio

    from test_mcp import stdio_session, text_of

    write_image(isolated_env / "big.png", size=(1024, 768))

    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            r = await c.call_tool("ground", {"image": "big.png", "query": "x", "out": str(isolated_env / "o.ico")})
            assert r.is_error and "at most 256 px a side" in text_of(r), text_of(r)

    anyio.run(main)
    assert not (isolated_env / "o.ico").exists()
    assert not server.requests


# -- 4. tokens --pages with no PDF among what it counted ----------------------------------------------------------


def _pdf(path: Path, pages: int = 2) -> Path:
    from PIL import Image

    sheets = [Image.new("RGB", (600, 800), "white") for _ in range(pages)]
    sheets[0].save(path, save_all=True, append_images=sheets[1:])
    return path


def test_tokens_refuses_pages_when_no_pdf_was_counted(clips):
    for args in (["g"], ["g/x.png", "g/a.mp4"], ["g/*.png"]):
        p = run_cli("tokens", *args, "--pages", "1", "--fast")
        assert p.returncode == 2, (args, p.stderr)
        error, hint = _one_error_and_hint(p.stderr)
        assert error == "error: --pages applies to PDFs only" and "Leave out --pages" in hint
    _pdf(clips / "g" / "doc.pdf")
    p = run_cli("tokens", "g", "--pages", "2", "--json")  # the folder walked: its PDF takes the pages
    assert p.returncode == 0, p.stderr
    assert any(row["source"].endswith("doc.pdf") for row in json.loads(p.stdout)["items"])


def test_estimate_files_refuses_pages_without_a_pdf_in_the_library(clips):
    from qwenvl.errors import UsageError
    from qwenvl.estimate import estimate_files

    with pytest.raises(UsageError, match=r"^pages applies to PDFs only"):
        estimate_files(["g/x.png"], fast=True, pages="1")
    assert estimate_files([str(_pdf(clips / "d.pdf"))], fast=True, pages="2")["total"]["items"] == 1


# -- 5. tokens --fast guesses a PDF page's format by the rule that encodes it -------------------------------------


def _text_pdf(path: Path) -> Path:
    """A page of text (a raster page, as a scan or a Pillow-made PDF is): the encoding rule sends it as JPEG."""
    import random

    from PIL import Image, ImageDraw

    from qwenvl.tasks.draw import font

    rng = random.Random(1)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "model",
        "vision",
        "token",
        "budget",
        "page",
        "render",
    ]
    img = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(img)
    for y in range(100, 1650, 34):
        draw.text((100, y), " ".join(rng.choice(words) for _ in range(12)), fill="black", font=font(22))
    img.save(path, resolution=150)
    return path


def test_tokens_fast_guesses_a_pdf_pages_format_as_it_would_be_sent(isolated_env):
    _text_pdf(isolated_env / "text.pdf")
    full = json.loads(run_cli("tokens", "text.pdf", "--json").stdout)["items"]
    fast = json.loads(run_cli("tokens", "text.pdf", "--json", "--fast").stdout)["items"]
    assert [r["mime"] for r in full] == ["image/jpeg"]  # the page as it would be sent
    assert [r["mime"] for r in fast] == [r["mime"] for r in full]
    assert [(r["width"], r["height"], r["tokens"]) for r in fast] == [
        (r["width"], r["height"], r["tokens"]) for r in full
    ]


# -- 6. files read whole have a bound; a fake PDF is refused fast; a huge non-video .mp4 is named so --------------


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space (a hole): refused from its size, it is never read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.truncate(size)
    return path


def test_text_files_over_the_limit_are_refused_unread(isolated_env, server):
    from qwenvl._constants import MAX_TEXT_FILE_BYTES

    over = MAX_TEXT_FILE_BYTES + 1
    write_image(isolated_env / "a.png")
    _sparse(isolated_env / "s.json", over)
    _sparse(isolated_env / "req.json", over)
    _sparse(Path(os.environ["QWENVL_HOME"]) / "sessions" / "big.json", over)
    base = ["--base-url", server.compat_base]
    env = {"DASHSCOPE_API_KEY": API_KEY}
    for args, what in [
        (["extract", "a.png", "--schema", "s.json", *base], "a schema file may be at most"),
        (["analyze", "--file", "req.json", *base], "a request file may be at most"),
        (["chat", "a.png", "--session", "big", *base], "a session file may be at most"),
    ]:
        p = run_cli(*args, env=env, input="hi\n")
        assert p.returncode == 3, (args, p.stderr)
        error, _ = _one_error_and_hint(p.stderr)
        assert what in error and "(nothing was read)" in error, error
    _sparse(isolated_env / ".env", over)  # a configuration file: the same bound
    p = run_cli("ask", "a.png", "-p", "x", *base)
    assert p.returncode == 3 and "a .env file may be at most" in p.stderr, p.stderr
    assert server.requests == []


def test_a_local_models_configuration_file_has_the_bound_too(isolated_env):
    from qwenvl._constants import MAX_TEXT_FILE_BYTES
    from qwenvl.backends.transformers import read_config
    from qwenvl.errors import MediaError

    _sparse(isolated_env / "model" / "config.json", MAX_TEXT_FILE_BYTES + 1)
    with pytest.raises(MediaError, match=r"a model configuration file may be at most .*\(nothing was read\)"):
        read_config(str(isolated_env / "model"))


def test_a_requests_file_line_has_the_bound_too(isolated_env, monkeypatch):
    import qwenvl.batch.inputs as inputs
    from qwenvl.errors import MediaError

    monkeypatch.setattr(inputs, "MAX_TEXT_FILE_BYTES", 1000)  # the rule, at a size a test writes quickly
    path = isolated_env / "r.jsonl"
    path.write_text('{"prompt": "a", "image": "a.png"}\n' + "x" * 5000)  # the second line never ends
    items = inputs.read_requests(path)
    assert next(items).request["prompt"] == "a"
    with pytest.raises(MediaError, match=r"r\.jsonl line 2 is longer than 1,000 characters"):
        next(items)


def test_a_file_that_only_starts_like_a_pdf_is_refused_without_a_scan(isolated_env):
    import time

    from qwenvl.media import pdf

    fake = isolated_env / "fake.pdf"
    with fake.open("wb") as fh:
        fh.write(b"%PDF-1.4\n")
        fh.truncate(300_000_000)  # zeros after the header: pdfium scans all of it (seconds) to rebuild a table
    start = time.monotonic()
    p = run_cli("tokens", "fake.pdf", "--fast")
    assert p.returncode == 3
    assert "fake.pdf is not a readable PDF: it starts like one, but has no trailer and no object" in p.stdout
    assert time.monotonic() - start < 120  # bounds a hang only
    assert not pdf.looks_like_pdf(fake)
    real = _text_pdf(isolated_env / "real.pdf")
    with_garbage = isolated_env / "garbage.pdf"  # a real PDF followed by 2 MB of garbage: pdfium still opens it
    with_garbage.write_bytes(real.read_bytes() + os.urandom(2_000_000))
    assert pdf.looks_like_pdf(real) and pdf.looks_like_pdf(with_garbage)
    assert pdf.looks_like_pdf(with_garbage.read_bytes())  # as a data: URL's bytes
    p = run_cli("tokens", "garbage.pdf", "--json")
    assert p.returncode == 0, p.stdout
    assert json.loads(p.stdout)["total"]["items"] == 1


def test_a_huge_file_named_like_a_video_that_is_none_is_named_so(isolated_env):
    from qwenvl.models import MAX_IMAGE_FILE_BYTES

    _sparse(isolated_env / "huge.mp4", MAX_IMAGE_FILE_BYTES + 1)
    for args in (["ask", "huge.mp4", "-p", "x", "--dry-run"], ["events", "huge.mp4", "--dry-run"]):
        p = run_cli(*args, env={"DASHSCOPE_API_KEY": API_KEY})
        assert p.returncode == 3, p.stderr
        error, hint = _one_error_and_hint(p.stderr)
        assert "huge.mp4 is neither a video nor an image" in error, error
        assert "Supported videos" in hint


def test_data_url_videos_and_pdfs_are_bounded_before_decoding(isolated_env, monkeypatch):
    import base64

    import qwenvl
    import qwenvl.media.prepare as prepare
    import qwenvl.media.sources as sources
    from qwenvl.errors import MediaError

    monkeypatch.setattr(prepare, "MAX_DATA_URL_BYTES", 100_000)  # the rule, at a size a test builds quickly
    video = base64.b64encode(_video(isolated_env / "c.mp4").read_bytes() + b"\0" * 100_000).decode()
    pdf = base64.b64encode(_pdf(isolated_env / "d.pdf").read_bytes() + b"\0" * 100_000).decode()

    def never(*args: object) -> bytes:
        raise AssertionError("a data: URL over the limit was decoded")

    monkeypatch.setattr(sources, "decode_data_url", never)  # refused from the base64 text's length alone
    client = qwenvl.Client(api_key=API_KEY)
    with pytest.raises(MediaError, match=r"a video given as a data: URL may be at most 100\.0 kB"):
        client.plan(prompt="x", video=f"data:video/mp4;base64,{video}")
    with pytest.raises(MediaError, match=r"a PDF given as a data: URL may be at most 100\.0 kB"):
        client.plan(prompt="x", images=[f"data:application/pdf;base64,{pdf}"])


# -- 7. one wording for a blank argument, library and CLI ---------------------------------------------------------


def test_a_blank_argument_is_one_error_in_the_library_and_the_cli(isolated_env):
    from qwenvl.batch.inputs import iter_inputs
    from qwenvl.errors import UsageError

    with pytest.raises(UsageError) as library:
        iter_inputs(["a.png", " "])
    p = run_cli("batch", "run", " ", "-p", "x", "-o", "o.jsonl")
    error, hint = _one_error_and_hint(p.stderr)
    assert (error, hint) == (f"error: {library.value.message}", f"hint: {library.value.hint}")
    assert p.returncode == library.value.exit_code == 2


def test_a_prompt_on_standard_input_has_the_bound_too(isolated_env, server, monkeypatch):
    import qwenvl.cli.common as common

    monkeypatch.setattr(common, "MAX_TEXT_FILE_BYTES", 1000)  # the rule, at a size a test pipes quickly
    write_image(isolated_env / "a.png")
    for args in (["ask", "a.png", "-p", "-"], ["batch", "run", "a.png", "-p", "-", "-o", "o.jsonl"]):
        p = run_cli(*args, "--base-url", server.compat_base, env={"DASHSCOPE_API_KEY": API_KEY}, input="x" * 5000)
        assert p.returncode == 3, p.stderr
        error, _ = _one_error_and_hint(p.stderr)
        assert "standard input (the prompt) is longer than 1,000 bytes" in error
    assert server.requests == []


def test_a_session_saved_over_the_bound_is_warned_of(isolated_env, monkeypatch, caplog):
    import qwenvl.sessions as sessions
    from qwenvl.types import Message

    monkeypatch.setattr(sessions, "MAX_TEXT_FILE_BYTES", 500)
    session = sessions.Session("long")
    session.messages.append(Message(role="user", content="x" * 1000))
    with caplog.at_level("WARNING", logger="qwenvl"):
        session.save()
    assert session.path.stat().st_size > 500  # kept whole: nothing is lost
    assert "session 'long' is now" in caplog.text and "start a new session" in caplog.text


def test_annotate_takes_an_images_bytes_and_names_what_is_no_image(tmp_path: Path) -> None:
    """``annotate`` takes what the requests take (a path object, an image file's bytes); what is no image is a
    MediaError naming it in a line, never the raw bytes or Pillow's own error."""
    from qwenvl.errors import MediaError
    from qwenvl.tasks import annotate
    from qwenvl.tasks.grounding import Box, Grounding

    path = tmp_path / "a.png"
    write_image(path)
    found = Grounding(boxes=[Box(label="x", x1=2, y1=2, x2=20, y2=20)])
    assert annotate(path.read_bytes(), found).size == annotate(path, found).size
    for bad in (b"not an image at all" * 100, path.with_suffix(".txt")):
        if isinstance(bad, Path):
            bad.write_text("words")
        with pytest.raises(MediaError) as info:
            annotate(bad, found)
        assert "not an image" in str(info.value) and "\\x" not in str(info.value) and "words" not in str(info.value)


def test_a_blank_request_field_is_named_once(isolated_env: Path) -> None:
    """A field's own message that names it is not prefixed with its name again ("prompt: prompt is empty")."""
    write_image(isolated_env / "a.png")
    p = run_cli(
        "analyze", "--request", '{"prompt": "  ", "image": "a.png"}', "--dry-run", env={"DASHSCOPE_API_KEY": API_KEY}
    )
    assert p.returncode == 2 and "invalid request: prompt is empty" in p.stderr and "prompt: prompt" not in p.stderr
