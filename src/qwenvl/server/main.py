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


def check_backend(backend: str, options: dict[str, Any]) -> tuple[str | None, str | None]:
    """What ``qwenvl serve`` checks before it listens: (the model name a local backend serves, a warning or None).

    ``transformers``: torch and transformers import, and ``options["model"]`` is a Qwen-VL model folder or a
    hub id whose config can be had (UsageError, exit 2: not installed, not a folder, not an owner/name id, not a
    Qwen-VL model; APIConnectionError, exit 5: a hub id neither cached nor downloadable). The weights are
    loaded by the server once it listens (``/ready`` is 503 until then).
    ``openai``: the engine is asked once which models it serves; a model it does not serve, or none given when it
    serves several, is a UsageError. An engine that does not answer is not an error when ``model`` is given (it
    may start after the server: the warning says so, and ``/ready`` is 503 until it answers); without ``model``
    the served name cannot be known: UsageError. ``dashscope``: nothing to check here (None, None)."""
    from qwenvl.client import Client
    from qwenvl.errors import APIConnectionError, APITimeoutError, UsageError

    if backend == "dashscope":
        return None, None
    if backend == "transformers":
        from qwenvl.backends.transformers import check_installed

        check_installed()
    client = Client(backend=backend, **options, max_retries=0, cache=False, usage_log=False)
    try:
        return client.resolve_model().name, None
    except (APIConnectionError, APITimeoutError) as exc:
        if backend != "openai":
            raise
        url = getattr(client.backend, "base_url", None) or options.get("base_url")
        if not options.get("model"):
            raise UsageError(
                f"the engine at {url} does not answer, so the model it serves is unknown: {exc}",
                hint="Start the engine first, or give its served name with --model.",
            ) from None
        return options["model"], f"the engine at {url} does not answer yet ({exc}); /ready is 503 until it does"
    finally:
        client.close()


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
