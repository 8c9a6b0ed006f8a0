"""What a request does once per image, not twice (issue #15, per-request overhead): a small local image is
classified and read once (the PDF test of ``expand_documents`` and ``prepare_image`` share the one read), and its
cache key is hashed once, whatever the lookups; what is sent is what preparing each image alone gives."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import qwenvl
from qwenvl.media import prepare, sources
from qwenvl.media.prepare import MediaOptions, PreparedCache, prepare_image, prepare_messages
from qwenvl.types import ImagePart, Message, TextPart


def _files(folder: Path) -> list[Path]:
    """A JPEG photo, a PNG graphic, a grey PNG and a lossy WebP: small media that pass through as given."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:240, 0:320].astype(np.float32)
    photo = Image.fromarray(
        (np.stack([x, y, x + y], -1) / 2 + rng.normal(0, 8, (240, 320, 3))).clip(0, 255).astype("u1")
    )
    card = Image.new("RGB", (320, 240), "white")
    card.paste((200, 0, 0), (0, 0, 160, 120))
    made = [("photo.jpg", photo, {"quality": 85}), ("card.png", card, {}), ("grey.png", card.convert("L"), {})]
    made.append(("photo.webp", photo, {"quality": 80}))
    paths = []
    for name, img, options in made:
        img.save(folder / name, **options)
        paths.append(folder / name)
    return paths


def _message(paths: list[Path]) -> Message:
    return Message(role="user", content=[*(ImagePart(image=str(p)) for p in paths), TextPart(text="What is this?")])


def _options() -> MediaOptions:
    return MediaOptions(model=qwenvl.model_info("qwen3-vl-plus"))


def test_each_small_image_is_opened_once_per_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PDF test's first bytes (``expand_documents``) and the image's read (``read_image``) were two opens of
    every file, and two classifications; now the whole small file is read once, and the result is unchanged."""
    paths = _files(tmp_path)
    alone = [prepare_image(ImagePart(image=str(p)), _options()) for p in paths]
    opened: list[Path] = []
    real = sources.open_regular

    def counting(path: Path, *args: object, **kw: object):
        opened.append(Path(path))
        return real(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sources, "open_regular", counting)
    monkeypatch.setattr(prepare, "open_regular", counting)
    classified: list[str] = []
    real_classify = sources.classify

    def classify(ref: str) -> sources.Source:
        classified.append(ref)
        return real_classify(ref)

    monkeypatch.setattr(prepare, "classify", classify)
    done = prepare_messages([_message(paths)], _options(), PreparedCache())
    assert sorted(opened) == sorted(paths), opened  # was each file twice
    assert sorted(classified) == sorted(map(str, paths)), classified  # was each reference twice
    for got, want in zip(done.items, alone, strict=True):
        assert got.notes == want.notes == [prepare.SENT_AS_GIVEN]
        assert (got.sent, got.mime, got.width, got.height, got.tokens) == (
            want.sent,
            want.mime,
            want.width,
            want.height,
            want.tokens,
        )
    sent = [p.image for p in done.messages[0].content if isinstance(p, ImagePart)]
    assert sent == [item.sent for item in alone]


def test_a_small_image_that_grows_while_read_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one read is sized from the open file; a file longer by the time it is read is read again whole (not
    cut at the size seen), as ``read_image`` does."""
    path = _files(tmp_path)[1]
    whole = path.read_bytes() + b"\0" * 100  # trailing bytes after IEND: still the same PNG
    path.write_bytes(whole)
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:  # the size seen before the last 100 bytes were written
        st = real_fstat(fd)
        return os.stat_result((*st[:6], st.st_size - 100, *st[7:]))

    monkeypatch.setattr(prepare.os, "fstat", stale_fstat)
    done = prepare_messages([_message([path])], _options(), PreparedCache())
    assert done.items[0].sent == sources.to_data_url(whole, "image/png")


def test_a_cache_key_is_hashed_once_per_image(tmp_path: Path) -> None:
    """The key holds the ``MediaOptions`` (a ``ModelInfo`` inside), whose generated hash walks every field; a lookup
    and a store hashed the key about seven times per image. Now its hash is computed once, and a hit still hits."""
    calls = 0

    class Counting(MediaOptions):
        def __hash__(self) -> int:
            nonlocal calls
            calls += 1
            return super().__hash__()

    paths = _files(tmp_path)
    options = Counting(model=qwenvl.model_info("qwen3-vl-plus"))
    cache = PreparedCache()
    first = prepare_messages([_message(paths)], options, cache)
    assert calls == len(paths), calls  # was 7 per image
    assert len(cache) == len(paths)
    calls = 0
    again = prepare_messages([_message(paths)], options, cache)  # every image from the cache
    assert calls == len(paths), calls
    assert len(cache) == len(paths)
    assert [i.sent for i in again.items] == [i.sent for i in first.items]


def _pillow_verifies(data: bytes) -> bool:
    """The PNG check before: Pillow's ``open`` (the chunks up to the first IDAT) and ``verify`` (the rest)."""
    import io
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.open(io.BytesIO(data)).verify()
    except Exception:
        return False
    return True


def _pngs() -> list[bytes]:
    import io

    from PIL import PngImagePlugin

    out = []
    card = Image.new("RGB", (64, 48), "white")
    card.paste((200, 0, 0), (0, 0, 32, 24))
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "x" * 300, zip=True)
    for img, options in [
        (card, {}),
        (card.convert("L"), {}),
        (card.quantize(8), {"transparency": 0}),
        (card, {"pnginfo": text}),
        (card.resize((640, 480)), {"compress_level": 1}),  # several IDAT chunks
    ]:
        buf = io.BytesIO()
        img.save(buf, "PNG", **options)
        out.append(buf.getvalue())
    # a tEXt chunk after the pixel data (after IDAT, before IEND): checked by Pillow's verify only
    data = out[0]
    iend = data.rindex(b"IEND") - 4
    body = b"tEXtnote\x00late"
    chunk = len(body[4:]).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    out.append(data[:iend] + chunk + data[iend:])
    return out


def test_png_integrity_check_agrees_with_pillows_on_every_damage() -> None:
    """``images.png_fault`` (the chunks walked, CRC-32 over each) accepts and refuses exactly what Pillow's
    ``open`` + ``verify`` did: every PNG whole, cut short at every length, and with any one byte flipped."""
    from qwenvl.media import images

    for data in _pngs():
        assert images.png_fault(data) is None and _pillow_verifies(data)
        variants = [data[:n] for n in range(len(data))]
        step = max(1, len(data) // 400)
        for i in range(8, len(data), step):
            variants.append(data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1 :])
        for damaged in variants:
            ours, pillow = images.png_fault(damaged) is None, _pillow_verifies(damaged)
            assert ours == pillow, (len(damaged), ours, pillow)


def test_a_png_is_verified_without_opening_it_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The integrity check of a PNG sent as given walked Pillow's chunk reader on a second ``Image.open`` of the
    same bytes; it walks them itself now (``png_fault``), and a damaged PNG is still refused."""
    from qwenvl.errors import MediaError
    from qwenvl.media import images

    data = _pngs()[0]
    info = images.identify(data, "card.png")

    def no_open(*args: object, **kw: object) -> None:
        raise AssertionError("opened again")

    monkeypatch.setattr(images.Image, "open", no_open)
    images.verify(data, info, "card.png")  # was: AssertionError("opened again")
    cut = data[: len(data) - 20]
    with pytest.raises(MediaError, match="truncated or corrupt"):
        images.verify(cut, info, "card.png")
