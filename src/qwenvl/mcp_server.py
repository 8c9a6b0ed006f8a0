"""qwenvl as a Model Context Protocol server: the tools ``ask``, ``ground``, ``ocr``, ``extract``, ``events`` and
``estimate`` for agents, over stdio or streamable HTTP (``qwenvl mcp``; needs the ``qwenvl[mcp]`` extra).

Built on the official ``mcp`` Python SDK (2.x: ``mcp.server.mcpserver.MCPServer``). Every tool is a thin shell
over the library: the client comes from the factory the caller passes (the CLI's ``make_client``, so backend
selection plugs in there), the work is ``Client.plan``/``Client.send``, ``qwenvl.tasks`` and
``qwenvl.estimate.estimate_files``, run in a worker thread while progress notifications are sent.

Local files are read only under the folders the client declares as MCP roots or the server was given with
``--allow-dir`` (symlinks resolved before the check; the resolved path is what the library opens). Every
``qwenvl`` error comes back as a tool error (``isError``) whose text is the one-line message and its hint, never
a traceback.

    server = build_server(lambda: qwenvl.Client(), allow_dirs=["~/photos"])
    server.run("stdio")                      # or run_http(server, "127.0.0.1", 8765, api_key="...")
"""

import base64
import contextlib
import io
import json
import os
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, ListRoots, MCPServer, Resolve
from mcp.types import CallToolResult, ImageContent, ListRootsResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from qwenvl import __version__
from qwenvl import env as qenv
from qwenvl._constants import DEFAULT_TIMEOUT_S, MAX_DURATION_S
from qwenvl.errors import MediaError, QwenVLError, StructuredOutputError, UsageError
from qwenvl.estimate import estimate_files
from qwenvl.models import format_cost, spent_fields, spent_label
from qwenvl.server.security import SERVE_KEY_ENV, bearer, key_matches, listen
from qwenvl.spelling import did_you_mean
from qwenvl.tasks import Box, Event, OCRPage, Point
from qwenvl.types import Response, Usage
from qwenvl.wording import Surface, field_of, fit_hint, fit_message, model_references

HEARTBEAT_S = 2.0  # a progress notification at least this often while a step runs (keeps clients' timers alive)
PREVIEW_MAX_SIDE = 1600  # the annotated image returned as MCP image content is at most this wide or high
API_KEY_ENV = SERVE_KEY_ENV

INSTRUCTIONS = """\
qwenvl: Qwen-VL vision models (Alibaba Cloud Model Studio / DashScope) for images, PDFs and video.
Media are local paths (only under the client's roots or the server's --allow-dir folders), https:// URLs,
file:// or data: URLs. Local files are checked and resized before anything is sent.
Tools: ask (a question about media), ground (boxes or points in original pixels), ocr (text), extract (JSON
valid for your JSON Schema), events (a video's timeline), estimate (tokens and cost of files; sends nothing).
Call estimate first for large videos or many PDF pages."""


# == Arguments =====================================================================================================


