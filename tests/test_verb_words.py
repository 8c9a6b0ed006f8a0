"""What the CLI says names what the verb at hand takes (its flags; analyze's request keys; the library's keywords),
each verb's --help lists only options it can use, damaged files are said to be damaged, an unknown model name is
unknown, and the library's errors carry what the call gave (found by new users; each fails on the code before)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import Reply
from qwenvl.errors import ClientClosedError, MalformedResponseError, StreamInterruptedError, UsageError
from test_media_video import make_clip


@pytest.fixture
def files(isolated_env: Path) -> Path:
    write_image(isolated_env / "a.png")
    (isolated_env / "s.json").write_text('{"type": "object", "properties": {"a": {"type": "string"}}}')
    img = Image.new("RGB", (80, 40), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown upright only once turned
    img.save(isolated_env / "rot.jpg", exif=exif)
    return isolated_env


def _lines(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


# --- 1. messages, warnings and hints in each verb's words ---------------------------------------------------


def test_analyze_names_request_keys_in_its_messages_and_hints(server, env, files):
    """`analyze --schema` with a cut-off reply said "raise --max-tokens" (analyze has no such flag), and a PDF URL
    hinted "Add fetch_urls=True" (Python): analyze takes request keys, as its JSON writes them."""
    server.enqueue(Reply(text='{"a": "b', finish_reason="length"))
    p = run_cli("analyze", "--request", '{"prompt": "x", "image": "a.png"}', "--schema", "s.json", env=env)
    assert p.returncode == 5, p.stderr
    (error,) = _lines(p.stderr, "error:")
    assert "raise max_tokens" in error and "--max-tokens" not in p.stderr, p.stderr
    p = run_cli("analyze", "--request", '{"prompt": "x", "image": "https://example.com/a.pdf"}', env=env)
    assert p.returncode == 2, p.stderr
    (hint,) = _lines(p.stderr, "hint:")
    assert 'Add "fetch_urls": true to download it' in hint and "fetch_urls=True" not in hint, hint
    p = run_cli("ask", "https://example.com/a.pdf", "x", env=env)  # a verb with the flag names the flag
    assert "Add --fetch-urls to download it" in p.stderr, p.stderr


def test_a_warning_names_the_flag_the_verb_has(server, env, files):
    """`ground rotated.jpg "the text" --no-resize` warned "(no resizing: prepare=False / --no-resize)"."""
    server.enqueue(Reply(text='[{"bbox_2d": [100, 200, 300, 400], "label": "x"}]'))
    p = run_cli("ground", "rot.jpg", "the text", "--no-resize", env=env)
    assert p.returncode == 0, p.stderr
    (warning,) = [w for w in _lines(p.stderr, "warning:") if "EXIF orientation" in w]
    assert "(no resizing: --no-resize)" in warning and "prepare=False" not in warning, warning


def test_the_library_keeps_its_keyword_in_the_same_warning(server, files):
    with make_client(server) as client:
        server.enqueue(Reply(text='[{"bbox_2d": [100, 200, 300, 400], "label": "x"}]'))
        result = qwenvl.tasks.ground(client, str(files / "rot.jpg"), "the text", prepare=False)
    (warning,) = [w for w in result.warnings if "EXIF orientation" in w]
    assert "(no resizing: prepare=False)" in warning and "--no-resize" not in warning


@pytest.mark.parametrize("verb", ["events", "extract"])
def test_a_json_task_refuses_thinking_in_its_own_words(server, env, files, verb):
    """`events clip.mp4 --thinking` said "structured output (json_mode/schema) needs enable_thinking off ... Leave
    out --thinking, or the JSON mode and schema", though events always asks for JSON and the user gave none; extract
    (whose schema is required) the same."""
    write_image(files / "b.png")
    media = ["a.png", "b.png"] if verb == "events" else ["a.png", "--schema", "s.json"]
    for flags in (["--thinking"], ["--thinking-budget", "100"]):
        p = run_cli(verb, *media, *flags, env=env)
        assert p.returncode == 2, p.stderr
        (error,) = _lines(p.stderr, "error:")
        (hint,) = _lines(p.stderr, "hint:")
        assert f"{verb} asks for its answer as JSON" in error and "json_mode" not in error, error
        assert hint == "hint: Leave out --thinking and --thinking-budget.", hint
    with make_client(server) as client, pytest.raises(UsageError) as err:
        if verb == "events":
            qwenvl.tasks.events(client, [str(files / "a.png"), str(files / "b.png")], enable_thinking=True)
        else:
            qwenvl.tasks.extract(client, str(files / "a.png"), {"type": "object"}, enable_thinking=True)
    assert "enable_thinking" in str(err.value) and "--" not in str(err.value) + (err.value.hint or "")
    assert server.requests == []


def test_a_video_sent_whole_is_named_as_each_surface_names_it(server, env, isolated_env, monkeypatch):
    """The `--video-as file` errors said "(video_as=file)" on every surface."""
    make_clip(isolated_env / "clip.mp4")
    region = {**env, "QWENVL_REGION": "intl"}  # no temporary storage there
    p = run_cli("ask", "clip.mp4", "x", "--video-as", "file", "--protocol", "native", env=region)
    assert p.returncode == 2, p.stderr
    assert "a video sent whole (--video-as file) needs" in p.stderr and "video_as" not in p.stderr, p.stderr
    request = {"prompt": "x", "video": "clip.mp4", "video_as": "file"}
    p = run_cli("analyze", "--request", json.dumps(request), env=region)
    assert p.returncode == 2, p.stderr
    assert 'a video sent whole ("video_as": "file") needs' in p.stderr and "--video-as" not in p.stderr, p.stderr
    monkeypatch.setenv("QWENVL_REGION", "intl")
    with make_client(server, protocol="native") as client, pytest.raises(UsageError) as err:
        client.ask("x", video=str(isolated_env / "clip.mp4"), video_as="file")
    assert "a video sent whole (video_as='file') needs" in str(err.value)
    assert server.requests == []


# --- 2. --help lists only what a verb can use ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "absent"),
    [
        ("events", ["--thinking", "--thinking-budget"]),
        ("extract", ["--thinking", "--thinking-budget"]),
        ("ground", ["--pages"]),
    ],
)
def test_help_leaves_out_what_the_verb_never_takes(verb, absent):
    """`events --help` listed --thinking (always refused, as in extract, whose schema is required); `ground --help`
    --pages beside --page."""
    p = run_cli(verb, "--help")
    assert p.returncode == 0
    listed = {word.rstrip(",") for line in p.stdout.splitlines() for word in line.split() if word.startswith("--")}
    assert not set(absent) & listed, p.stdout
    if verb == "ground":
        assert "--page" in listed


# --- 3. analyze takes what the skill takes --------------------------------------------------------------------


def test_analyze_takes_the_last_of_an_option_given_twice(files):
    """The skill's argparse takes the last --request; analyze refused it (exit 2, "given twice")."""
    first, last = '{"prompt": "first", "image": "a.png"}', '{"prompt": "last", "image": "a.png"}'
    p = run_cli("analyze", "--request", first, "--request", last, "--dry-run", env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 0, p.stderr
    assert "warning: --request is given twice: the last one is used" in p.stderr
    sent = json.loads(p.stdout)["body"]["messages"][0]["content"]
    assert [part["text"] for part in sent if part.get("type") == "text"] == ["last"]
    p = run_cli("ask", "a.png", "-p", "x", "-p", "y", "--dry-run", env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 2 and "given twice" in p.stderr  # qwenvl's own verbs still refuse it


# --- 6. a file cut short is said to be damaged --------------------------------------------------------------


def test_files_cut_short_are_said_to_be_damaged(server, env, isolated_env):
    """`head -c 8000 clip.mp4 > cut.mp4; qwenvl events cut.mp4` hinted "Supported videos: MP4, MOV, ...": the
    format is fine, the file is incomplete. The same for a PDF and an image cut short."""
    clip = make_clip(isolated_env / "clip.mp4")
    (isolated_env / "cut.mp4").write_bytes(clip.read_bytes()[:8000])
    pdf = Image.new("RGB", (300, 400), "white")
    pdf.save(isolated_env / "doc.pdf")
    data = (isolated_env / "doc.pdf").read_bytes()
    (isolated_env / "cut.pdf").write_bytes(data[: len(data) // 2])
    write_image(isolated_env / "full.png", (300, 200))
    png = (isolated_env / "full.png").read_bytes()
    (isolated_env / "cut.png").write_bytes(png[: len(png) // 2])
    for args in (["events", "cut.mp4"], ["ocr", "cut.pdf"], ["ocr", "cut.png"], ["ask", "cut.mp4", "x"]):
        p = run_cli(*args, env=env)
        assert p.returncode == 3, (args, p.stderr)
        (hint,) = _lines(p.stderr, "hint:")
        assert "incomplete or corrupt" in hint and "Supported" not in hint, (args, hint)
    p = run_cli("events", "cut.mp4", env=env)
    assert "cut.mp4 is not a readable video: it starts like an MP4 but is cut short or damaged" in p.stderr
    (isolated_env / "notes.mp4").write_text("not a video")  # not a video at all: the formats, as before
    p = run_cli("events", "notes.mp4", env=env)
    assert p.returncode == 3 and "Supported videos: MP4" in p.stderr, p.stderr
    assert server.requests == []


# --- 7. an unknown model name is unknown -------------------------------------------------------------------


def test_models_says_an_unknown_name_is_unknown():
    """`qwenvl models nonsense-model` exited 0 "resolves to qwen3-vl-flash" with its abilities."""
    p = run_cli("models", "nonsense-model")
    assert p.returncode == 2, p.stdout
    assert "nonsense-model is not a model qwenvl knows" in p.stderr and "resolves to" not in p.stdout
    p = run_cli("models", "qwen3-vl-plux")  # a misspelling: did you mean
    assert p.returncode == 2 and "did you mean qwen3-vl-plus?" in p.stderr
    p = run_cli("models", "qwen3.5-vl-plus")  # a Qwen name newer than the table: its family guessed, with a warning
    assert p.returncode == 0 and "guessed" in p.stderr
    p = run_cli("models", "nonsense-model", env={"QWENVL_UNLISTED_MODELS": "nonsense-model"})
    assert p.returncode == 2 and "qwen3-vl" not in p.stdout  # no family to guess, whoever insists
    assert "QWENVL_UNLISTED_MODELS" not in p.stderr  # the hint suggests nothing that would then guess


@pytest.mark.parametrize(
    "name", ["qwen-max", "qwen-plus", "qwen-turbo", "qwen3-max", "qwen-long", "qwen2.5-72b-instruct"]
)
def test_a_text_model_name_is_unknown_never_a_guessed_qwen_vl(name, server, env, files) -> None:
    """Found by a new user: `qwenvl models qwen-max` said "resolves to qwen3-vl-flash (... guessed from the name as
    qwen3-vl ...)" and `ask -m qwen-max` was sent with Qwen-VL rules; a name with no family word is unknown."""
    p = run_cli("models", name)
    assert p.returncode == 2 and "resolves to" not in p.stdout, p.stdout
    assert f"{name} is not a model qwenvl knows, and nothing in the name says which Qwen-VL family" in p.stderr
    p = run_cli("ask", "hi", "-m", name, env={**env, "QWENVL_UNLISTED_MODELS": name})
    assert p.returncode == 2 and "nothing in the name says which Qwen-VL family" in p.stderr, p.stderr
    assert "guessed" not in p.stderr, p.stderr
    with make_client(server, model=name) as c, pytest.raises(UsageError):
        c.ask("hi")
    assert not [r for r in server.requests if r.method == "POST"]  # (the double is asked what it lists: GET)
    for family in ("qwen3-omni-flash", "qwen3.5-vl-plus", "qvq-next"):  # a family word: guessed, with a warning
        assert run_cli("models", family).returncode == 0


# --- 8. the library's errors carry what the call gave ------------------------------------------------------


def test_aclose_names_its_own_wait_in_the_hint_of_a_call_it_cut(server):
    """After `await ac.aclose(wait_s=0.5)` the call cut said "close() waits 30 s"."""
    gate = threading.Event()
    server.enqueue(Reply(hold=gate, times=2))

    async def go() -> ClientClosedError:
        client = qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url)
        task = asyncio.ensure_future(client.ask("x"))
        while not server.requests:
            await asyncio.sleep(0.02)
        await client.aclose(wait_s=0.5)
        with pytest.raises(ClientClosedError) as err:
            await task
        return err.value

    try:
        error = asyncio.run(go())
    finally:
        gate.set()
    assert "aclose(wait_s=0.5) waited 0.5 s" in (error.hint or "") and "30 s" not in (error.hint or ""), error.hint
    client = make_client(server)
    server.enqueue(Reply(hold=gate))
    gate.clear()
    out: list[BaseException] = []
    thread = threading.Thread(target=lambda: _keep(out, lambda: client.ask("x")))
    thread.start()
    deadline = time.monotonic() + 30
    while len(server.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    client.close(wait_s=0)
    thread.join(60)
    gate.set()
    assert isinstance(out[0], ClientClosedError) and "close(wait_s=0) does not wait" in (out[0].hint or "")


def _keep(out: list[BaseException], call) -> None:
    try:
        call()
    except BaseException as exc:  # the test reads it
        out.append(exc)


def test_a_stream_error_event_keeps_its_status(client, server, protocol):
    """A stream ending with an SSE error event carrying HTTP 500 raised StreamInterruptedError with status None."""
    server.enqueue(Reply(text="a b c d e f", stream_error_after=1, status=500, error_message="internal"))
    with pytest.raises(StreamInterruptedError) as err:
        list(client.stream(prompt="go"))
    assert err.value.status == 500


def test_a_reply_that_is_not_json_keeps_its_status_and_request_id(client, server, protocol):
    """MalformedResponseError for an HTTP 200 non-JSON body had status None and request_id None."""
    server.enqueue(Reply(raw_body=b"<html>login</html>", content_type="text/html"))  # with the fake's x-request-id
    with pytest.raises(MalformedResponseError) as err:
        client.ask("x")
    assert err.value.status == 200 and err.value.request_id and len(err.value.request_id) == 36, err.value.request_id


@pytest.mark.parametrize("bad", [None, np.zeros((4, 4, 3), dtype=np.uint8), 3])
def test_ask_names_its_file_arguments_and_the_types_it_takes(server, bad):
    """`c.ask("hi", None)` or a numpy array said "invalid request: images.0: Input should be a valid string"."""
    with make_client(server) as client, pytest.raises(UsageError) as err:
        client.ask("hi", bad)
    said = str(err.value)
    assert said.startswith("ask's file 1 (argument 2, after the prompt) is "), said
    assert "a path (str or os.PathLike), a URL, bytes or a PIL image" in said and "images.0" not in said
    assert "Image.fromarray" in (err.value.hint or "")
    assert server.requests == []


def test_a_closed_pil_image_is_said_to_be_closed(server):
    img = Image.new("RGB", (40, 40))
    img.close()
    with make_client(server) as client, pytest.raises(UsageError) as err:
        client.ask("hi", img)
    assert "a PIL image given is closed" in str(err.value) and "images:" not in str(err.value)
    assert server.requests == []


def test_a_tokens_row_error_names_the_verbs_flag(isolated_env):
    """A file's row in `tokens` said "(from pages='9')": the library's words, in the CLI."""
    Image.new("RGB", (300, 400), "white").save(isolated_env / "doc.pdf")
    write_image(isolated_env / "a.png")
    p = run_cli("tokens", "doc.pdf", "a.png", "--pages", "9")
    assert p.returncode == 3, p.stdout
    assert "doc.pdf: error: doc.pdf has 1 page; page 9 (from --pages 9) is out of range" in p.stdout
    assert "pages='9'" not in p.stdout


def test_a_streamed_reply_that_is_not_json_keeps_its_status_and_request_id(client, server, protocol):
    server.enqueue(Reply(raw_body=b"<html>login</html>", content_type="text/html"))
    with pytest.raises(MalformedResponseError) as err:
        list(client.stream(prompt="x"))
    assert err.value.status == 200 and err.value.request_id and len(err.value.request_id) == 36, err.value.request_id


def test_analyze_names_the_prompt_as_its_request_writes_it(files):
    """The hint of an empty prompt said '(-p "...", prompt="...")' to analyze, which has neither."""
    p = run_cli("analyze", "--request", '{"prompt": "", "image": "a.png"}', env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 2, p.stderr
    (hint,) = _lines(p.stderr, "hint:")
    assert hint == 'hint: Give the question as words ("prompt": "..."), e.g. "What is in this picture?".', hint
