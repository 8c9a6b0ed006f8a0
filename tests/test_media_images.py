"""Image checks and preparation: the bad-input corpus, conversions, and preparing to the budget."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

import media_corpus as corpus
from qwenvl.errors import MediaError
from qwenvl.media import images
from qwenvl.media.prepare import MediaOptions, PreparedItem, prepare_image, prepare_messages
from qwenvl.media.resize import smart_resize
from qwenvl.models import MAX_IMAGE_BYTES, model_info
from qwenvl.types import ImagePart, Message, TextPart

QWEN3 = model_info("qwen3-vl-plus")  # factor 32, default 2560 tokens
QWEN25 = model_info("qwen2.5-vl-7b-instruct")  # factor 28, default 1280 tokens


def prepare(path: Path | str, *, model=QWEN3, **kw) -> PreparedItem:
    part_kw = {k: kw.pop(k) for k in ("min_pixels", "max_pixels") if k in kw and k.startswith("part_")}
    return prepare_image(ImagePart(image=str(path), **part_kw), MediaOptions(model=model, **kw))


def sent_bytes(item: PreparedItem) -> bytes:
    assert isinstance(item.sent, str) and item.sent.startswith("data:")
    return base64.b64decode(item.sent.split("base64,", 1)[1])


def sent_image(item: PreparedItem) -> Image.Image:
    img = Image.open(io.BytesIO(sent_bytes(item)))
    img.load()
    return img


def refused(path: Path, **kw) -> MediaError:
    with pytest.raises(MediaError) as info:
        prepare(path, **kw)
    err = info.value
    assert path.name in str(err), f"the error must name the file: {err}"
    assert err.source and path.name in err.source
    return err


# --- bad input: each a clear MediaError naming the file and the rule ----------------------------------------


@pytest.mark.parametrize("prepare_first", [True, False])
def test_truncated_jpeg(tmp_path: Path, prepare_first: bool) -> None:
    err = refused(corpus.truncated_jpeg(tmp_path), prepare=prepare_first)
    assert "truncated or corrupt" in str(err)
    assert err.hint


def test_zero_byte_file(tmp_path: Path) -> None:
    err = refused(corpus.zero_bytes(tmp_path))
    assert "empty (0 bytes)" in str(err)


def test_text_file_named_png(tmp_path: Path) -> None:
    err = refused(corpus.text_named_png(tmp_path))
    assert "text file, not an image" in str(err)
    assert "PNG" in (err.hint or "")


def test_svg_is_refused(tmp_path: Path) -> None:
    err = refused(corpus.svg(tmp_path))
    assert "SVG" in str(err) and "raster" in str(err)
    assert "png" in (err.hint or "").lower()


def test_heic_is_refused_with_a_conversion_hint(tmp_path: Path) -> None:
    err = refused(corpus.heic(tmp_path))
    assert "HEIC" in str(err)
    assert "jpg" in (err.hint or "")


def test_pdf_given_as_an_image(tmp_path: Path) -> None:
    err = refused(corpus.pdf_named_jpg(tmp_path))
    assert "PDF document" in str(err)


def test_5x5_png(tmp_path: Path) -> None:
    err = refused(corpus.tiny_png(tmp_path))
    assert "5x5 px" in str(err) and "more than 10 px" in str(err)


def test_3000x10_png(tmp_path: Path) -> None:
    err = refused(corpus.thin_png(tmp_path))
    assert "3000x10" in str(err) and "200:1" in str(err)


def test_bomb_png_refused_from_the_header(tmp_path: Path) -> None:
    path = corpus.bomb_png(tmp_path)
    assert path.stat().st_size < 200
    for prepare_first in (True, False):
        err = refused(path, prepare=prepare_first)
        assert "100000x100000" in str(err) and "decompression-bomb" in str(err)


def test_bomb_past_pillows_own_limit(tmp_path: Path) -> None:
    # 20000x20000 = 400 MP: Pillow raises its own DecompressionBombError; it becomes ours.
    path = corpus.bomb_png(tmp_path, side=20000)
    err = refused(path)
    assert "decompression-bomb" in str(err)


def test_animated_gif_refused(tmp_path: Path) -> None:
    err = refused(corpus.animated_gif(tmp_path))
    assert "animated GIF (3 frames)" in str(err)
    assert "video" in (err.hint or "")


def test_60mb_png_prepared_to_fit(tmp_path: Path) -> None:
    path = corpus.huge_file_png(tmp_path)
    assert path.stat().st_size >= 60_000_000
    item = prepare(path)
    assert len(sent_bytes(item)) <= MAX_IMAGE_BYTES
    assert (item.width, item.height) == (1024, 768)  # within budget: only re-encoded
    assert sent_image(item).size == (1024, 768)


def test_60mb_png_refused_without_preparation(tmp_path: Path) -> None:
    err = refused(corpus.huge_file_png(tmp_path), prepare=False)
    assert "60.0 MB" in str(err) and "at most 10.0 MB" in str(err)
    assert "prepare" in (err.hint or "")


def test_60mb_noise_png_is_downscaled(tmp_path: Path) -> None:
    """A real 60 MB PNG (4500x4500 of noise, stored uncompressed) ends at smart_resize's size, as JPEG."""
    import numpy as np

    rng = np.random.default_rng(3)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (4500, 4500, 3), dtype=np.uint8)).save(path, compress_level=0)
    assert path.stat().st_size >= 60_000_000
    item = prepare(path)
    assert (item.height, item.width) == smart_resize(4500, 4500, 32, 4 * 1024, 2560 * 1024)
    assert item.mime == "image/jpeg"
    assert len(sent_bytes(item)) <= MAX_IMAGE_BYTES


