"""`qwenvl mcp`: qwenvl's tools for agents over the Model Context Protocol (stdio, or streamable HTTP)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from qwenvl import env as qenv
from qwenvl.cli.common import (
    FILE_NAME,
    Verb,
    err_console,
    make_client,
    not_dash,
    pass_opts,
    request_fields,
    service_options,
)
from qwenvl.errors import UsageError, safe_line
from qwenvl.media.sources import check_folder
from qwenvl.server.security import is_loopback

INSTALL_HINT = 'pip install "qwenvl[mcp]"'


def load_server_module() -> Any:
    """``qwenvl.mcp_server``, or a usage error naming the extra when the ``mcp`` SDK is missing or too old."""
    try:
        from qwenvl import mcp_server
    except ImportError:
        from importlib.metadata import PackageNotFoundError, version
        from importlib.util import find_spec

        if find_spec("mcp") is None:
            raise UsageError(
                "qwenvl mcp needs the MCP SDK, which is not installed", hint=f"Install the extra: {INSTALL_HINT}"
            ) from None
        try:
            found = version("mcp")
        except PackageNotFoundError:
            found = "unknown"
        raise UsageError(
            f"qwenvl mcp needs mcp 2.3 or later, below 3 (installed: {found})",  # e.g. mcp 1.x
            hint=f"Upgrade it: {INSTALL_HINT} -U",
        ) from None
    return mcp_server


@click.command("mcp", cls=Verb)
@click.option(
    "--allow-dir",
    "allow_dirs",
    multiple=True,
    type=FILE_NAME,
    metavar="DIR",
    callback=not_dash("Give the folder's path, e.g. --allow-dir ~/photos (or --allow-dir . for this one)."),
    help="A folder whose files the tools may read (repeatable), besides the roots the client declares.",
)
@click.option(
    "--http",
    "http_port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (0: any free port).",
)
@click.option(
    "--host", metavar="HOST", default="127.0.0.1", show_default=True, help="Address to listen on (with --http)."
)
@click.option("--api-key", metavar="KEY", help="The bearer key HTTP clients must send (default $QWENVL_SERVE_API_KEY).")
@click.option("--no-auth", is_flag=True, help="Serve HTTP without a key (loopback hosts only).")
@service_options
@pass_opts
def mcp(opts: dict[str, Any]) -> None:
    """Serve qwenvl's tools to agents over MCP: ask, ground, ocr, extract, events, estimate.

    \b
    stdio (the default) for MCP hosts that start the server themselves:
      {"command": "qwenvl", "args": ["mcp", "--allow-dir", "/path/to/files"]}
    --http PORT for streamable HTTP at /mcp; a bearer key is required
    (--api-key or $QWENVL_SERVE_API_KEY) unless --no-auth, which only a
    loopback --host accepts.

    Local files are read only under the client's MCP roots and the --allow-dir folders. --model and the
    service options are the defaults for every tool call. Needs the extra: pip install "qwenvl[mcp]".
    """
    server_module = load_server_module()
    key = opts["api_key"] or qenv.serve_api_key()
    if opts["http_port"] is None:
        if opts["no_auth"] or opts["api_key"]:
            raise UsageError(
                "--api-key and --no-auth apply to --http only (stdio has no network to guard)",
                hint="Add --http HOST:PORT, or leave them out for stdio.",
            )
    else:
        if opts["no_auth"]:
            if opts["api_key"]:
                raise UsageError(
                    "--api-key and --no-auth contradict each other: give one",
                    hint="Keep --api-key to require a key, or --no-auth for none.",
                )
            if not is_loopback(opts["host"]):
                raise UsageError(
                    f"--no-auth is allowed on a loopback host only, not {opts['host']}",
                    hint="Set a key with --api-key or QWENVL_SERVE_API_KEY to listen there.",
                )
            key = None
        elif not key:
            raise UsageError(
                "the HTTP transport needs an API key",
                hint="Give --api-key KEY or set QWENVL_SERVE_API_KEY (or --no-auth on a loopback "
                "host); clients send it as Authorization: Bearer KEY.",
            )
    allow_dirs = [check_folder(Path(d), what="--allow-dir folder") for d in opts["allow_dirs"]]  # exit 3
    fields = request_fields(opts)
    # the tools need no key to start (estimates need none): a missing key is each call's error
    client = make_client(opts, will_send=False)  # its options checked now (one not for its backend: exit 2)
    only_model = None
    if client.backend_name == "transformers":  # a model in this process: the one configured, checked before serving
        only_model = fields.get("model") or qenv.model()
        if not only_model:
            raise UsageError(
                "--backend transformers needs --model: a hub id or a model folder",
                hint="For example --model Qwen/Qwen3-VL-2B-Instruct, or a local folder.",
            )
    # serve's checks before serving, with its exit codes (backends.preflight): the model the tools will use
    from qwenvl.backends import preflight

    options = client.local_options()  # the backend the tools will use: its model, endpoint and options
    if client.backend_name == "dashscope":
        options.update(protocol=client.protocol, region=client.region)
    _, warning = preflight(client.backend_name, options)
    if warning:
        err_console().print(f"[yellow]warning:[/] {escape(safe_line(warning))}", highlight=False, soft_wrap=True)
    server = server_module.build_server(lambda: client, allow_dirs=allow_dirs, defaults=fields, only_model=only_model)
    try:
        if opts["http_port"] is None:
            if sys.stdin.isatty():
                err_console().print(
                    "qwenvl mcp: serving MCP on stdio, for an MCP host to start (Ctrl-C to stop; "
                    "--http PORT serves HTTP)",
                    highlight=False,
                )
            server.run("stdio")
        else:
            import anyio

            def announce(url: str) -> None:
                guard = "bearer key required" if key else "no auth"
                err_console().print(f"qwenvl mcp: listening on {escape(safe_line(url))} ({guard})", highlight=False)

            anyio.run(
                lambda: server_module.serve_http(
                    server, opts["host"], opts["http_port"], api_key=key, announce=announce
                )
            )
    finally:
        server.client.close()
