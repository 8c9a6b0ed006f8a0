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
