"""Files qwenvl writes on a user's behalf: the check of an output path before anything is paid for
(``check_writable``: can it be written; ``check_outputs``: may it be, beside the command's inputs and other
outputs), and the one atomic write (a file is complete or absent, never half-written).

Used by every verb that takes an output file (``ocr -o``, ``ground --out``, ``events --sheet``, ``extract
--csv``, ``analyze --output``, ``batch -o``/``--csv``), the MCP server's drawings, the batch outputs and the
chat sessions.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from qwenvl.errors import UsageError


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
    """The local files among references (paths, ``file://`` URLs); URLs, ``data:`` URLs, ``-`` and None left
    out."""
    from qwenvl.media.sources import classify

    items = [refs] if refs is None or isinstance(refs, (str, os.PathLike)) else list(refs)
    for ref in items:
        if ref is None:
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


def check_outputs(
    outputs: Mapping[str, str | os.PathLike[str] | None],
    *,
    inputs: Mapping[str, Refs] | None = None,
    pictures: Collection[str] = (),
) -> dict[str, Path]:
    """The one rule for a command's output files, run before anything is sent or paid for: each output given
    (``outputs``: the option as the user names it, e.g. ``"-o/--output"``, to the file; None: not given) must be
    writable (``check_writable``), and UsageError (exit 2, one line naming the option and the file) is raised for
    an output that is the same file as one of the command's ``inputs`` (what reads it, e.g. ``"IMAGE"`` or
    ``"--schema"``, to its references: paths, ``file://`` URLs; remote URLs, ``data:`` URLs and ``-`` are
    skipped; compared by inode, so a hard link or a symlink counts), for two outputs that name the same file,
    and for an output that is not a picture (every option not in ``pictures``: JSON, CSV, Markdown, text) over
    an existing file whose bytes are media (``media.sources.held_media``: an image, a video, a PDF), which the
    write would destroy. An output that holds what the command wrote before is replaced: a re-run works.
    Returns the checked paths (``~`` expanded) by option, for the outputs given."""
    from qwenvl.media.sources import held_media

    checked: dict[str, Path] = {}
    for option, target in outputs.items():
        if target is None:
            continue
        path = check_writable(os.fspath(target))
        for what, refs in (inputs or {}).items():
            if any(_same_file(path, source) for source in _local_paths(refs)):
                raise UsageError(
                    f"{option} {path} is also an input of this command ({what}): writing it would destroy it",
                    hint=f"Give {option} a new file name (nothing was sent).",
                )
        for other, taken in checked.items():
            if _same_file(path, taken):
                raise UsageError(
                    f"{option} {path} is also the file of {other}: two outputs cannot share one file",
                    hint=f"Give {option} and {other} a file each (nothing was sent).",
                )
        if option not in pictures and path.exists():
            held = held_media(path)
            if held is not None:
                raise UsageError(
                    f"{option} {path} holds {held}: writing this output there would destroy it",
                    hint=f"Give {option} a new file name (nothing was sent).",
                )
        checked[option] = path
    return checked


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
