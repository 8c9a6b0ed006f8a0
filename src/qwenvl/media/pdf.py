"""PDF documents: rendered page by page (pypdfium2) into images at the model's pixel budget.

Qwen-VL models cannot read PDF files, so a PDF given where an image is expected becomes one image per page
(``qwenvl.media.prepare.expand_documents``). Decisions:

* **Resolution.** A page of ``w`` x ``h`` points at scale ``s = sqrt(max_pixels / (w * h))`` fills the image
  budget exactly; ``smart_resize`` of that size gives the size the model sees. The page is rendered at the
  smallest scale that covers this size in both directions and resized down to it (at most a pixel or two),
  so the service never resizes it again and the token estimate is exact. Small pages are rendered larger,
  large pages smaller: either way each page uses the whole per-image budget (``image_budget``: detail,
  ``vl_high_resolution_images``, the part's and the request's min/max_pixels).
* **Encoding.** The images' rule (``images.encode_image``), the rendered page being the exact pixels: a page
  that looks like a graphic (text, line art, charts) goes lossless or visually lossless, as PNG or full-chroma
  JPEG, when possible no larger and no less faithful than a plain quality-90 JPEG of the page
  (``images.encode_graphic``); a scan or photograph as JPEG at least as faithful as that plain quality-90 JPEG
  and no larger (``images.encode_photo``). Each page then goes through ``qwenvl.media.prepare.prepare_image`` like any
  image, which passes it through from its header, or brings a page over ``MAX_IMAGE_BYTES`` under it.
* **Pages.** ``pages="1-3,5"`` (1-based; ``7-`` means 7 to the end) selects pages, in the order given.
  A page outside the document is an error that names the page count. The selected pages together must fit
  the model's context window; otherwise the error suggests a page range.
* **Passwords.** A PDF that needs a password to open is refused (qwenvl never asks for one). A PDF
  encrypted only with an owner password (printing/copying restrictions) opens and renders as usual.
* **Threads.** PDFium is not thread-safe: no two of its calls may run at once, even on different documents
  (pypdfium2's documentation, "Thread incompatibility"). Every PDFium call here holds ``_PDFIUM`` (a batch's
  workers, the async client's threads); a page's resize and encoding run outside it, so only the rendering is
  one at a time.
"""

from __future__ import annotations

import base64
import contextlib
import math
import mmap
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image

from qwenvl.errors import MediaError, UsageError
from qwenvl.media import images
from qwenvl.media.resize import smart_resize
from qwenvl.media.sources import DAMAGED_HINT
from qwenvl.media.tokens import image_tokens
from qwenvl.models import MAX_ASPECT_RATIO
from qwenvl.sizes import HeightWidth

PDF_MIME = "application/pdf"
_PASSWORD_ERROR = 4  # FPDF_ERR_PASSWORD
_PDFIUM = threading.RLock()  # held around every PDFium call (see "Threads")
_SHARED_MODES = frozenset({"RGBA", "RGBX", "L"})  # pypdfium2's to_pil shares the bitmap's buffer in these
_RANGE = re.compile(r"^\s*(\d+)\s*(?:(-)\s*(\d+)?\s*)?$")


@dataclass(frozen=True)
class RenderedPage:
    number: int  # 1-based page number in the document
    width: int  # as rendered and sent
    height: int
    mime: str
    data: bytes

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    def tokens(self, factor: int) -> int:
        return image_tokens(self.height, self.width, factor)


def check_page_spec(spec: str) -> list[tuple[int, int | None]]:
    """The ranges of a ``--pages`` spec (``"1-3,5,7-"``: ``[(1, 3), (5, 5), (7, None)]``, None: to the last
    page), checked without the document (the CLI checks ``--pages`` while parsing). UsageError for bad syntax,
    a page 0, or a range written high to low (``3-1``: the message says how to write it)."""
    ranges: list[tuple[int, int | None]] = []
    for chunk in spec.split(","):
        match = _RANGE.match(chunk)
        if not match:
            raise UsageError(
                f"bad page range {spec!r}: use page numbers and ranges such as 1-3,5 or 7-",
                hint="For example --pages 1-3,5 or --pages 7-.",
            )
        first = int(match.group(1))
        last = (int(match.group(3)) if match.group(3) else None) if match.group(2) else first
        if first < 1 or last == 0:
            raise UsageError(
                f"page range {chunk.strip()!r} in {spec!r} has page 0: pages count from 1",
                hint="For example --pages 1-3,5 or --pages 7-.",
            )
        if last is not None and last < first:
            raise UsageError(
                f"page range {chunk.strip()!r} is reversed: ranges go from low to high",
                hint=f"Write it as {last}-{first} (the pages are sent in the order the ranges are given).",
            )
        ranges.append((first, last))
    return ranges


