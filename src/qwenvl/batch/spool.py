"""A batch's items on disk: taken once from the caller's iterable, read back in chunks.

``Batch(items, ...)`` may be given a list or a generator (``read_requests`` reads its file lazily), and a run
passes over the items several times (the estimate, registering them in the journal, sending the pending
ones), so the items are written once, as they come, to a private temporary SQLite database: one row per item
with its position, id, fingerprint (``journal.fingerprint``), whether it has media, the item itself
(pickled), what the estimate found (a plan error, a cache hit) and, in Batch API mode, which input file its
line was written to. Every later pass reads rows back
``CHUNK`` at a time, so a batch's memory does not grow with its number of items (``bench/bench_batch.py
--memory``). An item that cannot be pickled (e.g. a ``schema`` given as a pydantic class defined inside a
function) is kept in memory instead, and only that one.

The database is SQLite's temporary database (an empty file name: ``sqlite3.connect("")``): a file in the
temporary folder (``$SQLITE_TMPDIR``, ``$TMPDIR``, ``/var/tmp``, ``/tmp``: sqlite.org/tempfiles.html) that
SQLite deletes as soon as it is opened, so nothing is left behind, even by a killed run. Its page cache is
``CACHE_KIB``; pages beyond it go to that file.

Ids are unique: a repeated id is refused (``UsageError``) as soon as it is met, naming both items (their
lines when they come from a requests file). A temporary folder without room (or any other SQLite error on
the spool) is a one-line ``UsageError`` naming ``$TMPDIR``; a Batch whose spool failed cannot be used again.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from qwenvl.batch.inputs import BatchItem
from qwenvl.batch.journal import is_disk_full
from qwenvl.errors import UsageError

CHUNK = 256  # rows read back at a time
WRITE_CHUNK = 2_000  # rows written per transaction while the items are taken
CACHE_KIB = 512  # SQLite page cache of the spool

_SCHEMA = """CREATE TABLE items (
    seq INTEGER PRIMARY KEY,     -- position among the inputs, from 0 (the journal's seq)
    id TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    legacy0 TEXT,                -- the fingerprints earlier versions gave the item (journal.legacy_fingerprints)
    legacy1 TEXT,
    media INTEGER NOT NULL,      -- has images, video or messages (planned in threads by the estimate)
    item BLOB,                   -- the pickled BatchItem (NULL: kept in memory, see Spool.kept)
    pending INTEGER NOT NULL DEFAULT 1,  -- the estimate's view: not finished by an earlier run
    prev_fingerprint TEXT,       -- from the journal of an earlier run
    prev_status TEXT,
    error TEXT,                  -- the estimate's plan error (JSON, as in the output's "error")
    cached INTEGER NOT NULL DEFAULT 0,   -- the estimate found it answered by the cache
    todo INTEGER NOT NULL DEFAULT 0,     -- the run's view: pending in the journal
    upload INTEGER)              -- the Batch API input file its line was written to (batchapi: one per file)"""


def temporary_error(exc: sqlite3.Error | OSError) -> UsageError:
    """The one-line error for a batch's temporary file that cannot be written (the spool; the Batch API's input
    files, written before they are uploaded): why, and the folder it goes to."""
    if is_disk_full(exc):
        why = "no space left"
    else:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UsageError(
        f"cannot write the batch's temporary file: {why}",
        hint="It is written to $SQLITE_TMPDIR, else $TMPDIR, else /var/tmp or /tmp (about the size of the "
        "items): free some space there or point TMPDIR to a folder with room, then run again (finished "
        "items are kept).",
    )


@contextlib.contextmanager
def _io() -> Iterator[None]:
    """SQLite errors of the spool as one-line UsageErrors (``temporary_error``)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise temporary_error(exc) from None


def temporary_db() -> sqlite3.Connection:
    """A new private temporary database (see the module: deleted by SQLite, nothing left behind), in autocommit
    mode, shareable between threads (the caller serialises its uses), with a page cache of ``CACHE_KIB`` and no
    rollback journal (what is written is rebuilt rather than recovered). Raises UsageError (``temporary_error``)."""
    conn = sqlite3.connect("", isolation_level=None, check_same_thread=False)
    try:
        with _io():
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            conn.execute("PRAGMA temp_store = FILE")
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
    except BaseException:
        conn.close()
        raise
    return conn


