"""Images: identify by content, check the service's rules, decode upright to 8 bits, resize and encode.

Nothing here knows about models or budgets (``qwenvl.media.prepare`` decides the size); this module knows
image files. Every failure is a ``MediaError`` that names the file and the rule it breaks.

Decisions:

- **Formats.** The service documents BMP, DIB, ICNS, ICO, JPEG, JPEG2000, PNG (with APNG), SGI, TIFF and WEBP
  (seed doc 002). Those are sent as they are when nothing else requires a change. A camera's MPO file is a
  JPEG with more pictures appended and is sent as ``image/jpeg``. Any other raster format Pillow reads (a
  still GIF, AVIF, PPM, TGA, ...) is converted to PNG or JPEG when preparing and refused with
  ``prepare=False``.
- **Animated images** (animated GIF, APNG or WebP) are refused. The service takes still images, so the model
  would see one frame and answer as if that were the whole picture. The hint says to send the frames as a
  video or to extract the frame that matters. A multi-page TIFF is sent as its first page, with a note.
- **HEIC/HEIF** cannot be read without a plug-in, so it is refused with the format named and a conversion
  suggested. **SVG** is refused: it is a vector drawing, and the service takes raster images only.
- **Decompression bombs.** The size comes from the header (``Image.open`` reads no pixels). Over
  ``MAX_IMAGE_PIXELS`` (150 MP) the file is refused before anything is allocated.
- **Pixels.** EXIF orientation is applied. CMYK becomes RGB (through the embedded ICC profile when there is
  one). 16-bit images are scaled to 8 bits: Pillow's own conversion clips them and would show a white
  image. A palette becomes RGB, or RGBA when it has a transparent entry. Transparency is flattened onto
  white, which is what QwenLM's reference preprocessing does for RGBA. The model cannot see alpha, and
  flattening ourselves gives LA, PA and palette images the same white background as well.
- **Encoding.** Never less faithful than QwenLM's reference (its exact resize re-encoded at JPEG quality 90,
  PSNR against that resize) and no larger. A photograph, or anything that came as a JPEG, goes as JPEG
  (``encode_photo``): the reference's own pixels at quality 90 with optimised Huffman tables, or flat
  quantisation for dense texture when that is smaller still. Graphics
  (screenshots, text, line art, charts) go as PNG or as full-chroma JPEG quality 95/90, visually lossless,
  else full chroma with quality 90's luma table and the finest chroma table that fits a plain q90 JPEG's bytes,
  when measured at least as faithful (``encode_graphic``). The graphics test is cheap: in a 128x128 sample, the
  16 most common colours cover at least 60% of the pixels. ``encode_image`` makes that choice, the one home for
  every encoder: images, rendered PDF pages and sampled video frames (a screen recording's frames are
  screenshots). An image
  over the size limit goes as ``encode_photo``'s JPEG, then at lower qualities, all with optimised Huffman
  tables (``qwenvl.media.prepare``). An image within its budget that needs no conversion passes through from
  its header (``passes_through``).
- **Decoding and resampling.** Exactly as QwenLM's reference: decoded at full scale, then resized to the
  exact size with Pillow's bicubic convolution (no DCT-scaled decode, no ``reducing_gap``), so the pixels
  are the reference's and the encodings above are at least as faithful by construction. A DCT-scaled decode
  or a ``reducing_gap`` is 3-5x faster on large reductions but gives pixels 49-55 dB from the exact resize:
  quality 90 then scored 0.01-0.09 dB under the reference, and on smooth photographs no encoding within its
  bytes won that back (tests/test_media_images.py has the cases). A large output is resized on every core,
  Pillow's two passes split apart (``resize``), which gives the same pixels bit for bit.
- **Encoding on every core.** JPEGs are encoded through an in-memory file, where Pillow releases the GIL
  (``_saved``), so a large image's candidate encodings run at once (``_jpeg_job``) and a batch's workers encode
  side by side. Which candidate is sent never depends on that.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shlex
import struct
import threading
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from qwenvl.errors import MediaError, UsageError
from qwenvl.media.sources import AVIF_BRANDS, DAMAGED_HINT, HEAD_BYTES, HEIF_BRANDS, ftyp_brands, sniff
from qwenvl.models import MAX_ASPECT_RATIO, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from qwenvl.sizes import Size

# Formats the service documents (seed doc 002), with the Content-Type it lists for each.
SERVICE_MIME: dict[str, str] = {
    "BMP": "image/bmp",
    "DIB": "image/bmp",
    "ICNS": "image/icns",
    "ICO": "image/x-icon",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "JPEG2000": "image/jp2",
    "PNG": "image/png",
    "SGI": "image/sgi",
    "TIFF": "image/tiff",
    "WEBP": "image/webp",
}
SERVICE_FORMATS = frozenset(SERVICE_MIME) - {"MPO"}

JPEG_QUALITY = 90  # qwen-vl-utils' re-encoding quality: the fidelity and size reference; also video frames
# A photograph is sent as the most faithful of these encodings that is no larger than a plain quality-90 JPEG
# of the same pixels (see ``encode_photo``): flat quantisation (luma step 8, chroma 16) for dense texture,
# whose detail the standard tables' coarse high-frequency steps blur; quality 91 with optimised Huffman tables;
# quality 90 with optimised tables (never larger than the plain one).
FLAT_QTABLES = ([8] * 64, [16] * 64)
DENSE_TEXTURE_BYTES_PER_PIXEL = 0.3  # a plain q90 encoding this dense means texture, where flat tables pay off
OPTIMIZED_HUFFMAN_RATIO = 0.93  # optimised Huffman tables save 3-10% of a q90 JPEG (7% on the bench photo)
DENSE_SAMPLE_MARGIN = 0.8  # a sample this near the dense-texture line starts the flat-table encoding at once
GRAPHIC_JPEG_QUALITIES = (95, 90)  # visually lossless full-chroma JPEG for screenshots (``encode_graphic``)
# Then full chroma with the yardstick's own luma table (quality 90: the luma is coded coefficient for coefficient
# as the yardstick's) and the chroma table of the highest of these qualities that fits the yardstick's bytes, sent
# only when its PSNR is measured at least the yardstick's. On a rendered report page, a screen recording's frames
# and document screenshots (tests/, bench/bench_video.py) 4:4:4 q90 was 0.4-18% over a plain q90 JPEG; the JPEG
# this gives fitted and was 0.3-4.0 dB more faithful, where the uniform 4:4:4 quality that fitted was up to 2.6 dB
# less faithful than the yardstick.
GRAPHIC_CHROMA_QUALITIES = (50, 60, 70, 80)  # ascending: a binary search, at most 3 encodings
JPEG_FALLBACK_QUALITIES = (80, 70, 60)  # tried in turn when a JPEG is over the size limit
PNG_COMPRESS_LEVEL = 6
SAMPLE_FRACTION = 8  # size guesses encode evenly spaced full-width bands holding 1/8 of the rows (``_bands``)
PNG_SAMPLE_BANDS = 16  # ``png_size_estimate``'s bands (``_looks_dense``'s are one JPEG MCU row each)
PNG_ESTIMATE_SLACK = 1.3  # a PNG estimated over 1.3x the yardstick is not tried (estimates were within 10%)
GRAPHIC_SAMPLE_SIDE = 128  # the colour census looks at a sample this large
GRAPHIC_TOP_COLOURS = 16
GRAPHIC_COVERAGE = 0.6  # share of the sample the top colours must cover for an image to count as a graphic
PARALLEL_RESIZE_PIXELS = 1_000_000  # larger outputs are resized on every core (``resize``: rows, then columns)

# An in-budget image at most this many bytes per pixel passes through: a quality-90 JPEG of a photograph is
# about 0.2-0.6 B/px and a PNG screenshot usually less, while a PNG photograph (2-3 B/px) or a quality-100
# JPEG is worth the trial re-encoding that may halve it.
PASSTHROUGH_BYTES_PER_PIXEL = 1.0

_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_PASSTHROUGH_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
_PASSTHROUGH_MODES = frozenset({"RGB", "L", "P"})
_ANIMATABLE = frozenset({"GIF", "PNG", "WEBP"})
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transposition that makes the image upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_FORMAT_LIST = ", ".join(sorted(SERVICE_FORMATS))


@dataclass(frozen=True)
class ImageInfo:
    """What an image file holds, read from its header only."""

    format: str  # Pillow's name, e.g. "JPEG"
    mime: str  # the Content-Type to send it under
    width: int  # as stored (before EXIF orientation)
    height: int
    mode: str = "RGB"  # Pillow's mode, e.g. "RGB", "P", "I;16", "CMYK"
    orientation: int = 1  # EXIF orientation, 1-8
    frames: int = 1
    animated: bool = False
    transparency: bool = False  # an alpha channel or a transparent palette entry (may still be all opaque)

    @property
    def accepted(self) -> bool:
        """Whether the service takes this format as it is."""
        return self.format in SERVICE_MIME

    @property
    def upright_size(self) -> Size:
        """(width, height) once EXIF orientation is applied."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)

    @property
    def high_bit_depth(self) -> bool:
        return self.mode.startswith("I") or self.mode == "F"


