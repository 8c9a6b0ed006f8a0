"""The normalized request, message and response models, the same for every protocol and backend.

Field names follow the skill's `multimodal.chat` interface (prompt, image, model, max_tokens, temperature,
detail, json_mode, schema, max_retries, retry_backoff_s), with its defaults (reference/dashscope-api.md §1.2),
and add what the service offers on top. Every model refuses unknown fields and values of the wrong type
(``strict``): constructing one raises ``pydantic.ValidationError``; ``Client`` turns that into a one-line
``UsageError``.
"""

from __future__ import annotations

import functools
import json as _json
import math
import os
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypedDict, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticUndefined

from qwenvl._constants import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BACKOFF_S, DEFAULT_TIMEOUT_S, MAX_DURATION_S
from qwenvl.errors import UsageError, blank_error
from qwenvl.models import DEFAULT_MODEL
from qwenvl.spelling import nearest

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

# A file as the library takes it (``Client.ask``'s images, ``Conversation.attach``): a path (``str`` or
# ``os.PathLike``), a ``file://``, ``data:``, ``http(s)://`` or ``oss://`` reference, or an image as bytes or a PIL
# image (``media_refs`` turns the objects into references).
MediaInput: TypeAlias = "str | os.PathLike[str] | bytes | PILImage"

Role = Literal["system", "user", "assistant", "tool"]
M = TypeVar("M", bound=BaseModel)  # a pydantic model given as a request's schema (``Response.parsed_as``)


