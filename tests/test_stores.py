"""The stores belong to their owner: a client, a batch or a served app has its own cache and usage log, given
or made from the environment's defaults; nothing is module-global."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import qwenvl
from conftest import API_KEY, make_client
from dashscope_server import DashScopeServer
from qwenvl.batch import Batch, BatchItem
from qwenvl.store import (
    Entry,
    ResponseCache,
    UsageLog,
    default_cache_dir,
    default_usage_log_path,
    open_cache,
    open_usage_log,
    usage_log_enabled,
)


def logged(where: Path | UsageLog) -> list[str]:
    """The outcomes in a usage log file, as another reader sees them (a given log is flushed first: a client
    commits the rows of a log it opened when it closes, a log given to it is its owner's to flush)."""
    if isinstance(where, UsageLog):
        assert where.flush()
    path = where.path if isinstance(where, UsageLog) else where
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT outcome FROM requests ORDER BY id")]
    finally:
        conn.close()


def model_calls(server: DashScopeServer) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def test_each_client_writes_its_own_log(server, stores, tmp_path):
    _, log = stores
    other = UsageLog(tmp_path / "other.db")
    with make_client(server, usage_log=log) as a, make_client(server, usage_log=other) as b:
        assert a.usage_log is log and b.usage_log is other
        a.ask("one")
        a.ask("two")
        b.ask("three")
    assert logged(log) == ["ok", "ok"] and logged(other) == ["ok"]
    assert not default_usage_log_path().exists()  # the default file is not touched
    assert [r["requests"] for r in log.summarize(days=1)] == [2]
    other.close()


def test_a_given_store_is_shared_and_stays_its_owners(server, stores):
    cache, log = stores
    with make_client(server, cache=cache, usage_log=log) as a:
        first = a.ask("hello")
    with make_client(server, cache=cache, usage_log=log) as b:  # a was closed: the stores still work
        second = b.ask("hello")
    assert not first.cached and second.cached and model_calls(server) == 1
    assert len(cache) == 1
    assert logged(log) == ["ok", "cached"]
    assert not (default_cache_dir() / "responses.db").exists()


def test_async_client_records_into_its_own_log(server, stores):
    cache, log = stores

    async def main() -> qwenvl.Response:
        async with qwenvl.AsyncClient(
            api_key=API_KEY, base_url=server.url, cache=cache, usage_log=log, retry_backoff_s=0.01
        ) as c:
            await c.ask("hi")
            return await c.ask("hi")

    assert asyncio.run(main()).cached
    assert logged(log) == ["ok", "cached"]


def test_accepted_values(monkeypatch, tmp_path):
    assert open_cache(None) is None and open_cache(False) is None
    assert open_cache(True).path == default_cache_dir() / "responses.db"  # type: ignore[union-attr]
    assert open_cache(str(tmp_path / "c.db")).path == tmp_path / "c.db"  # type: ignore[union-attr]
    given = ResponseCache(tmp_path / "given.db")
    assert open_cache(given) is given
    assert open_usage_log(None).path == default_usage_log_path()  # type: ignore[union-attr]
    assert open_usage_log(False) is None
    assert open_usage_log(tmp_path / "u.db").path == tmp_path / "u.db"  # type: ignore[union-attr]
    log = UsageLog(tmp_path / "given.db")
    assert open_usage_log(log) is log
    monkeypatch.setenv("QWENVL_LOG", "off")
    assert not usage_log_enabled()
    assert open_usage_log(None) is None  # the environment decides the default only
    assert open_usage_log(True).path == default_usage_log_path()  # type: ignore[union-attr]
    monkeypatch.setenv("QWENVL_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"


def test_usage_log_true_logs_even_when_switched_off(server, monkeypatch):
    monkeypatch.setenv("QWENVL_LOG", "0")
    with make_client(server) as off, make_client(server, usage_log=True) as on:
        assert off.usage_log is None
        off.ask("x")
        on.ask("y")
    assert logged(default_usage_log_path()) == ["ok"]


def test_a_client_closes_only_the_stores_it_opened(server, stores):
    cache, log = stores
    with make_client(server, cache=True) as own:
        own.ask("x")
        assert own.cache is not None and own.cache._db._conn is not None
    assert own.cache._db._conn is None and own.usage_log._db._conn is None  # type: ignore[union-attr]
    with make_client(server, cache=cache, usage_log=log) as given:
        given.ask("x")
    assert log.flush() and cache._db._conn is not None and log._db._conn is not None  # still open


def test_batch_shares_one_cache_and_one_log(server, stores, tmp_path):
    cache, log = stores
    items = [BatchItem(id=str(n), request={"prompt": f"question {n % 3}"}) for n in range(6)]
    batch = Batch(
        items, tmp_path / "out.jsonl", api_key=API_KEY, base_url=server.url, cache=cache, usage_log=log, concurrency=4
    )
    assert batch.cache is cache and batch.usage_log is log and batch.planner.usage_log is log
    summary = batch.run()
    assert summary.ok == 6
    rows = logged(log)
    assert len(rows) == 6 and rows.count("ok") == model_calls(server) and len(cache) == 3
    assert not default_usage_log_path().exists()


def test_batch_without_a_log(server, tmp_path):
    items = [BatchItem(id="a", request={"prompt": "q"})]
    batch = Batch(items, tmp_path / "out.jsonl", api_key=API_KEY, base_url=server.url, usage_log=False, cache=False)
    assert batch.run().ok == 1 and batch.usage_log is None and batch.cache is None
    assert not default_usage_log_path().exists()


def test_rows_queued_at_exit_are_written(tmp_path):
    """No flush, no close: the writer's exit hook commits what was queued."""
    path = tmp_path / "exit.db"
    code = (
        "from qwenvl.store import Entry, UsageLog\n"
        f"log = UsageLog({str(path)!r})\n"
        "for n in range(50): log.record(Entry(model='m', protocol='compat', outcome='ok'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert logged(path) == ["ok"] * 50


def test_an_idle_writer_holds_no_thread(tmp_path):
    log = UsageLog(tmp_path / "idle.db")
    log.record(Entry(model="m", protocol="compat", outcome="ok"))
    assert log.flush()
    deadline = time.monotonic() + 60
    while log._writer._thread is not None:
        assert time.monotonic() < deadline, "the writer thread did not end"
        time.sleep(0.05)
    log.record(Entry(model="m", protocol="compat", outcome="ok"))  # a new one starts for the next rows
    assert log.flush() and logged(log) == ["ok", "ok"]
    log.close()


def test_the_writer_queue_is_bounded(tmp_path):
    """A writer far behind (here: stalled on its connection's lock) makes ``record`` wait for room instead of
    queueing rows without end; nothing is dropped once it catches up."""
    log = UsageLog(tmp_path / "bounded.db")
    log._writer.MAX_QUEUED = 3
    entry = Entry(model="m", protocol="compat", outcome="ok", time=1.0)
    with log._db._lock:  # the writer cannot write
        for _ in range(3):
            log.record(entry)
        fourth = threading.Thread(target=log.record, args=(entry,), daemon=True)
        fourth.start()
        fourth.join(0.5)
        assert fourth.is_alive()  # waiting for room
    fourth.join(30)
    assert not fourth.is_alive()
    assert logged(log) == ["ok"] * 4
    log.close()


def test_an_unwritable_log_never_fails_a_request(server, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with make_client(server, usage_log=blocker / "usage.db", cache=blocker / "c.db") as c:
        assert c.ask("x").text and c.ask("x").text
    assert model_calls(server) == 2


def test_each_served_app_has_its_own_stores(server, tmp_path):
    from qwenvl.server.main import app_from_config
    from test_serve import Served

    def config(log: Path) -> dict:
        return {
            "backend_options": {"api_key": API_KEY, "base_url": server.url, "retry_backoff_s": 0.01},
            "settings": {"api_key": "sk-serve"},
            "upload_dir": str(tmp_path / f"uploads-{log.stem}"),
            "usage_log": str(log),
        }

    first, second = tmp_path / "first.db", tmp_path / "second.db"
    app = app_from_config(config(first))
    assert app.state.client.usage_log.path == first
    with Served(app) as a, Served(app_from_config(config(second))) as b:
        for served, times in ((a, 2), (b, 1)):
            for _ in range(times):
                r = httpx.post(
                    served.url + "/compatible-mode/v1/chat/completions",
                    json={"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": "Bearer sk-serve"},
                    timeout=60,
                )
                assert r.status_code == 200, r.text
    assert logged(first) == ["ok", "ok"] and logged(second) == ["ok"]  # committed at shutdown
    assert not default_usage_log_path().exists()


def test_served_app_defaults_to_the_environment_log(server, tmp_path, monkeypatch):
    from qwenvl.server.main import app_from_config

    options = {"backend_options": {"api_key": API_KEY, "base_url": server.url}, "upload_dir": str(tmp_path / "u")}
    assert app_from_config(options).state.client.usage_log.path == default_usage_log_path()
    monkeypatch.setenv("QWENVL_LOG", "0")
    assert app_from_config(options).state.client.usage_log is None


@pytest.mark.parametrize("name", ["cache", "usagelog", "db", "exchange"])
def test_the_stores_left_batch(name):
    with pytest.raises(ModuleNotFoundError):
        __import__(f"qwenvl.batch.{name}")
    from qwenvl.batch import ResponseCache as exported  # the batch package still names the cache class

    assert exported is ResponseCache


def test_a_store_argument_of_the_wrong_kind_is_a_usage_error() -> None:
    with pytest.raises(qwenvl.UsageError, match="cache=123"):
        qwenvl.Client(cache=123)  # type: ignore[arg-type]
    with pytest.raises(qwenvl.UsageError, match=r"usage_log=1\.5"):
        qwenvl.Client(usage_log=1.5)  # type: ignore[arg-type]


def test_stores_that_cannot_be_written_are_said_once_and_the_answers_kept(
    server: DashScopeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    caplog.set_level("WARNING", logger="qwenvl")
    with qwenvl.Client(
        api_key=API_KEY, base_url=server.url, cache=blocker / "c.db", usage_log=blocker / "u.db"
    ) as client:
        for n in range(3):
            assert client.complete(prompt=f"hi {n}").text
        client.usage_log.flush()  # type: ignore[union-attr]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("response cache" in w and "cannot be written" in w for w in warnings) == 1
    assert sum("usage is not logged" in w for w in warnings) == 1


def test_the_cli_says_once_that_the_usage_log_cannot_be_written(server: DashScopeServer, tmp_path: Path) -> None:
    from conftest import run_cli

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    env = {"DASHSCOPE_API_KEY": API_KEY, "QWENVL_HOME": str(blocker / "home")}
    p = run_cli("ask", "-p", "hi", "--base-url", server.url, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("usage is not logged") == 1 and "Traceback" not in p.stderr
