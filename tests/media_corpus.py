"""Builders for the image test corpus: good and bad inputs made on the fly (nothing is checked in).

Every builder writes one file into ``directory`` and returns its path. They are cheap: the 60 MB PNG is a
valid PNG padded with a private ancillary chunk, and the 100000x100000 PNG is a hand-made header.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def photo_array(width: int, height: int, seed: int = 1) -> np.ndarray:
    """Gradients plus noise: compresses like a photograph (thousands of colours)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width, 1) * 255, y / max(height, 1) * 255, (x + y) / (width + height) * 255], -1)
    return (base + rng.normal(0, 10, base.shape)).clip(0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _photo_jpeg_bytes(size: tuple[int, int], quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo_array(*size)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def photo_jpeg(
    directory: Path, name: str = "photo.jpg", size: tuple[int, int] = (4000, 3000), quality: int = 92
) -> Path:
    """A photograph-like JPEG (made once per size and quality in a test run)."""
    path = directory / name
    path.write_bytes(_photo_jpeg_bytes(size, quality))
    return path


def photo_png(directory: Path, name: str = "photo.png", size: tuple[int, int] = (800, 600)) -> Path:
    path = directory / name
    Image.fromarray(photo_array(*size)).save(path, "PNG")
    return path


def screenshot_png(directory: Path, name: str = "screenshot.png", size: tuple[int, int] = (1200, 800)) -> Path:
    """White page, black text-like bars, one coloured header: a few colours dominate."""
    img = Image.new("RGB", size, (255, 255, 255))
    px = np.asarray(img).copy()
    px[:60, :] = (30, 80, 160)
    for row in range(100, size[1] - 40, 24):
        px[row : row + 10, 40 : size[0] - 200 : 3] = 0
    path = directory / name
    Image.fromarray(px).save(path, "PNG")
    return path


def document_png(directory: Path, name: str = "document.png", size: tuple[int, int] = (1920, 1080)) -> Path:
    """A document window: title bar, side panel, anti-aliased text in three sizes, a coloured table header and
    bars. Unlike ``screenshot_png`` its PNG is larger than a quality-90 JPEG once resized, like a real one."""
    from PIL import ImageDraw, ImageFont

    rng = np.random.default_rng(7)
    width, height = size
    img = Image.new("RGB", size, "#f3f3f3")
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, width, 45), fill="#2b579a")
    draw.text((20, 10), "Quarterly report - Document1.docx", font=ImageFont.load_default(size=20), fill="white")
    draw.rectangle((0, 45, 280, height), fill="#e1e1e1")
    small, body, heading = (ImageFont.load_default(size=s) for s in (11, 15, 26))
    for i in range(40):
        draw.text((15, 60 + 24 * i), f"Section {i + 1}: item {rng.integers(100, 999)}", font=small, fill="#333")
    draw.rectangle((350, 75, width - 70, height - 30), fill="white", outline="#c8c8c8", width=2)
    words = [
        "revenue",
        "growth",
        "margin",
        "the",
        "of",
        "quarter",
        "customers",
        "increased",
        "and",
        "region",
        "compared",
        "with",
        "costs",
        "net",
    ]
    draw.text((400, 110), "Results for the third quarter", font=heading, fill="#1f1f1f")
    for line in range(30):
        text = " ".join(str(rng.choice(words)) for _ in range(int(rng.integers(14, 22))))
        draw.text((400, 165 + 23 * line), text.capitalize() + ".", font=body, fill="#202020")
    for i in range(12):
        h = int(rng.integers(40, 260))
        draw.rectangle((1300 + i * 45, 1000 - h, 1330 + i * 45, 1000), fill=("#4472c4", "#ed7d31")[i % 2])
    path = directory / name
    img.save(path, "PNG")
    return path


def truncated_jpeg(directory: Path) -> Path:
    data = (photo_jpeg(directory, "whole.jpg", (800, 600))).read_bytes()
    path = directory / "truncated.jpg"
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def zero_bytes(directory: Path) -> Path:
    path = directory / "empty.jpg"
    path.write_bytes(b"")
    return path


def text_named_png(directory: Path) -> Path:
    path = directory / "notes.png"
    path.write_text("These are my notes, not a picture.\nSecond line.\n")
    return path


def svg(directory: Path) -> Path:
    path = directory / "drawing.svg"
    path.write_text(
        '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
        '<circle cx="50" cy="50" r="40" fill="red"/></svg>\n'
    )
    return path


def tiny_png(directory: Path) -> Path:
    path = directory / "tiny.png"
    Image.new("RGB", (5, 5), RED).save(path)
    return path


def thin_png(directory: Path) -> Path:
    path = directory / "thin.png"
    Image.new("RGB", (3000, 10), BLUE).save(path)
    return path


