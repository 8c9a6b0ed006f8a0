"""PDF documents: pages rendered to the image budget, page ranges, encrypted and damaged files, the seam.

PDFs are written by hand in the test (including an RC4 password-encrypted one), so nothing is downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from PIL import Image

import media_corpus as corpus
from qwenvl.errors import MediaError, UsageError
from qwenvl.media import MediaOptions, images, prepare_messages
from qwenvl.media.pdf import RenderedPage, page_count, page_size, parse_pages, render_pdf
from qwenvl.media.prepare import expand_documents
from qwenvl.media.resize import image_budget, smart_resize
from qwenvl.media.sources import decode_data_url, to_data_url
from qwenvl.models import model_info
from qwenvl.plan import media_options
from qwenvl.types import ImagePart, Message, Request, TextPart

PLUS = model_info("qwen3-vl-plus")
QWEN25 = model_info("qwen2.5-vl-7b-instruct")
A4 = (595.0, 842.0)
RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 0.6, 0.0), (0.0, 0.0, 1.0)

# --- a small PDF writer, with the standard security handler (RC4, revision 2) -----------------------------------

_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")
_FILE_ID = bytes(range(16))


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def _padded(password: str) -> bytes:
    return (password.encode("latin-1") + _PAD)[:32]


def make_pdf(
    pages: list[tuple[float, float, tuple[float, float, float]]],
    *,
    user_password: str | None = None,
    owner_password: str = "owner",
) -> bytes:
    """A PDF with one page per (width, height, fill colour), each filled with its colour and titled "Page N".
    With ``user_password`` (may be ""), it is encrypted with RC4-40 (standard security handler, R2)."""
    permissions = -4
    encrypt_key = None
    encrypt_dict = b""
    if user_password is not None:
        owner_key = hashlib.md5(_padded(owner_password)).digest()[:5]
        o_value = _rc4(owner_key, _padded(user_password))
        encrypt_key = hashlib.md5(
            _padded(user_password) + o_value + struct.pack("<i", permissions) + _FILE_ID
        ).digest()[:5]
        u_value = _rc4(encrypt_key, _PAD)
        encrypt_dict = (
            b"<< /Filter /Standard /V 1 /R 2 /O <"
            + o_value.hex().encode()
            + b"> /U <"
            + u_value.hex().encode()
            + b"> /P "
            + str(permissions).encode()
            + b" >>"
        )

    objects: dict[int, bytes] = {}
    font = 3
    objects[font] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    kids = []
    for n, (width, height, (r, g, b)) in enumerate(pages, start=1):
        page_obj, content_obj = 2 + 2 * n, 3 + 2 * n
        kids.append(page_obj)
        content = (
            f"{r} {g} {b} rg 0 0 {width} {height} re f 0 g BT /F1 24 Tf 36 {height - 60} Td (Page {n}) Tj ET"
        ).encode()
        if encrypt_key is not None:
            object_key = hashlib.md5(encrypt_key + content_obj.to_bytes(3, "little") + b"\x00\x00").digest()[:10]
            content = _rc4(object_key, content)
        objects[content_obj] = b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n" + content + b"\nendstream"
        objects[page_obj] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] "
            f"/Resources << /Font << /F1 {font} 0 R >> >> /Contents {content_obj} 0 R >>"
        ).encode()
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[2] = (f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>").encode()
    encrypt_obj = None
    if encrypt_dict:
        encrypt_obj = max(objects) + 1
        objects[encrypt_obj] = encrypt_dict

    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for num in sorted(objects):
        offsets[num] = out.tell()
        out.write(f"{num} 0 obj\n".encode() + objects[num] + b"\nendobj\n")
    xref = out.tell()
    size = max(objects) + 1
    out.write(f"xref\n0 {size}\n0000000000 65535 f \n".encode())
    for num in range(1, size):
        out.write(f"{offsets[num]:010d} 00000 n \n".encode() if num in offsets else b"0000000000 65535 f \n")
    trailer = f"<< /Size {size} /Root 1 0 R /ID [<{_FILE_ID.hex()}> <{_FILE_ID.hex()}>]"
    if encrypt_obj:
        trailer += f" /Encrypt {encrypt_obj} 0 R"
    out.write(f"trailer\n{trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


THREE_PAGES = [(*A4, RED), (612.0, 792.0, GREEN), (842.0, 595.0, BLUE)]


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "report.pdf"
    path.write_bytes(make_pdf(THREE_PAGES))
    return path


def centre(url_or_bytes: str | bytes) -> tuple[int, int, int]:
    data = decode_data_url(url_or_bytes) if isinstance(url_or_bytes, str) else url_or_bytes
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
        return rgb.getpixel((rgb.width // 2, rgb.height // 2))


def size_of(url: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(decode_data_url(url))) as img:
        return img.size


def close(colour: tuple[int, int, int], expected: tuple[float, float, float]) -> bool:
    return all(abs(c - e * 255) <= 12 for c, e in zip(colour, expected, strict=True))


# --- the writer itself ------------------------------------------------------------------------------------------


def test_hand_made_pdfs_are_valid() -> None:
    assert len(pdfium.PdfDocument(make_pdf(THREE_PAGES))) == 3
    locked = make_pdf(THREE_PAGES[:1], user_password="secret")
    with pytest.raises(pdfium.PdfiumError):
        pdfium.PdfDocument(locked)
    opened = pdfium.PdfDocument(locked, password="secret")  # a genuine encrypted PDF: the password opens it
    bitmap = opened[0].render(scale=0.2).to_pil()
    assert close(bitmap.getpixel((bitmap.width // 2, bitmap.height // 2)), RED)


# --- page ranges ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, [1, 2, 3, 4, 5]),
        ("", [1, 2, 3, 4, 5]),
        ("1-3,5", [1, 2, 3, 5]),
        ("2", [2]),
        ("4-", [4, 5]),
        (" 5 , 1-2 ", [5, 1, 2]),
        ("1-3,2-4", [1, 2, 3, 4]),
        ("3-3", [3]),
    ],
)
def test_parse_pages(spec: str | None, expected: list[int]) -> None:
    assert parse_pages(spec, 5) == expected


@pytest.mark.parametrize("spec", ["a", "1-b", "3-1", "0", "1,,2", "-2", "1.5"])
def test_parse_pages_bad_syntax(spec: str) -> None:
    with pytest.raises(UsageError, match="page range"):
        parse_pages(spec, 5)


def test_parse_pages_out_of_range() -> None:
    with pytest.raises(MediaError, match=r"doc\.pdf has 3 pages; page 5 .* out of range") as err:
        parse_pages("1-3,5", 3, "doc.pdf")
    assert "1 to 3" in (err.value.hint or "")
    with pytest.raises(MediaError, match="has 1 page;"):
        parse_pages("2", 1, "one.pdf")


# --- rendering --------------------------------------------------------------------------------------------------


def test_page_size_fits_the_budget() -> None:
    low, high = image_budget(MediaOptions(model=PLUS))
    for width, height in (A4, (612, 792), (842, 595), (100, 50), (3000, 3000), (200, 2000)):
        h_bar, w_bar = page_size(width, height, 32, low, high)
        assert h_bar % 32 == 0 and w_bar % 32 == 0
        assert h_bar * w_bar <= high
        assert h_bar * w_bar >= 0.85 * high  # the page uses (nearly) the whole budget, small pages too
        assert abs(w_bar / h_bar - width / height) < 0.06 * (width / height)
    h_bar, w_bar = page_size(*A4, 28, *image_budget(MediaOptions(model=QWEN25)))
    assert h_bar % 28 == 0 and w_bar % 28 == 0 and h_bar * w_bar <= QWEN25.default_max_pixels


def test_render_pdf_pages_in_order(doc: Path) -> None:
    low, high = image_budget(MediaOptions(model=PLUS))
    pages = render_pdf(doc, factor=32, min_pixels=low, max_pixels=high)
    assert [p.number for p in pages] == [1, 2, 3]
    for page, (width, height, colour) in zip(pages, THREE_PAGES, strict=True):
        assert (page.height, page.width) == page_size(width, height, 32, low, high)
        assert page.width * page.height <= high
        assert page.mime == "image/png"  # a flat page with text is a graphic: PNG keeps it sharp
        with Image.open(io.BytesIO(page.data)) as img:
            assert img.size == (page.width, page.height)
        assert close(centre(page.data), colour)
        assert (page.height, page.width) == smart_resize(page.height, page.width, 32, low, high)  # kept as is
    assert pages[2].width > pages[2].height  # a landscape page stays landscape
    assert page_count(doc) == 3


def test_render_pdf_page_range(doc: Path) -> None:
    pages = render_pdf(doc.read_bytes(), factor=32, min_pixels=4096, max_pixels=500_000, pages="3,1")
    assert [p.number for p in pages] == [3, 1]
    assert close(centre(pages[0].data), BLUE) and close(centre(pages[1].data), RED)
    with pytest.raises(MediaError, match="has 3 pages"):
        render_pdf(doc, factor=32, min_pixels=4096, max_pixels=500_000, pages="2-4")


def test_context_window_is_checked(doc: Path) -> None:
    with pytest.raises(MediaError, match="over the model's context of 3000") as err:
        render_pdf(doc, factor=32, min_pixels=4096, max_pixels=PLUS.default_max_pixels, context_tokens=3000)
    assert "pages" in (err.value.hint or "") and "--pages" in (err.value.raw_hint or "")  # library words; flags raw


# --- bad PDFs ---------------------------------------------------------------------------------------------------


def test_encrypted_pdf(tmp_path: Path) -> None:
    locked = tmp_path / "locked.pdf"
    locked.write_bytes(make_pdf(THREE_PAGES, user_password="secret"))
    with pytest.raises(MediaError, match=r"locked\.pdf is encrypted: it needs a password") as err:
        render_pdf(locked, factor=32, min_pixels=4096, max_pixels=500_000, label=str(locked))
    assert err.value.source == str(locked)
    messages = [Message(role="user", content=[{"type": "image", "image": str(locked)}])]
    with pytest.raises(MediaError, match="is encrypted"):
        prepare_messages(messages, MediaOptions(model=PLUS))


def test_owner_password_only_pdf_renders(tmp_path: Path) -> None:
    restricted = tmp_path / "restricted.pdf"
    restricted.write_bytes(make_pdf(THREE_PAGES[:1], user_password=""))
    pages = render_pdf(restricted, factor=32, min_pixels=4096, max_pixels=500_000)
    assert len(pages) == 1 and close(centre(pages[0].data), RED)


def test_corrupt_pdf(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7\n" + b"\x00\x13garbage" * 50)
    with pytest.raises(MediaError, match=r"broken\.pdf is not a readable PDF"):
        render_pdf(bad, factor=32, min_pixels=4096, max_pixels=500_000)
    with pytest.raises(MediaError, match=r"broken\.pdf is not a readable PDF"):
        prepare_messages(
            [Message(role="user", content=[{"type": "image", "image": str(bad)}])], MediaOptions(model=PLUS)
        )


def test_pdf_without_pages(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(make_pdf([]))
    # PDFium refuses a page tree with no pages as a format error; either way the file is named
    with pytest.raises(MediaError, match=r"empty\.pdf (has no pages|is not a readable PDF)"):
        render_pdf(empty, factor=32, min_pixels=4096, max_pixels=500_000)


# --- the seam: a PDF given as an image becomes one image per page ------------------------------------------------


def test_prepare_messages_expands_a_pdf(doc: Path) -> None:
    messages = [
        Message(
            role="user",
            content=[
                {"type": "text", "text": "summarise"},
                {"type": "image", "image": str(doc)},
                {"type": "text", "text": "thanks"},
            ],
        )
    ]
    prepared = prepare_messages(messages, MediaOptions(model=PLUS))
    parts = prepared.messages[0].content
    assert [type(p).__name__ for p in parts] == ["TextPart", "ImagePart", "ImagePart", "ImagePart", "TextPart"]
    for item in prepared.items:  # a rendered page is not "sent as given": it was rendered and encoded
        assert any("rendered from the PDF" in n for n in item.notes), item.notes
        assert not any("sent as given" in n for n in item.notes), item.notes
    images = [p for p in parts if isinstance(p, ImagePart)]
    assert [close(centre(p.image), c) for p, (_, _, c) in zip(images, THREE_PAGES, strict=True)] == [True] * 3
    assert len(prepared.items) == 3
    low, high = image_budget(MediaOptions(model=PLUS))
    for item, (width, height, _) in zip(prepared.items, THREE_PAGES, strict=True):
        h_bar, w_bar = page_size(width, height, 32, low, high)
        assert (item.height, item.width) == (h_bar, w_bar)
        assert item.tokens == h_bar * w_bar // 1024 + 2
    # the history keeps the user's own reference
    assert isinstance(messages[0].content, list) and messages[0].content[1] == ImagePart(image=str(doc))


def test_expand_documents_leaves_other_parts_alone(doc: Path, tmp_path: Path) -> None:
    png = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), "white").save(png)
    text_only = Message(role="user", content="hello")
    with_image = Message(role="user", content=[{"type": "image", "image": str(png)}])
    out = expand_documents([text_only, with_image], MediaOptions(model=PLUS))
    assert out[0] is text_only and out[1] is with_image
    remote = Message(role="user", content=[{"type": "image", "image": "https://example.com/photo"}])
    assert expand_documents([remote], MediaOptions(model=PLUS))[0] is remote
    # a PDF by its URL is a document: refused without fetch_urls (the service cannot read it as an image)
    remote_pdf = Message(role="user", content=[{"type": "image", "image": "https://example.com/doc.pdf"}])
    with pytest.raises(UsageError, match="is a PDF"):
        expand_documents([remote_pdf], MediaOptions(model=PLUS))


def test_pages_option_and_data_url(doc: Path) -> None:
    url = "data:application/pdf;base64," + base64.b64encode(doc.read_bytes()).decode()
    undeclared = "data:application/octet-stream;base64," + base64.b64encode(doc.read_bytes()).decode()
    messages = [Message(role="user", content=[{"type": "image", "image": url}, {"type": "image", "image": undeclared}])]
    out = expand_documents(messages, MediaOptions(model=PLUS, pages="2"))
    parts = out[0].content
    assert isinstance(parts, list) and len(parts) == 2
    assert all(isinstance(p, ImagePart) and close(centre(p.image), GREEN) for p in parts)


def test_detail_low_and_part_max_pixels_lower_the_render_size(doc: Path) -> None:
    messages = [Message(role="user", content=[ImagePart(image=str(doc), max_pixels=200_000)])]
    small = expand_documents(messages, MediaOptions(model=PLUS))
    part = small[0].content[0]
    assert isinstance(part, ImagePart) and part.max_pixels == 200_000
    width, height = size_of(part.image)
    assert width * height <= 200_000
    low = expand_documents(
        [Message(role="user", content=[ImagePart(image=str(doc))])], MediaOptions(model=PLUS, detail="low")
    )
    low_part = low[0].content[0]
    assert isinstance(low_part, ImagePart)
    width, height = size_of(low_part.image)
    assert width * height <= PLUS.low_detail_tokens * 1024


def test_request_pages_reach_the_media_options(doc: Path) -> None:
    request = Request(prompt="read page 3", image=str(doc), pages="3")
    options = media_options(request, PLUS, "compat")
    assert options.pages == "3"
    out = expand_documents([Message(role="user", content=[ImagePart(image=str(doc)), TextPart(text="x")])], options)
    parts = out[0].content
    assert isinstance(parts, list) and len(parts) == 2
    first = parts[0]
    assert isinstance(first, ImagePart) and close(centre(first.image), BLUE)


def test_page_range_out_of_bounds_through_prepare(doc: Path) -> None:
    messages = [Message(role="user", content=[{"type": "image", "image": str(doc)}])]
    with pytest.raises(MediaError, match=r"report\.pdf has 3 pages; page 9"):
        prepare_messages(messages, MediaOptions(model=PLUS, pages="9"))
    with pytest.raises(UsageError, match="bad page range"):
        prepare_messages(messages, MediaOptions(model=PLUS, pages="x-y"))


def test_model_context_limits_whole_documents(tmp_path: Path) -> None:
    many = tmp_path / "many.pdf"
    many.write_bytes(make_pdf([(*A4, RED)] * 3))
    small_model = replace(PLUS, context_tokens=5000)
    messages = [Message(role="user", content=[{"type": "image", "image": str(many)}])]
    with pytest.raises(MediaError, match=r"many\.pdf: 3 pages .* over the model's context"):
        prepare_messages(messages, MediaOptions(model=small_model))
    assert len(prepare_messages(messages, MediaOptions(model=small_model, pages="1")).items) == 1


# --- fidelity: pages follow the images' encoding rule (qwenvl.media.images, "Encoding") --------------------------

_WORDS = [
    "the",
    "quarterly",
    "revenue",
    "grew",
    "by",
    "eleven",
    "percent",
    "while",
    "operating",
    "costs",
    "fell",
    "in",
    "every",
    "region",
    "except",
]


def write_pdf(pages: list[tuple[float, float, bytes, dict[str, Image.Image]]]) -> bytes:
    """A PDF of pages given as (width pt, height pt, content stream, {name: image the content draws with Do}).
    Fonts /F1 (Helvetica) and /F2 (Times-Roman); images embedded losslessly (RGB, FlateDecode)."""
    objects: dict[int, bytes] = {
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        4: b"<< /Type /Font /Subtype /Type1 /BaseFont /Times-Roman >>",
    }
    kids, num = [], 5
    for width, height, content, pictures in pages:
        xobjects = []
        for name, img in pictures.items():
            raw = zlib.compress(img.convert("RGB").tobytes())
            objects[num] = (
                (
                    f"<< /Type /XObject /Subtype /Image /Width {img.width} /Height {img.height} /ColorSpace /DeviceRGB "
                    f"/BitsPerComponent 8 /Filter /FlateDecode /Length {len(raw)} >>\nstream\n"
                ).encode()
                + raw
                + b"\nendstream"
            )
            xobjects.append(f"/{name} {num} 0 R")
            num += 1
        objects[num] = b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n" + content + b"\nendstream"
        objects[num + 1] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] /Resources << /Font << /F1 3 0 R "
            f"/F2 4 0 R >> /XObject << {' '.join(xobjects)} >> >> /Contents {num} 0 R >>"
        ).encode()
        kids.append(num + 1)
        num += 2
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[2] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>".encode()
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for n in sorted(objects):
        offsets[n] = out.tell()
        out.write(f"{n} 0 obj\n".encode() + objects[n] + b"\nendobj\n")
    xref, size = out.tell(), max(objects) + 1
    out.write(f"xref\n0 {size}\n0000000000 65535 f \n".encode())
    out.write(b"".join(f"{offsets[n]:010d} 00000 n \n".encode() for n in range(1, size)))
    out.write(f"trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def text_page(width: int = 595, height: int = 842) -> bytes:
    """A report page: a blue title bar, 50-odd lines of small text (some red, blue or green), a grey box."""
    ops = [
        b"0.17 0.34 0.6 rg 0 %d %d 60 re f" % (height - 60, width),
        b"1 g BT /F1 22 Tf 36 %d Td (Quarterly report 2026) Tj ET" % (height - 42),
    ]
    colours = [b"0 g", b"0.8 0 0 rg", b"0 0 0.7 rg", b"0 0.5 0 rg"]
    y, i = height - 100, 0
    while y > 120:
        line = " ".join(_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(11)).encode()
        font = b"/F2 11" if i % 5 == 4 else b"/F1 9"
        ops.append(colours[i % 4 if i % 3 == 0 else 0] + b" BT " + font + b" Tf 36 %d Td (%s) Tj ET" % (y, line))
        y, i = y - 13, i + 1
    ops.append(b"0.9 0.9 0.95 rg 36 70 520 40 re f")
    return b"\n".join(ops)


@pytest.fixture(scope="module")
def report() -> bytes:
    """Page 1 a text page, page 2 a full-page photograph (gradients and noise, embedded losslessly)."""
    photo = Image.fromarray(corpus.photo_array(1200, 1700, seed=4))
    return write_pdf([(*A4, text_page(), {}), (*A4, b"q 595 0 0 842 0 0 cm /Im1 Do Q", {"Im1": photo})])


def rendered_with_pixels(
    report: bytes, monkeypatch: pytest.MonkeyPatch, options: MediaOptions
) -> list[tuple[RenderedPage, Image.Image]]:
    """``render_pdf`` of ``report`` with, for each page, the exact pixels that were encoded (rendered, resized)."""
    seen: list[Image.Image] = []
    encode = images.encode_image

    def spy(img: Image.Image, **kw: bool | None) -> tuple[bytes, str]:
        seen.append(img.copy())
        return encode(img, **kw)

    monkeypatch.setattr(images, "encode_image", spy)
    low, high = image_budget(options)
    pages = render_pdf(report, factor=32, min_pixels=low, max_pixels=high)
    assert len(seen) == len(pages) == 2
    return list(zip(pages, seen, strict=True))


@pytest.mark.parametrize("detail", ["auto", "low"])
def test_text_page_is_lossless_or_full_chroma_and_no_larger_than_q90(
    report: bytes, monkeypatch: pytest.MonkeyPatch, detail: str
) -> None:
    """A document page stays lossless or visually lossless (PNG, or a 4:4:4 JPEG: coloured text keeps its
    edges), at least as faithful as the plain q90 JPEG of the same pixels and no larger. qwenvl used to send the
    PNG whenever it fitted 10 MB: here 1.6-1.9x the plain JPEG."""
    (page, exact), _ = rendered_with_pixels(report, monkeypatch, MediaOptions(model=PLUS, detail=detail))
    assert images.looks_like_graphic(exact)
    reference = corpus.plain_q90(exact)
    sent = Image.open(io.BytesIO(page.data))
    assert (sent.width, sent.height) == (page.width, page.height) == exact.size
    assert page.mime == f"image/{(sent.format or '').lower()}"
    assert sent.format == "PNG" or corpus.full_chroma(sent)
    assert len(page.data) <= len(reference)
    assert corpus.psnr(sent, exact) >= corpus.psnr(Image.open(io.BytesIO(reference)), exact)


@pytest.mark.parametrize("detail", ["auto", "low"])
def test_photo_page_is_as_faithful_as_q90_in_fewer_bytes(
    report: bytes, monkeypatch: pytest.MonkeyPatch, detail: str
) -> None:
    """A scanned or photographic page: JPEG at least as faithful as the plain q90 JPEG of the same pixels, in
    fewer bytes (optimised Huffman tables always save some; qwenvl used to send the plain one)."""
    _, (page, exact) = rendered_with_pixels(report, monkeypatch, MediaOptions(model=PLUS, detail=detail))
    assert not images.looks_like_graphic(exact)
    reference = corpus.plain_q90(exact)
    sent = Image.open(io.BytesIO(page.data))
    assert page.mime == "image/jpeg" and sent.format == "JPEG"
    assert len(page.data) < len(reference)
    assert corpus.psnr(sent, exact) >= corpus.psnr(Image.open(io.BytesIO(reference)), exact)


def test_encoded_pages_go_through_as_encoded(report: bytes) -> None:
    """Each page's encoding reaches the wire as it is: ``prepare_image`` passes it through from its header."""
    low, high = image_budget(MediaOptions(model=PLUS))
    pages = render_pdf(report, factor=32, min_pixels=low, max_pixels=high)
    url = to_data_url(report, "application/pdf")
    prepared = prepare_messages(
        [Message(role="user", content=[ImagePart(image=url), TextPart(text="?")])], MediaOptions(model=PLUS)
    )
    assert [item.mime for item in prepared.items] == [page.mime for page in pages]
    assert [decode_data_url(str(item.sent)) for item in prepared.items] == [page.data for page in pages]


