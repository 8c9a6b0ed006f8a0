"""What a batch is made of: items from files, folders and globs, or from a requests file (JSONL).

Nothing here reads more than a file's first bytes: media are checked and prepared per item by
``Client.plan`` when the batch runs, so a bad file becomes that item's error, not the batch's.
"""

from __future__ import annotations

import contextlib
import glob
import io
import itertools
import json
import os
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from qwenvl._constants import MAX_TEXT_FILE_BYTES
from qwenvl.client import make_request
from qwenvl.errors import MediaError, QwenVLError, UsageError, empty_argument
from qwenvl.media.sources import MEDIA_SUFFIXES, Source, check_regular, media_kind, not_applied, open_regular
from qwenvl.types import DuplicateKeyError, loads

_GLOB_CHARS = frozenset("*?[")


@dataclass
class BatchItem:
    """One question of a batch: a unique ``id``, the Request fields, and what to show as its input."""

    id: str
    request: dict[str, Any]
    input: Any = None
    line: int | None = field(default=None, repr=False)  # line in the requests file, for messages
    source: str | None = field(default=None, repr=False)  # the requests file's name, for messages
    # the Request fields its line gave itself (no flag overrode them): an error's hint names them as the line does
    own: frozenset[str] = field(default=frozenset(), repr=False)


E = TypeVar("E", bound=BaseException)


def in_line_words(item: BatchItem, exc: E) -> E:
    """``exc``, an item's error before sending, with its hint naming each field that the item's requests-file line
    gave itself (``BatchItem.own``) as the line's key, not the flag that did not set it: "Give model
    qwen3-vl-plus" for a misspelt ``"model"`` of the line, "Give max_tokens of at most ..." (as ``analyze`` names
    the keys its user wrote: ``wording``); other flags are kept. Every item's plan error goes through it (the
    run, its estimate, the Batch API's lines). Returns ``exc`` (its ``raw_hint`` changed); raises nothing."""
    return _in_keys(item.own, exc)


def _in_keys(own: frozenset[str], exc: E) -> E:
    """``exc`` with its hint naming each field in ``own`` (the keys a requests-file line gave itself) as the
    line's key, not its flag (``in_line_words``; a line refused before it is an item too). Raises nothing."""
    hint = exc.raw_hint if isinstance(exc, QwenVLError) else None
    if not own or not hint or not isinstance(exc, QwenVLError):
        return exc
    from qwenvl.wording import FLAG, Surface, field_of, fit_hint

    def name(flag: str) -> str:
        return field_of(flag) if field_of(flag) in own else flag

    def pair(flag: str, other: str) -> str:
        return other if field_of(flag) in own else f"{flag} / {other}"

    def quoted(flag: str, value: str) -> str | None:  # '--prompt "..."' -> '"prompt": "..."', as the line writes it
        return f'"{field_of(flag)}": {value}' if field_of(flag) in own else None

    surface = Surface(name=name, pair=pair, quoted=quoted, keeps=set(FLAG.findall(hint)))
    exc.hint = fit_hint(hint, surface) or hint
    return exc


def _is_media_file(path: Path) -> bool:
    """A folder walk's pick: a media file by its name, or by its bytes (a video or PDF named otherwise)."""
    return path.suffix.lower() in MEDIA_SUFFIXES or media_kind(Source(str(path), "file", path=path)) != "image"


_URL_PREFIXES = ("http://", "https://", "oss://", "data:", "file://")
SORT_CHUNK = 256  # names read back at a time from a sort (``_Sorter``)


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Media references from arguments, as a list: ``iter_inputs``' (see it for the order and the errors)."""
    return list(iter_inputs(inputs))