def huge_file_png(directory: Path, megabytes: int = 60) -> Path:
    """A valid 1024x768 PNG made 60 MB on disk by a private ancillary chunk (which decoders skip)."""
    buf = io.BytesIO()
    Image.fromarray(photo_array(1024, 768)).save(buf, "PNG", compress_level=1)
    data = buf.getvalue()
    iend = data.rindex(b"IEND") - 4
    padding = png_chunk(b"qvPd", b"\0" * (megabytes * 1_000_000 - len(data)))
    path = directory / "huge-file.png"
    path.write_bytes(data[:iend] + padding + data[iend:])
    return path


def bomb_png(directory: Path, side: int = 100_000) -> Path:
    """A PNG that declares side x side pixels: only a header, a token IDAT and IEND (a few bytes)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )
    path = directory / "bomb.png"
    path.write_bytes(data)
    return path


def animated_gif(directory: Path) -> Path:
    frames = [Image.new("RGB", (64, 64), colour) for colour in (RED, BLUE, (0, 255, 0))]
    path = directory / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def static_gif(directory: Path) -> Path:
    path = directory / "still.gif"
    Image.new("RGB", (64, 48), RED).save(path)
    return path


def cmyk_jpeg(directory: Path) -> Path:
    """Pure cyan in CMYK: upright RGB should be close to (0, 255, 255)."""
    path = directory / "cmyk.jpg"
    Image.new("CMYK", (200, 100), (255, 0, 0, 0)).save(path, "JPEG", quality=95)
    return path


def png16(directory: Path) -> Path:
    """16-bit greyscale with a left-to-right ramp 0..65535 (Pillow's own conversion would clip to white)."""
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    path = directory / "deep.png"
    Image.fromarray(ramp).save(path)
    return path


def exif_rotated_jpeg(directory: Path, orientation: int = 6) -> Path:
    """Stored 400x200 (landscape) with a red top-left corner; EXIF orientation 6 = rotate 90° clockwise to
    view, so upright it is 200x400 with the red corner at the top right."""
    px = np.full((200, 400, 3), 255, np.uint8)
    px[:50, :50] = RED
    img = Image.fromarray(px)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = directory / "rotated.jpg"
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def palette_png(directory: Path, *, transparent: bool = False) -> Path:
    img = Image.new("P", (120, 80), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    img.paste(1, (60, 0, 120, 80))
    path = directory / ("palette-transparent.png" if transparent else "palette.png")
    if transparent:
        img.save(path, transparency=0)  # the red half is transparent
    else:
        img.save(path)
    return path


def rgba_png(directory: Path, *, opaque: bool = False) -> Path:
    """Left half transparent black (must come out white), right half opaque blue."""
    px = np.zeros((80, 120, 4), np.uint8)
    px[:, 60:] = (*BLUE, 255)
    if opaque:
        px[:, :, 3] = 255
    path = directory / ("rgba-opaque.png" if opaque else "rgba.png")
    Image.fromarray(px, "RGBA").save(path)
    return path


def la_png(directory: Path) -> Path:
    px = np.zeros((80, 120, 2), np.uint8)
    px[:, 60:] = (40, 255)
    path = directory / "la.png"
    Image.fromarray(px, "LA").save(path)
    return path


def heic(directory: Path) -> Path:
    """The start of a HEIC file (ftyp box, brand heic): enough to be recognised."""
    ftyp = struct.pack(">I", 24) + b"ftyp" + b"heic" + struct.pack(">I", 0) + b"mif1heic"
    path = directory / "IMG_0001.HEIC"
    path.write_bytes(ftyp + b"\0" * 200)
    return path


def pdf_named_jpg(directory: Path) -> Path:
    path = directory / "scan.jpg"
    path.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n")
    return path


def rgb_trns_png(directory: Path) -> Path:
    """An RGB PNG whose black is marked transparent (tRNS chunk): left half black, right half blue."""
    img = Image.new("RGB", (120, 80), (0, 0, 0))
    img.paste(BLUE, (60, 0, 120, 80))
    path = directory / "rgb-trns.png"
    img.save(path, transparency=(0, 0, 0))
    return path


# --- fidelity yardsticks (the rule in qwenvl.media.images, "Encoding") ------------------------------------------


def psnr(a: Image.Image, b: Image.Image) -> float:
    """PSNR in dB of ``a`` against ``b`` (RGB, 8 bits); identical images score 120."""
    diff = np.asarray(a.convert("RGB"), np.float64) - np.asarray(b.convert("RGB"), np.float64)
    return float(10 * np.log10(255**2 / max(float(np.mean(diff * diff)), 1e-12)))


def plain_q90(img: Image.Image) -> bytes:
    """What qwen-vl-utils sends for these pixels: Pillow's JPEG at quality 90, standard tables, 4:2:0."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def full_chroma(img: Image.Image) -> bool:
    """Whether a decoded-from-file JPEG keeps every chroma sample (4:4:4: each component sampled alike)."""
    return img.format == "JPEG" and img.layer[0][1:3] == img.layer[1][1:3]
