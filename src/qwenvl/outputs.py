"""Files qwenvl writes on a user's behalf: the check of an output path before anything is paid for
(``check_writable``: can it be written; ``check_outputs``: may it be, beside the command's inputs and other
outputs), the one atomic write (a file is complete or absent, never half-written), and the record of the files
qwenvl wrote (``record_output``, ``written_by_qwenvl``), by which an output replaces only qwenvl's own earlier
output unless the user says so.

**qwenvl's own earlier output.** Each time qwenvl writes an output file (``record_output``: every verb's, the
library's ``annotate`` and ``contact_sheet``, a batch's output and CSV) it records the file's identity (its resolved
path, device and inode) and its state (size in bytes and modification time in nanoseconds) in ``outputs.db``, an
SQLite file in qwenvl's data folder (``$QWENVL_HOME``). A file is qwenvl's own while all of them still match: a
re-run (or a later run writing to an earlier one's complete output) writes it
again; a file edited since (its size or time changed), copied, or never written by qwenvl is the user's, and is
replaced only with ``--force`` (``overwrite=True`` in the library). So is qwenvl's own output of a run that
stopped part-way (``record_output(..., partial=ADVICE)``: an OCR's pages read so far, an extract's CSV rows, paid
for): the refusal gives the writer's advice on keeping them (e.g. append the rest, or ``--resume``). An empty
file holds nothing to lose and may be written.

Used by every verb that takes an output file (``ocr -o``, ``ground --out``, ``events --sheet``, ``extract
--csv``, ``analyze --output``, ``batch -o``/``--csv``), the MCP server's drawings, the batch outputs and the
chat sessions.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import sqlite3
import stat
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from qwenvl.errors import UsageError

log = logging.getLogger(__name__)
LEDGER_FILENAME = "outputs.db"  # in qwenvl's data folder: the files qwenvl wrote (``record_output``)


def write_failure_hint(exc: OSError, elsewhere: str = "write elsewhere") -> str:
    """The hint for a file or folder that could not be written, by the error's cause (``errno``): a missing
    folder, permissions, a read-only or full file system; ``elsewhere`` says how to write elsewhere on the verb
    (e.g. "give another file with -o"). Raises nothing."""
    reasons = {
        errno.ENOENT: "The folder does not exist: create it first, or ",
        errno.ENOTDIR: "A file stands where a folder is needed: check the path, or ",
        errno.EACCES: "Check the folder's permissions, or ",
        errno.EPERM: "Check the folder's permissions, or ",
        errno.EROFS: "That file system is read-only: ",
        errno.ENOSPC: "The disk is full: free some space, or ",
        errno.EDQUOT: "The disk quota is used up: free some space, or ",
    }
    if exc.errno == errno.ENOENT and isinstance(exc.filename, (str, bytes)):
        folder = Path(os.fsdecode(exc.filename)).expanduser().parent
        if folder.is_dir():  # procfs and sysfs answer ENOENT for a name they will not create
            return f"{folder} exists but takes no new files (a virtual file system, such as /proc): " + elsewhere + "."
    return reasons.get(exc.errno or 0, "Check the path, or ") + elsewhere + "."


def check_writable(target: str | Path) -> Path:
    """``target`` (``~`` expanded) when it is, or can become, a regular file in a folder where files can be
    created; missing folders are created. Raises UsageError (exit 2), before anything is sent or paid for,
    for: a folder; an existing file that is not regular (a device such as ``/dev/null``, which an atomic
    write would replace, or a FIFO, whose write would wait for a reader for ever); a parent that is a file or
    cannot be created; a folder that refuses new files (read-only, permissions, ``/proc``). The last is tried
    with a probe file, created and deleted, since access(2) says yes to root even where writing fails."""
    path = Path(target).expanduser()
    if path.is_dir():
        raise UsageError(
            f"{path} is a directory; give a file name for the output",
            hint=f"Name a file inside it ({path}/NAME).",
        )
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise UsageError(
            f"{path} is not a regular file (a device, pipe or socket); give a file name for the output",
            hint="Name a regular file for the output, or leave the option out (nothing is then written).",
        )
    parent = path.parent
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(
                    f"cannot write {path}: {folder} is a file, not a folder",
                    hint="Check the path: a file stands where a folder is needed.",
                )
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the folder {parent}: {exc.strerror or exc}",
            hint=write_failure_hint(exc),
        ) from None
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot write {path}: cannot create files in {parent} ({exc.strerror or exc})",
            hint=write_failure_hint(exc),
        ) from None
    return path


Refs = str | os.PathLike[str] | None | Iterable[str | os.PathLike[str] | None]


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same inode when both exist (hard links, symlinks, ``./x`` and
    ``x``), else the same absolute path once resolved. Raises nothing."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, ValueError, RuntimeError):
        return False


def _local_paths(refs: Refs) -> Iterable[Path]:
    """The local files among references (paths, ``file://`` URLs) that exist; URLs, ``data:`` URLs, ``-``, None
    and references that cannot be classified (a missing file: its reader reports it) left out."""
    from qwenvl.media.sources import classify

    if isinstance(refs, (str, os.PathLike)):
        items: Iterable[Any] = [refs]
    elif isinstance(refs, (list, tuple, set, frozenset)) or (
        isinstance(refs, Iterable) and not isinstance(refs, (bytes, bytearray, Mapping))
    ):
        items = refs
    else:  # None, bytes, a picture in memory: no file
        items = ()
    for ref in items:
        if not isinstance(ref, (str, os.PathLike)):
            continue
        text = os.fspath(ref)
        if not text or text == "-":
            continue
        try:
            source = classify(text)
        except Exception:  # a reference that cannot be classified is its reader's to report
            continue
        if source.kind == "file" and source.path is not None:
            yield Path(source.path)


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, symlinks followed; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


class OutputFiles:
    """A command's output files, to refuse inputs that are one of them (the same inode: a hard link, a symlink,
    ``./x`` and ``x`` count). Made once, then ``refuse`` is called for each input as it is met, so that a
    stream of inputs (a batch's items, read lazily) is checked without being kept: one ``stat`` per local
    reference. An output that does not exist yet cannot be an input that does (``_local_paths`` keeps existing
    files only)."""

    def __init__(self, outputs: Mapping[str, str | os.PathLike[str] | None]) -> None:
        """``outputs``: the option as the user names it (e.g. ``"-o/--output"``) to its file (None: not given)."""
        self._ids: dict[tuple[int, int], tuple[str, Path]] = {}
        for option, target in outputs.items():
            if target is None:
                continue
            path = Path(os.fspath(target)).expanduser()
            key = _file_id(path)
            if key is not None:
                self._ids.setdefault(key, (option, path))

    def refuse(self, what: str, refs: Refs) -> None:
        """Raise UsageError (exit 2, before anything is written) when a local file among ``refs`` (paths,
        ``file://`` URLs; remote URLs, ``data:`` URLs, ``-`` and missing files are skipped) is one of the outputs;
        ``what`` names the input's place in the user's words ("--schema", "requests.jsonl line 3: image")."""
        if not self._ids:
            return
        for source in _local_paths(refs):
            hit = self._ids.get(_file_id(source) or (-1, -1))
            if hit is not None:
                option, path = hit
                raise UsageError(
                    f"{option} {path} is also an input of this command ({what}): writing it would destroy it",
                    hint=f"Give {option} a new file name (nothing was sent or written).",
                )


def held_data(path: Path) -> str | None:
    """What data an existing file holds that no text output may replace, by its bytes and its neighbour:
    ``"an SQLite database"`` (the magic ``SQLite format 3\\0``, https://sqlite.org/fileformat.html: qwenvl's usage
    log, cache and batch journals among them), ``"the output of a qwenvl batch"`` (a file with its journal,
    ``NAME.journal``, beside it: its answers are paid for). None otherwise, or when it cannot be read. Raises
    nothing."""
    from qwenvl.batch.journal import SQLITE_MAGIC, journal_path

    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError:
        return None
    if head == SQLITE_MAGIC:
        return "an SQLite database"
    with contextlib.suppress(OSError, ValueError):
        if journal_path(path).is_file():
            return f"the output of a qwenvl batch (its journal {journal_path(path).name} is beside it)"
    return None


def check_outputs(
    outputs: Mapping[str, str | os.PathLike[str] | None],
    *,
    inputs: Mapping[str, Refs] | None = None,
    pictures: Collection[str] = (),
    resumed: Collection[str] = (),
    force: bool = False,
    force_flag: str | None = "--force",
) -> dict[str, Path]:
    """The one rule for a command's output files, run before anything is sent or paid for: each output given
    (``outputs``: the option as the user names it, e.g. ``"-o/--output"``, to the file; None: not given) must be
    writable (``check_writable``), and UsageError (exit 2, one line naming the option and the file) is raised for
    an output that is the same file as one of the command's ``inputs`` (what reads it, e.g. ``"IMAGE"`` or
    ``"--schema"``, to its references: ``OutputFiles.refuse``; inputs met later, such as a batch's items, are
    checked with ``OutputFiles`` as they come), for two outputs that name the same file, for an output over an
    existing file holding data no output may replace (``held_data``: an SQLite database such as the usage log or
    a batch journal; a batch's output with its journal, except for the options in ``resumed``: the batch's own
    output, which it resumes), and for an output that is not a picture (every option not in ``pictures``: JSON,
    CSV, Markdown, text) over an existing file whose bytes are media (``media.sources.held_media``: an image, a
    video, a PDF), which the write would destroy, and, unless ``force`` (the user's ``force_flag``, ``--force``;
    ``overwrite=True`` in the library), for an output over an existing, non-empty file qwenvl did not write
    (``written_by_qwenvl``: the options in ``resumed`` left to their own rule; the hint offers ``force_flag``
    unless it is None, for a command whose consent is not the user's to be advised: a batch's ``--fresh``, which
    also starts the batch over). An output that holds what qwenvl
    wrote before, unchanged since, is replaced: a re-run works. The inputs, the databases and a text output over
    media are refused even with ``force``. Returns the checked paths (``~`` expanded) by option, for the outputs
    given."""
    from qwenvl.media.sources import held_media

    checked: dict[str, Path] = {}
    for option, target in outputs.items():
        if target is None:
            continue
        path = check_writable(os.fspath(target))
        files = OutputFiles({option: path})
        for what, refs in (inputs or {}).items():
            files.refuse(what, refs)
        for other, taken in checked.items():
            if _same_file(path, taken):
                raise UsageError(
                    f"{option} {path} is also the file of {other}: two outputs cannot share one file",
                    hint=f"Give {option} and {other} a file each (nothing was sent).",
                )
        if path.exists():
            held = held_data(path)
            if held is not None and not (option in resumed and held.startswith("the output")):
                raise UsageError(
                    f"{option} {path} holds {held}: writing this output there would destroy it",
                    hint=f"Give {option} a new file name (nothing was sent).",
                )
        if option not in pictures and path.exists():
            held = held_media(path)
            if held is not None:
                raise UsageError(
                    f"{option} {path} holds {held}: writing this output there would destroy it",
                    hint=f"Give {option} a new file name (nothing was sent).",
                )
        kept = _held_by_user(path) if not force and option not in resumed else None
        if kept is not None:
            words, advice = kept
            hint = f"Give {option} a new file name (nothing was sent), or pass {force_flag} to replace it."
            if advice:  # the writer's own way to keep what the file holds (``record_output(partial=...)``)
                hint = f"{advice[:1].upper()}{advice[1:]}; or pass {force_flag} to replace it (nothing was sent)."
            raise UsageError(
                f"{option} {path} {words}: writing this output there would replace it",
                hint=hint
                if force_flag
                else f"Give {option} a new file name, or move {path.name} aside (nothing was sent).",
            )
        checked[option] = path
    return checked


def _held_by_user(path: Path) -> tuple[str, str | None] | None:
    """What an existing, non-empty regular file holds that an output may replace only when the user says so, in
    words for the error, with the writer's advice on keeping it (or None): ``"exists and was not written by
    qwenvl"``, ``"was changed since qwenvl wrote it"`` (the ledger has the path, not this state), or ``"holds what a
    run that stopped had read"`` (qwenvl's own output recorded ``partial``, with its advice: an OCR's pages, an
    extract's rows). None for
    anything else (missing, empty, not regular, qwenvl's own complete output). Raises nothing."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return None
    row = _ledger_row(path)
    if row is None:
        return "exists and was not written by qwenvl", None
    state, partial = row
    if state != _identity(path):
        return "was changed since qwenvl wrote it", None
    return ("holds what a run that stopped had read, paid for", partial) if partial else None


def _ledger_path() -> Path:
    from qwenvl.sessions import home

    return home() / LEDGER_FILENAME


def _m001_written(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE written (path TEXT PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL, "
        "size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, at REAL NOT NULL)"
    )


def _m002_partial(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE written ADD COLUMN partial TEXT")  # NULL: complete; else how to keep its pages


def _ledger() -> sqlite3.Connection:
    from qwenvl.store.db import connect

    return connect(_ledger_path(), [_m001_written, _m002_partial])


def _identity(path: Path) -> tuple[str, tuple[int, int, int, int]] | None:
    """(resolved path, (device, inode, size, mtime_ns)) of an existing file; None when it cannot be stat'ed."""
    try:
        resolved = Path(path).expanduser().resolve()
        st = os.stat(resolved)
    except (OSError, ValueError, RuntimeError):
        return None
    return str(resolved), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def record_output(path: str | os.PathLike[str], *, partial: str | None = None) -> None:
    """Record that qwenvl has just written the output file ``path`` (its identity and state, in
    ``outputs.db`` in qwenvl's data folder), so that a later run may replace it (``check_outputs``). Called by
    every writer after each write. ``partial``: the file holds part of a run that stopped (or is still going),
    paid for, such as an OCR's pages so far; the text is the writer's advice on keeping it (e.g. "append the
    rest instead: ..."), and a later run replaces it only with ``--force`` (``check_outputs`` says the advice).
    A record that cannot be made (a read-only data folder) is said as a warning: the next run then asks for
    ``--force``. Raises nothing."""
    ident = _identity(Path(os.fspath(path)))
    if ident is None:
        return
    key, (dev, ino, size, mtime_ns) = ident
    try:
        conn = _ledger()
        try:
            conn.execute(
                "INSERT OR REPLACE INTO written (path, dev, ino, size, mtime_ns, at, partial) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, dev, ino, size, mtime_ns, time.time(), partial),
            )
        finally:
            conn.close()
    except (sqlite3.Error, OSError) as exc:
        log.warning(
            "could not record %s as qwenvl's output in %s (%s): a later run asks for --force to replace it",
            path,
            _ledger_path(),
            exc,
        )


def written_by_qwenvl(path: str | os.PathLike[str]) -> bool:
    """Whether the existing file ``path`` is qwenvl's own earlier output, unchanged since: its resolved path,
    device, inode, size and modification time (ns) as ``record_output`` recorded them. False for any other file,
    and when the record cannot be read. Raises nothing."""
    row = _ledger_row(Path(os.fspath(path)))
    return row is not None and row[0] == _identity(Path(os.fspath(path)))


def _ledger_row(path: Path) -> tuple[tuple[str, tuple[int, int, int, int]], str | None] | None:
    """The ledger's record of the existing file ``path``: ((resolved path, its recorded (device, inode, size,
    mtime_ns)), the ``partial`` advice or None); None when the path is not recorded, missing, or the ledger
    cannot be read. Raises nothing."""
    ident = _identity(path)
    if ident is None or not _ledger_path().is_file():
        return None
    key = ident[0]
    try:
        conn = _ledger()
        try:
            row = conn.execute(
                "SELECT dev, ino, size, mtime_ns, partial FROM written WHERE path = ?", (key,)
            ).fetchone()
        finally:
            conn.close()
    except (sqlite3.Error, OSError):
        return None
    if row is None:
        return None
    return (key, (row[0], row[1], row[2], row[3])), row[4]


def write_atomic(path: Path, chunks: Iterable[str], *, mode: int = 0o666) -> None:
    """Write UTF-8 text (``chunks`` joined, newlines as given) so that ``path`` is complete or absent: a temp
    file ``.{name}.{pid}.{random}.tmp`` beside it (created with ``mode``, less the umask), fsynced, moved over
    ``path`` with ``os.replace``, then the folder fsynced so the move itself survives a power cut. On any
    error the temp file is deleted and the error (OSError) raised; ``path`` is untouched."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """fsync a folder (the entry of a file just moved in); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a folder (EINVAL)
            os.fsync(fd)
    finally:
        os.close(fd)