class Options(BaseModel):
    """Generation and media options (all optional; the library's defaults apply)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    system: str | None = Field(None, description="System prompt.")
    max_tokens: int | None = Field(None, ge=1, description="Longest answer in tokens (ask: 512).")
    temperature: float | None = Field(None, ge=0, lt=2, description="Sampling temperature (default 0.2).")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stop: list[str] | None = Field(None, description="Stop sequences.")
    detail: Literal["auto", "low", "high"] | None = Field(
        None, description="Image detail: low = smaller token budget, high = vl_high_resolution_images."
    )
    high_res: bool | None = Field(None, description="vl_high_resolution_images: up to 16384 tokens per image.")
    min_pixels: int | None = Field(None, ge=1)
    max_pixels: int | None = Field(None, ge=1)
    fps: float | None = Field(None, gt=0, description="Video sampling rate in frames per second (default 2).")
    pages: str | None = Field(None, description='PDF pages to send, e.g. "1-3,5" (default: all).')
    no_resize: bool = Field(False, description="Send files as they are (still checked).")
    fetch_urls: bool = Field(False, description="Download remote images and prepare them here.")
    thinking_budget: int | None = Field(None, ge=1, description="Most tokens spent thinking (with thinking).")
    timeout_s: float | None = Field(
        None,
        gt=0,
        le=MAX_DURATION_S,
        allow_inf_nan=False,
        description=f"Seconds to wait for the model (default {DEFAULT_TIMEOUT_S:g}, at most {MAX_DURATION_S:g}).",
    )

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        """An unknown option is refused naming the closest known one (``temprature``: "Did you mean
        'temperature'?"), as the CLI and the library do; pydantic alone says "Extra inputs are not permitted"."""
        if isinstance(data, dict):
            for name in data:
                if name not in cls.model_fields:
                    near = did_you_mean(str(name), cls.model_fields)
                    guess = f" {near}" if near else ""
                    known = ", ".join(cls.model_fields)
                    raise ValueError(f"unknown option '{name}'.{guess} The options are: {known}.")
        return data

    def fields(self) -> dict[str, Any]:
        """Request fields (``qwenvl.Request`` names) for the options that were given."""
        out = self.model_dump(exclude_none=True, exclude={"high_res", "no_resize"})
        if self.high_res is not None:
            out["vl_high_resolution_images"] = self.high_res
        if self.no_resize:
            out["prepare"] = False
        if not self.fetch_urls:
            out.pop("fetch_urls", None)
        return out


Model = Annotated[str | None, Field(description="Model name or snapshot (default: the server's, qwen3-vl-plus).")]
Opts = Annotated[Options | None, Field(description="Generation and media options.")]
MEDIA_HELP = (
    "local paths (absolute, or relative to the server's working folder; only under the allowed "
    "folders), https:// URLs, file:// or data: URLs"
)


# == Results (output schemas) ======================================================================================


class UsageOut(Usage):  # Usage's token counts; the service's raw usage object is neither in the schema nor sent
    raw: SkipJsonSchema[dict[str, Any]] = Field(default_factory=dict, exclude=True, repr=False)


class Billed(BaseModel):
    model: str | None = Field(None, description="The model that answered.")
    usage: UsageOut = Field(default_factory=UsageOut, description="Tokens as the service counted them.")
    cost: float | None = Field(
        None, description="Estimated cost from the model table (None: price unknown, or a local model: see local)."
    )
    currency: str | None = Field(
        "CNY", description="The cost's currency: CNY in Beijing, USD in Singapore and Virginia (None: local)."
    )
    local: bool = Field(False, description="A local model answered: it has no price (cost and currency are None).")
    request_id: str | None = None


class AskResult(Billed):
    text: str
    reasoning: str | None = Field(None, description="The model's thinking (with thinking=true).")
    json_value: Any = Field(None, alias="json", description="The parsed answer (with json_mode or schema).")
    finish_reason: str | None = None

    model_config = ConfigDict(populate_by_name=True)


class GroundResult(Billed):
    image: str | None
    width: int | None = Field(description="The original image's width in pixels (None for a URL).")
    height: int | None
    boxes: list[Box] = Field(description="Boxes in the original image's pixels (raw: the model's numbers).")
    points: list[Point]
    dropped: int = Field(0, description="Boxes and points left out: wholly outside the image, or boxes with no area.")
    truncated: bool
    warnings: list[str]
    convention: str = Field(description="How the model's coordinates were read.")
    annotated: str | None = Field(None, description="The annotated image written (with out).")


class OCROut(Billed):
    source: str
    text: str = Field(
        description="Every page's text; a PDF's pages told apart: a form feed ends each page (text, json), a \"<!-- "
        'page N -->" line begins each (markdown).'
    )
    pages: list[OCRPage]
    warnings: list[str]


class ExtractResult(Billed):
    file: str
    json_value: Any = Field(alias="json", description="The data, valid for the schema.")

    model_config = ConfigDict(populate_by_name=True)


class EventsResult(Billed):
    video: str
    duration: float | None = Field(description="The clip's length in seconds (None for a URL).")
    events: list[Event]
    warnings: list[str]


class EstimateItem(BaseModel):
    """One image, page or video as it would be sent; or, with ``error``, a file that cannot be sent."""

    source: str
    page: int | None = Field(None, description="A PDF page: its 1-based number in the document.")
    kind: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    mime: str | None = None
    bytes_sent: int | None = Field(None, description="Bytes sent inline; null when not computed (estimate-only).")
    tokens: int | None = None
    tokens_exact: bool | None = Field(
        None, description="False where the service decides the count (a video sent whole, which it samples)."
    )
    cost: float | None = None
    notes: list[str] = Field(default_factory=list)
    error: str | None = Field(None, description="Why this file cannot be sent (the others are still estimated).")
    hint: str | None = None


class EstimateTotal(BaseModel):
    tokens: int
    cost: float | None
    items: int
    unknown: int = Field(description="Items whose tokens are unknown (remote URLs).")
    failed: int = Field(0, description="Files that cannot be sent (their items carry the error).")


class EstimateResult(BaseModel):
    model: str
    factor: int = Field(description="Pixels per token side (32 for Qwen3-VL).")
    currency: str | None = Field(description="CNY in Beijing, USD in Singapore and Virginia (None: local).")
    local: bool = Field(False, description="A local model: it has no price (every cost is None).")
    price_tier: str | None = Field(None, description="The input-length price tier of a request carrying them all.")
    items: list[EstimateItem]
    total: EstimateTotal
    warnings: list[str] = Field(
        default_factory=list, description="The items are over the model's context as one request (still counted)."
    )


# == Where local files may be read ==================================================================================


@dataclass
class Access:
    """The folders local paths may be under: ``--allow-dir`` folders plus the client's roots (per call)."""

    allow_dirs: list[Path] = field(default_factory=list)

    @classmethod
    def of(cls, dirs: Iterable[str | os.PathLike[str]]) -> "Access":
        return cls([Path(os.path.realpath(Path(d).expanduser())) for d in dirs])

    def folders(self, roots: ListRootsResult | None) -> list[Path]:
        found = list(self.allow_dirs)
        for root in roots.roots if roots is not None else []:
            parts = urlsplit(str(root.uri))
            if parts.scheme == "file":
                found.append(Path(os.path.realpath(unquote(parts.path))))
        return found

    def check(self, ref: str, folders: Sequence[Path], *, write: bool = False) -> str:
        """``ref`` as the library should open it: a local path resolved (symlinks followed) and refused unless
        under one of ``folders``; URLs and data: URLs unchanged. Raises ``MediaError`` when refused."""
        path = local_path(ref)
        if path is None:
            return ref
        real = Path(os.path.realpath(path))
        if any(real == f or real.is_relative_to(f) for f in folders):
            return str(real)
        verb = "write" if write else "read"
        where = ", ".join(str(f) for f in folders) if folders else "none"
        raise MediaError(
            f"{ref} is outside the folders this server may {verb} (allowed: {where})",
            source=ref,
            hint="Declare the folder as a root in the MCP client, or start the server with "
            "`qwenvl mcp --allow-dir DIR`.",
        )


def local_path(ref: str) -> Path | None:
    """The local path a media reference names (None for http(s), oss and data URLs)."""
    text = ref.strip()
    lower = text[:12].lower()
    if lower.startswith(("http://", "https://", "oss://", "data:")):
        return None
    if lower.startswith("file://"):
        return Path(unquote(urlsplit(text).path))
    if "://" in lower:
        return None  # an unsupported scheme: classify() refuses it with its own message
    return Path(text).expanduser()


# == Results and errors =============================================================================================


def billed(*responses: Response | None, region: str | None = None) -> dict[str, Any]:
    """What ``responses`` took, as every verb's JSON gives it (``models.spent_fields``: usage summed, its cost in
    ``region``'s currency, a local model's ``cost`` None, ``currency`` None, ``local`` True; the last request id),
    with the model that answered last. Raises UsageError for an unknown region."""
    spent = spent_fields(responses, region=region)
    model = next((r.model for r in reversed(responses) if r is not None and r.model), None)
    return {
        "model": model,
        "usage": UsageOut(**spent["usage"]),
        **{key: spent[key] for key in ("cost", "currency", "local", "request_id")},
    }


def result(value: BaseModel, *extra: ImageContent, exclude_unset: bool = False) -> CallToolResult:
    data = value.model_dump(mode="json", by_alias=True, exclude_unset=exclude_unset)
    text = json.dumps(data, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text), *extra], structured_content=data)


