"""Pictures: boxes and points drawn on the original image, and a contact sheet of a video's sampled frames.

Readable on any background: every outline is a coloured stroke between a dark and a light stroke, and every
label sits on a filled box of its colour with black or white text, whichever contrasts more. One colour per
label (the same label keeps its colour), from a palette of distinct hues.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from qwenvl.errors import MediaError, UsageError, safe_line
from qwenvl.sizes import Size

if TYPE_CHECKING:
    from qwenvl.tasks.grounding import Grounding

# Distinct, saturated colours (Kelly's and Tableau's sets, reordered so neighbours differ most).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 190),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (0, 0, 128),
)
DARK = (0, 0, 0)
LIGHT = (255, 255, 255)

# Fonts with CJK glyphs first (labels are often Chinese), then DejaVu; Pillow's own font as the last resort.
FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:/Windows/Fonts/arial.ttf",
)


@lru_cache(maxsize=16)
def font(size: int) -> Any:
    """A TrueType font of ``size`` pixels, the first of ``FONT_CANDIDATES`` installed (CJK-capable ones first),
    else Pillow's default font. Raises nothing."""
    for path in FONT_CANDIDATES:
        if Path(path).exists():
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: a fixed bitmap font
        return ImageFont.load_default()


def contrast_text(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``colour`` (WCAG relative luminance). Raises nothing."""

    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in colour)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return DARK if luminance > 0.179 else LIGHT


def colours_for(labels: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """One RGB colour per distinct label, from ``PALETTE`` in order of first appearance. Raises nothing."""
    out: dict[str, tuple[int, int, int]] = {}
    for label in labels:
        if label not in out:
            out[label] = PALETTE[len(out) % len(PALETTE)]
    return out


def load_image(image: str | os.PathLike[str] | bytes | Image.Image) -> Image.Image:
    """An RGB copy of a local image, a data: URL, the bytes of an image file or a PIL image, upright (EXIF
    orientation applied). Raises MediaError when it cannot be read or is no image."""
    if isinstance(image, Image.Image):
        img = image
    else:
        from qwenvl.media.sources import classify, read_bytes
        from qwenvl.models import MAX_IMAGE_FILE_BYTES

        if isinstance(image, bytes | bytearray | memoryview):
            data, label = bytes(image), f"the image bytes ({len(image):,} bytes)"
        else:
            source = classify(os.fspath(image))
            data, label = read_bytes(source, limit=MAX_IMAGE_FILE_BYTES, what="an image file"), source.label
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise MediaError(
                f"{label} is not an image that can be drawn on ({exc.__class__.__name__})",
                source=label,
                hint="Give the image file the boxes were asked about.",
            ) from None
    img = ImageOps.exif_transpose(img) or img
    return img.convert("RGB")


def _outline(
    draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], colour: tuple[int, int, int], width: int
) -> None:
    """A ``width`` px stroke of ``colour`` just outside the box, a dark line outside it and a light one inside."""
    x1, y1, x2, y2 = box
    draw.rectangle((x1 - width - 2, y1 - width - 2, x2 + width + 2, y2 + width + 2), outline=DARK, width=2)
    draw.rectangle((x1 - width, y1 - width, x2 + width, y2 + width), outline=colour, width=width)
    draw.rectangle((x1, y1, x2, y2), outline=LIGHT, width=1)


def _tag(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    colour: tuple[int, int, int],
    fnt: Any,
    bounds: Size,
    *,
    above: bool = True,
) -> None:
    """A label on a filled box of ``colour``: above ``xy`` when it fits, else below; kept inside the image."""
    if not text:
        return
    pad = max(2, getattr(fnt, "size", 12) // 5)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = xy
    y = y - th if above and y - th >= 0 else y
    x = min(max(0, x), max(0, bounds[0] - tw))
    y = min(max(0, y), max(0, bounds[1] - th))
    draw.rectangle((x, y, x + tw, y + th), fill=colour, outline=DARK, width=1)
    draw.text((x + pad - left, y + pad - top), text, fill=contrast_text(colour), font=fnt)


def annotate(
    image: str | os.PathLike[str] | bytes | Image.Image,
    grounding: Grounding,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
) -> Image.Image:
    """Draw ``grounding``'s boxes and points on ``image`` (the original); save to ``out`` when given.

    ``image``: a local path, a ``data:`` URL, an image file's bytes or a PIL image (EXIF orientation applied, as
    the boxes are); ``out``: a file whose picture format its suffix names (``.png``, ``.jpg``, ``.webp``...:
    ``image_format``; folders are made as needed), checked before anything is drawn by the one output rule
    (``qwenvl.outputs.check_outputs``): never ``image`` itself, and a file qwenvl did not write only with
    ``overwrite=True`` (default False). Returns the drawn RGB image. Raises UsageError for an ``out`` with no
    picture suffix (``boxes.txt``), a format too small for the picture (``.ico``), an ``out`` that is ``image``,
    a database, a folder or a file qwenvl did not write (without ``overwrite``); MediaError for an image that
    cannot be read or is not an image; OSError when ``out`` cannot be written."""
    if out is not None:
        image_format(out, "out")  # before anything is drawn: a suffix that names no picture format
        _check_out(out, image, overwrite)
    img = load_image(image)
    w, h = img.size
    draw = ImageDraw.Draw(img)
    width = max(3, round(max(w, h) / 250))
    fnt = font(min(48, max(12, round(max(w, h) / 42))))
    labels = [b.label for b in grounding.boxes] + [p.label for p in grounding.points]
    colours = colours_for(labels)
    for box in grounding.boxes:
        _outline(draw, (box.x1, box.y1, box.x2, box.y2), colours[box.label], width)
    radius = max(4, width * 3)
    for point in grounding.points:
        x, y = point.x, point.y
        draw.ellipse((x - radius - 2, y - radius - 2, x + radius + 2, y + radius + 2), fill=DARK)
        draw.ellipse((x - radius - 1, y - radius - 1, x + radius + 1, y + radius + 1), fill=LIGHT)
        draw.ellipse((x - radius + 1, y - radius + 1, x + radius - 1, y + radius - 1), fill=colours[point.label])
    # labels last, so no outline is drawn over one
    for i, box in enumerate(grounding.boxes, 1):
        _tag(draw, (box.x1 - width - 2, box.y1 - width - 2), box.label or f"#{i}", colours[box.label], fnt, (w, h))
    for i, point in enumerate(grounding.points, 1):
        _tag(draw, (point.x + radius + 3, point.y - radius), point.label or f"#{i}", colours[point.label], fnt, (w, h))
    if out is not None:
        save(img, out)
    return img


def image_format(out: str | Path, what: str = "the output") -> str:
    """The Pillow format an output picture named ``out`` is written in, from its suffix as Pillow reads it
    (``.png`` PNG, ``.jpg``/``.jpeg`` JPEG, ``.webp`` WEBP...: ``Image.registered_extensions``). UsageError
    (exit 2) for no suffix, or one that is not a picture format Pillow can write (``boxes.txt``): never a PNG
    under another name. ``what`` names the output in the message (``"--out"``). Checked before anything is
    sent (``qwenvl ground --out``, ``qwenvl events --sheet``) and again when saving (``save``)."""
    suffix = Path(out).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        said = f"{suffix!r} is not a picture format" if suffix else "it has no suffix to name a picture format"
        raise UsageError(
            f"{what} {safe_line(out)}: {said} (the format follows the suffix)",
            hint=f"Name it {Path(out).stem.rstrip('.') or 'boxes'}.png (or .jpg, .webp).",
        )
    return fmt


# The largest side, in pixels, of a picture each output format holds, where it is less than any picture qwenvl
# draws may be (Pillow 13, measured: past it Pillow writes the picture smaller, or fails once the answer is paid):
# ICO 256 (IcoImagePlugin writes sizes up to 256x256; ``save`` asks for the picture's own), WebP 16,383
# (libwebp's WEBP_MAX_DIMENSION), JPEG, MPO and PDF 65,500 (libjpeg's JPEG_MAX_DIMENSION; Pillow's PDF holds a
# JPEG), AVIF 32,768 (libavif's default dimension limit: a wider one is written but cannot be read), GIF, TGA,
# SGI and MSP 65,535 (16-bit fields), PCX 65,534 (its 16-bit bytes-per-line is even). ICNS holds only squares of
# ICNS_SIDES_PX (IcnsImagePlugin resizes the picture to each of them).
MAX_SIDE_PX: dict[str, int] = {"ICO": 256, "WEBP": 16_383, "AVIF": 32_768, "PCX": 65_534}
MAX_SIDE_PX |= dict.fromkeys(("JPEG", "MPO", "PDF"), 65_500) | dict.fromkeys(("GIF", "TGA", "SGI", "MSP"), 65_535)
ICNS_SIDES_PX = (32, 64, 128, 256, 512, 1024)


def check_fits(out: str | Path, size: Size | None, what: str = "the output", *, at_least: bool = False) -> str:
    """The Pillow format of ``out`` (``image_format``), when it can hold a picture of ``size`` (``(width,
    height)`` in pixels; None: not known, not checked) at that size; else UsageError (exit 2), one line naming the
    format's limit and the picture's size, with the hint to name it .png (PNG holds any size): never a picture
    written smaller than drawn (an .ico is capped at 256 px) or a failure after the answer is paid. ``at_least``:
    ``size`` is a lower bound (a contact sheet before its events are known), said so. The limits are
    ``MAX_SIDE_PX`` and ``ICNS_SIDES_PX``. Called before anything is sent (``ground --out``, ``events --sheet``,
    the MCP ground tool) and again when saving (``save``)."""
    fmt = image_format(out, what)
    if size is None:
        return fmt
    width, height = size
    if fmt == "ICNS":
        if width == height and width in ICNS_SIDES_PX:
            return fmt
        limit = f"an ICNS icon holds only squares of {', '.join(map(str, ICNS_SIDES_PX))} px"
    else:
        side = MAX_SIDE_PX.get(fmt)
        if side is None or max(width, height) <= side:
            return fmt
        limit = f"{'an' if fmt[0] in 'AIMS' else 'a'} {fmt} picture is at most {side:,} px a side"
    said = f"at least {width}x{height}" if at_least else f"{width}x{height}"
    raise UsageError(
        f"{what} {safe_line(out)}: {limit}, and the picture is {said} px (nothing was written)",
        hint=f"Name it {Path(out).stem.rstrip('.') or 'boxes'}.png (PNG holds any size).",
    )


def _check_out(out: str | Path, image: Any, overwrite: bool) -> None:
    """The one output rule (``qwenvl.outputs.check_outputs``) for a picture the library writes to ``out``:
    never over ``image`` (a path or ``file://`` URL; bytes and PIL images are no file), and over a file qwenvl
    did not write only with ``overwrite``. Raises UsageError."""
    from qwenvl.outputs import check_outputs

    refs = image if isinstance(image, str | os.PathLike) else None
    name = "the out file"  # the argument, in words: "Give the out file a new file name"
    check_outputs({name: out}, inputs={"image": refs}, pictures={name}, force=overwrite, force_flag="--force")


def save(img: Image.Image, out: str | Path) -> Path:
    """Write ``img`` to ``out`` (folders made as needed), in the format its suffix names (``image_format``: JPEG
    at quality 92), and record it as qwenvl's output (``qwenvl.outputs.record_output``: a later run may replace
    it). Whether ``out`` may be written is the caller's check (``annotate``, ``contact_sheet``). Returns the
    path. Raises UsageError for a suffix that names no picture format Pillow writes, or a format that cannot
    hold ``img`` at its size (``check_fits``), OSError when it cannot be written."""
    fmt = check_fits(out, img.size)
    path = Path(out).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG":
        img.convert("RGB").save(path, fmt, quality=92)
    elif fmt == "ICO":  # the picture's own size (Pillow's default: squares up to 256, the picture shrunk into them)
        img.save(path, fmt, sizes=[img.size])
    else:
        img.save(path, fmt)
    from qwenvl.outputs import record_output

    record_output(path)
    return path


def hms(seconds: float, *, decimals: bool = False) -> str:
    """``HH:mm:ss`` (whole seconds), or ``HH:mm:ss.s`` (tenths) with ``decimals``; both truncated, never rounded
    up, so a time printed is never after the one given (a clip's end, 1.56 s, is ``00:00:01.5``). Raises
    nothing."""
    seconds = max(0.0, seconds)
    # 1e-6: a float a hair below its tenth (2.3 * 10 == 22.999999999999996) is that tenth
    tenths = math.floor(seconds * 10 + 1e-6) if decimals else int(seconds) * 10
    whole, frac = divmod(tenths, 10)
    text = f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
    return f"{text}.{frac}" if decimals else text


def contact_sheet(
    frames: Sequence[Image.Image],
    times: Sequence[float],
    out: str | Path | None = None,
    *,
    title: str | None = None,
    events: Sequence[tuple[str, str, str]] = (),
    thumb_width: int = 240,
    columns: int | None = None,
    overwrite: bool = False,
) -> Image.Image:
    """A grid of ``frames`` with each one's time under it, an optional title, and the events (``(start, end,
    text)`` with HH:mm:ss times) listed below in their colours; a bar under each frame marks its events.

    ``times`` are seconds, one per frame; ``thumb_width`` is pixels (default 240); ``columns`` defaults to about
    the square root of the frame count, at most 6. ``out``: a file whose picture format its suffix names
    (``image_format``), checked before anything is drawn by the one output rule (``qwenvl.outputs.
    check_outputs``): a file qwenvl did not write is replaced only with ``overwrite=True`` (default False).
    Raises ValueError for no frames; UsageError for an ``out`` with no picture suffix, a format too small for
    the sheet, a database, a folder or a file qwenvl did not write (without ``overwrite``); OSError when ``out``
    cannot be written."""
    if not frames:
        raise ValueError("no frames to draw")
    if out is not None:
        image_format(out, "out")
        _check_out(out, None, overwrite)
    cols, rows, text_w = _grid(len(frames), thumb_width, columns)
    thumbs = [ImageOps.contain(f.convert("RGB"), (thumb_width, thumb_width)) for f in frames]
    cell_h = max(t.height for t in thumbs)
    fnt = font(14)
    small = font(13)
    pad = _PAD
    caption = _CAPTION
    spans = [(_seconds(a), _seconds(b)) for a, b, _ in events]
    title_h = 30 if title else 0
    event_lines = _wrap_events(events, small, text_w - 2 * pad)
    events_h = (len(event_lines) * 19 + pad) if event_lines else 0
    sheet = Image.new("RGB", (text_w, title_h + rows * (cell_h + caption + pad) + pad + events_h), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 8), title, fill=LIGHT, font=fnt)
    for i, (thumb, t) in enumerate(zip(thumbs, times, strict=False)):
        r, c = divmod(i, cols)
        x = pad + c * (thumb_width + pad)
        y = title_h + pad + r * (cell_h + caption + pad)
        sheet.paste(thumb, (x + (thumb_width - thumb.width) // 2, y + (cell_h - thumb.height) // 2))
        inside = [k for k, (a, b) in enumerate(spans) if a is not None and b is not None and a <= t <= b]
        for n, k in enumerate(inside[:3]):  # a bar in the colour of each event the frame falls in
            width = thumb_width // len(inside[:3])
            draw.rectangle(
                (x + n * width, y + cell_h + 1, x + (n + 1) * width - 1, y + cell_h + 4), fill=PALETTE[k % len(PALETTE)]
            )
        label = f"#{i + 1}  {hms(t, decimals=True)}"
        _tag(draw, (x, y + cell_h + 7), label, (240, 240, 240), small, sheet.size, above=False)
    y = title_h + rows * (cell_h + caption + pad) + pad
    for line, colour in event_lines:
        draw.text((pad, y), line, fill=colour, font=small)
        y += 19
    if out is not None:
        save(sheet, out)
    return sheet


_PAD = 8  # pixels around and between a contact sheet's cells
_CAPTION = 28  # pixels under a frame for its number and time


def _grid(count: int, thumb_width: int, columns: int | None) -> tuple[int, int, int]:
    """``(columns, rows, width in pixels)`` of a contact sheet of ``count`` frames. Raises nothing."""
    cols = columns or min(6, max(1, math.ceil(math.sqrt(count))))
    return cols, math.ceil(count / cols), cols * (thumb_width + _PAD) + _PAD


def sheet_size_at_least(count: int, thumb_width: int = 240, columns: int | None = None) -> Size:
    """``(width, height)`` in pixels a ``contact_sheet`` of ``count`` frames is at least: its width exactly, its
    height without the frames, title and event lines (known only once drawn). For ``check_fits`` before the
    request is sent. Raises nothing."""
    _, rows, width = _grid(max(1, count), thumb_width, columns)
    return width, rows * (_CAPTION + _PAD) + _PAD


def _seconds(text: str) -> float | None:
    try:
        value = 0.0
        for part in text.split(":"):
            value = value * 60 + float(part)
    except ValueError:
        return None
    return value


def _wrap_events(events: Sequence[tuple[str, str, str]], fnt: Any, width: int) -> list[tuple[str, Any]]:
    lines: list[tuple[str, Any]] = []
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for i, (start, end, text) in enumerate(events):
        colour = PALETTE[i % len(PALETTE)]
        line = f"{start}–{end}  "
        for ch in text:
            if measure.textlength(line + ch, font=fnt) > width:
                lines.append((line, colour))
                line = "      "
            line += ch
        lines.append((line, colour))
    return lines