# --- identify and check -------------------------------------------------------------------------------------


def identify(data: bytes | BinaryIO, label: str) -> ImageInfo:
    """What image ``data`` holds, from its header only (fast). ``data`` is the bytes, or a file open for reading
    (``sources.open_source``): then only what Pillow needs is read (a header, an offset, frame headers), so a
    huge file that is no image fails at once. MediaError when it is not an image Pillow can read, when the
    format needs a plug-in (HEIC) or is a vector (SVG), and when the header declares more than ``MAX_IMAGE_PIXELS``
    pixels (no pixel memory is allocated)."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    head = stream.read(HEAD_BYTES)
    stream.seek(0)
    data = data if isinstance(data, bytes) else head  # what the messages and EXIF walk look at
    if not data:
        raise MediaError(
            f"{label} is empty (0 bytes)",
            source=label,
            hint="The file has no content; check that it was written completely.",
        )
    _refuse_known_non_images(data, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, corrupt EXIF, ...: handled below
            img = Image.open(stream)
            fmt = img.format or ""
            width, height = img.size
            _check_pixels(width, height, label)
            mode = img.mode
            orientation = _orientation(img, data)
            animated = bool(getattr(img, "is_animated", False)) and fmt in _ANIMATABLE
            frames = int(getattr(img, "n_frames", 1) or 1) if (animated or fmt == "TIFF") else 1
            transparency = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    except Image.DecompressionBombError as exc:
        size = _png_size(data)
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        if size:
            declared = f"{size[0]}x{size[1]} ({size[0] * size[1] / 1e6:,.0f} MP)"
        else:
            declared = f"{int(pixels.group(1)) / 1e6:,.0f} MP" if pixels else "more pixels than allowed"
        raise _bomb_error(label, declared) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise _not_an_image(data, label) from exc
    mime = SERVICE_MIME.get(fmt) or Image.MIME.get(fmt) or "application/octet-stream"
    return ImageInfo(
        fmt,
        mime,
        width,
        height,
        mode=mode,
        orientation=orientation,
        frames=frames,
        animated=animated,
        transparency=transparency,
    )


def check(info: ImageInfo, label: str) -> None:
    """The service's rules for any image: not animated, each side more than 10 px, ratio at most 200:1."""
    if info.animated:
        raise MediaError(
            f"{label} is an animated {info.format} ({info.frames} frames); the service takes still images",
            source=label,
            hint="Send the frames as a video (a list of frame images), or extract the one frame you mean, "
            f"e.g. {_first_frame_command(info, label)}.",
        )
    w, h = info.upright_size
    broken = []
    if min(w, h) < MIN_IMAGE_SIDE:
        broken.append(f"each side must be more than {MIN_IMAGE_SIDE - 1} px")
    ratio = max(w, h) / min(w, h) if min(w, h) > 0 else float("inf")
    if ratio > MAX_ASPECT_RATIO:
        broken.append(f"its aspect ratio {ratio:.0f}:1 is over the {MAX_ASPECT_RATIO}:1 the service allows")
    if broken:
        hint = (
            "Crop it, or split it into several images."
            if ratio > MAX_ASPECT_RATIO
            else ("Use a larger image (upscale it if it really is this small).")
        )
        raise MediaError(f"{label} is {w}x{h} px: {'; and '.join(broken)}", source=label, hint=hint)


