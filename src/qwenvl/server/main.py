"""Build the served app from a plain configuration (a dict that the CLI passes to every uvicorn worker).

Keys: ``backend`` ("dashscope" today; local backends plug in through ``make_client``), ``backend_options``
(keyword arguments for the client: ``protocol``, ``region``, ``base_url``, ``model``...), ``settings``
(``ServeSettings`` fields), ``upload_dir``, ``upload_ttl_s``, ``cache`` and ``usage_log`` (as for
``qwenvl.Client``: default no cache, and the usage log unless ``$QWENVL_LOG=0``).

Each app gets its own stores, made here (one per uvicorn worker process), never a module global.
"""

from __future__ import annotations

from typing import Any

from qwenvl import env as qenv
from qwenvl.server.app import ServeSettings, create_app
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
    return create_app(client, settings, uploads=uploads, stores=stores)


def app_from_env() -> Any:
    """uvicorn's factory for ``--workers N``: the configuration travels in $QWENVL_SERVE_CONFIG."""
    return app_from_config(qenv.serve_config())
