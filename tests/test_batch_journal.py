"""The batch journal under faults: one run per output (a second run and --fresh refused, with two real
processes), damaged or foreign journals refused, outputs that cannot be written refused before any request,
missing inputs, and a disk that fills mid-batch. Every paid-twice question is answered by counting the
requests at the loopback server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import API_KEY, CliRun, ctrl_c_reaches_children, run_cli, write_image
from dashscope_server import Reply
from qwenvl.batch.journal import journal_path, lock_path

N = 24


def model_calls(server) -> list:
    return [r for r in server.requests if r.path.endswith("/chat/completions")]


def asked(server) -> list[str]:
    """The question of every request the server answered (each one a paid request); a body cut short by a
    kill could not be parsed, so it was not answered."""
    return [r.json["messages"][-1]["content"][-1]["text"] for r in model_calls(server) if r.json]


def write_requests(path: Path, n: int = N) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"q{i:03d}", "prompt": f"question {i:03d}"}) + "\n" for i in range(n)),
        encoding="utf-8",
    )
    return path


def cli_env(server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "ALIBABA_CLOUD_"))}
    env.update(DASHSCOPE_API_KEY=API_KEY, COLUMNS="1000")  # long temporary paths: no wrapping
    return env


def batch_args(server, reqs: Path, output: str | Path, *extra: str) -> list[str]:
    return ["batch", "--requests", str(reqs), "-o", str(output), "--no-cache", "--base-url", server.url, *extra]


def batch_cmd(server, reqs: Path, output: str | Path, *extra: str) -> list[str]:
    """The batch as a process of its own: for the runs that are killed, interrupted or run beside another."""
    return [sys.executable, "-m", "qwenvl", *batch_args(server, reqs, output, *extra)]


def run_batch(server, reqs: Path, output: str | Path, *extra: str, timeout: float = 60) -> CliRun:
    """The batch in this process (the runs that nothing kills or interrupts)."""
    env = {"DASHSCOPE_API_KEY": API_KEY, "COLUMNS": "1000"}  # long temporary paths: no wrapping
    return run_cli(*batch_args(server, reqs, output, *extra), env=env, timeout=timeout)


def ok_ids(journal: Path) -> set[str]:
    if not journal.exists():  # sqlite3.connect would create it
        return set()
    conn = sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM items WHERE status = 'ok'")}
    finally:
        conn.close()


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error, OSError):
            if predicate():
                return True
        time.sleep(0.05)
    return False


def error_lines(stderr: str) -> list[str]:
    """The lines a user reads: one error line (and its hint), never a traceback."""
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("hint:")]


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[None]:
    """A small filesystem of its own at ``path`` (needs root and mount(2)); skips the test, saying why, if it
    cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: run as root to simulate a full or read-only disk")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}): disk-full test not run")
    try:
        yield
    finally:  # unmounted even when files in it are still open (lazily then), so no mount outlives the test
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --- one run per output ----------------------------------------------------------------------------------


