"""Reading boxes and points out of a model's answer, however it is dressed (pure functions, no I/O).

Qwen-VL models answer grounding questions in a few shapes, and real answers are messy:

* JSON: ``[{"bbox_2d": [x1, y1, x2, y2], "label": "dog"}, ...]`` (and ``point_2d: [x, y]``), bare or in a
  ```` ```json ```` fence, with prose before or after, one object per line, wrapped in an object
  (``{"objects": [...]}``), as Python literals (single quotes), or cut off mid-list when the model ran into
  ``max_tokens``. OCR answers use ``text_content`` (or ``text``) for the label and qwen-vl-ocr's
  ``location`` quadrilaterals (8 numbers) for the box.
* Qwen2.5-VL's XML points: ``<points x1="120" y1="80" alt="dog">dog</points>`` (several ``xN``/``yN`` pairs
  in one tag are several points).
* The older Qwen-VL/Qwen2-VL token forms: ``<ref>dog</ref><box>(x1,y1),(x2,y2)</box>`` and
  ``<|object_ref_start|>dog<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``.

A cut-off answer keeps every *complete* object: the text is cut after the last object that closed inside a
list and the open brackets are closed, so an object whose end is missing never contributes a half-read box.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from qwenvl.structured import fenced_blocks, load_json

BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box", "bounding_box", "bndbox")
QUAD_KEYS = ("location", "quad", "polygon", "points_2d")  # 8 numbers (or 4 [x, y] pairs): min/max is the box
POINT_KEYS = ("point_2d", "point", "keypoint")
LABEL_KEYS = ("label", "text_content", "text", "name", "category", "class", "object", "description")


@dataclass
class RawItem:
    """One box or point exactly as the model gave it (its own coordinate space); building one raises nothing."""

    kind: Literal["box", "point"]
    coords: list[float]  # box: [x1, y1, x2, y2]; point: [x, y]
    label: str = ""


@dataclass
class ParsedAnswer:
    """Every box and point found in an answer, in the model's own coordinates (``parse_answer``); building one
    raises nothing."""

    items: list[RawItem] = field(default_factory=list)
    truncated: bool = False  # the answer ends inside an unfinished list/object/tag
    notes: list[str] = field(default_factory=list)  # what was odd about the answer's form
    found_structure: bool = False  # any JSON value, XML point or box token at all

    @property
    def boxes(self) -> list[RawItem]:
        """The boxes, ``coords`` ``[x1, y1, x2, y2]``, in the answer's order."""
        return [i for i in self.items if i.kind == "box"]

    @property
    def points(self) -> list[RawItem]:
        """The points, ``coords`` ``[x, y]``, in the answer's order."""
        return [i for i in self.items if i.kind == "point"]


def parse_answer(text: str) -> ParsedAnswer:
    """Every box and point in ``text`` (see the module docstring for the shapes understood). Raises nothing:
    what cannot be read is left out and said in ``notes``."""
    out = ParsedAnswer()
    body = _unfence(text or "", out)
    skipped = [0]
    for value in _json_values(body, out):
        out.found_structure = True
        _walk(value, out.items, skipped, None)
    _xml_points(body, out)
    _box_tokens(body, out)
    if skipped[0]:
        out.notes.append(
            f"skipped {skipped[0]} item{'s' if skipped[0] != 1 else ''} whose coordinates are not 2 or 4 numbers"
        )
    return out


# --- fences --------------------------------------------------------------------------------------------------


def _unfence(text: str, out: ParsedAnswer) -> str:
    """The fenced blocks' contents when there are fences (``structured.fenced_blocks``), then the prose before
    them (it can carry XML points too); else the text."""
    blocks, before = fenced_blocks(text)
    return "\n".join([*blocks, before]) if blocks else text


# --- JSON ----------------------------------------------------------------------------------------------------


def _brackets(text: str) -> Iterator[tuple[int, str, int]]:
    """``(index, bracket, depth after it)`` for every bracket outside double-quoted strings.

    Strings count only inside brackets (quotes in the prose around the JSON are not JSON), and a closing
    bracket with nothing open is prose too: neither is yielded.
    """
    depth = 0
    in_str = False
    escape = False
    for i, ch in enumerate(text):
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = depth > 0
        elif ch in "[{":
            depth += 1
            yield i, ch, depth
        elif ch in "]}" and depth > 0:
            depth -= 1
            yield i, ch, depth


