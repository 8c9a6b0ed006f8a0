"""Media sources: what a reference (URL, path, ``file://``, ``data:``, ``oss://``) points at, and its bytes.

Nothing here decodes images; it only finds, reads and identifies content by its bytes (never by its name).

**Only regular files are read.** A named pipe, a device (``/dev/zero``, a terminal behind ``/dev/stdin``),
a socket or a directory given as a file is refused at once, before anything is read or sent, because
reading it could block for ever or never end; symlinks are followed, and a loop of them is named as such.
``check_regular`` (a stat) and ``open_regular`` (an open that cannot block, then a check of what was
opened) are the one home of that rule, for media and for every other file qwenvl reads on a user's behalf
(schemas, request files, batch inputs, sessions): a file that is missing, a folder, not a regular file or
unreadable is a MediaError (an input error, CLI exit code 3) with a hint about the path, whatever option
named it. What is wrong with a file's content (bad JSON, an invalid schema) is its reader's to say.
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import unquote, urlsplit

from qwenvl._constants import MAX_TEXT_FILE_BYTES
from qwenvl.errors import MediaError, OptionNotAppliedError, QwenVLError, UsageError
from qwenvl.spelling import nearest

SourceKind = Literal["url", "oss", "data", "file"]

# A data: URL's head, up to its payload (read from the URL's first ``_HEAD_CHARS`` characters; the payload itself,
# megabytes, is never scanned by a regular expression: ``_payload``).
_DATA_HEAD = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,", re.IGNORECASE)
_HEAD_CHARS = 4096
# How much of a large payload one step handles (base64 characters, or bytes): each C call (base64, counting,
# copying) holds the GIL only that long, so an AsyncClient's event loop, waiting meanwhile for a worker thread
# preparing a 23 MB photo given as bytes, is never stalled for the whole of it.
_STEP = 1 << 20
_SPACE = " \t\n\r\f\v\x1c\x1d\x1e\x1f"  # what the payload may be wrapped with (str.isspace's ASCII ones)


def _payload(url: str) -> tuple[re.Match[str], int, int] | None:
    """``(head, start, end)`` of a data: URL: its head's match (``mime``, ``params``) and its payload's span in
    ``url`` (the URL's surrounding white space left out), nothing copied; None when it is no data: URL. Raises
    nothing."""
    start, end = 0, len(url)
    while start < end and url[start].isspace():
        start += 1
    while end > start and url[end - 1].isspace():
        end -= 1
    head = _DATA_HEAD.match(url, start, min(end, start + _HEAD_CHARS))
    return None if head is None else (head, head.end(), end)


@dataclass
class Source:
    ref: str  # what the user gave, for messages
    kind: SourceKind
    url: str | None = None  # for url / oss / data
    path: Path | None = None  # for file
    declared_mime: str | None = None  # from a data: URL

    @property
    def is_remote(self) -> bool:
        return self.kind in ("url", "oss")

    @property
    def label(self) -> str:
        if self.kind == "data":
            return f"data URL ({len(self.url or '')} chars)"
        return str(self.path) if self.path else self.ref


def classify(ref: str) -> Source:
    """Decide what kind of reference ``ref`` is. A local path must exist; nothing is read yet."""
    if not isinstance(ref, str) or not ref.strip():
        raise MediaError("empty media reference", source=str(ref), hint="Give a file path or a URL.")
    text = ref.strip()
    lower = text[:12].lower()
    if lower.startswith(("http://", "https://")):
        try:
            if not text.isprintable():  # a tab, a newline, ESC
                raise ValueError("it holds a control character")
            parts = urlsplit(text)
        except ValueError as exc:  # "https://[bad": an IPv6 host not closed
            raise MediaError(
                f"{text!r} is not a valid URL ({exc})",
                source=text,
                hint="Check the URL, e.g. https://example.com/photo.jpg.",
            ) from None
        if not parts.netloc:
            raise MediaError(
                f"{text!r} is not a valid URL (no host)",
                source=text,
                hint="Check the URL, e.g. https://example.com/photo.jpg.",
            )
        return Source(ref, "url", url=text)
    if lower.startswith("oss://"):
        return Source(ref, "oss", url=text)
    if lower.startswith("data:"):
        found = _payload(text)
        if found is None:
            raise MediaError(
                "a data: URL must look like data:<mime>;base64,<payload>",
                source=text[:40],
                hint="Give a data: URL such as data:image/png;base64,iVBOR..., or the file itself.",
            )
        return Source(ref, "data", url=text, declared_mime=(found[0].group("mime") or None))
    if lower.startswith("file://"):
        path = Path(unquote(urlsplit(text).path))
        if os.name == "nt" and re.match(r"^/[A-Za-z]:", str(path)):
            path = Path(str(path)[1:])
        return Source(ref, "file", path=_check_path(path, text))
    if re.match(r"^[a-z][a-z0-9+.-]*://", lower):
        raise MediaError(
            f"unsupported URL scheme in {text!r}",
            source=text,
            hint="Use an https:// URL, a local path, file:// or a data: URL.",
        )
    return Source(ref, "file", path=_check_path(Path(text).expanduser(), text))


def _check_path(path: Path, ref: str) -> Path:
    check_regular(path, ref)
    if not os.access(path, os.R_OK):
        raise _fail(f"cannot read {path}: permission denied", ref, PERMISSION_HINT)
    return path


# --- regular files only --------------------------------------------------------------------------------------

_NOT_REGULAR = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


PERMISSION_HINT = "Check the file's permissions (`ls -l`): it must be readable by you."


def _fail(message: str, ref: str | None, hint: str | None = None) -> MediaError:
    return MediaError(message, source=ref, hint=hint)


def path_hint(path: Path) -> str:
    """A hint for a path that names nothing: the closest name in its folder (``Did you mean ...?``), else where
    a relative path starts (the current folder). Raises nothing."""
    folder = path.parent
    try:  # names compared by their stems: a shared suffix (.json) makes any two names look alike
        stems = {p.stem: p.name for p in folder.iterdir()} if folder.is_dir() else {}
    except OSError:
        stems = {}
    near = nearest(path.stem, stems, cutoff=0.75)
    if near:
        name = stems[near]
        return f"Did you mean {folder / name if str(folder) != '.' else name}?"
    if not path.is_absolute():
        try:
            return f"Check the path: a relative path starts at the current folder ({Path.cwd()})."
        except OSError:  # the current folder was removed
            pass
    return "Check the path."


def _os_error(path: Path, exc: OSError, what: str, ref: str | None = None) -> MediaError:
    ref = str(path) if ref is None else ref
    if exc.errno == errno.ELOOP:
        return _fail(f"cannot read {path}: symlink loop", ref, "Point the symlink at a file.")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        if path.is_symlink():
            return _fail(
                f"{what} not found: {path} is a broken symlink (to {os.readlink(path)})",
                ref,
                "Point the symlink at a file that exists.",
            )
        return _fail(f"{what} not found: {path}", ref, path_hint(path))
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _fail(f"cannot read {path}: permission denied", ref, PERMISSION_HINT)
    return _fail(f"cannot read {path}: {exc.strerror or exc}", ref)


def check_regular(path: Path, ref: str | None = None, *, what: str = "file") -> os.stat_result:
    """The stat of ``path`` (symlinks followed) when it is a regular file; else MediaError (exit 3, with a hint
    about the path) saying what it is: missing, a broken symlink, a symlink loop, a directory, a named pipe, a
    device or a socket. ``what`` names the file in the message (``"schema file"``, ``"requests file"``...);
    ``ref`` is the error's ``.source`` (default: the path). Reads nothing. The one check of every file qwenvl
    reads on a user's behalf: media, and the files named by options (schemas, request files, sessions)."""
    ref = str(path) if ref is None else ref
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _os_error(path, exc, what, ref) from None
    except ValueError:  # an embedded NUL
        raise _fail(f"{what} not found: {str(path)!r}", ref) from None
    if stat.S_ISDIR(st.st_mode):
        hint = "Give the files inside it, e.g. a glob such as dir/*.jpg" if what == "file" else None
        raise _fail(f"{path} is a directory, not a file", ref, hint or f"Give the {what} itself, not a folder.")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "not a regular file")
        raise _fail(
            f"{path} is {kind}, not a regular file",
            ref,
            "Only regular files are read (reading this one may never end); save the data to a file.",
        )
    return st