def iter_inputs(inputs: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    """Media references from arguments, made as they are taken: URLs as given; files as given (even missing or
    invalid ones: they become item errors); folders walked recursively for media files (hidden ones skipped; in
    ``os.walk``'s order: a folder's files by name, then its subfolders by name); globs expanded (``**``
    included) in sorted order. Duplicates are dropped, order is kept. The walks, the sorts and the set of
    references already given are kept in a temporary SQLite database (``spool.temporary_db``), not in memory, so
    a folder of any size costs no memory per file (``bench/bench_batch.py --case folder``).

    Raises UsageError (exit 2) at once for an empty argument (``""`` is no name for the current folder), MediaError
    (an input error, exit 3) at once for a glob that matches nothing and for a missing folder:
    an argument that does not exist and ends with a path separator or has no extension (``photos/``,
    ``photos``), which cannot be meant as one media file; and, while iterated, UsageError when the temporary
    database cannot be written (``spool.temporary_error``). An ``os.PathLike`` argument is taken as its path."""
    args = [os.fspath(arg) if isinstance(arg, os.PathLike) else arg for arg in inputs]
    for arg in args:
        if not arg.strip():  # never "." (the current folder, walked): an unset shell variable, most likely
            raise empty_argument()
        if arg[:12].lower().startswith(_URL_PREFIXES):
            continue
        path = Path(arg).expanduser()
        if path.is_dir():
            continue
        if not path.exists() and _GLOB_CHARS & set(arg):
            if next(glob.iglob(os.path.expanduser(arg), recursive=True), None) is None:
                raise MediaError(f"no file matches {arg!r}", hint="Check the pattern and the current folder.")
        elif not path.exists() and (arg.endswith(("/", os.sep)) or not path.suffix):
            raise MediaError(f"no such file or folder: {arg}", hint="Check the path: nothing was sent.")
    return _unique(args)


def _unique(args: list[str]) -> Iterator[str]:
    from qwenvl.batch.spool import temporary_db  # (the spool imports this module)

    sorter = _Sorter(temporary_db())
    try:
        with sorter.io():
            sorter.conn.execute("CREATE TABLE seen (ref BLOB PRIMARY KEY) WITHOUT ROWID")
        for arg in args:
            for ref in _expand(arg, sorter):
                with sorter.io():
                    new = sorter.conn.execute("INSERT OR IGNORE INTO seen VALUES (?)", (_key(ref),)).rowcount
                if new:
                    yield ref
    finally:
        sorter.conn.close()


def _expand(arg: str, sorter: _Sorter) -> Iterator[str]:
    """The references one argument stands for (``iter_inputs``), duplicates included."""
    if arg[:12].lower().startswith(_URL_PREFIXES):
        yield arg
        return
    path = Path(arg).expanduser()
    if path.is_dir():
        yield from _walk(path, sorter)
    elif not path.exists() and _GLOB_CHARS & set(arg):
        matches = glob.iglob(os.path.expanduser(arg), recursive=True)
        for match in sorter.sorted((_key(m), m) for m in matches):
            if Path(match).is_dir():
                yield from _walk(Path(match), sorter)
            else:
                yield match
    else:
        yield arg


def _key(name: str) -> bytes:
    """A name as bytes that sort as Python sorts the string (UTF-8 keeps code point order; ``surrogatepass``
    takes the lone surrogates that stand for a file name's undecodable bytes)."""
    return name.encode("utf-8", "surrogatepass")


def _walk(folder: Path, sorter: _Sorter) -> Iterator[str]:
    """The media files under ``folder`` (hidden files and folders skipped, symbolic links to folders not followed,
    folders that cannot be read skipped: as ``os.walk`` does), in ``os.walk``'s order with each folder's names
    sorted: its files, then each subfolder. Every file is keyed by its path from ``folder``, each folder on the
    way as ``\\x02 name \\x00`` and the file as ``\\x01 name`` (so that a folder's files come before its
    subfolders', and a name before the longer names it begins), and read back sorted by that key."""

    def found() -> Iterator[tuple[bytes, str]]:
        stack: list[tuple[Path, bytes]] = [(folder, b"")]
        while stack:
            where, prefix = stack.pop()
            try:
                entries = os.scandir(where)
            except OSError:
                continue
            with entries:
                while True:
                    try:
                        entry = next(entries, None)
                    except OSError:  # a folder that cannot be read further (os.walk stops there too)
                        break
                    if entry is None:
                        break
                    if entry.name.startswith("."):
                        continue
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    path = where / entry.name
                    if is_dir:
                        if not entry.is_symlink():
                            stack.append((path, prefix + b"\x02" + _key(entry.name) + b"\x00"))
                    elif path.is_file() and _is_media_file(path):  # not a pipe, socket or device (reading one blocks)
                        yield prefix + b"\x01" + _key(entry.name), str(path)

    return sorter.sorted(found())


class _Sorter:
    """Sorts of (key, value) pairs through one temporary database: each sort is written whole, then read back by
    key ``SORT_CHUNK`` rows at a time (sorts may nest: a glob's matches, then a folder among them)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.runs = itertools.count()
        try:
            with self.io():
                conn.execute("CREATE TABLE sorting (run INTEGER, key BLOB, value TEXT, PRIMARY KEY (run, key))")
        except BaseException:
            conn.close()
            raise

    @staticmethod
    @contextlib.contextmanager
    def io() -> Iterator[None]:
        from qwenvl.batch.spool import temporary_error

        try:
            yield
        except sqlite3.Error as exc:
            raise temporary_error(exc) from None

    def sorted(self, pairs: Iterable[tuple[bytes, str]]) -> Iterator[str]:
        run = next(self.runs)
        insert = "INSERT OR IGNORE INTO sorting VALUES (?, ?, ?)"
        with self.io():
            self.conn.execute("BEGIN")
            try:
                # the value as bytes too: a file name that is not UTF-8 holds lone surrogates, which sqlite3
                # cannot store as text
                self.conn.executemany(insert, ((run, key, _key(value)) for key, value in pairs))
            finally:
                self.conn.execute("COMMIT")
        return self._read(run)

    def _read(self, run: int) -> Iterator[str]:
        last = b""
        try:
            while True:
                with self.io():
                    rows = self.conn.execute(
                        "SELECT key, value FROM sorting WHERE run = ? AND key > ? ORDER BY key LIMIT ?",
                        (run, last, SORT_CHUNK),
                    ).fetchall()
                if not rows:
                    return
                last = rows[-1][0]
                for _, value in rows:
                    yield value.decode("utf-8", "surrogatepass")
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("DELETE FROM sorting WHERE run = ?", (run,))


def expand_globs(
    args: Sequence[str], *, folders: bool = False, single: bool = False, verb: str | None = None
) -> list[str]:
    """Media arguments with quoted globs expanded, the one rule of every verb and of chat's ``/image`` (as the
    shell would expand them unquoted, and as ``batch`` and ``tokens`` do: ``expand_inputs``): an argument that is
    not a file and has ``*``, ``?`` or ``[`` is replaced by the files it matches (sorted; ``**`` recursive; a
    matched folder walked). One that matches nothing and looks like a file (``photos/*.jpg``) is a MediaError
    (exit 3); else it is left as it is (a prompt may hold a "?"; ``-``, standard input, too). ``folders``: a
    folder is walked for its images, PDFs and videos too (verbs that treat each file on its own and take every
    kind: ``extract``); elsewhere a folder stays one argument, refused as a folder with the hint to give a glob.
    ``single`` (a verb that takes one file: ``ground``, ``ocr``): a glob that matches several files is a
    UsageError (exit 2) naming how many and ``verb``. A file given twice stays twice, as the shell gives it."""
    from qwenvl.media.sources import first_names, is_reference, looks_like_file

    out: list[str] = []
    for arg in args:
        if is_reference(arg) and not (folders and Path(arg).expanduser().is_dir()):  # a file, a URL
            out.append(arg)
            continue
        is_glob = bool(_GLOB_CHARS & set(arg))
        matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True)) if is_glob else []
        if is_glob and matches and not folders:  # as the shell expands it: a matched folder stays a folder
            found = matches
        elif is_glob and (looks_like_file(arg) or matches):
            found = expand_inputs([arg])  # MediaError when it matches nothing
        elif folders and os.path.isdir(os.path.expanduser(arg)):  # images, PDFs and videos, as batch walks it
            found = expand_inputs([arg])
        else:
            out.append(arg)
            continue
        if not found:
            raise no_media_found([arg])
        if single and len(found) > 1:
            raise UsageError(
                f"{arg!r} matches {len(found)} files ({first_names(found)}), and {verb or 'this command'} takes one",
                hint=f"Give one file, e.g. {found[0]}, or a pattern that matches only it.",
            )
        out.extend(found)
    return out


def no_media_found(inputs: Sequence[str]) -> MediaError:
    """The error for INPUTS that exist but hold no media file (an empty folder, one of text files): an input
    error (exit 3), as a missing folder or a glob that matches nothing is (``expand_inputs``)."""
    return MediaError(
        "no media files found in " + ", ".join(inputs),
        source=", ".join(inputs),
        hint="Point at images, videos or PDFs (a folder is searched recursively; hidden files are skipped).",
    )


def items_from_inputs(refs: list[str], fields: dict[str, Any]) -> list[BatchItem]:
    """One item per media reference: ``{**fields, "image": ref}`` (``"video"`` for a video); id = the ref (a name
    that is not UTF-8 escaped, ``na\\udcefve.jpg``).
    ``iter_items_from_inputs`` makes them one at a time (what ``qwenvl batch`` gives ``Batch``)."""
    return list(iter_items_from_inputs(refs, fields))


def iter_items_from_inputs(refs: Iterable[str], fields: dict[str, Any]) -> Iterator[BatchItem]:
    """``items_from_inputs``, each item made (and its file sniffed) as it is taken: no list of items. An
    ``os.PathLike`` reference is taken as its path. ``fields`` that only some media read go to those items only
    (``qwenvl.media.sources.OPTION_MEDIA``): ``pages`` to PDFs, ``fps`` and ``video_as`` to videos, ``detail`` and
    ``vl_high_resolution_images`` to images and PDFs, ``prepare`` to images (every item's plan refuses them where
    they do not apply, ``plan.check_media_options``; the CLI refuses them when no input takes them)."""
    for ref in refs:
        ref = os.fspath(ref) if isinstance(ref, os.PathLike) else ref
        kind = media_kind(ref)
        key = "video" if kind == "video" else "image"
        # what this kind does not read (the one rule: media.sources.not_applied)
        item_fields = {k: v for k, v in fields.items() if not_applied({k: k}, {kind}) is None}
        # a file name that is not UTF-8 (lone surrogates) is the item's id and input as text, escaped as every
        # message shows it (``na\udcefve.jpg``, ``errors.safe_line``): journals, outputs and logs are UTF-8; the
        # request keeps the real name to read it
        shown = ref.encode("utf-8", "backslashreplace").decode("utf-8")
        yield BatchItem(id=shown, request={**item_fields, key: ref}, input=shown)


def read_requests(path: str | Path, overrides: dict[str, Any] | None = None) -> Iterator[BatchItem]:
    """Items from a JSONL file, read lazily (one line at a time, as the iterator is advanced: a batch of any
    size costs no memory per line): one object per line with an ``id`` (else the line number) and the fields
    of ``qwenvl.Request``. ``overrides`` (the command line's flags) replace the lines' fields, except ``extra``
    (``--param``), whose keys are added to a line's own (the flag's value wins for a key both give).

    Raises MediaError (CLI exit code 3) at once when the file is missing, a folder, not a regular file or
    unreadable (``check_regular``), and while iterating for a line whose ``schema`` file is (naming the line).
    Raises UsageError while iterating for a line that is not a JSON object, gives a key twice (at any depth:
    ``types.loads``) or has an unknown or wrongly typed field (naming the line), for text that is not UTF-8,
    and at the end for a file without requests. A repeated id is refused by ``Batch`` (naming both lines), which
    keeps the ids; this reader keeps nothing.
    ``"-"`` reads standard input (named ``stdin``)."""
    if str(path) == "-":
        return _read_lines(Path("stdin"), overrides or {}, sys.stdin.buffer)
    path = Path(path).expanduser()
    check_regular(path, what="requests file")
    return _read_lines(path, overrides or {})


def _read_lines(path: Path, overrides: dict[str, Any], stream: IO[bytes] | None = None) -> Iterator[BatchItem]:
    """The items of a requests file, one line read at a time, each of at most ``MAX_TEXT_FILE_BYTES`` characters
    (a longer one, or a file with no line ends, is refused once that much is read: MediaError, exit 3, naming
    the line)."""
    found = False
    raw = stream if stream is not None else open_regular(path, what="requests file")
    fh = io.TextIOWrapper(raw, encoding="utf-8")
    try:
        for n, line in enumerate(iter(lambda: fh.readline(MAX_TEXT_FILE_BYTES + 1), ""), 1):
            if len(line) > MAX_TEXT_FILE_BYTES:
                raise MediaError(
                    f"{path.name} line {n} is longer than {MAX_TEXT_FILE_BYTES:,} characters: it is no request line",
                    source=str(path),
                    hint="Write one JSON request per line; give large media as files or URLs, not inline.",
                )
            if line.strip():
                found = True
                yield _request_line(path, n, line, overrides)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text ({exc.reason})", hint="Save the file as UTF-8.") from None
    finally:
        if stream is None:
            fh.close()
        else:
            fh.detach()  # standard input stays open
    if not found:
        raise UsageError(
            f"{path} has no requests", hint='Write one JSON request per line, e.g. {"prompt": "...", "image": "a.png"}.'
        )


def _request_line(path: Path, n: int, raw: str, overrides: dict[str, Any]) -> BatchItem:
    where = f"{path.name} line {n}"
    try:
        data = loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{where}: not valid JSON ({exc.msg} at column {exc.colno})",
            hint='Each line must be one JSON object: {"id": ..., "prompt": ..., "image": ...}',
        ) from None
    except DuplicateKeyError as exc:  # {"extra": {"seed": 1, "seed": 2}}: never the last one silently
        raise UsageError(f"{where}: {exc}", hint="Give each key once.") from None
    if not isinstance(data, dict):
        raise UsageError(
            f"{where}: expected a JSON object, got {type(data).__name__}",
            hint='Write one JSON object per line, e.g. {"prompt": "...", "image": "a.png"}.',
        )
    raw_id = data.pop("id", n)
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or not str(raw_id).strip():
        raise UsageError(
            f"{where}: id must be a non-empty string or an integer",
            hint="Give each request an id that is a non-empty string or an integer, or leave it out.",
        )
    item_id = str(raw_id)
    fields = {**data, **overrides}
    if isinstance(data.get("extra"), dict) and "extra" in overrides:  # --param adds to a line's extra, key by key
        fields["extra"] = {**data["extra"], **overrides["extra"]}
    own = frozenset(k for k in data if k not in overrides or k == "extra")  # --param adds to a line's extra
    try:
        request = make_request(None, fields)
    except UsageError as exc:  # its hint names the line's own keys as the line writes them (in_line_words)
        raise _in_keys(own, UsageError(f"{where}: {exc.raw_message}", hint=exc.raw_hint, field=exc.field)) from None
    except MediaError as exc:  # a schema file the line names, missing or unreadable
        said = f"{where}: {exc.raw_message}"
        raise _in_keys(
            own, MediaError(said, source=exc.source, hint=exc.raw_hint, not_an_image=exc.not_an_image)
        ) from None
    refs: list[str] = request.image_list()
    shown: Any = refs[0] if len(refs) == 1 else (refs or None)
    if request.video is not None:
        shown = request.video if not refs else [*refs, request.video]
    return BatchItem(id=item_id, request=fields, input=shown, line=n, source=path.name, own=own)
