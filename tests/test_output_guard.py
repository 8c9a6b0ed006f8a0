"""Output options never destroy what the user has (qwenvl.outputs.check_outputs, the one rule of every verb).

A new user found that `ocr a.jpg -o a.jpg` turned the photo into text (exit 0), `extract --csv` and `batch --csv`
overwrote an input image or the JSONL output, `analyze --output` its own schema, `events --sheet` and `ground
--out` their input picture. Each is refused now (exit 2, one line naming the option and the file), before
anything is sent, and the file keeps its bytes; a re-run onto the command's own previous output still works.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import API_KEY, run_cli, write_image
from dashscope_server import Reply
from qwenvl.batch import Batch, BatchItem
from qwenvl.errors import UsageError
from qwenvl.media.sources import held_media
from qwenvl.outputs import check_outputs

SCHEMA = '{"type": "object", "properties": {"title": {"type": "string"}}}'


@pytest.fixture
def files(isolated_env: Path) -> Path:
    write_image(isolated_env / "a.jpg", (64, 48), fmt="JPEG")
    write_image(isolated_env / "b.png", (64, 48), (10, 200, 10))
    (isolated_env / "s.json").write_text(SCHEMA)
    (isolated_env / "dir").mkdir()
    write_image(isolated_env / "dir" / "c.png", (64, 48), (10, 10, 200))
    (isolated_env / "req.jsonl").write_text(json.dumps({"id": "1", "prompt": "p", "image": "b.png"}) + "\n")
    (isolated_env / "req.json").write_text(json.dumps({"prompt": "p", "image": "b.png"}))
    line = {"id": "1", "prompt": "p", "image": "b.png", "schema": "s.json"}  # files a request line names
    (isolated_env / "rqs.jsonl").write_text(json.dumps(line) + "\n")
    with contextlib.closing(sqlite3.connect(isolated_env / "keep.db")) as db:  # e.g. a copy of the usage log
        db.execute("CREATE TABLE t (x)")
        db.commit()
    (isolated_env / "other.jsonl").write_text('{"id": "1", "status": "ok"}\n')  # another batch's output...
    (isolated_env / "other.jsonl.journal").write_bytes((isolated_env / "keep.db").read_bytes())  # ...and journal
    return isolated_env


REFUSED = {
    "ocr -o onto its input": (["ocr", "a.jpg", "-o", "a.jpg"], "-o/--output", "a.jpg"),
    "ocr -o onto another photo": (["ocr", "b.png", "-o", "a.jpg"], "-o/--output", "a.jpg"),
    "extract --csv onto an input": (
        ["extract", "a.jpg", "b.png", "--schema", "s.json", "--csv", "a.jpg"],
        "--csv",
        "a.jpg",
    ),
    "extract --csv onto its schema": (["extract", "a.jpg", "--schema", "s.json", "--csv", "s.json"], "--csv", "s.json"),
    "batch --csv onto -o": (["batch", "dir", "-p", "x", "-o", "r.jsonl", "--csv", "r.jsonl"], "--csv", "r.jsonl"),
    "batch --csv onto a photo": (["batch", "dir", "-p", "x", "-o", "r.jsonl", "--csv", "a.jpg"], "--csv", "a.jpg"),
    "batch -o onto a photo": (["batch", "dir", "-p", "x", "-o", "a.jpg", "--fresh", "--yes"], "-o/--output", "a.jpg"),
    "batch -o onto --requests": (
        ["batch", "--requests", "req.jsonl", "-o", "req.jsonl", "--fresh"],
        "-o/--output",
        "req.jsonl",
    ),
    "batch --csv onto --schema": (
        ["batch", "dir", "-p", "x", "--schema", "s.json", "-o", "r.jsonl", "--csv", "s.json"],
        "--csv",
        "s.json",
    ),
    "analyze --output onto --schema": (
        ["analyze", "--file", "req.json", "--schema", "s.json", "--output", "s.json"],
        "--output",
        "s.json",
    ),
    "analyze --output onto --file": (["analyze", "--file", "req.json", "--output", "req.json"], "--output", "req.json"),
    "analyze --output onto the request's image": (
        ["analyze", "--request", '{"prompt": "p", "image": "b.png"}', "--output", "b.png"],
        "--output",
        "b.png",
    ),
    "batch --csv onto a request line's schema": (
        ["batch", "--requests", "rqs.jsonl", "-o", "r.jsonl", "--csv", "s.json", "--fresh", "--yes"],
        "csv",
        "rqs.jsonl line 1: schema",
    ),
    "batch -o --fresh onto a request line's schema": (
        ["batch", "--requests", "rqs.jsonl", "-o", "s.json", "--fresh", "--yes"],
        "output",
        "rqs.jsonl line 1: schema",
    ),
    "batch -o --fresh onto a request line's image": (
        ["batch", "--requests", "rqs.jsonl", "-o", "b.png", "--fresh", "--yes"],
        "output",
        "b.png",
    ),
    "ocr -o onto an SQLite database": (["ocr", "a.jpg", "-o", "keep.db"], "-o/--output", "SQLite"),
    "analyze --output onto an SQLite database": (
        ["analyze", "--file", "req.json", "--output", "keep.db"],
        "--output",
        "SQLite",
    ),
    "batch --csv onto another batch's journal": (
        ["batch", "dir", "-p", "x", "-o", "r.jsonl", "--csv", "other.jsonl.journal"],
        "--csv",
        "SQLite",
    ),
    "batch --csv onto another batch's output": (
        ["batch", "dir", "-p", "x", "-o", "r.jsonl", "--csv", "other.jsonl"],
        "--csv",
        "output of a qwenvl batch",
    ),
    "extract --csv onto a batch's output": (
        ["extract", "a.jpg", "--schema", "s.json", "--csv", "other.jsonl"],
        "--csv",
        "output of a qwenvl batch",
    ),
    "ocr -o onto a batch's output": (["ocr", "a.jpg", "-o", "other.jsonl"], "-o/--output", "other.jsonl"),
    "events --sheet onto a frame": (["events", "a.jpg", "b.png", "--sheet", "b.png"], "--sheet", "b.png"),
    "ground --out onto its input": (["ground", "a.jpg", "dog", "--out", "a.jpg"], "--out", "a.jpg"),
    "ground --out onto its input by another spelling": (
        ["ground", "a.jpg", "dog", "--out", "./dir/../a.jpg"],
        "--out",
        "a.jpg",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_an_output_that_would_destroy_a_file_is_refused_before_sending(case: str, files: Path, server, env) -> None:
    args, option, name = REFUSED[case]
    before = {p: p.read_bytes() for p in files.rglob("*") if p.is_file()}
    p = run_cli(*args, env=env)
    assert p.returncode == 2, (case, p.stdout, p.stderr)
    error = p.stderr.splitlines()[0]
    assert error.startswith("error:") and option in error and name in error, error
    assert "Traceback" not in p.stderr
    assert not server.requests  # nothing sent, nothing paid
    after = {p: p.read_bytes() for p in files.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k in before} == before  # every file keeps its bytes


def test_a_hard_link_to_the_input_is_the_input(files: Path, server, env) -> None:
    os.link(files / "a.jpg", files / "alias.jpg")
    p = run_cli("ground", "a.jpg", "dog", "--out", "alias.jpg", env=env)
    assert p.returncode == 2 and "--out" in p.stderr and "(IMAGE)" in p.stderr
    assert not server.requests


def test_a_rerun_onto_its_own_previous_output_works(files: Path, server, env) -> None:
    for _ in range(2):
        server.enqueue(Reply(text="TEXT"))
        p = run_cli("ocr", "a.jpg", "-o", "out.txt", env=env)
        assert p.returncode == 0, p.stderr
    assert (files / "out.txt").read_text() == "TEXT\n"
    for _ in range(2):  # a picture output replaces the picture it drew before
        server.enqueue(Reply(text='[{"bbox_2d": [10, 10, 500, 500], "label": "dog"}]'))
        p = run_cli("ground", "a.jpg", "dog", "--out", "boxes.png", env=env)
        assert p.returncode == 0, p.stderr
    for _ in range(2):
        server.enqueue(Reply(text="fine"))
        p = run_cli("analyze", "--file", "req.json", "--output", "r.json", env=env)
        assert p.returncode == 0, p.stderr
    assert json.loads((files / "r.json").read_text())["text"] == "fine"
    for _ in range(2):
        server.enqueue(Reply(text='{"title": "x"}'))
        p = run_cli("extract", "a.jpg", "--schema", "s.json", "--csv", "t.csv", env=env)
        assert p.returncode == 0, p.stderr
    for _ in range(2):  # batch: the second run resumes onto its output and CSV
        p = run_cli("batch", "dir", "-p", "x", "-o", "r.jsonl", "--csv", "r.csv", env=env)
        assert p.returncode == 0, p.stderr
    assert (files / "r.csv").read_text().startswith("id,")


def test_the_library_batch_refuses_a_csv_that_is_its_output(files: Path, server) -> None:
    items = [BatchItem(id="1", request={"prompt": "p", "image": str(files / "b.png")})]
    with Batch(items, files / "r.jsonl", api_key=API_KEY, base_url=server.url) as job:
        assert job.run().ok == 1  # the output and its journal exist now
    server.reset()
    for csv in (files / "r.jsonl", files / "r.jsonl.journal", files / "a.jpg"):
        job = Batch(items, files / "r.jsonl", csv=csv, api_key=API_KEY, base_url=server.url)
        with job, pytest.raises(UsageError, match="csv"):
            job.run()
    assert not server.requests


def test_the_library_batch_refuses_an_item_naming_its_output_as_the_items_are_taken(files: Path, server) -> None:
    """Each item's files (image, images, video, a schema file) are inputs: checked as a lazy stream of items is
    taken (no list of them), before anything is sent or written; --fresh deletes nothing."""
    taken = []

    def items(bad: dict[str, object]):
        for n in range(50):
            taken.append(n)
            request = {"prompt": "p", "image": str(files / "b.png")}
            yield BatchItem(id=str(n), request={**request, **bad} if n == 20 else request)

    out = files / "r.jsonl"
    for bad, target, csv in (
        ({"schema": "s.json"}, files / "s.json", None),  # the output is the 21st item's schema
        ({"images": [str(files / "a.jpg"), "r.csv"]}, out, files / "r.csv"),
        ({"video": [str(out), str(out)]}, out, None),
    ):
        (files / "r.csv").write_text("id,status\n")
        out.write_text('{"id": "x"}\n')
        before = {p: p.read_bytes() for p in files.rglob("*") if p.is_file()}
        taken.clear()
        with pytest.raises(UsageError, match=r"item '20': (schema|images|video)\)"):
            Batch(items(bad), target, csv=csv, fresh=True, api_key=API_KEY, base_url=server.url)
        assert taken[-1] == 20  # refused as item 21 was taken, not after all of them
        after = {p: p.read_bytes() for p in files.rglob("*") if p.is_file()}
        assert after == before  # nothing deleted, nothing written, no journal
    assert not server.requests


@contextlib.contextmanager
def written(match: str) -> Iterator[None]:
    """A UsageError whose words as written (the CLI's: check_outputs is given its names, ``-o``) match ``match``;
    ``str()`` is the library's (``output='keep.db'``)."""
    with pytest.raises(UsageError) as caught:
        yield
    assert re.search(match, caught.value.as_written()), caught.value.as_written()


def test_check_outputs_refuses_data_no_output_may_replace(files: Path) -> None:
    with written(match=r"keep\.db holds an SQLite database"):
        check_outputs({"-o": "keep.db"})
    with written(match=r"holds an SQLite database"):  # a picture output too
        check_outputs({"--out": "keep.db"}, pictures={"--out"})
    with written(match=r"other\.jsonl holds the output of a qwenvl batch"):
        check_outputs({"-o": "other.jsonl"})
    # the batch's own output, which it resumes, is not refused for having its journal
    assert check_outputs({"-o": "other.jsonl"}, resumed={"-o"}) == {"-o": Path("other.jsonl")}


def test_check_outputs_names_what_it_protects(files: Path) -> None:
    with written(match=r"-o .*a\.jpg is also an input of this command \(the image\)"):
        check_outputs({"-o": "a.jpg"}, inputs={"the image": ["https://example.com/x.png", "-", "a.jpg"]})
    with written(match=r"--csv .*x\.csv is also the file of -o"):
        check_outputs({"-o": "x.csv", "--csv": "./x.csv"})  # neither exists yet
    with written(match=r"holds an image \(PNG\)"):
        check_outputs({"-o": "b.png"})
    with written(match=r"--out .*b\.png exists and was not written by qwenvl"):  # a photo of the user's
        check_outputs({"--out": "b.png"}, pictures={"--out"})
    assert check_outputs({"--out": "b.png"}, pictures={"--out"}, force=True) == {"--out": Path("b.png")}
    assert check_outputs({"-o": None}) == {}


@pytest.mark.parametrize(
    "content, held",
    [
        (b"%PDF-1.7\n", "a PDF"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", "a video (video/mp4)"),
        (b"\xff\xd8\xff\xe0 cut short", "an image"),
        (b'{"id": "1", "status": "ok"}\n', None),
        (b"id,status\n1,ok\n", None),
        (b"P1 is the first page\n", None),
        (b"", None),
    ],
)
def test_held_media_by_the_bytes(content: bytes, held: str | None, isolated_env: Path) -> None:
    path = isolated_env / "file.txt"  # the name says nothing: the bytes do
    path.write_bytes(content)
    assert held_media(path) == held
