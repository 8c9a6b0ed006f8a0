"""Every run of many requests stops when the service cannot be reached, by batch's rule (one home:
``qwenvl.retry.Reachability``), keeping what was read; a wrong kind of input exits 3 in every verb; a batch option
outside its documented range, or one that does not apply to the mode, is refused."""

from __future__ import annotations

import asyncio
import csv
import json
import socket

import pytest

import qwenvl
from conftest import API_KEY, run_cli, write_image
from dashscope_server import Reply
from qwenvl.batch.runner import UNREACHABLE_ITEMS
from qwenvl.errors import APIConnectionError
from qwenvl.tasks import aextract_many, extract_many

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}}}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def many(isolated_env):
    (isolated_env / "s.schema.json").write_text(json.dumps(SCHEMA))
    (isolated_env / "many").mkdir()
    return [str(write_image(isolated_env / "many" / f"f{i}.png")) for i in range(8)]


# --- 1. a service that cannot be reached stops every run of many requests -----------------------------------------


def test_extract_over_files_stops_on_a_dead_server_and_keeps_what_was_read(many, isolated_env):
    url = f"http://127.0.0.1:{closed_port()}"
    env = {"DASHSCOPE_API_KEY": API_KEY}
    args = ("extract", "many", "--schema", "s.schema.json", "--base-url", url, "--retry-backoff-s", "0.01", "--yes")
    p = run_cli(*args, "--csv", "out.csv", env=env)
    assert p.returncode == 5 and "Traceback" not in p.stderr, p.stderr
    assert f"cannot be reached: the first {UNREACHABLE_ITEMS} files failed on every attempt" in p.stderr
    assert p.stderr.count("error: many/") == UNREACHABLE_ITEMS - 1  # the others were never sent
    with (isolated_env / "out.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == ["many/f0.png", "many/f1.png"]  # the rows so far are kept
    assert "--resume" in p.stderr  # and how to go on from them is said
    p = run_cli(*args, env=env)  # JSON lines: the same stop
    assert p.returncode == 5 and "cannot be reached" in p.stderr, p.stderr
    assert len(p.stdout.splitlines()) == UNREACHABLE_ITEMS - 1


def test_the_library_extract_many_stops_on_a_dead_server(many):
    url = f"http://127.0.0.1:{closed_port()}"
    rows = []
    with (
        qwenvl.Client(api_key=API_KEY, base_url=url, max_retries=0) as client,
        pytest.raises(APIConnectionError, match="cannot be reached"),
    ):
        for row in extract_many(client, many, SCHEMA):
            rows.append(row)
    assert len(rows) == UNREACHABLE_ITEMS - 1 and all(not r.ok for r in rows)

    async def go() -> list:
        got = []
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=url, max_retries=0) as aclient:
            with pytest.raises(APIConnectionError, match="cannot be reached"):
                async for row in aextract_many(aclient, many, SCHEMA):
                    got.append(row)
        return got

    assert len(asyncio.run(go())) == UNREACHABLE_ITEMS - 1


