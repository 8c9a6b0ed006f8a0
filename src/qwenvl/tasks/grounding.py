"""Grounding: ask for boxes or points in the form the model's family was trained on, read them robustly, and
return them in the ORIGINAL image's pixels.

    g = qwenvl.tasks.ground(client, "photo.jpg", "every person and dog")
    for box in g.boxes:
        print(box.label, box.x1, box.y1, box.x2, box.y2)     # original-image pixels
    g.truncated, g.warnings, g.raw_text

Coordinate conventions (``ModelInfo.grounding``; dashscope-api.md §4.4):

* ``relative-1000`` (Qwen3-VL and newer): a 0-1000 grid over the image, ``x_px = x / 1000 * W``.
* ``absolute`` (Qwen2.5-VL, qwen-vl-max/plus, QVQ, qwen-vl-ocr): pixels of the image *as the model saw it*,
  i.e. after the service's ``smart_resize`` of what was sent: ``x_px = x / w_seen * W``. What was sent is the
  prepared item's size (``Call.media``); the service then applies ``smart_resize`` with the request's budget,
  which leaves an image the media step already prepared unchanged.

An answer that breaks its family's convention is detected from its numbers (Qwen3-VL coordinates above 1000;
Qwen2.5-VL coordinates that overshoot the seen image by more than 10% but fit the 0-1000 grid), read in the
convention that fits, and reported in ``warnings`` with the evidence.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from qwenvl.errors import MediaError, QwenVLError, UsageError
from qwenvl.interfaces import SupportsAsyncComplete, SupportsComplete, SupportsPlan
from qwenvl.media.sources import Source, looks_swapped, media_kind, swapped_error
from qwenvl.models import DEFAULT_MODEL, ModelInfo, model_info
from qwenvl.plan import CONTEXT_WARN_SHARE, Call, answer_reserve, answer_space, media_options, quiet_context
from qwenvl.sizes import Size
from qwenvl.tasks.parsing import ParsedAnswer, RawItem, parse_answer
from qwenvl.types import Response, media_refs, not_blank, page_selection

Convention = Literal["relative-1000", "absolute", "original-pixels"]
GRID = 1000
GROUND_VIDEO_HINT = (
    "Give one frame of it as an image, e.g. `ffmpeg -ss 00:00:03 -i {} -frames:v 1 frame.png`; to ask what "
    "happens in a video and when, use events."
)
GROUND_MAX_TOKENS = 2048  # default answer budget: dense scenes need room (each box is ~25 tokens)
RELATIVE_SLACK = 1.01  # a 0-1000 answer may touch 1010 before it counts as breaking the convention
ABSOLUTE_SLACK = 1.10  # pixels may overshoot the seen image by 10% (then they are clipped) before that
FIT_SLACK = 1.02  # how closely an alternative reading must fit to be chosen

# The prompts, per convention and task. Qwen3-VL's are the cookbook forms with the 0-1000 grid spelled out;
# Qwen2.5-VL's are its cookbook forms (JSON boxes, XML points), which it answers in resized-image pixels.
PROMPTS: dict[str, dict[str, str]] = {
    "relative-1000": {
        "box": (
            'Locate every instance of the following in the image: "{query}". Report them in JSON format as '
            '[{{"bbox_2d": [x1, y1, x2, y2], "label": "<category>"}}, ...], with coordinates on a 0-1000 '
            "grid relative to the image's width and height. Answer [] if there is none."
        ),
        "point": (
            'Point to every instance of the following in the image: "{query}". Report them in JSON format '
            'as [{{"point_2d": [x, y], "label": "<category>"}}, ...], with coordinates on a 0-1000 grid '
            "relative to the image's width and height. Answer [] if there is none."
        ),
        "text": (
            "Spot all the text in the image at line level, and output it in JSON format as "
            '[{{"bbox_2d": [x1, y1, x2, y2], "text_content": "<the line\'s text>"}}, ...], with coordinates '
            "on a 0-1000 grid relative to the image's width and height."
        ),
    },
    "absolute": {
        "box": (
            'Outline the position of every instance of the following: "{query}", and output all the '
            'coordinates in JSON format as [{{"bbox_2d": [x1, y1, x2, y2], "label": "<category>"}}, ...]. '
            "Answer [] if there is none."
        ),
        "point": (
            'Point to every instance of the following: "{query}", and output their coordinates in XML '
            'format as <points x1="x" y1="y" alt="<category>"><category></points>, one tag each.'
        ),
        "text": (
            "Spotting all the text in the image with line-level, and output in JSON format as "
            '[{{"bbox_2d": [x1, y1, x2, y2], "text_content": "<the line\'s text>"}}, ...].'
        ),
    },
}


class Box(BaseModel):
    """A box in original-image pixels (``raw``: the model's own numbers).

    ``x1, y1`` is the top-left corner and ``x2, y2`` the bottom-right one, in pixels of the original image as
    displayed (EXIF orientation applied), clipped to it; never empty (``x1 < x2`` and ``y1 < y2``: ``interpret``
    drops a box wholly outside the image or with no area). Raises pydantic.ValidationError for a wrong type."""

    model_config = ConfigDict(extra="forbid")
    label: str
    x1: int
    y1: int
    x2: int
    y2: int
    raw: list[float] = Field(default_factory=list)

    def plain(self) -> dict[str, Any]:
        """``{"label", "x1", "y1", "x2", "y2"}`` (the CLI's JSON). Raises nothing."""
        return {"label": self.label, "x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2}


class Point(BaseModel):
    """A point in original-image pixels (``raw``: the model's own numbers).

    ``x`` from the left edge and ``y`` from the top, in pixels of the original image as displayed. Raises
    pydantic.ValidationError for a wrong type."""

    model_config = ConfigDict(extra="forbid")
    label: str
    x: int
    y: int
    raw: list[float] = Field(default_factory=list)

    def plain(self) -> dict[str, Any]:
        """``{"label", "x", "y"}`` (the CLI's JSON). Raises nothing."""
        return {"label": self.label, "x": self.x, "y": self.y}


class Grounding(BaseModel):
    """What a grounding answer says, in the original image's pixels.

    ``width``/``height``: the original image in pixels (None when unknown, e.g. a URL without ``image_size``:
    the coordinates then stay in the model's space, with a warning); ``seen_width``/``seen_height``: the image
    as the model saw it; ``convention``: how the coordinates were read (``relative-1000``, ``absolute``);
    ``dropped``: how many of the answer's boxes and points were left out (wholly outside the image, or a box
    with no area once clipped: each named in ``warnings``); ``truncated``: the answer was cut off (every
    complete item is kept); ``warnings``: every oddity, in words.
    Raises pydantic.ValidationError when built with a wrong type."""

    boxes: list[Box] = Field(default_factory=list)
    points: list[Point] = Field(default_factory=list)
    dropped: int = 0  # boxes and points in the answer left out: wholly outside the image, or boxes with no area
    truncated: bool = False  # the answer was cut off (max_tokens or mid-list); every complete item is kept
    warnings: list[str] = Field(default_factory=list)
    raw_text: str = ""
    width: int | None = None  # the original image (None when unknown, e.g. a URL)
    height: int | None = None
    seen_width: int | None = None  # the image as the model saw it (after the service's resize)
    seen_height: int | None = None
    convention: str = "relative-1000"  # how the coordinates were read
    expected_convention: str = "relative-1000"  # the model family's convention
    model: str | None = None
    image: str | None = None
    page: int | None = None  # the PDF page the boxes are on (1-based); None for an image
    response: Response | None = Field(default=None, exclude=True, repr=False)
    _picture: str | None = PrivateAttr(default=None)

    @property
    def picture(self) -> str | None:
        """The image the boxes refer to, as prepared (a path, a URL, or a PDF page's data URL)."""
        return self._picture or self.image

    def to_json(self) -> dict[str, Any]:
        """The CLI's ``--json`` object: ``{"image", "page" (a PDF's 1-based page; null for an image), "width",
        "height", "model", "boxes": [{label, x1, y1, x2, y2}] (original pixels), "points" (when any), "dropped",
        "truncated", "warnings", "convention"}``. Raises nothing."""
        out: dict[str, Any] = {
            "image": self.image,
            "page": self.page,
            "width": self.width,
            "height": self.height,
            "model": self.model,
            "boxes": [b.plain() for b in self.boxes],
        }
        if self.points:
            out["points"] = [p.plain() for p in self.points]
        out.update(dropped=self.dropped, truncated=self.truncated, warnings=self.warnings, convention=self.convention)
        return out


# --- image geometry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """The sizes a grounding answer is read with, each ``(width, height)`` in pixels (``geometry``)."""

    original: Size | None  # (width, height) the coordinates are read in (see ``orientation``)
    seen: Size | None  # (width, height) the model saw
    # EXIF orientation (2-8) of an image sent as stored (prepare=False): ``original`` is then the STORED size,
    # and boxes read in it are turned to the upright image afterwards (``to_upright``). 1 otherwise.
    orientation: int = 1


def original_size(ref: str) -> Size | None:
    """(width, height) of a local image or data: URL as displayed (EXIF orientation applied); None if remote.
    Raises MediaError when a local file cannot be read."""
    info = stored_size(ref)
    if info is None:
        return None
    width, height, orientation = info
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def stored_size(ref: str) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) of a local image or data: URL as stored; None if remote or unreadable.
    Raises MediaError when a local file cannot be read."""
    from qwenvl.media.sources import classify, open_source

    source = classify(ref)
    if source.is_remote:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # large images: only the header is read here
            with open_source(source) as fh, Image.open(fh) as img:
                width, height = img.size
                try:
                    orientation = img.getexif().get(0x0112, 1)
                except Exception:  # a broken EXIF block: the media step decides what to do with the image
                    orientation = 1
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return width, height, orientation if orientation in range(1, 9) else 1


def to_upright(x: float, y: float, stored: Size, orientation: int) -> tuple[float, float]:
    """A point in the stored pixels of an image with EXIF ``orientation``, in the upright image's pixels (what
    every viewer shows: the orientation tag applied, as ``PIL.ImageOps.exif_transpose`` does). Raises nothing."""
    w, h = stored
    return {
        2: (w - x, y),
        3: (w - x, h - y),
        4: (x, h - y),
        5: (y, x),
        6: (h - y, x),
        7: (h - y, w - x),
        8: (y, w - x),
    }.get(orientation, (x, y))


def _turn_upright(result: Grounding, stored: Size, orientation: int) -> None:
    """Boxes and points read in the stored orientation, in place, to the upright image."""
    for box in result.boxes:
        (ax, ay), (bx, by) = (
            to_upright(box.x1, box.y1, stored, orientation),
            to_upright(box.x2, box.y2, stored, orientation),
        )
        box.x1, box.x2 = sorted((round(ax), round(bx)))
        box.y1, box.y2 = sorted((round(ay), round(by)))
    for point in result.points:
        px, py = to_upright(point.x, point.y, stored, orientation)
        point.x, point.y = round(px), round(py)
    if result.width and result.height and orientation in (5, 6, 7, 8):
        result.width, result.height = result.height, result.width


def seen_size(sent: Size, call: Call) -> Size:
    """The size the model sees for an image sent at ``sent`` (the service's smart_resize and budget).
    Raises nothing for a call ``plan`` accepted."""
    from qwenvl.media.resize import service_budget, smart_resize

    lo, hi = service_budget(media_options(call.request, call.model, "compat"))
    try:
        h, w = smart_resize(sent[1], sent[0], call.model.factor, lo, hi)
    except ValueError:
        return sent
    return (w, h) if h and w else sent


def geometry(call: Call, image_size: Size | None = None) -> Geometry:
    """The original and seen sizes of the (last) image of a planned call.
    Raises MediaError only when the planned local image can no longer be read."""
    items = [m for m in call.media if m.kind == "image"]
    if not items:
        return Geometry(image_size, None)
    item = items[-1]
    original = image_size
    if original is None and not call.request.prepare and item.width and item.height:
        # sent as stored: the model sees the stored pixels, whatever the EXIF tag says
        stored = stored_size(item.source)
        if stored is not None and stored[2] != 1:
            stored_sent = (item.width, item.height)
            return Geometry(stored_sent, seen_size(stored_sent, call), orientation=stored[2])
    if original is None:
        ow, oh = getattr(item, "original_width", None), getattr(item, "original_height", None)
        original = (ow, oh) if ow and oh else original_size(item.source)
    sent: Size | None = (item.width, item.height) if item.width and item.height else original
    if original is None and sent is not None:  # unreadable here, readable to the media step: as sent
        original = sent
    return Geometry(original, seen_size(sent, call) if sent else None)


# --- interpretation ------------------------------------------------------------------------------------------


def _extent(items: list[RawItem]) -> tuple[float, float, float]:
    xs = [c for i in items for c in i.coords[0::2]]
    ys = [c for i in items for c in i.coords[1::2]]
    return max(xs), max(ys), min(xs + ys)


def _fits(mx: float, my: float, size: Size | None, slack: float) -> bool:
    return size is not None and mx <= size[0] * slack + 1 and my <= size[1] * slack + 1


def _size(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def choose_convention(items: list[RawItem], expected: str, geo: Geometry, model: str) -> tuple[str, str | None]:
    """(convention to read the numbers in, a warning with the evidence when it is not the expected one).
    Raises nothing."""
    if not items:
        return expected, None
    mx, my, _ = _extent(items)
    grid = (GRID, GRID)
    evidence = f"x up to {mx:g}, y up to {my:g}"
    if expected == "relative-1000":
        if _fits(mx, my, grid, RELATIVE_SLACK):
            return expected, None
        for name, size, what in (
            ("absolute", geo.seen, "pixels of the {} image it was sent"),
            ("original-pixels", geo.original, "pixels of the original {} image"),
        ):
            if size is not None and _fits(mx, my, size, FIT_SLACK):
                return name, (
                    f"{model} should answer on a 0-1000 grid, but gave {evidence} (over 1000): read as "
                    + what.format(_size(size))
                )
        fallback = "absolute" if geo.seen else expected
        return fallback, (
            f"{model} should answer on a 0-1000 grid, but gave {evidence} (over 1000), which fits "
            "no reading of this image; read as "
            + ("pixels of the image it was sent" if geo.seen else "0-1000")
            + " and clipped"
        )
    if geo.seen is None or _fits(mx, my, geo.seen, ABSOLUTE_SLACK):
        return expected, None
    if _fits(mx, my, grid, RELATIVE_SLACK):
        return "relative-1000", (
            f"{model} should answer in pixels of the {_size(geo.seen)} image it was sent, "
            f"but gave {evidence}, beyond that image yet within 0-1000: read as a 0-1000 grid"
        )
    if geo.original is not None and _fits(mx, my, geo.original, FIT_SLACK):
        return "original-pixels", (
            f"{model} should answer in pixels of the {_size(geo.seen)} image it was sent, "
            f"but gave {evidence}: read as pixels of the original {_size(geo.original)} "
            "image"
        )
    return expected, None


def _scale(convention: str, geo: Geometry) -> tuple[float, float] | None:
    if geo.original is None:
        return None
    w, h = geo.original
    if convention == "relative-1000":
        return w / GRID, h / GRID
    if convention == "absolute" and geo.seen is not None:
        return w / geo.seen[0], h / geo.seen[1]
    return 1.0, 1.0


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _some(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _label_text(label: str) -> str:
    return repr(label) if label else "(no label)"


def interpret(
    parsed: ParsedAnswer,
    *,
    expected: str,
    geo: Geometry,
    model: str = "the model",
    finish_reason: str | None = None,
    max_tokens: int | None = None,
) -> Grounding:
    """Boxes and points in original pixels from a parsed answer, with every oddity in ``warnings``: coordinates
    past an edge are clipped to it; a box or point wholly outside the image, and a box with no area (once
    clipped), are dropped, named in a warning and counted in ``Grounding.dropped``. Raises nothing."""
    warnings = list(parsed.notes)
    convention, why = choose_convention(parsed.items, expected, geo, model)
    if why:
        warnings.append(why)
    scale = _scale(convention, geo)
    if scale is None and parsed.items:
        grid = "the 0-1000 grid" if convention == "relative-1000" else "the model's pixels"
        warnings.append(
            f"the image's size is unknown (a URL?): coordinates are left on {grid}; pass the image "
            "as a local file, or image_size=(width, height), to get pixels"
        )
    sx, sy = scale or (1.0, 1.0)
    limit = geo.original if scale is not None else None
    clipped: list[str] = []
    swapped = 0
    boxes: list[Box] = []
    points: list[Point] = []
    outside: list[str] = []  # items wholly outside the image: dropped
    flat: list[str] = []  # boxes with no area once clipped: dropped

    def fix(value: float, side: int | None, what: str, notes: list[str]) -> int:
        if side is not None and (value < -0.5 or value > side + 0.5):
            notes.append(f"{what}={value:.0f}")
            value = min(max(value, 0.0), float(side))
        return round(value)

    w_lim, h_lim = limit if limit else (None, None)
    for item in parsed.items:
        name = _label_text(item.label)
        notes: list[str] = []
        if item.kind == "box":
            x1, y1, x2, y2 = item.coords
            if x1 > x2 or y1 > y2:
                swapped += 1
                x1, x2 = sorted((x1, x2))
                y1, y2 = sorted((y1, y2))
            x1, y1, x2, y2 = x1 * sx, y1 * sy, x2 * sx, y2 * sy
            if limit and (x1 >= limit[0] or y1 >= limit[1] or x2 <= 0 or y2 <= 0):
                outside.append(f"{name} at {x1:.0f},{y1:.0f}-{x2:.0f},{y2:.0f}")
                continue
            box = Box(
                label=item.label,
                x1=fix(x1, w_lim, f"{name} x1", notes),
                y1=fix(y1, h_lim, f"{name} y1", notes),
                x2=fix(x2, w_lim, f"{name} x2", notes),
                y2=fix(y2, h_lim, f"{name} y2", notes),
                raw=list(item.coords),
            )
            if box.x1 >= box.x2 or box.y1 >= box.y2:  # a line or a dot: nothing to show, nothing to crop
                flat.append(f"{name} at {box.x1},{box.y1}-{box.x2},{box.y2}")
                continue
            boxes.append(box)
        else:
            x, y = item.coords[0] * sx, item.coords[1] * sy
            if limit and (x < -0.5 or y < -0.5 or x > limit[0] + 0.5 or y > limit[1] + 0.5):
                outside.append(f"{name} at {x:.0f},{y:.0f}")
                continue
            points.append(
                Point(
                    label=item.label,
                    x=fix(x, w_lim, f"{name} x", notes),
                    y=fix(y, h_lim, f"{name} y", notes),
                    raw=list(item.coords),
                )
            )
        clipped.extend(notes)
    if clipped and limit:
        warnings.append(
            f"{_count(len(clipped), 'coordinate')} fell outside the {_size(limit)} image ({_some(clipped)}, in "
            "image pixels): clipped to its edges"
        )
    if outside and limit:
        warnings.append(
            f"{_count(len(outside), 'item')} wholly outside the {_size(limit)} image dropped ({_some(outside)}, in "
            "image pixels)"
        )
    if flat:
        where = f"the {_size(limit)} image" if limit else "the model's space"
        warnings.append(
            f"{_count(len(flat), 'box', 'boxes')} with no area in {where} dropped ({_some(flat)}: x1 = x2 or y1 = y2"
            f"{' once clipped' if limit else ''})"
        )
    if swapped:
        warnings.append(f"{swapped} box{'es' if swapped != 1 else ''} had x1 > x2 or y1 > y2: corners swapped")
    unlabelled = sum(1 for b in boxes if not b.label) + sum(1 for p in points if not p.label)
    if unlabelled:
        warnings.append(f"{unlabelled} item{'s have' if unlabelled != 1 else ' has'} no label (kept)")
    # an answer that ended by itself ("stop") with nothing in it was not cut off, whatever its prose looks like
    truncated = finish_reason == "length" or (parsed.truncated and bool(parsed.items or finish_reason != "stop"))
    if truncated:
        kept = f"kept the {len(boxes)} complete box{'es' if len(boxes) != 1 else ''}" + (
            f" and {len(points)} point{'s' if len(points) != 1 else ''}" if points else ""
        )
        if finish_reason == "length":
            budget = f" ({max_tokens} tokens)" if max_tokens else ""
            warnings.append(f"the answer was cut off at max_tokens{budget}: {kept}; raise --max-tokens for more")
        else:
            warnings.append(f"the answer ends in the middle of a list (cut off): {kept}")
    if not boxes and not points:
        if parsed.found_structure:
            warnings.append("the answer has no boxes or points")
        else:
            warnings.append("no boxes or points found in the answer (no bbox_2d/point_2d JSON, no <points> tags)")
    w, h = geo.original if geo.original and scale is not None else (None, None)
    sw, sh = geo.seen if geo.seen else (None, None)
    return Grounding(
        boxes=boxes,
        points=points,
        dropped=len(outside) + len(flat),
        truncated=truncated,
        warnings=warnings,
        width=w,
        height=h,
        seen_width=sw,
        seen_height=sh,
        convention=convention,
        expected_convention=expected,
    )


# --- the task ------------------------------------------------------------------------------------------------


# --- the client a task is given: sync or async -------------------------------------------------------------------


def _a_client(client: object, task: str) -> None:
    """TypeError when ``client`` has no callable ``plan`` and ``send`` (a path or a model name given first)."""
    if not all(callable(getattr(client, m, None)) for m in ("plan", "send")):
        raise TypeError(f"tasks.{task}() takes a qwenvl client first, not {type(client).__name__}")


def sync_client(client: object, task: str) -> None:
    """TypeError at once when a synchronous task (``tasks.ground``...) is given an asynchronous client (its
    ``send`` a coroutine function, e.g. ``qwenvl.AsyncClient``), naming the awaitable variant to use: its
    coroutine would otherwise never be awaited; TypeError too for an object that is no client (no ``plan`` and
    ``send``)."""
    _a_client(client, task)
    if inspect.iscoroutinefunction(getattr(client, "send", None)):
        raise TypeError(
            f"tasks.{task}() takes a qwenvl.Client; with {type(client).__name__} use `await tasks.a{task}(...)`"
        )


def async_client(client: object, task: str) -> None:
    """TypeError at once when an awaitable task (``tasks.aground``...) is given a synchronous client, or an object
    that is no client."""
    _a_client(client, f"a{task}")
    if not inspect.iscoroutinefunction(getattr(client, "send", None)):
        raise TypeError(f"tasks.a{task}() takes a qwenvl.AsyncClient; with {type(client).__name__} use tasks.{task}()")


T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)  # a task's result, with ``warnings``


async def in_thread(plan: Callable[..., T], /, *args: Any, **kw: Any) -> T:
    """``plan(*args, **kw)`` in a worker thread (``asyncio.to_thread``), as ``AsyncClient.complete`` plans: the
    media are read, decoded and prepared there, so the event loop keeps running."""
    return await asyncio.to_thread(plan, *args, **kw)


def library_worded(result: R) -> R:
    """``result`` (a Grounding, OCRResult or Timeline, as a library call returns it) with its warnings, and its
    pages', in the library's words (``qwenvl.wording.library_message``: "raise max_tokens"). The readers write them
    as the CLI shows them ("raise --max-tokens"); the MCP server words those its way. Returns ``result`` itself.
    Raises nothing."""
    from qwenvl.wording import library_message

    for holder in (result, *(getattr(result, "pages", None) or ())):
        holder.warnings = [library_message(w) for w in holder.warnings]
    return result


def task_media(value: Any) -> Any:
    """A task's file argument as the reference a request carries (``types.media_refs``: a path for an
    ``os.PathLike``, a ``data:`` URL for bytes or a PIL image); strings as given."""
    return media_refs(value)


_A_KIND = {"image": "an image", "pdf": "a PDF", "video": "a video"}


def check_task_media(task: str, refs: Any, takes: Collection[str], hint: str, *, reads: str | None = None) -> None:
    """Refuse a reference a task cannot read, in the task's own words: MediaError (exit 3) "clip.mp4 is a video:
    ocr reads an image or a PDF" with ``hint`` (what to do instead), before anything is planned or sent, rather
    than the media layer's "not an image". ``refs``: a reference or a list (others, such as bytes, pass: they are
    images); ``takes``: the kinds (``qwenvl.media.sources.media_kind``) the task reads; ``{}`` in ``hint`` is the
    reference; ``reads``: what the task reads, in words, when not simply its ``takes`` ("a video, or several frames
    as images in order"). The one rule of what ``ocr``, ``ground``, ``extract`` and ``events`` take (library and
    CLI). Raises nothing otherwise."""
    for ref in refs if isinstance(refs, list | tuple) else [refs]:
        if not isinstance(ref, str):
            continue
        kind = media_kind(ref)
        if kind not in takes:
            what = reads or " or ".join(_A_KIND[k] for k in ("image", "pdf", "video") if k in takes)
            label = Source(ref, "data", url=ref).label if ref[:5].lower() == "data:" else ref
            raise MediaError(f"{label} is {_A_KIND[kind]}: {task} reads {what}", source=label, hint=hint.format(label))


def refuse_thinking(task: str, fields: dict[str, Any]) -> None:
    """UsageError (exit 2) when ``fields`` ask a task whose answer is always JSON (``events``, ``extract``) to think
    (``enable_thinking``, ``thinking_budget``): Qwen-VL models give structured output only in non-thinking mode
    (reference/dashscope-api.md §2.4), so it would be refused whatever else is given. Said in the task's words, not
    as a request's JSON mode the caller never set."""
    if fields.get("enable_thinking") or fields.get("thinking_budget") is not None:
        raise UsageError(
            f"{task} asks for its answer as JSON, which Qwen-VL models give only in non-thinking mode: "
            "--thinking / enable_thinking and --thinking-budget / thinking_budget do not apply to it",
            hint="Leave out --thinking / enable_thinking=True and --thinking-budget / thinking_budget.",
        )


