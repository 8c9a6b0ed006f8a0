"""A batch's memory does not grow with its items (issue 15, section 4): items may come from a generator (taken
once, spooled to a temporary SQLite file), requests files are read lazily, and the runner keeps no Python
state per item. Run on an in-memory backend (no HTTP), with the real journal, spool and usage log."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

import qwenvl
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
