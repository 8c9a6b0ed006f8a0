"""A batch's memory does not grow with its items (issue 15, section 4): items may come from a generator (taken
once, spooled to a temporary SQLite file), requests files are read lazily, and the runner keeps no Python
state per item. Run on an in-memory backend (no HTTP), with the real journal, spool and usage log."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import qwenvl
from conftest import API_KEY
from qwenvl.batch import Batch, BatchItem, read_requests
from qwenvl.errors import MediaError, UsageError
from test_batch import _EchoBackend, read_jsonl


def _items(n: int, taken: list[int] | None = None) -> Iterator[BatchItem]:
    for i in range(n):
        if taken is not None:
            taken.append(i)
        yield BatchItem(id=f"i{i:05d}", request={"prompt": f"question {i}"}, input=f"question {i}")


def test_a_generator_is_taken_once_and_a_second_batch_resumes(isolated_env):
    backend = _EchoBackend()
    client = qwenvl.Client(backend=backend)
    taken: list[int] = []
    job = Batch(_items(30, taken), isolated_env / "out.jsonl", client=client, concurrency=4)
    assert len(taken) == 30  # taken by the constructor, once
    est = job.estimate()
    assert est.items == est.pending == est.to_send == 30
    summary = job.run()
    assert summary.ok == 30 and len(taken) == 30 and len(backend.prompts) == 30
    lines = read_jsonl(isolated_env / "out.jsonl")
    assert [r["id"] for r in lines] == [f"i{i:05d}" for i in range(30)]  # input order
    assert [r["input"] for r in lines] == [f"question {i}" for i in range(30)]
    # a new run over the same output with a new generator: nothing is sent again
    again = Batch(_items(31), isolated_env / "out.jsonl", client=client, concurrency=4)
    assert again.estimate().pending == 1
    assert again.run().this_run == 1 and len(backend.prompts) == 31
    assert [r["id"] for r in read_jsonl(isolated_env / "out.jsonl")] == [f"i{i:05d}" for i in range(31)]


def test_an_id_repeated_by_a_generator_is_refused_naming_both_items(isolated_env):
    def items() -> Iterator[BatchItem]:
        yield from _items(2)
        yield BatchItem(id="i00000", request={"prompt": "again"})

    with pytest.raises(UsageError, match=r"'i00000' is given twice \(items 1 and 3\)"):
        Batch(items(), isolated_env / "out.jsonl", client=qwenvl.Client(backend=_EchoBackend()))


def test_an_item_that_cannot_be_pickled_is_kept_and_runs(isolated_env):
    class Caption(BaseModel):  # defined in a function: pickle cannot find it, so the spool keeps the item
        text: str

    backend = _EchoBackend()
    items = [
        BatchItem(id="plain", request={"prompt": "a"}),
        BatchItem(id="typed", request={"prompt": "b", "schema": Caption, "repair": False}),
    ]
    job = Batch(items, isolated_env / "out.jsonl", client=qwenvl.Client(backend=backend), concurrency=2)
    assert list(job.spool.kept) == [1]
    summary = job.run()
    assert summary.total == 2 and summary.pending == 0
    lines = read_jsonl(isolated_env / "out.jsonl")
    assert [r["id"] for r in lines] == ["plain", "typed"]
    assert lines[1]["status"] == "error" and lines[1]["error"]["type"] == "StructuredOutputError"  # the schema applied


def test_read_requests_reads_as_it_is_iterated(tmp_path: Path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": "x"}) + "\n" for i in range(3)) + "not json\n", encoding="utf-8"
    )
    it = read_requests(path)
    assert [next(it).id for _ in range(3)] == ["q0", "q1", "q2"]  # line 4 not read yet
    with pytest.raises(UsageError, match=r"r\.jsonl line 4: not valid JSON"):
        next(it)
    with pytest.raises(MediaError, match="requests file not found"):  # an input error (exit 3)
        read_requests(tmp_path / "absent.jsonl")  # at once, not when iterated
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UsageError, match="has no requests"):
        list(read_requests(tmp_path / "empty.jsonl"))


class _ForgetfulEcho(_EchoBackend):
    """The echo backend without its list of every prompt (state of the test's own, per item)."""

    def complete(self, call):
        response = super().complete(call)
        with self.lock:
            self.prompts.clear()
        return response


def _traced_peak(folder: Path, n: int, tag: str = "") -> int:
    """Peak Python memory (tracemalloc) of a batch of ``n`` items from a generator: constructor, estimate, run."""
    client = qwenvl.Client(backend=_ForgetfulEcho())
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        job = Batch(_items(n), folder / f"out{n}{tag}.jsonl", client=client, concurrency=4)
        job.estimate()
        summary = job.run()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert summary.ok == n
    return peak


def test_the_runner_keeps_no_python_state_per_item(isolated_env, monkeypatch):
    """Before the spool, the runner held the items, a fingerprint, a pending id and an estimate per item: several
    hundred bytes each. Now the peak of Python allocations must not grow with the items (40 B per item allows
    for noise: the threads' timing changes what is in flight at the peak). Both sizes are above the spool's
    chunks; the usage log is off here (its queue depth depends on the threads' timing: bounded, see below)."""
    monkeypatch.setenv("QWENVL_LOG", "0")
    _traced_peak(isolated_env, 50)  # warm-up: imports, connections, caches
    # the lower of two runs each: what is in flight at the peak depends on the threads' timing
    small = min(_traced_peak(isolated_env, 600, tag) for tag in "ab")
    large = min(_traced_peak(isolated_env, 3600, tag) for tag in "ab")
    assert large - small < 40 * 3000, f"peak of Python allocations: {small} B at 600 items, {large} B at 3600"


def test_a_temporary_folder_without_room_is_one_line_and_sends_nothing(server, isolated_env):
    """The spool goes to SQLite's temporary folder: when it is full, `qwenvl batch` says so in one line (exit 2)
    with the way out, before any request."""
    from conftest import API_KEY, run_cli_process  # SQLite reads its temporary folder once per process
    from test_batch_journal import tmpfs

    reqs = isolated_env / "r.jsonl"
    with reqs.open("w", encoding="utf-8") as fh:
        for i in range(1500):  # about 6 MB of prompts: more than the 1 MB folder holds
            fh.write(json.dumps({"id": f"q{i}", "prompt": f"{i} " + "x" * 4000}) + "\n")
    small = isolated_env / "small-tmp"
    with tmpfs(small, "size=1m"):
        env = {"DASHSCOPE_API_KEY": API_KEY, "SQLITE_TMPDIR": str(small), "TMPDIR": str(small)}
        p = run_cli_process("batch", "--requests", str(reqs), "-o", "out.jsonl", "--base-url", server.url, env=env)
    assert p.returncode == 2, p.stderr
    assert "cannot write the batch's temporary file: no space left" in p.stderr
    assert "TMPDIR" in p.stderr and "Traceback" not in p.stderr
    assert server.requests == []


# --- every kind of batch: folders, the Batch API, reruns -------------------------------------------------------


def _peak(fn: Callable[[], object]) -> int:
    """Peak Python memory (tracemalloc) while ``fn`` runs, above what was traced when it began."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _flat(measure: Callable[[int, str], int], small_n: int, large_n: int, per_item: int = 40) -> None:
    """The lower of two peaks at each size (what is in flight at the peak depends on timing) must not grow by
    ``per_item`` bytes per added item."""
    measure(small_n // 4, "w")  # warm-up: imports, connections, caches
    small = min(measure(small_n, tag) for tag in "ab")
    large = min(measure(large_n, tag) for tag in "ab")
    assert large - small < per_item * (large_n - small_n), (
        f"peak of Python allocations: {small} B at {small_n} items, {large} B at {large_n}"
    )


def _interned(names: Iterator[str]) -> list[str]:
    """The file names a test will use, interned and held: Python 3.11's pathlib interns every part of every path it
    parses (``sys.intern``), so the interpreter's table of interned strings grows, in steps of a whole new table,
    as new names come; holding them from the start keeps that table, which is CPython's, out of the measure."""
    return [sys.intern(name) for name in names]


def _png_folder(folder: Path, n: int) -> Path:
    """``n`` small PNGs (the same bytes each: the walk is measured, not the pictures) in ``folder``, two levels."""
    from conftest import write_image

    data = write_image(folder.parent / f"{folder.name}.src.png").read_bytes()
    for i in range(n):
        sub = folder / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"p{i:05d}.png").write_bytes(data)
    return folder


