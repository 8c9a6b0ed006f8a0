"""SQLite plumbing of the stores (the response cache, the usage log) and of the batch journal.

Each database declares its schema as an ordered list of numbered migration functions; ``connect`` applies
the ones not yet recorded in the ``_migrations`` table, each in its own transaction, so an old file is
brought up to date and a new one is built the same way. Never edit a released migration: add the next.

**At exit.** Stores that nobody closed (a script that never calls ``Client.close()``) lose nothing: one
``atexit`` hook (``_at_exit``, registered when this module is imported) first commits every ``BackgroundWriter``'s
queued rows and waits for its thread to end, then closes every open ``Database`` under its lock. Connections are
never closed by ``weakref.finalize``'s own exit hook, whose place among the ``atexit`` hooks depends on when the
first finalizer of the process was made (it used to run before the writers' flush: rows were lost, and a
connection could be closed under a thread still writing to it). After the hook, a row submitted late (a daemon
thread still answering) is written in the caller's thread before ``submit`` returns.

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
import shlex
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from qwenvl.errors import MediaError

log = logging.getLogger(__name__)
Migration = Callable[[sqlite3.Connection], None]
BUSY_TIMEOUT_MS = 10_000
# Page cache per connection, in KiB. SQLite's default (2 MiB) fills as a journal, cache or usage log grows and
# is then held for the process's life; these databases are written row by row and read once at the end, so a
# small cache costs no speed (bench/bench_batch.py) and keeps a long batch's memory from growing with it.
CACHE_KIB = 256
T = TypeVar("T")
_WAKE: tuple[str, tuple] = ("", ())  # put in a writer's queue to wake its thread (not a row)


def problem(path: Path, exc: BaseException, doing: str = "used") -> str:
    """What is wrong with the database file ``path``, whose opening or use raised ``exc`` (``sqlite3.Error`` or
    ``OSError``), as the rest of a sentence naming it: "is not an SQLite database", "is damaged (database disk
    image is malformed)", "is a folder, not a database file", else "cannot be <doing> (SQLite's or the system's
    words)". The one wording for every SQLite file qwenvl keeps (the usage log, the response cache, a batch
    journal). Raises nothing."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if path.is_dir():
        return "is a folder, not a database file"
    if "file is not a database" in text:
        return "is not an SQLite database"
    if "malformed" in text or getattr(exc, "sqlite_errorname", "") == "SQLITE_CORRUPT":
        return f"is damaged ({text})"
    return f"cannot be {doing} ({text})"


# The one way out of a damaged database file: moved aside (kept for a look), a new one is made.
MOVE_ASIDE = "move it aside and qwenvl makes a new one"


def warn_unwritable(path: Path, exc: BaseException, what: str, consequence: str) -> None:
    """The one warning for a store that cannot be written (the requests go on): ``"<what> <path> <problem>:
    <consequence>"``, and ``MOVE_ASIDE`` when the file itself is the fault (damaged, not SQLite, a folder)."""
    words = problem(path, exc, "written")
    advice = "" if words.startswith("cannot") else f" ({MOVE_ASIDE})"
    log.warning("%s%s %s: %s%s", f"{what} " if what else "", path, words, consequence, advice)


def move_aside_hint(path: Path) -> str:
    """``MOVE_ASIDE`` as a hint, with the command that does it."""
    q = shlex.quote(str(path))
    return f"Move it aside (`mv {q} {q}.bad`): qwenvl makes a new one at the next run."


def unusable(path: Path, what: str, *, hint: str | None = None) -> MediaError:
    """The one refusal of a database file qwenvl cannot read (``what``: ``problem``'s words, or a check's own,
    e.g. "is not a qwenvl journal"): ``"<path> <what>"``, a MediaError (CLI exit code 3: the file is the fault,
    as any input file's) whose hint (default ``move_aside_hint``) says what to do. Raises nothing."""
    return MediaError(f"{path} {what}", source=str(path), hint=hint or move_aside_hint(path))


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
        _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        migrate(conn, migrations)
    except BaseException:
        conn.close()
        raise
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the file in WAL mode (kept in the file: a later connection finds it so and changes nothing). Changing
    the mode needs the file to itself, and SQLite says "database is locked" at once, without its busy wait, while
    another process (a ``qwenvl serve`` and a CLI on one usage log, at the file's first use) is opening it: tried
    again until ``BUSY_TIMEOUT_MS`` has passed, then raised."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") not in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


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
        _databases.add(self)

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
                self._closer.atexit = False  # at exit, _at_exit closes it (after the writers' rows are in)
            return fn(conn)

    def close(self, timeout: float = -1) -> bool:
        """Close the connection (a later use opens it again). ``timeout``: seconds to wait for a use in progress
        (default: as long as it takes); False when it did not end in time (the connection is then left open)."""
        self._after_fork()
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            if self._closer is not None:
                self._closer()
            self._conn = self._closer = None
        finally:
            self._lock.release()
        return True


