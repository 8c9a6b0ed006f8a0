"""SQLite plumbing of the stores (the response cache, the usage log) and of the batch journal.

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
import weakref
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


class Database:
    """One database file and its one connection, opened at first use and shared by threads behind a lock.

    Owned by one store (a ``ResponseCache``, a ``UsageLog``): nothing is shared between instances, so a
    server keeps one per app and a test its own. A file that cannot be opened is retried at the next use
    rather than remembered as broken. ``close()`` closes the connection (a later use opens it again); one that
    is never closed is closed when the object is collected, or at exit. A child process made by ``fork``
    opens its own connection: it never uses its parent's.
    """

    def __init__(self, path: Path | str, migrations: Sequence[Migration]) -> None:
        self.path = Path(path)
        self._migrations = migrations
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closer: weakref.finalize | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    def _after_fork(self) -> None:
        if self._pid != os.getpid():  # the parent's connection and lock are not this process's to use
            self._pid = os.getpid()
            self._lock = threading.Lock()
            if self._closer is not None:
                self._closer.detach()
            self._conn = self._closer = None

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` under the lock (opening, creating and migrating the file first if needed)."""
        self._after_fork()
        with self._lock:
            conn = self._conn
            if conn is None:
                conn = connect(self.path, self._migrations, check_same_thread=False)
                self._conn, self._closer = conn, weakref.finalize(self, conn.close)
            return fn(conn)

    def close(self) -> None:
        self._after_fork()
        with self._lock:
            if self._closer is not None:
                self._closer()
            self._conn = self._closer = None


class BackgroundWriter:
    """Inserts that nobody waits for (the usage log), committed by one thread in groups.

    ``submit`` only queues a statement. A thread takes everything queued, runs it in one transaction and
    commits: a row is on disk within milliseconds, and many threads logging at once cost one commit instead of
    one each (and never wait on each other's commits). The thread is started by the first ``submit`` and
    ends after ``IDLE_S`` with nothing to write, so an idle or forgotten writer holds no thread. ``flush``
    waits until everything queued so far is committed; it also runs at exit while rows are pending. A process
    killed with SIGKILL can lose the rows of its last few milliseconds.

    The queue is bounded: when ``MAX_QUEUED`` rows wait (the writer is far behind: a slow or hung disk, or
    producers faster than any disk), ``submit`` waits for room, up to ``MAX_WAIT_S``, then queues anyway (a
    row is never dropped; memory then grows only while the disk does not answer).
    """

    MAX_GROUP = 1000
    GROUP_WINDOW_S = 0.01
    IDLE_S = 1.0
    MAX_QUEUED = 2 * MAX_GROUP  # about 150 B per row: 300 kB at most, whatever the number of requests
    MAX_WAIT_S = 10.0

    def __init__(self, db: Database) -> None:
        self._db = db
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.SimpleQueue[tuple[str, tuple]] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._warned = False

    def submit(self, sql: str, params: tuple) -> None:
        if self._pid != os.getpid():  # the writer thread does not survive a fork: start afresh
            self._reset()
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="qwenvl-log-writer", daemon=True)
                atexit.register(self.flush)  # until the thread ends: rows queued at exit are still written
                self._thread.start()
            if self._pending >= self.MAX_QUEUED:  # (the thread cannot end meanwhile: its queue is not empty)
                self._cond.wait_for(lambda: self._pending < self.MAX_QUEUED, self.MAX_WAIT_S)
            self._queue.put((sql, params))
            self._pending += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (at most ``timeout`` seconds) until every row submitted so far is committed; False on time-out."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def _loop(self) -> None:
        while True:
            try:
                group = [self._queue.get(timeout=self.IDLE_S)]
            except queue.Empty:
                with self._cond:  # submit queues under this lock: nothing can slip in between
                    if self._queue.empty():
                        self._thread = None
                        atexit.unregister(self.flush)
                        return
                continue
            while len(group) < self.MAX_GROUP:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._db.run(functools.partial(_write_all, statements=group))
            except (sqlite3.Error, OSError) as exc:  # said once per writer; the requests go on
                if not self._warned:
                    self._warned = True
                    log.warning("cannot write %s (%s): usage is not logged there", self._db.path, exc)
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
