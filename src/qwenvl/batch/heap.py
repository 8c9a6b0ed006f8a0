"""Keep a long batch's heap from growing with its number of items (glibc's malloc only).

glibc's malloc serves a request of ``M_MMAP_THRESHOLD`` bytes or more (128 KiB at start) with its own
``mmap``, returned to the system by ``free``. The threshold is *dynamic*: each time such a block is freed, the
threshold rises to its size (up to 32 MiB) and the heap's trim threshold to twice that (``mallopt(3)``,
"M_MMAP_THRESHOLD"). From then on, blocks of that size come from the heaps, where a freed one stays in the
process (a hole, or a heap top that is no longer trimmed), and worker threads have heaps of their own.

A batch over many distinct files meets exactly that: CPython 3.11's ``pathlib`` interns every part of every
path (``sys.intern``), so each distinct file name enters the interpreter's table of interned strings and leaves
it when its last ``Path`` is gone; the table then fills with deleted slots and is rebuilt every few thousand
files, a ~2 MB block each time (measured with heaptrack: ``PyUnicode_InternInPlace`` -> ``dictresize``, 1.9 MB).
The first rebuild raises the threshold above 2 MB; every later one lands in the heap of whichever worker thread
interned a name, and the old table stays resident there: about 2 MB more RSS per rebuild, 10-18 MB over 90,000
files (``bench/bench_batch.py --case images``, ``--case folder``; bench/RESULTS.md, "Batch memory").

``steady_mmap_threshold`` sets the threshold once to glibc's own default, which also turns the dynamic
adjustment off (and the trim threshold back to its default): large blocks are always mapped and unmapped, so
they leave nothing behind. What it costs is one ``mmap``/``munmap`` pair per block of 128 KiB or more, which a
batch of small media rarely makes (its requests, answers and reads are smaller); a large image's Pillow blocks
would be mapped and faulted in afresh each time (about 15% more CPU for a 12 MP photo), so Pillow is let keep a
few freed blocks for reuse (``_keep_pillow_blocks``: then 8% less CPU than with the dynamic threshold, as fewer
pages are faulted in). A threshold the user chose
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``) is left alone, and so is any
other C library (musl, macOS, Windows: nothing is done).
"""

from __future__ import annotations

import ctypes
import sys
import threading

from qwenvl import env

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 128 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MIN and DEFAULT_TRIM_THRESHOLD
PILLOW_BLOCKS = 8  # freed Pillow image blocks kept for reuse once the thresholds are fixed (``_keep_pillow_blocks``)

_lock = threading.Lock()
_done = False


def steady_mmap_threshold() -> bool:
    """Fix glibc's mmap and trim thresholds at their defaults for this process (see the module), once; later
    calls do nothing. Returns whether they are fixed now (False: not glibc, or the user set them). Never raises."""
    global _done
    with _lock:
        if _done:
            return True
        if not sys.platform.startswith("linux") or env.malloc_thresholds_set():
            return False
        try:
            libc = ctypes.CDLL(None)
            mallopt = libc.mallopt
            if not _is_glibc(libc):
                return False
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        _done = bool(mallopt(M_MMAP_THRESHOLD, DEFAULT_THRESHOLD)) and bool(
            mallopt(M_TRIM_THRESHOLD, DEFAULT_THRESHOLD)
        )
        if _done:
            _keep_pillow_blocks()
        return _done


def _keep_pillow_blocks() -> None:
    """Let Pillow keep up to ``PILLOW_BLOCKS`` freed image blocks for reuse (its block allocator; 16 MB each), unless
    the user set ``PILLOW_BLOCKS_MAX``. With the thresholds fixed, every block of an image (a 12 MP decode is three)
    would otherwise be mapped and faulted in afresh: preparing a 12 MP photo took 248 ms of CPU and 49k page faults
    against 211 ms and 37k with the dynamic threshold; with the cache, 194 ms and 24k (bench/RESULTS.md, "Batch
    memory"). What it keeps is bounded (at most ``PILLOW_BLOCKS`` blocks), so memory stays flat."""
    if env.pillow_blocks_set():
        return
    from PIL import Image

    if Image.core.get_blocks_max() < PILLOW_BLOCKS:
        Image.core.set_blocks_max(PILLOW_BLOCKS)


def _is_glibc(libc: ctypes.CDLL) -> bool:
    try:
        version = libc.gnu_get_libc_version
    except AttributeError:  # musl has a mallopt that does nothing, and no gnu_get_libc_version
        return False
    version.restype = ctypes.c_char_p
    return bool(version())