def _segments(text: str) -> list[tuple[int, int, bool]]:
    """Top-level bracketed regions ``(start, end, closed)``, string-aware (double-quoted strings only).

    The last region is ``closed=False`` when the text ends inside it (a cut-off answer).
    """
    found: list[tuple[int, int, bool]] = []
    start, depth = 0, 0
    for i, ch, depth in _brackets(text):
        if depth == 1 and ch in "[{":
            start = i
        elif depth == 0:
            found.append((start, i + 1, True))
    if depth > 0:
        found.append((start, len(text), False))
    return found


def _load(segment: str) -> tuple[bool, Any]:
    ok, value = load_json(segment)
    if ok:
        return True, value
    try:  # Python literals: {'bbox_2d': [1, 2, 3, 4], 'label': 'dog'}
        value = ast.literal_eval(segment)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return False, None
    return isinstance(value, list | dict), value


def _json_values(text: str, out: ParsedAnswer, depth: int = 0) -> list[Any]:
    values: list[Any] = []
    for start, end, closed in _segments(text):
        segment = text[start:end]
        if closed:
            ok, value = _load(segment)
            if ok:
                values.append(value)
            elif depth < 3:  # malformed (a trailing comma, a stray quote): read the complete objects inside
                inner = _json_values(segment[1:-1], out, depth + 1)
                if inner and depth == 0:
                    out.notes.append("the answer is not valid JSON; read the complete objects inside it")
                values.extend(inner)
        else:
            value = _salvage(segment)
            if value is not None:
                values.append(value)
            if value is not None or _LOOKS_LIKE_DATA.search(segment):  # not a stray "[" in prose
                out.truncated = True
    return values


_LOOKS_LIKE_DATA = re.compile(r'"|\b(bbox|point|label|text_content)', re.I)


def _salvage(segment: str) -> Any:
    """The longest prefix of an unclosed JSON value that ends after a complete list element, closed."""
    cuts: list[tuple[int, str]] = []  # (cut position, closers needed there)
    stack: list[str] = []
    for i, ch, _ in _brackets(segment):
        if ch in "[{":
            stack.append("]" if ch == "[" else "}")
        else:
            stack.pop()
            if stack and stack[-1] == "]":  # this value was an element of a list: a safe place to cut
                cuts.append((i + 1, "".join(reversed(stack))))
    for pos, closers in reversed(cuts):
        ok, value = _load(segment[:pos] + closers)
        if ok:
            return value
    return None