class Spool:
    """The items of one batch (see the module). Methods are called by one thread at a time."""

    def __init__(
        self,
        items: Iterable[BatchItem],
        fingerprint: Callable[[BatchItem], tuple[str, str | None, str | None]],
        has_media: Callable[[BatchItem], bool],
    ) -> None:
        """Take every item of ``items`` (once, in order). Raises UsageError for an item that is not a
        ``BatchItem`` and for a repeated id, and whatever iterating ``items`` raises (e.g. ``read_requests``'
        UsageError for a malformed line)."""
        conn = temporary_db()
        self._close = weakref.finalize(self, conn.close)
        self.conn = conn
        self.lock = threading.Lock()
        self.kept: dict[int, BatchItem] = {}  # items that cannot be pickled, by seq
        self.count = 0
        try:
            with _io():
                conn.execute(_SCHEMA)
                self._take(items, fingerprint, has_media)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._close()

    def _take(
        self,
        items: Iterable[BatchItem],
        fingerprint: Callable[[BatchItem], tuple[str, str | None, str | None]],
        has_media: Callable[[BatchItem], bool],
    ) -> None:
        c = self.conn
        insert = "INSERT INTO items (seq, id, fingerprint, legacy0, legacy1, media, item) VALUES (?, ?, ?, ?, ?, ?, ?)"
        c.execute("BEGIN")
        try:
            for seq, item in enumerate(items):
                if not isinstance(item, BatchItem):
                    raise UsageError(
                        f"batch item {seq + 1} is a {type(item).__name__}, not a BatchItem",
                        hint='Make each one with qwenvl.batch.BatchItem(id=..., request={"prompt": ..., ...}).',
                    )
                try:
                    blob: bytes | None = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception:  # e.g. a class defined in a function
                    blob = None
                    self.kept[seq] = item
                try:
                    c.execute(insert, (seq, item.id, *fingerprint(item), int(has_media(item)), blob))
                except sqlite3.IntegrityError:
                    raise self._repeated(item, seq) from None
                self.count = seq + 1
                if self.count % WRITE_CHUNK == 0:
                    c.execute("COMMIT")
                    c.execute("BEGIN")
        finally:
            if c.in_transaction:  # also after an error: the spool is closed then
                c.execute("COMMIT")

    def _repeated(self, item: BatchItem, seq: int) -> UsageError:
        first_seq, blob = self.conn.execute("SELECT seq, item FROM items WHERE id = ?", (item.id,)).fetchone()
        first = self._load(first_seq, blob)
        if item.source and item.line is not None and first.line is not None:
            return UsageError(
                f"{item.source} line {item.line}: id {item.id!r} is already used on line {first.line}",
                hint="Give each request its own id (or leave ids out: the line number is used).",
            )
        return UsageError(
            f"item id {item.id!r} is given twice (items {first_seq + 1} and {seq + 1})",
            hint="Give each item its own id.",
        )

    def _load(self, seq: int, blob: bytes | None) -> BatchItem:
        if blob is None:
            return self.kept[seq]
        item: BatchItem = pickle.loads(blob)
        return item

    def get(self, item_id: str) -> BatchItem | None:
        with _io():
            row = self.conn.execute("SELECT seq, item FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else self._load(*row)

    def _chunks(self, where: str, columns: str = "") -> Iterator[list[tuple[Any, ...]]]:
        """Rows (seq, item, *columns) matching ``where``, in input order, ``CHUNK`` at a time; each chunk is
        read by its own query, so rows may be updated between chunks."""
        last = -1
        while True:
            with _io():
                rows = self.conn.execute(
                    f"SELECT seq, item{columns} FROM items WHERE seq > ? AND {where} ORDER BY seq LIMIT ?",
                    (last, CHUNK),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield rows

    # --- the estimate -------------------------------------------------------------------------------
    def mark_pending(self, finished: Iterable[tuple[str, str, str]], done: tuple[str, ...]) -> bool:
        """Decide, from an earlier run's finished (or submitted) items ``(id, fingerprint, status)``, which items
        are pending: not found, changed (another fingerprint), or in a status not in ``done``. A fingerprint an
        earlier version gave the item (``legacy0``/``legacy1``) counts as its own. Forgets what an earlier
        estimate found. Returns whether an unchanged item is in an uncollected Batch API job."""
        c = self.conn
        with self.lock, _io(), self._transaction():
            c.execute(
                "UPDATE items SET pending = 1, prev_fingerprint = NULL, prev_status = NULL, error = NULL, cached = 0"
            )
            c.executemany(
                "UPDATE items SET prev_fingerprint = ?, prev_status = ? WHERE id = ?",
                ((fp, status, item_id) for item_id, fp, status in finished),
            )
            c.execute(
                "UPDATE items SET prev_fingerprint = fingerprint WHERE prev_fingerprint IS NOT fingerprint "
                "AND prev_fingerprint IN (legacy0, legacy1)"
            )
            marks = ",".join("?" * len(done))
            c.execute(
                f"UPDATE items SET pending = 0 WHERE prev_fingerprint = fingerprint AND prev_status IN ({marks})",
                done,
            )
        with self.lock, _io():
            row = c.execute(
                "SELECT 1 FROM items WHERE prev_status = 'submitted' AND prev_fingerprint = fingerprint LIMIT 1"
            ).fetchone()
        return row is not None

    def first_where(self, where: str) -> BatchItem | None:
        """The first item (in input order) matching ``where``, or None."""
        with self.lock, _io():
            row = self.conn.execute(f"SELECT seq, item FROM items WHERE {where} ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else self._load(*row)

    def count_where(self, where: str) -> int:
        with self.lock, _io():
            return int(self.conn.execute(f"SELECT count(*) FROM items WHERE {where}").fetchone()[0])

    def pending(self) -> Iterator[tuple[int, BatchItem, bool]]:
        """(seq, item, has media) of the estimate's pending items, in input order."""
        for rows in self._locked(self._chunks("pending = 1", ", media")):
            for seq, blob, media in rows:
                yield seq, self._load(seq, blob), bool(media)

    def set_estimates(self, errors: list[tuple[int, dict[str, Any]]], cached: list[int]) -> None:
        """Record the estimate's plan errors (``error_record`` dicts) and cache hits, by seq."""
        with self.lock, _io():
            self.conn.executemany("UPDATE items SET error = ? WHERE seq = ?", ((json.dumps(e), s) for s, e in errors))
            self.conn.executemany("UPDATE items SET cached = 1 WHERE seq = ?", ((s,) for s in cached))

    # --- the run ------------------------------------------------------------------------------------
    def entries(self) -> Iterator[tuple[str, str, str | None, str | None]]:
        """(id, fingerprint, legacy0, legacy1) of every item in input order (for ``Journal.register``, whose seq
        is the position: the spool's seq)."""
        last = -1
        while True:
            with self.lock, _io():
                rows = self.conn.execute(
                    "SELECT seq, id, fingerprint, legacy0, legacy1 FROM items WHERE seq > ? ORDER BY seq LIMIT ?",
                    (last, CHUNK),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for _, item_id, fp, legacy0, legacy1 in rows:
                yield item_id, fp, legacy0, legacy1

    def mark_todo(self, seqs: Iterable[int]) -> int:
        """Make exactly the items at ``seqs`` (the journal's pending ones) the run's to-do. Returns how many."""
        c = self.conn
        with self.lock, _io(), self._transaction():
            c.execute("UPDATE items SET todo = 0 WHERE todo = 1")
            c.executemany("UPDATE items SET todo = 1 WHERE seq = ?", ((s,) for s in seqs))
        return self.count_where("todo = 1")

    def todo_errors(self) -> Iterator[tuple[BatchItem, dict[str, Any]]]:
        """The to-do items with a plan error found by the estimate (their record), taken off the to-do."""
        for rows in self._locked(self._chunks("todo = 1 AND error IS NOT NULL", ", error")):
            with self.lock, _io():
                self.conn.executemany("UPDATE items SET todo = 0 WHERE seq = ?", ((r[0],) for r in rows))
            for seq, blob, error in rows:
                yield self._load(seq, blob), json.loads(error)

    def todo(self) -> Iterator[tuple[BatchItem, bool]]:
        """(item, the estimate found it cached) of the to-do items, in input order, read ``CHUNK`` at a time.
        Safe to share between threads when each ``next`` is taken under one lock."""
        for rows in self._locked(self._chunks("todo = 1", ", cached")):
            for seq, blob, cached in rows:
                yield self._load(seq, blob), bool(cached)

    # --- the Batch API's input files ------------------------------------------------------------------
    def set_upload(self, item_ids: Iterable[str], upload: int) -> None:
        """Record that the lines of ``item_ids`` were written to the Batch API input file numbered ``upload``."""
        with self.lock, _io():
            self.conn.executemany("UPDATE items SET upload = ? WHERE id = ?", ((upload, i) for i in item_ids))

    def upload_ids(self, upload: int) -> Iterator[str]:
        """The ids of the items whose lines are in the input file ``upload`` (``set_upload``), in input order,
        read ``CHUNK`` at a time."""
        last = -1
        while True:
            with self.lock, _io():
                rows = self.conn.execute(
                    "SELECT seq, id FROM items WHERE seq > ? AND upload = ? ORDER BY seq LIMIT ?", (last, upload, CHUNK)
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for _, item_id in rows:
                yield item_id

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction, committed even after an error (there is no rollback journal: each method that
        writes recomputes its columns from the start, and a spool that failed is not used again)."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")

    def _locked(self, chunks: Iterator[list[tuple[Any, ...]]]) -> Iterator[list[tuple[Any, ...]]]:
        """``chunks`` with each query run under the spool's lock."""
        while True:
            with self.lock:
                rows = next(chunks, None)
            if rows is None:
                return
            yield rows
