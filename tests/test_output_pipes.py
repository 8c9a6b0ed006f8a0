"""The output side misbehaving, with real processes and real pipes: a reader that left (``| head``), a closed
stdout (``>&-``), a closed or broken stderr (``2>&-``). Every verb: a closed stdout ends it quietly with 141
(128 + SIGPIPE), what was paid for still in the usage log or the batch journal; a closed stderr changes neither
the answer nor the exit code."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import API_KEY, CHILD_ENV_DROPPED, write_image
from dashscope_server import Reply
from qwenvl.cli.streams import EXIT_OUTPUT_CLOSED

EVENTS = {"events": [{"start_time": "00:00:00", "end_time": "00:00:01", "event": "A box is carried."}]}
# verb arguments -> the reply the loopback server gives (None: the echo), and whether a request is paid
VERBS: dict[str, tuple[list[str], Reply | None, bool]] = {
    "ask (streamed)": (["ask", "red.png", "what is it?"], None, True),
    "ask --no-stream": (["ask", "red.png", "what is it?", "--no-stream"], None, True),
    "ask --json": (["ask", "red.png", "what is it?", "--json"], None, True),
    "ocr": (["ocr", "red.png"], Reply(text="INVOICE 2024-001"), True),
    "ground": (["ground", "red.png", "the dot"], Reply(text='[{"bbox_2d": [1, 2, 300, 400], "label": "dot"}]'), True),
    "events": (["events", "f0.png", "f1.png", "f2.png", "f3.png"], Reply(text=json.dumps(EVENTS)), True),
    "extract": (["extract", "red.png", "--schema", "s.json"], Reply(text='{"title": "Tea"}'), True),
    "analyze": (["analyze", "--request", '{"prompt": "hi", "image": "red.png"}'], None, True),
    "chat": (["chat", "red.png"], None, True),
    "batch --json": (["batch", "red.png", "-p", "caption", "-o", "out.jsonl", "--json"], None, True),
    "tokens": (["tokens", "red.png"], None, False),
    "models": (["models"], None, False),
    "usage": (["usage"], None, False),
    "config": (["config"], None, False),
    "skill": (["skill"], None, False),
    "--help": (["--help"], None, False),
    "ask --help": (["ask", "--help"], None, False),
}


@pytest.fixture
def media(isolated_env: Path) -> Path:
    write_image(isolated_env / "red.png", (64, 48))
    for i in range(4):
        write_image(isolated_env / f"f{i}.png", (64, 48), (60 * i, 20, 20))
    (isolated_env / "s.json").write_text('{"type": "object", "properties": {"title": {"type": "string"}}}')
    return isolated_env


def child_env(server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CHILD_ENV_DROPPED)}
    env.update(
        DASHSCOPE_API_KEY=API_KEY,
        DASHSCOPE_COMPATIBLE_BASE_URL=server.compat_base,
        DASHSCOPE_HTTP_BASE_URL=server.native_base,
        COLUMNS="200",
    )
    return env


def gone_pipe() -> int:
    """The write end of a pipe whose reader has already left: the first write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


def run(
    args: list[str],
    server,
    *,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    close: tuple[int, ...] = (),
    input: bytes = b"",
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """``python -m qwenvl ARGS`` in a process of its own; ``close``: descriptors closed before it starts (as the
    shell's ``>&-`` and ``2>&-``), so its ``sys.stdout``/``sys.stderr`` are None."""

    def closed() -> None:
        for fd in close:
            os.close(fd)

    return subprocess.run(
        [sys.executable, "-m", "qwenvl", *args],
        stdout=stdout,
        stderr=stderr,
        input=input,
        env=child_env(server),
        timeout=timeout,
        preexec_fn=closed if close else None,
    )


def outcomes(home: Path) -> list[str]:
    """The usage log's outcomes, oldest first."""
    db = home / "usage.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT outcome FROM requests ORDER BY id")]
    finally:
        conn.close()


def qwenvl_home(isolated_env: Path) -> Path:
    return isolated_env.parent / "home" / ".qwenvl"