def test_a_folder_is_walked_without_a_list_of_its_files(isolated_env):
    """A folder given as input was read into a list of every path (and a dict to drop duplicates), held while the
    batch ran: ~200 B per file. ``iter_inputs`` walks it through a temporary database."""
    from qwenvl.batch import iter_inputs

    folders = {n: _png_folder(isolated_env / f"photos{n}", n) for n in (150, 600, 3600)}
    held = _interned(f"p{i:05d}.png" for i in range(3600))

    def measure(n: int, tag: str) -> int:
        count = 0

        def walk() -> None:
            nonlocal count
            for _ in iter_inputs([str(folders[n]), str(folders[n] / "d0")]):  # d0 again: its files are dropped
                count += 1

        peak = _peak(walk)
        assert count == n
        return peak

    _flat(measure, 600, 3600)
    assert len(held) == 3600  # (held until here)


def test_iter_inputs_keeps_the_walk_order(isolated_env):
    """The order is ``os.walk``'s with sorted names (a folder's files, then its subfolders), globs sorted, hidden
    entries and links to folders skipped, duplicates dropped at their second mention: as before the walk went
    through a temporary database."""
    from conftest import write_image
    from qwenvl.batch import expand_inputs

    root = isolated_env / "tree"
    names = ["a", "ab", "a b", "a.b", "B", "é", "z"]
    for sub in ["", "a", "ab", "a b", "a/b", "é", ".hidden", "a/ab", "Z"]:
        for name in names:
            (root / sub).mkdir(parents=True, exist_ok=True)
            write_image(root / sub / f"{name}.png")
        (root / sub / "notes.txt").write_text("not media")
    (root / "link").symlink_to(root / "a", target_is_directory=True)

    def walked(folder: Path) -> list[str]:  # the reference: os.walk, names sorted, hidden ones skipped
        out = []
        for where, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out += [str(Path(where) / f) for f in sorted(files) if not f.startswith(".") and f.endswith(".png")]
        return out

    assert expand_inputs([str(root)]) == walked(root)
    assert expand_inputs([str(root / "a"), str(root)]) == list(dict.fromkeys(walked(root / "a") + walked(root)))
    matches = sorted(glob.glob(str(root / "*")))  # a file a glob matches is taken as given (notes.txt too)
    expected = [r for m in matches for r in (walked(Path(m)) if Path(m).is_dir() else [m])]
    assert expand_inputs([str(root / "*")]) == list(dict.fromkeys(expected))
    url, one = "https://example.com/x.png", str(root / "a.png")
    pngs = sorted(glob.glob(str(root / "*.png")))
    assert expand_inputs([one, url, one, str(root / "*.png")]) == [one, url, *(p for p in pngs if p != one)]


