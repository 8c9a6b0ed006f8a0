"""Crash-safe resume: a SQLite journal next to the output, and outputs rewritten atomically from it.

``captions.jsonl`` gets ``captions.jsonl.journal`` beside it. The journal holds one row per item: its id,
its position in the input, a fingerprint of its request, and once it is finished its status (``ok`` or
``error``) and its output line. During a run a writer thread commits finished items as they come (group
commit: what arrived in the last few milliseconds goes in one transaction), in WAL mode, so a run killed at
any moment (SIGKILL included) loses only the answers still in flight or a few milliseconds old; those items
are simply sent again (and the response cache, written before the journal, usually answers them for free).

The JSONL (and CSV) output is never appended to: it is rewritten from the journal into a temporary file in
the same folder, fsynced and moved over the old one with ``os.replace``, periodically and at the end. A
reader, or a crash, sees either the previous complete file or the new one, never half a line.

Started again with the same output, a run registers its items again: an item whose id and fingerprint are
both found finished is skipped, one whose request changed (another prompt, model or file list) is sent
again, and items no longer among the inputs are left out of the output. A journal being written by a live
process is refused (two runs would pay twice).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from qwenvl.batch.db import connect
from qwenvl.errors import UsageError

SUFFIX = ".journal"
WRITER_BATCH = 500  # finished items committed in one transaction at most
WRITER_WINDOW_S = 0.005  # a finished item waits at most about this long for its commit
_STOP = object()
_FINISH = ("UPDATE items SET status = ?, line = ?, input_tokens = ?, output_tokens = ?, cost = ?, cached = ?, "
           "finished_at = ? WHERE id = ?")
# Request fields that do not change the answer: a resumed run may change them freely.
NETWORK_FIELDS = frozenset({"max_retries", "retry_backoff_s", "timeout_s", "timeout", "base_url", "stream"})
CSV_COLUMNS = ("id", "input", "status", "text", "json", "error_type", "error_message", "model", "input_tokens",
               "output_tokens", "image_tokens", "cost", "cached", "request_id")


def m001_items(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("""CREATE TABLE items (
        id TEXT PRIMARY KEY,
        seq INTEGER,               -- position among the current inputs; NULL = not an input any more
        fingerprint TEXT NOT NULL,
        status TEXT,               -- NULL pending | ok | error | submitted (in a Batch API job)
        line TEXT,                 -- the output line once finished
        input_tokens INTEGER,
        output_tokens INTEGER,
        cost REAL,
        cached INTEGER,
        batch_id TEXT,             -- the Batch API job the item was submitted in
        finished_at REAL)""")
    conn.execute("CREATE INDEX items_seq ON items (seq)")
    conn.execute("""CREATE TABLE batches (
        id TEXT PRIMARY KEY,       -- the service's batch id
        input_file_id TEXT,
        model TEXT,
        status TEXT,
        created_at REAL,
        merged INTEGER NOT NULL DEFAULT 0)""")


MIGRATIONS = [m001_items]


def journal_path(output: Path) -> Path:
    return output.with_name(output.name + SUFFIX)


def fingerprint(fields: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """What identifies an item's question: its request fields (network settings aside) and client defaults."""
    data = {k: v for k, v in {**(defaults or {}), **fields}.items() if k not in NETWORK_FIELDS}
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows: assume it is gone
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_finished(output: Path) -> dict[str, tuple[str, str]]:
    """{id: (fingerprint, status)} of the items a previous run finished or submitted, without taking the
    journal (for estimates before anything is decided)."""
    path = journal_path(output)
    if not path.exists():
        return {}
    conn = connect(path, MIGRATIONS)
    try:
        rows = conn.execute("SELECT id, fingerprint, status FROM items WHERE status IS NOT NULL").fetchall()
        return {r["id"]: (r["fingerprint"], r["status"]) for r in rows}
    finally:
        conn.close()


