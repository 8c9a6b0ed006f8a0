"""Estimate-only media preparation: the same sizes, tokens and errors as the full path, with nothing decoded,
encoded, sampled or rendered; an estimate-only call is never sent; the batch estimate and `qwenvl tokens`
use it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pypdfium2 as pdfium
import pytest

import media_corpus as corpus
from conftest import API_KEY
from qwenvl import Client
from qwenvl.batch import Batch, BatchItem
from qwenvl.errors import MediaError, UsageError
from qwenvl.media import MediaOptions, images, pdf, prepare_messages, video
from qwenvl.media.prepare import ESTIMATE_SCHEME, PreparedItem
from qwenvl.models import model_info
from qwenvl.types import ImagePart, Message, TextPart, VideoPart

MODELS = ["qwen3-vl-plus", "qwen-vl-max", "qwen2.5-vl-7b-instruct"]
BUDGETS = [{}, {"detail": "low"}, {"detail": "high", "vl_high_resolution_images": True}, {"max_pixels": 400_000}]


def make_clip(path: Path, *, seconds: float = 3.0, fps: int = 24, width: int = 320, height: int = 240) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            arr = np.full((height, width, 3), (i * 7) % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode())
    return path


def make_pdf(path: Path) -> Path:
    doc = pdfium.PdfDocument.new()
    for width, height in ((595, 842), (842, 595), (300, 500)):  # A4 portrait, A4 landscape, a small page
        doc.new_page(width, height)
    doc.save(str(path))
    doc.close()
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("estimate")
    return {
        "large_jpeg": corpus.photo_jpeg(d, size=(4000, 3000)),
        "small_png": corpus.screenshot_png(d, size=(640, 400)),
        "photo_png": corpus.photo_png(d),
        "exif_jpeg": corpus.exif_rotated_jpeg(d),
        "cmyk_jpeg": corpus.cmyk_jpeg(d),
        "png16": corpus.png16(d),
        "static_gif": corpus.static_gif(d),
        "clip": make_clip(d / "clip.mp4"),
        "doc": make_pdf(d / "doc.pdf"),
    }


def prepare(part: ImagePart | VideoPart, options: MediaOptions) -> list[PreparedItem]:
    return prepare_messages([Message(role="user", content=[part, TextPart(text="?")])], options).items


def both(part: ImagePart | VideoPart, options: MediaOptions) -> tuple[list[PreparedItem], list[PreparedItem]]:
    return prepare(part, options), prepare(part, replace(options, estimate_only=True))


def assert_same_numbers(full: list[PreparedItem], est: list[PreparedItem]) -> None:
    assert len(full) == len(est)
    for a, b in zip(full, est, strict=True):
        assert (b.width, b.height, b.tokens) == (a.width, a.height, a.tokens)
        assert b.kind == a.kind
        if isinstance(a.sent, list):  # a frame list: the same count of frames, at the same rate
            assert isinstance(b.sent, list) and len(b.sent) == len(a.sent)
            assert b.fps == pytest.approx(a.fps)
        assert not a.estimate
        assert b.estimate and b.bytes_sent == 0
        sent = b.sent if isinstance(b.sent, list) else [b.sent]
        assert all(s.startswith(ESTIMATE_SCHEME) for s in sent)
        assert any("estimate only" in note for note in b.notes)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("budget", BUDGETS, ids=["default", "low", "high", "max_pixels"])
@pytest.mark.parametrize(
    "name", ["large_jpeg", "small_png", "photo_png", "exif_jpeg", "cmyk_jpeg", "png16", "static_gif"]
)
def test_images_match_the_full_path(files: dict[str, Path], model: str, budget: dict, name: str) -> None:
    options = MediaOptions(model=model_info(model), **budget)
    full, est = both(ImagePart(image=str(files[name])), options)
    assert_same_numbers(full, est)
    if name.endswith("jpeg"):
        assert est[0].mime == full[0].mime == "image/jpeg"
    resized = [[note for note in item.notes if note.startswith("resized")] for item in (full[0], est[0])]
    assert resized[0] == resized[1]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", ["large_jpeg", "exif_jpeg", "cmyk_jpeg", "png16", "small_png"])
def test_images_sent_as_they_are_match_too(files: dict[str, Path], model: str, name: str) -> None:
    full, est = both(ImagePart(image=str(files[name])), MediaOptions(model=model_info(model), prepare=False))
    assert_same_numbers(full, est)
    assert est[0].mime == full[0].mime


def test_part_pixels_and_data_urls_match(files: dict[str, Path]) -> None:
    from qwenvl.media.sources import to_data_url

    options = MediaOptions(model=model_info("qwen3-vl-plus"))
    data_url = to_data_url(files["exif_jpeg"].read_bytes(), "image/jpeg")
    for part in (
        ImagePart(image=str(files["large_jpeg"]), min_pixels=200_000, max_pixels=800_000),
        ImagePart(image=data_url),
    ):
        assert_same_numbers(*both(part, options))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("fields", [{}, {"fps": 1.0}, {"fps": 5.0, "max_pixels": 50_000}])
def test_video_matches_the_full_path(files: dict[str, Path], model: str, fields: dict) -> None:
    options = MediaOptions(model=model_info(model), fps=fields.get("fps"))
    part = VideoPart(video=str(files["clip"]), max_pixels=fields.get("max_pixels"))
    full, est = both(part, options)
    assert_same_numbers(full, est)
    assert est[0].notes[0] == full[0].notes[0]  # "N frames at F fps from D s"


def test_frame_list_matches_the_full_path(files: dict[str, Path]) -> None:
    refs = [str(files["large_jpeg"]), str(files["large_jpeg"]), str(files["exif_jpeg"])]
    full, est = both(VideoPart(video=refs), MediaOptions(model=model_info("qwen3-vl-plus")))
    assert (est[0].width, est[0].height, est[0].tokens, len(est[0].sent)) == (
        full[0].width,
        full[0].height,
        full[0].tokens,
        len(full[0].sent),
    )
    assert est[0].estimate and est[0].bytes_sent == 0


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "budget",
    [{}, {"detail": "low"}, {"max_pixels": 600_000}, {"pages": "3,1"}],
    ids=["default", "low", "max_pixels", "pages"],
)
def test_pdf_matches_the_full_path(files: dict[str, Path], model: str, budget: dict) -> None:
    full, est = both(ImagePart(image=str(files["doc"])), MediaOptions(model=model_info(model), **budget))
    assert len(est) == (2 if "pages" in budget else 3)
    assert_same_numbers(full, est)
    assert str(est[0].sent).endswith("#page=3" if "pages" in budget else "#page=1")


def test_nothing_is_decoded_encoded_sampled_or_rendered(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("estimate-only must not do this")

    for module, name in (
        (images, "decode"),
        (images, "encode_jpeg"),
        (images, "encode_png"),
        (images, "verify"),
        (video, "sample_video"),
        (pdf, "render_pdf"),
        (pdf, "_render_page"),
    ):
        monkeypatch.setattr(module, name, forbidden)
    for prepare_files in (True, False):
        options = MediaOptions(model=model_info("qwen3-vl-plus"), prepare=prepare_files, estimate_only=True)
        for name in ("large_jpeg", "small_png", "png16", "doc"):
            assert all(item.estimate for item in prepare(ImagePart(image=str(files[name])), options))
    options = MediaOptions(model=model_info("qwen3-vl-plus"), estimate_only=True)
    assert prepare(VideoPart(video=str(files["clip"])), options)[0].estimate


@pytest.mark.parametrize(
    "builder",
    [
        "tiny_png",
        "thin_png",
        "bomb_png",
        "animated_gif",
        "svg",
        "heic",
        "zero_bytes",
        "text_named_png",
        "pdf_named_jpg",
    ],
)
def test_bad_images_raise_the_same_error(tmp_path: Path, builder: str) -> None:
    path = getattr(corpus, builder)(tmp_path)
    options = MediaOptions(model=model_info("qwen3-vl-plus"))
    errors = []
    for estimate_only in (False, True):
        with pytest.raises(MediaError) as info:
            prepare(ImagePart(image=str(path)), replace(options, estimate_only=estimate_only))
        errors.append((str(info.value), info.value.hint))
    assert errors[0] == errors[1]


def test_bad_originals_pdfs_and_videos_raise_the_same_error(tmp_path: Path, files: dict[str, Path]) -> None:
    cases = [
        (ImagePart(image=str(corpus.huge_file_png(tmp_path, megabytes=12))), {"prepare": False}),
        (ImagePart(image=str(corpus.static_gif(tmp_path))), {"prepare": False}),
        (ImagePart(image=str(files["doc"])), {"pages": "5"}),
        (VideoPart(video=str(files["doc"])), {}),
        (VideoPart(video=str(files["large_jpeg"])), {}),
    ]
    not_pdf = tmp_path / "broken.pdf"
    not_pdf.write_bytes(b"%PDF-1.4\n garbage")
    cases.append((ImagePart(image=str(not_pdf)), {}))
    for part, fields in cases:
        options = MediaOptions(model=model_info("qwen3-vl-plus"), **fields)
        errors = []
        for estimate_only in (False, True):
            with pytest.raises(MediaError) as info:
                prepare(part, replace(options, estimate_only=estimate_only))
            errors.append(str(info.value))
        assert errors[0] == errors[1], part


# --- plan, send, batch, tokens ----------------------------------------------------------------------------


def test_an_estimate_only_call_is_never_sent(files: dict[str, Path]) -> None:
    client = Client(api_key=API_KEY, base_url="http://127.0.0.1:9")  # nothing listens: must fail before
    call = client.plan(prompt="caption", images=[str(files["large_jpeg"])], estimate_only=True)
    assert call.estimate_only and call.media[0].estimate and call.media[0].tokens == 2496
    with pytest.raises(UsageError, match="estimate_only"):
        client.send(call)
    with pytest.raises(UsageError, match="estimate_only"):
        next(client.send_stream(call))
    from qwenvl.backends.dashscope import DashScopeBackend

    with pytest.raises(UsageError, match="estimate_only"):
        DashScopeBackend(API_KEY, protocol="compat", base_url="http://127.0.0.1:9").complete(call)
    full = client.plan(prompt="caption", images=[str(files["large_jpeg"])])
    assert not full.estimate_only and full.media[0].tokens == call.media[0].tokens


def test_batch_estimate_prepares_nothing(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [
        BatchItem(id=name, request={"prompt": "Caption", "image": str(files[name])})
        for name in ("large_jpeg", "small_png", "exif_jpeg", "doc")
    ]
    items.append(BatchItem(id="clip", request={"prompt": "Describe", "video": str(files["clip"])}))
    items.append(BatchItem(id="bad", request={"prompt": "Caption", "image": str(corpus.tiny_png(tmp_path))}))
    client = Client(api_key=API_KEY)
    expected = sum(sum(m.tokens or 0 for m in client.plan(item.request).media) for item in items[:-1])

    monkeypatch.setattr(images, "decode", lambda *a, **k: pytest.fail("the estimate decoded an image"))
    monkeypatch.setattr(video, "sample_video", lambda *a, **k: pytest.fail("the estimate sampled a video"))
    monkeypatch.setattr(pdf, "_render_page", lambda *a, **k: pytest.fail("the estimate rendered a page"))
    job = Batch(items, tmp_path / "out.jsonl", api_key=API_KEY, cache=False)
    est = job.estimate()
    assert est.to_send == 5 and est.invalid == 1 and "bad" in est.errors
    text_tokens = est.input_tokens - expected
    assert 0 < text_tokens < 200  # media tokens equal the full plans'; the rest is the prompts' estimate


def test_batch_with_images_answered_from_the_cache_takes_no_request(
    server, files: dict[str, Path], tmp_path: Path
) -> None:
    own = {name: tmp_path / files[name].name for name in ("small_png", "exif_jpeg")}  # this test edits one
    for name, path in own.items():
        path.write_bytes(files[name].read_bytes())
    items = [BatchItem(id=name, request={"prompt": "Caption", "image": str(path)}) for name, path in own.items()]
    cache = tmp_path / "cache"
    first = Batch(items, tmp_path / "one.jsonl", api_key=API_KEY, base_url=server.url, cache=cache).run()
    assert first.ok == 2 and first.sent == 2
    second_job = Batch(items, tmp_path / "two.jsonl", api_key=API_KEY, base_url=server.url, cache=cache)
    est = second_job.estimate()
    assert est.to_send == 0 and est.cached == 2  # seen by file identity, without preparing the images
    second = second_job.run()
    assert second.ok == 2 and second.cached == 2 and second.sent == 0 and second.cost == 0
    # a changed file is a different request: the estimate counts it as to send, and the run sends it
    (tmp_path / "edited").mkdir()
    corpus.screenshot_png(tmp_path / "edited", size=(320, 200)).replace(own["small_png"])
    third_job = Batch(items, tmp_path / "three.jsonl", api_key=API_KEY, base_url=server.url, cache=cache)
    est = third_job.estimate()
    assert est.to_send == 1 and est.cached == 1
    third = third_job.run()
    assert third.sent == 1 and third.cached == 1
