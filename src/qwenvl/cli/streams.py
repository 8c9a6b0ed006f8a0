"""Standard output and standard error when the other end misbehaves: a reader that left, a closed descriptor.

While a verb runs (``guarded_streams``, around ``QwenVLGroup.main`` and ``invoke``), ``sys.stdout`` and
``sys.stderr`` are wrapped so that:

- **stdout** that can no longer be written (its reader left: ``qwenvl ask ... | head -c1``, a pager quit early;
  or it was closed: ``>&-``) raises ``OutputClosed`` once, at the first write or flush that fails. It is a
  ``Terminated`` for SIGPIPE (``qwenvl.cli.signals``), so every verb's Ctrl-C handling applies unchanged: a
  stream is closed (and logged as ``cancelled``), a batch waits for its requests in flight and keeps them in its
  journal, the usage log is committed. The exit code is 141 (128 + SIGPIPE), what the shell reports for ``cat``,
  ``grep`` and every tool that SIGPIPE ends; nothing is said about a reader that left (``head`` users expect
  silence), one line on stderr about a stdout that was closed. Later writes are dropped (nobody can read them).
- **stderr** (diagnostics: errors, hints, notes, progress) that can no longer be written never changes what a
  verb does or its exit code: what cannot be written is dropped. An answer on stdout is still written, and an
  error still exits 2, 3, 4 or 5 with ``2>&-``.

Python ignores SIGPIPE (a write to a pipe without reader fails with EPIPE); this is where that failure is
handled, once. Sources: POSIX's default action for SIGPIPE (the process ends: the shell reports 128 + 13), and
Python's "Note on SIGPIPE" (``signal`` module documentation) for pointing stdout at ``os.devnull`` afterwards, so
that the interpreter's last flush does not fail again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import stat
import sys
from collections.abc import Iterator
from typing import IO, Any

from qwenvl.cli.signals import Terminated

SIGPIPE = int(getattr(signal, "SIGPIPE", 13))  # 13 on every POSIX system; Windows has no SIGPIPE
EXIT_OUTPUT_CLOSED = 128 + SIGPIPE  # 141
# write errors that mean "nobody can read this stream any more"
_GONE = frozenset({errno.EPIPE, errno.EBADF, errno.EINVAL, getattr(errno, "ESHUTDOWN", errno.EPIPE)})


class OutputClosed(Terminated):
    """Standard output can no longer be written: its reader left (``reader_left``, EPIPE) or it is closed.
    Ends the verb as SIGPIPE would, with the Ctrl-C handling of ``Terminated``; exit code 141."""

    def __init__(self, reader_left: bool) -> None:
        super().__init__(SIGPIPE)
        self.reader_left = reader_left

    @property
    def name(self) -> str:
        return "SIGPIPE"


class _Guarded:
    """A text stream (or None: the descriptor was closed when the process started) whose write failures are
    handled as the module doc says. Every other attribute is the wrapped stream's."""

    def __init__(self, stream: IO[str] | None, *, output: bool) -> None:
        self._stream = stream
        self._output = output
        self.failed: OutputClosed | None = None  # stdout: why it can no longer be written
        self.dropped = stream is None  # nothing more reaches the stream
        # stdout's descriptor, written whole by ``_write_all``: a buffered write that a reader leaving cuts short
        # (a 64 kB pipe, then EPIPE) reports success in CPython and drops the rest without an error
        self._fd = _descriptor(stream) if output else None
        self._pipe = self._fd is not None and _is_pipe(self._fd)  # only a pipe or socket has a reader that can leave

    def __getattr__(self, name: str) -> Any:
        if self._stream is None:
            raise AttributeError(name)
        return getattr(self._stream, name)

    def _gone(self, exc: OSError | None) -> None:
        self.dropped = True
        if self._output and self.failed is None:
            reader_left = exc is not None and exc.errno == errno.EPIPE
            self.failed = OutputClosed(reader_left=reader_left)
            if reader_left:
                _point_at_devnull(self._stream)
            raise self.failed

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # as a text stream does (click tells text from binary streams this way)
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not self.dropped:
            try:
                assert self._stream is not None
                if self._fd is None:
                    return self._stream.write(text)
                self._stream.flush()  # what went into the buffer before goes first
                _write_all(self._fd, text.encode(self.encoding, self.errors))
                return len(text)
            except (OSError, ValueError) as exc:  # ValueError: "I/O operation on closed file"
                if isinstance(exc, OSError) and exc.errno not in _GONE:
                    raise
                self._gone(exc if isinstance(exc, OSError) else None)
        elif self._output and self.failed is None:
            self._gone(None)  # closed from the start (>&-): said at the first write
        return len(text)

    def flush(self) -> None:
        if self.dropped:
            return
        try:
            assert self._stream is not None
            self._stream.flush()
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno not in _GONE:
                raise
            self._gone(exc if isinstance(exc, OSError) else None)

    def check_reader(self) -> None:
        """``OutputClosed`` (as a write would raise it) when stdout is a pipe or socket whose reader has already
        left; nothing otherwise, and no system call when stdout is a terminal or a file."""
        if self.failed is not None:
            raise self.failed
        if self.dropped or not self._pipe or self._fd is None or not _reader_left(self._fd):
            return
        self._gone(BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)))

    def finish(self, *, quietly: bool = False) -> None:
        """Flush what is buffered: ``OutputClosed`` when that finds the stream gone, unless ``quietly``."""
        try:
            self.flush()
        except OutputClosed:
            if not quietly:
                raise

    def isatty(self) -> bool:
        if self._stream is None:
            return False
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:
        return getattr(self._stream, "errors", None) or "strict"