@pytest.mark.parametrize("verb", list(VERBS))
def test_a_reader_that_left_ends_every_verb_quietly_with_141_and_keeps_what_was_paid(server, media, verb):
    args, reply, paid = VERBS[verb]
    if reply is not None:
        server.enqueue(reply)
    pipe = gone_pipe()
    try:
        p = run(args, server, stdout=pipe, input=b"hello\n")
    finally:
        os.close(pipe)
    stderr = p.stderr.decode()
    assert p.returncode == EXIT_OUTPUT_CLOSED, stderr
    assert "Traceback" not in stderr and "error:" not in stderr and "Exception ignored" not in stderr
    if paid:
        assert len([r for r in server.requests if r.json]) == 1
        assert len(outcomes(qwenvl_home(media))) == 1  # logged: as "ok", or "cancelled" for a cut stream
    if verb.startswith("batch"):
        (row,) = [json.loads(line) for line in (media / "out.jsonl").read_text().splitlines()]
        assert row["status"] == "ok"  # the answer paid for is in the output and its journal


@pytest.mark.parametrize("verb", list(VERBS))
def test_a_closed_stderr_changes_neither_the_output_nor_the_exit_code(server, media, verb):
    args, reply, _ = VERBS[verb]
    for how in ("closed", "gone"):
        if reply is not None:
            server.enqueue(reply)
        if how == "closed":  # 2>&-
            p = run(args, server, stderr=None, close=(2,), input=b"hello\n")
        else:  # a reader of stderr that left
            pipe = gone_pipe()
            try:
                p = run(args, server, stderr=pipe, input=b"hello\n")
            finally:
                os.close(pipe)
        assert p.returncode == 0, (how, p.stdout[-500:])
        assert p.stdout.strip(), how  # the answer, the table, the help: all there
        assert b"Traceback" not in p.stdout and b"error:" not in p.stdout


@pytest.mark.parametrize(
    "args, code",
    [
        (["ask", "missing.png", "what?"], 3),
        (["ask", "red.png", "what?", "--max-tokens", "0"], 2),
        (["ask", "red.png", "what?", "--max-retries", "0"], 5),
        (["ask", "red.png", "what?", "--bogus"], 2),
        (["usage", "--days", "0"], 2),
        (["chat", "--session", "bad name"], 2),
        (["batch", "red.png", "-p", "x", "-o", "o.jsonl", "--max-retries", "0"], 5),
    ],
)
def test_errors_keep_their_exit_code_with_stderr_closed_or_gone(server, media, args, code):
    for how in ("closed", "gone"):
        server.enqueue(Reply(status=500, error_code="InternalError", error_message="boom", times=4))
        if how == "closed":
            p = run(args, server, close=(2,), stderr=None, input=b"hi\n")
        else:
            pipe = gone_pipe()
            try:
                p = run(args, server, stderr=pipe, input=b"hi\n")
            finally:
                os.close(pipe)
        assert p.returncode == code, (how, p.stdout)
        assert b"error:" not in p.stdout.lower() and b"Usage:" not in p.stdout  # never moved to stdout
        server.reset()


def test_a_closed_stdout_is_said_on_stderr_with_141(server, media):
    for args in (["ask", "red.png", "what?"], ["ask", "red.png", "what?", "--no-stream"], ["models"]):
        p = run(args, server, stdout=None, close=(1,))
        stderr = p.stderr.decode()
        assert p.returncode == EXIT_OUTPUT_CLOSED, stderr
        assert "standard output is closed" in stderr and "Traceback" not in stderr
        assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("verb", ["ask", "chat"])
