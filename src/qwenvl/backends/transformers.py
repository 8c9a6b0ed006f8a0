"""The ``transformers`` backend: a Qwen-VL model in this process (``pip install "qwenvl[local]"``).

    client = qwenvl.Client(backend="transformers", model="Qwen/Qwen2.5-VL-3B-Instruct")   # or a folder
    client.ask("What is this?", "photo.jpg")

Families: Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE (config ``model_type`` qwen2_vl, qwen2_5_vl, qwen3_vl,
qwen3_vl_moe), loaded with ``AutoModelForImageTextToText.from_pretrained`` from a hub id or a folder, once per
process (``load``; cached by model, device, dtype and attention implementation). Device ``auto`` picks cuda,
then mps, then cpu; dtype ``auto`` is the checkpoint's on cuda, float32 on cpu, float16 on mps.

Images go in memory (``media_form = "memory"``): qwenvl prepares them (upright, 8-bit, resized to the model's
budget with the family's ``smart_resize``) and hands the decoded picture over, so the processor's own resize is
the identity and nothing is encoded to base64 and back. The prompt is built as transformers' Qwen-VL
processors build it, from the tokenizer and the image processor alone, so images work without torchvision
(``AutoProcessor`` needs it for its video processor): the chat template, then each ``<|image_pad|>`` expanded to
``grid_thw.prod() // merge_size**2`` copies, and ``mm_token_type_ids`` (1 on image tokens, 2 on video tokens).
Video needs the video processor, hence torchvision; without it a clear error names the install.

Generation: greedy when ``temperature`` is 0, else sampling with ``temperature``/``top_p``/``top_k``; ``seed`` seeds
torch's generator; ``stop`` strings end the answer (and are cut from it, as OpenAI servers do); ``max_tokens``
bounds it. Other request parameters (``extra``, ``--param``) mean what ``PARAMS`` says (``repetition_penalty``,
``presence_penalty``/``frequency_penalty``, ``response_format`` as structured output, ...); any other is refused
before the model loads (UnsupportedParameterError), never passed to ``generate()`` unchecked. ``enable_thinking``
goes to the chat template; a ``</think>`` in the answer splits reasoning from text.
Tools as vLLM runs them for Qwen models (hermes parser): ``tools`` go to the chat template (``render_prompt``), the
answer's ``<tool_call>`` blocks become ``Response.tool_calls`` (``qwenvl.protocols.toolcalls``; ``parse_tools`` for
``tool_choice``).
Usage: ``input_tokens`` is the prompt's length in tokens, ``image_tokens``/``video_tokens`` counted in the prompt
as the service counts them (``Usage.image_tokens``: the placeholders, from the processor's grids, plus the vision
markers around them: the estimate's count), ``output_tokens`` the generated tokens. One generation at a time per
loaded model (a lock); streaming runs ``generate`` on a thread with a streamer that hands out each token's text as
it is generated (``_token_streamer``), every wait with the request's ``timeout_s`` as its deadline; each delta
carries the counts so far (``StreamEvent.usage``). A caller that leaves stops its generation at the next token (a
``StoppingCriteria`` that reads a cancel flag, ``_stopping``): the async face sets the flag when its call is
cancelled (a time-out, a `qwenvl serve` client gone) or its stream closed; a sync stream sets it when closed.
The same flag keeps the client's contracts an HTTP backend keeps by its connections: ``close()`` stops the
generations in flight (``TransformersBackend.close``: the client raises ClientClosedError, logged cancelled), and a
whole answer's ``timeout_s`` is its deadline (``TransformersBackend.complete``: APITimeoutError).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from qwenvl import env as qenv
from qwenvl.backends import family as families
from qwenvl.backends.base import MediaForm
from qwenvl.config import DEVICES, DTYPES
from qwenvl.errors import (
    APIConnectionError,
    APITimeoutError,
    InternalServerError,
    MediaError,
    QwenVLError,
    StreamInterruptedError,
    UnsupportedParameterError,
    UsageError,
)
from qwenvl.media.sources import read_regular_text
from qwenvl.models import ModelInfo
from qwenvl.plan import Call, ensure_sendable
from qwenvl.protocols import toolcalls
from qwenvl.protocols.common import make_response, usage_from
from qwenvl.types import ImagePart, Request, Response, StreamEvent, TextPart, VideoPart

INSTALL_HINT = (
    'pip install "qwenvl[local]"  (CPU: pip install torch==2.13.0 first; CUDA: the torch build for '
    "your CUDA from pytorch.org)"
)
VIDEO_HINT = (
    "Video needs torchvision (transformers' Qwen-VL video processor), in the build made for your torch: on CPU "
    "`pip install torch==2.14.1 torchvision==0.29.1` (the torchvision beside the CPU torch 2.13.0 fails on import)."
)
NAME = "transformers"


def check_installed() -> None:
    """Raise UsageError (exit 2, naming ``qwenvl[local]``) when torch or transformers cannot be imported."""
    _imports()


def _imports() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise UsageError(
            f"--backend transformers needs torch and transformers ({exc.name} is not installed)", hint=INSTALL_HINT
        ) from None
    return torch, transformers


# --- the model folder --------------------------------------------------------------------------------------


def _is_folder(ref: str) -> bool:
    return Path(ref).expanduser().is_dir()


def served_name(ref: str) -> str:
    """The name ``qwenvl serve`` serves ``ref`` under unless ``--served-model-name`` says: a hub id as it is, a
    folder by its own name (``./models/Qwen2.5-VL-3B-Instruct/`` -> ``Qwen2.5-VL-3B-Instruct``). Raises nothing."""
    return Path(ref).expanduser().resolve().name if _is_folder(ref) else ref


def read_config(ref: str, filename: str = "config.json") -> dict[str, Any]:
    """The model's config.json (a folder, or a hub id through the local cache / the hub). UsageError for a
    folder that is not a model; APIConnectionError for a hub id that cannot be fetched."""
    if _is_folder(ref):
        path = Path(ref).expanduser() / filename
        if not path.is_file():
            raise UsageError(
                f"{ref} is not a model folder (no {filename})",
                hint="Give the folder of a Qwen-VL checkpoint (config.json, *.safetensors, tokenizer).",
            )
        text = read_regular_text(path, error=MediaError, what="model configuration file")
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise MediaError(
                f"{path} is damaged: not JSON ({exc})",
                source=str(path),
                hint=DAMAGED_HINT,
            ) from None
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        raise UsageError(
            f"{ref!r} is neither a model folder nor a Hugging Face hub id (owner/name)",
            hint="For example --model Qwen/Qwen2.5-VL-3B-Instruct or --model ./my-model",
        )
    _, transformers = _imports()
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        with quiet_loading(transformers):
            downloaded = hf_hub_download(ref, filename, local_files_only=not hub_reachable())
    except LocalEntryNotFoundError:
        offline = qenv.hf_hub_offline()
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise APIConnectionError(
            f"cannot get {ref}: not in the local Hugging Face cache and {why}",
            hint=f"Download it once with network (`{download_command()} {ref}`), or give a local folder with "
            "--model PATH.",
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise APIConnectionError(
            f"cannot get {ref} from the Hugging Face hub: {str(exc).splitlines()[0]}",
            hint="Check the id, or give a local folder with --model PATH.",
        ) from None
    return json.loads(read_regular_text(Path(downloaded), what="model configuration file"))


def download_command() -> str:
    """The command the installed huggingface_hub has for downloading a model: ``hf download`` from 1.0 on (its
    ``hf`` CLI replaced ``huggingface-cli``), ``huggingface-cli download`` before. Raises nothing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("huggingface_hub").split(".", 1)[0])
    except (PackageNotFoundError, ValueError):
        major = 1
    return "hf download" if major >= 1 else "huggingface-cli download"


HUB_PROBE_TIMEOUT_S = 3.0  # seconds to connect to the hub before taking it as unreachable (local cache only)