def check_folder(path: Path, *, what: str = "folder") -> Path:
    """``path`` (``~`` expanded, made absolute and resolved) when it is a folder that can be listed; else
    MediaError (exit 3, with a hint about the path): missing, a file, not listable. For folders the user names
    for qwenvl to read from (``qwenvl mcp --allow-dir``). Reads nothing."""
    path = Path(path).expanduser()
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise _fail(f"{what} not found: {path}", str(path), path_hint(path)) from None
        raise _os_error(path, exc, what) from None
    except ValueError:  # an embedded NUL
        raise _fail(f"{what} not found: {str(path)!r}", str(path)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _fail(f"{path} is not a folder", str(path), f"Give the {what} that holds the files.")
    if not os.access(path, os.R_OK | os.X_OK):
        raise _fail(f"cannot read {path}: permission denied", str(path), PERMISSION_HINT)
    return path.resolve()


def open_regular(path: Path, ref: str | None = None, *, what: str = "file") -> BinaryIO:
    """``path`` opened for reading in binary mode, when it is a regular file (``check_regular``: MediaError
    otherwise, or when it cannot be opened). The open itself cannot block (``O_NONBLOCK``), and what was
    opened is checked again, so a file swapped for a pipe meanwhile is refused too."""
    check_regular(path, ref, what=what)
    nonblock = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise _os_error(path, exc, what, ref) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _fail(f"{path} is not a regular file", ref)
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


TEXT_FILE_HINT = "Check the file name: this is far larger than any such file qwenvl writes or reads."


def read_regular_text(
    path: Path, *, error: type[QwenVLError] = UsageError, what: str = "file", limit: int = MAX_TEXT_FILE_BYTES
) -> str:
    """The UTF-8 text of a regular file (``open_regular``) of at most ``limit`` bytes (default
    ``MAX_TEXT_FILE_BYTES``, 64 MiB). Raises MediaError (exit 3) when it is missing, not a regular file, cannot
    be read, or is larger than ``limit`` (refused from its size, unread: ``check_size``); ``error`` (default
    UsageError) when its bytes are not UTF-8 text (its content, as bad JSON in it would be). The one reader of
    the text files qwenvl reads whole: schemas, sessions, request files (``analyze --request``), configuration
    files."""
    with open_regular(path, what=what) as fh:
        source = Source(str(path), "file", path=path)
        check_size(source, limit, size=os.fstat(fh.fileno()).st_size, what=f"a {what}", hint=TEXT_FILE_HINT)
        try:
            data = fh.read(limit + 1)  # a file that grew since: never more than the limit
        except OSError as exc:
            raise _os_error(path, exc, what) from None
    check_size(source, limit, size=len(data), what=f"a {what}", hint=TEXT_FILE_HINT)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text ({exc.reason})") from None


def source_size(source: Source) -> int | None:
    """The size in bytes of a local file (a stat: nothing is read) or of a data: URL's decoded payload (from its
    length: nothing is decoded); None for a remote source.
    Raises MediaError (exit 3) for a file that is missing or not a regular file (``check_regular``)."""
    if source.kind == "file" and source.path is not None:
        return check_regular(source.path, source.ref).st_size
    if source.kind == "data":
        url = source.url or ""
        found = _payload(url)
        if found is None:
            return None
        _, start, end = found
        chars = end - start
        for i in range(start, end, _STEP):  # str.count: at memory speed, unlike a loop; a step at a time
            piece = url[i : min(i + _STEP, end)]
            chars -= sum(map(piece.count, _SPACE))
        return chars * 3 // 4 - url[max(start, end - 2) : end].count("=")
    return None


def check_size(
    source: Source, limit: int, *, size: int | None = None, what: str = "a file", hint: str | None = None
) -> int | None:
    """Refuse ``source`` when it is larger than ``limit`` bytes, from its size alone (``source_size``, or ``size``
    when the caller has it): nothing is read or decoded. ``what`` names the limit in the message (``"one image
    sent as it is"``: "... is 500.0 MB; {what} may be at most 10.0 MB"). Returns the size (None for a remote
    source). Raises MediaError (exit 3) with ``hint`` (a default that says to send a smaller file)."""
    size = source_size(source) if size is None else size
    if size is not None and size > limit:
        said, most = _mb(size), _mb(limit)
        if said == most:  # just over: the rounded sizes would read the same
            said, most = f"{size:,} bytes", f"{limit:,} bytes"
        raise MediaError(
            f"{source.label} is {said}; {what} may be at most {most} (nothing was read)",
            source=source.ref,
            hint=hint or "Send a smaller file (lower resolution, or shorter).",
        )
    return size


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 1_000_000 else f"{size / 1e3:.1f} kB"


def read_bytes(source: Source, *, limit: int | None = None, what: str = "a file", hint: str | None = None) -> bytes:
    """The content of a local file or a data: URL (remote sources are not fetched here). With ``limit`` (bytes),
    a larger one is refused before anything is read or decoded (``check_size``, with ``what`` and ``hint``).

    **Every reader of a user's media calls this with a limit** (or ``open_source`` to read only what it needs,
    or ``head_bytes`` for the first bytes): a file is never read whole before its size is known to be one a
    limit allows. Raises MediaError (exit 3): missing, not a regular file, unreadable, over the limit, a data:
    URL that does not decode."""
    if limit is not None:
        check_size(source, limit, what=what, hint=hint)
    if source.kind == "file":
        assert source.path is not None
        with open_regular(source.path, source.ref) as fh:
            try:
                return fh.read()
            except OSError as exc:
                raise MediaError(
                    f"cannot read {source.path}: {exc.strerror or exc}",
                    source=source.ref,
                    hint="Check the file's permissions.",
                ) from None
    if source.kind == "data":
        return decode_data_url(source.url or "", source.ref)
    raise MediaError(
        f"{source.ref} is remote; it has no local bytes",
        source=source.ref,
        hint="Download it first, or let qwenvl fetch it (--fetch-urls).",
    )


def local_content(source: Source, limit: int, what: str) -> Path | bytes:
    """What a reader of a local video or PDF takes: a file's path (it reads what it needs from disk), or a data:
    URL's payload, refused from the length of its base64 text before it is decoded when over ``limit`` bytes
    (``check_size``; ``what`` names the kind: ``"a video data: URL"``). Raises MediaError (exit 3): over the limit,
    a payload that does not decode; for a remote source too (it has no local content)."""
    if source.kind == "file" and source.path is not None:
        return source.path
    return read_bytes(source, limit=limit, what=what, hint="Give the file itself, or a smaller one.")


def open_source(source: Source) -> BinaryIO:
    """A local file opened for reading (``open_regular``: a pipe or device is refused), or a data: URL's
    payload as an in-memory file, for readers that take only what they need (an image's header through
    ``Image.open``). The caller closes it. Raises MediaError as ``read_bytes``; for a remote source too."""
    if source.kind == "file" and source.path is not None:
        return open_regular(source.path, source.ref)
    return io.BytesIO(read_bytes(source))


def decode_data_url(url: str, ref: str | None = None) -> bytes:
    """The bytes of a data: URL's base64 payload (white space in it ignored; any other character that is not
    base64, or padding before its end, refused), decoded ``_STEP`` characters at a time (``_payload``). Raises
    MediaError for a string that is no data: URL, a payload that does not decode, an empty one."""
    found = _payload(url)
    if found is None:
        raise MediaError(
            "a data: URL must look like data:<mime>;base64,<payload>",
            source=(ref or url)[:40],
            hint="Give a data: URL such as data:image/png;base64,iVBOR..., or the file itself.",
        )
    _, start, end = found
    try:
        data = _b64decode(url, start, end)
    except (binascii.Error, ValueError):
        raise MediaError(
            "the data: URL's base64 payload does not decode",
            source=(ref or url)[:40],
            hint="Encode the file again (base64), or give the file itself.",
        ) from None
    if not data:
        raise MediaError(
            "the data: URL is empty",
            source=(ref or url)[:40],
            hint="Give a data: URL with its payload, or the file itself.",
        )
    return data


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_reference(text: str) -> bool:
    """Whether ``text`` is a file that exists (a symlink counts even when broken or looping: ``classify`` says
    which), a URL or a data: URL: never a prompt. Raises nothing."""
    if _SCHEME.match(text) or text[:5].lower() == "data:":
        return True
    try:
        return os.path.lexists(Path(text).expanduser())
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a file
        return False


def looks_like_file(text: str) -> bool:
    """An image, video or PDF name (by its suffix), or a path with a separator and no spaces. Raises nothing."""
    if "\n" in text:
        return False
    if Path(text).suffix.lower() in MEDIA_SUFFIXES:
        return True
    return any(sep in text for sep in {"/", os.sep}) and not any(c.isspace() for c in text)


def looks_swapped(prompt: object, refs: list[object]) -> str | None:
    """The media reference that looks like the prompt when the two were given the other way round
    (``client.ask("photo.png", "What is this?")``): ``prompt`` names a file or URL (``is_reference``, or
    ``looks_like_file`` without a space: "Describe image.png" is a sentence) while one of ``refs`` is neither (a
    missing file named like a sentence). None when nothing looks swapped. Raises nothing."""
    if not isinstance(prompt, str):
        return None
    if not is_reference(prompt) and not (looks_like_file(prompt) and not any(c.isspace() for c in prompt)):
        return None
    for ref in refs:
        if isinstance(ref, str) and not is_reference(ref) and not looks_like_file(ref):
            return ref
    return None


def swapped_error(prompt: str, ref: str, *, call: str = "ask") -> UsageError:
    """The error of arguments given the other way round (``looks_swapped``), with the right order as the hint."""
    return UsageError(
        f"the arguments look swapped: the prompt {_short(prompt)!r} names a file, and the file {_short(ref)!r} "
        "does not exist",
        hint=f"Give the {'query' if call == 'ground' else 'prompt'} as text and the file by name, in this order: "
        + (
            f"tasks.ground(client, {_short(prompt)!r}, {_short(ref)!r})"
            if call == "ground"
            else f"client.ask({_short(ref)!r}, {_short(prompt)!r}) (or complete(prompt=..., image=...))."
        ),
    )


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_SPACE_BYTES = _SPACE.encode("ascii")


def _b64decode(url: str, start: int, end: int) -> bytes:
    """``url[start:end]`` decoded as strict base64 (``base64.b64decode(validate=True)``) once its white space is
    removed, a step (``_STEP``) at a time. Raises binascii.Error, ValueError (a character that is not ASCII)."""
    parts: list[bytes] = []
    carry = b""
    padded = False
    for i in range(start, end, _STEP):
        piece = carry + url[i : min(i + _STEP, end)].encode("ascii").translate(None, _SPACE_BYTES)
        last = i + _STEP >= end
        cut = len(piece) if last else len(piece) // 4 * 4
        piece, carry = piece[:cut], piece[cut:]
        if not piece:
            continue
        if padded:  # padding ends the payload: more after it is not base64
            raise binascii.Error("data after the padding")
        parts.append(base64.b64decode(piece, validate=True))
        padded = piece.endswith(b"=")
    return b"".join(parts)


def to_data_url(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,<payload>`` of ``data``, encoded a step at a time (``_STEP``: pieces of a multiple of 3
    bytes join with no padding between them)."""
    step = _STEP // 4 * 3
    view = memoryview(data)
    parts = [f"data:{mime};base64,"]
    parts += [binascii.b2a_base64(view[i : i + step], newline=False).decode("ascii") for i in range(0, len(data), step)]
    return "".join(parts)


# --- identifying content by its bytes -----------------------------------------------------------------------

# File-name endings of the media qwenvl takes. A local file's kind is told by its bytes (``media_kind``); these
# serve where there are no bytes to read: a remote URL's path, a folder walk's first pick, a CLI argument that
# names a file.
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".flv", ".wmv", ".m4v"})
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}
    | {".avif", ".jp2", ".j2k", ".ico", ".icns", ".dib", ".tga", ".sgi", ".svg"}
)
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES | {".pdf"}

MediaKind = Literal["image", "video", "pdf"]
HEAD_BYTES = 4096  # enough for every magic number ``sniff`` reads


def head_bytes(source: Source, size: int = HEAD_BYTES) -> bytes:
    """The first ``size`` bytes of a local file (``open_regular``: a pipe or device is never read) or of a
    data: URL (only the start of its payload is decoded); b"" for a remote source or one that cannot be read
    (the request's own checks report that)."""
    if source.kind == "file" and source.path is not None:
        try:
            with open_regular(source.path, source.ref) as fh:
                return fh.read(size)
        except (OSError, MediaError):
            return b""
    if source.kind == "data":
        url = source.url or ""
        found = _payload(url)
        payload = re.sub(r"\s+", "", url[found[1] : min(found[2], found[1] + size * 2)]) if found else ""
        payload = payload[: (size + 2) // 3 * 4]
        try:
            return base64.b64decode(payload[: len(payload) // 4 * 4])[:size]
        except (binascii.Error, ValueError):
            return b""
    return b""


def media_kind(ref: str | Source, head: bytes | None = None) -> MediaKind:
    """What a media reference holds: ``"video"`` or ``"pdf"`` when its first bytes say so (``sniff``), else
    ``"image"``. A data: URL whose bytes say nothing counts as its declared MIME type says (``video/...``,
    ``application/pdf``); a remote URL is a video when its path ends like one (``VIDEO_SUFFIXES``; its
    bytes are not fetched), a PDF when it ends in ``.pdf``, else an image. A reference that cannot be classified
    or read is ``"image"``: preparing it reports what is wrong. The one home of this rule: the CLI's and MCP
    server's split of images from a video, batch items, estimates, PDF pages. ``head``: a local source's first
    bytes (at least ``HEAD_BYTES`` of them, or all it holds) when the caller has read them already (they are not
    read again)."""
    try:
        source = classify(ref) if isinstance(ref, str) else ref
    except MediaError:
        return "image"
    if source.is_remote:
        suffix = Path(urlsplit(source.url or "").path).suffix.lower()
        return "video" if suffix in VIDEO_SUFFIXES else "pdf" if suffix == ".pdf" else "image"
    first = head_bytes(source) if head is None else head[:HEAD_BYTES]
    mime = sniff(first) or (source.declared_mime or "").lower()
    if mime.startswith("video/"):
        return "video"
    return "pdf" if mime == "application/pdf" else "image"


# ISO-BMFF ("ftyp") brands of still images (HEIF: ISO/IEC 23008-12 and Apple's HEIC; AVIF: AV1 image file format).
HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
)
AVIF_BRANDS = frozenset({b"avif", b"avis"})


def first_names(refs: list[str] | tuple[str, ...], shown: int = 2) -> str:
    """The first ``shown`` references of ``refs`` for a one-line message, a data: URL by its ``label``, and how
    many more: ``"g/a.mp4, g/b.mp4 and 3 more"``. The one way a message names the files a glob or a list gave
    (a reference's control characters are escaped where the message is shown). Raises nothing."""
    names = [Source(r, "data", url=r).label if r[:5].lower() == "data:" else r for r in refs[:shown]]
    more = len(refs) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def split_media(refs: list[str]) -> tuple[list[str], str | None]:
    """``(images, video)`` of a question's references, in order, by ``media_kind``: a local file is a video
    when its bytes say so, a data: URL by its declared type, a remote URL by its path's suffix. A PDF counts
    with the images (it is sent as its pages). Raises UsageError for more than one video (one per question),
    saying how many there are and naming the first (``first_names``)."""
    images: list[str] = []
    videos: list[str] = []
    for ref in refs:
        (videos if media_kind(ref) == "video" else images).append(ref)
    if len(videos) > 1:
        raise UsageError(
            f"{len(videos)} videos given ({first_names(videos)}), and one question takes one video",
            hint="Ask about each video in a question of its own.",
        )
    return images, (videos[0] if videos else None)


# What each media option of a request applies to, by Request field: the kinds of media (``media_kind``, and
# "frames" for a list of frame images sent as one video) that read it. The one home of the rule "options that do
# not apply are refused, never ignored" (``check_options_apply``), for the library (``plan.check_media_options``,
# ``estimate_files``) and every CLI verb (``qwenvl.cli.common.check_pages_apply``). Sources:
# - ``pages`` picks a PDF's pages; ``fps`` and ``video_as`` are how a video is sampled or sent (a frame list is
#   already sampled: ``fps`` is the rate it was taken at; it cannot be sent whole).
# - ``min_pixels``/``max_pixels`` bound images, rendered PDF pages and video frames alike (the official
#   preprocessor takes them per video item as per image, qwen-vl-utils ``fetch_video``; qwenvl samples with
#   them: ``qwenvl.media.video.frame_budget``), so they apply to every kind and are never refused here.
# - ``detail`` and ``vl_high_resolution_images`` are the per-image token budget ("单图Token上限",
#   reference/dashscope-api.md §4.1); video frames follow the video budget (§4.2), never these.
# - ``prepare=False`` sends an image file as it is; a PDF page is always rendered and a video always sampled
#   (``qwenvl.media.video``: sending it whole is ``video_as="file"``), so they have no original to send.
OPTION_MEDIA: dict[str, frozenset[str]] = {
    "pages": frozenset({"pdf"}),
    "fps": frozenset({"video", "frames"}),
    "video_as": frozenset({"video"}),
    "detail": frozenset({"image", "pdf"}),
    "vl_high_resolution_images": frozenset({"image", "pdf"}),
    "prepare": frozenset({"image", "frames"}),
}
ANY_KIND = frozenset({"image", "pdf", "video", "frames"})
# The value of each media option that is the default, doing nothing: given explicitly it is not "given" (``--detail
# auto``, ``detail="auto"``, ``"video_as": "frames"``), on every surface alike (``option_given``).
_DEFAULT_VALUES: dict[str, tuple[Any, ...]] = {
    "pages": (None, ""),
    "fps": (None,),
    "video_as": (None, "frames"),
    "detail": (None, "auto"),
    "vl_high_resolution_images": (None,),  # True or False: either asks for a budget of its own
    "prepare": (None, True),
}


def option_given(field: str, value: Any) -> bool:
    """Whether the media option ``field`` (a key of ``OPTION_MEDIA``) set to ``value`` counts as given, for the rule
    "options that do not apply are refused": a value other than the one that does nothing (an explicit default,
    ``detail="auto"`` or ``--detail auto``, changes nothing, so nothing is ignored). The one rule of every surface:
    the library (``plan.media_option_fields``: sync, async, a batch's request lines, serve, MCP) and the CLI
    (``qwenvl.cli.common.media_flag_names``). Raises nothing."""
    return value not in _DEFAULT_VALUES.get(field, (None,))


_KIND_WORDS = {"image": ("an image", "images"), "pdf": ("a PDF", "PDFs"), "video": ("a video", "videos")}


def _words(kinds: frozenset[str] | set[str], plural: bool) -> str:
    said = [_KIND_WORDS[k][1 if plural else 0] for k in ("image", "pdf", "video") if k in kinds]
    return " or ".join(said) if not plural else " and ".join(said)


def ref_kinds(refs: list[str] | tuple[str, ...], *, frames: bool = False) -> frozenset[str]:
    """The kinds of media ``refs`` may hold (``media_kind``): every kind for a remote URL that is not a known
    video or PDF by its path, or for a reference that cannot be classified or read (the checks that name it
    report that); ``frames``: several references are one frame list (``events``, a request's ``video`` list).
    Raises nothing."""
    if frames and len(refs) > 1:
        return frozenset({"frames"})
    kinds: set[str] = set()
    for ref in refs:
        try:
            source = classify(ref)
        except MediaError:
            return ANY_KIND
        kind = media_kind(source)
        if source.is_remote and kind == "image":  # its bytes are not read: it might be anything
            return ANY_KIND
        kinds.add(kind)
    return frozenset(kinds)


@dataclass(frozen=True)
class NotApplied:
    """An option given where no media reads it (``not_applied``), as data for every surface to word, never to parse:
    which (``field``: the Request field; ``option``: the name the caller's user knows it by, ``"--fps"`` on the CLI,
    ``"fps"`` in the library and the requests of ``batch``, serve and MCP), why (``applies``: the kinds of media that
    read it, ``OPTION_MEDIA``), and the ``message`` and ``hint`` of its refusal (``error()``)."""

    field: str
    option: str
    applies: frozenset[str]

    @property
    def media(self) -> str:
        """The media that read it, for a message: "PDFs", "videos", "images and PDFs"."""
        return _words(self.applies - {"frames"}, True)

    @property
    def medium(self) -> str:
        """One medium that reads it: "a PDF", "a video", "an image or a PDF"."""
        return _words(self.applies - {"frames"}, False)

    @property
    def message(self) -> str:
        return f"{self.option} applies to {self.media} only"

    @property
    def hint(self) -> str:
        others = frozenset(_KIND_WORDS) - (self.applies - {"frames"})
        return f"Leave out {self.option} for {_words(others, False)}."

    def named(self, option: str) -> NotApplied:
        """The same refusal naming the option as another surface's user knows it (``"--pages"``)."""
        return NotApplied(self.field, option, self.applies)

    def error(self, message: str | None = None, hint: str | None = None) -> OptionNotAppliedError:
        """Its refusal (exit 2): ``message`` and ``hint`` as given (a surface's own words), else its own."""
        return OptionNotAppliedError(message or self.message, refusal=self, hint=hint or self.hint)


def not_applied(given: Mapping[str, str], kinds: frozenset[str] | set[str]) -> NotApplied | None:
    """The one rule "an option that no media reads is refused, never ignored": the first option of ``given`` (Request
    field -> the name the caller's user knows it by: ``"--high-res"`` on the CLI, ``"vl_high_resolution_images"`` in
    the library) that no media of ``kinds`` (``ref_kinds``) reads (``OPTION_MEDIA``), as a ``NotApplied``; None when
    each applies. Fields not in ``OPTION_MEDIA`` apply to every kind. Raises nothing."""
    for name, option in given.items():
        applies = OPTION_MEDIA.get(name, ANY_KIND)
        if not applies & kinds:
            return NotApplied(name, option, applies)
    return None


def check_options_apply(given: Mapping[str, str], kinds: frozenset[str] | set[str]) -> None:
    """Refuse the first option of ``given`` that no media of ``kinds`` reads (``not_applied``, the one rule), rather
    than send it to be silently ignored: OptionNotAppliedError (a UsageError, exit 2) "--fps applies to videos
    only", with a hint to leave it out, and the refusal as data (``.refusal``). Raises nothing otherwise."""
    refusal = not_applied(given, kinds)
    if refusal is not None:
        raise refusal.error()


def pages_not_applied(pages: object, refs: list[str] | tuple[str, ...], option: str = "pages") -> NotApplied | None:
    """``check_pages_apply``'s refusal as data, or None. Raises nothing."""
    return not_applied({"pages": option}, ref_kinds(refs)) if pages else None


def video_options_not_applied(
    given: list[str], refs: list[str] | tuple[str, ...], *, frames: bool = False
) -> NotApplied | None:
    """``check_video_options_apply``'s refusal as data, or None. Raises nothing."""
    fields = {("video_as" if "video" in g.replace("-", "_") else "fps"): g for g in given}
    return not_applied(fields, ref_kinds(refs, frames=frames)) if fields else None


def check_pages_apply(pages: object, refs: list[str] | tuple[str, ...], option: str = "pages") -> None:
    """``pages`` (a PDF's page selection; None or "" means not given) where no reference is a PDF, or might be
    one (a remote URL's kind is not known here): a UsageError (exit 2) naming ``option`` (``"--pages"`` on the
    CLI, ``"--page"`` for ``ground``), rather than silently nothing (``check_options_apply``)."""
    refusal = pages_not_applied(pages, refs, option)
    if refusal is not None:
        raise refusal.error()


def check_video_options_apply(given: list[str], refs: list[str] | tuple[str, ...], *, frames: bool = False) -> None:
    """Options that only a video reads (``given``: their names as the caller's user spells them, e.g.
    ``["--fps"]``, ``["--video-as"]``; empty when none was given) where no reference is a video, or might be one
    (a remote URL: its kind is not known here), nor, with ``frames`` (``events``: frame images are a video), a
    list of several images (which takes ``fps`` but cannot be sent whole: ``video_as``): a UsageError (exit 2)
    naming the first, rather than silently nothing (``check_options_apply``). Raises nothing otherwise."""
    refusal = video_options_not_applied(given, refs, frames=frames)
    if refusal is not None:
        raise refusal.error()


def ftyp_brands(data: bytes) -> set[bytes]:
    """The major and compatible brands of an ISO-BMFF ``ftyp`` box at the start of ``data`` (empty if none)."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return set()
    size = int.from_bytes(data[:4], "big")
    end = min(max(size, 16), len(data), 256)
    brands = {data[8:12]}
    brands.update(data[i : i + 4] for i in range(16, end - 3, 4))
    return brands


# Magic numbers of raster images, so that a damaged or cut-short one still counts as the user's picture
# (``held_media``); Pillow identifies the intact ones and every other format it reads.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")


def held_media(path: str | os.PathLike[str]) -> str | None:
    """What media an existing local file holds, by its bytes (never its name): ``"a PDF"``, ``"a video
    (video/mp4)"``, ``"an image (JPEG)"``; None for a file that holds none (text, JSON, CSV, an empty file),
    or that is missing, not a regular file or unreadable. Magic numbers (``sniff``) first, then Pillow (which
    reads only the header); a JPEG, PNG, GIF, TIFF or WebP cut short still counts. Used before an output file
    would replace a file (``qwenvl.outputs.check_outputs``). Raises nothing."""
    try:
        with open_regular(Path(path)) as fh:
            head = fh.read(HEAD_BYTES)
    except (OSError, MediaError, ValueError):
        return None
    kind = sniff(head)
    if kind == "application/pdf":
        return "a PDF"
    if kind is not None and kind.startswith("video/"):
        return f"a video ({kind})"
    if kind is not None and kind.startswith("image/"):
        return f"an image ({kind.removeprefix('image/').upper().replace('+XML', '')})"
    if not head:
        return None
    import warnings

    from PIL import Image  # only here: the rest of this module never decodes images

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(Path(path)) as img:
                return f"an image ({img.format})" if img.format else "an image"
    except Exception:  # whatever Pillow raises on bytes that are no image it knows
        pass
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "an image"  # damaged or cut short: still the user's picture
    return None


# The hint of every file that starts as a format qwenvl reads but is cut short or damaged (an image, a PDF, a video):
# the file itself is the fault, not its format.
DAMAGED_HINT = "The file is incomplete or corrupt (an unfinished download or copy?); download, copy or export it again."


def sniff(data: bytes) -> str | None:
    """A MIME type from magic numbers for the non-image kinds we handle (video, PDF, SVG, text); else None.
    HEIF/HEIC and AVIF files share the ``ftyp`` box with MP4: they are named ``image/heif`` / ``image/avif``.

    Images are identified by Pillow (see ``qwenvl.media.images``), which knows every format the service
    accepts.
    """
    head = data[:64]
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brands = ftyp_brands(data)
        if brands & AVIF_BRANDS:  # still images in an ISO-BMFF box, not videos
            return "image/avif"
        if brands & HEIF_BRANDS:
            return "image/heif"
        brand = head[8:12]
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in data[:4096] else "video/x-matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    if head.startswith(b"FLV"):
        return "video/x-flv"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "video/x-ms-wmv"
    text_head = data[:1024].lstrip()
    if text_head.startswith(b"<?xml") or text_head[:4].lower() == b"<svg":
        return "image/svg+xml" if b"<svg" in data[:4096].lower() else "text/xml"
    return None