def _first_frame_command(info: ImageInfo, label: str) -> str:
    """A command that saves the first frame of the animated image ``label``: ffmpeg reads GIF and APNG, but not
    every build reads animated WebP, which ImageMagick does. Raises nothing."""
    name = label if os.path.splitext(label)[1] else f"in.{info.format.lower()}"  # a data: URL has no file name
    if info.format == "WEBP":
        return f"`magick {shlex.quote(name + '[0]')} frame.png`"
    return f"`ffmpeg -i {shlex.quote(name)} -frames:v 1 frame.png`"


def verify(data: bytes, info: ImageInfo, label: str) -> None:
    """Check that the pixel data is complete without decoding it (used for an image sent as given).

    JPEG: its segments walked from SOI to the primary image's EOI (``jpeg_complete``); PNG: every chunk's type
    and CRC up to the closing IEND (``png_fault``: what Pillow's ``open`` and ``verify`` check, without opening the
    image a second time); WebP: its RIFF chunks walked to the declared end
    (``riff_complete``). Other formats: a full decode. A damaged file raises MediaError ("truncated or corrupt").

    Why no decode for JPEG and WebP: what the service cannot read is a file cut short. Damage inside the
    entropy-coded data is not refused by a decode either (libjpeg repairs it with a warning, which Pillow
    ignores), and a decode cost 0.5-12 ms per small image, more than the rest of a request (issue 15, part 1:
    an image that needs nothing done goes through from its header). Pillow has no structure-only check for
    these formats, hence the two walkers below.
    """
    try:
        if info.format in _JPEG_FORMATS:
            if jpeg_complete(data):
                return
            raise OSError("the data ends before the image's end marker (EOI)")
        if info.format == "WEBP":
            if riff_complete(data):
                return
            raise OSError("the data ends before the end its RIFF header declares")
        if info.format == "PNG":
            fault = png_fault(data)
            if fault is None:
                return
            raise OSError(fault)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.open(io.BytesIO(data)).load()
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise _corrupt(label, info, exc) from None


# After a scan: a marker (fill bytes before it match at the last 0xFF), not stuffing (FF00) or RSTn. A pattern that
# starts with a literal byte is searched at memchr speed: 2.7 ms for a 9 MB JPEG (``\xff+`` took 54 ms).
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_complete(data: bytes) -> bool:
    """True when ``data`` is a JPEG whose segments (each with its declared length) and at least one scan
    (entropy-coded data up to the next marker) run from SOI to an EOI, as in ITU T.81 B.1; trailing bytes after
    the EOI (an MPO's other images, a maker's trailer) are allowed. False for a file cut short anywhere. Raises
    nothing."""
    if data[:2] != b"\xff\xd8":
        return False
    pos, end, scans = 2, len(data), 0
    while pos + 2 <= end:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xD9:  # EOI: complete only after a scan (an image with no pixel data is not)
            return scans > 0
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length
            pos += 2
        else:
            if pos + 4 > end:
                return False
            stop = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            if stop > end:
                return False
            if marker != 0xDA:  # SOS: its entropy-coded data runs to the next marker
                pos = stop
                continue
            scans += 1
            found = _JPEG_NEXT_MARKER.search(data, stop)
            if found is None:
                return False
            pos = found.start()
    return False


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHUNK_TYPE = re.compile(rb"\w\w\w\w")  # Pillow's test of a chunk's type (``PngImagePlugin.is_cid``)


def png_fault(data: bytes) -> str | None:
    """None when ``data`` is a PNG whose chunks run from the signature to an IEND, each with a valid type, its
    declared length within the data and a matching CRC (the checks of Pillow's ``open``, up to the first IDAT,
    and ``verify``, from there to IEND, whose own CRC neither reads); else what is wrong, in Pillow's words. Walks
    the chunk headers and runs CRC-32 over each chunk (zlib, as Pillow): nothing is decompressed. Raises
    nothing."""
    if not data.startswith(_PNG_SIGNATURE):
        return "not a PNG file"
    view, pos, end = memoryview(data), len(_PNG_SIGNATURE), len(data)
    while True:
        if pos + 8 > end:
            return "truncated PNG file"
        kind = data[pos + 4 : pos + 8]
        if not _PNG_CHUNK_TYPE.match(kind):
            return f"broken PNG file (chunk {kind!r})"
        if kind == b"IEND":
            return None
        stop = pos + 8 + int.from_bytes(data[pos : pos + 4], "big")
        if stop > end:
            return "Truncated File Read"
        if stop + 4 > end:
            return f"broken PNG file (incomplete checksum in {kind!r})"
        if zlib.crc32(view[pos + 4 : stop]) != int.from_bytes(data[stop : stop + 4], "big"):
            return f"broken PNG file (bad header checksum in {kind!r})"
        pos = stop + 4


def riff_complete(data: bytes) -> bool:
    """True when ``data`` is a RIFF file (WebP) at least as long as its header declares, and its chunks, each
    with its declared size (and a pad byte when odd), fit within that length. Raises nothing."""
    if len(data) < 12 or data[:4] != b"RIFF":
        return False
    declared = 8 + int.from_bytes(data[4:8], "little")
    if declared > len(data):
        return False
    pos = 12
    while pos + 8 <= declared:
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += 8 + size + (size & 1)
    return pos <= declared + 1 and pos >= declared  # the last chunk ends at the declared end (a pad may be cut)