def _descriptor(stream: IO[str] | None) -> int | None:
    """The file descriptor under ``stream``, or None (closed, or not a real file: a test's in-memory stream)."""
    try:
        return stream.fileno() if stream is not None else None
    except (OSError, ValueError, AttributeError):
        return None


def _is_pipe(fd: int) -> bool:
    """Whether ``fd`` is a pipe (FIFO) or a socket, looked at once."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _reader_left(fd: int) -> bool:
    """Whether the reader of the pipe or socket ``fd`` has gone, without writing or waiting: on Linux (and the
    BSDs) the write end of a pipe whose read end is closed polls POLLERR, a socket shut by its peer POLLHUP (poll(2),
    pipe(7)). False where ``select.poll`` is missing (Windows): the next write finds it instead."""
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        events = poller.poll(0)
    except OSError:
        return False
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in events)


def stop_if_reader_left() -> None:
    """Before a verb that writes its results as it goes pays for the next request: ``OutputClosed`` (exit 141,
    as a write would end it) when stdout's reader has already left (``qwenvl ocr doc.pdf | head -1``), so that
    nothing more is paid for output nobody can read. Nothing outside ``guarded_streams``, nor when stdout is a
    terminal or a file."""
    out = sys.stdout
    if isinstance(out, _Guarded):
        out.check_reader()


def _write_all(fd: int, data: bytes) -> None:
    """Every byte of ``data`` to ``fd``, write after write: a write cut short is followed by another, which
    raises BrokenPipeError (EPIPE) when the reader has left."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _point_at_devnull(stream: IO[str] | None) -> None:
    """The descriptor under ``stream`` (a pipe without reader) pointed at ``os.devnull``, so that what is still
    buffered, flushed when the interpreter exits, goes nowhere instead of failing again. Raises nothing."""
    try:
        fd = stream.fileno() if stream is not None else -1
    except (OSError, ValueError, AttributeError):  # not a real descriptor (a test's in-memory stream)
        return
    if fd < 0:
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


@contextlib.contextmanager
def guarded_streams() -> Iterator[_Guarded]:
    """While the block runs, ``sys.stdout`` and ``sys.stderr`` are guarded (see the module doc); yields the
    guarded stdout (``finish`` flushes it: its last bytes may be what finds the reader gone). Nested blocks share
    the outer guards. The previous streams are put back afterwards."""
    saved = sys.stdout, sys.stderr
    out = saved[0] if isinstance(saved[0], _Guarded) else _Guarded(saved[0], output=True)
    err = saved[1] if isinstance(saved[1], _Guarded) else _Guarded(saved[1], output=False)
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    try:
        yield out
    finally:
        sys.stdout, sys.stderr = saved
        with contextlib.suppress(OSError, ValueError):
            err.flush()