# The tools' own arguments that stand for a CLI flag; every other flag is an ``options`` key (``Options``).
_TOOL_ARGUMENTS = {
    "--model": "model",
    "--thinking": "thinking",
    "--json-mode": "json_mode",
    "--schema": "schema",
    "--force": "overwrite=true",
}
_OPTION_OF = {"--timeout": "timeout_s", "--no-high-res": "high_res", "--high-res": "high_res"}


def _tool_word(flag: str) -> str | None:
    """The tool argument that does what ``flag`` does (``--max-pixels`` -> ``options.max_pixels``), None when no
    tool takes it. Raises nothing."""
    if flag in _TOOL_ARGUMENTS:
        return _TOOL_ARGUMENTS[flag]
    key = _OPTION_OF.get(flag, field_of(flag))
    return f"options.{key}" if key in Options.model_fields else None


# An error's words as a tool's caller reads them: the tools' arguments, never a flag no tool takes (qwenvl commands
# and environment variables stay: they are for the person who runs the server).
TOOL_SURFACE = Surface(name=_tool_word, restate=False)


def tool_error(exc: BaseException, region: str | None = None, names: Mapping[str, str] | None = None) -> CallToolResult:
    """The error as the model reads it: one line, then the hint; never a traceback. An answer that was not valid
    for the schema was paid: a ``paid:`` line between them says for how many requests, tokens and cost (in
    ``region``'s currency); ``used:`` for a local model's, which costs no money (``models.spent_label``). An OCR
    that failed after some pages ends with the pages it read (``qwenvl.tasks.ocr.partial``).
    ``names``: the local model's references (its folder's path) -> the name it is served under, said instead."""
    surface = replace(TOOL_SURFACE, names=dict(names)) if names else TOOL_SURFACE
    if isinstance(exc, QwenVLError):
        text = f"error: {fit_message(exc.as_written(), surface)}"
        if isinstance(exc, StructuredOutputError) and isinstance(exc.response, Response):
            b = billed(exc.response, region=region)
            u = b["usage"]
            requests = f"{exc.requests} request{'s' if exc.requests > 1 else ''}"
            text += (
                f"\n{spent_label(exc.response.protocol)}: {requests}, {u.input_tokens or 0} in / "
                f"{u.output_tokens or 0} out tokens, cost {format_cost(b['cost'], b['currency'], local=b['local'])}"
            )
        hint = fit_hint(exc.raw_hint, surface) if exc.raw_hint else ""
        if hint:
            text += f"\nhint: {hint}"
        from qwenvl.tasks.ocr import partial

        read = partial(exc)
        if read is not None and read.pages:  # an OCR's pages read (and paid for) before it: kept, not lost
            numbers = ", ".join(str(p.page) for p in read.pages if p.page is not None)
            text += f"\nread before it (paid for): page{'s' if len(read.pages) > 1 else ''} {numbers}\n{read.text}"
    else:  # a bug: one line; the traceback only on the server's stderr, and only with QWENVL_DEBUG
        if qenv.debug():
            traceback.print_exc()
        text = (
            f"internal error: {type(exc).__name__}: {exc}\n"
            "hint: run the server with QWENVL_DEBUG=1 for the traceback (on its stderr), and please report it."
        )
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