def passes_through(info: ImageInfo, nbytes: int) -> bool:
    """Whether an image within its pixel budget is sent as it is, decided from its header alone (no decode,
    no trial encode): a still JPEG, PNG or WebP in a mode the service reads as it is (RGB, L, or a palette),
    upright (EXIF orientation 1), without transparency, at most ``MAX_IMAGE_BYTES`` and already compact (at
    most ``PASSTHROUGH_BYTES_PER_PIXEL``). Anything else is decoded and re-encoded, or kept only when a
    re-encoding would not be smaller."""
    return (
        info.format in _PASSTHROUGH_FORMATS
        and info.mode in _PASSTHROUGH_MODES
        and info.orientation == 1
        and not info.transparency
        and not info.animated
        and info.frames == 1
        and nbytes <= MAX_IMAGE_BYTES
        and nbytes <= PASSTHROUGH_BYTES_PER_PIXEL * info.width * info.height
    )


# --- decode, convert, resize --------------------------------------------------------------------------------


@dataclass
class Decoded:
    """An image ready to encode: upright, 8-bit, RGB or L, no transparency."""

    image: Image.Image
    notes: list[str]
    must_convert: bool  # the original's pixels would be misread as they are (CMYK, 16-bit, alpha, rotation)


def decode(data: bytes, info: ImageInfo, label: str, *, size: Size | None = None) -> Decoded:
    """Decode ``data`` at full scale to an upright 8-bit RGB or L image, resized to exactly ``size`` (width,
    height, upright) when given, as QwenLM's reference resizes (``resize``)."""
    notes: list[str] = []
    stored_size = None
    if size is not None:
        stored_size = (size[1], size[0]) if info.orientation in (5, 6, 7, 8) else size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = _decode_stored(data, info, label)
        if info.frames > 1 and info.format == "TIFF":
            notes.append(f"multi-page TIFF: only the first of {info.frames} pages is sent")
        img, converted = _to_8bit(img, notes)
        img, flattened = _flatten(img, notes)
        if stored_size is not None and img.size != stored_size:
            img = resize(img, stored_size)
        if info.orientation in _UPRIGHT:
            img = img.transpose(_UPRIGHT[info.orientation])
            notes.append(f"EXIF orientation {info.orientation} applied")
    return Decoded(img, notes, converted or flattened or info.orientation in _UPRIGHT)