# --- conversions ---------------------------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    item = prepare(corpus.cmyk_jpeg(tmp_path))
    img = sent_image(item)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((100, 50))
    assert r < 40 and g > 200 and b > 200, (r, g, b)  # cyan
    assert any("CMYK" in n for n in item.notes)


def test_cmyk_jpeg_sent_as_is_with_a_note(tmp_path: Path) -> None:
    path = corpus.cmyk_jpeg(tmp_path)
    item = prepare(path, prepare=False)
    assert sent_bytes(item) == path.read_bytes()
    assert any("CMYK" in n for n in item.notes)


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    item = prepare(corpus.png16(tmp_path))
    img = sent_image(item)
    assert img.mode == "L"
    left, middle, right = img.getpixel((0, 32)), img.getpixel((128, 32)), img.getpixel((255, 32))
    assert left <= 2 and 120 <= middle <= 135 and right >= 253
    assert any("16-bit" in n for n in item.notes)


def test_exif_rotated_jpeg_is_sent_upright(tmp_path: Path) -> None:
    item = prepare(corpus.exif_rotated_jpeg(tmp_path))
    img = sent_image(item)
    assert img.size == (200, 400) and (item.width, item.height) == (200, 400)
    assert img.getexif().get(0x0112) in (None, 1)
    r, g, b = img.getpixel((200 - 10, 10))  # the red corner is now at the top right
    assert r > 200 and g < 60 and b < 60
    assert img.getpixel((10, 10)) == pytest.approx((255, 255, 255), abs=8)
    assert any("orientation 6" in n for n in item.notes)


@pytest.mark.parametrize("orientation", [3, 8])
def test_other_orientations(tmp_path: Path, orientation: int) -> None:
    from PIL import ImageOps

    path = corpus.exif_rotated_jpeg(tmp_path, orientation)
    expected = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    img = sent_image(prepare(path))
    assert img.size == expected.size
    # the red corner lands where Pillow's own exif_transpose puts it
    w, h = img.size
    for corner in ((10, 10), (w - 10, 10), (10, h - 10), (w - 10, h - 10)):
        assert (img.getpixel(corner)[0] > 200 and img.getpixel(corner)[1] < 60) == (
            expected.getpixel(corner)[0] > 200 and expected.getpixel(corner)[1] < 60
        )


def test_exif_rotated_jpeg_without_preparation_keeps_bytes_and_warns(tmp_path: Path) -> None:
    path = corpus.exif_rotated_jpeg(tmp_path)
    item = prepare(path, prepare=False)
    assert sent_bytes(item) == path.read_bytes()
    assert any("orientation 6 not applied" in n for n in item.notes)


def test_palette_png_without_transparency(tmp_path: Path) -> None:
    path = corpus.palette_png(tmp_path)
    item = prepare(path)
    img = sent_image(item).convert("RGB")
    assert img.getpixel((10, 10)) == (255, 0, 0) and img.getpixel((100, 10)) == (0, 0, 255)