async def _progress(ctx: Context, progress: float, total: float, message: str) -> None:
    with contextlib.suppress(Exception):  # a client that went away must not fail the work
        await ctx.report_progress(progress, total, message)


async def step(ctx: Context, index: int, total: int, message: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a worker thread as step ``index`` of ``total``: a progress notification at its start and a
    heartbeat every ``HEARTBEAT_S`` seconds (the progress creeping towards the next step), so a long video's
    preparation or a slow answer is visible and never looks dead."""
    await _progress(ctx, index, total, message)
    outcome: dict[str, Any] = {}
    started = time.monotonic()

    async def work() -> None:
        try:
            outcome["value"] = await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
        except BaseException as exc:  # re-raised below, outside the task group (no exception group)
            outcome["error"] = exc
        finally:
            tg.cancel_scope.cancel()

    async def heartbeat() -> None:
        while True:
            await anyio.sleep(HEARTBEAT_S)
            elapsed = time.monotonic() - started
            await _progress(ctx, index + elapsed / (elapsed + 30), total, f"{message} ({elapsed:.0f} s)")

    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)
        tg.start_soon(work)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _roots(ctx: Context) -> ListRoots | None:
    """Ask the client for its roots when it declared it has some (no round-trip otherwise)."""
    caps = ctx.client_capabilities
    return ListRoots() if caps is not None and caps.roots is not None else None


Roots = Annotated[ListRootsResult | None, Resolve(_roots)]


def _preview(img: Any) -> ImageContent:
    """The annotated image as MCP image content: PNG, at most ``PREVIEW_MAX_SIDE`` pixels a side."""
    img = img.copy()
    img.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "PNG", optimize=True)
    return ImageContent(type="image", data=base64.b64encode(buf.getvalue()).decode("ascii"), mime_type="image/png")


# == The server =====================================================================================================


def build_server(
    client_factory: Callable[[], Any],
    *,
    allow_dirs: Iterable[str | os.PathLike[str]] = (),
    defaults: dict[str, Any] | None = None,
    only_model: str | None = None,
) -> MCPServer:
    """The MCP server with its six tools.

    ``client_factory`` makes the one client every tool uses (a ``qwenvl.Client`` or anything with its
    ``plan``/``send``); it is called once, now. ``allow_dirs``: folders local paths may be read from besides the
    client's roots. ``defaults``: request fields every call starts from (``model``, ``timeout_s``,
    ``max_retries``, ``retry_backoff_s``), which a tool's own arguments override. ``only_model``: the one model
    the tools may use (a model in this process: ``qwenvl mcp --backend transformers``); a call's ``model`` must name
    it (as given, its resolved path, or the name it is served under), else the call is refused with a tool error
    (nothing else is loaded or downloaded on a caller's word).
    """
    from qwenvl.media.pdf import check_page
    from qwenvl.media.sources import check_pages_apply, classify, media_kind, split_media
    from qwenvl.outputs import check_outputs
    from qwenvl.tasks import annotate, plan_events, plan_extract, plan_ground, read_grounding
    from qwenvl.tasks.draw import check_fits, image_format
    from qwenvl.tasks.events import send_events
    from qwenvl.tasks.grounding import original_size, planned_picture
    from qwenvl.tasks.ocr import plan_pages, send_pages

    client = client_factory()
    access = Access.of(allow_dirs)
    base = dict(defaults or {})
    server = MCPServer(
        "qwenvl", title="qwenvl: Qwen-VL vision", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING"
    )
    server.client = client  # type: ignore[attr-defined]  # closed by the runner

    allowed = _names_of(only_model) if only_model else {}
    # the in-process model is named as it is served (``backends.transformers.served_name``), never by its folder's
    # path: in results, progress and errors alike (``wording.model_references``, as ``qwenvl serve`` names it)
    said = model_references(only_model, _served(only_model)) if only_model else {}

    def named(model: str | None) -> str | None:
        return said.get(model, model) if model else model

    surface = replace(TOOL_SURFACE, names=said)

    def worded(warnings: list[str]) -> list[str]:
        """A task's warnings (written in the CLI's flags: "raise --max-tokens") in the tools' words."""
        return [fit_message(w, surface) for w in warnings]

    def paid(*responses: Response | None) -> dict[str, Any]:
        out = billed(*responses, region=client.region)
        out["model"] = named(out["model"])
        return out

    def own_model(model: str | None) -> str | None:
        """The model a call may use: ``model`` itself, or with ``only_model`` that model (UsageError otherwise)."""
        if not model or not only_model:
            return model
        if model not in allowed and _resolved(model) not in allowed:
            raise UsageError(
                f"this server runs one model, {_served(only_model)}; it loads no other (model {model!r})",
                hint=f"Leave out the model argument, or give {_served(only_model)}.",
            )
        return only_model

    def request_fields(model: str | None, options: Options | None, **more: Any) -> dict[str, Any]:
        fields = {**base, **(options.fields() if options else {})}
        if model:
            fields["model"] = own_model(model)
        fields.update({k: v for k, v in more.items() if v is not None})
        return fields

    async def guarded(body: Callable[[], Awaitable[CallToolResult]]) -> CallToolResult:
        try:
            return await body()
        except Exception as exc:
            return tool_error(exc, region=client.region, names=said)

    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=True)

    @server.tool(annotations=read_only)
    async def ask(
        prompt: Annotated[str, Field(description="The question or instruction.")],
        ctx: Context,
        roots: Roots = None,
        media: Annotated[list[str], Field(description=f"Images, PDFs or one video: {MEDIA_HELP}.")] = [],  # noqa: B006
        model: Model = None,
        json_mode: Annotated[bool, Field(description="Ask for a JSON answer and parse it.")] = False,
        schema: Annotated[dict[str, Any] | None, Field(description="A JSON Schema the answer must match.")] = None,
        thinking: Annotated[bool, Field(description="Let the model reason first; the reasoning is returned.")] = False,
        options: Opts = None,
    ) -> Annotated[CallToolResult, AskResult]:
        """Ask a Qwen-VL model about images, PDF pages or a video (or nothing: plain text). Returns the answer,
        the reasoning when thinking=true, the parsed JSON with json_mode or schema, the usage and the cost."""

        async def body() -> CallToolResult:
            folders = access.folders(roots)
            refs = [access.check(ref, folders) for ref in media]
            images, video = split_media(refs)
            fields = request_fields(
                model, options, json_mode=json_mode or None, schema=schema, enable_thinking=True if thinking else None
            )
            call = await step(
                ctx,
                0,
                2,
                "preparing the media",
                lambda: client.plan(prompt=prompt, images=images, video=video, **fields),
            )
            response = await step(ctx, 1, 2, f"asking {named(call.request.model)}", lambda: client.send(call))
            await _progress(ctx, 2, 2, "done")
            return result(
                AskResult(
                    text=response.text,
                    reasoning=response.reasoning if thinking else None,
                    json=response.json,
                    finish_reason=response.finish_reason,
                    **paid(response),
                )
            )

        return await guarded(body)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True))
    async def ground(
        image: Annotated[str, Field(description=f"The image (or a PDF: page 1 unless page): {MEDIA_HELP}.")],
        query: Annotated[str, Field(description='What to find, e.g. "every person and dog".')],
        ctx: Context,
        roots: Roots = None,
        points: Annotated[bool, Field(description="Points instead of boxes.")] = False,
        out: Annotated[
            str | None,
            Field(
                description="Write the image with the boxes drawn here (a .png or .jpg path under the allowed folders)."
            ),
        ] = None,
        overwrite: Annotated[
            bool, Field(description="Replace an existing out file that qwenvl did not write (never the image).")
        ] = False,
        return_image: Annotated[
            bool | None, Field(description="Return the annotated image as image content (default: when out is given).")
        ] = None,
        page: Annotated[int | None, Field(ge=1, description="The page of a PDF (default 1).")] = None,
        model: Model = None,
        options: Opts = None,
    ) -> Annotated[CallToolResult, GroundResult]:
        """Find things in an image: boxes (or points) with labels, in the ORIGINAL image's pixels, whatever the
        model's own coordinate convention. Optionally draws them (out) and returns the drawing."""

        async def body() -> CallToolResult:
            folders = access.folders(roots)
            ref = access.check(image, folders)
            target = Path(access.check(out, folders, write=True)) if out else None
            want_image = return_image if return_image is not None else target is not None
            if (target is not None or want_image) and local_path(ref) is None and not ref.startswith("data:"):
                raise UsageError(
                    "drawing the boxes needs the image's pixels: give a local file or a data: URL, not a URL",
                    hint="Or leave out and return_image unset to get the boxes only.",
                )
            if target is not None:
                image_format(target, "out")  # the drawing's format follows the suffix: refused before it is paid
                check_outputs({"out": str(target)}, inputs={"image": ref}, pictures={"out"}, force=overwrite)
            fields = request_fields(model, options)
            pdf = local_path(ref) is not None and media_kind(classify(ref)) == "pdf"  # a missing file is named
            check_pages_apply(page, [ref], "page")  # the one rule (media.sources), in the tool's words
            if pdf:
                fields["pages"] = str(page or 1)
                if page is not None and (path := local_path(ref)) is not None:
                    check_page(path, page, ref, "page")
            call = await step(
                ctx, 0, 2, "preparing the image", lambda: plan_ground(client, ref, query, points=points, **fields)
            )
            if target is not None:  # a format that cannot hold the picture at its size (.ico): before it is paid
                check_fits(target, original_size(planned_picture(call) or ref), "out")
            response = await step(ctx, 1, 2, f"asking {named(call.request.model)}", lambda: client.send(call))
            g = read_grounding(call, response, image=image)
            extra: list[ImageContent] = []
            if target is not None or want_image:
                picture = g.picture or ref
                img = await anyio.to_thread.run_sync(lambda: annotate(picture, g, target, overwrite=overwrite))
                if want_image:
                    extra.append(_preview(img))
            await _progress(ctx, 2, 2, "done")
            return result(
                GroundResult(
                    image=image,
                    width=g.width,
                    height=g.height,
                    boxes=g.boxes,
                    points=g.points,
                    dropped=g.dropped,
                    truncated=g.truncated,
                    warnings=worded(g.warnings),
                    convention=g.convention,
                    annotated=str(target) if target is not None else None,
                    **paid(response),
                ),
                *extra,
            )

        return await guarded(body)

    @server.tool(annotations=read_only)
    async def ocr(
        file: Annotated[str, Field(description=f"An image or a PDF (one request per page): {MEDIA_HELP}.")],
        ctx: Context,
        roots: Roots = None,
        format: Annotated[
            Literal["text", "markdown", "json"],
            Field(description="text, markdown, or json (lines with their boxes in original pixels)."),
        ] = "text",
        pages: Annotated[str | None, Field(description='PDF pages, e.g. "1-3,5" (default: all).')] = None,
        task: Annotated[str | None, Field(description="ocr_options.task for the qwen-vl-ocr models.")] = None,
        ocr_options: Annotated[dict[str, Any] | None, Field(description="ocr_options, passed through.")] = None,
        model: Model = None,
        options: Opts = None,
    ) -> Annotated[CallToolResult, OCROut]:
        """Read the text in an image or a PDF, as plain text, Markdown, or lines with boxes (format=json)."""

        async def body() -> CallToolResult:
            ref = access.check(file, access.folders(roots))
            fields = request_fields(model, options)
            fields.pop("pages", None)  # one request per page: the selection goes to plan_pages
            chosen = pages or (options.pages if options else None)

            def run() -> Any:
                plans = plan_pages(client, ref, format=format, task=task, options=ocr_options, pages=chosen, **fields)
                return send_pages(client, file, plans, format=format)

            r = await step(ctx, 0, 1, "reading the text", run)
            await _progress(ctx, 1, 1, "done")
            return result(
                OCROut(
                    source=file,
                    text=r.text,
                    pages=r.pages,
                    warnings=worded(r.warnings),
                    **paid(*r.responses),
                )
            )

        return await guarded(body)

    @server.tool(annotations=read_only)
    async def extract(
        file: Annotated[str, Field(description=f"The document or image: {MEDIA_HELP}.")],
        schema: Annotated[dict[str, Any], Field(description="A JSON Schema (draft 2020-12) for the data.")],
        ctx: Context,
        roots: Roots = None,
        prompt: Annotated[
            str | None, Field(description="What to extract (default: the information in the document).")
        ] = None,
        model: Model = None,
        options: Opts = None,
    ) -> Annotated[CallToolResult, ExtractResult]:
        """Extract structured data: JSON valid for the given JSON Schema (checked, and repaired once)."""

        async def body() -> CallToolResult:
            ref = access.check(file, access.folders(roots))
            fields = request_fields(model, options)
            call = await step(
                ctx, 0, 2, "preparing the file", lambda: plan_extract(client, ref, schema, prompt=prompt, **fields)
            )
            response = await step(ctx, 1, 2, f"asking {named(call.request.model)}", lambda: client.send(call))
            await _progress(ctx, 2, 2, "done")
            return result(ExtractResult(file=file, json=response.json, **paid(response)))

        return await guarded(body)

    @server.tool(annotations=read_only)
    async def events(
        ctx: Context,
        roots: Roots = None,
        video: Annotated[str | None, Field(description=f"The video: {MEDIA_HELP}.")] = None,
        frames: Annotated[list[str] | None, Field(description="Or frame images, in order (sampled at fps).")] = None,
        prompt: Annotated[str | None, Field(description="What to describe (default: the series of events).")] = None,
        model: Model = None,
        options: Opts = None,
    ) -> Annotated[CallToolResult, EventsResult]:
        """A timeline of a video: events with start and end times (HH:mm:ss), checked against the clip's length
        and sorted. A long video reports progress while its frames are sampled."""

        async def body() -> CallToolResult:
            if (video is None) == (not frames):
                raise UsageError(
                    "give either video or frames", hint="Give the video alone, or the frames alone (in order)."
                )
            folders = access.folders(roots)
            target: str | list[str] = (
                access.check(video, folders) if video is not None else [access.check(f, folders) for f in frames or []]
            )
            fields = request_fields(model, options)
            call = await step(
                ctx, 0, 2, "sampling the video's frames", lambda: plan_events(client, target, prompt=prompt, **fields)
            )
            frames_sent = sum(len(m.sent) if isinstance(m.sent, list) else 1 for m in call.media)
            timeline = await step(
                ctx,
                1,
                2,
                f"asking {named(call.request.model)} about {frames_sent} frames",
                lambda: send_events(client, call),
            )
            await _progress(ctx, 2, 2, "done")
            name = video if video is not None else f"{len(frames or [])} frames"
            return result(
                EventsResult(
                    video=name,
                    duration=timeline.duration,
                    events=timeline.events,
                    warnings=worded(timeline.warnings),
                    **paid(timeline.response),
                )
            )

        return await guarded(body)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def estimate(
        files: Annotated[list[str], Field(min_length=1, description=f"Images, videos or PDFs: {MEDIA_HELP}.")],
        ctx: Context,
        roots: Roots = None,
        model: Model = None,
        detail: Literal["auto", "low", "high"] | None = None,
        high_res: bool | None = None,
        min_pixels: Annotated[int | None, Field(ge=1)] = None,
        max_pixels: Annotated[int | None, Field(ge=1)] = None,
        fps: Annotated[float | None, Field(gt=0)] = None,
        pages: str | None = None,
        fast: Annotated[bool, Field(description="Sizes and tokens from the headers only (much faster).")] = False,
    ) -> Annotated[CallToolResult, EstimateResult]:
        """Tokens and estimated cost of files as they would be sent (checked and resized exactly as for a
        request). Nothing is sent. Media input tokens only: the prompt and the answer come on top."""

        async def body() -> CallToolResult:
            folders = access.folders(roots)
            refs = [access.check(f, folders) for f in files]
            out = await step(
                ctx,
                0,
                1,
                "sizing the files",
                lambda: estimate_files(
                    refs,
                    model=own_model(model) or base.get("model"),
                    detail=detail,
                    vl_high_resolution_images=high_res,
                    min_pixels=min_pixels,
                    max_pixels=max_pixels,
                    fps=fps,
                    pages=pages,
                    fast=fast,
                    region=client.region,
                    client=client,
                ),
            )
            for item, ref in zip(out["items"], _labels(files, out["items"], refs), strict=True):
                item["source"] = ref  # the caller's names, not the resolved paths
                if item.get("error"):  # written in the CLI's words, as the warnings
                    item["error"] = fit_message(item["error"], surface)
                if item.get("hint"):
                    item["hint"] = fit_hint(item["hint"], surface) or None
            out["model"] = named(out.get("model"))
            if out.get("warnings"):  # written in the CLI's words ("qwenvl ocr FILE --dry-run", "--pages")
                out["warnings"] = worded(out["warnings"])
            await _progress(ctx, 1, 1, "done")
            return result(EstimateResult.model_validate(out), exclude_unset=True)  # rows exactly as `tokens`

        return await guarded(body)

    _one_line_argument_errors(server)
    return server


