"""What the verbs share: options, building a client and a request from them, rendering."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from qwenvl.client import Client
from qwenvl.config import BACKENDS, ENGINES, FAMILIES, PROTOCOLS, REGIONS
from qwenvl.errors import QwenVLError, StreamInterruptedError, StructuredOutputError, UsageError
from qwenvl.media.sources import classify, sniff
from qwenvl.models import estimate_cost, model_info
from qwenvl.structured import load_schema
from qwenvl.types import Response

_ERR: Console | None = None


def err_console() -> Console:
    global _ERR
    if _ERR is None:
        _ERR = Console(stderr=True, highlight=False)
    return _ERR


def out_console() -> Console:
    """stdout; when it is not a terminal, wide enough that tables are never cut (the file keeps every cell)."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def report(exc: QwenVLError) -> None:
    """An error as the user sees it: one line, then what was kept, then the hint (all on stderr)."""
    console = err_console()
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    if isinstance(exc, StreamInterruptedError) and exc.partial_text:
        console.print(f"[dim](kept {len(exc.partial_text)} characters of partial answer)[/]")
    if isinstance(exc, StructuredOutputError) and exc.raw_text:
        console.print("[dim]raw answer:[/]", highlight=False)
        console.print(exc.raw_text, highlight=False, markup=False, soft_wrap=True)
    if exc.hint:
        console.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False)


def _options(*decorators: Callable) -> Callable:
    def wrap(fn: Callable) -> Callable:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return wrap


# --model --protocol --region --base-url and network settings: every verb that talks to a model.
service_options = _options(
    click.option("-m", "--model", help="Model name or snapshot (default qwen3-vl-plus, or $QWENVL_MODEL)."),
    click.option("--protocol", type=click.Choice(PROTOCOLS, case_sensitive=False),
                 help="Wire protocol: compat (OpenAI-compatible, default) or native (DashScope)."),
    click.option("--region", help=f"Service region: {', '.join(REGIONS)} (default cn = Beijing)."),
    click.option("--base-url", help="Endpoint, e.g. http://127.0.0.1:8000 or https://…/compatible-mode/v1."),
    click.option("--timeout", "timeout_s", type=float, help="Seconds to wait for the service (default 120)."),
    click.option("--max-retries", type=int, help="Retries on 429/5xx/time-outs (default 2)."),
    click.option("--retry-backoff-s", type=float, help="Exponential backoff base in seconds (default 1.5)."),
    # where the model runs: DashScope, an OpenAI-compatible server, or this process (qwenvl.backends)
    click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False),
                 help="dashscope (default, or $QWENVL_BACKEND), openai (vLLM, SGLang, llama.cpp, Ollama... at "
                      "--base-url, default http://127.0.0.1:8000/v1) or transformers (in process; --model is a "
                      "hub id or folder)."),
    click.option("--engine", type=click.Choice(ENGINES, case_sensitive=False),
                 help="--backend openai: the server's engine (default auto: detected)."),
    click.option("--family", type=click.Choice(FAMILIES, case_sensitive=False),
                 help="A local model's family when its name does not say (pixel rule, budget, boxes)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]),
                 help="--backend transformers: where the model runs (default auto)."),
    click.option("--dtype", help="--backend transformers: auto (default), float32, bfloat16 or float16."),
    click.option("--attn-implementation", help="--backend transformers: sdpa, eager, flash_attention_2..."),
)

BACKEND_OPTIONS = ("backend", "engine", "family", "device", "dtype", "attn_implementation")