def model_for(client: SupportsPlan, fields: dict[str, Any]) -> ModelInfo:
    """The rules of the model ``fields`` name, else the client's (``client.resolve_model``).
    Raises what ``resolve_model`` raises (UsageError; APIError for a local server)."""
    if hasattr(client, "resolve_model"):  # a local backend knows its model's family
        return client.resolve_model(fields.get("model"))
    name = fields.get("model") or getattr(client, "defaults", {}).get("model") or DEFAULT_MODEL
    return model_info(name)


def task_fields(task: str, fields: dict[str, Any], **own: Any) -> dict[str, Any]:
    """``fields`` (the caller's request fields) with ``own`` (those ``task`` sets from its own arguments: its prompt,
    its media, its schema). Raises UsageError naming a field of ``fields`` that the task sets itself (not a raw
    TypeError of a keyword given twice)."""
    clash = next((name for name in own if name in fields), None)
    if clash is not None:
        raise UsageError(
            f"{task} sets {clash} itself: it is not a field to give it",
            hint=f"Leave {clash}=... out of the call; {task} builds it from its own arguments.",
        )
    return {**own, **fields}


def plan_task(client: SupportsPlan, model: ModelInfo, default_max_tokens: int, /, **fields: Any) -> Call:
    """``client.plan(**fields)`` for a task whose answer is long (OCR, boxes, extraction, events): ``max_tokens`` as
    given, else the task's ``default_max_tokens`` capped by ``model.max_output_tokens`` and, for a model whose
    context is small (a local model of a few thousand tokens), lowered to what the context leaves after the prompt
    and media, within ``CONTEXT_WARN_SHARE`` of it (``qwenvl.plan.answer_space``; at least the service's reserve,
    ``answer_reserve``): a default is never what makes a request too long, nor what a warning that it is near the
    window is about (such a warning stays when the input alone is near it). A ``max_tokens`` the user gave that does
    not fit is refused as ``Client.plan`` refuses it. Raises what ``Client.plan`` raises."""
    if fields.get("max_tokens") is not None:
        return client.plan(**fields)
    fields.pop("max_tokens", None)
    first = min(default_max_tokens, model.max_output_tokens)
    failed: UsageError | None = None
    try:
        with quiet_context():  # no warning of our own default: it is lowered below when near the window
            call = client.plan(max_tokens=first, **fields)
    except UsageError as exc:  # too long for the context (or another fault: the probe below then says the same)
        failed = exc
        try:
            with quiet_context():
                call = client.plan(**{**fields, "max_tokens": 1, "estimate_only": True})  # the caller's may be set
        except QwenVLError:
            raise exc from None
    quiet_room = answer_space(call, CONTEXT_WARN_SHARE)
    least = max(1, answer_reserve(call.request, call.model))
    if failed is None and quiet_room >= max(first, least):
        return call  # fits well (no warning was kept from it): planned as it is sent
    # within the share when that leaves the answer at least half the room the window leaves it; else the input
    # itself is near the window, which the request's own warning says
    space = answer_space(call)
    room = min(first, quiet_room if quiet_room >= max(least, space // 2) else space)
    if failed is not None and not least <= room < first:
        raise failed from None
    return client.plan(max_tokens=room if room >= least else first, **fields)


def grounding_prompt(model: ModelInfo, query: str, kind: Literal["box", "point", "text"] = "box") -> str:
    """The prompt in the form ``model``'s family was trained on (``PROMPTS``): boxes, points or text lines.
    Raises nothing."""
    convention = "absolute" if model.grounding == "absolute" else "relative-1000"
    return PROMPTS[convention][kind].format(query=query.strip())


def plan_ground(client: SupportsPlan, image: Any, query: str, *, points: bool = False, **fields: Any) -> Call:
    """The request ``ground`` sends (nothing is sent): the family's prompt, the image, a roomy max_tokens
    (2048 unless given, capped by the model's own limit and its context: ``plan_task``).

    ``image``: a path (``str`` or ``os.PathLike``), URL, bytes or PIL image (``task_media``); a PDF: one page,
    ``pages`` (default the first: ``one_page``). Raises UsageError (invalid fields, a blank ``query``, several
    PDF pages), SchemaDefinitionError, MediaError (media that cannot be sent), as ``Client.plan``."""
    text = os.fspath(query) if isinstance(query, os.PathLike) else query
    swapped = looks_swapped(text, [image])
    if swapped is not None:
        raise swapped_error(str(text), swapped, call="ground")
    if not isinstance(query, str):
        raise UsageError(
            f"the query is text, not {type(query).__name__}", hint='Give what to find as words, e.g. "every dog".'
        )
    not_blank(query, "query", required=True)
    model = model_for(client, fields)
    prompt = grounding_prompt(model, query, "point" if points else "box")
    ref = task_media(image)
    check_task_media("ground", ref, ("image", "pdf"), GROUND_VIDEO_HINT)
    if isinstance(ref, str) and media_kind(ref) == "pdf":
        fields["pages"] = one_page(fields.get("pages"))
    return plan_task(client, model, GROUND_MAX_TOKENS, **task_fields("ground", fields, prompt=prompt, images=[ref]))


def one_page(pages: Any) -> Any:
    """The one PDF page ``ground`` reads, as a ``pages`` selection: the page ``pages`` names (a number, ``"2"``,
    ``[2]``), the first when None. The boxes are read on one page's pixels, so a request carries that page alone
    (``qwenvl ground --page N``, the MCP tool's ``page``, the playground's Find one page a request). A value that is
    no selection at all (a bool, a dict) is returned for the request to refuse. Raises UsageError for a selection
    of several pages (``"1-3"``, ``"2,3"``, ``[1, 2]``)."""
    selection = page_selection(pages)
    if selection is None:
        return "1"
    if isinstance(selection, str) and not selection.strip().isdigit():
        raise UsageError(
            f"ground reads one PDF page, not pages {selection.strip()}",
            hint="Give one page, e.g. --pages 2; to find things on several pages, ground each page in turn.",
        )
    return selection


def planned_picture(call: Call) -> str | None:
    """The picture a grounding answer to ``call`` refers to (and ``annotate`` draws on): the planned image's
    reference, a PDF page's as its rendered data: URL. None when the call has no image. Raises nothing."""
    items = [m for m in call.media if m.kind == "image"]
    return items[-1].source if items else None


def read_grounding(
    call: Call, response: Response, *, image_size: Size | None = None, image: str | None = None
) -> Grounding:
    """Interpret a grounding answer to ``call`` (any answer text; the planned image gives the geometry).
    ``image`` is the reference to report (default: the planned one); ``image_size`` is the original image's
    ``(width, height)`` in pixels when it cannot be read here (a URL).

    Raises nothing for an answer, whatever it holds (oddities become warnings); MediaError only when the planned
    local image can no longer be read."""
    geo = geometry(call, image_size)
    expected = "absolute" if call.model.grounding == "absolute" else "relative-1000"
    result = interpret(
        parse_answer(response.text),
        expected=expected,
        geo=geo,
        model=call.request.model,
        finish_reason=response.finish_reason,
        max_tokens=call.request.max_tokens,
    )
    if geo.orientation != 1 and geo.original is not None:
        stored = geo.original
        _turn_upright(result, stored, geo.orientation)
        upright = (stored[1], stored[0]) if geo.orientation in (5, 6, 7, 8) else stored
        result.warnings.append(
            f"the image was sent as stored, without applying its EXIF orientation {geo.orientation} (no resizing: "
            f"prepare=False / --no-resize), so the model saw it turned; the coordinates were read on the stored "
            f"{_size(stored)} image and turned to the upright {_size(upright)} one, assuming the service does not "
            "apply the tag either. Let qwenvl prepare the image to send it upright and avoid the assumption."
        )
    result.raw_text = response.text
    result.model = response.model or call.request.model
    picture = planned_picture(call)
    result.image = image or (picture if picture and not picture.startswith("data:") else None)
    result._picture = picture
    result.page = next((m.page for m in reversed(call.media) if m.kind == "image"), None)
    result.response = response
    return result


def ground(
    client: SupportsComplete,
    image: Any,
    query: str,
    *,
    points: bool = False,
    image_size: Size | None = None,
    **fields: Any,
) -> Grounding:
    """Boxes (or, with ``points=True``, points) of ``query`` in ``image``, in original-image pixels.

    ``fields`` are any Request fields (model, max_tokens, enable_thinking, ...). ``image_size`` gives the
    original ``(width, height)`` in pixels when the image is a URL (otherwise coordinates stay in the model's
    space, with a warning). The model family's convention (``ModelInfo.grounding``: a 0-1000 grid for
    Qwen3-VL, the seen image's pixels for Qwen2.5-VL; dashscope-api.md §4.4) is undone here.

    Raises what ``plan_ground`` and ``Client.send`` raise: UsageError, MediaError, APIError and its subclasses;
    TypeError for an AsyncClient (use ``aground``). An answer with no boxes is not an error (an empty Grounding
    with a warning).
    """
    sync_client(client, "ground")
    image = task_media(image)
    call = plan_ground(client, image, query, points=points, **fields)
    return library_worded(read_grounding(call, client.send(call), image_size=image_size, image=shown_ref(image)))


async def aground(
    client: SupportsAsyncComplete,
    image: Any,
    query: str,
    *,
    points: bool = False,
    image_size: Size | None = None,
    **fields: Any,
) -> Grounding:
    """``ground`` with an AsyncClient, awaited: the same request (planned in a worker thread) and the same
    reading. Raises what ``ground`` raises; TypeError for a synchronous Client (use ``ground``)."""
    async_client(client, "ground")
    image = task_media(image)
    call = await in_thread(plan_ground, client, image, query, points=points, **fields)
    response = await client.send(call)
    return library_worded(read_grounding(call, response, image_size=image_size, image=shown_ref(image)))


def shown_ref(ref: Any) -> str | None:
    """The reference a task's result names (``image``, ``source``): None for a ``data:`` URL (bytes or a PIL
    image given: no name to show, and the URL itself would be the whole file). Raises nothing."""
    return None if not isinstance(ref, str) or ref.startswith("data:") else ref