def parse_pages(spec: str | None, count: int, label: str = "the PDF", option: str = "--pages") -> list[int]:
    """1-based page numbers from a range such as ``"1-3,5"`` or ``"7-"``, in the order given, without
    repeats. None or an empty string means every page. UsageError for bad syntax, MediaError (with the page
    count) for a page the document does not have, naming ``option`` as the user gave it (``--pages``; ground's
    ``--page``, MCP's ``page``: ``check_page``)."""
    if spec is None or not spec.strip():
        return list(range(1, count + 1))
    pages: list[int] = []
    for first, last in check_page_spec(spec):
        last = count if last is None else last
        if max(first, last) > count:  # "7-" of a 5-page document: page 7
            raise MediaError(
                f"{label} has {count} page{'s' if count != 1 else ''}; page {max(first, last)} "
                f"(from {option} {spec.strip()}) is out of range",
                source=label,
                hint=f"Choose pages from 1 to {count}.",
            )
        pages.extend(p for p in range(first, last + 1) if p not in pages)
    return pages


PDF_TAIL_BYTES = 1 << 20  # the end of a PDF searched for its trailer (``looks_like_pdf``)


def looks_like_pdf(src: bytes | str | Path) -> bool:
    """Whether content that starts like a PDF holds what every PDF does, found cheaply: ``startxref`` or
    ``%%EOF`` in its last ``PDF_TAIL_BYTES`` (the trailer a reader looks for first), else ``endobj`` anywhere
    (an object: from those pdfium rebuilds a damaged cross-reference table, as it does for a PDF followed by
    garbage). A file is searched memory-mapped, at memory speed (0.2 s for 300 MB), where pdfium's own rebuild
    of a file that is no PDF at all scans it for seconds (9-15 s for 1 GB). Raises nothing (a file that cannot
    be read: True, for pdfium to say why)."""
    if isinstance(src, bytes):
        tail = src[-PDF_TAIL_BYTES:]
        return b"startxref" in tail or b"%%EOF" in tail or b"endobj" in src
    try:
        with open(src, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start = max(0, len(data) - PDF_TAIL_BYTES)
            return data.find(b"startxref", start) >= 0 or data.find(b"%%EOF", start) >= 0 or data.find(b"endobj") >= 0
    except (OSError, ValueError):  # unreadable, empty (nothing to map): pdfium says what is wrong
        return True


def _reset_last_error() -> None:
    """Set PDFium's last error (a global it sets only on some failures) to a format error, so that a load that
    fails without setting it (a page tree with no pages) is not read as the error of an earlier file (an
    encrypted one: "needs a password"). Loading four bytes that are no PDF costs microseconds."""
    with contextlib.suppress(pdfium.PdfiumError):
        pdfium.PdfDocument(b"%PDF").close()


def open_pdf(src: bytes | str | Path, label: str) -> pdfium.PdfDocument:
    """Open a PDF; MediaError naming the file when it is encrypted, damaged, no PDF at all though it starts like
    one (``looks_like_pdf``: refused at once, not after pdfium has scanned it) or has no pages."""
    if not looks_like_pdf(src):
        raise MediaError(
            f"{label} is not a readable PDF: it starts like one, but has no trailer and no object (cut short or "
            "damaged)",
            source=label,
            hint=DAMAGED_HINT,
        )
    try:
        with _PDFIUM:
            _reset_last_error()
            doc = pdfium.PdfDocument(src if isinstance(src, bytes) else str(src))
            pages = len(doc)
            if pages == 0:
                doc.close()
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == _PASSWORD_ERROR:
            raise MediaError(
                f"{label} is encrypted: it needs a password to open",
                source=label,
                hint="Remove the password first (e.g. `qpdf --decrypt --password=... in.pdf "
                "out.pdf`); qwenvl does not take PDF passwords.",
            ) from None
        reason = str(exc).split("(PDFium: ", 1)[-1].rstrip(".)") or "PDFium cannot read it"
        raise MediaError(
            f"{label} is not a readable PDF: it starts like one but is cut short or damaged ({reason})",
            source=label,
            hint=DAMAGED_HINT,
        ) from None
    if pages == 0:
        raise MediaError(f"{label} has no pages", source=label, hint="Check the PDF: it may be empty or damaged.")
    return doc


@contextlib.contextmanager
def _document(src: bytes | str | Path, label: str | None) -> Iterator[tuple[pdfium.PdfDocument, str]]:
    """``(document, label)`` of ``open_pdf``, closed (holding ``_PDFIUM``) when the block ends."""
    name = label or (f"PDF ({len(src)} bytes)" if isinstance(src, bytes) else str(src))
    doc = open_pdf(src, name)
    try:
        yield doc, name
    finally:
        with _PDFIUM:
            doc.close()


def check_page(src: bytes | str | Path, page: int, label: str, option: str) -> None:
    """One page (``ground``'s ``--page``, the MCP ground tool's ``page``) checked against the document before
    anything is planned: MediaError naming ``option`` for a page it does not have (``parse_pages``)."""
    parse_pages(str(page), page_count(src, label), label, option)


def page_count(src: bytes | str | Path, label: str | None = None) -> int:
    with _document(src, label) as (doc, _), _PDFIUM:
        return len(doc)


def page_size(
    width_pt: float,
    height_pt: float,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    label: str = "the PDF",
    number: int = 1,
) -> HeightWidth:
    """(height, width) in pixels a page is rendered and sent at: the page scaled to fill ``max_pixels``,
    then ``smart_resize`` (so the service keeps it as it is)."""
    if width_pt <= 0 or height_pt <= 0:
        raise MediaError(
            f"{label}: page {number} has no area ({width_pt}x{height_pt} pt)",
            source=label,
            hint="Choose other pages with --pages.",
        )
    ratio = max(width_pt, height_pt) / min(width_pt, height_pt)
    if ratio > MAX_ASPECT_RATIO:  # no pixel budget changes a page's shape
        raise MediaError(
            f"{label}: page {number} ({width_pt:.0f}x{height_pt:.0f} pt) is {ratio:.0f}:1, over the "
            f"{MAX_ASPECT_RATIO}:1 the service allows",
            source=label,
            hint="Leave the page out (--pages picks the others), or crop it: no pixel budget changes its shape.",
        )
    scale = math.sqrt(max_pixels / (width_pt * height_pt))
    height = max(1, math.floor(height_pt * scale))
    width = max(1, math.floor(width_pt * scale))
    try:
        h_bar, w_bar = smart_resize(height, width, factor, min_pixels, max_pixels)
    except ValueError as exc:
        raise MediaError(
            f"{label}: page {number} ({width_pt:.0f}x{height_pt:.0f} pt): {exc}",
            source=label,
            hint="Raise --max-pixels, or choose other pages with --pages.",
        ) from None
    if not (h_bar and w_bar):
        raise MediaError(
            f"{label}: page {number} ({width_pt:.0f}x{height_pt:.0f} pt) is too narrow for the pixel budget",
            source=label,
            hint="Raise --max-pixels, or choose other pages with --pages.",
        )
    return h_bar, w_bar


def render_pdf(
    src: bytes | str | Path,
    *,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    pages: str | None = None,
    context_tokens: int | None = None,
    label: str | None = None,
) -> list[RenderedPage]:
    """Render the selected pages of a PDF, each to the size the model sees under the pixel budget."""
    with _document(src, label) as (doc, name):
        with _PDFIUM:
            sizes = _page_sizes(
                doc,
                factor=factor,
                min_pixels=min_pixels,
                max_pixels=max_pixels,
                pages=pages,
                context_tokens=context_tokens,
                label=name,
            )
            doc.init_forms()
        return [_render_page(doc, n, h, w, name) for n, (h, w) in sizes.items()]


def page_sizes(
    src: bytes | str | Path,
    *,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    pages: str | None = None,
    context_tokens: int | None = None,
    label: str | None = None,
) -> dict[int, HeightWidth]:
    """{page number: (height, width)} each selected page would be rendered and sent at by ``render_pdf``,
    from the page sizes alone (nothing is rendered); the same checks and errors as ``render_pdf``."""
    with _document(src, label) as (doc, name), _PDFIUM:
        return _page_sizes(
            doc,
            factor=factor,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            pages=pages,
            context_tokens=context_tokens,
            label=name,
        )


def _page_sizes(
    doc: pdfium.PdfDocument,
    *,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    pages: str | None,
    context_tokens: int | None,
    label: str,
) -> dict[int, HeightWidth]:
    """The selected pages (in the order given) and their sizes as sent; MediaError over the context window."""
    numbers = parse_pages(pages, len(doc), label)
    sizes = {}
    for n in numbers:
        width_pt, height_pt = doc.get_page_size(n - 1)[:2]
        sizes[n] = page_size(width_pt, height_pt, factor, min_pixels, max_pixels, label, n)
    if context_tokens is not None:
        total = sum(image_tokens(h, w, factor) for h, w in sizes.values())
        if total > context_tokens:
            raise MediaError(
                f"{label}: {len(numbers)} pages at this budget are about {total} tokens, over the model's "
                f"context of {context_tokens}",
                source=label,
                hint="Choose fewer pages (--pages 1-10) or a smaller budget (--detail low, --max-pixels).",
            )
    return sizes


def _render_page(doc: pdfium.PdfDocument, number: int, height: int, width: int, label: str) -> RenderedPage:
    with _PDFIUM:  # rendered one page at a time in the process; resized and encoded outside
        page = doc[number - 1]
        try:
            width_pt, height_pt = page.get_size()
            scale = max(width / width_pt, height / height_pt)
            try:
                bitmap = page.render(scale=scale, may_draw_forms=True)
            except pdfium.PdfiumError as exc:
                raise MediaError(
                    f"{label}: page {number} does not render ({exc})",
                    source=label,
                    hint="Choose other pages with --pages, or export the PDF again.",
                ) from None
            try:
                img = bitmap.to_pil()
                if bitmap.mode in _SHARED_MODES:  # the image shares PDFium's buffer: copied before it is freed
                    img = img.copy()
            finally:
                bitmap.close()
        finally:
            page.close()
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    mime, data = _encode(img)
    return RenderedPage(number, width, height, mime, data)


def _encode(img: Image.Image) -> tuple[str, bytes]:
    """(mime, bytes) of a rendered page by the images' rule (``images.encode_image``)."""
    data, mime = images.encode_image(img)
    return mime, data
