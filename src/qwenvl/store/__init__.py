"""The stores: the response cache (``ResponseCache``), the usage log (``UsageLog``) and their SQLite plumbing
(``db``).

Stores are objects, owned by whoever uses them: a ``Client`` has its own (``Client(cache=...,
usage_log=...)``), a ``Batch`` shares one of each between its clients, a served app keeps one per app. Nothing
is module-global, so two clients (or two tests) never see each other's stores unless they are given the same.

The environment decides only the defaults, each read in one function here: ``default_cache_dir()``
(``$QWENVL_CACHE_DIR``), ``usage_log_enabled()`` (``$QWENVL_LOG``) and ``default_usage_log_path()`` (qwenvl's
data folder, ``$QWENVL_HOME``). ``open_cache`` and ``open_usage_log`` turn a client's argument into a store.
"""

from __future__ import annotations

import os
from pathlib import Path

from qwenvl import env
from qwenvl.errors import UsageError
from qwenvl.store.cache import ResponseCache
from qwenvl.store.usage import Entry, UsageLog

__all__ = [
    "Entry",
    "ResponseCache",
    "UsageLog",
    "default_cache_dir",
    "default_usage_log_path",
    "open_cache",
    "open_usage_log",
    "usage_log_enabled",
]

CacheArg = bool | str | os.PathLike[str] | ResponseCache | None
UsageLogArg = bool | str | os.PathLike[str] | UsageLog | None


def default_cache_dir() -> Path:
    """The response cache's folder: ``$QWENVL_CACHE_DIR``, else the platform's user cache folder
    (``~/.cache/qwenvl`` on Linux, from ``platformdirs``)."""
    return env.cache_dir()


def usage_log_enabled() -> bool:
    """Whether the library logs usage by default: yes unless ``$QWENVL_LOG`` is 0, false, off or no (another
    value is a UsageError naming the variable: ``qwenvl.env``)."""
    return env.usage_log_enabled()


def default_usage_log_path() -> Path:
    """``usage.db`` in qwenvl's data folder (``qwenvl.sessions.home()``: ``$QWENVL_HOME`` or the platform's)."""
    from qwenvl.sessions import home
    from qwenvl.store.usage import FILENAME

    return home() / FILENAME


def open_cache(cache: CacheArg) -> ResponseCache | None:
    """``Client(cache=...)``: None or False = no cache, True = ``responses.db`` in ``default_cache_dir()``, a
    path = that file, a ``ResponseCache`` = that cache (shared with whoever else holds it). Raises UsageError
    for anything else. A cache that cannot be written is said once (a ``qwenvl`` warning) and skipped."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return ResponseCache()
    if isinstance(cache, ResponseCache):
        return cache
    if not isinstance(cache, str | os.PathLike):
        raise UsageError(
            f"cache={cache!r}: give True, False, a path or a ResponseCache",
            hint="Give cache=True, False, a path or a ResponseCache.",
        )
    return ResponseCache(Path(cache))


def open_usage_log(usage_log: UsageLogArg) -> UsageLog | None:
    """``Client(usage_log=...)``: None = the default (``default_usage_log_path()``, unless
    ``usage_log_enabled()`` says off), True = the default file whatever the environment says, False = no log,
    a path = that file, a ``UsageLog`` = that log (shared with whoever else holds it). Raises UsageError for
    anything else. A log that cannot be written is said once (a ``qwenvl`` warning) and skipped."""
    if usage_log is None:
        return UsageLog() if usage_log_enabled() else None
    if usage_log is False:
        return None
    if usage_log is True:
        return UsageLog()
    if isinstance(usage_log, UsageLog):
        return usage_log
    if not isinstance(usage_log, str | os.PathLike):
        raise UsageError(
            f"usage_log={usage_log!r}: give True, False, None, a path or a UsageLog",
            hint="Give usage_log=True, False, None, a path or a UsageLog.",
        )
    return UsageLog(Path(usage_log))
