"""SQLite plumbing shared by the journal, the response cache and the usage log.

Each database declares its schema as an ordered list of numbered migration functions; ``connect`` applies
the ones not yet recorded in the ``_migrations`` table, each in its own transaction, so an old file is
brought up to date and a new one is built the same way. Never edit a released migration: add the next.

Every database runs in WAL mode with ``synchronous=NORMAL``: a committed transaction survives the process
being killed (SIGKILL included; only an operating-system crash can lose the last few), readers never block
the writer, and a commit costs tens of microseconds rather than an fsync.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
Migration = Callable[[sqlite3.Connection], None]
BUSY_TIMEOUT_MS = 10_000
# Page cache per connection, in KiB. SQLite's default (2 MiB) fills as a journal, cache or usage log grows and
# is then held for the process's life; these databases are written row by row and read once at the end, so a
# small cache costs no speed (bench/bench_batch.py) and keeps a long batch's memory from growing with it.
CACHE_KIB = 256
T = TypeVar("T")


def connect(path: Path, migrations: Sequence[Migration], *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating folder and file), configure and migrate a database. Autocommit mode: use ``with conn``
    or explicit BEGIN for transactions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=check_same_thread
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        migrate(conn, migrations)
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations not yet applied; returns their names."""
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
    applied = []
    for fn in migrations:
        name = fn.__name__
        if name in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # another process may have applied it while we waited for the write lock
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone() is None:
                fn(conn)
                conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
                applied.append(name)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return applied


class SharedConnection:
    """One lazily opened connection per database file, shared by threads behind a lock.

    The path is resolved at each use (the data folder can change, e.g. between tests); a file that cannot be
    opened is retried at the next use rather than remembered as broken.
    """

    KEEP_OPEN = 2  # connections kept per kind of database (the newest paths)

    def __init__(self, migrations: Sequence[Migration]) -> None:
        self._migrations = migrations
        self._lock = threading.Lock()
        self._conns: dict[str, sqlite3.Connection] = {}
        atexit.register(self.close)
        if hasattr(os, "register_at_fork"):  # a child must not use its parent's connections
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._conns = {}

    def run(self, path: Path | str, fn: Callable[[sqlite3.Connection], T]) -> T:
        key = str(path)
        with self._lock:
            conn = self._conns.get(key)
            if conn is None:
                conn = connect(Path(key), self._migrations, check_same_thread=False)
                while len(self._conns) >= self.KEEP_OPEN:
                    self._conns.pop(next(iter(self._conns))).close()
                self._conns[key] = conn
            return fn(conn)

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()


class BackgroundWriter:
    """Inserts that nobody waits for (the usage log), committed by one thread in groups.

    ``submit`` only queues a statement. A daemon thread takes everything queued, runs it in one transaction per
    database and commits: a row is on disk within milliseconds, and many threads logging at once cost one
    commit instead of one each (and never wait on each other's commits). ``flush`` waits until everything
    queued so far is committed; it runs at exit too. A process killed with SIGKILL can lose the rows of its
    last few milliseconds.

    The queue is bounded: when ``MAX_QUEUED`` rows wait (the writer is far behind: a slow or hung disk, or
    producers faster than any disk), ``submit`` waits for room, up to ``MAX_WAIT_S``, then queues anyway (a
    row is never dropped; memory then grows only while the disk does not answer).
    """

    MAX_GROUP = 1000
    GROUP_WINDOW_S = 0.01
    MAX_QUEUED = 2 * MAX_GROUP  # about 150 B per row: 300 kB at most, whatever the number of requests
    MAX_WAIT_S = 10.0

    def __init__(self, shared: SharedConnection) -> None:
        self._shared = shared
        self._queue: queue.SimpleQueue[tuple[str, str, tuple]] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None
        atexit.register(self.flush)
        if hasattr(os, "register_at_fork"):  # the writer thread does not survive a fork: start afresh
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._queue = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0
        self._thread = None

    def submit(self, path: Path | str, sql: str, params: tuple) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="qwenvl-log-writer", daemon=True)
                self._thread.start()
            if self._pending >= self.MAX_QUEUED:
                self._cond.wait_for(lambda: self._pending < self.MAX_QUEUED, self.MAX_WAIT_S)
            self._pending += 1
        self._queue.put((str(path), sql, params))

    def flush(self, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def _loop(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < self.MAX_GROUP:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            by_path: dict[str, list[tuple[str, tuple]]] = {}
            for path, sql, params in group:
                by_path.setdefault(path, []).append((sql, params))
            for path, statements in by_path.items():
                try:
                    self._shared.run(path, functools.partial(_write_all, statements=statements))
                except (sqlite3.Error, OSError) as exc:
                    log.debug("cannot write %s: %s", path, exc)
            with self._cond:
                self._pending -= len(group)
                self._cond.notify_all()
            time.sleep(self.GROUP_WINDOW_S)  # let the next group gather: fewer wake-ups and commits


def _write_all(conn: sqlite3.Connection, statements: list[tuple[str, tuple]]) -> None:
    conn.execute("BEGIN")
    try:
        for sql, params in statements:
            conn.execute(sql, params)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