def _one_line_argument_errors(server: MCPServer) -> None:
    """Arguments that do not match a tool's schema come back as one line naming each wrong argument, not
    pydantic's multi-line report with its documentation link (the SDK validates before the tool runs)."""
    from mcp.server.mcpserver.exceptions import ToolError
    from pydantic import ValidationError

    for tool in server._tool_manager.list_tools():  # the SDK has no public hook for argument validation
        run = tool.run

        async def checked(
            arguments: dict[str, Any], *args: Any, _run: Any = run, _name: str = tool.name, **kwargs: Any
        ) -> Any:
            try:
                return await _run(arguments, *args, **kwargs)
            except ToolError as exc:
                if not isinstance(exc.__cause__, ValidationError):
                    raise
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                    for e in exc.__cause__.errors()[:5]
                )
                raise ToolError(
                    f"error: invalid arguments for {_name}: {problems}\nhint: see the tool's input schema (tools/list)"
                ) from None

        object.__setattr__(tool, "run", checked)


def _labels(files: Sequence[str], items: Sequence[dict[str, Any]], refs: Sequence[str]) -> list[str]:
    """Each estimate item's source in the caller's words (a PDF's pages carry their number in ``page``)."""
    names = dict(zip(refs, files, strict=True))
    return [names.get(item["source"], item["source"]) for item in items]


