"""The response cache: identical requests are answered locally instead of being paid for twice.

Opt-in for the library (``Client(cache=True)``), on by default for ``qwenvl batch`` (``--no-cache``).

The key is the SHA-256 of the account (``account_id``: a hash of the API key in use, the backend and its base
URL, so that two accounts, or a key and a local engine serving the same model name, never answer for each
other; the key itself is never stored), the protocol, the endpoint and the wire body exactly as it would be
sent, i.e. the protocol's ``build_body`` after media preparation: model, messages, every generation parameter
and the prepared media bytes themselves (local files travel as ``data:`` URLs). So a renamed copy of a photo
hits the cache, an edited photo or a changed ``max_tokens`` misses it, and a remote ``https://`` image is keyed
by its URL (the service fetches it; its content is not seen).
Sampling is not taken into account: a request with temperature > 0 is answered with the first answer.

Only whole, valid answers are stored (``storable``): never one cut off at ``max_tokens``, filtered or refused
(a ``finish_reason`` other than stop or tool calls), an empty one, nor a structured-output answer that failed
its check (the client says which answers passed it), so an error is never replayed: the next call asks the
model again. A replay is ``Response.cached`` with ``requests`` 0 (nothing paid). While one request is in
flight, an identical one in the same process waits for its answer instead of being paid twice
(``ResponseCache.claim``). The database is ``responses.db`` in ``$QWENVL_CACHE_DIR``, else the platform's user
cache folder (``~/.cache/qwenvl`` on Linux): ``qwenvl.store.default_cache_dir()``. Deleting the file empties
the cache. A cache that cannot be read or written is ignored: it never makes a request fail.

Each ``ResponseCache`` owns its connection (nothing is module-global): a client, a batch or a server app
keeps one, and two caches on one file share it safely through SQLite (WAL, busy timeout).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from qwenvl.errors import MediaError
from qwenvl.media.sources import classify
from qwenvl.plan import Call
from qwenvl.store.db import Database, warn_unwritable
from qwenvl.types import ImagePart, Response

log = logging.getLogger(__name__)

FILENAME = "responses.db"
KEY_VERSION = 2  # change when the key's inputs change, so that old entries are no longer found (2: the account)


def m001_responses(conn: sqlite3.Connection) -> None:
    conn.execute("""CREATE TABLE responses (
        key TEXT PRIMARY KEY,
        model TEXT,
        created REAL NOT NULL,
        response TEXT NOT NULL)""")


def m002_sources(conn: sqlite3.Connection) -> None:
    """Which answer a request with local files got, by file identity: lets an estimate see a hit unprepared."""
    conn.execute("""CREATE TABLE sources (
        source TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        created REAL NOT NULL)""")


MIGRATIONS = [m001_responses, m002_sources]


def cache_key(protocol: str, endpoint: str, body: dict[str, Any]) -> str:
    """The key of one wire request (see the module docstring for what is in it)."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": KEY_VERSION, "protocol": protocol, "endpoint": endpoint}, sort_keys=True).encode())
    h.update(b"\n")
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    h.update(text.encode("utf-8", "surrogatepass"))  # a file name that is not UTF-8 holds lone surrogates
    return h.hexdigest()


def account_id(api_key: str | None, backend: str, base_url: str | None) -> str:
    """Who answers and pays for a client's requests, as the cache tells accounts apart: the SHA-256 of the API
    key (``""`` for none), the backend's name and its base URL (the region's, for DashScope). Never the key
    itself: only this hash, itself hashed into each cache key (``for_account``), reaches the disk. Raises
    nothing."""
    who = json.dumps({"key": api_key or "", "backend": backend, "base_url": base_url or ""}, sort_keys=True)
    return hashlib.sha256(b"qwenvl-account\n" + who.encode("utf-8", "surrogatepass")).hexdigest()


def for_account(key: str, account: str) -> str:
    """``key`` (a ``cache_key`` or ``source_key``) for one ``account`` (``account_id``): the key the cache stores
    its answer under. Raises nothing."""
    return hashlib.sha256(f"{KEY_VERSION}\n{account}\n{key}".encode()).hexdigest()


# The finish reasons of a whole answer (OpenAI's and DashScope's words; None when the service gave none):
# "length" (cut off), "content_filter" and any other reason are not stored.
WHOLE_FINISH = (None, "stop", "tool_calls", "function_call")


def storable(response: Response) -> bool:
    """Whether ``response`` may be cached: a whole answer (``WHOLE_FINISH``) with text or tool calls. An answer
    cut off, filtered, refused or empty is an error outcome: asked again, never replayed. Raises nothing."""
    return response.finish_reason in WHOLE_FINISH and bool(response.text.strip() or response.tool_calls)


# Request fields that change how a request is sent, not what is asked.
_NOT_ASKED = {"max_retries", "retry_backoff_s", "timeout_s", "stream"}