def resize(img: Image.Image, size: Size, resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """``img`` resized to exactly ``size`` (width, height) by Pillow's antialiased convolution (bicubic by
    default), the pixels one ``Image.resize`` call without ``reducing_gap`` gives (what qwen-vl-utils calls).

    A large output is made on every core, Pillow's two passes done apart: the horizontal pass in bands of
    rows, then the vertical pass in bands of columns. Pillow releases the GIL while it resamples, and each band
    spans the whole of the axis it resamples, so its filter weights are those of the one call: the same pixels,
    bit for bit (tests/test_media_images.py). Bands of the output with a box would not be: Pillow computes a
    band's filter positions from its own top, and a rounding there changes a pixel by one level now and then.
    """
    width, height = size
    workers = _cpu_count()
    if workers < 2 or width * height < PARALLEL_RESIZE_PIXELS:
        return img.resize(size, resample)

    def horizontal(top: int, bottom: int) -> Image.Image:
        return img.crop((0, top, img.width, bottom)).resize((width, bottom - top), resample)

    wide = _joined(horizontal, img.height, workers, (width, img.height), rows=True)

    def vertical(left: int, right: int) -> Image.Image:
        return wide.crop((left, 0, right, wide.height)).resize((right - left, height), resample)

    return _joined(vertical, width, workers, size, rows=False)


def _joined(
    part: Callable[[int, int], Image.Image], extent: int, workers: int, size: Size, *, rows: bool
) -> Image.Image:
    """``part(start, end)`` for ``workers`` equal spans of ``extent`` rows (or columns), run on the pool and
    pasted together into an image of ``size``."""
    bounds = [extent * i // workers for i in range(workers + 1)]
    spans = [(bounds[i], bounds[i + 1]) for i in range(workers) if bounds[i + 1] > bounds[i]]
    parts = list(_pool().map(lambda span: part(*span), spans))
    out = Image.new(parts[0].mode, size, None)  # not filled: the parts cover it
    for (start, _), piece in zip(spans, parts, strict=True):
        out.paste(piece, (0, start) if rows else (start, 0))
    return out


def looks_like_graphic(img: Image.Image) -> bool:
    """True for screenshots, text, line art and charts (few colours dominate), False for photographs."""
    sample = img
    if img.width > GRAPHIC_SAMPLE_SIDE or img.height > GRAPHIC_SAMPLE_SIDE:
        sample = img.resize(
            (min(img.width, GRAPHIC_SAMPLE_SIDE), min(img.height, GRAPHIC_SAMPLE_SIDE)), Image.Resampling.NEAREST
        )
    colours = sample.getcolors(maxcolors=4096)
    if colours is None:  # thousands of distinct colours in a small sample: a photograph
        return False
    counts = sorted((count for count, _ in colours), reverse=True)
    return sum(counts[:GRAPHIC_TOP_COLOURS]) >= GRAPHIC_COVERAGE * sample.width * sample.height


def encode_jpeg(
    img: Image.Image,
    quality: int = JPEG_QUALITY,
    *,
    subsampling: str = "4:2:0",
    optimize: bool = False,
    qtables: tuple[list[int], list[int]] | None = None,
) -> bytes:
    """Baseline JPEG (libjpeg-turbo through Pillow, no array copy), 4:2:0 chroma by default; ``optimize``
    computes optimised Huffman tables (same pixels, 3-10% fewer bytes, a second pass); ``qtables`` replaces
    the quality's quantisation tables. Encoded without holding the GIL (``_saved``)."""
    if qtables is not None:
        return _saved(img, "JPEG", qtables=list(qtables), subsampling=subsampling, optimize=optimize)
    return _saved(img, "JPEG", quality=quality, subsampling=subsampling, optimize=optimize)


def _saved(img: Image.Image, fmt: str, **params: object) -> bytes:
    """``img`` saved by Pillow as ``fmt``, through an anonymous in-memory file where the system has them (Linux
    ``memfd_create``), else a ``BytesIO``.

    Why a file: Pillow releases the GIL while it encodes only into a real file (its ``ImageFile._save`` hands the
    file descriptor to the encoder, ``encode_to_file``); into a ``BytesIO`` it encodes holding the GIL. So two
    encodings (``encode_photo``'s candidates), or a batch's workers, each encode on their own core. The
    round trip through the file costs about 0.1 ms for a 300 kB JPEG."""
    if not _MEMFD:
        buf = io.BytesIO()
        img.save(buf, fmt, **params)
        return buf.getvalue()
    fd = os.memfd_create("qwenvl-encode", os.MFD_CLOEXEC)
    with open(fd, "w+b") as file:
        img.save(file, fmt, **params)
        file.flush()
        return os.pread(fd, os.fstat(fd).st_size, 0)


def encode_photo(img: Image.Image) -> bytes:
    """A photograph as JPEG, at least as faithful as qwen-vl-utils' quality-90 re-encode and no larger.

    ``img`` is the exact resize, the reference's own pixels (``decode``), so quality 90 with optimised Huffman
    tables is as faithful as the reference in 3-10% fewer bytes (the same coefficients, better codes). For
    dense texture (that encoding over ``DENSE_TEXTURE_BYTES_PER_PIXEL`` less the Huffman saving) flat
    quantisation (``FLAT_QTABLES``) is tried too and sent when no larger: it spends the bits evenly over all
    frequencies and so minimises squared error (+0.6 to +2.7 dB PSNR on foliage and high-ISO grain). Measured
    against the exact resize in bench/bench_image_prepare.py (corpus) and tests/test_media_images.py
    (generated images).
    """
    # likely texture: the flat-table candidate is encoded on another core meanwhile (the same result, less wait)
    flat = _jpeg_job(img, _parallel(img) and _looks_dense(img), qtables=FLAT_QTABLES, optimize=True)
    same = encode_jpeg(img, optimize=True)
    if len(same) >= DENSE_TEXTURE_BYTES_PER_PIXEL * OPTIMIZED_HUFFMAN_RATIO * img.width * img.height:
        flat_jpeg = flat()
        if len(flat_jpeg) <= len(same):
            return flat_jpeg
    return same


def _parallel(img: Image.Image) -> bool:
    """Whether ``img`` is large enough that its encodings run on several cores at once (``_jpeg_job``)."""
    return img.width * img.height >= PARALLEL_RESIZE_PIXELS and _cpu_count() > 1


def _jpeg_job(img: Image.Image, start: bool, **params: Any) -> Callable[[], bytes]:
    """``encode_jpeg(img, **params)`` as a call that gives its bytes: started now on the pool when ``start`` (the
    caller encodes something else meanwhile; JPEG encoding releases the GIL, ``_saved``), else encoded when
    called. A started job encodes a copy: Pillow keeps a save's parameters on the image object while it saves
    (``encoderinfo``), so two saves of one object at once would mix them (the quantisation tables)."""
    if not start:
        return functools.partial(encode_jpeg, img, **params)
    return _pool().submit(encode_jpeg, img.copy(), **params).result


def _looks_dense(img: Image.Image) -> bool:
    """Whether ``encode_photo``'s quality-90 encoding of ``img`` will likely be dense texture, from a plain q90
    JPEG of evenly spaced bands of 16 rows (one MCU row each) holding 1/``SAMPLE_FRACTION`` of the image, with
    ``DENSE_SAMPLE_MARGIN`` to spare. Only decides what is encoded at once, never what is sent."""
    bands = img.height // (_MCU_ROWS * SAMPLE_FRACTION)
    if bands < 2:
        return False
    sample = _bands(img, bands, _MCU_ROWS)
    return (
        len(encode_jpeg(sample)) >= DENSE_SAMPLE_MARGIN * DENSE_TEXTURE_BYTES_PER_PIXEL * sample.width * sample.height
    )


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def encode_graphic(img: Image.Image) -> tuple[bytes, str]:
    """(bytes, mime) of a screenshot or document: lossless or visually lossless, and when possible no larger
    than a plain quality-90 JPEG of the same pixels (what qwen-vl-utils would send). The first of PNG and
    full-chroma (4:4:4, so coloured text keeps its edges) JPEG at ``GRAPHIC_JPEG_QUALITIES`` with optimised
    Huffman tables that is no larger than that yardstick; then a full-chroma JPEG with the yardstick's luma
    table and the chroma table of the highest of ``GRAPHIC_CHROMA_QUALITIES`` that is no larger, when its PSNR
    against ``img`` is at least the yardstick's (both decoded and measured); if none of these is, the smaller of
    PNG and the q90 JPEG. A full-chroma JPEG at quality 90 or more has the yardstick's luma quantisation or finer
    and unsubsampled chroma, so it is at least as faithful without measuring. Raises nothing of its own.

    The PNG is encoded only when a sample of it (``png_size_estimate``) says it may fit: on a 4K document
    screenshot the PNG was 1.4x the yardstick and cost five times a JPEG encoding."""
    parallel = _parallel(img)
    plain_job = _jpeg_job(img, parallel)  # on another core while the PNG's size is estimated
    png_estimate = png_size_estimate(img)
    plain = plain_job()
    yardstick = len(plain)
    candidates: list[tuple[bytes, str]] = []
    if png_estimate <= PNG_ESTIMATE_SLACK * yardstick:
        png = encode_png(img)
        if len(png) <= yardstick:
            return png, "image/png"
        candidates.append((png, "image/png"))
    fitted: bytes | None = None
    qualities = sorted(GRAPHIC_JPEG_QUALITIES)  # ascending: a quality that does not fit, no higher one will
    # the next quality starts on another core while one is encoded: needed whenever this one fits (the usual case)
    jobs = [
        _jpeg_job(img, parallel and i > 0, quality=q, subsampling="4:4:4", optimize=True)
        for i, q in enumerate(qualities)
    ]
    for job in jobs:
        jpeg = job()
        if len(jpeg) > yardstick:
            candidates.append((jpeg, "image/jpeg"))
            break
        fitted = jpeg
    if fitted is not None:
        return fitted, "image/jpeg"
    fitting = _coarser_chroma_fitting(img, yardstick)
    if fitting is not None and _squared_error(fitting, img) <= _squared_error(plain, img):
        return fitting, "image/jpeg"
    return min(candidates, key=lambda c: len(c[0]))


def _coarser_chroma_fitting(img: Image.Image, limit: int) -> bytes | None:
    """The full-chroma JPEG (optimised Huffman tables) with the quality-90 luma table and the chroma table of the
    highest of ``GRAPHIC_CHROMA_QUALITIES`` that is at most ``limit`` bytes, by binary search (bytes grow with
    quality); None when even the lowest is larger."""
    qualities = GRAPHIC_CHROMA_QUALITIES
    best, lo, hi = None, 0, len(qualities) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        tables = (list(_standard_table(JPEG_QUALITY, 0)), list(_standard_table(qualities[mid], 1)))
        jpeg = encode_jpeg(img, qtables=tables, subsampling="4:4:4", optimize=True)
        if len(jpeg) <= limit:
            best, lo = jpeg, mid + 1
        else:
            hi = mid - 1
    return best


@functools.lru_cache(maxsize=32)
def _standard_table(quality: int, index: int) -> tuple[int, ...]:
    """libjpeg's standard quantisation table at ``quality`` (``index`` 0 luma, 1 chroma), as Pillow reads it back
    from a JPEG it wrote (the form ``encode_jpeg``'s ``qtables`` takes)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", quality=quality)
    with Image.open(buf) as jpeg:
        assert isinstance(jpeg, JpegImagePlugin.JpegImageFile)
        return tuple(jpeg.quantization[index])


def _squared_error(jpeg: bytes, img: Image.Image) -> float:
    """Sum of squared differences between a JPEG (decoded by libjpeg-turbo, as Pillow would) and ``img`` (RGB or
    L, the same size): the PSNR comparison without the logarithm."""
    import numpy as np  # numpy and simplejpeg load when first needed (not by `import qwenvl`)
    import simplejpeg

    exact = np.asarray(img)
    colorspace = "GRAY" if exact.ndim == 2 else "RGB"
    decoded = simplejpeg.decode_jpeg(jpeg, colorspace=colorspace).reshape(exact.shape)
    # float32 squares are exact (at most 255^2); each row's sum is float32 (a relative error near 1e-9 in all), the
    # total float64: 2.5x faster than integer arithmetic
    rows = np.subtract(decoded, exact, dtype=np.float32).reshape(exact.shape[0], -1)
    return float(np.einsum("ij,ij->i", rows, rows).sum(dtype=np.float64))


def encode_image(img: Image.Image, *, photo: bool | None = None) -> tuple[bytes, str]:
    """(bytes, mime) of an image by the encoding rule: ``encode_photo`` (``image/jpeg``) for a photograph,
    ``encode_graphic`` (PNG or full-chroma JPEG) for a screenshot or document. ``photo=None`` (the default) lets
    ``looks_like_graphic`` decide from a 128x128 sample (about 0.3 ms). ``img`` is RGB or L, exactly the pixels
    to send. Raises nothing of its own. The one home of the choice for every encoder: rendered PDF pages
    (``qwenvl.media.pdf``) and sampled video frames (``qwenvl.media.video``; a screen recording's frames are
    screenshots), as for images (``qwenvl.media.prepare``)."""
    if photo is None:
        photo = not looks_like_graphic(img)
    return (encode_photo(img), "image/jpeg") if photo else encode_graphic(img)


def likely_mime(info: ImageInfo | None = None) -> str:
    """The MIME type the encoding rule (``encode_image``) most likely gives when the pixels are not known: the
    estimate-only mode (``qwenvl tokens --fast``) decodes and renders nothing, so the photograph-or-graphic
    choice and ``encode_graphic``'s byte comparison cannot be made. Exact for a JPEG (a JPEG stays a JPEG). A
    rendered PDF page (``info`` None): image/jpeg, what ``encode_graphic`` gives a page of text at a model's
    budget (a full-chroma JPEG no larger than a quality-90 one); a nearly blank page may go as PNG (measured:
    11 of the first 12 pages of two manuals in /usr/share/doc went as JPEG). Another image: its own type when
    the service takes it as it is (``ImageInfo.accepted``), else PNG. The one home of the guess, beside the rule
    it guesses. Raises nothing."""
    if info is None:
        return "image/jpeg"
    if info.format in ("JPEG", "MPO"):
        return "image/jpeg"
    return info.mime if info.accepted else "image/png"


def image_reference(value: Any) -> str | None:
    """A ``data:`` URL for an image given as an object rather than a reference (the library's ``image=``):
    bytes (or a bytearray / memoryview) as they are, their type told by their content (``sniff``, else Pillow's
    ``identify``: MediaError when they are no image Pillow can read), or a PIL image: an RGB or grey one encoded
    by the encoding rule (``encode_image``), any other mode (transparency, a palette, 16 bits, CMYK) kept as a
    lossless PNG. None for any other value (left for the request's own check). The URL is then checked and
    prepared like any other (``qwenvl.media.prepare``)."""
    from qwenvl.media.sources import to_data_url

    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        mime = sniff(data) or identify(data, "the image bytes").mime
        return to_data_url(data, mime)
    if isinstance(value, Image.Image):
        img = _own_copy(value)
        if img.mode in ("RGB", "L"):
            data, mime = encode_image(img)
        else:  # transparency, a palette, 16 bits, CMYK: kept losslessly, then prepared like such a file
            buffer = io.BytesIO()
            (img if img.mode in _PNG_MODES else img.convert("RGBA")).save(buffer, "PNG")
            data, mime = buffer.getvalue(), "image/png"
        return to_data_url(data, mime)
    return None


_CALLERS_IMAGE = threading.Lock()  # held while a caller's PIL image is loaded and copied (``_own_copy``)


def _own_copy(value: Image.Image) -> Image.Image:
    """A private copy of a caller's PIL image, the only object ``image_reference`` encodes. The caller's image may
    be given to several requests at once (threads, ``asyncio.gather``): Pillow's ``save`` keeps its parameters on
    the object being saved (``encoderinfo``, ``encoderconfig``) and reads them back while it encodes, so two saves
    of one object at once mixed their parameters (other bytes, or a TypeError) and left one save's parameters on
    the caller's image, for every later save of it (the caller's own too). Nor is a lazy image's first ``load``
    safe from two threads: the load and copy are made one at a time. UsageError for a closed image."""
    with _CALLERS_IMAGE:
        try:
            value.load()  # a closed image: ValueError("Operation on closed image") from Pillow
        except ValueError as exc:
            raise UsageError(
                f"a PIL image given is closed ({exc}): its pixels are gone",
                hint="Pass the image while it is open (not after .close() or its `with` block), or give its file.",
            ) from None
        return value.copy()


_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})  # the modes Pillow writes as PNG


def encode_converted(img: Image.Image, *, photo: bool) -> tuple[bytes, str]:
    """(bytes, mime) of an image whose pixels had to be converted (transparency flattened, CMYK, 16-bit, a
    palette, a rotation) but that keeps its size: the encoding the rules above choose (``encode_photo`` when
    ``photo``, else ``encode_graphic``), or PNG when PNG is smaller. PNG is lossless, so it is never less
    faithful; e.g. a 1.5 kB PNG icon with transparency would otherwise go as a 6.7 kB JPEG. The PNG is encoded
    only when ``png_size_estimate`` says it may be smaller (within ``PNG_ESTIMATE_SLACK``)."""
    encoded, mime = (encode_photo(img), "image/jpeg") if photo else encode_graphic(img)
    if mime != "image/png" and png_size_estimate(img) <= PNG_ESTIMATE_SLACK * len(encoded):
        png = encode_png(img)
        if len(png) < len(encoded):
            return png, "image/png"
    return encoded, mime


def png_size_estimate(img: Image.Image) -> float:
    """The bytes a PNG of ``img`` would take, from a PNG of ``PNG_SAMPLE_BANDS`` evenly spaced full-width
    bands (1/``SAMPLE_FRACTION`` of the rows), scaled up. Within 10% of the real size on the corpus of
    bench/bench_image_prepare.py and tests/media_corpus.py; an image under 128 rows is encoded whole."""
    rows = img.height // (PNG_SAMPLE_BANDS * SAMPLE_FRACTION)
    if rows < 1:
        return float(len(encode_png(img)))
    sample = _bands(img, PNG_SAMPLE_BANDS, rows)
    return len(encode_png(sample)) * img.height / sample.height


def _bands(img: Image.Image, bands: int, rows: int) -> Image.Image:
    """``bands`` (at least 2) evenly spaced full-width bands of ``rows`` rows of ``img``, the first at its top and
    the last at its bottom, stacked into one image: the sample a size guess encodes."""
    sample = Image.new(img.mode, (img.width, bands * rows))
    for i in range(bands):
        top = (img.height - rows) * i // (bands - 1)
        sample.paste(img.crop((0, top, img.width, top + rows)), (0, i * rows))
    return sample


# --- internals ----------------------------------------------------------------------------------------------

_MEMFD = hasattr(os, "memfd_create")
_MCU_ROWS = 16  # a 4:2:0 JPEG's rows per MCU
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _cpu_count() -> int:
    try:
        return min(len(os.sched_getaffinity(0)), 4)
    except AttributeError:  # not on Linux
        return min(os.cpu_count() or 1, 4)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=_cpu_count(), thread_name_prefix="qwenvl-resize")
        return _POOL


# Formats a downscaled copy can keep (anything else, e.g. TIFF or HEIC, is written as JPEG)
_KEEPS_FORMAT = (".jpg", ".jpeg", ".png", ".webp")


def convert_command(label: str, action: str = "-resize 50%") -> str:
    """The ImageMagick command (in backticks) that makes a copy of the user's own image ``label`` (a file as
    given; a data: URL or another label gets ``in.jpg``), ``action`` applied, beside it: ``magick scan.tif
    -resize 50% scan-small.jpg``. The one home of the command every "downscale/convert it first" hint shows.
    Raises nothing."""
    named = label and not label.startswith(("data:", "data URL", "http:", "https:", "oss:", "<"))
    path = Path(label) if named else Path("in.jpg")
    suffix = path.suffix.lower() if path.suffix.lower() in _KEEPS_FORMAT else ".jpg"
    out = path.with_name(f"{path.stem}-small{suffix}" if action else f"{path.stem}{suffix}")
    words = ["magick", shlex.quote(str(path)), *action.split(), shlex.quote(str(out))]
    return f"`{' '.join(words)}`"


def downscale_hint(label: str) -> str:
    """ "Downscale it first (e.g. `magick photo.jpg -resize 50% photo-small.jpg`), or send a smaller file.", in the
    user's own file name and format (``convert_command``). Raises nothing."""
    return f"Downscale it first (e.g. {convert_command(label)}), or send a smaller file."


def _check_pixels(width: int, height: int, label: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise _bomb_error(label, f"{width}x{height} ({width * height / 1e6:,.0f} MP)")


def _bomb_error(label: str, declared: str) -> MediaError:
    return MediaError(
        f"{label} declares {declared}, over the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit (decompression-bomb "
        "guard); it was not decoded",
        source=label,
        hint=f"If the image is genuine, downscale it first (e.g. {convert_command(label)}); the service would shrink "
        "it to at most 16384 tokens anyway.",
    )


def _png_size(data: bytes) -> Size | None:
    """(width, height) from a PNG's IHDR, for messages about images Pillow refuses to open."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


def _orientation(img: Image.Image, data: bytes) -> int:
    try:
        if img.format == "PNG" and "exif" not in img.info and not _png_metadata_after_pixels(data):
            # Pillow's PNG getexif decodes the whole image to look for an eXIf chunk after the pixel data;
            # when the chunk list has none there, what was read at open is all there is.
            exif = Image.Image.getexif(img)
        else:
            exif = img.getexif()
        value = exif.get(_EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block is ignored, as every viewer does
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


_PNG_METADATA_CHUNKS = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt"})


def _png_metadata_after_pixels(data: bytes) -> bool:
    """Whether a PNG has an EXIF or text chunk after its first IDAT (walks the chunk headers only)."""
    pos, seen_idat = 8, False
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IEND":
            return False
        if kind == b"IDAT":
            seen_idat = True
        elif seen_idat and kind in _PNG_METADATA_CHUNKS:
            return True
        pos += 12 + length
    return False


def _refuse_known_non_images(data: bytes, label: str) -> None:
    brands = ftyp_brands(data)
    if brands & HEIF_BRANDS and not brands & AVIF_BRANDS:
        raise MediaError(
            f"{label} is a HEIC/HEIF image, which qwenvl cannot read (Pillow needs the pillow-heif plug-in)",
            source=label,
            hint=f"Convert it to JPEG first, e.g. {convert_command(label, '')} (or `heif-convert`, or `sips -s format "
            "jpeg` on macOS); or set the camera to 'Most Compatible'.",
        )
    kind = sniff(data)
    if kind == "image/svg+xml":
        raise MediaError(
            f"{label} is an SVG drawing; the service takes raster images only",
            source=label,
            hint="Render it to PNG first, e.g. `rsvg-convert -w 1600 in.svg -o out.png` or "
            "`magick -density 200 in.svg out.png`.",
        )


def _not_an_image(data: bytes, label: str) -> MediaError:
    kind = sniff(data)
    hint = f"Supported images: {_FORMAT_LIST} (and any other still format Pillow reads, converted)."
    if kind == "application/pdf":
        return MediaError(
            f"{label} is a PDF document, not an image",
            source=label,
            hint="Give it where a document is read (a file, or a URL ending in .pdf with --fetch-urls, to ask, "
            "extract or ocr: its pages are rendered to images), or export the pages you mean as images.",
        )
    if kind and kind.startswith("video/"):
        return MediaError(
            f"{label} is a video ({kind}), not an image",
            source=label,
            hint='Give it as the video, not as an image (in a request: "video").',
        )
    if data[:3] == b"\xff\xd8\xff":
        return MediaError(
            f"{label} starts like a JPEG but its header is damaged or cut short",
            source=label,
            hint=DAMAGED_HINT,
        )
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return MediaError(
            f"{label} starts like a WebP but is damaged or cut short",
            source=label,
            hint=DAMAGED_HINT,
        )
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return MediaError(
            f"{label} starts like a PNG but its header is damaged or cut short",
            source=label,
            hint=DAMAGED_HINT,
        )
    if kind == "text/xml" or _is_text(data):
        return MediaError(
            f"{label} is a text file, not an image (whatever its name says)",
            source=label,
            hint=hint,
            not_an_image="text",
        )
    return MediaError(
        f"{label} is not an image qwenvl can read (unknown format)", source=label, hint=hint, not_an_image="unknown"
    )


def _is_text(data: bytes) -> bool:
    head = data[:4096]
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # only a multi-byte character cut at the end
    return True


def _corrupt(label: str, info: ImageInfo, exc: BaseException) -> MediaError:
    detail = str(exc).strip() or type(exc).__name__
    return MediaError(
        f"{label} is a {info.format} whose image data is truncated or corrupt ({detail})",
        source=label,
        hint=DAMAGED_HINT,
    )


def _decode_stored(data: bytes, info: ImageInfo, label: str) -> Image.Image:
    """The pixels as stored (no orientation applied), decoded at full scale by Pillow.

    Not simplejpeg, though it decodes a 12 MP JPEG in 12-27% less CPU with the same pixels: its array is one
    allocation of the whole image, which glibc maps and unmaps each time (36 MB for 12 MP, over malloc's largest
    mmap threshold) where Pillow's blocks are reused, and the page faults took the gain back (measured against the
    code before, interleaved: 6 ms slower on the 12 MP photo of bench/bench_image_prepare.py, 2-7 ms faster with
    malloc's defaults)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise _corrupt(label, info, exc) from None
    return img


def _to_8bit(img: Image.Image, notes: list[str]) -> tuple[Image.Image, bool]:
    """RGB, RGBA, L or LA, 8 bits per channel. Returns the image and whether a naive reader would get
    different pixels from the original (so the original must not be sent as it is)."""
    mode = img.mode
    if mode in ("RGB", "L") and "transparency" in img.info:  # one colour marked transparent (PNG tRNS)
        return img.convert(mode + "A" if mode == "L" else "RGBA"), False
    if mode in ("RGB", "RGBA", "L", "LA"):
        return img, False
    if mode == "1":
        return img.convert("L"), False
    if mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB"), False
    if mode in ("PA", "RGBa", "La"):
        return img.convert("LA" if mode == "La" else "RGBA"), False
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
        return _cmyk_to_rgb(img), True
    if mode.startswith("I") or mode == "F":
        notes.append(f"{_bits(mode)}-bit image scaled to 8 bits")
        return _high_depth_to_l(img), True
    notes.append(f"{mode} converted to RGB")
    return img.convert("RGB"), True


def _bits(mode: str) -> str:
    return "16" if mode.startswith("I;16") else "32"


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    import numpy as np

    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (arr.dtype.kind in "iu" and arr.min() >= 0 and arr.max() <= 0xFFFF):
        out = (arr.astype(np.uint32) >> 8).astype(np.uint8)
    else:  # 32-bit integer or float samples: stretch the range that is used
        values = arr.astype(np.float64)
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        out = np.nan_to_num((values - lo) * scale).clip(0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms
        except ImportError:  # Pillow built without littlecms
            return img.convert("RGB")
        try:
            converted = ImageCms.profileToProfile(
                img, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return img.convert("RGB")


def _flatten(img: Image.Image, notes: list[str]) -> tuple[Image.Image, bool]:
    """Transparency onto white. An alpha channel that is fully opaque is dropped without a note."""
    if img.mode not in ("RGBA", "LA"):
        return img, False
    base = img.mode[0] if img.mode == "LA" else "RGB"
    alpha = img.getchannel("A")
    if alpha.getextrema()[0] == 255:
        return img.convert(base), False
    white = Image.new(base, img.size, 255 if base == "L" else (255, 255, 255))
    white.paste(img.convert(base), mask=alpha)
    notes.append("transparency flattened onto white")
    return white, True