# --- walking a JSON value --------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _numbers(value: Any) -> list[float] | None:
    """A flat list of numbers from [1, 2, 3, 4], [[1, 2], [3, 4]] or "1, 2, 3, 4"; None if not numbers."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[\s,()\[\]]+", value) if p]
        value = parts
    if not isinstance(value, list | tuple) or not value:
        return None
    flat: list[float] = []
    for v in value:
        if isinstance(v, list | tuple):
            inner = _numbers(v)
            if inner is None:
                return None
            flat.extend(inner)
        else:
            n = _number(v)
            if n is None:
                return None
            flat.append(n)
    return flat


def _label(obj: dict[str, Any]) -> str:
    for key in LABEL_KEYS:
        value = obj.get(key)
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    return ""


def _is_box_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_number(v) is not None for v in value)


def _items_from_dict(obj: dict[str, Any], skipped: list[int]) -> list[RawItem] | None:
    """The boxes/points one object describes, or None when it is not a grounding object."""
    label = _label(obj)
    for key in BOX_KEYS:
        if key in obj:
            value = obj[key]
            if isinstance(value, list) and value and all(_is_box_list(v) for v in value):
                return [RawItem("box", _numbers(v) or [], label) for v in value]  # several boxes, one label
            nums = _numbers(value)
            if nums is not None and len(nums) == 4:
                return [RawItem("box", nums, label)]
            skipped[0] += 1
            return []
    for key in QUAD_KEYS:
        if key in obj:
            nums = _numbers(obj[key])
            if nums is not None and len(nums) >= 4 and len(nums) % 2 == 0:
                xs, ys = nums[0::2], nums[1::2]
                return [RawItem("box", [min(xs), min(ys), max(xs), max(ys)], label)]
            skipped[0] += 1
            return []
    for key in POINT_KEYS:
        if key in obj:
            nums = _numbers(obj[key])
            if nums is not None and len(nums) == 2:
                return [RawItem("point", nums, label)]
            if nums is not None and len(nums) > 2 and len(nums) % 2 == 0:
                return [RawItem("point", nums[i : i + 2], label) for i in range(0, len(nums), 2)]
            skipped[0] += 1
            return []
    corners = [_number(obj.get(k)) for k in ("x1", "y1", "x2", "y2")]
    if all(c is not None for c in corners):
        return [RawItem("box", [c for c in corners if c is not None], label)]
    x, y = _number(obj.get("x")), _number(obj.get("y"))
    if x is not None and y is not None:
        w, h = _number(obj.get("width", obj.get("w"))), _number(obj.get("height", obj.get("h")))
        if w is not None and h is not None:  # x, y, width, height
            return [RawItem("box", [x, y, x + w, y + h], label)]
        return [RawItem("point", [x, y], label)]
    return None


def _walk(value: Any, items: list[RawItem], skipped: list[int], label: str | None) -> None:
    if isinstance(value, dict):
        found = _items_from_dict(value, skipped)
        if found is not None:
            if label and not any(i.label for i in found):
                for item in found:
                    item.label = label
            items.extend(found)
            return
        for key, inner in value.items():  # a wrapper ({"objects": [...]}) or {"dog": [x1, y1, x2, y2]}
            if _is_box_list(inner):
                items.append(RawItem("box", _numbers(inner) or [], str(key)))
            elif isinstance(inner, list | dict):
                _walk(inner, items, skipped, str(key) if not _is_container_key(key) else label)
    elif isinstance(value, list):
        if _is_box_list(value):
            items.append(RawItem("box", _numbers(value) or [], label or ""))
            return
        for inner in value:
            _walk(inner, items, skipped, label)


def _is_container_key(key: Any) -> bool:
    return str(key).lower() in {
        "objects",
        "results",
        "result",
        "items",
        "boxes",
        "detections",
        "annotations",
        "points",
        "words_info",
        "lines",
        "data",
        "output",
        "predictions",
        "instances",
    }


# --- XML points (Qwen2.5-VL) -----------------------------------------------------------------------------------

_POINTS_TAG = re.compile(r"<points?\b([^<>]*)>(.*?)</points?\s*>", re.S | re.I)
# A <points> tag left open: one that never gets its ">" or that has coordinates (x1=...) but no closing tag. A
# "<points>" named in prose ("no <points> can be given") is not a cut-off answer.
_OPEN_POINTS = re.compile(r"<points?\b(?:[^<>]*$|[^<>]*\bx\d*\s*=)", re.I)
_ATTR = re.compile(r"([A-Za-z_][\w-]*)\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))")


def _xml_points(text: str, out: ParsedAnswer) -> None:
    last_end = 0
    for match in _POINTS_TAG.finditer(text):
        out.found_structure = True
        last_end = match.end()
        attrs = {
            m.group(1).lower(): m.group(2) or m.group(3) or m.group(4) or "" for m in _ATTR.finditer(match.group(1))
        }
        label = re.sub(r"\s+", " ", match.group(2)).strip() or attrs.get("alt", "").strip()
        pairs: list[list[float]] = []
        for k in sorted((k for k in attrs if re.fullmatch(r"x\d*", k)), key=lambda k: int(k[1:] or 0)):
            x, y = _number(attrs[k]), _number(attrs.get("y" + k[1:]))
            if x is not None and y is not None:
                pairs.append([x, y])
        if not pairs:
            out.notes.append(f"skipped a <points> tag without coordinates: {match.group(0)[:80]!r}")
        out.items.extend(RawItem("point", p, label) for p in pairs)
    if _OPEN_POINTS.search(text, last_end):
        out.truncated = True  # a tag that opens after the last complete one and never closes


# --- box tokens (Qwen-VL, Qwen2-VL) ----------------------------------------------------------------------------

_BOX_TOKENS = re.compile(
    r"(?:<ref>(?P<ref1>.*?)</ref>|<\|object_ref_start\|>(?P<ref2>.*?)<\|object_ref_end\|>)?\s*"
    r"(?:<box>|<\|box_start\|>)\s*\(\s*(?P<x1>-?[\d.]+)\s*,\s*(?P<y1>-?[\d.]+)\s*\)\s*,\s*"
    r"\(\s*(?P<x2>-?[\d.]+)\s*,\s*(?P<y2>-?[\d.]+)\s*\)\s*(?:</box>|<\|box_end\|>)",
    re.S,
)


def _box_tokens(text: str, out: ParsedAnswer) -> None:
    for m in _BOX_TOKENS.finditer(text):
        coords = [_number(m.group(k)) for k in ("x1", "y1", "x2", "y2")]
        if all(c is not None for c in coords):
            out.found_structure = True
            label = (m.group("ref1") or m.group("ref2") or "").strip()
            out.items.append(RawItem("box", [c for c in coords if c is not None], label))
