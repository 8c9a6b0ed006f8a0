"""The usage log: one row per request the library sends, in SQLite under the data folder.

Written by the library (``Client``/``AsyncClient`` ``send`` and ``send_stream``, and the Batch API merge),
never by the CLI, so every verb and every program that uses qwenvl is counted. Each row: time, model,
protocol, outcome (``ok``, ``cached`` for an answer from the local cache, or the error's type), HTTP status
and service code of an error, input/output/image tokens, the estimated cost and its currency (CNY in
Beijing, USD in Singapore and Virginia: ``qwenvl.models.estimate_cost``), latency and request id.
Prompts and answers are not kept. Rows are committed by a background thread in groups, within
milliseconds (``flush()`` waits for them; it also runs at exit): a hundred threads logging at once cost one
commit, and a request never waits on the disk.

``$QWENVL_LOG=0`` (or ``false``/``off``/``no``) turns it off. The file is ``usage.db`` in qwenvl's data folder
(``qwenvl.sessions.home()``). A log that cannot be written is skipped silently: it never fails a request.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from qwenvl.batch.db import BackgroundWriter, SharedConnection

log = logging.getLogger(__name__)

ENV_SWITCH = "QWENVL_LOG"
FILENAME = "usage.db"


def m001_requests(conn: sqlite3.Connection) -> None:
    conn.execute("""CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        model TEXT,
        protocol TEXT,
        outcome TEXT NOT NULL,
        status INTEGER,
        code TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        image_tokens INTEGER,
        cost REAL,
        latency_s REAL,
        request_id TEXT)""")
    conn.execute("CREATE INDEX requests_time ON requests (time)")


def m002_currency(conn: sqlite3.Connection) -> None:
    """The currency of ``cost`` (rows written before it are CNY: every cost was then)."""
    conn.execute("ALTER TABLE requests ADD COLUMN currency TEXT")
    conn.execute("UPDATE requests SET currency = 'CNY' WHERE cost IS NOT NULL")


MIGRATIONS = [m001_requests, m002_currency]
_DB = SharedConnection(MIGRATIONS)
_WRITER = BackgroundWriter(_DB)


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def log_path() -> Path:
    from qwenvl.sessions import home

    return home() / FILENAME


_PATHS: dict[tuple[str | None, ...], str] = {}


def _log_file() -> str:
    """log_path() as a string, remembered per environment (it is resolved for every request)."""
    env = (os.environ.get("QWENVL_HOME"), os.environ.get("HOME"), os.environ.get("XDG_DATA_HOME"))
    path = _PATHS.get(env)
    if path is None:
        path = _PATHS[env] = str(log_path())
    return path


@dataclass
class Entry:
    model: str | None
    protocol: str | None
    outcome: str  # "ok" | "cached" | an error type such as "RateLimitError"
    input_tokens: int | None = None
    output_tokens: int | None = None
    image_tokens: int | None = None
    cost: float | None = None
    latency_s: float | None = None
    request_id: str | None = None
    status: int | None = None
    code: str | None = None
    currency: str | None = None  # of cost: "CNY" | "USD"
    time: float = 0.0


_COLUMNS = tuple(f.name for f in fields(Entry))
_INSERT = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


def record(entry: Entry) -> None:
    if not enabled():
        return
    entry.time = entry.time or time.time()
    _WRITER.submit(_log_file(), _INSERT, tuple(getattr(entry, name) for name in _COLUMNS))


def flush() -> None:
    """Wait until every row recorded so far is committed (``record`` only queues it)."""
    _WRITER.flush()


def summarize(days: int = 30, *, now: float | None = None, path: Path | None = None) -> list[dict[str, Any]]:
    """Rows by local day, model and currency, newest day first: requests (sent), errors, cached answers,
    tokens, cost (in that row's ``currency``; a model used in two regions gives a row per currency)."""
    flush()
    path = path or log_path()
    if not path.exists():
        return []
    now = time.time() if now is None else now
    since = _local_midnight(now) - (max(days, 1) - 1) * 86400
    query = """
        SELECT date(time, 'unixepoch', 'localtime') AS day, model, coalesce(currency, 'CNY') AS currency,
               sum(outcome != 'cached') AS requests,
               sum(outcome NOT IN ('ok', 'cached')) AS errors,
               sum(outcome = 'cached') AS cached,
               coalesce(sum(CASE WHEN outcome = 'ok' THEN input_tokens END), 0) AS input_tokens,
               coalesce(sum(CASE WHEN outcome = 'ok' THEN output_tokens END), 0) AS output_tokens,
               coalesce(sum(CASE WHEN outcome = 'ok' THEN cost END), 0.0) AS cost
        FROM requests WHERE time >= ?
        GROUP BY day, model, coalesce(currency, 'CNY') ORDER BY day DESC, requests DESC, model, currency"""
    rows = _DB.run(path, lambda c: c.execute(query, (since,)).fetchall())
    return [dict(r) for r in rows]


def _local_midnight(ts: float) -> float:
    t = time.localtime(ts)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))