def test_head_stops_a_streamed_answer_at_once_and_the_request_is_logged(server, media, verb):
    """``qwenvl ask ... | head -c1``: the reader leaves after the first piece; the stream is closed then (not
    read to its end, about 24 s here) and the request is in the usage log as cancelled."""
    words = " ".join(f"word{i}" for i in range(120))
    server.enqueue(Reply(text=words, chunk_delay_s=0.2))  # 40 chunks
    args = ["ask", "red.png", "tell a story"] if verb == "ask" else ["chat", "red.png"]
    read, write = os.pipe()
    head = subprocess.Popen(["head", "-c1"], stdin=read, stdout=subprocess.PIPE)
    os.close(read)
    started = time.monotonic()
    try:
        p = run(args, server, stdout=write, input=b"tell a story\n")
    finally:
        os.close(write)
        out, _ = head.communicate(timeout=30)
    assert out == b"w"
    assert p.returncode == EXIT_OUTPUT_CLOSED, p.stderr.decode()
    stderr = p.stderr.decode()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert "cancelled" not in stderr and "error" not in stderr  # quiet, as SIGPIPE would be
    assert time.monotonic() - started < 20  # it did not wait for the whole answer
    deadline = time.monotonic() + 10
    while outcomes(qwenvl_home(media)) != ["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outcomes(qwenvl_home(media)) == ["cancelled"]


@pytest.mark.parametrize("how", ["closed", "interrupted"])
def test_a_stream_its_reader_stops_is_in_the_usage_log_as_cancelled(server, protocol, how):
    """The library: a stream closed by its reader (``close()``, or an exception out of the loop, as Ctrl-C or a
    closed stdout) was in no log at all; it is now a ``cancelled`` row (its tokens unknown), in both clients."""
    import asyncio

    import qwenvl
    from conftest import make_client

    server.enqueue(Reply(text="a b c d e f g h", chunk_delay_s=0.05, times=2))
    with make_client(server, protocol) as client:
        events = client.stream(prompt="hi")
        next(events)
        if how == "closed":
            events.close()
        else:
            with pytest.raises(KeyboardInterrupt):
                for _ in events:
                    raise KeyboardInterrupt
            events.close()

    async def in_async() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as aclient:
            stream = aclient.stream(prompt="hi")
            await stream.__anext__()
            await stream.aclose()

    asyncio.run(in_async())
    assert outcomes(qwenvl.sessions.home()) == ["cancelled", "cancelled"]


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_reader_leaving_during_one_large_write_is_141_not_a_silent_cut(server, media, dry_run):
    """One write larger than the pipe (a 125 kB JSON answer) that the reader leaves part-way: CPython's buffered
    write reported success and dropped the rest (exit 0, output cut without a word); every byte is now written
    through the descriptor, so the next write finds the reader gone: 141."""
    if dry_run:  # the request shown holds the prompt
        args = ["ask", "red.png", "-p", "word " * 25_000, "--json", "--dry-run"]
    else:  # the answer is the large part
        server.enqueue(Reply(text="word " * 25_000))
        args = ["ask", "red.png", "-p", "a long answer", "--json"]
    read, write = os.pipe()
    head = subprocess.Popen(["head", "-c10"], stdin=read, stdout=subprocess.PIPE)
    os.close(read)
    try:
        p = run(args, server, stdout=write)
    finally:
        os.close(write)
        head.communicate(timeout=30)
    assert p.returncode == EXIT_OUTPUT_CLOSED, p.stderr.decode()
    assert "Traceback" not in p.stderr.decode()


def test_head_stops_an_ocr_reading_before_the_next_page_is_paid(server, media):
    """``qwenvl ocr doc.pdf | head -1``: page 1 is written, its reader leaves; page 2 is not sent (paid and lost)
    but the reading ends as a closed stdout does (141, quietly). Page 2 is large, so its rendering gives the reader
    time to leave before the check made just before sending it."""
    from PIL import Image

    pages = [Image.new("RGB", (595, 842), "white"), Image.new("RGB", (4000, 4000), "white")]
    pages[0].save(media / "doc.pdf", save_all=True, append_images=pages[1:])
    server.enqueue(Reply(text="PAGE ONE"))
    server.enqueue(Reply(text="PAGE TWO"))
    read, write = os.pipe()
    head = subprocess.Popen(["head", "-1"], stdin=read, stdout=subprocess.PIPE)
    os.close(read)
    try:
        p = run(["ocr", "doc.pdf"], server, stdout=write)
    finally:
        os.close(write)
        out, _ = head.communicate(timeout=30)
    stderr = p.stderr.decode()
    assert out == b"PAGE ONE\n"
    assert p.returncode == EXIT_OUTPUT_CLOSED, stderr
    assert "Traceback" not in stderr and "error" not in stderr
    assert len([r for r in server.requests if r.json]) == 1  # page 2 was never sent
    assert outcomes(qwenvl_home(media)) == ["ok"]


def test_the_reader_check_costs_nothing_on_a_file_and_finds_a_closed_pipe(tmp_path):
    from qwenvl.cli.streams import OutputClosed, _Guarded

    with open(tmp_path / "out.txt", "w") as f:
        _Guarded(f, output=True).check_reader()  # a file: never "gone"
    read, write = os.pipe()
    stream = os.fdopen(write, "w")
    try:
        guarded = _Guarded(stream, output=True)
        guarded.check_reader()  # the reader is there
        os.close(read)
        with pytest.raises(OutputClosed) as caught:
            guarded.check_reader()
        assert caught.value.reader_left
    finally:
        stream.close()