class Journal:
    """The journal of one output file. ``open`` takes it (refusing one held by a live process)."""

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        self.path = journal_path(self.output)
        self._conn: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[Any] | None = None
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the journal is not open")
        return self._conn

    def open(self) -> Journal:
        self._conn = connect(self.path, MIGRATIONS, check_same_thread=False)  # the writer thread uses it too
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        with self._transaction():
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
            if row is not None:
                owner = json.loads(row["value"])
                if owner.get("host") == me["host"] and owner.get("pid") != me["pid"] and _pid_alive(owner["pid"]):
                    self._conn.close()
                    self._conn = None
                    raise UsageError(f"another qwenvl batch (pid {owner['pid']}) is writing {self.output}",
                                     hint="Wait for it to finish, or choose another output file.")
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('owner', ?)", (json.dumps(me),))
        for stale in self.output.parent.glob(f".{self.output.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
        return self

    def close(self) -> None:
        with contextlib.suppress(BaseException):
            self.stop_writer()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("DELETE FROM meta WHERE key = 'owner'")
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Journal:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- items -----------------------------------------------------------------------------------
    def register(self, entries: Iterable[tuple[str, str]]) -> None:
        """Make (id, fingerprint) pairs, in input order, the current items; a changed fingerprint makes an
        item pending again."""
        with self._transaction():
            c = self.conn
            c.execute("UPDATE items SET seq = NULL WHERE seq IS NOT NULL")
            c.executemany("""
                INSERT INTO items (id, seq, fingerprint) VALUES (?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET seq = excluded.seq,
                    status = CASE WHEN items.fingerprint = excluded.fingerprint THEN items.status END,
                    line = CASE WHEN items.fingerprint = excluded.fingerprint THEN items.line END,
                    batch_id = CASE WHEN items.fingerprint = excluded.fingerprint THEN items.batch_id END,
                    fingerprint = excluded.fingerprint""",
                          ((item_id, seq, fp) for seq, (item_id, fp) in enumerate(entries)))

    def pending(self) -> set[str]:
        """The current items not finished (never sent, in flight when a run stopped, or in a Batch API job)."""
        rows = self.conn.execute("SELECT id FROM items WHERE seq IS NOT NULL AND (status IS NULL OR status NOT IN "
                                 "('ok', 'error'))").fetchall()
        return {r["id"] for r in rows}

    def retry_errors(self) -> int:
        """Forget the errors of current items, so that they are sent again. Returns how many."""
        cur = self.conn.execute("UPDATE items SET status = NULL, line = NULL WHERE status = 'error' "
                                "AND seq IS NOT NULL")
        return cur.rowcount

    def finish(self, item_id: str, status: str, line: str, *, input_tokens: int | None = None,
               output_tokens: int | None = None, cost: float | None = None, cached: bool = False) -> None:
        """Record a finished item: committed before returning, or (while the writer runs) handed to it."""
        row = (status, line, input_tokens, output_tokens, cost, int(cached), time.time(), item_id)
        if self._queue is not None:
            if self._writer_error is not None:
                raise self._writer_error
            self._queue.put(row)
            return
        self.conn.execute(_FINISH, row)

    # --- the writer thread (realtime runs) ---------------------------------------------------------
    def start_writer(self, csv_path: Path | None, flush_interval_s: float) -> None:
        """From now on ``finish`` only queues: a thread commits what is queued, in one transaction per batch
        (group commit: a finished item is committed within milliseconds, and the event loop never waits on
        the disk), and rewrites the outputs every ``flush_interval_s`` (more rarely when that takes long)."""
        self._queue = queue.SimpleQueue()
        self._writer_error = None
        self._writer = threading.Thread(target=self._write_loop, args=(csv_path, flush_interval_s),
                                        name="qwenvl-journal", daemon=True)
        self._writer.start()

    def stop_writer(self) -> None:
        """Commit everything queued and stop the thread (re-raising its error, if it had one)."""
        if self._queue is None or self._writer is None:
            return
        self._queue.put(_STOP)
        self._writer.join()
        self._queue = self._writer = None
        if self._writer_error is not None:
            raise self._writer_error

    def _write_loop(self, csv_path: Path | None, interval: float) -> None:
        assert self._queue is not None
        q, last_flush, every = self._queue, time.monotonic(), interval
        while True:
            rows = [q.get()]
            while len(rows) < WRITER_BATCH:
                try:
                    rows.append(q.get_nowait())
                except queue.Empty:
                    break
            stop = rows[-1] is _STOP
            rows = [r for r in rows if r is not _STOP]
            try:
                if rows:
                    with self._transaction():
                        self.conn.executemany(_FINISH, rows)
                if not stop and time.monotonic() - last_flush >= every:
                    started = time.monotonic()
                    self.write_outputs(csv_path)
                    last_flush = time.monotonic()
                    every = max(interval, 20 * (last_flush - started))  # writing stays under 5% of the time
            except BaseException as exc:  # reported to the run by the next finish() or stop_writer()
                self._writer_error = exc
                return
            if stop:
                return
            time.sleep(WRITER_WINDOW_S)  # let the next group gather: one commit for several items

    def counts(self) -> dict[str, Any]:
        """Totals over the current items: ok, error, pending; tokens and cost of the finished ones."""
        row = self.conn.execute("""
            SELECT count(*) AS total, sum(status = 'ok') AS ok, sum(status = 'error') AS error,
                   sum(cached) AS cached, coalesce(sum(input_tokens), 0) AS input_tokens,
                   coalesce(sum(output_tokens), 0) AS output_tokens, coalesce(sum(cost), 0.0) AS cost
            FROM items WHERE seq IS NOT NULL""").fetchone()
        out = {k: row[k] or 0 for k in row.keys()}  # noqa: SIM118 - sqlite3.Row needs keys()
        out["pending"] = out["total"] - out["ok"] - out["error"]
        return out

    # --- Batch API jobs --------------------------------------------------------------------------
    def add_batch(self, batch_id: str, input_file_id: str, model: str, item_ids: list[str]) -> None:
        with self._transaction():
            self.conn.execute("INSERT INTO batches (id, input_file_id, model, status, created_at) "
                              "VALUES (?, ?, ?, 'submitted', ?)", (batch_id, input_file_id, model, time.time()))
            self.conn.executemany("UPDATE items SET status = 'submitted', batch_id = ? WHERE id = ?",
                                  ((batch_id, i) for i in item_ids))

    def open_batches(self) -> list[dict[str, Any]]:
        """Submitted jobs that still have unfinished current items."""
        rows = self.conn.execute("""
            SELECT b.id, b.input_file_id, b.model, b.status, count(i.id) AS items FROM batches b
            JOIN items i ON i.batch_id = b.id AND i.status = 'submitted' AND i.seq IS NOT NULL
            WHERE b.merged = 0 GROUP BY b.id ORDER BY b.created_at""").fetchall()
        return [dict(r) for r in rows]

    def batch_items(self, batch_id: str) -> set[str]:
        rows = self.conn.execute("SELECT id FROM items WHERE batch_id = ? AND status = 'submitted'",
                                 (batch_id,)).fetchall()
        return {r["id"] for r in rows}

    def set_batch_status(self, batch_id: str, status: str, *, merged: bool = False) -> None:
        self.conn.execute("UPDATE batches SET status = ?, merged = ? WHERE id = ?", (status, int(merged), batch_id))

    # --- outputs ---------------------------------------------------------------------------------
    def lines(self) -> Iterator[str]:
        """The finished items' output lines, in input order."""
        cur = self.conn.execute("SELECT line FROM items WHERE seq IS NOT NULL AND status IN ('ok', 'error') "
                                "ORDER BY seq")
        for (line,) in cur:
            yield line

    def write_outputs(self, csv_path: Path | None = None) -> None:
        write_atomic(self.output, (line + "\n" for line in self.lines()))
        if csv_path is not None:
            write_atomic(csv_path, csv_rows(self.lines()))


def write_atomic(path: Path, chunks: Iterable[str]) -> None:
    """Write a text file so that it is complete or absent: a temp file beside it, fsync, os.replace."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def csv_rows(lines: Iterable[str]) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in lines:
        writer.writerow(csv_record(json.loads(line)))
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    yield buf.getvalue()


def csv_record(rec: dict[str, Any]) -> list[Any]:
    result = rec.get("result") or {}
    error = rec.get("error") or {}
    usage = rec.get("usage") or {}
    inp = rec.get("input")
    values = {
        "id": rec.get("id"), "input": inp if isinstance(inp, str) or inp is None else json.dumps(inp),
        "status": rec.get("status"), "text": result.get("text"),
        "json": json.dumps(result["json"], ensure_ascii=False) if result.get("json") is not None else None,
        "error_type": error.get("type"), "error_message": error.get("message"), "model": result.get("model"),
        "input_tokens": usage.get("input_tokens"), "output_tokens": usage.get("output_tokens"),
        "image_tokens": usage.get("image_tokens"), "cost": rec.get("cost"),
        "cached": rec.get("cached"), "request_id": result.get("request_id") or error.get("request_id"),
    }
    return ["" if values[c] is None else values[c] for c in CSV_COLUMNS]
