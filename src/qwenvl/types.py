"""The normalized request, message and response models, the same for every protocol and backend.

Field names follow the skill's `multimodal.chat` interface (prompt, image, model, max_tokens, temperature,
detail, json_mode, schema, max_retries, retry_backoff_s) and add what the service offers on top.
"""

from __future__ import annotations

import json as _json
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from qwenvl.models import DEFAULT_MODEL

Role = Literal["system", "user", "assistant", "tool"]
Detail = Literal["auto", "low", "high"]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """An image: an http(s) URL, a local path, ``file://``, ``data:`` or ``oss://`` reference."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["image"] = "image"
    image: str
    min_pixels: int | None = None
    max_pixels: int | None = None


class VideoPart(BaseModel):
    """A video: a file or URL (str), or a list of frame images (sampled in order)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["video"] = "video"
    video: str | list[str]
    fps: float | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None


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
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def media(self) -> list[ImagePart | VideoPart]:
        if isinstance(self.content, str):
            return []
        return [p for p in self.content if not isinstance(p, TextPart)]


with warnings.catch_warnings():
    # `schema` and `json` are the skill's names; they shadow deprecated BaseModel methods on purpose.
    warnings.simplefilter("ignore")

    class Request(BaseModel):
        """One question about images or video. Unknown fields are refused: use ``extra`` to pass through."""

        model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

        prompt: str | None = None
        image: str | list[str] | None = None
        images: list[str] = Field(default_factory=list)
        video: str | list[str] | None = None
        fps: float | None = Field(default=None, gt=0)
        pages: str | None = None  # PDF pages to send, e.g. "1-3,5" or "7-" (all when None)
        model: str = DEFAULT_MODEL
        max_tokens: int = Field(default=512, ge=1)
        temperature: float = Field(default=0.2, ge=0, lt=2)
        top_p: float | None = Field(default=None, gt=0, le=1)
        top_k: int | None = Field(default=None, ge=0)
        seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
        stop: str | list[str] | None = None
        detail: Detail = "auto"
        json_mode: bool = False
        schema: dict[str, Any] | None = None  # type: ignore[assignment]  # the skill's name; shadows BaseModel.schema
        # structured output: an invalid answer is sent back once to be corrected (a second paid request);
        # False: one request only, and StructuredOutputError (with .response) when the answer is invalid
        repair: bool = True
        system: str | None = None
        messages: list[Message] = Field(default_factory=list)
        stream: bool = False
        enable_thinking: bool | None = None
        thinking_budget: int | None = Field(default=None, ge=1)
        tools: list[dict[str, Any]] | None = None  # function definitions [{"type": "function", "function": {...}}]
        tool_choice: str | dict[str, Any] | None = None  # "auto" | "none" | "required" | {"type": "function", ...}
        vl_high_resolution_images: bool | None = None
        min_pixels: int | None = Field(default=None, ge=1)
        max_pixels: int | None = Field(default=None, ge=1)
        max_retries: int = Field(default=2, ge=0, le=20)
        retry_backoff_s: float = Field(default=1.5, ge=0, le=600)
        timeout_s: float = Field(default=120.0, gt=0, validation_alias=AliasChoices("timeout_s", "timeout"))
        base_url: str | None = None
        prepare: bool = True  # check and prepare media to the model's budget (False: send files as they are)
        upload: Literal["auto", "inline", "oss"] = "auto"  # local files via DashScope's temporary storage
        fetch_urls: bool = False  # download remote images (time-out, size cap, few redirects) and prepare them
        video_as: Literal["frames", "file"] = "frames"  # a local video: sampled here, or sent whole (native upload)
        extra: dict[str, Any] = Field(default_factory=dict)  # other service parameters, passed through

        _schema_model: type[BaseModel] | None = PrivateAttr(default=None)

        @model_validator(mode="before")
        @classmethod
        def _schema_input(cls, data: Any) -> Any:
            """``schema`` may be a dict, a JSON Schema file path, or a pydantic model class."""
            if isinstance(data, dict) and "schema" in data:
                value = data["schema"]
                if isinstance(value, type) and issubclass(value, BaseModel):
                    data = {**data, "schema": value.model_json_schema()}
                elif isinstance(value, str | Path):
                    from qwenvl.structured import load_schema

                    data = {**data, "schema": load_schema(value)}
            return data

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

        @model_validator(mode="after")
        def _check(self) -> Request:
            if self.prompt is None and not self.messages:
                raise ValueError("a prompt is required (or a message history ending in a user turn)")
            if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
                raise ValueError("min_pixels is larger than max_pixels")
            if self.enable_thinking and (self.json_mode or self.schema is not None):
                raise ValueError(
                    "structured output (json_mode/schema) needs enable_thinking off: "
                    "Qwen-VL models give structured output only in non-thinking mode"
                )
            return self

        def image_list(self) -> list[str]:
            first = [self.image] if isinstance(self.image, str) else list(self.image or [])
            return first + list(self.images)

        @property
        def schema_model(self) -> type[BaseModel] | None:
            return self._schema_model

    class Usage(BaseModel):
        input_tokens: int | None = None
        output_tokens: int | None = None
        total_tokens: int | None = None
        image_tokens: int | None = None
        video_tokens: int | None = None
        reasoning_tokens: int | None = None
        raw: dict[str, Any] = Field(default_factory=dict, repr=False)  # exactly as the service sent it

    class Response(BaseModel):
        text: str
        model: str
        usage: Usage = Field(default_factory=Usage)
        request_id: str | None = None
        finish_reason: str | None = None
        reasoning: str | None = None
        json: Any = None  # set only when json_mode/schema and the answer is valid
        tool_calls: list[dict[str, Any]] | None = None
        # content items that are not text, as the service sent them (e.g. {"result_image": ...}); native
        # grounding items ({"box": "<ref>..</ref><box>..</box>"}) are part of ``text`` instead
        other_content: list[dict[str, Any]] | None = None
        messages: list[Message] = Field(default_factory=list)  # the history including this answer
        protocol: str | None = None
        raw: dict[str, Any] | None = Field(default=None, repr=False, exclude=True)
        cached: bool = Field(default=False, exclude=True)  # answered from the local cache (Client(cache=...))
        _parsed: Any = PrivateAttr(default=None)

        @property
        def parsed(self) -> Any:
            """The answer as an instance of the pydantic model given as ``schema`` (else None)."""
            return self._parsed

        def result_object(self) -> dict[str, Any]:
            """The skill's result shape: ``{text, model, usage[, json]}`` (usage as the service sent it)."""
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
            that is set, the message history left out."""
            return self.model_dump(mode="json", exclude={"messages"}, exclude_none=True)


class StreamEvent(BaseModel):
    """A piece of a streamed answer: ``text`` and ``reasoning`` deltas, then ``done`` with the response."""

    type: Literal["text", "reasoning", "done"]
    text: str = ""
    response: Response | None = None


def dumps(obj: Any) -> str:
    return _json.dumps(obj, ensure_ascii=False)