@functools.cache
def hub_reachable() -> bool:
    """Whether the Hugging Face hub (huggingface_hub's endpoint) takes a connection now, asked once per process
    (``HUB_PROBE_TIMEOUT_S``). False under ``HF_HUB_OFFLINE``; True when a proxy is set (it cannot be probed
    directly). When False, the hub is not asked at all (the local cache only): huggingface_hub would otherwise
    retry a dead network for about 25 s, logging each retry. Raises nothing."""
    if qenv.hf_hub_offline():
        return False
    if qenv.proxy_set():
        return True
    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "", port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def family_of(ref: str, cfg: dict[str, Any]) -> str:
    model_type = str(cfg.get("model_type") or "")
    if model_type not in families.MODEL_TYPES:
        raise UsageError(
            f"{ref} is not a Qwen-VL model (model_type {model_type or 'missing'!r}); the transformers "
            f"backend runs {', '.join(sorted(families.MODEL_TYPES))}",
            hint="Give a Qwen-VL checkpoint with --model (a hub id or a folder).",
        )
    return families.MODEL_TYPES[model_type]


def processor_min_pixels(ref: str) -> int | None:
    """The image processor's own lower pixel bound (``size.shortest_edge``, or ``min_pixels``): Qwen3-VL's is
    65536 px (64 tokens), far above the 4-token floor, so small images are enlarged by the processor."""
    cfg = read_config(ref, "preprocessor_config.json")
    size = cfg.get("size") or {}
    value = size.get("shortest_edge") if isinstance(size, dict) else None
    value = value or cfg.get("min_pixels")
    return int(value) if isinstance(value, int | float) and value > 0 else None


def _factor(cfg: dict[str, Any]) -> int:
    vision = cfg.get("vision_config") or {}
    return int(vision.get("patch_size") or 14) * int(vision.get("spatial_merge_size") or 2)


# --- loading, once per process -----------------------------------------------------------------------------


@dataclass
class Loaded:
    ref: str
    family: str
    model: Any
    tokenizer: Any
    image_processor: Any
    device: str
    processor_template: str | None = None  # chat_template.json's template (the processor's), when there is one
    lock: threading.Lock = field(default_factory=threading.Lock)
    _video: Any = None

    def video_processor(self) -> Any:
        if self._video is None:
            try:
                import torchvision  # noqa: F401
                from transformers import AutoVideoProcessor
            except ImportError:
                raise UsageError(
                    "this model's video input needs torchvision, which is not installed", hint=VIDEO_HINT
                ) from None
            self._video = AutoVideoProcessor.from_pretrained(self.ref)
        return self._video


_LOADED: dict[tuple[str, str, str, str], Loaded] = {}
_LOAD_LOCK = threading.Lock()


