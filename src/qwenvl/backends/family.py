"""A local model's family: which pixel rule, budget and grounding convention apply to a name qwenvl's model
table does not know (a served name such as ``tiny``, ``qwen2.5vl:7b`` or a folder).

The family comes from ``--family`` when given, else from the names the model goes by (served name, the path it
was loaded from, a config's ``model_type``). The numbers are the model table's (``qwenvl.models``): a Qwen3-VL
model gets qwen3-vl-flash's rules (32 px per token side, boxes in 0-1000), a Qwen2.5-VL model
qwen2.5-vl-7b-instruct's (28 px, boxes in pixels of the image as sent). Qwen2-VL has 28 px and boxes in 0-1000
(Qwen2-VL's report, section 2.2: coordinates normalised to [0, 1000)).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from qwenvl.errors import UsageError
from qwenvl.models import ModelInfo, Prices, model_info

# family -> (model-table entry whose rules apply, overrides)
_TEMPLATES: dict[str, tuple[str, dict]] = {
    "qwen3-vl": ("qwen3-vl-flash", {}),
    "qwen2.5-vl": ("qwen2.5-vl-7b-instruct", {}),
    "qwen2-vl": ("qwen2.5-vl-7b-instruct", {"family": "qwen2-vl", "grounding": "relative-1000"}),
}
# transformers' model_type -> family
MODEL_TYPES = {"qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl", "qwen3_vl_moe": "qwen3-vl"}


def infer_family(*names: str | None) -> str | None:
    """The family named in any of ``names`` (``Qwen/Qwen2.5-VL-7B-Instruct``, ``qwen2.5vl:7b``, ``qwen3_vl``...),
    else None."""
    for name in names:
        if not name:
            continue
        if name in MODEL_TYPES:
            return MODEL_TYPES[name]
        key = re.sub(r"[^a-z0-9]", "", name.lower())
        if "qwen3vl" in key:
            return "qwen3-vl"
        if "qwen25vl" in key or "qvq" in key:
            return "qwen2.5-vl"
        if "qwen2vl" in key:
            return "qwen2-vl"
    return None


def context_of(config: dict[str, Any]) -> int | None:
    """A checkpoint's context window in tokens, from its ``config.json`` (a dict): the text model's
    ``max_position_embeddings`` (``text_config``, where transformers puts it for Qwen-VL, else the top level);
    None when it says none. Raises nothing."""
    text = config.get("text_config")
    for where in (text if isinstance(text, dict) else {}, config):
        value = where.get("max_position_embeddings")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def family_model(name: str, family: str, context_tokens: int | None = None, **overrides: object) -> ModelInfo:
    """The rules of ``family`` under the name ``name`` (no price: a local model costs no tokens). ``context_tokens``:
    the model's own context window (its checkpoint's config, the engine's ``max_model_len``), else the family's
    table entry's; the answer's and a video's token caps are never above it."""
    base, extra = _TEMPLATES[family]
    fields: dict[str, Any] = {"resolution": f"a local {family} model: the rules of {base}", **extra, **overrides}
    template = model_info(base)
    if context_tokens:
        fields.update(
            context_tokens=context_tokens,
            max_output_tokens=min(template.max_output_tokens, context_tokens),
            video_total_tokens=min(template.video_total_tokens, context_tokens),
        )
    return replace(template, name=name, prices=Prices(), known=False, local_family=True, **fields)


def resolve(
    name: str, family: str | None, *also: str | None, where: str = "", context_tokens: int | None = None
) -> ModelInfo:
    """``family`` (declared) or the family inferred from ``name`` and ``also``; UsageError when neither.
    ``context_tokens``: the model's own window (``family_model``)."""
    chosen = family or infer_family(name, *also)
    if chosen is None:
        raise UsageError(
            f"cannot tell the model family of {name!r}{where}",
            hint="Say it with --family qwen2.5-vl or --family qwen3-vl (QWENVL_FAMILY).",
        )
    return family_model(name, chosen, context_tokens)


