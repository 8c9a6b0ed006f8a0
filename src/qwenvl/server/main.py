"""Build the served app from a plain configuration (a dict that the CLI passes to every uvicorn worker).

Keys: ``backend`` ("dashscope" today; local backends plug in through ``make_client``), ``backend_options``
(keyword arguments for the client: ``protocol``, ``region``, ``base_url``, ``model``...), ``settings``
(``ServeSettings`` fields), ``upload_dir``, ``upload_ttl_s``, ``batch_dir`` (the Batch API's state folder; default
``batches.default_folder()``), ``cache`` and ``usage_log`` (as for
``qwenvl.Client``: default no cache, and the usage log unless ``$QWENVL_LOG=0``).

Each app gets its own stores, made here (one per uvicorn worker process), never a module global.
"""

from __future__ import annotations

import signal
import socket
import threading
from typing import Any

from qwenvl import env as qenv
from qwenvl.server.app import ServeSettings, create_app
from qwenvl.server.batches import BatchStore
from qwenvl.server.uploads import UploadStore

CONFIG_ENV = qenv.SERVE_CONFIG_ENV


def make_client(backend: str, options: dict[str, Any]) -> Any:
    """The AsyncClient whose backend answers the served requests."""
    from qwenvl.client import AsyncClient

    if backend == "dashscope":
        return AsyncClient(**options)
    # local backends register under their names in qwenvl.backends (openai, transformers)
    return AsyncClient(backend=backend, **options)


def app_from_config(config: dict[str, Any]) -> Any:
    from qwenvl.store import open_cache, open_usage_log

    _one_line_per_cut_request()
    settings = ServeSettings(**config.get("settings", {}))
    uploads = UploadStore(config.get("upload_dir"), ttl_s=float(config.get("upload_ttl_s", 48 * 3600)))
    cache, usage_log = open_cache(config.get("cache")), open_usage_log(config.get("usage_log"))
    stores = [s for s in (cache, usage_log) if s is not None]
    options = {
        **config.get("backend_options", {}),
        "cache": False if cache is None else cache,
        "usage_log": False if usage_log is None else usage_log,
    }
    client = make_client(config.get("backend", "dashscope"), options)
    batches = BatchStore(config.get("batch_dir"))
    return create_app(client, settings, uploads=uploads, stores=stores, batches=batches)


def _one_line_per_cut_request() -> None:
    """uvicorn's "Cancel N running task(s), timeout graceful shutdown exceeded" is left out: each request the
    shutdown cuts is answered 503 and logged once, with its id, by the app (``qwenvl.server.app``)."""
    import logging

    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropCancelLine) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_DropCancelLine())


class _DropCancelLine:
    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith("Cancel %s running task(s)")


def app_from_env() -> Any:
    """uvicorn's factory for ``--workers N``: the configuration travels in $QWENVL_SERVE_CONFIG. In a worker
    process, SIGHUP stops the worker gracefully as SIGTERM does (``run_workers``)."""
    _hangup_stops_worker()
    return app_from_config(qenv.serve_config())


def _hangup_stops_worker() -> None:
    """In a worker (uvicorn calls the factory in its main thread, its SIGTERM handler already set), SIGHUP gets
    the SIGTERM handler: a closed terminal reaches every process of its group, and a worker left at the default
    died at once with its requests in flight. A SIGHUP that is ignored (``nohup``, inherited) or already handled
    (one process: ``qwenvl.cli.signals.hangup_stops``) is left alone."""
    hup = getattr(signal, "SIGHUP", None)
    if hup is None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(hup) is signal.SIG_DFL and callable(term := signal.getsignal(signal.SIGTERM)):
        signal.signal(hup, term)


def run_workers(config: Any, sockets: list[socket.socket]) -> None:
    """Run ``config.workers`` server processes (uvicorn's supervisor) until SIGINT, SIGTERM or SIGHUP, which stop
    every worker gracefully (each answers what it was asked, within ``timeout_graceful_shutdown``); then the signal
    is raised again with the handlers of before, so the caller ends as that signal says (the CLI: exit 128 + its
    number). uvicorn's own supervisor restarts its workers on SIGHUP instead, and exits 0 after a SIGTERM. A SIGHUP
    ignored when it starts (``nohup``) stays ignored, in the supervisor and (inherited) in its workers."""
    from uvicorn.supervisors.multiprocess import SIGNALS, Multiprocess, logger

    class Workers(Multiprocess):
        stopped_by: int | None = None

        def _stop(self, signum: int) -> None:
            logger.info("Received %s, stopping the workers.", signal.Signals(signum).name)
            self.stopped_by = signum
            self.should_exit.set()

        def handle_int(self) -> None:
            self._stop(signal.SIGINT)

        def handle_term(self) -> None:
            self._stop(signal.SIGTERM)

        def handle_hup(self) -> None:
            self._stop(signal.SIGHUP)

    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    workers = Workers(config, sockets=sockets)  # sets a handler for each of SIGNALS
    for sig, handler in before.items():
        if handler is signal.SIG_IGN:
            signal.signal(sig, signal.SIG_IGN)
    try:
        workers.run()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if workers.stopped_by is not None:
        signal.raise_signal(workers.stopped_by)
