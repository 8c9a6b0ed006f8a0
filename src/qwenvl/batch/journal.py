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
both found finished is skipped, one whose request changed (another prompt, model, schema or option) is sent
again when it ended in an error, and refused by the runner when it holds an answer (``Batch.estimate``: a
UsageError unless ``fresh``), and items no longer among the inputs are left out of the output.

**The fingerprint is the question** (``fingerprint``): a hash of ``qwenvl.plan.question``, the request as the
service would get it, by field, so that an option at the value the request has anyway (a default given,
``--no-thinking`` where thinking is off by default, ``--fps`` for images, a budget equal to the model's) asks the
same question. Fingerprints carry ``FINGERPRINT_PREFIX``; a journal's unprefixed ones were written by earlier
versions (``legacy_fingerprints``: the raw fields), and an item whose legacy fingerprint matches keeps its
answer and takes the new fingerprint when registered.

**One writer at a time.** A run (``--fresh`` included) holds an operating-system file lock on
``captions.jsonl.journal.lock`` (``filelock``: ``flock`` on POSIX, ``LockFileEx`` on Windows) from before it
reads or deletes anything until it ends; the kernel drops it when the process dies, SIGKILL included, so a
stale lock cannot exist; a run that
ends (anything short of a kill) deletes the file. A second run on the same output is refused at once,
naming the other (pid, host and start time, from the journal's ``meta`` table), and deletes nothing.

**A journal is never misread.** Before it is used, a journal must be a regular file holding an intact
(``PRAGMA quick_check``) SQLite database with this module's tables. A 0-byte or table-less one (a run killed
while creating it) is taken for a new batch only when the output beside it holds no results; anything else
damaged or foreign is refused with a one-line error naming the file and ``--fresh``; nothing is modified.

**No paid answer is lost.** ``finish`` returns a future that the writer completes once the item's row is
committed; the runner waits for it before releasing the request's slot. The writer keeps a reserve file
(``RESERVE_PER_SLOT`` per slot, pre-allocated beside the journal) and deletes it when the disk is full, so the
answers still in flight can be committed; ``write_error`` then holds the one-line ``UsageError`` ("no space
left"), the runner sends nothing more, and the same command resumes once space is freed.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import itertools
import json
import os
import queue
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from qwenvl.client import make_request
from qwenvl.errors import MediaError, QwenVLError, UsageError
from qwenvl.models import LOCAL, model_info
from qwenvl.outputs import record_output, write_atomic, write_failure_hint
from qwenvl.plan import TRANSPORT_FIELDS as PLAN_TRANSPORT_FIELDS
from qwenvl.plan import question as plan_question
from qwenvl.store.db import connect, problem, unusable
from qwenvl.types import FIELD_FLAGS, request_field_defaults

SUFFIX = ".journal"
LOCK_SUFFIX = ".lock"  # captions.jsonl.journal.lock: held by the run writing captions.jsonl
RESERVE_SUFFIX = ".reserve"  # captions.jsonl.journal.reserve: space kept for the answers in flight
RESERVE_PER_SLOT = 256 * 1024  # bytes kept per request in flight (an answer's row and its WAL pages, with margin)
RESERVE_MIN, RESERVE_MAX = 4 * 1024 * 1024, 64 * 1024 * 1024
WRITER_BATCH = 500  # finished items committed in one transaction at most
REGISTER_CHUNK = 256  # items registered per statement (a bounded list: memory does not grow with the batch)
SQLITE_MAGIC = b"SQLite format 3\x00"
_STOP = object()
UPLOAD_PREFIX = "upload:"  # the placeholder id of a Batch API input file whose job is not known yet
_TABLES = {"_migrations", "meta", "items", "batches"}
_ITEM_COLUMNS = {
    "id",
    "seq",
    "fingerprint",
    "status",
    "line",
    "input_tokens",
    "output_tokens",
    "cost",
    "cached",
    "batch_id",
    "finished_at",
}
# An answer from the cache (?6) to an item whose earlier answer was paid (``--retry-errors``: a cost recorded) keeps
# that cost, in the column and in its line: a replay never overwrites what the item was paid with 0.
_FINISH = """UPDATE items SET status = ?1,
    line = CASE WHEN ?6 AND cost > 0 THEN json_set(?2, '$.cost', round(cost, 8)) ELSE ?2 END,
    input_tokens = ?3, output_tokens = ?4, cost = CASE WHEN ?6 AND cost > 0 THEN cost ELSE ?5 END, cached = ?6,
    finished_at = ?7 WHERE id = ?8"""
# Request fields that do not change the answer (``timeout``: ``timeout_s``'s other name): a resumed run may
# change them freely.
TRANSPORT_FIELDS = PLAN_TRANSPORT_FIELDS | {"timeout"}
CSV_COLUMNS = (
    "id",
    "input",
    "status",
    "text",
    "json",
    "error_type",
    "error_message",
    "model",
    "input_tokens",
    "output_tokens",
    "image_tokens",
    "cost",
    "cached",
    "request_id",
)


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


FINGERPRINT_PREFIX = "q2:"  # this version's fingerprints (``question``); a journal's unprefixed ones are older


def _legacy_fields(fields: dict[str, Any], defaults: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in {**(defaults or {}), **fields}.items() if k not in TRANSPORT_FIELDS}


def _legacy_asked(fields: dict[str, Any], defaults: dict[str, Any] | None) -> dict[str, Any]:
    """The question as qwenvl 2026-11-30 13:34 to this version hashed it: the raw fields, a field at its
    ``Request`` default left out."""
    plain = request_field_defaults()
    return {
        k: v
        for k, v in _legacy_fields(fields, defaults).items()
        if not (k in plain and type(v) is type(plain[k]) and v == plain[k])
    }


def _hash(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    # surrogatepass: a file name that is not UTF-8 holds lone surrogates (the same bytes as before for all else)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def legacy_fingerprints(fields: dict[str, Any], defaults: dict[str, Any] | None = None) -> tuple[str, str]:
    """The fingerprints earlier versions gave the same item, to recognise their journals' answers: the raw request
    fields with the client defaults (until 2026-11-30 13:34), and the same with each field at its ``Request``
    default left out (until this version). An answer under either was asked exactly these fields."""
    return _hash(_legacy_fields(fields, defaults)), _hash(_legacy_asked(fields, defaults))


def legacy_question(fields: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the last of the earlier formulas compared (``legacy_fingerprints``), as JSON values: to name what
    changed from a sample an earlier version recorded. Raises nothing."""
    return json.loads(json.dumps(_legacy_asked(fields, defaults), ensure_ascii=False, default=str))


def question(fields: dict[str, Any], defaults: dict[str, Any] | None = None, *, local: bool = False) -> dict[str, Any]:
    """What an item asks (``qwenvl.plan.question``: the request as the service would get it, by field), as JSON
    values. ``defaults``: the client's (model, ...), for the fields the item does not set; ``local``: the model
    runs on a local backend (its defaults are not the table's). Fields that do not make a valid request are
    taken as given (the item fails before anything is sent). Raises nothing."""
    try:
        request = make_request(None, fields, defaults)
    except QwenVLError:
        asked = _legacy_asked(fields, defaults)
    else:
        asked = plan_question(request, None if local else model_info(request.model))
    return json.loads(json.dumps(asked, ensure_ascii=False, default=str))


def fingerprint(fields: dict[str, Any], defaults: dict[str, Any] | None = None, *, local: bool = False) -> str:
    """What identifies an item's question: a hash of ``question`` (``FINGERPRINT_PREFIX`` + 32 hex digits). Two
    items with equal fingerprints send the same request; network settings and values that ask nothing
    different (see ``qwenvl.plan.question``) do not count. Raises nothing."""
    return FINGERPRINT_PREFIX + _hash(question(fields, defaults, local=local))


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The names of the fields whose value differs between two ``question``s, sorted."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


# Question fields that other options set too (the question holds their effect: ``--detail low`` is a lower
# ``max_pixels``, ``--detail high`` is high resolution; ``plan.question``), and fields set with another (``repair``
# comes with ``--schema`` and ``--json-mode``), for ``changed_options``.
_ALSO_SET_BY = {"max_pixels": "--detail", "min_pixels": "--detail", "vl_high_resolution_images": "--detail"}
_COMES_WITH = {"repair": ("schema", "json_mode")}
# Fields a batch takes as its arguments, not as options: named as the request key alone.
_ARGUMENT_FIELDS = frozenset({"image", "images", "video", "messages"})


def changed_options(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed between two ``question``s in the user's words: each changed field as ``"--flag / key"`` (the
    CLI option, ``types.FIELD_FLAGS``, beside the request key or library field; ``--param NAME / extra`` for each
    pass-through parameter that changed), an option that also sets it first (``--detail or --max-pixels /
    max_pixels``), a key no option sets alone (``tools``, ``image``) as the key. Fields that follow another
    (``repair`` with ``schema``) are left out when that one changed. Sorted by key. Raises nothing."""
    fields = changed_fields(before, after)
    names: list[str] = []
    for key in fields:
        if any(other in fields for other in _COMES_WITH.get(key, ())):
            continue
        if key == "extra":
            old, new = before.get(key) or {}, after.get(key) or {}
            params = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            names.extend(f"--param {k} / extra" for k in params)
            continue
        flag = None if key in _ARGUMENT_FIELDS else FIELD_FLAGS.get(key, "--" + key.replace("_", "-"))
        also = _ALSO_SET_BY.get(key) if _ALSO_SET_BY.get(key, "")[2:] not in fields else None
        if flag is None:
            names.append(key)
        else:
            names.append(f"{also + ' or ' if also else ''}{flag} / {key}")
    return names


def read_meta(output: Path, key: str) -> Any:
    """A JSON value the last run of ``output`` recorded in its journal's ``meta`` table (``Journal.set_meta``),
    read without taking the journal; None when absent or unreadable. Raises nothing."""
    try:
        conn = _ro(journal_path(output))
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        finally:
            conn.close()
        return json.loads(row["value"]) if row is not None else None
    except (sqlite3.Error, OSError, ValueError, TypeError):
        return None


def lock_path(output: Path) -> Path:
    return journal_path(output).with_name(journal_path(output).name + LOCK_SUFFIX)


def _sidecars(path: Path) -> list[Path]:
    """The journal and the files SQLite keeps beside it (deleting one without the others corrupts the next)."""
    return [
        path,
        path.with_name(path.name + "-wal"),
        path.with_name(path.name + "-shm"),
        path.with_name(path.name + "-journal"),
    ]


def _ro(path: Path) -> sqlite3.Connection:
    """A read-only connection: nothing is created, migrated or converted (the file may not be ours). Without a
    ``-wal`` file beside it (a journal closed cleanly, or not in WAL mode) the file is opened ``immutable``, so
    that SQLite creates no ``-shm``/``-wal`` files either; with one, its commits are read too."""
    wal = path.with_name(path.name + "-wal").exists()
    uri = f"{path.resolve().as_uri()}?mode=ro" + ("" if wal else "&immutable=1")
    conn = sqlite3.connect(uri, uri=True, timeout=2, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def owner_of(output: Path) -> dict[str, Any] | None:
    """The run recorded as writing ``output`` ({pid, host, since}), or None when unknown or unreadable."""
    path = journal_path(output)
    try:
        conn = _ro(path)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
        finally:
            conn.close()
        return json.loads(row["value"]) if row is not None else None
    except (sqlite3.Error, OSError, ValueError, TypeError):
        return None


def _busy(output: Path) -> UsageError:
    owner = owner_of(output)
    who = "another qwenvl batch"
    if owner and owner.get("pid"):
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(owner["since"])) if owner.get("since") else None
        who += f" (pid {owner['pid']} on {owner.get('host') or 'an unknown host'}" + (
            f", started {since})" if since else ")"
        )
    return UsageError(
        f"{who} is writing {output}: nothing was sent or deleted",
        hint="Wait for it to finish (or stop it), or choose another output file.",
    )


def take_lock(output: Path) -> FileLock:
    """Take the output's run lock, or raise a UsageError naming the run that holds it (or why it cannot be
    taken). The lock is released by ``release_lock`` or by the process ending, however it ends."""
    lock = FileLock(str(lock_path(output)), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _busy(output) from None
    except OSError as exc:
        raise UsageError(
            f"cannot write {lock.lock_file}: {exc.strerror or exc}",
            hint=write_failure_hint(exc, "write elsewhere (-o)"),
        ) from None
    return lock


def release_lock(lock: FileLock) -> None:
    """Release a lock taken by ``take_lock`` and delete its file, so that no run leaves one behind. The file is
    unlinked while still held: a run that opened it meanwhile finds, once it gets the lock, that its inode has no
    name any more, and filelock makes it try again on the new file (or refuse, with ``timeout=0``). Raises
    nothing."""
    with contextlib.suppress(OSError):
        Path(lock.lock_file).unlink(missing_ok=True)
    lock.release()


def check_free(output: Path) -> None:
    """Raise the ``take_lock`` refusal if a run holds ``output``'s lock now (nothing is left held, no file left)."""
    release_lock(take_lock(output))


def _damaged(path: Path, what: str) -> MediaError:
    """A journal that cannot be resumed from: the one refusal of a database file (``store.db.unusable``, exit 3)."""
    return unusable(
        path,
        f"{what}: it cannot be resumed from",
        hint="Pass --fresh to start over (every item is sent again), or move the file aside.",
    )


def inspect_journal(output: Path) -> bool:
    """Check ``output``'s journal before it is used. Returns True if there is one to resume from, False if the
    batch is new (no journal; or a 0-byte or table-less one, a run killed while creating it, with no results in
    the output beside it). Raises a MediaError (``store.db.unusable``: exit 3) naming the file and ``--fresh``
    when it cannot be read, is not a regular file, not SQLite, damaged (``PRAGMA quick_check``), not a qwenvl
    journal, or blank while the output holds results; a UsageError when it is from a newer qwenvl. Nothing is
    written."""
    path = journal_path(output)
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise unusable(
            path, problem(path, exc, "read"), hint="Check the file's permissions, or write elsewhere (-o)."
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise _damaged(path, "is not a regular file")
    blank = st.st_size == 0
    if not blank:
        try:
            with path.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise unusable(
                path, problem(path, exc, "read"), hint="Check the file's permissions, or write elsewhere (-o)."
            ) from None
        if head != SQLITE_MAGIC:
            raise _damaged(path, "is not a qwenvl journal (not an SQLite database)")
        try:
            conn = _ro(path)
            try:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                columns = {r[1] for r in conn.execute("PRAGMA table_info(items)")}
                applied = (
                    {r[0] for r in conn.execute("SELECT name FROM _migrations")} if "_migrations" in tables else set()
                )
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise _damaged(path, f"is damaged ({exc})") from None
        if problems != ["ok"]:
            raise _damaged(path, f"is damaged ({'; '.join(problems)})")
        blank = not tables
        if tables and (_TABLES - tables or _ITEM_COLUMNS - columns):
            raise _damaged(path, f"is not a qwenvl journal (its tables: {', '.join(sorted(tables))})")
        if applied - {m.__name__ for m in MIGRATIONS}:
            raise UsageError(f"{path} was written by a newer qwenvl", hint="Upgrade qwenvl to resume this batch.")
    if blank:
        try:
            results = output.stat().st_size > 0
        except OSError:
            results = False
        if results:
            raise _damaged(path, f"is empty while {output.name} holds results (resuming would send every item again)")
        return False
    return True


def read_finished(output: Path) -> Iterator[tuple[str, str, str]]:
    """(id, fingerprint, status) of the items a previous run finished or submitted, read as iterated (nothing
    is kept per item), without taking the journal (for estimates before anything is decided). Raises what
    ``inspect_journal`` raises, at once."""
    if not inspect_journal(output):
        return iter(())
    return _finished_rows(journal_path(output))


def read_open_jobs(output: Path) -> list[str]:
    """The ids of the Batch API jobs of ``output`` that are not merged yet, read without taking the journal
    (e.g. to name them after Ctrl-C); [] when there is no readable journal."""
    return list(read_open_job_statuses(output))


def read_open_job_statuses(output: Path) -> dict[str, str | None]:
    """``read_open_jobs`` with each job's status as the last run saw it (``cancelling`` once a cancel was asked), in
    the order the jobs were created; {} when there is no readable journal. Raises nothing."""
    try:
        if not inspect_journal(output):
            return {}
        conn = _ro(journal_path(output))
        try:
            rows = conn.execute(
                "SELECT id, status FROM batches WHERE merged = 0 AND id NOT LIKE ? AND status != 'failed' "
                "ORDER BY created_at",
                (UPLOAD_PREFIX + "%",),
            ).fetchall()
        finally:
            conn.close()
    except (QwenVLError, sqlite3.Error, OSError):
        return {}
    return {r["id"]: r["status"] for r in rows}


def count_answered(output: Path) -> int:
    """How many current items of ``output``'s journal hold an answer (status ``ok``): what ``--fresh`` deletes.
    0 when there is no journal, and when it cannot be read (a damaged one: ``--fresh`` is how to replace it)."""
    try:
        if not inspect_journal(output):
            return 0
        conn = _ro(journal_path(output))
        try:
            row = conn.execute("SELECT count(*) FROM items WHERE status = 'ok' AND seq IS NOT NULL").fetchone()
        finally:
            conn.close()
    except (QwenVLError, sqlite3.Error, OSError):
        return 0
    return int(row[0])


def _finished_rows(path: Path) -> Iterator[tuple[str, str, str]]:
    try:
        conn = _ro(path)
        try:
            for row in conn.execute("SELECT id, fingerprint, status FROM items WHERE status IS NOT NULL"):
                yield row["id"], row["fingerprint"], row["status"]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _io_error(path, exc) from None


def is_disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL from SQLite, ENOSPC (or EDQUOT, a quota) from the OS."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _io_error(path: Path, exc: BaseException) -> UsageError:
    if is_disk_full(exc):
        return UsageError(
            f"no space left on the device of {path}: stopped; every answer received is kept in the journal",
            hint="Free some space and run the same command again: only unfinished items are sent.",
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UsageError(
        f"cannot write {path}: {reason}",
        hint="What was committed before is kept: fix the cause and run the same command again.",
    )


class Journal:
    """The journal of one output file. ``open`` takes the output's lock (refusing one held by another run), with
    ``fresh=True`` then deletes the journal and the output, checks the journal (``inspect_journal``) and opens
    it. Every SQLite or OS error of a journal operation is raised as a one-line ``UsageError``."""

    def __init__(self, output: str | Path, *, fresh: bool = False) -> None:
        self.output = Path(output)
        self.path = journal_path(self.output)
        self.fresh = fresh
        self.write_error: UsageError | None = None  # the journal or output could not be written (e.g. a full disk):
        # the run sends nothing more, and keeps committing the answers in flight
        self._conn: sqlite3.Connection | None = None
        self._lock: FileLock | None = None
        self._queue: queue.SimpleQueue[Any] | None = None
        self._writer: threading.Thread | None = None
        self._reserve: Path | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the journal is not open")
        return self._conn

    def open(self) -> Journal:
        self._lock = take_lock(self.output)
        try:
            if self.fresh:
                for path in (*_sidecars(self.path), self.output):
                    try:
                        path.unlink(missing_ok=True)
                    except OSError as exc:
                        raise UsageError(
                            f"cannot delete {path}: {exc.strerror or exc}",
                            hint=write_failure_hint(exc, "write elsewhere (-o)"),
                        ) from None
            inspect_journal(self.output)
            with self._io():
                self._conn = connect(self.path, MIGRATIONS, check_same_thread=False)  # the writer thread uses it
                me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
                self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('owner', ?)", (json.dumps(me),))
            for stale in self.output.parent.glob(f".{self.output.name}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        with contextlib.suppress(BaseException):
            self.stop_writer()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("DELETE FROM meta WHERE key = 'owner'")
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        self._release_reserve()
        if self._lock is not None:
            release_lock(self._lock)
            self._lock = None

    def __enter__(self) -> Journal:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _io(self, path: Path | None = None) -> Iterator[None]:
        """SQLite and OS errors as one-line UsageErrors naming the file (disk full: the run stops)."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise _io_error(path or self.path, exc) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL, I/O errors)
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def set_meta(self, key: str, value: Any) -> None:
        """Record a JSON value in the ``meta`` table (read back by ``read_meta``)."""
        with self._io():
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # --- items -----------------------------------------------------------------------------------
    def register(self, entries: Iterable[tuple[str, str, str | None, str | None]]) -> None:
        """Make (id, fingerprint, legacy0, legacy1) entries, in input order, the current items; a changed
        fingerprint makes an item pending again. A row an earlier version wrote under one of the item's legacy
        fingerprints (``legacy_fingerprints``: the same fields asked) keeps its answer and takes the new one."""
        with self._io(), self._transaction():
            c = self.conn
            c.execute("UPDATE items SET seq = NULL WHERE seq IS NOT NULL")
            legacy = c.execute(
                "SELECT 1 FROM items WHERE substr(fingerprint, 1, ?) != ? LIMIT 1",
                (len(FINGERPRINT_PREFIX), FINGERPRINT_PREFIX),
            ).fetchone()
            numbered = enumerate(entries)
            while chunk := list(itertools.islice(numbered, REGISTER_CHUNK)):
                if legacy:
                    c.executemany(
                        "UPDATE items SET fingerprint = ? WHERE id = ? AND fingerprint IN (?, ?)",
                        ((fp, item_id, old0, old1) for _, (item_id, fp, old0, old1) in chunk if old0 or old1),
                    )
                c.executemany(
                    """
                    INSERT INTO items (id, seq, fingerprint) VALUES (?, ?, ?)
                    ON CONFLICT (id) DO UPDATE SET seq = excluded.seq,
                        status = CASE WHEN items.fingerprint = excluded.fingerprint THEN items.status END,
                        line = CASE WHEN items.fingerprint = excluded.fingerprint THEN items.line END,
                        batch_id = CASE WHEN items.fingerprint = excluded.fingerprint THEN items.batch_id END,
                        cost = CASE WHEN items.fingerprint = excluded.fingerprint THEN items.cost END,
                        fingerprint = excluded.fingerprint""",
                    ((item_id, seq, fp) for seq, (item_id, fp, _, _) in chunk),
                )

    def pending_seqs(self) -> Iterator[int]:
        """The seqs (input positions) of the current items not finished (never sent, in flight when a run
        stopped, or in a Batch API job), read as iterated."""
        cur = self.conn.execute(
            "SELECT seq FROM items WHERE seq IS NOT NULL AND (status IS NULL OR status NOT IN ('ok', 'error'))"
        )
        for (seq,) in cur:
            yield seq

    def retry_errors(self) -> int:
        """Forget the errors of current items, so that they are sent again. Returns how many."""
        with self._io():
            cur = self.conn.execute(
                "UPDATE items SET status = NULL, line = NULL WHERE status = 'error' AND seq IS NOT NULL"
            )
        return cur.rowcount

    def finish(
        self,
        item_id: str,
        status: str,
        line: str,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost: float | None = None,
        cached: bool = False,
    ) -> Future[None]:
        """Record a finished item. Without the writer it is committed before returning (errors raised); while
        the writer runs it is queued, and the future returned is done once the row is committed (or holds the
        UsageError saying why it could not be). Wait for it before releasing the request's slot."""
        row = (status, line, input_tokens, output_tokens, cost, int(cached), time.time(), item_id)
        done: Future[None] = Future()
        if self._queue is not None:
            self._queue.put((row, done))
            return done
        with self._io():
            self.conn.execute(_FINISH, row)
        done.set_result(None)
        return done

    # --- the writer thread (realtime runs) ---------------------------------------------------------
    def start_writer(self, csv_path: Path | None, flush_interval_s: float, slots: int = 1) -> None:
        """From now on ``finish`` only queues: a thread commits what is queued, everything waiting in one
        transaction (group commit: a commit costs tens of microseconds, so waiting for it costs the caller
        little, and the event loop never waits on the disk), and rewrites the outputs every ``flush_interval_s``
        (more rarely when that takes long). First it sets aside the reserve for ``slots`` answers in flight
        (``RESERVE_PER_SLOT`` each): a disk without that much room is refused here, before anything is sent."""
        size = min(RESERVE_MAX, max(RESERVE_MIN, slots * RESERVE_PER_SLOT))
        self._reserve = self.path.with_name(self.path.name + RESERVE_SUFFIX)
        try:
            _allocate(self._reserve, size)
        except OSError as exc:
            if is_disk_full(exc):
                raise UsageError(
                    f"not enough free space beside {self.path} to run: {size // 2**20} MB are kept "
                    f"for the answers in flight ({RESERVE_PER_SLOT // 1024} kB per request)",
                    hint="Free some space, lower --concurrency, or write the output elsewhere.",
                ) from None
            raise _io_error(self._reserve, exc) from None
        self._queue = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._write_loop, args=(csv_path, flush_interval_s), name="qwenvl-journal", daemon=True
        )
        self._writer.start()

    def stop_writer(self) -> None:
        """Commit everything queued and stop the thread (errors are in the futures and in ``write_error``)."""
        if self._queue is None or self._writer is None:
            return
        self._queue.put(_STOP)
        self._writer.join()
        self._queue = self._writer = None

    def _release_reserve(self) -> bool:
        """Delete the reserve file (True if there was one to free)."""
        if self._reserve is None:
            return False
        path, self._reserve = self._reserve, None
        try:
            path.unlink()
        except OSError:
            return False
        return True

    def _commit(self, rows: list[tuple]) -> BaseException | None:
        """Commit finished rows, or return the UsageError saying why they could not be; either way a failure
        sets ``write_error``. On a full disk the reserve is freed and the commit tried once more with its room."""
        for attempt in (1, 2):
            try:
                with self._transaction():
                    self.conn.executemany(_FINISH, rows)
                return None
            except (sqlite3.Error, OSError) as exc:
                error = _io_error(self.path, exc)
                self.write_error = self.write_error or error
                if attempt == 2 or not is_disk_full(exc) or not self._release_reserve():
                    return error
        return None  # pragma: no cover - the loop returns

    def _write_loop(self, csv_path: Path | None, interval: float) -> None:
        assert self._queue is not None
        q, last_flush, every = self._queue, time.monotonic(), interval
        while True:
            got = [q.get()]
            while len(got) < WRITER_BATCH:
                try:
                    got.append(q.get_nowait())
                except queue.Empty:
                    break
            stop = got[-1] is _STOP
            entries = [e for e in got if e is not _STOP]
            if entries:
                try:
                    error = self._commit([row for row, _ in entries])
                except BaseException as exc:  # a bug: the waiting workers must hear of it, not hang
                    error = exc
                for _, done in entries:
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
            if stop:
                return
            if self.write_error is None and time.monotonic() - last_flush >= every:
                started = time.monotonic()
                try:
                    self.write_outputs(csv_path)
                except UsageError as exc:  # e.g. no room for the new output: stop sending; the journal has it all
                    self.write_error = exc
                except Exception as exc:  # a bug: stop sending rather than let the thread die unheard
                    self.write_error = UsageError(f"cannot write {self.output}: {type(exc).__name__}: {exc}")
                last_flush = time.monotonic()
                every = max(interval, 20 * (last_flush - started))  # writing stays under 5% of the time

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

    def count_set_aside(self) -> int:
        """Answers (``ok``) of items that are not current (an earlier run's input had them, this one has not): kept
        here, not written to the output."""
        with self._io():
            row = self.conn.execute("SELECT count(*) FROM items WHERE seq IS NULL AND status = 'ok'").fetchone()
        return int(row[0])

    def count_errors(self, types: Iterable[str]) -> int:
        """How many current items ended in an error of one of these types (the output line's ``error.type``)."""
        return int(self._errors_of("count(*)", types, "")[0])

    def first_error(self, types: Iterable[str]) -> str | None:
        """The message of the first current item (in input order) that ended in an error of one of these types."""
        row = self._errors_of("json_extract(line, '$.error.message')", types, "ORDER BY seq LIMIT 1")
        return None if row is None or row[0] is None else str(row[0])

    def _errors_of(self, what: str, types: Iterable[str], tail: str) -> Any:
        """``SELECT what`` over the current items that ended in an error of one of ``types``: the first row."""
        names = list(types)
        marks = ",".join("?" * len(names))
        with self._io():
            return self.conn.execute(
                f"SELECT {what} FROM items WHERE seq IS NOT NULL AND status = 'error' "
                f"AND json_extract(line, '$.error.type') IN ({marks}) {tail}",
                names,
            ).fetchone()

    # --- Batch API jobs --------------------------------------------------------------------------
    def add_batch(
        self, batch_id: str, input_file_id: str, model: str, item_ids: Iterable[str], status: str = "submitted"
    ) -> None:
        """Record a job (or, ``status="uploaded"``, an input file: ``add_upload``) and make its items (read as
        iterated) 'submitted' in it, in one transaction."""
        with self._io(), self._transaction():
            self.conn.execute(
                "INSERT INTO batches (id, input_file_id, model, status, created_at) VALUES (?, ?, ?, ?, ?)",
                (batch_id, input_file_id, model, status, time.time()),
            )
            self.conn.executemany(
                "UPDATE items SET status = 'submitted', batch_id = ? WHERE id = ?", ((batch_id, i) for i in item_ids)
            )

    def add_upload(self, input_file_id: str, model: str, item_ids: Iterable[str]) -> str:
        """Record an uploaded input file before its job is created (so that a run stopped between the two finds
        the job by its file instead of creating, and paying for, a second one). Its items are 'submitted' under
        the placeholder job id returned (``UPLOAD_PREFIX`` + the file id) until ``attach_job``."""
        placeholder = UPLOAD_PREFIX + input_file_id
        self.add_batch(placeholder, input_file_id, model, item_ids, status="uploaded")
        return placeholder

    def attach_job(self, placeholder: str, batch_id: str) -> None:
        """The job created for an upload recorded by ``add_upload``: it takes the placeholder's place."""
        with self._io(), self._transaction():
            self.conn.execute("UPDATE batches SET id = ?, status = 'submitted' WHERE id = ?", (batch_id, placeholder))
            self.conn.execute("UPDATE items SET batch_id = ? WHERE batch_id = ?", (batch_id, placeholder))

    def release_items(self, item_ids: Iterable[str]) -> None:
        """Items of a job that were not run (it expired, was cancelled, or its input file is gone): pending
        again, for the next run to submit."""
        with self._io(), self._transaction():
            self.conn.executemany(
                "UPDATE items SET status = NULL, batch_id = NULL WHERE id = ? AND status = 'submitted'",
                ((i,) for i in item_ids),
            )

    def open_batches(self) -> list[dict[str, Any]]:
        """Submitted jobs that still have unfinished current items."""
        rows = self.conn.execute("""
            SELECT b.id, b.input_file_id, b.model, b.status, count(i.id) AS items FROM batches b
            JOIN items i ON i.batch_id = b.id AND i.status = 'submitted' AND i.seq IS NOT NULL
            WHERE b.merged = 0 GROUP BY b.id ORDER BY b.created_at""").fetchall()
        return [dict(r) for r in rows]

    def count_batch_items(self, batch_id: str) -> int:
        """How many items wait in the job (or upload) ``batch_id``: 'submitted' in it."""
        with self._io():
            row = self.conn.execute(
                "SELECT count(*) FROM items WHERE batch_id = ? AND status = 'submitted'", (batch_id,)
            ).fetchone()
        return int(row[0])

    def batch_item_ids(self, batch_id: str) -> Iterator[str]:
        """The ids of the items waiting in ``batch_id`` (``count_batch_items``), read ``REGISTER_CHUNK`` at a time
        by their id (nothing is kept per item), each chunk by its own query: the caller may record them meanwhile
        (an item that leaves the job is not met again)."""
        last = ""
        while True:
            with self._io():
                rows = self.conn.execute(
                    "SELECT id FROM items WHERE id > ? AND batch_id = ? AND status = 'submitted' ORDER BY id LIMIT ?",
                    (last, batch_id, REGISTER_CHUNK),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for (item_id,) in rows:
                yield item_id

    def in_batch(self, item_id: str, batch_id: str) -> bool:
        """Whether the item waits in the job ``batch_id`` (a result line for it is to be recorded)."""
        with self._io():
            row = self.conn.execute(
                "SELECT 1 FROM items WHERE id = ? AND batch_id = ? AND status = 'submitted'", (item_id, batch_id)
            ).fetchone()
        return row is not None

    def in_open_batch(self, item_id: str) -> bool:
        """Whether the item waits in a job (or upload) not merged yet (``open_batches``): not to be submitted again."""
        with self._io():
            row = self.conn.execute(
                "SELECT 1 FROM items i JOIN batches b ON b.id = i.batch_id WHERE i.id = ? AND i.status = 'submitted' "
                "AND i.seq IS NOT NULL AND b.merged = 0",
                (item_id,),
            ).fetchone()
        return row is not None

    def release_batch(self, batch_id: str) -> int:
        """The items still waiting in ``batch_id`` (``release_items``: pending again). Returns how many."""
        with self._io():
            cur = self.conn.execute(
                "UPDATE items SET status = NULL, batch_id = NULL WHERE batch_id = ? AND status = 'submitted'",
                (batch_id,),
            )
        return cur.rowcount

    def set_batch_status(self, batch_id: str, status: str, *, merged: bool = False) -> None:
        with self._io():
            self.conn.execute("UPDATE batches SET status = ?, merged = ? WHERE id = ?", (status, int(merged), batch_id))

    # --- outputs ---------------------------------------------------------------------------------
    def lines(self) -> Iterator[str]:
        """The finished items' output lines, in input order."""
        cur = self.conn.execute(
            "SELECT line FROM items WHERE seq IS NOT NULL AND status IN ('ok', 'error') ORDER BY seq"
        )
        for (line,) in cur:
            yield line

    def write_outputs(self, csv_path: Path | None = None) -> None:
        """Rewrite the output (and the CSV) from the journal, atomically; errors as one-line UsageErrors."""
        with self._io(self.output):
            write_atomic(self.output, (line + "\n" for line in self.lines()))
        record_output(self.output)  # qwenvl's own: a later run may replace it (qwenvl.outputs.check_outputs)
        if csv_path is not None:
            with self._io(csv_path):
                write_atomic(csv_path, csv_rows(self.lines()))
            record_output(csv_path)


def _allocate(path: Path, size: int) -> None:
    """A file of ``size`` bytes whose blocks are allocated (posix_fallocate, else written zeros)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
                    raise
        chunk = b"\0" * (1 << 20)
        os.lseek(fd, 0, os.SEEK_SET)
        for offset in range(0, size, len(chunk)):
            os.write(fd, chunk[: size - offset])
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        fd = -1
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    finally:
        if fd != -1:
            os.close(fd)


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
        "id": rec.get("id"),
        "input": inp if isinstance(inp, str) or inp is None else json.dumps(inp),
        "status": rec.get("status"),
        "text": result.get("text"),
        "json": json.dumps(result["json"], ensure_ascii=False) if result.get("json") is not None else None,
        "error_type": error.get("type"),
        "error_message": error.get("message"),
        "model": result.get("model"),
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "image_tokens": usage.get("image_tokens"),
        "cost": LOCAL if rec.get("local") else rec.get("cost"),  # a local model has no price: "local", not 0
        "cached": rec.get("cached"),
        "request_id": result.get("request_id") or error.get("request_id"),
    }
    return ["" if values[c] is None else values[c] for c in CSV_COLUMNS]