def test_palette_png_with_transparency_is_flattened_onto_white(tmp_path: Path) -> None:
    item = prepare(corpus.palette_png(tmp_path, transparent=True))
    img = sent_image(item).convert("RGB")
    assert img.getpixel((10, 10)) == (255, 255, 255)
    assert img.getpixel((100, 10)) == (0, 0, 255)
    assert item.mime == "image/png"
    assert any("flattened onto white" in n for n in item.notes)


def test_rgba_png_is_flattened_onto_white(tmp_path: Path) -> None:
    item = prepare(corpus.rgba_png(tmp_path))
    img = sent_image(item)
    assert img.mode == "RGB" and item.mime == "image/png"  # few colours: kept lossless
    assert img.getpixel((10, 10)) == (255, 255, 255)  # transparent black -> white, not black
    assert img.getpixel((100, 10)) == (0, 0, 255)


def test_rgb_png_with_a_transparent_colour_is_flattened(tmp_path: Path) -> None:
    img = sent_image(prepare(corpus.rgb_trns_png(tmp_path))).convert("RGB")
    assert img.getpixel((10, 10)) == (255, 255, 255) and img.getpixel((100, 10)) == (0, 0, 255)


def test_opaque_alpha_is_not_a_conversion(tmp_path: Path) -> None:
    path = corpus.rgba_png(tmp_path, opaque=True)
    item = prepare(path)
    assert not any("flattened" in n for n in item.notes)


def test_la_png_is_flattened(tmp_path: Path) -> None:
    item = prepare(corpus.la_png(tmp_path))
    img = sent_image(item)
    assert img.mode == "L"
    assert img.getpixel((10, 10)) == 255 and img.getpixel((100, 10)) == 40


def test_static_gif_is_converted(tmp_path: Path) -> None:
    item = prepare(corpus.static_gif(tmp_path))
    assert item.mime == "image/png"
    assert sent_image(item).size == (64, 48)
    assert any("GIF converted to PNG" in n for n in item.notes)


def test_static_gif_refused_without_preparation(tmp_path: Path) -> None:
    err = refused(corpus.static_gif(tmp_path), prepare=False)
    assert "GIF" in str(err) and "the service takes" in str(err)


def test_identify_reads_only_the_header(tmp_path: Path) -> None:
    info = images.identify(corpus.exif_rotated_jpeg(tmp_path).read_bytes(), "x.jpg")
    assert (info.format, info.mime, info.width, info.height, info.orientation) == ("JPEG", "image/jpeg", 400, 200, 6)
    assert info.upright_size == (200, 400)


# --- preparing to the budget ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [QWEN3, QWEN25], ids=lambda m: m.name)
def test_large_image_becomes_exactly_smart_resize_size(tmp_path: Path, model) -> None:
    path = corpus.photo_jpeg(tmp_path, size=(4000, 3000))
    item = prepare(path, model=model)
    f = model.factor
    h_bar, w_bar = smart_resize(3000, 4000, f, 4 * f * f, model.image_tokens * f * f)
    assert (item.height, item.width) == (h_bar, w_bar)
    assert sent_image(item).size == (w_bar, h_bar)
    assert item.tokens == h_bar * w_bar // (f * f) + 2
    assert item.mime == "image/jpeg"
    assert len(item.sent) < path.stat().st_size  # far smaller than the original


def test_detail_low_and_high_budgets(tmp_path: Path) -> None:
    path = corpus.photo_jpeg(tmp_path, size=(4000, 3000))
    low = prepare(path, detail="low")
    auto = prepare(path)
    high = prepare(path, detail="high", vl_high_resolution_images=True)
    assert (low.height, low.width) == smart_resize(3000, 4000, 32, 4096, 640 * 1024)
    assert low.tokens is not None and low.tokens <= 640 + 2
    assert auto.tokens is not None and auto.tokens <= 2560 + 2
    # 12 MP is within 16384 tokens of 32x32: the service keeps it (rounded to the grid), so we send it whole
    assert (high.width, high.height) == (4000, 3000)
    assert high.tokens == 3008 * 4000 // 1024 + 2
    assert low.tokens < auto.tokens < high.tokens


def test_max_pixels_of_the_request_and_of_the_part(tmp_path: Path) -> None:
    path = corpus.photo_jpeg(tmp_path, size=(2000, 1500))
    item = prepare(path, max_pixels=500_000)
    assert item.width is not None and item.height is not None and item.width * item.height <= 500_000
    part = prepare_image(ImagePart(image=str(path), max_pixels=200_000), MediaOptions(model=QWEN3))
    assert part.width is not None and part.height is not None and part.width * part.height <= 200_000
    # high resolution ignores max_pixels, as the service does
    high = prepare(path, max_pixels=200_000, vl_high_resolution_images=True)
    assert (high.width, high.height) == (2000, 1500)