class AskFields(TypedDict, total=False):
    """The ``Request`` fields as keyword arguments (``Client.complete(**fields)``, ``ask``, ``stream``, ``plan``),
    for type checkers: a misspelt name or a wrong type is flagged before the run (which refuses it too, with a
    UsageError naming the closest field). The fields, defaults and rules are ``Request``'s (one home; the test
    ``tests/test_library_api_faults.py`` keeps these names the same); ``prompt`` is ``RequestFields``'s, as
    ``ask`` takes it first. Types are what the library takes (files as ``MediaInput``, a ``schema`` as a dict,
    a file or a pydantic model), before the Request turns them into its own."""

    image: MediaInput | Sequence[MediaInput] | None
    images: Sequence[MediaInput]
    video: MediaInput | Sequence[MediaInput] | None
    fps: float | None
    pages: str | None
    model: str
    max_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: str | Sequence[str] | None
    detail: Literal["auto", "low", "high"]
    json_mode: bool
    schema: dict[str, Any] | type[BaseModel] | str | os.PathLike[str] | None
    repair: bool
    system: str | None
    messages: Sequence[Message | dict[str, Any]]
    stream: bool
    enable_thinking: bool | None
    thinking_budget: int | None
    tools: Sequence[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    vl_high_resolution_images: bool | None
    min_pixels: int | None
    max_pixels: int | None
    max_retries: int
    retry_backoff_s: float
    timeout_s: float
    timeout: float  # timeout_s's other name (the Request's alias)
    base_url: str | None
    prepare: bool
    upload: Literal["auto", "inline", "oss"]
    fetch_urls: bool
    video_as: Literal["frames", "file"]
    extra: dict[str, Any]


class RequestFields(AskFields, total=False):
    """``AskFields`` and the ``prompt``: every ``Request`` field as a keyword argument."""

    prompt: str | None


Detail = Literal["auto", "low", "high"]


def seconds(value: Any, name: str, *, zero: bool = False) -> float:
    """``value`` as a float when it is a usable duration in seconds: a finite number above 0 (``zero``: 0 too)
    and at most ``MAX_DURATION_S`` (a day). The one rule of every time-out, interval and wait the library takes
    outside a ``Request`` (whose fields have the same bounds): ``Client(timeout_s=...)``, the batch runner's
    intervals, ``BatchAPI``, ``qwenvl serve``'s settings. Raises UsageError naming ``name`` for NaN, infinity, a
    value out of range or not a number (``inf`` never means "no limit": a deadline of a day is the longest)."""
    hint = f"Give seconds {'from 0' if zero else 'above 0'} up to {MAX_DURATION_S:g} (a day), or leave {name} out."
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{name} is a number of seconds, not {type(value).__name__}", hint=hint)
    if not math.isfinite(value):
        raise UsageError(f"{name}: {value!r} is not a finite number of seconds", hint=hint)
    if value < 0 or (value == 0 and not zero):
        raise UsageError(f"{name} must be {'0 or more' if zero else 'greater than 0'}, not {value:g}", hint=hint)
    if value > MAX_DURATION_S:
        raise UsageError(
            f"{name}: {value:g} s is more than a day ({MAX_DURATION_S:g} s), the longest allowed", hint=hint
        )
    return float(value)


MAX_RETRIES = 20  # the most retries any request, client or batch may be given (``Request.max_retries``)


def count(value: Any, name: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` when it is a usable count: a whole number (an ``int``, not a bool, a float or a string) from
    ``minimum`` to ``maximum`` (None: no bound). The one rule of every count the library takes outside a ``Request``
    (whose ``max_retries`` has the same bounds): ``BatchAPI(max_retries=...)``, a batch's ``concurrency``, ``qwenvl
    serve``'s ``max_concurrent_per_key`` and ``batch_concurrency``. Raises UsageError naming ``name``."""
    span = f"from {minimum}" + (f" to {maximum}" if maximum is not None else "")
    hint = f"Give a whole number {span}, or leave {name} out."
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} is a whole number, not {type(value).__name__} {value!r}", hint=hint, field=name)
    if value < minimum or (maximum is not None and value > maximum):
        raise UsageError(f"{name} must be a whole number {span}, not {value}", hint=hint, field=name)
    return value


def not_blank(value: Any, name: str, *, required: bool = False) -> Any:
    """``value`` as given unless it is a blank string ("" or only spaces) where a value is required: then the
    blank-value error (``errors.blank_error``, the CLI's wording) naming ``name``, whose hint says to leave it out
    for the default, or (``required``: a parameter with no default) that it is required. None passes."""
    if isinstance(value, str) and not value.strip():
        raise blank_error(name, name, required=required)
    return value


def media_refs(value: Any, *, images: bool = True) -> Any:
    """Media given as objects, turned into the string references the request carries (JSON-serialisable): an
    ``os.PathLike`` its path; with ``images``, bytes and a PIL image a ``data:`` URL
    (``qwenvl.media.images.image_reference``: bytes identified by their content, a PIL image encoded by the
    project's encoding rule). Lists are converted item by item; anything else is left for the model to judge."""
    if isinstance(value, list | tuple):
        return [media_refs(v, images=True) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if images and not isinstance(value, str | None):
        from qwenvl.media.images import image_reference

        found = image_reference(value)
        return value if found is None else found
    return value


def _page_item(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def page_selection(value: Any) -> Any:
    """A PDF page selection as the string the request holds: ``2`` -> ``"2"``, ``[2, 3]`` -> ``"2,3"``,
    ``[1, "4-6"]`` -> ``"1,4-6"``; a string or None as it is. Pages are 1-based; the selection itself (ranges,
    bounds, page 0) is checked against the PDF when the request is planned (``qwenvl.media.pdf.parse_pages``:
    UsageError). Anything else (a bool, a float, a dict) is left for pydantic to refuse. Raises nothing."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list | tuple) and value and all(_page_item(v) for v in value):
        return ",".join(str(v).strip() for v in value)
    return value


class TextPart(BaseModel):
    """Text in a message's content: ``TextPart(text="What is this?")``.

    Raises pydantic.ValidationError when ``text`` is not a string or another field is given."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """An image: an http(s) URL, a local path, ``file://``, ``data:`` or ``oss://`` reference.

    ``min_pixels``/``max_pixels`` (pixels, width × height) bound this image's size as the model sees it, instead
    of the request's (DashScope puts them beside the image, reference/dashscope-api.md §2.1, §3). ``pages`` (a
    PDF's: which pages are rendered and sent) and ``prepare`` (False: sent as given) likewise override the
    request's, so that a history (``Response.messages``, a saved chat session) sends again what its turn sent;
    neither goes on the wire. Raises pydantic.ValidationError for a missing ``image``, a wrong type or an unknown
    field; the reference is checked when the request is planned (MediaError)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["image"] = "image"
    image: str
    min_pixels: int | None = Field(default=None, ge=1)
    max_pixels: int | None = Field(default=None, ge=1)
    # a PDF's pages to send ("2", "1-3,5"; ``page_selection``); None: the request's ``pages``, else every page
    pages: str | None = None
    # False: sent as the file is, not resized (the request's ``prepare=False``); None: the request's
    prepare: bool | None = None

    @field_validator("image", mode="before")
    @classmethod
    def _reference(cls, value: Any) -> Any:
        """An ``os.PathLike``, bytes or a PIL image, as the reference it stands for (``media_refs``)."""
        return media_refs(value)

    @field_validator("pages", mode="before")
    @classmethod
    def _pages(cls, value: Any) -> Any:
        return page_selection(value)


class VideoPart(BaseModel):
    """A video: a file or URL (str), or a list of frame images (sampled in order).

    ``fps``: frames per second to sample a video file at, or the rate a frame list was taken at (default: the
    request's ``fps``, else 2.0, the billing page's ``FPS``, reference/dashscope-api.md §4.2).
    ``min_pixels``/``max_pixels`` (pixels per frame) bound each frame; ``video_as`` and ``prepare`` override the
    request's (kept in a history so that a later turn sends the video as its own turn did). Raises
    pydantic.ValidationError for a missing ``video``, a wrong type or an unknown field; the files are checked when
    the request is planned (MediaError)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    type: Literal["video"] = "video"
    video: str | list[str]
    fps: float | None = Field(default=None, gt=0)  # the request's own fps rule
    min_pixels: int | None = Field(default=None, ge=1)
    max_pixels: int | None = Field(default=None, ge=1)
    # a local video: sampled to frames here or sent whole (the request's ``video_as``); None: the request's
    video_as: Literal["frames", "file"] | None = None
    # False: frames sent as they are (the request's ``prepare=False``); None: the request's
    prepare: bool | None = None

    @field_validator("video", mode="before")
    @classmethod
    def _reference(cls, value: Any) -> Any:
        """An ``os.PathLike`` as its path; a frame list's frames may also be bytes or PIL images (``media_refs``)."""
        return media_refs(value, images=isinstance(value, list | tuple))


Part = TextPart | ImagePart | VideoPart


def _coerce_part(item: Any) -> Any:
    """Accept OpenAI-style and DashScope-native parts in a history, as well as our own."""
    if not isinstance(item, dict) or item.get("type") in ("text", "image", "video"):
        return item
    kind = item.get("type")
    if kind == "image_url":
        url = item.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        extra = {k: item[k] for k in ("min_pixels", "max_pixels") if k in item}
        return {"type": "image", "image": url, **extra}
    if kind == "video_url":
        url = item.get("video_url")
        url = url.get("url") if isinstance(url, dict) else url
        return {"type": "video", "video": url, **({"fps": item["fps"]} if "fps" in item else {})}
    if kind is None:
        for key in ("text", "image", "video"):
            if key in item:
                return {"type": key, **item}
    return item


class Message(BaseModel):
    """One turn of a conversation: ``role`` (system, user, assistant, tool) and ``content``, a string or a list
    of ``TextPart``/``ImagePart``/``VideoPart`` (OpenAI-style ``image_url``/``video_url`` parts and DashScope's
    ``{"image": ...}`` items are accepted and converted). An assistant turn may carry ``reasoning`` (its
    thinking, kept but never sent back) and ``tool_calls``; a tool turn ``tool_call_id`` and ``name``.

    Raises pydantic.ValidationError for an unknown role, part or field, or a value of the wrong type."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Role
    content: str | list[TextPart | ImagePart | VideoPart] = ""
    reasoning: str | None = None  # an assistant's thinking (kept, never sent back)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_coerce_part(p) for p in value]
        return value

    def text(self) -> str:
        """The text of the content: the string, or its text parts joined (media left out). Raises nothing."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def media(self) -> list[ImagePart | VideoPart]:
        """The image and video parts of the content, in order ([] for a string). Raises nothing."""
        if isinstance(self.content, str):
            return []
        return [p for p in self.content if not isinstance(p, TextPart)]


# Request fields sent as generation parameters under the same name in both protocols (and read back from a
# wire body by ``protocols.inbound``).
GENERATION_FIELDS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "enable_thinking",
    "thinking_budget",
    "tools",
    "tool_choice",
)

# Wire keys qwenvl builds itself, beside the Request's own fields: ``extra`` (``--param``) may not set them, or
# the body would disagree with what was prepared, priced and checked. Each names the Request field to use instead
# (None: qwenvl always sets it the same way).
BUILT_WIRE_KEYS: dict[str, str | None] = {
    "input": "messages",  # native: {"input": {"messages": ...}}
    "parameters": None,  # native: the generation parameters' object
    "stream_options": "stream",
    "incremental_output": "stream",
    "result_format": None,
    "max_completion_tokens": "max_tokens",
    "timeout": "timeout_s",
}
# The CLI option that sets a Request field, where it is not ``--`` + the field's name with dashes; None: no verb
# has an option for it (it is set in a request: the library's Request, a line of ``qwenvl batch --requests``, or
# ``qwenvl analyze --request``).
FIELD_FLAGS: dict[str, str | None] = {
    "timeout_s": "--timeout",
    "vl_high_resolution_images": "--high-res",
    "enable_thinking": "--thinking",
    "prepare": "--no-resize",
    "extra": "--param",
    "tools": None,
    "tool_choice": None,
    "repair": None,
}

# Service parameters that qwenvl has no Request field for and that ``extra`` (``--param``) passes through, by
# protocol: their names as they go on the wire (compat: top-level body fields, what the OpenAI SDK's
# ``extra_body`` produces; native: inside ``parameters``). Sources, reference/dashscope-api.md:
# - both: the DashScope SDK's named arguments of ``MultiModalConversation.call`` (§2.1: repetition_penalty,
#   presence_penalty, enable_search, n, ocr_options, logprobs, top_logprobs; response_format passes through its
#   kwargs), the DashScope parameters compat takes in ``extra_body`` (§3: repetition_penalty, enable_search,
#   search_options, enable_code_interpreter, preserve_thinking, logprobs, top_logprobs, n), ``ocr_options`` of the
#   OCR skill (§1.5), and ``parallel_tool_calls`` (DashScope's function-calling parameter; 3rd-party: the
#   async-dashscope crate's ``Parameters``, koog's ``DashscopeParams``);
# - compat only: the OpenAI chat-completions fields ``frequency_penalty`` and ``user`` (3rd-party: koog's
#   ``DashscopeParams`` for DashScope's compatible mode).
# The plain openai protocol (vLLM, SGLang, llama.cpp, Ollama) has no list: each engine takes its own parameters.
_DASHSCOPE_PARAMS = frozenset(
    {
        "repetition_penalty",
        "presence_penalty",
        "enable_search",
        "search_options",
        "enable_code_interpreter",
        "preserve_thinking",
        "n",
        "logprobs",
        "top_logprobs",
        "ocr_options",
        "response_format",
        "parallel_tool_calls",
    }
)
PASS_THROUGH_PARAMS: dict[str, frozenset[str]] = {
    "compat": _DASHSCOPE_PARAMS | {"frequency_penalty", "user"},
    "native": _DASHSCOPE_PARAMS,
}


def reserved_extra(key: str, fields: Any) -> str | None:
    """Why ``extra[key]`` (``--param KEY=...``) cannot be passed through, or None when it can: a key that is a
    Request field (in ``fields``) or a wire key qwenvl builds (``BUILT_WIRE_KEYS``). Raises nothing."""
    if key in fields:
        return f"'{key}' is a request field of its own, not a pass-through parameter (extra, --param)"
    if key in BUILT_WIRE_KEYS:
        return f"'{key}' is built by qwenvl, not a pass-through parameter (extra, --param)"
    return None


def reserved_extra_hint(keys: list[str]) -> str:
    """``Use --temperature / temperature ...`` for reserved ``extra`` keys (the CLI keeps the flag, or the request
    key for a verb without it: ``cli.common.fit_hint``). Raises nothing."""
    uses, in_request, arguments = [], [], False
    for key in keys:
        field = BUILT_WIRE_KEYS.get(key, key)
        if field is None or field in ("messages", "extra", "stream"):
            continue
        if field in ("prompt", "image", "images", "video"):
            arguments = True
            continue
        flag = FIELD_FLAGS.get(field, "--" + field.replace("_", "-"))
        if flag is None:
            in_request.append(field)
        else:
            uses.append(f"{flag} / {field}")
    tail = "--param / extra is only for service parameters qwenvl has no option for."
    said = [f"Use {', '.join(uses)}"] if uses else []
    if arguments:
        said.append(
            f"{'the' if uses else 'The'} prompt and the media are the command's arguments (Request(prompt=..., "
            "image=...))"
        )
    if in_request:
        names, are = ", ".join(in_request), "is a field" if len(in_request) == 1 else "are fields"
        said.append(
            f"{names} {are} of the request itself (Request({in_request[0]}=...), or a request line of "
            "`qwenvl batch --requests` or `qwenvl analyze --request`)"
        )
    return f"{'; '.join(said)}; {tail}" if said else f"qwenvl builds the request body itself; {tail}"


with warnings.catch_warnings():
    # `schema` and `json` are the skill's names; they shadow deprecated BaseModel methods on purpose.
    warnings.simplefilter("ignore")

    class Request(BaseModel):
        """One question about images or video. Unknown fields are refused: use ``extra`` to pass through.

        Each field's description (``Request.model_fields[name].description``, also in the JSON schema) gives
        its unit, default and source. ``schema`` may be given as a dict, a JSON Schema file path or a pydantic
        model class (``timeout`` is accepted for ``timeout_s``).

        Raises pydantic.ValidationError for an unknown field, a value of the wrong type or out of range, a blank
        prompt, no prompt and no history, ``min_pixels`` above ``max_pixels``, or structured output with
        ``enable_thinking``; UsageError for a blank value where one is required (``model``, ``system``, ``stop``,
        ``base_url``, a media reference...: ``not_blank``) and a ``timeout_s`` that is not finite, not above 0 or
        over a day (``seconds``); MediaError for a ``schema`` file that is missing or cannot be read, or image
        bytes that are no image; SchemaDefinitionError for a ``schema`` that is not valid JSON Schema (or a file
        that is not JSON). Media may be given as ``os.PathLike``s, and images as bytes or PIL images (``media_refs``:
        converted to the string references the request holds).
        ``Client`` methods raise UsageError instead of ValidationError.
        """

        model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, allow_inf_nan=False)

        prompt: str | None = Field(
            default=None,
            description="The question or instruction (required unless `messages` ends in a user turn; not blank).",
        )
        image: str | list[str] | None = Field(
            default=None,
            description="An image or list of images: a local path, file://, data:, http(s):// or oss:// reference "
            "(the skill's field). A PDF gives one image per page (see `pages`).",
        )
        images: list[str] = Field(
            default_factory=list, description="More images, sent after `image`, in order (default: none)."
        )
        video: str | list[str] | None = Field(
            default=None,
            description="A video file or URL, or a list of frame images in order (sampled at `fps`, "
            "reference/dashscope-api.md §4.2).",
        )
        fps: float | None = Field(
            default=None,
            gt=0,
            description="Frames per second sampled from a video (default 2.0, the billing page's FPS; "
            "reference/dashscope-api.md §4.2), or the rate a frame list was taken at.",
        )
        pages: str | None = Field(
            default=None,
            description="PDF pages to send, 1-based: a page number (2), a list of them ([2, 3]) or a selection "
            'string ("1-3,5", "7-" to the end); held as the string ("2,3"); default: every page.',
        )
        model: str = Field(
            default=DEFAULT_MODEL,
            description="The model name (default qwen3-vl-plus, the skill's default; the client's `model` or "
            "$QWENVL_MODEL first). Its rules come from qwenvl.models.",
        )
        max_tokens: int = Field(
            default=512,
            ge=1,
            description="The most tokens the answer may have (default 512, the skill's default; the model's "
            "own limit is in qwenvl.models). An answer cut off here has finish_reason 'length'.",
        )
        temperature: float = Field(
            default=0.2,
            ge=0,
            lt=2,
            description="Sampling temperature in [0, 2) (default 0.2, the skill's default; range from the "
            "DashScope SDK, reference/dashscope-api.md §2.1). Lower is more deterministic.",
        )
        top_p: float | None = Field(
            default=None,
            gt=0,
            le=1,
            description="Nucleus sampling probability in (0, 1] (default: the service's; SDK range, §2.1).",
        )
        top_k: int | None = Field(
            default=None, ge=0, description="Sample from the k most likely tokens (default: the service's)."
        )
        seed: int | None = Field(
            default=None,
            ge=0,
            le=2**31 - 1,
            description="Random seed in [0, 2**31 - 1] for repeatable sampling (reference/dashscope-api.md §3).",
        )
        stop: str | list[str] | None = Field(
            default=None, description="A string, or strings, that end the answer when generated (not included)."
        )
        detail: Detail = Field(
            default="auto",
            description="Image detail (the skill's field): 'auto' (the model's default budget), 'low' (a quarter "
            "of it, qwenvl's rule: fewer tokens) or 'high' (vl_high_resolution_images: up to 16384 tokens per "
            "image, reference/dashscope-api.md §4.1).",
        )
        json_mode: bool = Field(
            default=False,
            description="Ask for a JSON answer (response_format json_object) and parse it into Response.json; "
            "an answer that is not JSON is sent back once for repair (see `repair`).",
        )
        schema: dict[str, Any] | None = Field(  # type: ignore[assignment]  # the skill's name; shadows BaseModel.schema
            default=None,
            description="A JSON Schema (a dict, a schema file's path, or a pydantic model class) the answer "
            "must be valid for; implies JSON output. Needs enable_thinking off (Qwen3-VL: structured output in "
            "non-thinking mode only, reference/dashscope-api.md §3).",
        )
        repair: bool = Field(
            default=True,
            description="Structured output: an invalid answer is sent back once to be corrected (a second paid "
            "request). False: one request only, and StructuredOutputError (with .response) when it is invalid.",
        )
        system: str | None = Field(
            default=None,
            description="A system prompt, put first (ignored when `messages` already begins with one).",
        )
        messages: list[Message] = Field(
            default_factory=list,
            description="The conversation so far (e.g. a previous Response.messages); the new turn is appended.",
        )
        stream: bool = Field(
            default=False,
            description="Stream the answer. Client.complete still returns the whole Response; Client.stream "
            "gives the deltas.",
        )
        enable_thinking: bool | None = Field(
            default=None,
            description="Thinking mode on or off for models that have it (default: the model's own; "
            "ModelInfo.thinking). The thinking arrives in Response.reasoning.",
        )
        thinking_budget: int | None = Field(
            default=None,
            ge=1,
            description="The most tokens the thinking may use (must be below max_tokens, reference/"
            "dashscope-api.md §2.4).",
        )
        tools: list[dict[str, Any]] | None = Field(
            default=None,
            description='Function definitions, [{"type": "function", "function": {"name", "description", '
            '"parameters"}}] (OpenAI\'s form); calls come back in Response.tool_calls.',
        )
        tool_choice: str | dict[str, Any] | None = Field(
            default=None,
            description='"auto", "none", "required" or {"type": "function", "function": {"name": ...}}.',
        )
        vl_high_resolution_images: bool | None = Field(
            default=None,
            description="DashScope's high-resolution switch: up to 16384 tokens per image instead of the "
            "model's default budget, and max_pixels ignored (reference/dashscope-api.md §4.1). Default: off, "
            "or on with detail='high'.",
        )
        min_pixels: int | None = Field(
            default=None,
            ge=1,
            description="The fewest pixels (width × height) an image is sent with; smaller ones are enlarged "
            "(default: the model's 4-token minimum, qwenvl.models).",
        )
        max_pixels: int | None = Field(
            default=None,
            ge=1,
            description="The most pixels (width × height) an image is sent with; larger ones are shrunk, "
            "keeping the aspect ratio (default: the model's budget, e.g. 2560 tokens × 32 × 32 px for Qwen3-VL; "
            "qwenvl.models).",
        )
        max_retries: int = Field(
            default=DEFAULT_MAX_RETRIES,
            ge=0,
            le=MAX_RETRIES,
            description="Retries after a failed attempt on 429, 500, 502-504, connection errors and time-outs "
            "(default 2, the skill's default; policy in qwenvl.retry).",
        )
        retry_backoff_s: float = Field(
            default=DEFAULT_RETRY_BACKOFF_S,
            ge=0,
            le=600,
            description="Seconds: the base of the exponential wait between retries, backoff × 2**n with jitter, "
            "at most 20 s (default 1.5, the skill's default; qwenvl.retry).",
        )
        timeout_s: float = Field(
            default=DEFAULT_TIMEOUT_S,
            gt=0,
            le=MAX_DURATION_S,
            validation_alias=AliasChoices("timeout_s", "timeout"),
            description="Seconds an attempt may take (a stream: the wait for each event), at most a day "
            "(MAX_DURATION_S); also accepted as `timeout` (default 120; qwenvl.transport).",
        )
        base_url: str | None = Field(
            default=None, description="The endpoint for this request only (default: the client's)."
        )
        prepare: bool = Field(
            default=True,
            description="Check and prepare media to the model's budget (resize, encode, sample frames). False: "
            "send files as they are.",
        )
        upload: Literal["auto", "inline", "oss"] = Field(
            default="auto",
            description="Local files through DashScope's temporary storage (native protocol, Beijing only): "
            "'inline' never, 'oss' always, 'auto' only what does not fit inline (qwenvl.backends.oss).",
        )
        fetch_urls: bool = Field(
            default=False,
            description="Download remote images (with a time-out, a size cap and few redirects) and prepare "
            "them like local files, instead of sending the URL.",
        )
        video_as: Literal["frames", "file"] = Field(
            default="frames",
            description="A local video: 'frames' (sampled here at `fps`) or 'file' (sent whole through "
            "temporary storage; native protocol, Beijing only).",
        )
        extra: dict[str, Any] = Field(
            default_factory=dict,
            description="Other service parameters, passed through to the request body as they are (compat: top "
            "level; native: in `parameters`), 0, False and '' included. A Request field's name or a wire key qwenvl "
            "builds (``BUILT_WIRE_KEYS``: input, stream_options, ...) is refused here; when planned, a name spelled "
            "like a known one but not it (temprature, top-p) is refused with 'Did you mean', and one qwenvl does not "
            "know for the protocol (``PASS_THROUGH_PARAMS``) is sent with a warning (qwenvl.plan.check_extra).",
        )

        _schema_model: type[BaseModel] | None = PrivateAttr(default=None)

        @model_validator(mode="before")
        @classmethod
        def _schema_input(cls, data: Any) -> Any:
            """``schema`` may be a dict, a JSON Schema file path, or a pydantic model class."""
            if isinstance(data, dict) and "schema" in data:
                value = data["schema"]
                if isinstance(value, type) and issubclass(value, BaseModel):
                    data = {**data, "schema": value.model_json_schema()}
                elif isinstance(value, str | os.PathLike):
                    from qwenvl.structured import load_schema

                    data = {**data, "schema": load_schema(os.fspath(value))}
                elif value is not None:  # a dict (or a wrong type): checked before anything is planned or sent
                    from qwenvl.structured import check_schema

                    check_schema(value)
            return data

        @model_validator(mode="wrap")
        @classmethod
        def _near_names(cls, data: Any, handler: Any) -> Any:
            """An unknown field near a known one says which (``max_token``: "Extra inputs are not permitted (did
            you mean 'max_tokens'?)", ``spelling.nearest``), where pydantic alone says only the first half; so does
            a value not among a field's choices (``detail="hihg"``: "Input should be 'auto', 'low' or 'high' (did
            you mean 'high'?)")."""
            try:
                return handler(data)
            except ValidationError as exc:
                errors = exc.errors()
                near: dict[int, str | None] = {}
                for i, e in enumerate(errors):
                    if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
                        near[i] = nearest(str(e["loc"][0]), cls.model_fields)
                    elif e["type"] == "literal_error" and len(e["loc"]) == 1 and isinstance(e.get("input"), str):
                        choices = re.findall(r"'([^']*)'", str(e.get("ctx", {}).get("expected", "")))
                        near[i] = nearest(e["input"], choices)
                if not any(near.values()):
                    raise
                details: list[Any] = []
                for i, e in enumerate(errors):
                    kind: Any = e["type"]
                    if near.get(i) and kind == "literal_error":
                        kind = PydanticCustomError(
                            "literal_error",
                            "Input should be {expected} (did you mean '{near}'?)",
                            {"expected": e["ctx"]["expected"], "near": near[i]},
                        )
                    elif near.get(i):
                        kind = PydanticCustomError(
                            "extra_forbidden",
                            "Extra inputs are not permitted (did you mean '{near}'?)",
                            {"near": near[i]},
                        )
                    detail = {"type": kind, "loc": e["loc"], "input": e["input"]}
                    if "ctx" in e and not near.get(i):
                        detail["ctx"] = e["ctx"]
                    details.append(detail)
                try:
                    rebuilt = ValidationError.from_exception_data(exc.title, details)
                except (KeyError, TypeError, ValueError):  # an error type pydantic cannot rebuild: its own words
                    raise exc from None
                raise rebuilt from None

        def __init__(self, **data: Any) -> None:
            model = data.get("schema")
            model = model if isinstance(model, type) and issubclass(model, BaseModel) else None
            super().__init__(**data)
            if model is not None:
                self._schema_model = model

        @field_validator("prompt")
        @classmethod
        def _prompt_not_blank(cls, value: str | None) -> str | None:
            if value is not None and not value.strip():
                raise ValueError("prompt is empty")
            return value

        @field_validator("pages", mode="before")
        @classmethod
        def _pages(cls, value: Any) -> Any:
            """``pages=2`` and ``pages=[2, 3]`` as the selection string (``page_selection``)."""
            return page_selection(value)

        @field_validator("image", "images", "video", mode="before")
        @classmethod
        def _media_objects(cls, value: Any, info: Any) -> Any:
            """Paths (``os.PathLike``) wherever a file is named; bytes and PIL images as images, and as a frame
            list's frames (``media_refs``): converted here, so the request stays JSON."""
            return media_refs(value, images=info.field_name != "video" or isinstance(value, list | tuple))

        @field_validator("model", "system", "base_url", "pages", "tool_choice", "image", "images", "video", "stop")
        @classmethod
        def _not_blank(cls, value: Any, info: Any) -> Any:
            """A blank string where a value is required is refused (``not_blank``), never dropped or defaulted: a
            blank ``model``, ``system``, ``base_url``, ``pages``, ``tool_choice``, media reference or stop
            sequence."""
            for item in value if isinstance(value, list) else [value]:
                not_blank(item, info.field_name)
            return value

        @field_validator("timeout_s", mode="before")
        @classmethod
        def _seconds(cls, value: Any, info: Any) -> Any:
            """The one duration rule (``seconds``: finite, above 0, at most a day), in the client's words."""
            return seconds(value, info.field_name)

        @field_validator("tools", "stop")
        @classmethod
        def _empty_is_none(cls, value: Any) -> Any:
            """``tools=[]`` and ``stop=[]`` mean none: not sent (OpenAI-style APIs refuse an empty ``tools``
            array)."""
            return None if value == [] else value

        @field_validator("extra")
        @classmethod
        def _extra_not_built(cls, value: dict[str, Any]) -> dict[str, Any]:
            for key in value:
                why = reserved_extra(key, cls.model_fields)
                if why:
                    raise ValueError(why)
            return value

        @model_validator(mode="after")
        def _check(self) -> Request:
            for name in _TEXT_FIELDS:
                if not _is_utf8(getattr(self, name)):
                    raise ValueError(f"{name} is not UTF-8 text (bytes kept as surrogates, PEP 383)")
            for i, message in enumerate(self.messages):
                texts = [message.content] if isinstance(message.content, str) else []
                texts += [part.text for part in message.content if isinstance(part, TextPart)]
                if not _is_utf8(texts):
                    raise ValueError(f"messages[{i}] is not UTF-8 text (bytes kept as surrogates, PEP 383)")
            if self.prompt is None and not self.messages:
                raise ValueError("a prompt is required (or a message history ending in a user turn)")
            if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
                raise ValueError("min_pixels is larger than max_pixels")
            if "response_format" in self.extra and (self.json_mode or self.schema is not None):
                raise ValueError(
                    "'response_format' is built by qwenvl from json_mode/schema, not a pass-through parameter "
                    "(extra, --param) beside them"
                )
            if self.tool_choice is not None and self.tools is None:
                if self.tool_choice not in ("auto", "none"):
                    raise ValueError(
                        f"tool_choice {_json.dumps(self.tool_choice)[:80]} asks for a tool, but no tools are given"
                    )
                # "auto"/"none" without tools mean what no tools mean; OpenAI-style APIs refuse tool_choice alone
                self.tool_choice = None
            if isinstance(self.tool_choice, dict) and self.tools is not None:
                named = (self.tool_choice.get("function") or {}).get("name")
                names = [(tool.get("function") or {}).get("name") for tool in self.tools]
                if named is not None and named not in names:
                    raise ValueError(f"tool_choice names the tool {named!r}, which tools does not define ({names})")
            if self.enable_thinking and (self.json_mode or self.schema is not None):
                raise ValueError(
                    "structured output (json_mode/schema) needs enable_thinking off: "
                    "Qwen-VL models give structured output only in non-thinking mode"
                )
            return self

        def image_list(self) -> list[str]:
            """Every image reference, ``image`` first, then ``images``, in order. Raises nothing."""
            first = [self.image] if isinstance(self.image, str) else list(self.image or [])
            return first + list(self.images)

        @property
        def schema_model(self) -> type[BaseModel] | None:
            """The pydantic model class given as ``schema`` (None when it was a dict or a file)."""
            return self._schema_model

    class Usage(BaseModel):
        """Token counts of one answer, as the service reported them (None: not reported).

        Both protocols' names are mapped here: compat ``prompt_tokens``/``completion_tokens`` and
        ``prompt_tokens_details``/``completion_tokens_details``, native ``input_tokens``/``output_tokens``/
        ``image_tokens`` (reference/dashscope-api.md §2.2, §3). After a structured-output repair the counts are
        the sum of both requests. Raises pydantic.ValidationError for a value of the wrong type."""

        input_tokens: int | None = Field(
            default=None, description="Tokens of the request: text, images and video together (billed as input)."
        )
        output_tokens: int | None = Field(
            default=None, description="Tokens of the answer, thinking included (billed as output)."
        )
        total_tokens: int | None = Field(default=None, description="input_tokens + output_tokens, as reported.")
        image_tokens: int | None = Field(
            default=None,
            description="The part of input_tokens that images took (when the service says), as the service counts "
            "it: each image's grid tokens plus its two vision markers, <vision_bos> and <vision_eos> "
            "(reference/dashscope-api.md §4.1), the count `qwenvl tokens` estimates. Local backends count the same: "
            "transformers in the prompt (the placeholders and the markers around them), openai from the engine's "
            "placeholder count or the resized grid, plus the markers.",
        )
        video_tokens: int | None = Field(
            default=None,
            description="The part of input_tokens that video took (when the service says), counted as image_tokens "
            "is (grid tokens + 2). Locally a Qwen3-VL video has a marker pair per temporal group (2 frames), so the "
            "transformers backend's count is above the estimate by 2 per group after the first.",
        )
        reasoning_tokens: int | None = Field(
            default=None, description="The part of output_tokens that thinking took (when the service says)."
        )
        raw: dict[str, Any] = Field(
            default_factory=dict, repr=False, description="The usage object exactly as the service sent it."
        )

    class Response(BaseModel):
        """One answer, the same for every protocol and backend: ``text``, ``usage`` (tokens), ``json`` (structured
        output), ``reasoning``, ``tool_calls``, ``request_id`` and the conversation in ``messages``.

        Made by the client (``Client.complete``, ``send``, the ``done`` event of a stream); ``model_dump()``
        leaves out ``raw`` and ``cached``. Raises pydantic.ValidationError when built with a missing ``text`` or
        ``model`` or a value of the wrong type."""

        text: str = Field(description="The answer's text (thinking excluded; see `reasoning`).")
        model: str = Field(description="The model that answered, as the service named it.")
        usage: Usage = Field(default_factory=Usage, description="Token counts (Usage); None where not reported.")
        request_id: str | None = Field(
            default=None, description="The service's request id (quote it to Alibaba Cloud support)."
        )
        finish_reason: str | None = Field(
            default=None,
            description="Why the answer ended: 'stop', 'length' (cut off at max_tokens), 'tool_calls', ...",
        )
        reasoning: str | None = Field(default=None, description="The model's thinking, when thinking was on.")
        json: Any = Field(
            default=None, description="The parsed JSON answer: set only with json_mode/schema and a valid answer."
        )
        tool_calls: list[dict[str, Any]] | None = Field(
            default=None,
            description='Function calls the model asks for, [{"id", "type": "function", "function": {"name", '
            '"arguments"}}] (OpenAI\'s form).',
        )
        other_content: list[dict[str, Any]] | None = Field(
            default=None,
            description='Content items that are not text, as the service sent them (e.g. {"result_image": ...});'
            ' native grounding items ({"box": "<ref>..</ref><box>..</box>"}) are part of `text` instead.',
        )
        messages: list[Message] = Field(
            default_factory=list,
            description="The conversation including this answer: pass it as Request.messages for the next turn.",
        )
        protocol: str | None = Field(default=None, description="The wire protocol: compat, native or openai.")
        raw: dict[str, Any] | None = Field(
            default=None, repr=False, exclude=True, description="The service's reply body (not serialized)."
        )
        cached: bool = Field(
            default=False,
            exclude=True,
            description="True when answered from the local cache (Client(cache=...)); not serialized.",
        )
        _parsed: Any = PrivateAttr(default=None)
        _requests: int = PrivateAttr(default=1)
        _request_ids: list[str] | None = PrivateAttr(default=None)
        _parts: list[Response] | None = PrivateAttr(default=None)
        _local: bool = PrivateAttr(default=False)

        @property
        def local(self) -> bool:
            """True when a local model answered (no price: ``qwenvl.models.LOCAL``) over a protocol that is
            otherwise paid: a ``qwenvl serve`` in front of a local engine, which says so (``Client.served_model``).
            An answer over the plain openai protocol is local by its ``protocol`` (``qwenvl.models.is_paid``).
            Raises nothing."""
            return self._local

        @property
        def parsed(self) -> BaseModel | None:
            """The answer as an instance of the pydantic model given as ``schema`` (else None); typed as that
            model by ``parsed_as``. Raises nothing."""
            return self._parsed  # type: ignore[no-any-return]

        def parsed_as(self, model: type[M]) -> M:
            """``parsed``, typed as ``model`` for type checkers (``r.parsed_as(Invoice).amount``: a float to
            mypy, where ``parsed`` is any BaseModel or None). Raises UsageError when the answer was not parsed
            into ``model`` (the request had no pydantic ``schema``, or another one)."""
            if not isinstance(self._parsed, model):
                got = "nothing (no pydantic model was the schema)" if self._parsed is None else type(self._parsed)
                raise UsageError(
                    f"this answer was parsed into {getattr(got, '__name__', got)}, not {model.__name__}",
                    hint=f"Give schema={model.__name__} in the request; Response.json holds the JSON either way.",
                )
            return self._parsed

        @property
        def requests(self) -> int:
            """How many requests were paid for this answer: 2 after a structured-output repair (``usage`` counts
            both), 1 when the repair's answer came from the response cache, 0 for an answer from the cache
            (``cached``: nothing paid), else 1. Raises nothing."""
            return self._requests

        @property
        def parts(self) -> list[Response]:
            """The answers this one is made of, each with its own ``usage`` and ``cached``: ``[first, repair]``
            after a structured-output repair (``qwenvl.models.answer_cost`` prices each at its own tier, one from
            the cache at 0), else ``[self]``. Raises nothing."""
            return list(self._parts) if self._parts else [self]

        @property
        def request_ids(self) -> list[str]:
            """The service's ids of those requests, in order (ids it did not give left out). Raises nothing."""
            if self._request_ids is not None:
                return list(self._request_ids)
            return [self.request_id] if self.request_id else []

        def result_object(self) -> dict[str, Any]:
            """The skill's result shape: ``{text, model, usage[, json]}`` (usage as the service sent it;
            reference/dashscope-api.md §1.2; after a structured-output repair, both requests' usage summed key by
            key in that shape: what was paid). Raises nothing."""
            out: dict[str, Any] = {
                "text": self.text,
                "model": self.model,
                "usage": self.usage.raw or self.usage.model_dump(exclude={"raw"}, exclude_none=True),
            }
            if self.json is not None:
                out["json"] = self.json
            return out

        def record(self) -> dict[str, Any]:
            """The response as JSON shows it (``qwenvl ask --json``, a batch output's ``result``): every field
            that is set, the message history left out. Raises nothing."""
            return self.model_dump(mode="json", exclude={"messages"}, exclude_none=True)


class StreamEvent(BaseModel):
    """A piece of a streamed answer: ``text`` and ``reasoning`` deltas, then ``done`` with the response.

    ``type`` is ``"text"`` or ``"reasoning"`` with the new characters in ``text``, or ``"done"`` (last, once) with
    the whole ``Response`` in ``response``. Raises pydantic.ValidationError for an unknown type."""

    type: Literal["text", "reasoning", "done"]
    text: str = ""  # the delta (text and reasoning events)
    response: Response | None = None  # the whole answer (the done event)
    # the counts so far, when the backend knows them (text and reasoning events): the prompt's tokens and those
    # generated up to this event, as DashScope's native events carry them (reference/dashscope-api.md §2.2); the
    # transformers backend counts them, a DashScope native stream passes the service's on; None: not known
    usage: Usage | None = None


def dumps(obj: Any) -> str:
    """JSON with non-ASCII characters kept as they are. Raises TypeError for a value JSON cannot hold."""
    return _json.dumps(obj, ensure_ascii=False)


# The Request fields that are sent as text (JSON is UTF-8): a lone surrogate in one (a non-UTF-8 byte of a command
# line, an environment variable or a file read with ``surrogateescape``, PEP 383) cannot be encoded. Not the media
# references: a file name may be any bytes (``os.fsencode`` gives them back).
_TEXT_FIELDS = ("prompt", "system", "model", "stop", "schema", "extra", "tools", "tool_choice", "pages", "base_url")


def _is_utf8(value: Any) -> bool:
    """Whether every string in ``value`` (nested in lists, tuples and dicts, keys included) encodes as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_is_utf8(k) and _is_utf8(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_is_utf8(v) for v in value)
    return True


class DuplicateKeyError(ValueError):
    """JSON text whose object gives one key twice (``.key``): ``loads`` refuses it."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the key '{key}' is given twice")
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def loads(text: str | bytes) -> Any:
    """JSON text -> value, as ``json.loads``, except that an object giving a key twice is refused instead of
    keeping the last value silently (``{"seed": 1, "seed": 2}``), at any depth. Raises DuplicateKeyError (a
    ValueError) for that, json.JSONDecodeError for text that is not JSON."""
    return _json.loads(text, object_pairs_hook=_no_duplicates)


@functools.cache
def request_field_defaults() -> dict[str, Any]:
    """``Request``'s fields that have a plain default value, with that value (``max_tokens`` 512, ``temperature``
    0.2, ``model`` ``DEFAULT_MODEL``...): what a request that does not set them asks. Raises nothing."""
    return {name: f.default for name, f in Request.model_fields.items() if f.default is not PydanticUndefined}