def test_pdfium_is_never_called_from_two_threads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """PDFium is not thread-safe (pypdfium2's documentation), and a batch's workers render PDFs side by side: each
    PDFium entry point is watched (with a pause inside, so an overlap cannot slip by) and none may overlap; the
    pages are still right."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    inside = 0
    overlaps = 0
    guard = threading.Lock()

    def watched(original):
        def call(*args, **kwargs):
            nonlocal inside, overlaps
            with guard:
                inside += 1
                overlaps += inside > 1
            try:
                time.sleep(0.005)
                return original(*args, **kwargs)
            finally:
                with guard:
                    inside -= 1

        return call

    monkeypatch.setattr(pdfium.PdfDocument, "__init__", watched(pdfium.PdfDocument.__init__))
    monkeypatch.setattr(pdfium.PdfPage, "render", watched(pdfium.PdfPage.render))
    monkeypatch.setattr(pdfium.PdfDocument, "get_page_size", watched(pdfium.PdfDocument.get_page_size))
    colours = [RED, GREEN, BLUE, (0.5, 0.5, 0.5)]
    pdfs = [make_pdf([(*A4, colour)] * 2) for colour in colours]

    def render(i: int) -> tuple[int, int, int]:
        pages = render_pdf(pdfs[i % 4], factor=32, min_pixels=4096, max_pixels=200_000)
        assert len(pages) == 2 and page_count(pdfs[i % 4]) == 2
        return centre(pages[1].data)

    with ThreadPoolExecutor(8) as pool:
        centres = list(pool.map(render, range(16)))
    assert overlaps == 0
    for i, colour in enumerate(centres):
        assert close(colour, colours[i % 4])