def test_prepare_false_keeps_the_bytes(tmp_path: Path) -> None:
    path = corpus.photo_jpeg(tmp_path, size=(4000, 3000))
    item = prepare(path, prepare=False)
    assert sent_bytes(item) == path.read_bytes()
    assert (item.width, item.height) == (4000, 3000)
    assert item.tokens == 1856 * 1376 // 1024 + 2  # what the service will make of it


def _no_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any decode or encode fail the test: what follows must go by the header alone."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded or encoded an image that should pass through")

    for name in ("decode", "encode_jpeg", "encode_png", "looks_like_graphic"):
        monkeypatch.setattr(images, name, refuse)


@pytest.mark.parametrize("kind", ["jpeg", "png", "palette png", "grey png"])
def test_small_image_passes_through_from_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    if kind == "jpeg":
        path = corpus.photo_jpeg(tmp_path, size=(640, 480), quality=75)
    elif kind == "png":
        path = corpus.screenshot_png(tmp_path, size=(320, 240))
    elif kind == "palette png":
        path = corpus.palette_png(tmp_path)
    else:
        path = tmp_path / "grey.png"
        Image.open(corpus.screenshot_png(tmp_path, size=(320, 240))).convert("L").save(path)
    _no_pixels(monkeypatch)
    item = prepare(path)
    assert sent_bytes(item) == path.read_bytes()
    assert item.mime == ("image/jpeg" if kind == "jpeg" else "image/png")
    assert any("sent as given" in n for n in item.notes)


@pytest.mark.parametrize("kind", ["rotated", "transparent", "cmyk", "16-bit", "bmp", "over budget", "loose"])
def test_what_does_not_pass_through(tmp_path: Path, kind: str) -> None:
    """Rotation, transparency, odd modes, a format worth re-encoding, an image over its budget, or one that
    is not compact (over 1 byte per pixel) are decoded."""
    path = {
        "rotated": lambda: corpus.exif_rotated_jpeg(tmp_path),
        "transparent": lambda: corpus.rgba_png(tmp_path),
        "cmyk": lambda: corpus.cmyk_jpeg(tmp_path),
        "16-bit": lambda: corpus.png16(tmp_path),
        "over budget": lambda: corpus.photo_jpeg(tmp_path, size=(4000, 3000)),
        "loose": lambda: corpus.photo_png(tmp_path),
    }.get(kind, lambda: None)()
    if kind == "bmp":
        path = tmp_path / "shot.bmp"
        Image.open(corpus.screenshot_png(tmp_path)).save(path)
    info = images.identify(path.read_bytes(), "x")
    assert not images.passes_through(info, path.stat().st_size) or kind == "over budget"
    assert not any("sent as given" in n for n in prepare(path).notes)


def test_truncated_png_within_budget_is_refused(tmp_path: Path) -> None:
    """Passing through still checks the pixel data is complete (every chunk's CRC), so nothing broken is paid."""
    data = corpus.screenshot_png(tmp_path, size=(320, 240)).read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) - 40])
    assert "truncated or corrupt" in refused(path).message


def test_png_exif_after_the_pixels_is_found_without_decoding(tmp_path: Path) -> None:
    """An eXIf chunk after IDAT (where some writers put it) still gives the orientation; a PNG without one
    is identified without decoding its pixels."""
    exif = Image.Exif()
    exif[0x0112] = 6
    plain = tmp_path / "plain.png"
    Image.open(corpus.screenshot_png(tmp_path, size=(320, 240))).save(plain)
    data = plain.read_bytes()
    tail = data.rindex(b"IEND") - 4
    rotated = tmp_path / "late_exif.png"
    rotated.write_bytes(data[:tail] + corpus.png_chunk(b"eXIf", exif.tobytes()) + data[tail:])
    assert images.identify(rotated.read_bytes(), "x").orientation == 6
    item = prepare(rotated)
    assert (item.width, item.height) == (240, 320) and any("orientation 6" in n for n in item.notes)
    assert images.identify(data, "x").orientation == 1


