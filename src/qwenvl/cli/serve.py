"""`qwenvl serve`: the DashScope API, both protocols, in front of a backend (see qwenvl.server)."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape

from qwenvl import env as qenv
from qwenvl._constants import (
    SERVE_CUT_S,
    SERVE_GRACE_S,
    SERVE_MAX_BODY_BYTES,
    SERVE_MAX_CONCURRENT_PER_KEY,
    SERVE_MAX_MEDIA_ITEMS,
    SERVE_PORT,
    SERVE_REQUEST_TIMEOUT_S,
)
from qwenvl.cli.common import FILE_NAME, Seconds, Verb, err_console, not_dash, pass_opts
from qwenvl.config import (
    BACKENDS,
    DEFAULT_OPENAI_BASE_URL,
    DEVICES,
    DTYPES,
    ENGINES,
    FAMILIES,
    check_backend_options,
    normalize_backend,
    openai_base_url,
    resolve_base_url,
)
from qwenvl.errors import UsageError, safe_line
from qwenvl.server.security import SERVE_KEY_ENV, is_loopback, is_own_address, listen

MIB = 1024 * 1024  # --max-body-mb counts mebibytes


@click.command(cls=Verb)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS, case_sensitive=False),
    help="What answers: DashScope (a gateway to the cloud; the default, or $QWENVL_BACKEND), an OpenAI-compatible "
    "engine (--upstream), or a model in process (--model).",
)
@click.option(
    "-m",
    "--model",
    "backend_model",
    metavar="NAME",
    help="The backend's model: a DashScope model name, the engine's "
    "served name, or a hub id / folder for transformers (default $QWENVL_MODEL).",
)
@click.option(
    "--upstream",
    metavar="URL",
    help="The OpenAI-compatible engine's base URL (--backend openai; default $QWENVL_OPENAI_BASE_URL, else "
    f"{DEFAULT_OPENAI_BASE_URL}), or the DashScope endpoint for the gateway (default: the region's). Never this "
    "server's own address.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES, case_sensitive=False),
    help="The upstream engine (--backend openai; default auto).",
)
@click.option("--host", metavar="HOST", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    metavar="PORT",
    default=SERVE_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="0: any free port. (Not 8000: that is vLLM's, the default --upstream.)",
)
@click.option(
    "--api-key", metavar="KEY", help=f"The key clients must send (Authorization: Bearer); or ${SERVE_KEY_ENV}."
)
@click.option("--no-auth", is_flag=True, help="Accept requests without a key (only on a loopback address).")
@click.option(
    "--served-model-name",
    "--model-name",
    "model_names",
    multiple=True,
    metavar="NAME",
    help="A model name clients send, listed by /v1/models (repeatable); default: any name for the DashScope "
    "gateway, the engine's served name, or for transformers the model folder's name (its path is accepted too) "
    "or hub id. Other names get 404 model_not_found.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Server processes (the gateway and engine backends; an in-process model takes 1).",
)
@click.option(
    "--allow-private-urls",
    is_flag=True,
    help="Fetch media URLs that resolve to private, loopback or link-local addresses.",
)
@click.option(
    "--max-body-mb",
    type=click.IntRange(min=1),
    default=SERVE_MAX_BODY_BYTES // MIB,
    show_default=True,
    help="Largest request body, in MiB.",
)
@click.option(
    "--max-images",
    type=click.IntRange(min=1),
    default=SERVE_MAX_MEDIA_ITEMS,
    show_default=True,
    help="Images and videos in one request.",
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(min=1),
    default=SERVE_MAX_CONCURRENT_PER_KEY,
    show_default=True,
    help="Concurrent requests per key (429 with Retry-After beyond).",
)
@click.option(
    "--request-timeout",
    type=Seconds(min=1, min_open=False),
    default=SERVE_REQUEST_TIMEOUT_S,
    show_default=True,
    help="Seconds one request may take, streaming included.",
)
@click.option(
    "--upload-dir",
    type=FILE_NAME,
    metavar="DIR",
    callback=not_dash("Give the folder's path, or leave --upload-dir out for a private temporary folder."),
    help="Folder for the temporary uploads (default: a private temporary folder).",
)
@click.option(
    "--batch-dir",
    type=FILE_NAME,
    metavar="DIR",
    callback=not_dash("Give the folder's path, or leave --batch-dir out for the default."),
    help="Folder for the Batch API's files and jobs, kept across restarts (default: serve-batches in qwenvl's data "
    "folder).",
)
@click.option(
    "--batch-concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    help="Batch API lines answered at once, in the background, each in one of the key's --max-concurrent slots "
    "(default: half of them; below --max-concurrent, so interactive requests keep one).",
)
@click.option("--protocol", type=click.Choice(["compat", "native"]), help="Gateway: the protocol to the cloud.")
@click.option(
    "--family",
    type=click.Choice(FAMILIES, case_sensitive=False),
    help="A local model's family when its name does not say.",
)
@click.option(
    "--device", type=click.Choice(DEVICES), help="--backend transformers: where the model runs (default auto)."
)
@click.option("--dtype", help=f"--backend transformers: the weights' precision: {', '.join(DTYPES)} (default auto).")
@click.option("--attn-implementation", help="--backend transformers: sdpa, eager, flash_attention_2...")
@click.option("--region", metavar="REGION", help="Gateway: the DashScope region (cn, intl, us).")
@pass_opts
def serve(opts: dict[str, Any]) -> None:
    """Serve the DashScope API (both protocols) so the official SDKs run unchanged against any backend.

    \b
    A gateway to DashScope (cache, usage log):
      qwenvl serve --api-key sk-local-123
    In front of a local engine:
      qwenvl serve --backend openai --upstream http://127.0.0.1:8000/v1 \\
          --model qwen2.5-vl --no-auth
    Then: OpenAI(base_url="http://127.0.0.1:8100/compatible-mode/v1",
                 api_key="sk-local-123")
    or:   dashscope.base_http_api_url = "http://127.0.0.1:8100/api/v1"
    The Batch API (client.files.create, client.batches.create...) runs
    the jobs here, in the background, kept in --batch-dir.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UsageError("qwenvl serve needs its extra", hint='pip install "qwenvl[serve]"') from None
    api_key = opts["api_key"] or qenv.serve_api_key()
    if opts["no_auth"]:
        if opts["api_key"]:
            raise UsageError(
                "--api-key and --no-auth contradict each other: give one",
                hint="Keep --api-key to require a key, or --no-auth for none.",
            )
        if not is_loopback(opts["host"]):
            raise UsageError(
                f"--no-auth serves only a loopback address, not {opts['host']}",
                hint="Set --api-key (or $QWENVL_SERVE_API_KEY) to listen on other addresses.",
            )
        api_key = None
    elif not api_key:
        raise UsageError(
            "qwenvl serve needs an API key for its clients",
            hint=f"Pass --api-key KEY or set ${SERVE_KEY_ENV}; or --no-auth on a loopback address.",
        )
    from qwenvl.server.app import ServeSettings

    # the settings' own rules (the Batch API's share of the key's slots), checked before anything is asked (exit 2)
    ServeSettings(max_concurrent_per_key=opts["max_concurrent"], batch_concurrency=opts["batch_concurrency"])
    # the backend and its model as every verb reads them: the flag, else $QWENVL_BACKEND / $QWENVL_MODEL
    backend = normalize_backend(opts["backend"])
    model = opts["backend_model"] or (qenv.model() if backend != "dashscope" else None)
    given = {
        "protocol": opts["protocol"],
        "region": opts["region"],
        "base_url": opts["upstream"],
        "engine": opts["engine"],
        "family": opts["family"],
        "device": opts["device"],
        "dtype": opts["dtype"],
        "attn_implementation": opts["attn_implementation"],
    }
    check_backend_options(backend, given, flags={"base_url": "--upstream"})  # exit 2: not this backend's option
    upstream = _upstream(backend, opts)
    if upstream and is_own_address(upstream, opts["host"], opts["port"]):
        raise UsageError(
            f"--upstream {upstream} is this server's own address ({opts['host']}:{opts['port']}): "
            "it would send every request to itself",
            hint="The engine and this server need two addresses: point the upstream at the engine, and listen "
            f"on another port (the default is {SERVE_PORT}).",
        )
    options: dict[str, Any] = {}
    if backend == "dashscope":
        from qwenvl.config import require_api_key

        require_api_key()  # the gateway's own key for the cloud, checked before listening
        options = {
            k: v
            for k, v in (
                ("protocol", opts["protocol"]),
                ("region", opts["region"]),
                ("base_url", opts["upstream"]),
                ("model", opts["backend_model"]),
            )
            if v
        }
    else:
        options = {k: v for k, v in given.items() if v and k not in ("protocol", "region")}
        if model:
            options["model"] = model
        if backend == "transformers" and not model:
            raise UsageError(
                "--backend transformers needs --model: a hub id or a model folder",
                hint="For example --model Qwen/Qwen3-VL-2B-Instruct, or a local folder.",
            )
        if opts["workers"] > 1 and backend == "transformers":
            raise UsageError(
                "--workers must be 1 with --backend transformers (one model per process)",
                hint="Leave out --workers, or run several servers on different ports.",
            )
    if opts["batch_dir"]:
        _check_batch_dir(opts["batch_dir"])
    # a local backend is checked before listening (exit 2: torch missing, not a model, a name not served)
    from qwenvl.backends import preflight

    served, warning = preflight(backend, options)
    if warning:
        err_console().print(f"[yellow]warning:[/] {escape(safe_line(warning))}", highlight=False, soft_wrap=True)
    # the names clients send: --model-name ones (mapped to the backend's model); none: any name passed on to the
    # cloud, or for a local backend the name of the model it serves (another name: 404 model_not_found)
    target = model if backend != "dashscope" else None
    if any(not name.strip() for name in opts["model_names"]):
        raise UsageError(
            "--served-model-name / --model-name is empty: give the name clients send as their model",
            hint="Give a name, e.g. --served-model-name qwen3-vl, or leave it out.",
        )
    names = opts["model_names"] or ((served,) if served else ())
    # the folder given to --model stays accepted beside the name it is served under (as documented before), unlisted
    unlisted = [target] if backend == "transformers" and not opts["model_names"] and target not in names else []
    config = {
        "backend": backend,
        "backend_options": options,
        "upload_dir": opts["upload_dir"],
        "batch_dir": opts["batch_dir"],
        "settings": {
            "api_key": api_key,
            "model_map": {n: target for n in [*names, *unlisted]},
            "unlisted_models": unlisted,
            "pass_model_names": backend == "dashscope",
            "fetch_urls": backend != "dashscope",
            "allow_private_urls": opts["allow_private_urls"],
            "max_body_bytes": opts["max_body_mb"] * MIB,
            "max_media_items": opts["max_images"],
            "max_concurrent_per_key": opts["max_concurrent"],
            "request_timeout_s": opts["request_timeout"],
            "batch_concurrency": opts["batch_concurrency"],
        },
    }
    qenv.set_serve_config(config)
    sock = listen(opts["host"], opts["port"])  # bound before the banner: its port is real, clients may connect
    host, port = sock.getsockname()[:2]
    where = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    err_console().print(
        f"qwenvl serve ({backend}) on {where}: compatible-mode {where}/compatible-mode/v1, "
        f"native {where}/api/v1, playground {where}/",
        highlight=False,
        soft_wrap=True,
    )
    uv_config = uvicorn.Config(
        "qwenvl.server.main:app_from_env",
        factory=True,
        workers=opts["workers"],
        log_level="warning",
        # one budget for the whole shutdown (ServeSettings.shutdown_grace_s): the requests and Batch API lines in
        # flight until its last SERVE_CUT_S seconds, which are for what is cut then
        timeout_graceful_shutdown=SERVE_GRACE_S - SERVE_CUT_S,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(uv_config)
    try:  # the socket is handed over as a TCP socket (uvicorn's fd= would take it for a Unix one: no TCP_NODELAY)
        if opts["workers"] == 1:
            from qwenvl.cli.signals import ends_as_its_signal, hangup_stops

            # the exit code says the signal that stopped it (130, 143, 129), also one ignored at start (cli.signals)
            with ends_as_its_signal(server), hangup_stops(server.handle_exit):  # a closed terminal: as SIGTERM
                server.run(sockets=[sock])
        else:  # SIGTERM and SIGHUP stop every worker gracefully, then exit 128 + the signal (server.main)
            from qwenvl.server.main import run_workers

            run_workers(uv_config, [sock])
    finally:
        sock.close()


def _check_batch_dir(raw: str) -> None:
    """--batch-dir is a folder this process can write (made if missing), checked before listening: UsageError
    (exit 2) for a file, or a folder that cannot be made or written."""
    import os
    from pathlib import Path

    folder = Path(raw).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(
            f"--batch-dir {raw} is a file, not a folder",
            hint="Give a folder (made if missing), or leave --batch-dir out for the default.",
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"--batch-dir {raw}: cannot be made ({exc.strerror or exc})",
            hint="Give a folder this user can write, or leave --batch-dir out for the default.",
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(
            f"--batch-dir {raw}: this user cannot write in it",
            hint="Give a folder this user can write, or leave --batch-dir out for the default.",
        )


def _upstream(backend: str, opts: dict[str, Any]) -> str | None:
    """The base URL the backend would call (as its client resolves it: the flag, else the variables, else the
    default), or None for a model in process."""
    if backend == "openai":
        return openai_base_url(opts["upstream"])
    if backend == "dashscope":
        from qwenvl.config import effective_protocol

        protocol = effective_protocol(opts["protocol"])
        return resolve_base_url(protocol, region=opts["region"], base_url=opts["upstream"])
    return None