class BackgroundWriter:
    """Inserts that nobody waits for (the usage log), committed by one thread in groups.

    ``submit`` only queues a statement. A thread takes everything queued, runs it in one transaction and
    commits: a row is on disk within milliseconds, and many threads logging at once cost one commit instead of
    one each (and never wait on each other's commits). The thread is started by the first ``submit`` and
    ends after ``IDLE_S`` with nothing to write, so an idle or forgotten writer holds no thread. ``flush``
    waits until everything queued so far is committed. At exit (``_at_exit``) ``stop`` commits what is queued
    and ends the thread before any database is closed; a row submitted after that is written by ``submit``
    itself. A process killed with SIGKILL can lose the rows of its last few milliseconds.

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
        _writers.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.SimpleQueue[tuple[str, tuple]] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._warned = False

    def submit(self, sql: str, params: tuple) -> None:
        if self._pid != os.getpid():  # the writer thread does not survive a fork: start afresh
            self._reset()
        with self._cond:
            if self._stopping and self._thread is None:  # after the exit hook: written here, now
                self._write([(sql, params)])
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="qwenvl-log-writer", daemon=True)
                self._thread.start()
            if self._pending >= self.MAX_QUEUED:  # (the thread cannot end meanwhile: its queue is not empty)
                self._cond.wait_for(lambda: self._pending < self.MAX_QUEUED, self.MAX_WAIT_S)
            self._queue.put((sql, params))
            self._pending += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (at most ``timeout`` seconds) until every row submitted so far is committed; False on time-out."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def stop(self, timeout: float = 10.0) -> bool:
        """At exit: commit what is queued and end the thread (waiting at most ``timeout`` seconds in all);
        False on time-out. Rows submitted afterwards are written by ``submit`` itself."""
        if self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        with self._cond:
            thread = self._thread
            self._stopping = True  # the thread ends as soon as its queue is empty
        if thread is None:
            return True
        self._queue.put(_WAKE)  # the thread may be waiting for a row: wake it now, not after IDLE_S
        thread.join(max(0.0, deadline - time.monotonic()))
        return not thread.is_alive()

    def _write(self, group: list[tuple[str, tuple]]) -> None:
        try:
            self._db.run(functools.partial(_write_all, statements=group))
        except (sqlite3.Error, OSError) as exc:  # said once per writer; the requests go on
            if not self._warned:
                self._warned = True
                warn_unwritable(self._db.path, exc, "the usage log", "usage is not logged there")

    def _loop(self) -> None:
        while True:
            try:
                group = [self._queue.get(timeout=0.0 if self._stopping else self.IDLE_S)]
                if group[0] is _WAKE:
                    continue
            except queue.Empty:
                with self._cond:  # submit queues under this lock: nothing can slip in between
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            while len(group) < self.MAX_GROUP:
                try:
                    row = self._queue.get_nowait()
                except queue.Empty:
                    break
                if row is not _WAKE:
                    group.append(row)
            self._write(group)
            with self._cond:
                self._pending -= len(group)
                self._cond.notify_all()
            if not self._stopping:
                time.sleep(self.GROUP_WINDOW_S)  # let the next group gather: fewer wake-ups and commits


def _write_all(conn: sqlite3.Connection, statements: list[tuple[str, tuple]]) -> None:
    # IMMEDIATE: the write lock is taken first, waiting up to BUSY_TIMEOUT_MS for another process (a serve and a
    # CLI on one usage log); a deferred transaction that read first could not be upgraded and failed at once
    # with "database is locked" (seen under load)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in statements:
            conn.execute(sql, params)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# Every live store object of this process, for the exit hook (weak: a collected one is closed by its finalizer).
_writers: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()
_databases: weakref.WeakSet[Database] = weakref.WeakSet()
EXIT_TIMEOUT_S = 10.0  # the longest the exit hook waits for a writer, and for a database in use


def _at_exit() -> None:
    """Commit every writer's queued rows and end its thread, then close every database (see the module doc)."""
    for writer in list(_writers):
        if not writer.stop(EXIT_TIMEOUT_S):
            log.warning(
                "usage rows still queued for %s after %.0f s at exit: not logged", writer._db.path, EXIT_TIMEOUT_S
            )
    for db in list(_databases):
        if db._pid == os.getpid():
            db.close(timeout=EXIT_TIMEOUT_S)


atexit.register(_at_exit)