# --- what a model listing (``GET /v1/models``) says of a model ----------------------------------------------------
# vLLM lists ``id``, ``object``, ``created``, ``owned_by``, ``root`` (the path or hub id the model was loaded from) and
# ``max_model_len`` (the context it serves the model with) per model (vllm/entrypoints/openai/protocol.py ModelCard;
# reference/serving.md). ``qwenvl serve`` lists the same fields, and what a qwenvl client needs besides: ``family``
# (whose pixel, token and grounding rules apply: one of ``config.FAMILIES``, or a table family for a cloud model)
# and ``local`` (True: the model runs on the server's own engine and has no price; False: a DashScope model, priced
# as the model table says). The one home of both sides: ``listing_entry`` writes an entry, ``listed_model`` reads it.


def listing_entry(name: str, info: ModelInfo, *, local: bool, root: str | None = None) -> dict[str, Any]:
    """The ``/v1/models`` entry of the model served as ``name`` whose rules are ``info``: ``{"id", "object":
    "model", "created": 0, "owned_by": "qwenvl", "root" (``root``, default ``name``: never a server path),
    "max_model_len" (``info.context_tokens``, tokens), "family" (``info.family``), "local"}``. Raises nothing."""
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "qwenvl",
        "root": root or name,
        "max_model_len": info.context_tokens,
        "family": info.family,
        "local": local,
    }


def listed_window(entry: dict[str, Any]) -> int | None:
    """An entry's ``max_model_len`` (tokens) when it is a positive whole number, else None. Raises nothing."""
    value = entry.get("max_model_len")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def listed_family(entry: dict[str, Any]) -> str | None:
    """An entry's ``family`` when it is one of ``_TEMPLATES``' (a local family; qwenvl serve's field), else None.
    Raises nothing."""
    value = entry.get("family")
    return value if isinstance(value, str) and value in _TEMPLATES else None


def retrieve_entry(get_json: Callable[[str], Any], base: str, name: str) -> dict[str, Any] | None:
    """The entry a server gives for ``name`` when asked by name: ``get_json(f"{base}/models/{name}")`` (OpenAI's
    retrieve-model route; ``qwenvl serve`` answers it for the names its listing leaves out too, such as a model
    folder's path), the name quoted whole. The entry (``listing_entry``'s shape) when the server answers with one
    for that very name, else None (a 404, an engine without the route, no answer: ``get_json``'s QwenVLError).
    Asked before a name the listing does not show is refused, so that a client accepts what the server accepts.
    Raises nothing."""
    from urllib.parse import quote

    from qwenvl.errors import QwenVLError

    try:
        data = get_json(f"{base}/models/{quote(name, safe='')}")
    except QwenVLError:
        return None
    return data if isinstance(data, dict) and data.get("id") == name else None


def listed_paid(entry: dict[str, Any]) -> bool:
    """Whether a listing entry says its model is paid for: ``"local": false``, which ``qwenvl serve`` lists for a
    model it forwards to DashScope (``listing_entry``). Such a model is priced as the model table says, whatever
    protocol or address reaches it; an entry that does not say (vLLM's, any engine's) is not. Raises nothing."""
    return entry.get("local") is False


def listed_model(name: str, entry: dict[str, Any]) -> ModelInfo | None:
    """The rules of ``name`` as a listing entry (``listing_entry``) gives them, for a model the server says is local
    (``"local": true``): its family's rules (``family_model``: no price), with the entry's context
    (``max_model_len``); the family is the entry's, else the one its id or ``root`` names. None when the entry does
    not say the model is local or its family cannot be told (then the model table's rules stand). Raises nothing."""
    if entry.get("local") is not True:
        return None
    family = listed_family(entry) or infer_family(name, str(entry.get("root") or ""))
    if family is None:
        return None
    return family_model(name, family, listed_window(entry))
