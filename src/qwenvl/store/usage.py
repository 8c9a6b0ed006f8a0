"""The usage log: one row per request the library sends, in SQLite under the data folder.

Written by the library (``Client``/``AsyncClient`` ``send`` and ``send_stream`` into the client's own
``usage_log``, and the Batch API merge into the batch's), never by the CLI, so every verb and every program
that uses qwenvl is counted. Each row: time, model,
protocol, outcome (``ok``, ``cached`` for an answer from the local cache, ``cancelled`` for a request its caller
interrupted (Ctrl-C, a cancelled or timed-out task, a stream its reader stopped, one in flight at exit), or the
error's type, also for each attempt the transport retried: ``qwenvl.store.exchange``), HTTP status
and service code of an error, input/output/image tokens, the estimated cost and its currency (CNY in
Beijing, USD in Singapore and Virginia: ``qwenvl.models.estimate_cost``), latency and request id.
Prompts and answers are not kept. Rows are committed by a background thread in groups, within
milliseconds (``flush()`` waits for them): a hundred threads logging at once cost one commit, and a request
never waits on the disk. A log nobody closed (a script that never closes its client) is committed at exit,
before its connection is closed (``qwenvl.store.db``).

``$QWENVL_LOG=0`` (or ``false``/``off``/``no``) turns the default log off (``qwenvl.store.usage_log_enabled``).
The file is ``usage.db`` in qwenvl's data folder (``qwenvl.sessions.home()``). A log that cannot be written is
skipped silently: it never fails a request.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from qwenvl.models import PAID_PROTOCOLS
from qwenvl.store.db import BackgroundWriter, Database, problem, unusable

log = logging.getLogger(__name__)

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


def m003_maybe_billed(conn: sqlite3.Connection) -> None:
    """Whether a request that gave no answer may have been billed, its cost unknown: decided when its row is written
    (``qwenvl.store.exchange.may_be_billed``, the one rule). Rows written before it get it once, here, from what they
    hold: cancelled, or a failure that is no HTTP refusal (a time-out, a reply that broke off: the error types below
    ``APIError`` but not below ``APIStatusError`` as they were then), logged with no cost and no HTTP status."""
    conn.execute("ALTER TABLE requests ADD COLUMN maybe_billed INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "UPDATE requests SET maybe_billed = 1 WHERE outcome IN ('APIConnectionError', 'APIError', 'APITimeoutError', "
        "'MalformedResponseError', 'StreamInterruptedError', 'cancelled') AND cost IS NULL AND coalesce(status, 0) = 0"
    )


MIGRATIONS = [m001_requests, m002_currency, m003_maybe_billed]


@dataclass
class Entry:
    model: str | None
    protocol: str | None
    outcome: str  # "ok" | "cached" | "cancelled" (interrupted: tokens unknown) | an error type ("RateLimitError")
    input_tokens: int | None = None
    output_tokens: int | None = None
    image_tokens: int | None = None
    cost: float | None = None
    latency_s: float | None = None
    request_id: str | None = None
    status: int | None = None
    code: str | None = None
    currency: str | None = None  # of cost: "CNY" | "USD"
    maybe_billed: bool = False  # no answer, but it may have been billed: cost unknown (``exchange.may_be_billed``)
    time: float = 0.0


_COLUMNS = tuple(f.name for f in fields(Entry))
_INSERT = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


class UsageLog:
    """The usage log in one SQLite file: ``record`` queues a row (committed in the background within
    milliseconds), ``summarize`` reads them back. Safe to share between threads; each instance owns its
    connection and writer thread (nothing is module-global).

    ``path``: the database file (created with its folder at the first row); default ``usage.db`` in qwenvl's
    data folder (``qwenvl.store.default_usage_log_path()``). Whether the library logs at all by default
    (``$QWENVL_LOG``) is ``qwenvl.store.open_usage_log``'s business, not this class's."""

    def __init__(self, path: str | Path | None = None) -> None:
        from qwenvl.store import default_usage_log_path

        self.path = Path(path).expanduser() if path is not None else default_usage_log_path()
        self._db = Database(self.path, MIGRATIONS)
        self._writer = BackgroundWriter(self._db)

    def __repr__(self) -> str:
        return f"UsageLog({str(self.path)!r})"

    def record(self, entry: Entry) -> None:
        """Queue one row (``entry.time`` defaults to now). Never raises for a log that cannot be written."""
        entry.time = entry.time or time.time()
        self._writer.submit(_INSERT, tuple(getattr(entry, name) for name in _COLUMNS))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (at most ``timeout`` seconds) until every row recorded so far is committed; False on time-out."""
        return self._writer.flush(timeout)

    def close(self) -> None:
        """Commit what is queued and close the connection (a later use opens it again)."""
        self.flush()
        self._db.close()

    def summarize(self, days: int = 30, *, now: float | None = None) -> list[dict[str, Any]]:
        """Rows by local day, model and currency, newest day first: requests (sent), errors, cached answers,
        tokens, cost (in that row's ``currency``; a model used in two regions gives a row per currency), and
        ``local``. A local model's answers (a protocol outside ``qwenvl.models.PAID_PROTOCOLS``: the openai and
        transformers backends, and ``compat-local``/``native-local`` for a ``qwenvl serve`` in front of one,
        ``models.logged_protocol``) cost no money: their rows have ``local`` True and ``cost`` and ``currency``
        None. ``unpriced`` counts the answers of a paid protocol whose cost is unknown (the model has no price in
        the table): they are not in ``cost``, which is None (unknown, never 0.0) when no answer of the row had a
        known cost. ``maybe_billed`` counts the requests of a paid protocol that gave no answer but may have been
        billed (cancelled, or a time-out once delivered: ``qwenvl.store.exchange.may_be_billed``): their cost is
        unknown, not in ``cost``, which is None when nothing of the row had a known cost and something may have
        been paid; a refusal (4xx, 5xx) or a connection never made costs nothing. Cached answers are counted in
        ``cached`` and never in ``cost`` (nothing was paid for them). An
        absent file is an empty log (it is not created). Raises MediaError (``store.db.unusable``: naming the file
        and to move it aside) for a file that cannot be read: not SQLite, damaged, a folder, no permission."""
        self.flush()
        if not self.path.exists():
            return []
        now = time.time() if now is None else now
        since = _local_midnight(now) - (max(days, 1) - 1) * 86400
        paid = ", ".join("?" for _ in PAID_PROTOCOLS)
        query = f"""
            SELECT day, model, currency,
                   sum(outcome != 'cached') AS requests,
                   sum(outcome NOT IN ('ok', 'cached')) AS errors,
                   sum(outcome = 'cached') AS cached,
                   coalesce(sum(CASE WHEN outcome = 'ok' THEN input_tokens END), 0) AS input_tokens,
                   coalesce(sum(CASE WHEN outcome = 'ok' THEN output_tokens END), 0) AS output_tokens,
                   CASE WHEN currency IS NOT NULL
                         AND NOT (sum(outcome = 'ok' AND cost IS NULL) + sum(maybe_billed) > 0
                                  AND sum(outcome = 'ok' AND cost IS NOT NULL) = 0)
                        THEN coalesce(sum(CASE WHEN outcome = 'ok' THEN cost END), 0.0) END AS cost,
                   CASE WHEN currency IS NOT NULL THEN sum(outcome = 'ok' AND cost IS NULL) ELSE 0 END AS unpriced,
                   CASE WHEN currency IS NOT NULL THEN sum(maybe_billed) ELSE 0 END AS maybe_billed
            FROM (SELECT date(time, 'unixepoch', 'localtime') AS day, model, outcome, input_tokens, output_tokens,
                         cost, maybe_billed, CASE WHEN coalesce(protocol, 'compat') IN ({paid})
                                    THEN coalesce(currency, 'CNY') END AS currency
                  FROM requests WHERE time >= ?)
            GROUP BY day, model, currency ORDER BY day DESC, requests DESC, model, currency"""
        try:
            rows = self._db.run(lambda c: c.execute(query, (*PAID_PROTOCOLS, since)).fetchall())
        except (sqlite3.Error, OSError) as exc:
            raise unusable(self.path, problem(self.path, exc, "read")) from None
        # the currency of a row with no known cost stays in the log's grouping, but a cost unknown is no money: a
        # row whose answers all had no price shows cost None with "local" False ("unknown", never 0.0)
        return [{**dict(r), "local": r["currency"] is None} for r in rows]


def _local_midnight(ts: float) -> float:
    t = time.localtime(ts)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))