def check_device(device: str) -> str:
    """``device`` if it is one of ``config.DEVICES``, else UsageError naming them. Raises nothing else."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}", hint="Use --device auto.")
    return device


def check_dtype(dtype: str) -> str:
    """``dtype`` if it is one of ``config.DTYPES`` (the one table: ``float64`` is not one), else UsageError."""
    if dtype not in DTYPES:
        raise UsageError(
            f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}", hint=f"Use --dtype {' / '.join(DTYPES)}."
        )
    return dtype


def attn_implementations(transformers: Any) -> list[str]:
    """The attention implementations the installed transformers knows: ``eager`` and those of its registry
    (``ALL_ATTENTION_FUNCTIONS``: sdpa, flash_attention_2, flex_attention...), each also as ``paged|NAME``. A hub
    kernel (``owner/name``) is accepted besides these and checked by transformers when the model loads."""
    registry = transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS
    names = ["eager", *(k for k in registry.valid_keys() if k != "eager")]
    return list(dict.fromkeys([*names, *(n if n.startswith("paged|") else f"paged|{n}" for n in names)]))


def check_attn_implementation(name: str, transformers: Any) -> str:
    """``name`` if the installed transformers knows it (``attn_implementations``) or it is a hub kernel
    (``owner/name``); else UsageError listing the valid values."""
    known = attn_implementations(transformers)
    if name in known or name.count("/") == 1:
        return name
    plain = [n for n in known if not n.startswith("paged|")]
    raise UsageError(
        f"unknown attention implementation {name!r}: use one of {', '.join(plain)} (or paged|NAME, or a hub "
        "kernel owner/name)",
        hint="Leave out --attn-implementation for the model's default (sdpa where torch has it).",
    )


DAMAGED_HINT = "Download the checkpoint again (or copy that file again), or give another folder with --model."
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def check_weights(ref: str) -> None:
    """For a model folder: UsageError unless its weights are there (``*.safetensors`` or ``pytorch_model*.bin``,
    and every shard an index file lists). A hub id is fetched when it loads: nothing to check here."""
    if not _is_folder(ref):
        return
    folder = Path(ref).expanduser()
    hint = "Download the checkpoint again (all its *.safetensors), or give another folder with --model."
    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(json.loads(read_regular_text(index, what="weights index")).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            raise UsageError(f"{index} cannot be read as a weights index", hint=hint) from None
        missing = sorted(str(x) for x in shards if not (folder / str(x)).is_file())
        if missing:
            raise UsageError(f"{ref} lacks weight files its {index.name} lists: {', '.join(missing[:3])}", hint=hint)
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise UsageError(f"{ref} has no weights (no *.safetensors or pytorch_model*.bin)", hint=hint)
    check_files(folder)


def check_files(folder: Path) -> None:
    """MediaError (exit 3) naming the first damaged file of a model folder: a ``*.json`` (config, tokenizer,
    processor, chat template, weights index) that is not JSON, or a ``*.safetensors`` whose header does not read
    or does not cover the file (a cut-off download: ``safetensors.safe_open`` checks both; its tensors are not
    read). Without this, transformers' own exception (``SafetensorError``, the tokenizers library's ``Exception``)
    would reach the user as an internal error. Raises nothing for a sound folder."""
    hint = DAMAGED_HINT
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            why = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MediaError(f"{path} is damaged: not JSON ({why})", source=str(path), hint=hint) from None
    try:
        from safetensors import safe_open
    except ImportError:  # transformers brings it; without it, transformers says so when loading
        return
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except Exception as exc:  # safetensors' SafetensorError (not an OSError) and OSError
            why = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MediaError(f"{path} is damaged: {why}", source=str(path), hint=hint) from None


def check_local(ref: str, *, device: str = "auto", dtype: str = "auto", attn_implementation: str | None = None) -> str:
    """What can be checked cheaply before a server (``qwenvl serve``, ``qwenvl mcp``) starts, without loading the
    weights: torch and transformers import, ``ref`` is a Qwen-VL model (its config) with its weights present, the
    device is there, the dtype and attention implementation are known. Returns the device that would be used.
    Raises UsageError (exit 2) for each fault; APIConnectionError (exit 5) for a hub id that cannot be had."""
    torch, transformers = _imports()
    check_dtype(dtype)
    family_of(ref, read_config(ref))
    check_weights(ref)
    where = pick_device(check_device(device), torch)
    if attn_implementation:
        check_attn_implementation(attn_implementation, transformers)
    return where


def pick_device(device: str, torch: Any) -> str:
    if device != "auto":
        if device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available to torch", hint="Use --device cpu.")
        if device == "mps" and not torch.backends.mps.is_available():
            raise UsageError("--device mps: MPS is not available to torch", hint="Use --device cpu.")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str, torch: Any) -> Any:
    if check_dtype(dtype) == "auto":
        return "auto" if device == "cuda" else torch.float16 if device == "mps" else torch.float32
    return getattr(torch, dtype)


def load(ref: str, *, device: str = "auto", dtype: str = "auto", attn_implementation: str | None = None) -> Loaded:
    """The model, tokenizer and image processor of ``ref``, loaded once per process. Nothing is kept when
    any part fails (no half-loaded model)."""
    torch, transformers = _imports()
    key = (ref, device, dtype, attn_implementation or "")
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        cfg = read_config(ref)
        family = family_of(ref, cfg)
        check_weights(ref)
        where = pick_device(device, torch)
        kw: dict[str, Any] = {"dtype": pick_dtype(dtype, where, torch)}
        if attn_implementation:
            kw["attn_implementation"] = check_attn_implementation(attn_implementation, transformers)
        hub = {} if _is_folder(ref) or hub_reachable() else {"local_files_only": True}  # no retries of a dead net
        try:
            with quiet_loading(transformers):
                tokenizer = transformers.AutoTokenizer.from_pretrained(ref, **hub)
                image_processor = transformers.AutoImageProcessor.from_pretrained(ref, **hub)
                model = transformers.AutoModelForImageTextToText.from_pretrained(ref, **kw, **hub)
        except Exception as exc:  # transformers, tokenizers, safetensors, torch: each has its own exceptions
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, OSError | ValueError | ImportError):
                first = f"{type(exc).__name__}: {first}"
            raise UsageError(
                f"cannot load {ref}: {first[:300]}",
                hint="A Qwen-VL checkpoint needs config.json, the weights, the tokenizer and preprocessor_config.json.",
            ) from None
        model.to(where)
        model.eval()
        loaded = Loaded(
            ref=ref,
            family=family,
            model=model,
            tokenizer=tokenizer,
            image_processor=image_processor,
            device=where,
            processor_template=processor_template(ref),
        )
        _LOADED[key] = loaded
        return loaded


@contextlib.contextmanager
def quiet_loading(transformers: Any) -> Iterator[None]:
    """transformers' progress bars ("Loading weights: ...", downloads) off while a model loads, unless
    ``$QWENVL_DEBUG`` is set; put back as they were afterwards (``transformers.utils.logging``'s switch, which its
    ``tqdm`` and huggingface_hub's follow), and huggingface_hub's log below errors (its retry warnings: the one-line
    error that ends them says it). qwenvl prints its own progress where there is any."""
    import logging

    switch = transformers.utils.logging
    if qenv.debug():
        yield
        return
    hub_log = logging.getLogger("huggingface_hub")  # its retry warnings ("Retrying in 1s [Retry 1/5]"): the
    level = hub_log.level  # error that ends them says it in one line
    hub_log.setLevel(logging.ERROR)
    bars = switch.is_progress_bar_enabled()
    if bars:
        switch.disable_progress_bar()
    try:
        yield
    finally:
        hub_log.setLevel(level)
        if bars:
            switch.enable_progress_bar()


def processor_template(ref: str) -> str | None:
    """The chat template in the model's ``chat_template.json`` (None when it has none): the template transformers'
    ``AutoProcessor`` uses before the tokenizer's (transformers/processing_utils.py reads this legacy file first).
    Qwen2.5-VL checkpoints have both: this one renders images but no tools, the tokenizer's (tokenizer_config.json)
    is Qwen2.5's text template, which renders tools but no images."""
    import transformers
    from transformers.utils import cached_file

    try:
        with quiet_loading(transformers):
            path = cached_file(
                ref,
                "chat_template.json",
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        if path is None:
            return None
        value = json.loads(read_regular_text(Path(path), what="chat template file")).get("chat_template")
    except (OSError, ValueError, AttributeError) as exc:
        raise MediaError(
            f"{ref}'s chat_template.json is damaged: {exc}",
            source=f"{ref}/chat_template.json",
            hint=DAMAGED_HINT,
        ) from None
    return value if isinstance(value, str) and value else None


# --- inputs -------------------------------------------------------------------------------------------------


def _decode_ref(ref: str) -> Any:
    from PIL import Image

    if not ref.startswith("data:"):
        raise UsageError(
            f"the transformers backend takes local images only (got {ref[:80]})",
            hint="Download it first (remote images are fetched with --fetch-urls, the default here).",
        )
    data = base64.b64decode(ref.split(",", 1)[1])
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def _pixels(call: Call) -> dict[str, Any]:
    """Sent reference -> picture: the prepared images in memory, else decoded from their data: URL."""
    out: dict[str, Any] = {}
    for item in call.media:
        if item.kind == "image" and isinstance(item.sent, str) and item.pixels is not None:
            out[item.sent] = item.pixels
        elif item.kind == "video" and isinstance(item.sent, list) and isinstance(item.pixels, list):
            for ref, pic in zip(item.sent, item.pixels, strict=False):
                if pic is not None:
                    out[ref] = pic
    return out


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as chat templates take it: ``arguments`` a mapping (Qwen2.5's template always writes
    ``arguments | tojson``; Qwen3-VL's writes a string as it is and a mapping as JSON), kept a string when it is not
    a JSON object."""
    fn: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else call
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            parsed = None
        args = parsed if isinstance(parsed, dict) else args
    out: dict[str, Any] = {"type": "function", "function": {"name": fn.get("name"), "arguments": args}}
    if call.get("id"):
        out["id"] = call["id"]
    return out


def hf_messages(call: Call) -> tuple[list[dict[str, Any]], list[Any], list[tuple[list[Any], float]]]:
    """(chat-template messages, images in order, videos as (frames, fps) in order).

    Messages have the shape transformers' chat templates take (its chat-templating docs): a turn that is text only
    has a string ``content``; an assistant turn keeps its ``tool_calls`` (``arguments`` as a mapping); a ``tool``
    turn keeps ``tool_call_id`` and ``name``. Qwen's templates put tool results in a user turn inside
    ``<tool_response>``; the template does that, not this code."""
    pictures = _pixels(call)
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    videos: list[tuple[list[Any], float]] = []
    for m in call.messages:
        extra: dict[str, Any] = {}
        if m.tool_calls:
            extra["tool_calls"] = [_template_call(c) for c in m.tool_calls]
        if m.role == "tool":
            extra.update({k: v for k, v in (("tool_call_id", m.tool_call_id), ("name", m.name)) if v})
        if isinstance(m.content, str):
            messages.append({"role": m.role, "content": m.content, **extra})
            continue
        if not m.media():
            messages.append({"role": m.role, "content": m.text(), **extra})
            continue
        parts: list[dict[str, Any]] = []
        for part in m.content:
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                images.append(pictures.get(part.image) or _decode_ref(part.image))
                parts.append({"type": "image"})
            elif isinstance(part, VideoPart):
                if not isinstance(part.video, list):
                    raise UsageError(
                        "the transformers backend takes a local video (sampled here into frames), "
                        f"not {part.video[:80]}",
                        hint="Download the video first and give the file.",
                    )
                frames = [pictures.get(ref) or _decode_ref(ref) for ref in part.video]
                videos.append((frames, part.fps or 2.0))
                parts.append({"type": "video"})
        if m.role == "assistant" or m.role == "system":
            messages.append({"role": m.role, "content": "".join(p.get("text", "") for p in parts), **extra})
        else:
            messages.append({"role": m.role, "content": parts, **extra})
    return messages, images, videos


def _tokenizer_template(tok: Any, tools: list[dict[str, Any]] | None) -> str | None:
    try:
        return tok.get_chat_template(None, tools=tools)  # a tokenizer may name a "tool_use" template
    except ValueError:
        return None


def render_prompt(loaded: Loaded, messages: list[dict[str, Any]], request: Request) -> str:
    """The prompt text: ``messages`` through the model's chat template, with ``request.tools`` and
    ``enable_thinking`` as template variables, and the assistant's turn opened.

    The template is the processor's (``chat_template.json``) when the model has one, else the tokenizer's, as
    ``AutoProcessor`` chooses. With tools, a template that renders nothing of them is passed over for the next (as
    vLLM passes over the processor's template when a request has tools): Qwen2.5-VL's processor template has no
    tools section, its tokenizer's has. UsageError when no template renders the tools, or the template cannot
    render the conversation."""
    tok = loaded.tokenizer
    tools = request.tools or None
    kwargs: dict[str, Any] = {}
    if request.enable_thinking is not None:
        kwargs["enable_thinking"] = request.enable_thinking
    templates = [t for t in (loaded.processor_template, _tokenizer_template(tok, tools)) if t]
    if not templates:
        raise UsageError(
            f"{loaded.ref} has no chat template (neither chat_template.json nor the tokenizer's)",
            hint="Use a checkpoint that ships chat_template.json (the Qwen-VL instruct models do).",
        )

    def render(template: str, with_tools: list[dict[str, Any]] | None) -> str:
        try:
            return tok.apply_chat_template(
                messages,
                tools=with_tools,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=True,
                **kwargs,
            )
        except Exception as exc:  # jinja's TemplateError, or a TypeError/KeyError inside the template
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(
                f"{loaded.ref}'s chat template cannot render this conversation: {first}",
                hint="Use the checkpoint's own chat template (an instruct Qwen-VL model).",
            ) from None

    if not tools:
        return render(templates[0], None)
    for template in templates:
        text = render(template, tools)
        if text != render(template, None):
            return text
    raise UsageError(
        f"{loaded.ref}'s chat template does not render tools, so the model would never see them",
        hint="Use a model whose chat template has a tools section (Qwen3-VL), or leave out the tools.",
    )


@dataclass
class Inputs:
    tensors: dict[str, Any]
    prompt_tokens: int
    image_tokens: int | None
    video_tokens: int | None


def build_inputs(loaded: Loaded, call: Call) -> Inputs:
    """The model inputs for ``call``: chat template, image processor, placeholders expanded (see module doc)."""
    torch, _ = _imports()
    messages, images, videos = hf_messages(call)
    tok = loaded.tokenizer
    text = render_prompt(loaded, messages, call.request)
    tensors: dict[str, Any] = {}
    image_tokens = video_tokens = None  # counted in the tokenized prompt below
    proc = loaded.image_processor
    merge = int(getattr(proc, "merge_size", 2))
    if images:
        _check_budget(proc, images, call)
        out = proc(images=images, return_tensors="pt")
        tensors["pixel_values"] = out["pixel_values"]
        tensors["image_grid_thw"] = out["image_grid_thw"]
        counts = [int(g.prod()) // merge**2 for g in out["image_grid_thw"]]
        text = _expand(text, "<|image_pad|>", ["<|image_pad|>" * n for n in counts])
    if videos:
        vproc = loaded.video_processor()
        out = vproc(
            videos=[frames for frames, _ in videos], return_tensors="pt", do_sample_frames=False, return_metadata=True
        )
        tensors["pixel_values_videos"] = out["pixel_values_videos"]
        tensors["video_grid_thw"] = out["video_grid_thw"]
        vmerge = int(getattr(vproc, "merge_size", 2))
        placeholders = []
        for i, grid in enumerate(out["video_grid_thw"]):
            per_group = int(grid[1:].prod()) // vmerge**2
            groups = int(grid[0])
            if loaded.family == "qwen3-vl":  # timestamps per temporal group, as Qwen3VLProcessor writes them
                fps = videos[i][1]
                step = int(getattr(vproc, "temporal_patch_size", 2))
                pieces = []
                for g in range(groups):
                    t = (g * step + (step - 1) / 2) / fps
                    pieces.append(f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_group + "<|vision_end|>")
                placeholders.append("".join(pieces))
            else:
                placeholders.append("<|video_pad|>" * (per_group * groups))
        text = _expand(text, "<|video_pad|>", placeholders)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    ids = enc["input_ids"]
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    video_id = tok.convert_tokens_to_ids("<|video_pad|>")
    types = torch.zeros_like(ids)
    types[ids == image_id] = 1
    types[ids == video_id] = 2
    if images:
        image_tokens = _media_tokens(tok, ids, image_id)
    if videos:
        video_tokens = _media_tokens(tok, ids, video_id)
    tensors.update(input_ids=ids, attention_mask=enc["attention_mask"], mm_token_type_ids=types)
    tensors = {k: v.to(loaded.device) for k, v in tensors.items()}
    if "pixel_values" in tensors and loaded.model.dtype != tensors["pixel_values"].dtype:
        tensors["pixel_values"] = tensors["pixel_values"].to(loaded.model.dtype)
    return Inputs(tensors, int(ids.shape[1]), image_tokens, video_tokens)


def _media_tokens(tok: Any, ids: Any, pad_id: int) -> int:
    """The prompt tokens one kind of media takes, counted in the prompt as the service counts them (reference/
    dashscope-api.md §4.1, ``Usage.image_tokens``): its placeholders (``pad_id``) plus the ``<|vision_start|>`` /
    ``<|vision_end|>`` markers right around each run of them (an image: its grid's placeholders + 2, the estimate's
    count; a Qwen3-VL video has a pair per temporal group)."""
    row = ids[0]
    pads = row == pad_id
    start, end = (tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>"))
    markers = ((row[:-1] == start) & pads[1:]).sum() + (pads[:-1] & (row[1:] == end)).sum()
    return int(pads.sum()) + int(markers)


def _expand(text: str, token: str, replacements: list[str]) -> str:
    pieces = text.split(token)
    if len(pieces) - 1 != len(replacements):
        raise UsageError(
            f"the chat template placed {len(pieces) - 1} {token} for {len(replacements)} inputs",
            hint="Use the checkpoint's own chat template (an instruct Qwen-VL model).",
        )
    out = [pieces[0]]
    for rep, rest in zip(replacements, pieces[1:], strict=True):
        out += [rep, rest]
    return "".join(out)


def _check_budget(proc: Any, images: list[Any], call: Call) -> None:
    """Refuse an image over the model's own pixel budget (its processor would shrink it silently)."""
    size = getattr(proc, "size", None)
    hi = (
        getattr(size, "longest_edge", None)
        if size is not None and not isinstance(size, dict)
        else (size or {}).get("longest_edge")
    )
    if not hi:
        return
    sources = [i.label for i in call.media if i.kind == "image"]
    for n, img in enumerate(images):
        if img.width * img.height > hi:
            label = sources[n] if n < len(sources) else f"image {n + 1}"
            raise MediaError(
                f"{label} is sent at {img.width}x{img.height} = {img.width * img.height:,} px, over "
                f"the local model's budget of {hi:,} px (its processor's longest_edge)",
                source=label,
                hint=_budget_hint(call.request),
            )


def _budget_hint(request: Request) -> str:
    """What to change when an image is over a local model's budget: drop the option that made it so (the one the
    caller gave: ``--no-resize``, ``--high-res``, ``--detail high``), else lower ``--max-pixels``."""
    from qwenvl.plan import high_resolution

    given = [
        flag
        for flag, on in (
            ("--no-resize", request.prepare is False),
            ("--high-res", bool(request.vl_high_resolution_images)),
            ("--detail high", request.vl_high_resolution_images is None and high_resolution(request)),
        )
        if on
    ]
    if given:
        return f"Leave out {' and '.join(given)}: without it qwenvl resizes images to the model's budget."
    return "Lower --max-pixels (or leave it out: the default fits the model's budget)."


# --- generation ---------------------------------------------------------------------------------------------


def parse_tools(request: Request) -> bool:
    """Whether the answer is read for tool calls, as vLLM does for Qwen models (``--tool-call-parser hermes``,
    vllm/entrypoints/openai/serving_chat.py): with tools and ``tool_choice`` "auto" or unset. ``"none"``: the tools
    are still in the prompt (vLLM's default, without --exclude-tools-when-tool-choice-none) and the answer is text.
    ``"required"`` and a named function are refused (UsageError): vLLM honours them with constrained decoding
    (structured outputs), which this backend does not do."""
    choice = request.tool_choice
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        raise UsageError(
            f"unknown tool_choice {choice!r}",
            hint='Use "auto", "none", "required" or {"type": "function", "function": {"name": ...}}.',
        )
    if choice is not None and choice not in ("auto", "none"):
        what = "tool_choice 'required'" if choice == "required" else f"tool_choice {json.dumps(choice)[:80]}"
        raise UsageError(
            f"{what} needs constrained decoding, which the transformers backend does not do",
            hint="Use tool_choice 'auto' (the model decides) or 'none'; vLLM (--backend openai) honours it.",
        )
    return bool(request.tools) and choice != "none"


def generate_kwargs(call: Call, loaded: Loaded) -> dict[str, Any]:
    """The ``model.generate()`` arguments of ``call``: the Request's own fields (module doc) and each pass-through
    parameter as ``PARAMS`` says (``check_params`` first: UnsupportedParameterError / UsageError)."""
    r = call.request
    check_params(r)
    kw: dict[str, Any] = {"max_new_tokens": r.max_tokens}
    sampling = bool(r.temperature and r.temperature > 0)
    if sampling:
        kw.update(do_sample=True, temperature=r.temperature)
        if r.top_p is not None:
            kw["top_p"] = r.top_p
        if r.top_k is not None:
            kw["top_k"] = r.top_k
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if r.stop:
        kw["stop_strings"] = [r.stop] if isinstance(r.stop, str) else list(r.stop)
        kw["tokenizer"] = loaded.tokenizer
    for key, value in r.extra.items():
        kw.update(PARAMS[key].kwargs(value, sampling))
    penalties = {k: float(r.extra[k]) for k in ("presence_penalty", "frequency_penalty") if r.extra.get(k)}
    if penalties:
        kw["logits_processor"] = _penalty_processor(**penalties)
    return kw


def _penalty_processor(presence_penalty: float = 0.0, frequency_penalty: float = 0.0) -> Any:
    """A ``LogitsProcessorList`` with OpenAI's additive penalties, as vLLM applies them (vllm/model_executor/layers/
    utils.py ``apply_penalties``): each token's logit is lowered by ``frequency_penalty`` times the number of times
    it was generated so far, and by ``presence_penalty`` once if it was; prompt tokens do not count. Imported from
    its own module (see ``_stopping``)."""
    from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList

    class Penalties(LogitsProcessor):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start: int | None = None  # the prompt's length: the first call sees the prompt alone

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if self.start is None:
                self.start = int(input_ids.shape[1])
            generated = input_ids[:, self.start :]
            if generated.shape[1] == 0:
                return scores
            counts = scores.new_zeros(scores.shape)
            counts.scatter_add_(1, generated, scores.new_ones(generated.shape))
            return scores - frequency_penalty * counts - presence_penalty * (counts > 0).to(scores.dtype)

    return LogitsProcessorList([Penalties()])


# --- request parameters ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """What one pass-through parameter means here: ``meaning`` (for the table's reader and errors), ``check(value,
    request)`` -> why this value cannot be honoured (None: it can), ``kwargs(value, sampling)`` -> the ``generate()``
    arguments it becomes ({} when it is honoured another way, or is harmless to accept)."""

    meaning: str
    check: Callable[[Any, Request], str | None]
    kwargs: Callable[[Any, bool], dict[str, Any]] = lambda value, sampling: {}


def _number(low: float, high: float | None, *, low_open: bool = False) -> Callable[[Any, Request], str | None]:
    def check(value: Any, request: Request) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return "it takes a number"
        if value < low or (low_open and value == low) or (high is not None and value > high):
            left = "(" if low_open else "["
            return (
                f"it takes a number in {left}{low:g}, {high:g}]" if high is not None else f"it takes a number > {low:g}"
            )
        return None

    return check


def _falsy(what: str) -> Callable[[Any, Request], str | None]:
    def check(value: Any, request: Request) -> str | None:
        return None if value in (None, False, 0) else what

    return check


def _parallel_tool_calls(value: Any, request: Request) -> str | None:
    if not isinstance(value, bool):
        return "it takes true or false"
    if value or not request.tools:
        return None  # true: every <tool_call> block of the answer is read; without tools there is nothing to limit
    return (
        "at most one tool call needs constrained decoding, which it does not do (it reads every call the model writes)"
    )


def _response_format(value: Any, request: Request) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("text", "json_object"):
        return None
    if kind == "json_schema":
        spec = value.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            return None
        return 'json_schema needs {"json_schema": {"name": ..., "schema": {...}}}'
    return 'it takes {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}'


# Every pass-through parameter this backend takes (Request.extra: the CLI's --param, the other fields of a request
# to `qwenvl serve`), and what it means here. A name not in the table (DashScope's enable_search, search_options,
# enable_code_interpreter, ocr_options, preserve_thinking; transformers' own generate() arguments; anything else)
# and a value its entry refuses are refused before the model is loaded (``check_params``): nothing is generated
# that would silently ignore what was asked. Request fields (temperature, top_p, top_k, seed, stop, max_tokens,
# enable_thinking, tools, tool_choice, json_mode, schema) are honoured as the module doc says.
PARAMS: dict[str, Param] = {
    "repetition_penalty": Param(
        "generate(repetition_penalty): the multiplicative penalty (CTRL) of DashScope and vLLM, 1.0 none",
        _number(0, None, low_open=True),
        lambda v, sampling: {"repetition_penalty": float(v)},
    ),
    "presence_penalty": Param(
        "OpenAI's additive penalty on tokens already generated, as vLLM applies it (a logits processor)",
        _number(-2, 2),
    ),
    "frequency_penalty": Param(
        "OpenAI's additive penalty per time a token was generated, as vLLM applies it (a logits processor)",
        _number(-2, 2),
    ),
    "min_p": Param(
        "generate(min_p) when sampling (vLLM's min_p); greedy decoding already keeps the likeliest token",
        _number(0, 1),
        lambda v, sampling: {"min_p": float(v)} if sampling and v else {},
    ),
    "response_format": Param(
        "text: the default; json_object and json_schema: json_mode / schema (``adapt``), the answer checked and "
        "repaired once, else StructuredOutputError (no constrained decoding)",
        _response_format,
    ),
    "n": Param("1: one answer, as always (other values: plan.check_extra refuses them)", lambda v, r: None),
    "logprobs": Param("false only: no log-probabilities are returned", _falsy("it returns no log-probabilities")),
    "top_logprobs": Param("0 only: no log-probabilities are returned", _falsy("it returns no log-probabilities")),
    "parallel_tool_calls": Param(
        "true, or any value without tools: every <tool_call> block of the answer is read", _parallel_tool_calls
    ),
    "user": Param("an end-user id for the caller's own records: nothing to do in process", lambda v, r: None),
}


def structured_request(request: Request) -> Request:
    """``request`` with a ``response_format`` parameter (``extra``; a served request's field) made the library's own
    structured output, which this backend honours by instruction, check and one repair (``qwenvl.structured``;
    StructuredOutputError when the answer is still not valid): ``json_object`` is ``json_mode``, ``json_schema``
    its ``schema``; ``text`` (the default) is dropped. Raises SchemaDefinitionError for a schema that is not JSON
    Schema, UsageError beside ``enable_thinking`` (as ``Request`` does for json_mode)."""
    from qwenvl import structured

    fmt = request.extra.get("response_format")
    if not isinstance(fmt, dict):
        return request
    update: dict[str, Any] = {"extra": {k: v for k, v in request.extra.items() if k != "response_format"}}
    if fmt.get("type") == "json_object":
        update["json_mode"] = True
    elif fmt.get("type") == "json_schema":
        schema = fmt["json_schema"]["schema"]
        structured.check_schema(schema)
        update["schema"] = schema
    if request.enable_thinking and len(update) > 1:
        raise UsageError(
            "response_format json_object/json_schema needs enable_thinking off: Qwen-VL models give structured "
            "output only in non-thinking mode",
            hint="Leave out --thinking / enable_thinking, or the response_format.",
        )
    return request.model_copy(update=update)


def check_params(request: Request) -> None:
    """Refuse what this backend cannot honour, before anything is loaded or generated: a pass-through parameter not
    in ``PARAMS`` or a value its entry refuses (UnsupportedParameterError naming it), ``thinking_budget``
    (UsageError), a ``tool_choice`` it cannot honour (``parse_tools``). Returns None."""
    parse_tools(request)
    if request.thinking_budget is not None:
        raise UsageError(
            "thinking_budget is a DashScope parameter; the transformers backend does not take it",
            hint="Limit the whole answer with --max-tokens instead.",
        )
    for key, value in request.extra.items():
        entry = PARAMS.get(key)
        if entry is None:
            raise UnsupportedParameterError(
                f"the parameter '{key}' is not supported by the local transformers backend; nothing was generated",
                param=key,
                hint=f"Leave out --param {key}. The backend takes: {', '.join(sorted(PARAMS))}.",
            )
        why = entry.check(value, request)
        if why:
            raise UnsupportedParameterError(
                f"{key}={json.dumps(value, default=str)[:80]} is not supported by the local transformers backend: "
                f"{why}; nothing was generated",
                param=key,
                hint=f"Change or leave out --param {key}.",
            )


def split_answer(text: str, stops: list[str]) -> tuple[str, str | None, bool]:
    """(answer, reasoning, stopped): cut at the first stop string; split reasoning at ``</think>``."""
    stopped = False
    for stop in stops:
        at = text.find(stop)
        if at >= 0:
            text, stopped = text[:at], True
    reasoning = None
    if "</think>" in text:
        head, _, text = text.partition("</think>")
        reasoning = head.replace("<think>", "").strip() or None
        text = text.lstrip("\n")
    return text, reasoning, stopped


def _stops(call: Call) -> list[str]:
    stop = call.request.stop
    return [] if not stop else [stop] if isinstance(stop, str) else list(stop)


def _token_streamer(tokenizer: Any, timeout: float) -> Any:
    """A ``TextIteratorStreamer`` (iterate it for the text; each wait bounded by ``timeout`` seconds, then
    ``queue.Empty``) that hands out the text of each token as it is generated: transformers' own holds text back
    until a space or a line end, so an answer without spaces arrived whole at the end. Only an incomplete
    character (a UTF-8 sequence or byte-fallback tokens split across tokens, decoded as U+FFFD) waits for the next
    token. ``generated``: the tokens generated so far. Imported here, not at the module's top (see ``_stopping``)."""
    from transformers.generation.streamers import TextIteratorStreamer

    class TokenStreamer(TextIteratorStreamer):  # type: ignore[misc]
        generated = 0
        print_len: int
        next_tokens_are_prompt: bool

        def put(self, value: Any) -> None:
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            self.generated += int(value.numel())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd") or len(text) <= self.print_len:
                return  # the rest of a character is still to come
            printable, self.print_len = text[self.print_len :], len(text)
            self.on_finalized_text(printable)

    return TokenStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)


def _usage(inputs: Inputs, output_tokens: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": inputs.prompt_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": inputs.prompt_tokens + output_tokens,
    }
    details = {
        k: v for k, v in (("image_tokens", inputs.image_tokens), ("video_tokens", inputs.video_tokens)) if v is not None
    }
    if details:
        usage["prompt_tokens_details"] = details
    return usage


def _finish(generated: list[int], eos: set[int], max_new: int, stopped: bool) -> str:
    if stopped or (generated and generated[-1] in eos):
        return "stop"
    return "length" if len(generated) >= max_new else "stop"


def _eos(loaded: Loaded) -> set[int]:
    cfg = getattr(loaded.model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    return ids


STOP_WAIT_S = 30.0  # the longest a cancelled async call waits for its generation to stop (a step, a busy CPU)
_HOLD_POLL_S = 0.05  # how often a request waiting for the model looks whether it was cancelled


class Cancelled(QwenVLError):
    """A generation whose caller left before the model was free: nothing was generated. Raised only where a
    ``cancel`` event was given and set (the async backend's caller sees its own ``asyncio.CancelledError``)."""


def _hold(loaded: Loaded, cancel: threading.Event, timeout_s: float | None = None) -> None:
    """Take the model's lock (one generation at a time), waiting at most ``timeout_s`` seconds (None: for as long
    as it takes) and giving up at once when ``cancel`` is set. Raises APITimeoutError, Cancelled."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not loaded.lock.acquire(timeout=_HOLD_POLL_S):
        if cancel.is_set():
            raise Cancelled("the request was cancelled while it waited for the local model")
        if deadline is not None and time.monotonic() > deadline:
            raise APITimeoutError(f"the local model stayed busy for {timeout_s:g} s (one generation at a time)")
    if cancel.is_set():
        loaded.lock.release()
        raise Cancelled("the request was cancelled while it waited for the local model")


def _stopping(
    cancel: threading.Event, torch: Any, deadline: float | None = None, late: threading.Event | None = None
) -> Any:
    """A ``StoppingCriteriaList`` that ends generation at its next token once ``cancel`` is set, or once the clock
    (``time.monotonic``) passes ``deadline`` (then ``late`` and ``cancel`` are set); transformers checks its
    stopping criteria after every generated token: generation/utils.py, ``_sample``. Imported from its own
    module, not through ``transformers``' lazy top level: a batch's workers reaching that at once raced in it
    ("module 'transformers' has no attribute 'StoppingCriteria'")."""
    from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

    class _Cancel(StoppingCriteria):  # type: ignore[misc]
        def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
            if deadline is not None and not cancel.is_set() and time.monotonic() >= deadline:
                if late is not None:
                    late.set()
                cancel.set()
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Cancel()])


class TransformersBackend:
    """In-process backend (see the module doc). ``model``: hub id or folder used when a request names none."""

    name = NAME
    protocol = "openai"  # the usage log and media checks treat it as a plain OpenAI-style backend
    media_form: MediaForm = "memory"
    abilities: frozenset[str] = frozenset({"images", "video-frames", "stream", "thinking", "json", "tools"})

    def __init__(
        self,
        *,
        model: str | None = None,
        family: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        self.model = model
        self.family = family
        self.device = check_device(device or "auto")  # the tables' values, checked now (config.DEVICES, DTYPES)
        self.dtype = check_dtype(dtype or "auto")
        self.attn_implementation = attn_implementation
        self.base_url = None
        self._runs_lock = threading.Lock()  # guards the two sets below
        self._runs: set[threading.Event] = set()  # the cancel flags of the calls in flight (``_running``)
        self._cut: set[threading.Event] = set()  # those ``close()`` stopped

    # -- planning (no weights loaded) --
    def adapt(self, request: Request) -> Request:
        if "model" not in request.model_fields_set:
            if not self.model:
                raise UsageError(
                    "--backend transformers needs --model: a hub id or a model folder",
                    hint="For example --model Qwen/Qwen2.5-VL-3B-Instruct",
                )
            request = request.model_copy(update={"model": self.model})
        family_of(request.model, read_config(request.model))  # a Qwen-VL model, before anything else
        check_params(request)  # what this backend cannot honour is refused before the model loads
        request = structured_request(request)
        if not request.fetch_urls:  # the model cannot fetch: remote images are downloaded and prepared here
            request = request.model_copy(update={"fetch_urls": True})
        if request.min_pixels is None:  # count (and send) small images as the model's processor will see them
            low = processor_min_pixels(request.model)
            if low and (request.max_pixels is None or low <= request.max_pixels):
                request = request.model_copy(update={"min_pixels": low})
        return request

    def check_params(self, request: Request) -> None:
        """Refuse the request parameters this backend cannot honour (module function ``check_params``)."""
        check_params(request)

    def model_info(self, name: str) -> ModelInfo:
        cfg = read_config(name)
        fam = self.family or family_of(name, cfg)
        return families.family_model(name, fam, families.context_of(cfg), factor=_factor(cfg))

    def loaded(self, name: str) -> Loaded:
        return load(name, device=self.device, dtype=self.dtype, attn_implementation=self.attn_implementation)

    def is_loaded(self, name: str | None = None) -> bool:
        """Whether ``name`` (default: this backend's model) is loaded in this process (``load``'s cache)."""
        ref = name or self.model
        return bool(ref) and (ref, self.device, self.dtype, self.attn_implementation or "") in _LOADED

    def _body(self, call: Call) -> dict[str, Any]:
        from qwenvl.protocols import openai as wire

        eng = wire.Engine("transformers")
        return {
            "model": call.request.model,
            "device": self.device,
            "dtype": self.dtype,
            "attn_implementation": self.attn_implementation,
            "messages": [wire.message(m, eng) for m in call.messages],
            "generate": {k: v for k, v in call.params.items() if k != "response_format"},
        }

    def preview_body(self, call: Call, stream: bool = False) -> tuple[str, dict[str, Any]]:
        return f"in-process:{call.request.model}", self._body(call)

    def cache_key(self, call: Call) -> str:
        from qwenvl.store.cache import cache_key

        return cache_key(
            NAME,
            str(Path(call.request.model).expanduser().resolve())
            if _is_folder(call.request.model)
            else call.request.model,
            self._body(call),
        )

    def close(self) -> None:
        """Stop the generations in flight at their next token (and the calls waiting for the model): each raises
        ``_closed_error`` (APIConnectionError for a whole answer, StreamInterruptedError with the text so far for a
        stream; a client closing its backend makes it ClientClosedError, logged ``cancelled``), as closing an HTTP
        backend cuts its connections. The loaded model stays cached for the process; a later call runs as usual.
        Returns at once (the generation stops within a token). Raises nothing."""
        with self._runs_lock:
            self._cut |= self._runs
            runs = list(self._runs)
        for cancel in runs:
            cancel.set()

    @contextlib.contextmanager
    def _running(self, cancel: threading.Event) -> Iterator[None]:
        """A call in flight, its ``cancel`` flag known to ``close()`` meanwhile; a call ``close()`` stopped raises
        ``_closed_error`` instead of ``Cancelled`` (a stop before the model was free)."""
        with self._runs_lock:
            self._runs.add(cancel)
        try:
            yield
        except Cancelled:
            self._check_cut(cancel)
            raise
        finally:
            with self._runs_lock:
                self._runs.discard(cancel)
                self._cut.discard(cancel)

    def _check_cut(
        self, cancel: threading.Event, *, stream: bool = False, partial_text: str = "", partial_reasoning: str = ""
    ) -> None:
        """Raise the error of a call ``close()`` stopped (``cancel`` among the cut ones), else nothing: for a
        ``stream`` a StreamInterruptedError keeping the text so far (``partial_*``), else an APIConnectionError
        (the answer so far is dropped, as a closed connection's)."""
        with self._runs_lock:
            cut = cancel in self._cut
        if not cut:
            return
        message = "the transformers backend was closed while it generated this answer: generation stopped"
        if stream:
            raise StreamInterruptedError(message, partial_text=partial_text, partial_reasoning=partial_reasoning)
        raise APIConnectionError(message)

    # -- answering --
    def complete(self, call: Call, *, cancel: threading.Event | None = None) -> Response:
        """The whole answer. ``cancel``: once set (``AsyncTransformersBackend`` sets it when its caller leaves),
        generation stops at its next token and the answer so far is returned; set before the model is free (one
        generation at a time), nothing is generated and Cancelled is raised.

        ``timeout_s`` is the call's deadline (seconds, from when it starts waiting for the model, once the model
        is loaded: loading is not counted), as an HTTP backend's time-out of a whole attempt: a wait for the model
        or a generation still running then is stopped (at its next token) and APITimeoutError is raised; the
        tokens generated by then are dropped (the usage log has the attempt as APITimeoutError). ``close()``
        during the call raises APIConnectionError (``_check_cut``)."""
        ensure_sendable(call)
        torch, _ = _imports()
        loaded = self.loaded(call.request.model)
        gen = generate_kwargs(call, loaded)
        cancel = threading.Event() if cancel is None else cancel
        timeout = call.request.timeout_s
        deadline, late = time.monotonic() + timeout, threading.Event()
        with self._running(cancel):
            _hold(loaded, cancel, timeout)
            try:
                inputs = build_inputs(loaded, call)
                if call.request.seed is not None:
                    torch.manual_seed(call.request.seed)
                with torch.inference_mode():
                    out = loaded.model.generate(
                        **inputs.tensors, **gen, stopping_criteria=_stopping(cancel, torch, deadline, late)
                    )
            finally:
                loaded.lock.release()
            self._check_cut(cancel)
        if late.is_set():
            error = APITimeoutError(
                f"the local model did not finish within {timeout:g} s (timeout_s): generation stopped, its "
                "answer so far dropped"
            )
            error.delivered = True  # it ran
            raise error
        generated = out[0, inputs.prompt_tokens :].tolist()
        raw = loaded.tokenizer.decode(generated, skip_special_tokens=True)
        text, reasoning, stopped = split_answer(raw, _stops(call))
        return self._response(
            call,
            text,
            reasoning,
            _usage(inputs, len(generated)),
            _finish(generated, _eos(loaded), gen["max_new_tokens"], stopped),
        )

    def _response(self, call: Call, text: str, reasoning: str | None, usage: dict[str, Any], finish: str) -> Response:
        """The Response; with tools (``parse_tools``) the answer's ``<tool_call>`` blocks become ``tool_calls``,
        the text outside them ``text``, and the finish reason "tool_calls" (as vLLM's hermes parser)."""
        calls = None
        if parse_tools(call.request):
            parsed = toolcalls.parse(text)
            if parsed.tool_calls:
                text, calls, finish = parsed.content, parsed.tool_calls, "tool_calls"
        return make_response(
            text=text,
            model=call.request.model,
            usage=usage,
            request_id=f"local-{uuid.uuid4().hex[:12]}",
            finish_reason=finish,
            reasoning=reasoning,
            tool_calls=calls,
            protocol=NAME,
        )

    def stream(self, call: Call, *, cancel: threading.Event | None = None) -> Iterator[StreamEvent]:
        """Deltas, then ``done``. Generation stops at its next token when the reader closes the iterator, or once
        ``cancel`` is set (``AsyncTransformersBackend`` sets it when its reader leaves; set before the model is
        free, nothing is generated and Cancelled is raised). Waits for the model at most ``timeout_s``
        (APITimeoutError)."""
        ensure_sendable(call)
        torch, _ = _imports()
        loaded = self.loaded(call.request.model)
        gen = generate_kwargs(call, loaded)
        timeout = call.request.timeout_s
        cancel = threading.Event() if cancel is None else cancel
        with self._running(cancel):
            yield from self._stream(call, loaded, gen, cancel, timeout, torch)

    def _stream(
        self, call: Call, loaded: Loaded, gen: dict[str, Any], cancel: threading.Event, timeout: float, torch: Any
    ) -> Iterator[StreamEvent]:
        _hold(loaded, cancel, timeout)
        result: dict[str, Any] = {}
        worker: threading.Thread | None = None
        try:
            inputs = build_inputs(loaded, call)
            streamer = _token_streamer(loaded.tokenizer, timeout)

            def run() -> None:
                try:
                    if call.request.seed is not None:
                        torch.manual_seed(call.request.seed)
                    with torch.inference_mode():
                        result["out"] = loaded.model.generate(
                            **inputs.tensors,
                            **gen,
                            streamer=streamer,
                            stopping_criteria=_stopping(cancel, torch),
                        )
                except BaseException as exc:  # handed to the consumer below
                    result["error"] = exc
                    streamer.end()

            worker = threading.Thread(target=run, name="qwenvl-generate", daemon=True)
            worker.start()
            yield from self._relay(call, streamer, worker, result, inputs, loaded, gen, cancel, timeout)
        finally:
            cancel.set()
            if worker is not None:  # its current step ends before the next generation may start
                worker.join(timeout)
            loaded.lock.release()

    def _relay(
        self,
        call: Call,
        streamer: Any,
        worker: threading.Thread,
        result: dict[str, Any],
        inputs: Inputs,
        loaded: Loaded,
        gen: dict[str, Any],
        cancel: threading.Event,
        timeout: float,
    ) -> Iterator[StreamEvent]:
        """Deltas as they come, holding back what may be the start of a stop string or of ``</think>``;
        reasoning until ``</think>`` when thinking was asked for. With tools (``parse_tools``) the text goes
        through ``toolcalls.StreamSplitter``: it stops at the first ``<tool_call>``, the calls arrive whole in the
        ``done`` response (the stream shape every backend gives), and the text deltas joined equal its ``text``."""
        import queue

        splitter = toolcalls.StreamSplitter() if parse_tools(call.request) else None

        def delta(kind: Literal["text", "reasoning"], text: str) -> Iterator[StreamEvent]:
            if splitter is not None and kind == "text":
                text = splitter.feed(text)
            if text:  # with the counts so far: the prompt's tokens and the tokens generated up to here
                yield StreamEvent(type=kind, text=text, usage=usage_from(_usage(inputs, streamer.generated)))

        stops = _stops(call)
        marks = [*stops, "</think>"]

        def held(text: str) -> int:  # characters at its end that may be the start of a mark (held back, no more)
            return max(
                (k for m in marks for k in range(min(len(m) - 1, len(text)), 0, -1) if text.endswith(m[:k])), default=0
            )

        kind: Literal["text", "reasoning"] = "reasoning" if call.request.enable_thinking else "text"
        raw = ""
        shown = 0  # characters of ``raw`` already handed out (or skipped, for </think>)
        stopped = False
        try:
            for piece in streamer:
                raw += piece
                while True:
                    think = raw.find("</think>", shown)
                    cut = min((i for i in (raw.find(s, shown) for s in stops) if i >= 0), default=-1)
                    if think >= 0 and (cut < 0 or think < cut):
                        if think > shown:
                            yield from delta(kind, raw[shown:think])
                        shown, kind = think + len("</think>"), "text"
                        continue
                    break
                if cut >= 0:
                    if cut > shown:
                        yield from delta(kind, raw[shown:cut])
                    shown, stopped = cut, True
                    cancel.set()
                    break
                safe = len(raw) - held(raw[shown:])
                if safe > shown:
                    yield from delta(kind, raw[shown:safe])
                    shown = safe
        except queue.Empty:
            cancel.set()
            raise APITimeoutError(f"the local model produced nothing for {timeout:g} s") from None
        if not stopped and shown < len(raw):
            yield from delta(kind, raw[shown:])
        worker.join(timeout)
        if "error" in result:
            raise UsageError(
                f"generation failed: {result['error']}",
                hint="Run again with QWENVL_DEBUG=1 for the details; if memory ran out, lower --max-pixels.",
            ) from result["error"]
        out = result.get("out")
        generated = out[0, inputs.prompt_tokens :].tolist() if out is not None else []
        answer, reasoning, cut_here = split_answer(raw, stops)
        self._check_cut(cancel, stream=True, partial_text=answer, partial_reasoning=reasoning or "")
        response = self._response(
            call,
            answer,
            reasoning,
            _usage(inputs, len(generated)),
            _finish(generated, _eos(loaded), gen["max_new_tokens"], stopped or cut_here),
        )
        if splitter is not None and splitter.rest(response.text):
            yield StreamEvent(type="text", text=splitter.rest(response.text))
        yield StreamEvent(type="done", response=response)


class AsyncTransformersBackend:
    """The asyncio face of TransformersBackend: generation runs on worker threads."""

    name = NAME
    protocol = "openai"
    media_form: MediaForm = "memory"
    abilities: frozenset[str] = TransformersBackend.abilities

    def __init__(self, **kw: Any) -> None:
        self._sync = TransformersBackend(**kw)
        self.base_url = None
        self._load_error: str | None = None

    async def warm(self) -> None:
        """Load the backend's model now, on a worker thread (``qwenvl serve`` does at start, so that ``/ready``
        turns true once it can answer). A failure is kept for ``ready`` and raised again by the first request."""
        if not self._sync.model:
            return
        try:
            await asyncio.to_thread(self._sync.loaded, self._sync.model)
        except Exception as exc:  # kept, not raised: the server goes on answering /health and /ready
            # told to the server's callers (/ready, a 503): the model by its served name, a file by its own name,
            # never the server's paths; the operator's log has the whole error
            logging.getLogger("qwenvl.serve").error("cannot load %s: %s", self._sync.model, exc)
            ref, name = str(self._sync.model), served_name(str(self._sync.model))
            if isinstance(exc, MediaError) and exc.source:
                why = f"its file {Path(exc.source).name} is damaged"
            elif isinstance(exc, QwenVLError) and str(exc).strip():
                why = str(exc).strip().splitlines()[0].replace(str(Path(ref).expanduser().resolve()), name)
                why = why.replace(ref, name).removeprefix(f"cannot load {name}: ")
            else:
                why = type(exc).__name__
            self._load_error = f"cannot load {name}: {why}"

    async def ready(self) -> str | None:
        """None when the backend's model is loaded (a request can be answered), else why not (one line)."""
        if self._sync.is_loaded():
            return None
        if not self._sync.model:
            return "no model given (--model)"
        return self._load_error or f"loading {self._sync.model}"

    def adapt(self, request: Request) -> Request:
        if self._load_error is not None and request.model in (None, self._sync.model):
            # the server's own model failed to load (``warm``): the server's fault, told as such (503), never the
            # client's (a 400 naming the server's flags)
            raise InternalServerError(
                f"the model of this server is not loaded: {self._load_error}; the server's operator must fix it",
                status=503,
                code="ModelNotLoaded",
            )
        return self._sync.adapt(request)

    def check_params(self, request: Request) -> None:
        self._sync.check_params(request)

    def model_info(self, name: str) -> ModelInfo:
        return self._sync.model_info(name)

    def preview_body(self, call: Call, stream: bool = False) -> tuple[str, dict[str, Any]]:
        return self._sync.preview_body(call, stream)

    def cache_key(self, call: Call) -> str:
        return self._sync.cache_key(call)

    async def aclose(self) -> None:
        """``TransformersBackend.close``: the generations in flight stop at their next token. Raises nothing."""
        self._sync.close()

    async def complete(self, call: Call) -> Response:
        """``TransformersBackend.complete`` on a worker thread. A caller that leaves (its task cancelled, a
        time-out, `qwenvl serve`'s client disconnecting) stops the generation at its next token; the cancellation
        is raised once it has stopped (at most ``STOP_WAIT_S`` later), so the model is free when it is."""
        cancel = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(self._sync.complete, call, cancel=cancel))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            await _stopped(work)
            raise

    async def stream(self, call: Call) -> AsyncIterator[StreamEvent]:
        """``TransformersBackend.stream``, read on a worker thread. A reader that leaves (closes the iterator, its
        task cancelled) stops the generation at its next token, as ``complete``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[StreamEvent | None, BaseException | None]] = asyncio.Queue()
        cancel = threading.Event()

        def hand(event: StreamEvent | None, error: BaseException | None = None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: no one is reading
                loop.call_soon_threadsafe(queue.put_nowait, (event, error))

        def pump() -> None:  # the sync generator lives on this one thread, from its first step to its close
            events = self._sync.stream(call, cancel=cancel)
            try:
                for event in events:  # once cancelled, the generation ends within a token: read to its end, so
                    hand(event)  # that a stream close() stopped hands its error (``_check_cut``) to the reader
            except BaseException as exc:  # handed to the reader
                hand(None, exc)
                return
            finally:
                events.close()  # type: ignore[attr-defined]  # a generator
            hand(None)

        work = asyncio.ensure_future(asyncio.to_thread(pump))
        try:
            while True:
                event, error = await queue.get()
                if error is not None:
                    raise error
                if event is None:
                    return
                yield event
        finally:
            cancel.set()
            await _stopped(work)


async def _stopped(work: asyncio.Future[Any]) -> None:
    """Wait (at most ``STOP_WAIT_S``) for a cancelled generation's worker to end; what it raised is dropped (no
    one is waiting for its answer)."""
    with contextlib.suppress(BaseException):  # a second cancellation ends the wait; the caller raises its own
        await asyncio.wait({work}, timeout=STOP_WAIT_S)
    if work.done():
        if not work.cancelled():
            work.exception()  # retrieved: not an "exception was never retrieved" warning
    else:
        work.add_done_callback(lambda w: None if w.cancelled() else w.exception())


__all__ = ["AsyncTransformersBackend", "Cancelled", "Loaded", "TransformersBackend", "build_inputs", "load"]
