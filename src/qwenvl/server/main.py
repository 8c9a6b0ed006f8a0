"""Build the served app from a plain configuration (a dict that the CLI passes to every uvicorn worker).

Keys: ``backend`` ("dashscope" today; local backends plug in through ``make_client``), ``backend_options``
(keyword arguments for the client: ``protocol``, ``region``, ``base_url``, ``model``...), ``settings``
(``ServeSettings`` fields), ``upload_dir``, ``upload_ttl_s``.
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
    settings = ServeSettings(**config.get("settings", {}))
    uploads = UploadStore(config.get("upload_dir"), ttl_s=float(config.get("upload_ttl_s", 48 * 3600)))
    client = make_client(config.get("backend", "dashscope"), config.get("backend_options", {}))
    return create_app(client, settings, uploads=uploads)


def app_from_env() -> Any:
    """uvicorn's factory for ``--workers N``: the configuration travels in $QWENVL_SERVE_CONFIG."""
    return app_from_config(qenv.serve_config())