def _param(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


# What the model is asked and how: ask, chat and the task verbs.
generation_options = _options(
    click.option("--system", help="System prompt."),
    click.option("--max-tokens", type=click.IntRange(min=1), help="Longest answer in tokens (default 512)."),
    click.option("-t", "--temperature", type=click.FloatRange(0, 2, max_open=True),
                 help="Sampling temperature (default 0.2)."),
    click.option("--top-p", type=click.FloatRange(0, 1, min_open=True)),
    click.option("--top-k", type=click.IntRange(min=0)),
    click.option("--seed", type=click.IntRange(0, 2**31 - 1)),
    click.option("--stop", multiple=True, help="Stop sequence (repeatable)."),
    click.option("--detail", type=click.Choice(["auto", "low", "high"]),
                 help="Image detail: low = smaller budget, high = vl_high_resolution_images."),
    click.option("--high-res/--no-high-res", "vl_high_resolution_images", default=None,
                 help="vl_high_resolution_images: up to 16384 tokens per image."),
    click.option("--min-pixels", type=click.IntRange(min=1)),
    click.option("--max-pixels", type=click.IntRange(min=1)),
    click.option("--fps", type=click.FloatRange(min=0, min_open=True), help="Video sampling rate (default 2)."),
    click.option("--pages", help='PDF pages to send, e.g. "1-3,5" (default: all).'),
    click.option("--no-resize", "no_resize", is_flag=True, help="Send files as they are (still checked)."),
    click.option("--fetch-urls", is_flag=True, help="Download remote images and prepare them here (large or "
                 "private ones); time-out, size cap and redirects limited."),
    click.option("--video-as", type=click.Choice(["frames", "file"]),
                 help="A local video: sampled here into frames (default), or sent whole for the service to "
                      "sample (uploaded; native protocol)."),
    click.option("--upload", type=click.Choice(["auto", "inline", "oss"]),
                 help="Local files via DashScope's temporary storage (native protocol): auto uploads what "
                      "does not fit inline (default), oss always, inline never."),
    click.option("--json-mode", is_flag=True, help="Ask for a JSON answer and parse it."),
    click.option("--schema", "schema_file", help="JSON Schema file: the answer is validated against it."),
    click.option("--thinking/--no-thinking", "enable_thinking", default=None,
                 help="enable_thinking (Qwen3-VL): reason before answering."),
    click.option("--thinking-budget", type=click.IntRange(min=1), help="Most tokens spent thinking."),
    click.option("--param", "extra", multiple=True, callback=_param, metavar="KEY=VALUE",
                 help="Any other service parameter (VALUE parsed as JSON when it can be)."),
)

_REQUEST_FROM_OPTIONS = ("model", "timeout_s", "max_retries", "retry_backoff_s", "system", "max_tokens",
                         "temperature", "top_p", "top_k", "seed", "detail", "vl_high_resolution_images",
                         "min_pixels", "max_pixels", "fps", "json_mode", "enable_thinking", "thinking_budget",
                         "upload", "fetch_urls", "video_as", "pages")


def request_fields(opts: dict[str, Any]) -> dict[str, Any]:
    """Request fields from the options that were given (None and empty values mean 'not given')."""
    fields = {k: opts[k] for k in _REQUEST_FROM_OPTIONS if opts.get(k) not in (None, False)}
    if opts.get("stop"):
        fields["stop"] = list(opts["stop"])
    if opts.get("schema_file"):
        fields["schema"] = load_schema(opts["schema_file"])
    if opts.get("no_resize"):
        fields["prepare"] = False
    if opts.get("extra"):
        fields["extra"] = dict(opts["extra"])
    return fields


def backend_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The --backend group's values that were given, plus the model for a local backend."""
    backend = {k: opts[k] for k in BACKEND_OPTIONS if opts.get(k)}
    if backend.get("backend", "").lower() not in ("", "dashscope") or os.environ.get("QWENVL_BACKEND"):
        backend["model"] = opts.get("model")
    return backend


def make_client(opts: dict[str, Any]) -> Client:
    """The Client the options ask for (the model goes with the request, except for a local backend, where it
    also tells the backend which model to load or use)."""
    return Client(protocol=opts.get("protocol"), region=opts.get("region"), base_url=opts.get("base_url"),
                  **backend_options(opts))


_VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".flv", ".wmv", ".m4v")


def split_media(refs: list[str]) -> tuple[list[str], str | list[str] | None]:
    """(images, video): a local file is a video when its bytes say so; a URL when its path ends like one."""
    images: list[str] = []
    videos: list[str] = []
    for ref in refs:
        source = classify(ref)
        if source.kind == "file" and source.path is not None:
            try:
                with source.path.open("rb") as fh:
                    head = fh.read(4096)
            except OSError:
                head = b""
            is_video = (sniff(head) or "").startswith("video/")
        else:
            is_video = source.kind in ("url", "oss") and Path(ref.split("?")[0]).suffix.lower() in _VIDEO_SUFFIXES
        (videos if is_video else images).append(ref)
    if len(videos) > 1:
        raise UsageError("one video per question: give the others in separate questions")
    return images, (videos[0] if videos else None)


def prompt_and_media(args: tuple[str, ...], prompt: str | None) -> tuple[str, list[str]]:
    """`ask IMAGE... -p PROMPT`, or `ask IMAGE... "PROMPT"` (the last argument, when it is not a file)."""
    refs = list(args)
    if prompt is None and refs:
        last = refs[-1]
        looks_like_media = Path(last).expanduser().exists() or "://" in last[:12] or last.startswith("data:")
        if not looks_like_media:
            prompt = refs.pop()
    if prompt == "-":
        prompt = sys.stdin.read()
    if prompt is None:
        raise UsageError("no prompt: give one with -p \"...\" (or as the last argument)")
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    return prompt, refs


def usage_line(response: Response) -> str:
    u = response.usage
    parts = [response.model]
    if u.input_tokens is not None:
        parts.append(f"{u.input_tokens:,} in / {u.output_tokens or 0:,} out tokens")
    if u.image_tokens:
        parts.append(f"{u.image_tokens:,} image tokens")
    if u.input_tokens is not None and response.protocol not in ("openai", "transformers"):  # local: no price
        cost = estimate_cost(model_info(response.model), u.input_tokens, u.output_tokens or 0)
        if cost is not None:
            parts.append(f"≈¥{cost:.4f}")
    if response.request_id:
        parts.append(f"request {response.request_id}")
    return " · ".join(parts)


def print_json(obj: Any, *, ascii_only: bool = False, indent: int | None = 2) -> None:
    click.echo(json.dumps(obj, ensure_ascii=ascii_only, indent=indent))


def response_json(response: Response) -> dict[str, Any]:
    return response.model_dump(mode="json", exclude={"messages"}, exclude_none=True)


def pass_opts(fn: Callable) -> Callable:
    """Hand the verb all its options as one dict (keeps verb signatures short)."""

    @functools.wraps(fn)
    def wrapper(**opts: Any) -> Any:
        return fn(opts)

    return wrapper


def check_writable(target: str) -> Path:
    """Refuse an output path that cannot be written, before anything is paid for."""
    import os

    path = Path(target).expanduser()
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give a file name for the output")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {parent}: {exc.strerror or exc}") from None
    if (path.exists() and not os.access(path, os.W_OK)) or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {path}: permission denied")
    return path