def source_key(protocol: str, endpoint: str, call: Call) -> str:
    """A key of what was asked, with local files by identity (path, size, modification time) instead of
    content: computable without preparing the media, and different as soon as a file changes."""
    h = hashlib.sha256()
    asked = call.request.model_dump(mode="json", exclude=_NOT_ASKED)
    h.update(
        json.dumps(
            {"v": KEY_VERSION, "protocol": protocol, "endpoint": endpoint, "request": asked},
            sort_keys=True,
            ensure_ascii=False,
        ).encode("utf-8", "surrogatepass")  # a file name that is not UTF-8 holds lone surrogates
    )
    for message in call.history:
        for part in message.media():
            refs = part.image if isinstance(part, ImagePart) else part.video
            for ref in [refs] if isinstance(refs, str) else refs:
                h.update(b"\n" + _identity(ref).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _identity(ref: str) -> str:
    try:
        source = classify(ref)
    except MediaError:
        return ref
    if source.kind != "file" or source.path is None:
        return ref
    stat = source.path.stat()
    return f"file:{source.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


class ResponseCache:
    """A SQLite table of answers by request key. Safe to share between threads and processes.

    ``path``: the database file (created with its folder at first use); default ``responses.db`` in
    ``qwenvl.store.default_cache_dir()``. ``max_age_s``: older answers are not used (default: no limit)."""

    def __init__(self, path: str | Path | None = None, *, max_age_s: float | None = None) -> None:
        from qwenvl.store import default_cache_dir

        self.path = Path(path).expanduser() if path is not None else default_cache_dir() / FILENAME
        self.max_age_s = max_age_s
        self._db = Database(self.path, MIGRATIONS)
        self._warned = False
        # the keys of the requests in flight in this process, each with the future its waiters wait on (``claim``)
        self._inflight: dict[str, Future[BaseException | None]] = {}
        self._inflight_lock = threading.Lock()

    def claim(self, key: str) -> Future[BaseException | None] | None:
        """Claim the request ``key`` as in flight: None when it is now the caller's to send (it must call
        ``release(key)`` once its answer is stored or it failed), else the future of the identical request
        already in flight, done when that one is released: its result is the error it failed with, for its waiters
        to raise too (``release``), else None (then look again: its answer is cached, or it was cancelled and the
        first to claim again sends it). Threads and event loops alike (``asyncio.wrap_future``); one
        process only (see the README: two processes sending the same request at once both pay). Raises nothing."""
        with self._inflight_lock:
            found = self._inflight.get(key)
            if found is not None:
                return found
            self._inflight[key] = Future()
            return None

    def release(self, key: str, error: BaseException | None = None) -> None:
        """The request ``key`` claimed by the caller is no longer in flight: its waiters wake, told ``error`` (the
        error it failed with, which they raise too) or None (look again). Raises nothing."""
        with self._inflight_lock:
            found = self._inflight.pop(key, None)
        if found is not None and not found.done():
            found.set_result(error)

    def _unwritable(self, exc: BaseException) -> None:
        """Said once per cache (a warning: the CLI shows it on stderr); the answers are kept, not cached."""
        if not self._warned:
            self._warned = True
            warn_unwritable(self.path, exc, "the response cache", "answers are not cached")

    def close(self) -> None:
        """Close the connection (a later use opens it again)."""
        self._db.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    def get(self, key: str) -> Response | None:
        try:
            row = self._db.run(
                lambda c: c.execute("SELECT response, created FROM responses WHERE key = ?", (key,)).fetchone(),
            )
            if row is None or (self.max_age_s is not None and time.time() - row["created"] > self.max_age_s):
                return None
            response = Response.model_validate_json(row["response"])
        except (sqlite3.Error, OSError, ValueError) as exc:
            log.debug("response cache unreadable (%s): %s", self.path, exc)
            return None
        response.cached = True
        response._requests = 0  # nothing was paid for it now
        return response

    def __contains__(self, key: object) -> bool:
        try:
            row = self._db.run(lambda c: c.execute("SELECT created FROM responses WHERE key = ?", (key,)).fetchone())
        except (sqlite3.Error, OSError):
            return False
        return row is not None and (self.max_age_s is None or time.time() - row["created"] <= self.max_age_s)

    def put(self, key: str, response: Response) -> None:
        data = response.model_dump_json()
        try:
            self._db.run(
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO responses (key, model, created, response) VALUES (?, ?, ?, ?)",
                    (key, response.model, time.time(), data),
                ),
            )
        except (sqlite3.Error, OSError) as exc:
            self._unwritable(exc)

    def link(self, source: str, key: str) -> None:
        """Remember that the request known by ``source`` (see ``source_key``) was answered under ``key``."""
        try:
            self._db.run(
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO sources (source, key, created) VALUES (?, ?, ?)", (source, key, time.time())
                ),
            )
        except (sqlite3.Error, OSError) as exc:
            self._unwritable(exc)

    def has_source(self, source: str) -> bool:
        """Whether the request known by ``source`` has a (fresh) answer."""
        try:
            row = self._db.run(lambda c: c.execute("SELECT key FROM sources WHERE source = ?", (source,)).fetchone())
        except (sqlite3.Error, OSError):
            return False
        return row is not None and row["key"] in self

    def __len__(self) -> int:
        try:
            return int(self._db.run(lambda c: c.execute("SELECT count(*) FROM responses").fetchone()[0]))
        except (sqlite3.Error, OSError):
            return 0

    def clear(self) -> None:
        self._db.run(lambda c: c.execute("DELETE FROM responses"))
        self._db.run(lambda c: c.execute("DELETE FROM sources"))
