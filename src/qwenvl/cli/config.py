"""`qwenvl config`: where requests would go and with which key (never the key itself), and qwenvl's folders."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape

from qwenvl import env as qenv
from qwenvl.cli.common import Verb, out_console, pass_opts, print_json
from qwenvl.config import (
    BACKENDS,
    effective_protocol,
    effective_region,
    find_api_key,
    no_key_words,
    normalize_backend,
    openai_api_key,
    openai_base_url,
    other_endpoint_key_hint,
    resolve_base_url,
)
from qwenvl.errors import QwenVLError, safe_line
from qwenvl.models import DEFAULT_MODEL, model_info


@click.command(cls=Verb)
@click.option(
    "--protocol",
    metavar="PROTOCOL",
    help="compat, native or openai, as for the other verbs (default compat, or $QWENVL_PROTOCOL).",
)
@click.option(
    "--region", metavar="REGION", help="cn, intl or us, as for the other verbs (default cn, or $QWENVL_REGION)."
)
@click.option("--base-url", metavar="URL", help="As for the other verbs.")
@click.option(
    "--backend",
    type=click.Choice(BACKENDS, case_sensitive=False),
    help="As for the other verbs (default dashscope, or $QWENVL_BACKEND).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_opts
def config(opts: dict[str, Any]) -> None:
    """Show the settings in force: key source, region, endpoints, default model, folders."""
    from qwenvl.sessions import home
    from qwenvl.store import default_cache_dir, default_usage_log_path, usage_log_enabled

    protocol = effective_protocol(opts["protocol"])
    backend = normalize_backend(opts["backend"], protocol=protocol)
    if backend != "dashscope":
        return _local(backend, opts)
    region = effective_region(opts["region"])
    try:
        found, key_error = find_api_key(), None
    except QwenVLError as exc:  # a damaged key file: shown where the key would be, and the exit code says it
        found, key_error = None, exc
    model = model_info(qenv.model() or DEFAULT_MODEL)
    info: dict[str, Any] = {
        "api_key": found.source if found else None,
        "api_key_error": key_error.message if key_error else None,
        "protocol": protocol,
        "region": region,
        "endpoints": {
            p: resolve_base_url(p, region=region, base_url=opts["base_url"])  # type: ignore[arg-type]
            for p in ("compat", "native")
        },
        # where each endpoint comes from: "--base-url", an environment variable (which overrides the region), or
        # "region"
        "endpoint_sources": {
            p: "--base-url" if opts["base_url"] else qenv.BASE_URL_ENV[p] if qenv.dashscope_base_url(p) else "region"
            for p in ("compat", "native")
        },
        "model": {
            "name": model.name,
            "family": model.family,
            "pixels_per_token": f"{model.factor}x{model.factor}",
            "image_tokens": model.image_tokens,
            "known": model.known,
        },
        "data_folder": str(home()),
        "cache_folder": str(default_cache_dir()),
        "usage_log": str(default_usage_log_path()) if usage_log_enabled() else None,
    }
    if opts["as_json"]:
        print_json(info)
        _fail_with(key_error)
        return
    console = out_console()  # every value is escaped: "[profile]" in a key source is text, not rich markup
    key = f"found in {escape(found.source)}" if found else "[red]not found[/] (see `qwenvl --help` for where to put it)"
    elsewhere = other_endpoint_key_hint(info["endpoints"][protocol])
    if not found and elsewhere:
        key = f"[red]not found[/] ({escape(elsewhere.removesuffix('.'))})"
    elif not found and qenv.credentials_profile_variable() is not None:  # the profile asked for has none
        key = f"[red]not found[/]: {escape(no_key_words(None)[0].removeprefix('no DashScope API key found: '))}"
    if key_error is not None:
        key = f"[red]cannot be read[/]: {escape(safe_line(key_error.message))}"
    console.print(f"API key      {key}", highlight=False)
    console.print(f"protocol     {escape(protocol)}   region {escape(region)}", highlight=False)
    overridden = [v for p, v in info["endpoint_sources"].items() if v not in ("region", "--base-url")]
    for name, url in info["endpoints"].items():
        marker = "  (in use)" if name == protocol else ""
        source = info["endpoint_sources"][name]
        if source not in ("region", "--base-url"):
            marker += f"  (from {source})"
        console.print(f"{name:<12} {escape(safe_line(url))}{marker}", highlight=False)
    if overridden:
        console.print(
            f"[yellow]note:[/] {escape(', '.join(overridden))} "
            f"{'overrides' if len(overridden) == 1 else 'override'} --region (--base-url overrides both)",
            highlight=False,
        )
    known = "" if model.known else "  (not in the model table: rules guessed from the name)"
    console.print(
        f"model        {escape(safe_line(model.name))}: {model.family}, {model.factor}x{model.factor} px per token, "
        f"{model.image_tokens} tokens per image by default{known}",
        highlight=False,
    )
    _print_folders(console, info)
    _fail_with(key_error)


def _fail_with(error: QwenVLError | None) -> None:
    """After the settings were shown: the key's place that cannot be read, as the error it is (its hint, its exit
    code), so scripts see it too."""
    if error is not None:
        raise error


def _local(backend: str, opts: dict[str, Any]) -> None:
    """``qwenvl config`` for a local backend: the engine's URL and key (``openai``) or the model in process
    (``transformers``); no DashScope key is needed by either."""
    from qwenvl.sessions import home
    from qwenvl.store import default_cache_dir, default_usage_log_path, usage_log_enabled

    info: dict[str, Any] = {"backend": backend, "protocol": "openai", "dashscope_api_key_needed": False}
    if backend == "openai":
        info["endpoint"] = openai_base_url(opts["base_url"])
        from_env = "QWENVL_OPENAI_BASE_URL" if qenv.openai_base_url() else "default"
        info["endpoint_source"] = "--base-url" if opts["base_url"] else from_env
        info["api_key"] = "QWENVL_OPENAI_API_KEY" if openai_api_key() else None
        info["engine"] = qenv.engine() or "auto"
    info["model"] = qenv.model()
    info["family"] = qenv.family()
    info.update(
        data_folder=str(home()),
        cache_folder=str(default_cache_dir()),
        usage_log=str(default_usage_log_path()) if usage_log_enabled() else None,
    )
    if opts["as_json"]:
        print_json(info)
        return
    console = out_console()
    console.print(f"backend      {backend}", highlight=False)
    if backend == "openai":
        source = info["endpoint_source"]
        marker = "  (in use)" + (f"  (from {source})" if source == "QWENVL_OPENAI_BASE_URL" else "")
        console.print(f"openai       {escape(safe_line(info['endpoint']))}{marker}", highlight=False)
        key = "from QWENVL_OPENAI_API_KEY" if info["api_key"] else "none (local engines take none)"
        console.print(f"API key      {key}   (no DashScope key needed)", highlight=False)
        console.print(f"engine       {escape(info['engine'])}", highlight=False)
        model = info["model"] or "the one the server serves (asked at the first request)"
    else:
        console.print("API key      none needed (the model runs in this process)", highlight=False)
        model = info["model"] or "[red]none[/]: set QWENVL_MODEL (a hub id or a folder), or give --model to the verbs"
    shown = escape(safe_line(model)) if info["model"] else model
    console.print(f"model        {shown}", highlight=False)
    if info["family"]:
        console.print(f"family       {escape(info['family'])}", highlight=False)
    _print_folders(console, info)


def _print_folders(console: Any, info: dict[str, Any]) -> None:
    console.print(f"data folder  {escape(safe_line(info['data_folder']))}", highlight=False)
    console.print(f"cache        {escape(safe_line(info['cache_folder']))}", highlight=False)
    console.print(f"usage log    {escape(safe_line(info['usage_log'] or 'off (QWENVL_LOG=0)'))}", highlight=False)