def test_in_budget_bmp_is_re_encoded_smaller(tmp_path: Path) -> None:
    path = tmp_path / "shot.bmp"
    Image.open(corpus.screenshot_png(tmp_path)).save(path)
    item = prepare(path)
    assert item.mime == "image/png" and len(sent_bytes(item)) < path.stat().st_size
    assert sent_image(item).size == (1200, 800)


def test_graphic_stays_png_and_photo_becomes_jpeg(tmp_path: Path) -> None:
    shot = prepare(corpus.screenshot_png(tmp_path, size=(3000, 2000)))
    assert shot.mime == "image/png"
    photo = prepare(corpus.photo_png(tmp_path, size=(3000, 2000)))
    assert photo.mime == "image/jpeg"
    assert images.looks_like_graphic(Image.open(corpus.screenshot_png(tmp_path)))
    assert not images.looks_like_graphic(Image.open(corpus.photo_png(tmp_path)))


def test_size_limit_lowers_quality_then_downscales(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qwenvl.media.prepare as prepare_module

    path = corpus.photo_png(tmp_path, size=(900, 700))
    monkeypatch.setattr(prepare_module, "MAX_IMAGE_BYTES", 20_000)
    item = prepare(path)
    data = sent_bytes(item)
    assert len(data) <= 20_000 and item.mime == "image/jpeg"
    assert any("quality lowered to 60" in n for n in item.notes)
    assert any("downscaled to" in n for n in item.notes)
    img = sent_image(item)
    assert img.size == (item.width, item.height)
    assert item.width is not None and item.height is not None
    assert item.width % 32 == 0 and item.height % 32 == 0  # still on the grid after downscaling


def test_size_limit_fallback_keeps_the_highest_quality_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the size limit each lower quality is encoded with optimised Huffman tables: the pixels of a plain
    encoding at that quality in fewer bytes, so a limit between the two sizes stops at quality 80 (qwenvl used to
    go on to 70)."""
    import numpy as np

    import qwenvl.media.prepare as prepare_module

    path = corpus.photo_png(tmp_path, size=(900, 700))
    img = Image.open(path).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    plain = buf.getvalue()
    limit = len(plain) - 1
    monkeypatch.setattr(prepare_module, "MAX_IMAGE_BYTES", limit)
    item = prepare(path)
    data = sent_bytes(item)
    assert len(data) <= limit and item.mime == "image/jpeg" and (item.width, item.height) == img.size
    assert any("quality lowered to 80" in n for n in item.notes)
    assert not any("quality lowered to 70" in n or "downscaled" in n for n in item.notes)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(Image.open(io.BytesIO(plain))))


def test_data_url_input(tmp_path: Path) -> None:
    raw = corpus.photo_jpeg(tmp_path, size=(640, 480), quality=75).read_bytes()
    url = "data:image/jpeg;base64," + base64.b64encode(raw).decode()
    item = prepare_image(ImagePart(image=url), MediaOptions(model=QWEN3))
    assert item.sent == url  # kept as given
    wrong = "data:image/png;base64," + base64.b64encode(raw).decode()
    fixed = prepare_image(ImagePart(image=wrong), MediaOptions(model=QWEN3))
    assert isinstance(fixed.sent, str) and fixed.sent.startswith("data:image/jpeg;base64,")


def test_bad_data_url_names_the_rule() -> None:
    url = "data:image/png;base64," + base64.b64encode(b"hello, not an image").decode()
    with pytest.raises(MediaError, match=r"data URL .* is a text file"):
        prepare_image(ImagePart(image=url), MediaOptions(model=QWEN3))


def test_remote_url_passes_through() -> None:
    item = prepare_image(ImagePart(image="https://example.com/cat.jpg"), MediaOptions(model=QWEN3))
    assert item.sent == "https://example.com/cat.jpg"
    assert item.tokens is None and item.width is None


def test_tiny_budget_with_extreme_ratio_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    Image.new("RGB", (2200, 11), BLUE := (0, 0, 255)).save(path)
    assert BLUE
    err = refused(path, max_pixels=4 * 1024)
    assert "0 px" in str(err) and "max_pixels" in (err.hint or "")


def test_prepare_messages_reports_every_image(tmp_path: Path) -> None:
    a = corpus.photo_jpeg(tmp_path, "a.jpg", size=(1600, 1200))
    b = corpus.screenshot_png(tmp_path)
    message = Message(role="user", content=[ImagePart(image=str(a)), ImagePart(image=str(b)), TextPart(text="compare")])
    prepared = prepare_messages([message], MediaOptions(model=QWEN3))
    assert len(prepared.items) == 2
    assert prepared.estimated_media_tokens == sum(i.tokens or 0 for i in prepared.items)
    sent_parts = prepared.messages[0].content
    assert isinstance(sent_parts, list)
    assert all(isinstance(p, TextPart) or p.image.startswith("data:") for p in sent_parts)  # type: ignore[union-attr]


BLUE = (0, 0, 255)


# --- fidelity: never less faithful than qwen-vl-utils' q90 re-encode, never larger ---------------------------


def _textured(
    width: int,
    height: int,
    *,
    seed: int,
    octaves: tuple[tuple[int, float], ...],
    noise: float,
    tint: tuple[float, float, float],
) -> Image.Image:
    """Multi-scale texture (octaves of noise, ``(scale px, amplitude)``) with per-pixel sensor noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lum = np.full((height, width), 115, np.float32)
    for scale, amp in octaves:
        grain = rng.normal(0, 1, (height // scale + 1, width // scale + 1)).astype(np.float32)
        if scale > 1:
            grain = np.asarray(Image.fromarray(grain, "F").resize((width, height), Image.Resampling.BICUBIC))
        lum += amp * grain[:height, :width]
    rgb = np.stack([lum * t for t in tint], -1) + rng.normal(0, noise, (height, width, 3)).astype(np.float32)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


_psnr = corpus.psnr


FIDELITY_IMAGES = {
    "plain photo": lambda: Image.fromarray(corpus.photo_array(2400, 1800, seed=4)),
    "foliage": lambda: _textured(
        2400, 1800, seed=2, octaves=((1, 14), (2, 22), (4, 26), (8, 22), (32, 30)), noise=5, tint=(0.55, 0.95, 0.45)
    ),
    "high-ISO grain": lambda: _textured(
        2400, 1800, seed=3, octaves=((2, 28), (64, 40)), noise=10, tint=(1.05, 1.0, 0.9)
    ),
    "soft texture": lambda: _textured(
        2400, 1800, seed=5, octaves=((4, 10), (16, 25), (128, 40)), noise=3, tint=(1.0, 0.9, 0.8)
    ),
    # texture over part of a smooth photo, near where flat tables stop paying (the dense-texture rule's edge:
    # 30% foliage stays under the threshold, where flat tables would lose 0.02 dB; 40% is over it and gains)
    "30% foliage": lambda: _mixed("foliage", 0.3),
    "40% foliage": lambda: _mixed("foliage", 0.4),
    "40% grain": lambda: _mixed("high-ISO grain", 0.4),
}


def _mixed(texture: str, share: float) -> Image.Image:
    """The plain photo with its top ``share`` of rows replaced by ``texture``."""
    import numpy as np

    mixed = corpus.photo_array(2400, 1800, seed=4).copy()
    rows = int(1800 * share)
    mixed[:rows] = np.asarray(FIDELITY_IMAGES[texture]())[:rows]
    return Image.fromarray(mixed)


# 2.1x per side (the default budget of a 12 MP photo), 4.3x (a DCT-scaled decode used to apply from 4x) and
# 8.9x (Pillow's reducing_gap=3 used to apply from 6x): each gave pixels 49-55 dB from the exact resize and
# quality 90 scored up to 0.09 dB under the reference.
FIDELITY_BUDGETS = (1_000_000, 240_000, 55_000)


@pytest.mark.parametrize("max_pixels", FIDELITY_BUDGETS)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("name", list(FIDELITY_IMAGES))
def test_resized_photo_is_as_faithful_as_a_q90_reencode_and_no_larger(
    tmp_path: Path, name: str, fmt: str, max_pixels: int
) -> None:
    """What qwen-vl-utils sends: the exact resize (full decode, bicubic) re-encoded at JPEG quality 90. What we
    send must score at least its PSNR against that exact resize, in no more bytes, at every reduction."""
    path = tmp_path / f"in.{fmt.lower()}"
    FIDELITY_IMAGES[name]().save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    item = prepare_image(ImagePart(image=str(path), max_pixels=max_pixels), MediaOptions(model=QWEN3))
    assert item.mime == "image/jpeg" and item.width is not None and item.height is not None
    exact = Image.open(path).convert("RGB").resize((item.width, item.height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    exact.save(buf, "JPEG", quality=90)
    reference = buf.getvalue()
    ours = sent_bytes(item)
    assert len(ours) <= len(reference)
    assert _psnr(Image.open(io.BytesIO(ours)), exact) >= _psnr(Image.open(io.BytesIO(reference)), exact)


@pytest.mark.parametrize("max_pixels", FIDELITY_BUDGETS)
def test_resized_screenshot_stays_lossless_or_visually_lossless(tmp_path: Path, max_pixels: int) -> None:
    path = corpus.screenshot_png(tmp_path, size=(3000, 2000))
    item = prepare_image(ImagePart(image=str(path), max_pixels=max_pixels), MediaOptions(model=QWEN3))
    sent = Image.open(io.BytesIO(sent_bytes(item)))
    assert sent.format == "PNG" or (sent.format == "JPEG" and sent.layer[0][1:3] == sent.layer[1][1:3])  # 4:4:4
    assert item.width is not None and item.height is not None
    exact = Image.open(path).convert("RGB").resize((item.width, item.height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    exact.save(buf, "JPEG", quality=90)
    assert _psnr(sent, exact) >= _psnr(Image.open(buf), exact)


def test_screenshot_encoding_is_no_larger_and_no_less_faithful_than_q90(tmp_path: Path) -> None:
    """A resized document screenshot: what is sent is at most a plain q90 JPEG's bytes (what qwen-vl-utils
    sends) and at least its PSNR; a full-chroma JPEG with optimised tables gets there where PNG does not."""
    path = corpus.document_png(tmp_path)
    exact = Image.open(path).convert("RGB").resize((1344, 768), Image.Resampling.BICUBIC)
    data, mime = images.encode_graphic(exact)
    buf = io.BytesIO()
    exact.save(buf, "JPEG", quality=90)
    assert len(data) <= len(buf.getvalue())
    sent = Image.open(io.BytesIO(data))
    assert _psnr(sent, exact) >= _psnr(Image.open(buf), exact)
    assert mime == "image/png" or sent.layer[0][1:3] == sent.layer[1][1:3]  # PNG or 4:4:4


@pytest.mark.parametrize(("chroma", "shipped"), [(images.GRAPHIC_CHROMA_QUALITIES, True), ((5, 10, 15), False)])
def test_coarser_chroma_is_sent_only_when_measured_as_faithful(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chroma: tuple[int, ...], shipped: bool
) -> None:
    """A document where PNG and 4:4:4 q95/q90 are all larger than a plain q90 JPEG (q90 by 2%): full chroma with
    the yardstick's luma table and a coarser chroma table fits and is measured at least as faithful, so it is
    sent; chroma so coarse that the PSNR falls under the reference's never is (then the smallest visually lossless
    candidate goes: PNG or 4:4:4 q90)."""
    monkeypatch.setattr(images, "GRAPHIC_CHROMA_QUALITIES", chroma)
    doc = Image.open(corpus.document_png(tmp_path, size=(2400, 1600))).convert("RGB")
    exact = doc.resize((960, 640), Image.Resampling.BICUBIC)
    reference = corpus.plain_q90(exact)
    assert len(images.encode_jpeg(exact, 90, subsampling="4:4:4", optimize=True)) > len(reference)
    data, mime = images.encode_graphic(exact)
    sent = Image.open(io.BytesIO(data))
    assert mime == "image/jpeg" and corpus.full_chroma(sent)
    assert _psnr(sent, exact) >= _psnr(Image.open(io.BytesIO(reference)), exact)  # never the coarse one
    assert (len(data) <= len(reference)) is shipped


def test_png_size_estimate_is_close(tmp_path: Path) -> None:
    for path in (corpus.document_png(tmp_path), corpus.photo_png(tmp_path, size=(1200, 900))):
        img = Image.open(path).convert("RGB")
        real = len(images.encode_png(img))
        assert 0.85 * real <= images.png_size_estimate(img) <= 1.15 * real
    tiny = Image.new("RGB", (50, 40), "white")
    assert images.png_size_estimate(tiny) == len(images.encode_png(tiny))


@pytest.mark.parametrize(
    ("source", "size"),
    [
        ((3000, 2250), (1856, 1376)),
        ((3000, 2250), (1344, 1024)),
        ((3000, 2250), (1281, 963)),
        ((3000, 2250), (2144, 1185)),
        ((3000, 2250), (1152, 1536)),
        # sizes where bands of output rows (what qwenvl did before) differed from one call on a third of the
        # pixels, by up to 2 levels
        ((1559, 2042), (1024, 1088)),
        ((1840, 2393), (960, 1216)),
    ],
)
def test_banded_resize_gives_the_pixels_of_one_call(source: tuple[int, int], size: tuple[int, int]) -> None:
    """``images.resize`` makes a large output in bands on every core: the same pixels as one ``Image.resize``
    (what qwen-vl-utils calls), so the encodings sent are the reference's by construction."""
    import numpy as np

    src = Image.fromarray(corpus.photo_array(*source, seed=8))
    one = np.asarray(src.resize(size, Image.Resampling.BICUBIC))
    assert np.array_equal(np.asarray(images.resize(src, size)), one)


def _jpeg(img: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **params)
    return buf.getvalue()


@pytest.mark.parametrize("memfd", [True, False])
def test_encode_jpeg_gives_pillows_bytes(monkeypatch: pytest.MonkeyPatch, memfd: bool) -> None:
    """Encoded through an in-memory file (so the GIL is released) or a BytesIO: the bytes Pillow writes."""
    monkeypatch.setattr(images, "_MEMFD", memfd and images._MEMFD)
    img = Image.fromarray(corpus.photo_array(640, 480, seed=13))
    assert images.encode_jpeg(img) == _jpeg(img, quality=90, subsampling="4:2:0", optimize=False)
    flat = images.encode_jpeg(img, qtables=images.FLAT_QTABLES, optimize=True, subsampling="4:4:4")
    assert flat == _jpeg(img, qtables=list(images.FLAT_QTABLES), optimize=True, subsampling="4:4:4")


@pytest.mark.parametrize("name", ["plain photo", "foliage", "40% grain"])
def test_encode_photo_does_not_depend_on_the_density_guess(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The sample that starts the flat-table encoding early only decides when it is encoded, never what is sent:
    a wrong guess either way gives the same bytes."""
    img = FIDELITY_IMAGES[name]().resize((1400, 1050), Image.Resampling.BICUBIC)
    monkeypatch.setattr(images, "_cpu_count", lambda: 2)
    sent = {}
    for guess in (True, False):
        monkeypatch.setattr(images, "_looks_dense", lambda _img, guess=guess: guess)
        sent[guess] = images.encode_photo(img)
    assert sent[True] == sent[False]
    monkeypatch.undo()
    dense = len(images.encode_jpeg(img, optimize=True)) >= (
        images.DENSE_TEXTURE_BYTES_PER_PIXEL * images.OPTIMIZED_HUFFMAN_RATIO * img.width * img.height
    )
    assert images._looks_dense(img) == dense  # and on these the guess is right


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_pil_image_given_to_requests_at_once_is_encoded_alike_and_left_as_it_was(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Found when one PIL image was given to several requests at once (threads): Pillow keeps a save's parameters
    on the object it saves (``encoderinfo``, ``encoderconfig``), so two saves of the caller's image at once mixed
    them (a TypeError, or other bytes) and left one save's parameters on it, overriding the caller's own later
    saves. The two preparations are made to save at the same moment (a barrier in Pillow's save handlers): each
    gives what one preparation alone gives, only private copies are saved, and the caller's image keeps no
    parameters."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from PIL import ImageDraw

    img = Image.new(mode, (900, 700), "white")
    draw = ImageDraw.Draw(img)
    for i in range(40):  # coloured text: a graphic, so several encodings are tried (PNG, JPEG at several settings)
        draw.text((20, 15 * i), f"line {i} the quick brown fox " * 3, fill=(200, 30 * (i % 8), 40))
    expected = images.image_reference(img.copy())
    barrier = threading.Barrier(2, timeout=30)
    met = threading.local()
    saved: list[Image.Image] = []

    def held(real):  # type: ignore[no-untyped-def]
        def save(im, fp, filename):  # type: ignore[no-untyped-def]
            saved.append(im)
            if threading.current_thread().name.startswith("caller") and not getattr(met, "done", False):
                met.done = True
                barrier.wait()  # both callers' first saves are under way at once
            return real(im, fp, filename)

        return save

    for fmt in ("JPEG", "PNG"):
        monkeypatch.setitem(Image.SAVE, fmt, held(Image.SAVE[fmt]))
    with ThreadPoolExecutor(2, thread_name_prefix="caller") as pool:
        made = list(pool.map(lambda _: images.image_reference(img), range(2)))
    assert made == [expected, expected]
    assert not any(im is img for im in saved)
    assert not getattr(img, "encoderinfo", None)
