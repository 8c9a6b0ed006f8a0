"""The OpenAI-compatible Batch API of ``qwenvl serve``: code written for DashScope's Batch API runs unchanged.

Routes, under each compatible-mode base (``/compatible-mode/v1`` and ``/v1``), with the server's key as every route:

    POST /files                  multipart ``purpose=batch``, ``file`` (a .jsonl) -> a File object
    GET  /files                  the files, newest first (``purpose``, ``limit``, ``after``)
    GET  /files/{id}             the File object
    GET  /files/{id}/content     the file's bytes (streamed from disk)
    DELETE /files/{id}           -> ``{"id", "object": "file", "deleted": true}``
    POST /batches                ``{input_file_id, endpoint, completion_window, metadata?}`` -> a Batch ("validating")
    GET  /batches                the jobs, newest first: ``limit`` (1-100, default 20), ``after``, ``status``
                                 (comma list), ``input_file_ids`` (comma list of at most 20)
    GET  /batches/{id}           the Batch
    POST /batches/{id}/cancel    -> "cancelling"; "cancelled" once the lines in flight are answered

Shapes: openai-python's ``types/batch.py`` and ``types/file_object.py`` (the OpenAI Batch and File objects, which
DashScope's compatible Batch API returns: [batch] in ``qwenvl.batch.batchapi``); errors in the compat envelope.

Input rules, as the service's ([batch]; reference/dashscope-api.md section 5): UTF-8 JSONL, at most ``MAX_LINES``
lines, ``MAX_FILE_BYTES`` per file (an upload over it is refused, 413) and ``MAX_LINE_BYTES`` per line, each line
``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {"model", ...}}``, ``custom_id`` unique,
one model per file, a model this server serves. A file that breaks a rule fails its job as a whole (status
``failed``, ``errors.data[0]`` with ``code`` ``invalid_file``, the message and the 1-based ``line``).

Running: a job's lines are answered in the background, at most ``ServeSettings.batch_concurrency`` at a time, each
in one of the key's ``max_concurrent_per_key`` slots as a chat request is (a line waits for a slot and never takes
the last free one: interactive requests keep room), each exactly as ``POST /chat/completions`` answers its body
(``app.answer_line``). Each answer is kept in ``batches.db`` as it arrives (it is paid for), then appended to the
job's output file (status 200) or error file as the service's line ``{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}`` and ``request_counts`` is updated; a write that fails stops the
job (logged), which resumes after ``RETRY_S`` by writing the kept answer: never asked again. A cancel stops taking
new lines (those in flight are answered and kept); at ``expires_at`` (``created_at`` + ``completion_window``) no
new line starts; the lines never run are in the error file with ``response: null`` and the code
``batch_cancelled`` / ``batch_expired`` (OpenAI's BatchRequestOutput).

Persistence: the state folder (``--batch-dir``; default ``<qwenvl data dir>/serve-batches``) holds ``batches.db``
(SQLite: the files and jobs) and the files themselves, streamed in and out, never whole in memory. The output and
error files are written as lines are answered; a restarted server resumes each unfinished job with the lines not
in either file (a line is never answered twice once its answer arrived). On shutdown no new line starts from the
signal on, and the lines in flight are answered and written within the one budget ``ServeSettings.shutdown_grace_s``
(``shutdown.py``); only a line still unanswered at its cut is cancelled, and run again after the restart (so it may
be billed twice upstream). With ``--workers N`` one process at a time runs the jobs (a lock file in the folder);
every process answers the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from starlette.requests import Request

from qwenvl import env as qenv
from qwenvl.batch.batchapi import ENDPOINT, MAX_LINE_BYTES, MAX_LINES
from qwenvl.server.refused import Refused
from qwenvl.store.db import Database

log = logging.getLogger("qwenvl.serve")

PREFIXES = ("/compatible-mode/v1", "/v1")
MAX_FILE_BYTES = 500_000_000  # per input file, the service's limit [batch]
# completion_window: whole hours or days, from 24 h to 336 h (the values the service takes [batch]; the test
# double tests/batch_server.py takes 24h, 48h, 72h, 168h and 336h)
WINDOW = re.compile(r"(\d{1,4})([hd])")
MIN_WINDOW_H, MAX_WINDOW_H = 24, 336
MAX_METADATA = 16  # pairs; keys up to 64 characters, values up to 512 (openai-python types/shared/metadata.py)
MAX_LIST = 100  # jobs per page of GET /batches
MAX_FILTER_IDS = 20  # input_file_ids per list request [list]
TERMINAL = ("completed", "failed", "expired", "cancelled")
OPEN = ("validating", "in_progress", "finalizing", "cancelling")
NOT_RUN = {  # OpenAI's BatchRequestOutput.error for a line a job never ran
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}
STOPPED = "stopped"  # why a job's run stopped taking lines: the server is shutting down (``Runner.stop``)
TICK_S = 0.5  # how often the runner looks for work another process created (one process: woken at once)
COPY_CHUNK = 1 << 20
RETRY_S = 5.0  # a job that failed (not a line: the server's disk or database) is resumed after this many seconds
END_S = 1.0  # seconds ``Runner.stop`` waits, past its deadline, for the lines it cut to keep what had arrived


def _files_m001(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE files (id TEXT PRIMARY KEY, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, "
        "filename TEXT NOT NULL, purpose TEXT NOT NULL, path TEXT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE batches (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, status TEXT NOT NULL, "
        "input_file_id TEXT NOT NULL, completion_window TEXT NOT NULL, expires_at INTEGER NOT NULL, "
        "metadata TEXT, model TEXT, errors TEXT, output_file_id TEXT, error_file_id TEXT, "
        "total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, "
        "input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0, "
        "reasoning_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0, "
        "in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER, "
        "expired_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER)"
    )
    conn.execute("CREATE INDEX batches_by_file ON batches (input_file_id)")


def _answers_m002(conn: sqlite3.Connection) -> None:
    # a line's answer (its result line, as written to the output or error file), kept from its arrival until it is
    # in the file: a write that failed, or a stop that cut the line, loses nothing that was paid for
    conn.execute(
        "CREATE TABLE answers (batch_id TEXT NOT NULL, custom_id TEXT NOT NULL, record BLOB NOT NULL, "
        "PRIMARY KEY (batch_id, custom_id))"
    )


def default_folder() -> Path:
    """The state folder when none is given: ``<qwenvl data dir>/serve-batches`` (``qwenvl.env.data_dir``)."""
    return qenv.data_dir() / "serve-batches"


def window_seconds(window: Any) -> int | None:
    """Seconds of a ``completion_window`` ("24h" .. "336h", or whole days "1d" .. "14d"); None if not one."""
    found = WINDOW.fullmatch(window) if isinstance(window, str) else None
    if not found:
        return None
    hours = int(found.group(1)) * (24 if found.group(2) == "d" else 1)
    return hours * 3600 if MIN_WINDOW_H <= hours <= MAX_WINDOW_H else None


class BatchStore:
    """The state folder: ``batches.db`` and the files (``files/``, and ``jobs/<id>/`` for a job's results).
    Opened at first use: a server whose clients never use the Batch API writes nothing."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder).expanduser() if folder is not None else default_folder()
        self.db = Database(self.folder / "batches.db", [_files_m001, _answers_m002])

    def exists(self) -> bool:
        return (self.folder / "batches.db").exists()

    def close(self) -> None:
        self.db.close()

    def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return self.db.run(fn)

    # --- files ------------------------------------------------------------------------------------------
    def add_file(self, file_id: str, path: Path, size: int, filename: str, purpose: str) -> dict[str, Any]:
        now = int(time.time())
        rel = str(path.relative_to(self.folder))
        self.run(
            lambda c: c.execute(
                "INSERT INTO files (id, bytes, created_at, filename, purpose, path) VALUES (?, ?, ?, ?, ?, ?)",
                (file_id, size, now, filename, purpose, rel),
            )
        )
        return self.file(file_id) or {}

    def file_row(self, file_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.run(
            lambda c: c.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        )
        return row

    def file(self, file_id: str) -> dict[str, Any] | None:
        row = self.file_row(file_id)
        return _file_object(row) if row is not None else None

    def file_path(self, row: sqlite3.Row) -> Path:
        return self.folder / row["path"]

    def files(self, purpose: str | None, limit: int, after: str | None) -> tuple[list[dict[str, Any]], bool]:
        rows = self.run(lambda c: c.execute("SELECT * FROM files ORDER BY created_at DESC, rowid DESC").fetchall())
        found = [r for r in rows if purpose is None or r["purpose"] == purpose]
        if after is not None:
            ids = [r["id"] for r in found]
            found = found[ids.index(after) + 1 :] if after in ids else []
        return [_file_object(r) for r in found[:limit]], len(found) > limit

    def delete_file(self, file_id: str) -> bool:
        """Forget a file and remove its bytes; Refused 409 for the input file of a job still running."""

        def go(c: sqlite3.Connection) -> sqlite3.Row | None:
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
                busy = c.execute(
                    f"SELECT id FROM batches WHERE input_file_id = ? AND status IN ({','.join('?' * len(OPEN))})",
                    (file_id, *OPEN),
                ).fetchone()
                if row is not None and busy is None:
                    c.execute("DELETE FROM files WHERE id = ?", (file_id,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            if busy is not None:
                raise Refused(409, f"file {file_id} is the input of {busy['id']}, still running: cancel it first")
            return row

        row = self.run(go)
        if row is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.file_path(row).unlink()
        return True

    # --- jobs -------------------------------------------------------------------------------------------
    def add_batch(self, input_file_id: str, window: str, metadata: dict[str, str] | None) -> dict[str, Any]:
        now = int(time.time())
        batch_id = f"batch_{uuid.uuid4()}"
        expires = now + (window_seconds(window) or 0)
        meta = json.dumps(metadata) if metadata is not None else None
        self.run(
            lambda c: c.execute(
                "INSERT INTO batches (id, created_at, status, input_file_id, completion_window, expires_at, metadata) "
                "VALUES (?, ?, 'validating', ?, ?, ?, ?)",
                (batch_id, now, input_file_id, window, expires, meta),
            )
        )
        return self.batch(batch_id) or {}

    def batch_row(self, batch_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.run(
            lambda c: c.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        )
        return row

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        row = self.batch_row(batch_id)
        return _batch_object(row) if row is not None else None

    def batches(
        self, limit: int, after: str | None, statuses: set[str] | None, file_ids: set[str] | None
    ) -> tuple[list[dict[str, Any]], bool]:
        rows = self.run(lambda c: c.execute("SELECT * FROM batches ORDER BY created_at DESC, rowid DESC").fetchall())
        found = [
            r
            for r in rows
            if (statuses is None or r["status"] in statuses) and (file_ids is None or r["input_file_id"] in file_ids)
        ]
        if after is not None:
            ids = [r["id"] for r in found]
            found = found[ids.index(after) + 1 :] if after in ids else []
        return [_batch_object(r) for r in found[:limit]], len(found) > limit

    def open_batches(self) -> list[sqlite3.Row]:
        rows: list[sqlite3.Row] = self.run(
            lambda c: c.execute(
                f"SELECT * FROM batches WHERE status IN ({','.join('?' * len(OPEN))}) ORDER BY created_at, rowid",
                OPEN,
            ).fetchall()
        )
        return rows

    def update(self, batch_id: str, **fields: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in fields)
        self.run(lambda c: c.execute(f"UPDATE batches SET {names} WHERE id = ?", (*fields.values(), batch_id)))

    def cancel(self, batch_id: str) -> dict[str, Any] | None:
        """Ask a job to stop: "cancelling" (a job already over is left as it is). None for an unknown id."""
        now = int(time.time())
        self.run(
            lambda c: c.execute(
                "UPDATE batches SET status = 'cancelling', cancelling_at = ? "
                "WHERE id = ? AND status IN ('validating', 'in_progress', 'finalizing')",
                (now, batch_id),
            )
        )
        return self.batch(batch_id)

    def job_folder(self, batch_id: str) -> Path:
        return self.folder / "jobs" / batch_id

    # --- answers not yet in a job's files ----------------------------------------------------------------
    def keep_answer(self, batch_id: str, custom_id: str, record: bytes) -> None:
        """Keep a line's result line (``record``, as it goes into the output or error file) until it is written."""
        self.run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO answers (batch_id, custom_id, record) VALUES (?, ?, ?)",
                (batch_id, custom_id, record),
            )
        )

    def kept_answers(self, batch_id: str) -> list[tuple[str, bytes]]:
        """(custom_id, result line) of each answer of the job kept and not known to be written."""
        rows = self.run(
            lambda c: c.execute(
                "SELECT custom_id, record FROM answers WHERE batch_id = ? ORDER BY rowid", (batch_id,)
            ).fetchall()
        )
        return [(r["custom_id"], bytes(r["record"])) for r in rows]

    def drop_answers(self, batch_id: str, custom_id: str | None = None) -> None:
        """Forget the job's kept answer for ``custom_id`` (None: all of the job's), once in its file."""
        if custom_id is None:
            self.run(lambda c: c.execute("DELETE FROM answers WHERE batch_id = ?", (batch_id,)))
        else:
            self.run(
                lambda c: c.execute("DELETE FROM answers WHERE batch_id = ? AND custom_id = ?", (batch_id, custom_id))
            )


def _file_object(row: sqlite3.Row) -> dict[str, Any]:
    """openai-python ``types/file_object.py``."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def _batch_object(row: sqlite3.Row) -> dict[str, Any]:
    """openai-python ``types/batch.py``."""
    usage = None
    if row["completed"]:
        usage = {
            "input_tokens": row["input_tokens"],
            "input_tokens_details": {"cached_tokens": row["cached_tokens"]},
            "output_tokens": row["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": row["reasoning_tokens"]},
            "total_tokens": row["input_tokens"] + row["output_tokens"],
        }
    return {
        "id": row["id"],
        "object": "batch",
        "endpoint": ENDPOINT,
        "model": row["model"],
        "errors": json.loads(row["errors"]) if row["errors"] else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
        "created_at": row["created_at"],
        "in_progress_at": row["in_progress_at"],
        "expires_at": row["expires_at"],
        "finalizing_at": row["finalizing_at"],
        "completed_at": row["completed_at"],
        "failed_at": row["failed_at"],
        "expired_at": row["expired_at"],
        "cancelling_at": row["cancelling_at"],
        "cancelled_at": row["cancelled_at"],
        "request_counts": {"total": row["total"], "completed": row["completed"], "failed": row["failed"]},
        "usage": usage,
        "metadata": json.loads(row["metadata"]) if row["metadata"] else None,
    }


# --- reading an input file --------------------------------------------------------------------------------


@dataclass
class Line:
    number: int  # 1-based, counting every line of the file (blank ones too)
    raw: bytes | None  # None: longer than MAX_LINE_BYTES (not read)


def read_lines(f: IO[bytes]) -> Iterator[Line]:
    """The file's lines, each at most ``MAX_LINE_BYTES`` read (a longer one is skipped to its end, ``raw`` None)."""
    number = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 2)
        if not raw:
            return
        number += 1
        if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(COPY_CHUNK)
            yield Line(number, None)
            continue
        yield Line(number, raw.rstrip(b"\r\n"))


def validate(
    path: Path, served: Callable[[str], str | None], halt: Callable[[], bool] = lambda: False
) -> tuple[int, str | None, str | None, int | None]:
    """Check an input file as the service does: (lines, the model, why it fails or None, the 1-based line at fault).
    ``served(model)`` says why a model is not served here (None: it is). Reads the file once, line by line; raises
    ``_Halted`` as soon as ``halt()`` is true (the server is stopping: the job is validated at the next start)."""
    seen: set[str] = set()
    model: str | None = None
    count = 0
    with path.open("rb") as f:
        for line in read_lines(f):
            if halt():
                raise _Halted
            n = line.number
            if line.raw is None:
                return count, model, f"the line is larger than {MAX_LINE_BYTES // 1_000_000} MB", n
            if not line.raw.strip():
                continue
            count += 1
            if count > MAX_LINES:
                return count, model, f"the file has more than {MAX_LINES} lines", n
            try:
                text = line.raw.decode("utf-8")
            except UnicodeDecodeError:
                return count, model, "the file is not UTF-8", n
            try:
                item = json.loads(text)
            except (ValueError, RecursionError):
                return count, model, "the line is not valid JSON", n
            if not isinstance(item, dict):
                return count, model, "the line is not a JSON object", n
            cid = item.get("custom_id")
            if not isinstance(cid, str) or not cid:
                return count, model, "the line has no custom_id", n
            if cid in seen:
                return count, model, f"custom_id {cid!r} is repeated", n
            seen.add(cid)
            if item.get("method") != "POST":
                return count, model, "method must be POST", n
            if item.get("url") != ENDPOINT:
                return count, model, f"url must be {ENDPOINT}", n
            body = item.get("body")
            if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
                return count, model, "the line has no body with a model", n
            if model is None:
                why = served(body["model"])
                if why is not None:
                    return count, model, why, n
                model = body["model"]
            elif body["model"] != model:
                return count, model, f"one model per file: this line has {body['model']}, the file {model}", n
    if count == 0:
        return 0, None, "the file has no lines", None
    return count, model, None, None


def read_results(path: Path) -> Iterator[dict[str, Any]]:
    """The result lines already written to ``path`` (none if it is missing); a last line cut by a crash is removed
    from the file first."""
    if not path.exists():
        return
    with path.open("r+b") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        if end:
            f.seek(max(0, end - 1))
            if f.read(1) != b"\n":  # cut mid-line: keep what ends with a newline
                f.seek(0)
                keep = 0
                for raw in iter(lambda: f.readline(), b""):
                    if raw.endswith(b"\n"):
                        keep += len(raw)
                f.truncate(keep)
    with path.open("rb") as f:
        for raw in f:
            with contextlib.suppress(ValueError):
                yield json.loads(raw)


# --- running jobs ---------------------------------------------------------------------------------------------

AnswerLine = Callable[[Any, str], Awaitable[tuple[int, dict[str, Any]]]]


class Slots(Protocol):
    """The server's per-key concurrency slots, the chat routes' own (``app._Slots``)."""

    async def wait_take(self, key: str) -> None:
        """Wait until a slot of ``key`` is free for background work (one stays free for interactive requests)."""
        ...

    def give(self, key: str) -> None:
        """Give back a slot of ``key``."""
        ...


class _Halted(Exception):
    """The server began to stop while a job was being validated or closed: left open, done at the next start."""


class Runner:
    """Runs the store's jobs in this process while it holds the folder's lock (``--workers N``: one at a time).
    At most ``concurrency`` lines are in flight, each holding one of ``slots`` (the server's per-key slots and the key
    its jobs were sent with) while its request runs. ``clock``: seconds since the epoch (``time.time``), for expiry."""

    def __init__(
        self,
        store: BatchStore,
        answer_line: AnswerLine,
        served: Callable[[str], str | None],
        concurrency: int,
        clock: Callable[[], float] = time.time,
        slots: tuple[Slots, str] | None = None,
    ) -> None:
        self.store, self.answer_line, self.served = store, answer_line, served
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self.slots = slots
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.job: asyncio.Task[None] | None = None
        self.current: str | None = None  # the id of the job ``job`` runs
        self._lock: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False  # set by ``begin_stop``: no new line, no new job
        self.deadline: float | None = None  # ``time.monotonic()`` by which the lines in flight are cut
        self.retry_at: dict[str, float] = {}  # a job that failed -> ``time.monotonic()`` when it may run again

    def start(self) -> None:
        self.stopping, self.deadline = False, None
        self._loop = asyncio.get_running_loop()
        self.task = asyncio.create_task(self._loop_())

    def begin_stop(self, deadline: float) -> None:
        """No new line and no new job from now on; the lines in flight may run until ``deadline``
        (``time.monotonic()``; the earliest given counts). Safe in a signal handler of the loop's thread."""
        self.stopping = True
        self.deadline = deadline if self.deadline is None else min(self.deadline, deadline)
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to wake
                self._loop.call_soon_threadsafe(self.wake.set)

    async def stop(self, deadline: float) -> None:
        """Stop (``begin_stop``) and wait until ``deadline`` (``time.monotonic()``) at most for the lines in flight
        to be answered and written; the job stays ``in_progress``, resumed at the next start with the lines not
        written. A line still in flight at the deadline is cancelled (its request closed) and run again at the next
        start; an answer that had arrived is kept (in the database, written at the next start), never asked again.
        Returns within ``END_S`` seconds of the deadline."""
        self.begin_stop(deadline)
        tasks = [t for t in (self.task, self.job) if t is not None and not t.done()]
        if tasks:  # the loop ends by itself after its tick; the job once its lines in flight are written
            await asyncio.wait(tasks, timeout=max(0.0, (self.deadline or deadline) - time.monotonic()))
        for task in tasks:
            task.cancel()
        left = [t for t in tasks if not t.done()]
        if left:  # a cut line keeps an answer that arrived (a database write) and ends
            await asyncio.wait(left, timeout=END_S)
        for task in left:
            if not task.done():  # pragma: no cover - a database write stuck past END_S
                log.warning("the Batch API runner did not end within %g s of the shutdown's deadline", END_S)
        if self._lock is not None:
            self._lock.release(force=True)
            self._lock = None

    def _holds_lock(self) -> bool:
        if self._lock is None:
            from filelock import FileLock, Timeout

            # one lock for the process's threads (taken in a worker thread, released in the event loop's)
            lock = FileLock(str(self.store.folder / "runner.lock"), thread_local=False)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                return False
            self._lock = lock
        return True

    async def _loop_(self) -> None:
        # ends when stopping, not only when cancelled: ``stop`` wakes the loop as it cancels it, and 3.11's
        # ``asyncio.wait_for`` returns the wake-up and drops a cancellation that races it
        while not self.stopping:
            try:
                if self.store.exists() and await asyncio.to_thread(self._holds_lock):
                    await self._tick()
            except asyncio.CancelledError:
                raise
            except _Halted:
                return
            except Exception as exc:  # a full disk, a locked database: logged, tried again at the next tick
                if _going_away(exc):  # the event loop is closing (its executor shut down): the runner ends
                    log.debug("the Batch API runner ends with its event loop")
                    return
                log.exception("the Batch API runner failed; trying again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):  # a cancellation is never lost here (unlike wait_for in 3.11)
                    await self.wake.wait()
            self.wake.clear()

    async def _tick(self) -> None:
        jobs = await asyncio.to_thread(self.store.open_batches)
        running = self.job is not None and not self.job.done()
        current = self.current if running else None
        for row in jobs:
            if self.stopping:
                return
            if row["id"] == current:
                continue
            if row["status"] == "cancelling":
                await asyncio.to_thread(self._finish, row["id"], "cancelled")
            elif self.clock() >= row["expires_at"]:
                await asyncio.to_thread(self._finish, row["id"], "expired")
            elif not running and self.retry_at.get(row["id"], 0.0) <= time.monotonic():
                self.retry_at.pop(row["id"], None)
                self.job, self.current = asyncio.create_task(self._guarded(row["id"])), row["id"]
                running = True

    async def _guarded(self, batch_id: str) -> None:
        """``_run``; a failure (a full disk, a database locked too long) is logged and the job resumed after
        ``RETRY_S`` (its answered lines are kept, those whose write failed in the database); meanwhile other jobs
        run, and a cancel or the expiry ends it."""
        try:
            await self._run(batch_id)
        except _Halted:
            return
        except Exception as exc:
            if _going_away(exc) or self.stopping:
                log.debug("the Batch API job %s stops with the server: %s", batch_id, exc)
                return
            log.exception("the Batch API job %s stopped; it resumes in %g s", batch_id, RETRY_S)
            self.retry_at[batch_id] = time.monotonic() + RETRY_S

    def _halt(self) -> bool:
        return self.stopping

    async def _run(self, batch_id: str) -> None:
        store = self.store
        row = await asyncio.to_thread(store.batch_row, batch_id)
        if row is None or self.stopping:
            return
        if row["status"] == "validating":
            file_row = await asyncio.to_thread(store.file_row, row["input_file_id"])
            total: int
            model: str | None
            why: str | None
            at: int | None
            if file_row is None:
                total, model, why, at = 0, None, "the input file was deleted", None
            else:
                total, model, why, at = await asyncio.to_thread(
                    validate, store.file_path(file_row), self.served, self._halt
                )
            now = int(self.clock())
            if why is not None:
                error = {"code": "invalid_file", "message": why, "param": None, "line": at}
                errors = json.dumps({"object": "list", "data": [error]})
                await asyncio.to_thread(
                    self._set_if_open, batch_id, status="failed", failed_at=now, errors=errors, model=model
                )
                return
            if not await asyncio.to_thread(
                self._set_if_open, batch_id, status="in_progress", in_progress_at=now, total=total, model=model
            ):
                return  # cancelled meanwhile: the next tick ends it
            row = await asyncio.to_thread(store.batch_row, batch_id)
            assert row is not None
            file_row = await asyncio.to_thread(store.file_row, row["input_file_id"])
        else:
            file_row = await asyncio.to_thread(store.file_row, row["input_file_id"])
        folder = store.job_folder(batch_id)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        out_path, err_path = folder / "output.jsonl", folder / "errors.jsonl"
        await asyncio.to_thread(self._write_kept, batch_id, out_path, err_path)
        done, counts = await asyncio.to_thread(_tally, out_path, err_path)
        await asyncio.to_thread(store.update, batch_id, **counts)
        stop = None
        if file_row is not None:
            stop = await self._answer_lines(
                batch_id, row["expires_at"], store.file_path(file_row), done, counts, out_path, err_path
            )
        if stop == STOPPED:
            return  # the server is shutting down: the job resumes at the next start
        await asyncio.to_thread(self._finish, batch_id, stop or "completed")

    async def _slot(self) -> bool:
        """Take one of the server's slots for a line (waiting while none is free); False when the server began to
        stop meanwhile (no slot taken)."""
        if self.slots is None:
            return not self.stopping
        slots, key = self.slots
        take = asyncio.ensure_future(slots.wait_take(key))

        async def settle() -> bool:
            """End the wait; whether it took a slot."""
            if not take.done():
                take.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await take
            return not take.cancelled() and take.exception() is None

        try:
            while not take.done() and not self.stopping:
                await asyncio.wait((take,), timeout=TICK_S)  # a stop is seen within a tick
        except BaseException:  # this job cancelled: a slot taken meanwhile is given back
            if await settle():
                slots.give(key)
            raise
        if await settle() and not self.stopping:
            return True
        if not take.cancelled() and take.exception() is None:
            slots.give(key)
        return False

    async def _answer_lines(
        self,
        batch_id: str,
        expires_at: int,
        path: Path,
        done: set[str],
        counts: dict[str, int],
        out_path: Path,
        err_path: Path,
    ) -> str | None:
        """Answer the lines of ``path`` not in ``done``, at most ``concurrency`` at a time and each in one of the
        server's slots; returns why it stopped taking lines ("cancelled", "expired", ``STOPPED``: the server is
        shutting down) or None when every line was taken. Waits for the lines in flight. Each answer is kept in the
        database as it arrives (paid), then appended to the output or error file: a write that fails stops the job,
        and the kept answer is written when it resumes, never asked again."""
        gate = asyncio.Semaphore(self.concurrency)
        flying: set[asyncio.Task[None]] = set()
        write = asyncio.Lock()
        out = await asyncio.to_thread(out_path.open, "ab")
        err = await asyncio.to_thread(err_path.open, "ab")
        stop: str | None = None

        async def one(cid: str, body: Any, slot: list[bool]) -> None:
            try:
                rid = str(uuid.uuid4())
                try:
                    status, answer = await self.answer_line(body, rid)
                finally:
                    give(slot)
                record: dict[str, Any] = {
                    "id": f"batch_req_{uuid.uuid4().hex}",
                    "custom_id": cid,
                    "response": {"status_code": status, "request_id": rid, "body": answer},
                    "error": None,
                }
                if status != 200:
                    problem = answer.get("error") if isinstance(answer, dict) else None
                    problem = problem if isinstance(problem, dict) else {}
                    record["error"] = {"code": problem.get("code"), "message": problem.get("message")}
                data = json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
                # the answer is paid for: kept in the database first, even when the stop's deadline cuts the line
                # now (a local write, bounded by the database's busy time-out), so it is never asked again
                kept = asyncio.ensure_future(asyncio.to_thread(self.store.keep_answer, batch_id, cid, data))
                try:
                    await asyncio.shield(kept)
                except asyncio.CancelledError:
                    await asyncio.wait((kept,))
                    raise
                async with write:
                    await asyncio.to_thread(_append, out if status == 200 else err, data)
                    if status == 200:
                        counts["completed"] += 1
                        _add_usage(counts, answer.get("usage"))
                    else:
                        counts["failed"] += 1
                    await asyncio.to_thread(self.store.update, batch_id, **counts)
                await asyncio.to_thread(self.store.drop_answers, batch_id, cid)
            except Exception as exc:  # seen before the gate lets the next line in: no line starts after it
                failures.append(exc)
            finally:
                gate.release()

        def give(slot: list[bool]) -> None:
            """Give back a line's slot once (also for a line cancelled before it started)."""
            if slot and self.slots is not None:
                slot.clear()
                self.slots[0].give(self.slots[1])

        def settled(task: asyncio.Task[None], slot: list[bool]) -> None:
            give(slot)
            flying.discard(task)

        failures: list[BaseException] = []
        try:
            with path.open("rb") as f:
                lines = _lines_of(f)
                while not failures:  # a line that could not be written stops the job (resumed at the next tick)
                    item = await asyncio.to_thread(_next_not_done, lines, done)
                    if item is None:
                        break
                    await gate.acquire()
                    if failures:
                        gate.release()
                        break
                    if self.stopping:
                        stop = STOPPED
                        gate.release()
                        break
                    status = await asyncio.to_thread(self._status, batch_id)
                    if status != "in_progress" or self.clock() >= expires_at:
                        stop = "cancelled" if status == "cancelling" else "expired" if status == "in_progress" else None
                        gate.release()
                        break
                    if not await self._slot():
                        stop = STOPPED
                        gate.release()
                        break
                    slot = [True]
                    task = asyncio.create_task(one(*item, slot))
                    flying.add(task)
                    task.add_done_callback(functools.partial(settled, slot=slot))
            if flying:
                await asyncio.wait(set(flying))
            if failures:
                raise failures[0]
        except BaseException:
            for task in flying:
                task.cancel()
            if flying:
                await asyncio.wait(set(flying), timeout=END_S)
            raise
        finally:
            out.close()
            err.close()
        return stop

    def _write_kept(self, batch_id: str, out_path: Path, err_path: Path) -> None:
        """Append to the job's files each kept answer not yet in them (a write that failed, a line the stop cut
        after its answer arrived), then forget them: answered once, never asked again."""
        kept = self.store.kept_answers(batch_id)
        if not kept:
            return
        done, _ = _tally(out_path, err_path)
        with out_path.open("ab") as out, err_path.open("ab") as err:
            for cid, data in kept:
                if cid in done:
                    continue
                ok = (json.loads(data).get("response") or {}).get("status_code") == 200
                _append(out if ok else err, data)
        self.store.drop_answers(batch_id)

    def _status(self, batch_id: str) -> str | None:
        row = self.store.batch_row(batch_id)
        return row["status"] if row is not None else None

    def _set_if_open(self, batch_id: str, **fields: Any) -> bool:
        """Update a job still validating (not cancelled meanwhile); True if it was."""
        names = ", ".join(f"{k} = ?" for k in fields)
        changed = self.store.run(
            lambda c: (
                c.execute(
                    f"UPDATE batches SET {names} WHERE id = ? AND status = 'validating'", (*fields.values(), batch_id)
                ).rowcount
            )
        )
        return bool(changed)

    def _finish(self, batch_id: str, how: str) -> None:
        """End a job: "completed", or "cancelled" / "expired" with its lines never run in the error file; the
        output and error files registered (purpose ``batch_output``)."""
        store = self.store
        row = store.batch_row(batch_id)
        if row is None or row["status"] in TERMINAL:
            return
        now = int(self.clock())
        folder = store.job_folder(batch_id)
        folder.mkdir(parents=True, exist_ok=True)
        out_path, err_path = folder / "output.jsonl", folder / "errors.jsonl"
        self._write_kept(batch_id, out_path, err_path)
        extra: dict[str, Any] = {}
        if how == "completed":
            store.update(batch_id, status="finalizing", finalizing_at=now)
        else:
            done, counts = _tally(out_path, err_path)  # a kept answer just written counts
            extra.update(counts)
            code, message = NOT_RUN[how]
            file_row = store.file_row(row["input_file_id"])
            if file_row is not None:
                with store.file_path(file_row).open("rb") as f, err_path.open("ab") as err:
                    for cid, _body in _lines_of(f):
                        if self.stopping:  # the server is stopping: the job is ended at the next start
                            raise _Halted
                        if cid not in done:
                            done.add(cid)
                            record = {
                                "id": f"batch_req_{uuid.uuid4().hex}",
                                "custom_id": cid,
                                "response": None,
                                "error": {"code": code, "message": message},
                            }
                            err.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
                    err.flush()
                    os.fsync(err.fileno())
            if not row["total"]:  # never validated (cancelled or expired while waiting): its lines, as read
                extra["total"] = len(done)
        ids: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
        for key, path in (("output_file_id", out_path), ("error_file_id", err_path)):
            if path.exists() and path.stat().st_size:
                file_id = f"file-batch_output-{uuid.uuid5(uuid.NAMESPACE_URL, f'{batch_id}/{path.name}').hex}"
                if store.file_row(file_id) is None:
                    store.add_file(file_id, path, path.stat().st_size, path.name, "batch_output")
                ids[key] = file_id
        store.update(batch_id, status=how, **ids, **extra, **{f"{how}_at": now})


def _lines_of(f: IO[bytes]) -> Iterator[tuple[str, Any]]:
    """(custom_id, body) of each line of a validated input file."""
    for line in read_lines(f):
        if line.raw is None or not line.raw.strip():
            continue
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            item = json.loads(line.raw)
            if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
                yield item["custom_id"], item.get("body")


def _next_not_done(lines: Iterator[tuple[str, Any]], done: set[str]) -> tuple[str, Any] | None:
    """The next line whose custom_id is not in ``done`` (None at the end)."""
    for cid, body in lines:
        if cid not in done:
            return cid, body
    return None


def _tally(out_path: Path, err_path: Path) -> tuple[set[str], dict[str, int]]:
    """The custom_ids already answered (in either file) and the job's counts from them."""
    done: set[str] = set()
    counts = dict.fromkeys(
        ("completed", "failed", "input_tokens", "output_tokens", "reasoning_tokens", "cached_tokens"), 0
    )
    for rec in read_results(out_path):
        done.add(str(rec.get("custom_id")))
        counts["completed"] += 1
        body = (rec.get("response") or {}).get("body")
        _add_usage(counts, body.get("usage") if isinstance(body, dict) else None)
    for rec in read_results(err_path):
        done.add(str(rec.get("custom_id")))
        if rec.get("response") is not None:  # a line never run is not a failed request
            counts["failed"] += 1
    return done, counts


def _add_usage(counts: dict[str, int], usage: Any) -> None:
    """Add a completion's usage (compat: prompt_tokens, completion_tokens and their details) to a job's sums."""
    if not isinstance(usage, dict):
        return

    def n(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    counts["input_tokens"] += n(usage.get("prompt_tokens"))
    counts["output_tokens"] += n(usage.get("completion_tokens"))
    counts["cached_tokens"] += n((usage.get("prompt_tokens_details") or {}).get("cached_tokens"))
    counts["reasoning_tokens"] += n((usage.get("completion_tokens_details") or {}).get("reasoning_tokens"))


_GOING_AWAY = ("cannot schedule new futures", "Executor shutdown has been called", "Event loop is closed")


def _going_away(exc: BaseException) -> bool:
    """Whether ``exc`` says the event loop or its executor is going away (``asyncio.run`` ending, the interpreter
    exiting): CPython's RuntimeErrors from ``ThreadPoolExecutor.submit`` ("cannot schedule new futures after
    [interpreter] shutdown") and ``loop.run_in_executor`` ("Executor shutdown has been called", "Event loop is
    closed")."""
    return isinstance(exc, RuntimeError) and any(words in str(exc) for words in _GOING_AWAY)


def _append(f: IO[bytes], data: bytes) -> None:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


# --- the routes ---------------------------------------------------------------------------------------------


def add_routes(
    app: Any,
    store: BatchStore,
    runner: Runner,
    *,
    authorize: Callable[[Any], Any],
    refuse: Callable[[BaseException, str], Any],
    read_json: Callable[[Any], Awaitable[Any]],
) -> None:
    """The Batch API's routes under each of ``PREFIXES``. ``authorize(request)`` raises for a bad key;
    ``refuse(exc, rid)`` is the compat error response for any exception; ``read_json(request)`` the body as the
    chat routes read it (within the server's body limit, bad JSON a 400, a client gone while sending it)."""
    from fastapi.responses import JSONResponse, StreamingResponse

    REQUEST_ID_HEADER = "x-request-id"

    def route(
        fn: Callable[..., Awaitable[Any]],
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Request) -> Any:
            rid = str(uuid.uuid4())
            try:
                authorize(request)
                answer = await fn(request)
            except Exception as exc:
                return refuse(exc, rid)
            if isinstance(answer, dict):
                return JSONResponse(answer, headers={REQUEST_ID_HEADER: rid})
            return answer

        return wrapped

    def the_file(file_id: str) -> sqlite3.Row:
        row = store.file_row(file_id)
        if row is None:
            raise Refused(404, f"file {file_id} not found", "not_found")
        return row

    async def upload(request: Any) -> dict[str, Any]:
        from starlette.formparsers import MultiPartException, MultiPartParser

        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise Refused(400, "files are uploaded as multipart/form-data with purpose=batch and file")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_FILE_BYTES + COPY_CHUNK:
            raise Refused(413, f"the file is larger than {MAX_FILE_BYTES // 1_000_000} MB, the Batch API's limit")

        async def bounded() -> AsyncGenerator[bytes, None]:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_FILE_BYTES + COPY_CHUNK:
                    raise Refused(
                        413, f"the file is larger than {MAX_FILE_BYTES // 1_000_000} MB, the Batch API's limit"
                    )
                yield chunk

        try:
            form = await MultiPartParser(request.headers, bounded(), max_files=1, max_fields=10).parse()
        except MultiPartException as exc:
            raise Refused(400, f"the form cannot be read: {exc.message}") from None
        try:
            purpose = form.get("purpose")
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise Refused(400, "the form has no file field")
            if purpose != "batch":
                raise Refused(400, f"purpose must be 'batch', not {purpose!r}")
            name = os.path.basename(upload.filename or "") or "input.jsonl"
            if not name.lower().endswith(".jsonl"):
                raise Refused(400, f"the file must be a .jsonl file, not {name!r}")
            file_id = f"file-batch-{uuid.uuid4().hex[:24]}"
            await asyncio.to_thread((store.folder / "files").mkdir, parents=True, exist_ok=True)
            path = store.folder / "files" / f"{file_id}.jsonl"
            size = await asyncio.to_thread(_copy, upload.file, path)
            if size > MAX_FILE_BYTES:
                path.unlink()
                raise Refused(413, f"the file is larger than {MAX_FILE_BYTES // 1_000_000} MB, the Batch API's limit")
            return await asyncio.to_thread(store.add_file, file_id, path, size, name, "batch")
        finally:
            await form.close()

    async def list_files(request: Any) -> dict[str, Any]:
        q = request.query_params
        limit = _limit(q.get("limit"), 10_000)
        data, more = await asyncio.to_thread(store.files, q.get("purpose"), limit, q.get("after"))
        return _page(data, more)

    async def get_file(request: Any) -> dict[str, Any]:
        row = await asyncio.to_thread(the_file, request.path_params["file_id"])
        return _file_object(row)

    async def content(request: Any) -> Any:
        row = await asyncio.to_thread(the_file, request.path_params["file_id"])
        path = store.file_path(row)
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise Refused(404, f"the content of file {row['id']} is gone", "not_found") from None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while data := await asyncio.to_thread(f.read, COPY_CHUNK):
                    yield data
            finally:
                f.close()

        size = os.fstat(f.fileno()).st_size
        return StreamingResponse(chunks(), media_type="application/octet-stream", headers={"Content-Length": str(size)})

    async def delete_file(request: Any) -> dict[str, Any]:
        file_id = request.path_params["file_id"]
        if not await asyncio.to_thread(store.delete_file, file_id):
            raise Refused(404, f"file {file_id} not found", "not_found")
        return {"id": file_id, "object": "file", "deleted": True}

    async def create(request: Any) -> dict[str, Any]:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise Refused(400, "the body must be a JSON object")
        extra = set(body) - {"input_file_id", "endpoint", "completion_window", "metadata"}
        if extra:
            raise Refused(400, f"unknown fields: {', '.join(sorted(extra))}")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise Refused(400, "input_file_id is required")
        row = await asyncio.to_thread(store.file_row, file_id)
        if row is None:
            raise Refused(404, f"input_file_id {file_id!r} not found", "not_found")
        if row["purpose"] != "batch":
            raise Refused(400, f"file {file_id} is not a batch input file (purpose {row['purpose']})")
        if body.get("endpoint") != ENDPOINT:
            raise Refused(400, f"endpoint must be {ENDPOINT!r}")
        window = body.get("completion_window")
        if window_seconds(window) is None:
            raise Refused(
                400, f"completion_window must be whole hours from {MIN_WINDOW_H}h to {MAX_WINDOW_H}h (or days): 24h"
            )
        meta = body.get("metadata")
        if meta is not None and (
            not isinstance(meta, dict) or len(meta) > MAX_METADATA or not all(_meta_pair(k, v) for k, v in meta.items())
        ):
            raise Refused(400, "metadata must be at most 16 string values (keys up to 64 characters, values 512)")
        job = await asyncio.to_thread(store.add_batch, file_id, str(window), meta)
        runner.wake.set()
        return job

    async def list_batches(request: Any) -> dict[str, Any]:
        q = request.query_params
        limit = _limit(q.get("limit"), MAX_LIST)
        ids = {i for i in (q.get("input_file_ids") or "").split(",") if i} or None
        if ids is not None and len(ids) > MAX_FILTER_IDS:
            raise Refused(400, f"input_file_ids: at most {MAX_FILTER_IDS}")
        statuses = {s for s in (q.get("status") or "").split(",") if s} or None
        data, more = await asyncio.to_thread(store.batches, limit, q.get("after"), statuses, ids)
        return _page(data, more)

    async def get_batch(request: Any) -> dict[str, Any]:
        batch_id = request.path_params["batch_id"]
        job = await asyncio.to_thread(store.batch, batch_id)
        if job is None:
            raise Refused(404, f"batch {batch_id} not found", "not_found")
        return job

    async def cancel(request: Any) -> dict[str, Any]:
        batch_id = request.path_params["batch_id"]
        job = await asyncio.to_thread(store.cancel, batch_id)
        if job is None:
            raise Refused(404, f"batch {batch_id} not found", "not_found")
        runner.wake.set()
        return job

    for prefix in PREFIXES:
        app.add_api_route(prefix + "/files", route(upload), methods=["POST"])
        app.add_api_route(prefix + "/files", route(list_files), methods=["GET"])
        app.add_api_route(prefix + "/files/{file_id}", route(get_file), methods=["GET"])
        app.add_api_route(prefix + "/files/{file_id}", route(delete_file), methods=["DELETE"])
        app.add_api_route(prefix + "/files/{file_id}/content", route(content), methods=["GET"])
        app.add_api_route(prefix + "/batches", route(create), methods=["POST"])
        app.add_api_route(prefix + "/batches", route(list_batches), methods=["GET"])
        app.add_api_route(prefix + "/batches/{batch_id}", route(get_batch), methods=["GET"])
        app.add_api_route(prefix + "/batches/{batch_id}/cancel", route(cancel), methods=["POST"])


def _meta_pair(key: Any, value: Any) -> bool:
    return isinstance(key, str) and len(key) <= 64 and isinstance(value, str) and len(value) <= 512


def _limit(raw: str | None, most: int) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise Refused(400, f"limit must be a whole number from 1 to {most}")
    return int(raw)


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


def _copy(source: IO[bytes], path: Path) -> int:
    """Copy an uploaded file (spooled by the form parser) to ``path``; its size in bytes."""
    source.seek(0)
    with path.open("wb") as f:
        shutil.copyfileobj(source, f, COPY_CHUNK)
        f.flush()
        os.fsync(f.fileno())
        return f.tell()