# == Transports =====================================================================================================


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <key>`` (compared in constant time)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.key = api_key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = ""
            for name, value in scope.get("headers", []):
                if name.lower() == b"authorization":
                    header = value.decode("latin-1")
            if not key_matches(bearer(header), self.key):
                from starlette.responses import JSONResponse

                response = JSONResponse(
                    {"error": "unauthorized", "message": "a bearer API key is required: Authorization: Bearer KEY"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="qwenvl"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def serve_http(
    server: MCPServer, host: str, port: int, *, api_key: str | None, announce: Callable[[str], None] | None = None
) -> None:
    """Serve streamable HTTP at ``http://HOST:PORT/mcp`` until cancelled; ``api_key`` None means no auth (the
    caller has checked the host is loopback). ``announce`` gets the URL once the socket listens (port 0: the
    port the system chose): a client may connect at once. UsageError when the address cannot be had."""
    import uvicorn

    app: Any = server.streamable_http_app(host=host)
    if api_key is not None:
        app = BearerAuth(app, api_key)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if sock.family == socket.AF_INET6 else host
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    try:
        if announce is not None:
            announce(f"http://{shown}:{bound}/mcp")
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        sock.close()


def _served(ref: str) -> str:
    from qwenvl.backends.transformers import served_name

    return served_name(ref)


def _names_of(ref: str) -> dict[str, str]:
    """The names a call may give for the in-process model ``ref``: as configured, its resolved folder, the name it
    is served under (``qwenvl.backends.transformers.served_name``)."""
    from pathlib import Path

    names = {ref, _served(ref)}
    folder = Path(ref).expanduser()
    if folder.is_dir():
        names.add(str(folder.resolve()))
    return {name: ref for name in names}


def _resolved(name: str) -> str:
    from pathlib import Path

    try:
        return str(Path(name).expanduser().resolve())
    except (OSError, RuntimeError, ValueError):
        return name
