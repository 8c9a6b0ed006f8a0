"""The one seam between a request's media references and what goes on the wire.

``prepare_messages`` turns every image and video reference in a message list into what the service can
take (an http(s) URL, an ``oss://`` reference or a ``data:`` URL) and reports what it did per item. It runs
before any request is sent, so a bad file fails here and costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from qwenvl.errors import MediaError, UsageError
from qwenvl.media import images
from qwenvl.media.sources import Source, classify, read_bytes, to_data_url
from qwenvl.models import ModelInfo
from qwenvl.types import ImagePart, Message, TextPart, VideoPart


@dataclass(frozen=True)
class MediaOptions:
    model: ModelInfo
    protocol: str = "compat"
    detail: Literal["auto", "low", "high"] = "auto"
    vl_high_resolution_images: bool | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    prepare: bool = True
    fps: float | None = None


@dataclass
class PreparedItem:
    """One image or video as it will be sent."""

    source: str  # the reference the user gave
    kind: Literal["image", "video"]
    sent: str | list[str]  # URL(s) on the wire
    mime: str | None = None
    bytes_sent: int = 0  # size of inline data (0 for URLs)
    width: int | None = None  # as sent (None when unknown, e.g. a remote URL)
    height: int | None = None
    tokens: int | None = None  # estimated input tokens (None when unknown)
    notes: list[str] = field(default_factory=list)


@dataclass
class PreparedMessages:
    messages: list[Message]
    items: list[PreparedItem]

    @property
    def estimated_media_tokens(self) -> int | None:
        known = [i.tokens for i in self.items if i.tokens is not None]
        return sum(known) if len(known) == len(self.items) else None


def prepare_messages(messages: list[Message], options: MediaOptions) -> PreparedMessages:
    out: list[Message] = []
    items: list[PreparedItem] = []
    for message in messages:
        if isinstance(message.content, str) or not message.media():
            out.append(message)
            continue
        parts: list[TextPart | ImagePart | VideoPart] = []
        for part in message.content:
            if isinstance(part, ImagePart):
                item = prepare_image(part, options)
                items.append(item)
                parts.append(part.model_copy(update={"image": item.sent}))
            elif isinstance(part, VideoPart):
                item = prepare_video(part, options)
                items.append(item)
                parts.append(part.model_copy(update={"video": item.sent}))
            else:
                parts.append(part)
        out.append(message.model_copy(update={"content": parts}))
    return PreparedMessages(out, items)


def prepare_image(part: ImagePart, options: MediaOptions) -> PreparedItem:
    source = classify(part.image)
    _check_remote(source, options)
    if source.is_remote:
        return PreparedItem(part.image, "image", source.url or part.image)
    data = read_bytes(source)
    info = images.identify(data, source.label)
    sent = source.url if source.kind == "data" and source.declared_mime == info.mime else to_data_url(
        data, info.mime)
    return PreparedItem(part.image, "image", sent or "", mime=info.mime, bytes_sent=len(sent or ""),
                        width=info.width, height=info.height)


def prepare_video(part: VideoPart, options: MediaOptions) -> PreparedItem:
    if isinstance(part.video, list):
        if not part.video:
            raise MediaError("a video frame list is empty", source="video")
        frames = [prepare_image(ImagePart(image=ref), options) for ref in part.video]
        return PreparedItem(f"{len(frames)} frames", "video", [f.sent for f in frames],
                            bytes_sent=sum(f.bytes_sent for f in frames))
    source = classify(part.video)
    _check_remote(source, options)
    if source.is_remote:
        return PreparedItem(part.video, "video", source.url or part.video)
    raise MediaError(f"{source.label}: local video files are not supported yet; give a list of frames "
                     "or a URL", source=part.video)


def _check_remote(source: Source, options: MediaOptions) -> None:
    if source.kind == "oss" and options.protocol != "native":
        raise UsageError(f"{source.ref}: oss:// references work only with the native protocol",
                         hint="Add --protocol native.")