def test_a_second_run_and_fresh_are_refused_while_a_run_writes(server, isolated_env):
    reqs = write_requests(isolated_env / "r.jsonl")
    gate = threading.Event()  # the first run's 4th request is in flight until the test has tried the others
    server.enqueue(Reply(times=3), Reply(hold=gate, times=10_000))
    env = cli_env(server)
    journal = journal_path(isolated_env / "out.jsonl")
    first = subprocess.Popen(
        batch_cmd(server, reqs, "out.jsonl", "--concurrency", "1"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: len(ok_ids(journal)) >= 3), "the first run did not start"
        for extra in ((), ("--fresh",)):
            p = run_batch(server, reqs, "out.jsonl", *extra)
            assert p.returncode == 2, (p.stderr, first.poll(), first.stderr.read() if first.poll() is not None else "")
            [line] = error_lines(p.stderr)
            assert f"pid {first.pid}" in line and "is writing" in line and "out.jsonl" in line, line
            assert "started 20" in line and "nothing was sent or deleted" in line
            assert journal.exists() and first.poll() is None  # the first run's journal is untouched
        gate.set()
        _, err = first.communicate(timeout=120)
    finally:
        gate.set()
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.returncode == 0, err
    assert sorted(asked(server)) == [f"question {i:03d}" for i in range(N)]  # each paid once
    lines = [json.loads(x) for x in (isolated_env / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"q{i:03d}" for i in range(N)]
    p = run_batch(server, reqs, "out.jsonl")
    assert p.returncode == 0, p.stderr
    assert len(model_calls(server)) == N  # the lock is gone with its process: the rerun runs and sends nothing


def test_the_lock_dies_with_its_process(server, isolated_env):
    """A run killed with SIGKILL leaves no lock behind: the kernel releases it."""
    reqs = write_requests(isolated_env / "r.jsonl")
    gate = threading.Event()  # two answers, then the next two requests are in flight until the kill
    server.enqueue(Reply(times=2), Reply(hold=gate, times=10_000))
    env = cli_env(server)
    journal = journal_path(isolated_env / "out.jsonl")
    proc = subprocess.Popen(
        batch_cmd(server, reqs, "out.jsonl", "--concurrency", "2"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:  # both workers wait on a held request: nothing more is sent, so nothing arrives after the reset below
        assert wait_for(lambda: len(ok_ids(journal)) == 2 and len(model_calls(server)) == 4)
    finally:
        proc.kill()
        proc.wait(10)
        gate.set()
    assert lock_path(isolated_env / "out.jsonl").exists()
    done = ok_ids(journal)
    server.reset()
    p = run_batch(server, reqs, "out.jsonl")
    assert p.returncode == 0, p.stderr
    assert not {f"question {i[1:]}" for i in done} & set(asked(server))
    assert len(asked(server)) == N - len(done)


# --- damaged and foreign journals ------------------------------------------------------------------------


def _foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (name TEXT, taken REAL)")
    conn.execute("INSERT INTO photos VALUES ('a.jpg', 1.0)")
    conn.commit()
    conn.close()


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "random bytes": lambda p: p.write_bytes(os.urandom(8192)),
    "corrupt pages": lambda p: p.write_bytes(p.read_bytes()[:4096] + os.urandom(len(p.read_bytes()) - 4096)),
    "another sqlite database": lambda p: (p.unlink(), _foreign_sqlite(p)),
    "a folder": lambda p: (p.unlink(), p.mkdir()),
}
SAYS = {
    "empty": "is empty while out.jsonl holds results",
    "truncated": "is damaged",
    "random bytes": "not an SQLite database",
    "corrupt pages": "is damaged",
    "another sqlite database": "is not a qwenvl journal (its tables: photos)",
    "a folder": "not a regular file",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_foreign_journal_is_refused_and_left_alone(server, isolated_env, damage):
    reqs = write_requests(isolated_env / "r.jsonl", 40)
    p = run_batch(server, reqs, "out.jsonl")
    assert p.returncode == 0, p.stderr
    assert len(model_calls(server)) == 40
    journal = journal_path(isolated_env / "out.jsonl")
    assert journal.stat().st_size > 8192  # several pages: a truncation cuts into the items
    DAMAGE[damage](journal)
    before = sorted((f.name, f.is_dir() or f.read_bytes()) for f in isolated_env.iterdir() if f.name != "r.jsonl")
    for extra in ((), ("--dry-run",), ("--retry-errors",)):
        p = run_batch(server, reqs, "out.jsonl", *extra)
        assert p.returncode == 3, (extra, p.stderr)  # the file is the fault: an input error (store.db.unusable)
        [line] = error_lines(p.stderr)
        assert str(journal.name) in line and SAYS[damage] in line, line
        assert "--fresh" in p.stderr
    assert len(model_calls(server)) == 40  # nothing sent again
    after = sorted((f.name, f.is_dir() or f.read_bytes()) for f in isolated_env.iterdir() if f.name != "r.jsonl")
    assert after == before  # nothing modified, created or deleted
    if journal.is_dir():
        journal.rmdir()  # --fresh deletes files, not folders it did not make
    p = run_batch(server, reqs, "out.jsonl", "--fresh")
    assert p.returncode == 0, p.stderr
    assert len(model_calls(server)) == 80  # the way out: start over, knowingly


def test_a_blank_journal_with_no_results_beside_it_is_a_new_batch(server, isolated_env):
    """A run killed while creating its journal leaves a 0-byte file; with no results there is nothing to lose."""
    reqs = write_requests(isolated_env / "r.jsonl", 3)
    journal_path(isolated_env / "out.jsonl").write_bytes(b"")
    p = run_batch(server, reqs, "out.jsonl")
    assert p.returncode == 0, p.stderr
    assert len(model_calls(server)) == 3


# --- outputs and inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["/proc/qwenvl-test.jsonl", "/proc/self/qwenvl/x.jsonl", "fifo", "read-only", "file-as-folder"]
)
def test_an_output_that_cannot_be_written_is_refused_before_anything_is_sent(server, env, isolated_env, where):
    if (where.startswith("/proc") and not Path("/proc/self").is_dir()) or (where == "fifo" and os.name != "posix"):
        pytest.skip(f"{where}: not on this system")
    write_image(isolated_env / "x.png")
    (isolated_env / "a-file").write_text("a file")
    output = where
    ro = contextlib.nullcontext()
    if where == "fifo":
        os.mkfifo(isolated_env / "pipe.jsonl")
        output = "pipe.jsonl"
    elif where == "read-only":
        ro = tmpfs(isolated_env / "ro", "ro,size=1m")
        output = "ro/out.jsonl"
    elif where == "file-as-folder":
        output = "a-file/out.jsonl"
    with ro:
        p = run_cli("batch", "x.png", "-p", "Caption", "-o", output, "--base-url", server.url, env=env, timeout=60)
    assert p.returncode == 2, p.stderr
    [line] = error_lines(p.stderr)
    assert output in line or str(Path(output).parent) in line, line
    assert server.requests == []
    if where == "fifo":
        assert (isolated_env / "pipe.jsonl").is_fifo()  # not replaced by a regular file


def test_a_missing_folder_or_unmatched_glob_is_an_input_error(server, env, isolated_env):
    write_image(isolated_env / "x.png")
    for args, message in (
        (["photos/"], "no such file or folder: photos/"),
        (["photos"], "no such file or folder: photos"),
        (["x.png", "holidays/"], "no such file or folder: holidays/"),
        (["nothing*.png"], "no file matches 'nothing*.png'"),
    ):
        p = run_cli("batch", *args, "-p", "Caption", "-o", "o.jsonl", "--base-url", server.url, env=env)
        assert p.returncode == 3, (args, p.stderr)
        [line] = error_lines(p.stderr)
        assert message in line, line
    assert server.requests == [] and not (isolated_env / "o.jsonl").exists()


@pytest.mark.skipif(os.name != "posix", reason="named pipes are POSIX")
def test_a_fifo_inside_a_folder_is_skipped_not_read(server, env, isolated_env):
    (isolated_env / "photos").mkdir()
    write_image(isolated_env / "photos" / "a.png")
    os.mkfifo(isolated_env / "photos" / "b.png")  # opening it to sniff would block for ever
    p = run_cli("batch", "photos", "-p", "Caption", "-o", "o.jsonl", "--base-url", server.url, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert [json.loads(x)["id"] for x in (isolated_env / "o.jsonl").read_text().splitlines()] == ["photos/a.png"]


# --- a full disk -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("concurrency", "size"), [(4, "8m"), (32, "12m")])  # reserves of 4 and 8 MB
def test_a_full_disk_mid_batch_loses_no_paid_answer(server, isolated_env, concurrency, size):
    """Output and journal on a small filesystem (the reserve + 4 MB); 30 kB answers fill it mid-batch. The run
    stops with one line (exit 2); every answer the server gave is in the journal; the resumed run (after room
    is made) sends only the others: across both runs each question is paid exactly once."""
    n = 200
    reqs = write_requests(isolated_env / "r.jsonl", n)
    server.enqueue(Reply(text="x" * 30_000, delay_s=0.02, times=100_000))
    disk = isolated_env / "disk"
    with tmpfs(disk, f"size={size}"):
        p = run_batch(server, reqs, disk / "out.jsonl", "--concurrency", str(concurrency), "--yes", timeout=120)
        assert p.returncode == 2, p.stderr
        [line] = error_lines(p.stderr)
        assert "no space left" in line and "kept in the journal" in line, line
        assert "run the same command again" in p.stderr
        journal = journal_path(disk / "out.jsonl")
        first = asked(server)
        saved = ok_ids(journal)
        assert 0 < len(first) < n
        assert {f"question {i[1:]}" for i in saved} == set(first)  # every paid answer is in the journal
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # the user makes room
        server.reset()
        p = run_batch(server, reqs, disk / "out.jsonl", "--yes", timeout=120)
        assert p.returncode == 0, p.stderr
        second = asked(server)
        assert sorted(first + second) == [f"question {i:03d}" for i in range(n)]  # none lost, none paid twice
        lines = [json.loads(x) for x in (disk / "out.jsonl").read_text().splitlines()]
        assert [r["id"] for r in lines] == [f"q{i:03d}" for i in range(n)]
        assert not list(disk.glob("*.reserve")) and not list(disk.glob(".*.tmp"))


def test_a_disk_too_full_to_start_is_refused_before_anything_is_sent(server, isolated_env):
    reqs = write_requests(isolated_env / "r.jsonl", 5)
    disk = isolated_env / "disk"
    with tmpfs(disk, "size=2m"):
        p = run_batch(server, reqs, disk / "out.jsonl")
        assert p.returncode == 2, p.stderr
        [line] = error_lines(p.stderr)
        assert "not enough free space" in line and "4 MB" in line, line
        assert "--concurrency" in p.stderr
        assert server.requests == []


# --- Ctrl-C ----------------------------------------------------------------------------------------------


def test_ctrl_c_records_the_answers_already_in_flight(server, isolated_env):
    """Requests in flight when Ctrl-C arrives are paid for: their answers are awaited (up to a grace period)
    and recorded, so the resumed run does not pay for them again."""
    reqs = write_requests(isolated_env / "r.jsonl", 16)
    server.enqueue(Reply(delay_s=1.5, times=10_000))
    env = cli_env(server)
    with ctrl_c_reaches_children():
        proc = subprocess.Popen(
            batch_cmd(server, reqs, "out.jsonl", "--concurrency", "4"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        assert wait_for(lambda: len(model_calls(server)) >= 4), "no request in flight"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command again" in err
    first = asked(server)
    assert 4 <= len(first) < 16
    assert {f"question {i[1:]}" for i in ok_ids(journal_path(isolated_env / "out.jsonl"))} == set(first)
    server.reset()
    p = run_batch(server, reqs, "out.jsonl", timeout=120)
    assert p.returncode == 0, p.stderr
    assert sorted(first + asked(server)) == [f"question {i:03d}" for i in range(16)]  # each paid once


def test_ctrl_c_while_the_run_waits_for_its_last_worker_keeps_that_workers_answer(server, isolated_env):
    """One worker, its request held at the server when Ctrl-C arrives: the run's main thread is waiting for that
    very worker then. Its answer, released a moment later, is awaited and recorded (Python's Thread.join, cut by
    KeyboardInterrupt, marks a live thread as ended: a run that trusted it left at once and lost the answer)."""
    reqs = write_requests(isolated_env / "r.jsonl", 6)
    gate = threading.Event()
    server.enqueue(Reply(hold=gate), Reply(delay_s=0.5, times=10_000))
    with ctrl_c_reaches_children():
        proc = subprocess.Popen(
            batch_cmd(server, reqs, "out.jsonl", "--concurrency", "1"),
            env=cli_env(server),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        assert wait_for(lambda: len(model_calls(server)) >= 1), "no request in flight"
        proc.send_signal(signal.SIGINT)
        time.sleep(1)  # for the signal to be handled; were it later, the answer is recorded all the same
        gate.set()
        _, err = proc.communicate(timeout=60)
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, err
    first = asked(server)
    assert first[0] == "question 000" and len(first) < 6
    assert {f"question {i[1:]}" for i in ok_ids(journal_path(isolated_env / "out.jsonl"))} == set(first)


def test_a_full_disk_while_merging_batch_api_results_pays_nothing_twice(isolated_env):
    """The Batch API's answers are paid when the job runs: a disk that fills while they are merged stops the run
    with one error (no traceback), and the next run merges the same job again instead of submitting another."""
    from batch_server import BatchServer
    from qwenvl.batch import Batch, BatchItem
    from qwenvl.errors import UsageError

    items = [BatchItem(id=f"t{i:03d}", request={"prompt": f"{i:03d} " + "x" * 30_000}) for i in range(150)]
    disk = isolated_env / "disk"
    with BatchServer(api_key=API_KEY) as srv, tmpfs(disk, "size=3m"):

        def job() -> Batch:
            return Batch(
                items, disk / "out.jsonl", api_key=API_KEY, base_url=srv.url, mode="batch-api", poll_interval_s=0.01
            )

        with pytest.raises(UsageError, match="no space left") as info:
            job().run()
        assert "run the same command again" in info.value.hint
        assert len(srv.batches) == 1
        done = ok_ids(journal_path(disk / "out.jsonl"))
        assert 0 < len(done) < len(items)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        summary = job().run()
        assert summary.ok == len(items) and summary.error == 0
        assert len(srv.batches) == 1  # merged again from the same job: nothing submitted (or paid) twice
        assert len((disk / "out.jsonl").read_text().splitlines()) == len(items)