def test_a_dry_run_over_a_folder_keeps_no_list_of_paths(isolated_env):
    """``qwenvl batch FOLDER`` (here a dry run: no key, nothing sent) made a list of every path before the batch
    took its items, and held it to the end."""
    from conftest import run_cli

    folders = {n: _png_folder(isolated_env / f"photos{n}", n) for n in (150, 600, 3600)}
    held = _interned(f"p{i:05d}.png" for i in range(3600))

    def measure(n: int, tag: str) -> int:
        result: list[Any] = []

        def cli() -> None:
            result.append(run_cli("batch", str(folders[n]), "-p", "x", "-o", f"out{n}{tag}.jsonl", "--dry-run"))

        peak = _peak(cli)
        [p] = result
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["items"] == n
        return peak

    _flat(measure, 600, 3600)
    assert len(held) == 3600  # (held until here)


@contextlib.contextmanager
def batch_api_process() -> Iterator[str]:
    """The Batch API double (tests/batch_server.py) in a process of its own, every job completed at its first poll:
    tracemalloc measures this whole process, and the double keeps every file it is sent. Yields its URL; it ends
    when its standard input is closed."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from batch_server import BatchServer; "
        "srv = BatchServer(api_key=sys.argv[2]).start(); srv.polls_to_complete = 1; print(srv.url, flush=True); "
        "sys.stdin.read(); srv.stop()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(Path(__file__).parent), API_KEY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        url = proc.stdout.readline().strip()  # "" if it died: then Batch fails to connect, and says so
        yield url
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def test_the_batch_api_mode_keeps_no_python_state_per_item(isolated_env, monkeypatch):
    """``--mode batch-api`` held each input file's lines in memory (up to 50,000 of them, then joined into one
    bytes), every submitted id in a set, and each job's ids again while merging its results: ~300 B per item.
    The lines now go to a temporary file, the ids to the spool and the journal."""
    monkeypatch.setenv("QWENVL_LOG", "0")
    with batch_api_process() as url:

        def measure(n: int, tag: str) -> int:
            summaries = []

            def run() -> None:
                with Batch(
                    _items(n),
                    isolated_env / f"api{n}{tag}.jsonl",
                    api_key=API_KEY,
                    base_url=url,
                    mode="batch-api",
                    poll_interval_s=0.01,
                ) as job:
                    summaries.append(job.run())

            peak = _peak(run)
            assert summaries[0].ok == n and len(summaries[0].batch_ids) == 1
            return peak

        _flat(measure, 600, 3600)


def test_a_rerun_over_a_complete_output_keeps_no_python_state_per_item(isolated_env, monkeypatch):
    """Running a finished batch again (nothing to send: the journal holds every answer) reads the journal and
    rewrites the outputs, JSONL and CSV, streamed."""
    monkeypatch.setenv("QWENVL_LOG", "0")
    client = qwenvl.Client(backend=_ForgetfulEcho())
    for n in (150, 600, 3600):
        Batch(_items(n), isolated_env / f"out{n}.jsonl", client=client, concurrency=4).run()

    def measure(n: int, tag: str) -> int:
        summaries = []

        def rerun() -> None:
            out = isolated_env / f"out{n}.jsonl"
            with Batch(_items(n), out, csv=isolated_env / f"out{n}{tag}.csv", client=client) as job:
                summaries.append(job.run())

        peak = _peak(rerun)
        assert summaries[0].ok == n and summaries[0].this_run == 0
        return peak

    _flat(measure, 600, 3600)


def test_invalid_items_are_counted_not_kept(isolated_env, monkeypatch):
    """The estimate kept every invalid item's error (with its traceback: the frames, the item, its plan), ~10 kB
    per item: a requests file naming images that are not there cost hundreds of MB. Now the first
    ``ERRORS_KEPT`` are kept, the others counted; each is still recorded in the output."""
    from qwenvl.batch.runner import ERRORS_KEPT

    monkeypatch.setenv("QWENVL_LOG", "0")
    client = qwenvl.Client(backend=_ForgetfulEcho())
    held = _interned(f"gone{i}.png" for i in range(3600))

    def missing(n: int) -> Iterator[BatchItem]:
        for i in range(n):
            yield BatchItem(id=f"m{i:05d}", request={"prompt": "x", "image": str(isolated_env / f"gone{i}.png")})

    def measure(n: int, tag: str) -> int:
        done = []

        def run() -> None:
            with Batch(missing(n), isolated_env / f"m{n}{tag}.jsonl", client=client, concurrency=4) as job:
                est = job.estimate()
                done.append((est, job.run()))

        peak = _peak(run)
        [(est, summary)] = done
        assert est.invalid == n and len(est.errors) == min(n, ERRORS_KEPT) and summary.error == n
        return peak

    _flat(measure, 600, 3600)
    assert len(held) == 3600
    lines = read_jsonl(isolated_env / "m3600a.jsonl")
    assert len(lines) == 3600 and lines[-1]["error"]["type"] == "MediaError" and "gone3599.png" in str(lines[-1])


def test_a_small_image_is_read_with_a_buffer_of_its_size(tmp_path: Path):
    """Each item naming its own small image used to allocate a 1 MB read buffer (``SMALL_IMAGE_BYTES + 1``) for a
    2 kB file; once malloc's dynamic threshold had risen, those landed in the worker threads' heaps and their
    pages stayed (bench/RESULTS.md, "Batch memory"). The read asks for the file's size now."""
    from PIL import Image

    from qwenvl.media.prepare import MediaOptions, read_image
    from qwenvl.media.sources import classify

    path = tmp_path / "small.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(path)
    size = path.stat().st_size
    options = MediaOptions(model=qwenvl.model_info("qwen3-vl-plus"))
    read_image(classify(str(path)), options)  # Pillow's plug-ins loaded, once
    tracemalloc.start()
    try:
        data, info = read_image(classify(str(path)), options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data == path.read_bytes() and (info.width, info.height) == (64, 48)
    assert peak < 64 * 1024, f"reading a {size} B image took {peak:,} B"  # was 1,048,610 B


def test_a_small_image_that_grows_while_read_is_read_whole(tmp_path: Path, monkeypatch):
    """The read is sized from the open file; a file longer than that by the time it is read is read again whole
    (not cut at the size seen)."""
    from PIL import Image

    import qwenvl.media.prepare as prepare
    from qwenvl.media.prepare import MediaOptions
    from qwenvl.media.sources import classify

    path = tmp_path / "grows.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(path)
    whole = path.read_bytes() + b"\0" * 100  # trailing bytes after IEND: still the same PNG
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:  # the size seen before the last 100 bytes were written
        st = real_fstat(fd)
        return os.stat_result((*st[:6], st.st_size - 100, *st[7:]))

    path.write_bytes(whole)
    monkeypatch.setattr(prepare.os, "fstat", stale_fstat)
    data, _ = prepare.read_image(classify(str(path)), MediaOptions(model=qwenvl.model_info("qwen3-vl-plus")))
    assert data == whole


_THRESHOLD_PROBE = """
import ctypes, json, sys
from pathlib import Path
class M(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = M
if sys.argv[1] == "batch":
    from qwenvl.batch import Batch, BatchItem
    Batch([BatchItem(id="a", request={"prompt": "hi"})], Path(sys.argv[2]) / "out.jsonl", api_key="sk-x").close()
big = bytearray(3 << 20)  # freed: glibc's dynamic threshold rises above 3 MB (mallopt(3), M_MMAP_THRESHOLD)
del big
before = libc.mallinfo2().hblkhd
block = bytearray(2 << 20)
print(json.dumps({"mapped": libc.mallinfo2().hblkhd - before}))
"""


def _glibc_mallinfo2() -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return sys.platform.startswith("linux") and hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc_mallinfo2(), reason="glibc 2.33+ (mallinfo2) only")
def test_a_batch_keeps_large_blocks_out_of_the_heaps(tmp_path: Path):
    """A batch fixes glibc's mmap threshold (``qwenvl.batch.heap``): a 2 MB block (the size of the interned-strings
    table that distinct file names make CPython rebuild every few thousand files) is still mapped on its own
    after a larger one was freed, rather than taken from a heap where it would stay once freed. The same probe
    without a batch shows glibc's dynamic threshold (the heap), so the check can fail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["QWENVL_HOME"], env["QWENVL_CACHE_DIR"] = str(tmp_path / "home"), str(tmp_path / "cache")

    def mapped(kind: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _THRESHOLD_PROBE, kind, str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        return int(json.loads(out.stdout.splitlines()[-1])["mapped"])

    assert mapped("plain") < 2 << 20  # glibc alone: from the heap
    assert mapped("batch") >= 2 << 20  # with a batch: mapped, and unmapped when freed


def test_malloc_thresholds_the_user_set_are_seen():
    """``qwenvl.batch.heap`` leaves glibc's thresholds alone when the user chose them."""
    from qwenvl.env import malloc_thresholds_set

    assert not malloc_thresholds_set({})
    assert not malloc_thresholds_set({"MALLOC_MMAP_THRESHOLD_": " ", "GLIBC_TUNABLES": "glibc.rtld.nns=2"})
    assert malloc_thresholds_set({"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert malloc_thresholds_set({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert malloc_thresholds_set({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=262144"})


@pytest.mark.parametrize(("given", "expected"), [(None, 8), ("3", 3)])
def test_a_batch_lets_pillow_keep_its_blocks(tmp_path: Path, given: str | None, expected: int):
    """With malloc's thresholds fixed, every block of a large image would be mapped and faulted in afresh (about 15%
    more CPU to prepare a 12 MP photo, bench/RESULTS.md): a batch lets Pillow keep a few freed blocks for reuse,
    unless the user set PILLOW_BLOCKS_MAX. In a fresh process: Pillow's own default (0) before, the cache after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "PILLOW_")) and k != "GLIBC_TUNABLES"}
    if given is not None:
        env["PILLOW_BLOCKS_MAX"] = given
    probe = (
        "import sys; from PIL import Image; before = Image.core.get_blocks_max()\n"
        "from qwenvl.batch.heap import steady_mmap_threshold\n"
        "fixed = steady_mmap_threshold(); print(before, Image.core.get_blocks_max(), fixed)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    before, after, fixed = out.stdout.split()
    if fixed != "True":
        pytest.skip("not glibc: the thresholds are left alone")
    assert int(before) == (int(given) if given else 0) and int(after) == expected
