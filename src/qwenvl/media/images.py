"""Images: identify by content with Pillow; (the media issue adds checks, resizing and re-encoding here)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from qwenvl.errors import MediaError
from qwenvl.media.sources import sniff

# Formats the service documents (seed doc 002: BMP, DIB, ICNS, ICO, JPEG, JPEG2000, PNG, SGI, TIFF, WEBP).
SERVICE_FORMATS = frozenset({"BMP", "DIB", "ICNS", "ICO", "JPEG", "JPEG2000", "PNG", "SGI", "TIFF", "WEBP"})


@dataclass(frozen=True)
class ImageInfo:
    format: str  # Pillow's name, e.g. "JPEG"
    mime: str
    width: int
    height: int


def identify(data: bytes, label: str) -> ImageInfo:
    """What image ``data`` holds, from its header only (fast); MediaError when it is not an image."""
    if not data:
        raise MediaError(f"{label} is empty (0 bytes)", source=label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        kind = sniff(data)
        what = f"a {kind} file" if kind else "not an image Pillow can read"
        raise MediaError(f"{label} is {what}", source=label,
                         hint="Supported images: " + ", ".join(sorted(SERVICE_FORMATS))) from exc
    Image.init()
    mime = Image.MIME.get(fmt, "application/octet-stream")
    return ImageInfo(fmt, mime, width, height)