def test_a_service_that_answered_is_not_taken_for_unreachable(server, many):
    """The rule applies before the service answered anything, as batch's: one answer, then failures, goes on."""
    server.enqueue(Reply(text='{"title": "A"}'), *[Reply(status=500) for _ in range(7)])
    with qwenvl.Client(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
        rows = list(extract_many(client, many, SCHEMA))
    assert len(rows) == len(many) and rows[0].ok and not any(r.ok for r in rows[1:])


# --- 2. a wrong kind of input exits 3 in every verb, said in the verb's words -------------------------------------


@pytest.fixture
def kinds(isolated_env):
    from PIL import Image

    write_image(isolated_env / "photo.png")
    pages = [Image.new("RGB", (200, 280), "white") for _ in range(2)]
    pages[0].save(isolated_env / "doc.pdf", save_all=True, append_images=pages[1:])
    (isolated_env / "notes.txt").write_text("hello\n")
    (isolated_env / "folder").mkdir()
    (isolated_env / "s.schema.json").write_text(json.dumps(SCHEMA))
    return isolated_env


EVENTS_READS = "events reads a video, or several frames as images in order"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["events", "photo.png"], f"photo.png is one still image, which has no events in time: {EVENTS_READS}"),
        (["events", "photo.png", "--dry-run"], "photo.png is one still image"),
        (["events", "doc.pdf"], f"doc.pdf is a PDF: {EVENTS_READS}"),
        (["events", "notes.txt"], "notes.txt"),
        (["events", "folder"], "folder"),
        (["ocr", "notes.txt"], "notes.txt"),
        (["ocr", "folder"], "folder"),
        (["ground", "notes.txt", "a cat"], "notes.txt"),
        (["ground", "folder", "a cat"], "folder"),
        (["ask", "notes.txt", "-p", "hi"], "notes.txt"),
        (["ask", "folder", "-p", "hi"], "folder"),
        (["extract", "notes.txt", "--schema", "s.schema.json"], "notes.txt"),
    ],
)
def test_a_wrong_kind_of_input_exits_3(kinds, server, env, args, says):
    p = run_cli(*args, env=env)
    assert p.returncode == 3 and "Traceback" not in p.stderr, (args, p.stderr)
    error = next(line for line in p.stderr.splitlines() if line.startswith("error: "))
    assert says in error and "hint: " in p.stderr, p.stderr
    assert not [r for r in server.requests if r.path.endswith(("/chat/completions", "/generation"))]


def test_the_library_refuses_one_still_image_as_input(kinds, server):
    from qwenvl.errors import MediaError
    from qwenvl.tasks import plan_events

    with qwenvl.Client(api_key=API_KEY, base_url=server.url) as client:
        for video in ("photo.png", ["photo.png"]):
            with pytest.raises(MediaError, match=EVENTS_READS) as info:
                plan_events(client, video)
            assert info.value.exit_code == 3 and info.value.source == "photo.png"


# --- 3. batch's options: the documented range, and refused in the mode they do not apply to ------------------------


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--mode", "batch-api", "--poll-interval", "0"], "--poll-interval"),
        (["--poll-interval", "5"], "--poll-interval applies to --mode batch-api only"),
        (["--no-wait"], "--no-wait applies to --mode batch-api only"),
        (["--mode", "batch-api", "--concurrency", "3"], "--concurrency applies to --mode realtime only"),
        (["--mode", "batch-api", "--rpm", "60"], "--rpm applies to --mode realtime only"),
        (["--mode", "batch-api", "--tpm", "1000"], "--tpm applies to --mode realtime only"),
    ],
)
def test_batch_refuses_an_option_out_of_range_or_of_the_other_mode(kinds, server, env, flags, says):
    p = run_cli("batch", "photo.png", "-p", "hi", "-o", "o.jsonl", *flags, env=env)
    assert p.returncode == 2 and says in p.stderr and "hint: " in p.stderr, p.stderr
    assert not server.requests and not (kinds / "o.jsonl").exists()


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"mode": "batch-api", "poll_interval_s": 0}, "poll_interval_s must be greater than 0"),
        ({"poll_interval_s": 5}, "poll_interval_s applies to mode='batch-api' only"),
        ({"wait": False}, "wait=False applies to mode='batch-api' only"),
        ({"mode": "batch-api", "concurrency": 3}, "concurrency applies to mode='realtime' only"),
        ({"mode": "batch-api", "rpm": 60}, "rpm applies to mode='realtime' only"),
    ],
)
def test_the_library_batch_refuses_them_too(kinds, kw, says):
    from qwenvl.batch import Batch, BatchItem
    from qwenvl.errors import UsageError

    items = [BatchItem(id="a", request={"prompt": "hi"})]
    with pytest.raises(UsageError) as info:
        Batch(items, "o.jsonl", api_key=API_KEY, **kw)
    assert str(info.value).startswith(says) and info.value.exit_code == 2
