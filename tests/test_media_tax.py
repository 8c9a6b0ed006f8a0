"""No per-request tax on media that need nothing done (issue 15, part 1, as a kind).

Behavioural, not timing: each test counts the work done (decodes, integrity checks, samplings, renderings)
or the modules imported, so it fails when a small image the service takes as it is gets decoded whole,
when media of a conversation's earlier turns are prepared again on every turn, or when a command imports
what it does not need. bench/bench_overhead.py measures the times.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import simplejpeg
from PIL import Image, ImageCms, ImageFile

import media_corpus as corpus
import qwenvl
from conftest import API_KEY, make_client
from qwenvl.chat import Conversation
from qwenvl.media import images
from qwenvl.media import prepare as prepare_module
from qwenvl.media.prepare import MediaOptions, PreparedCache, prepare_image
from qwenvl.models import model_info
from qwenvl.types import ImagePart

QWEN3 = model_info("qwen3-vl-plus")


def _sent_bytes(item: Any) -> bytes:
    return base64.b64decode(item.sent.split("base64,", 1)[1])


def _no_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any whole decode or encode fails the test: what follows must go by the header (and ``verify``)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded or encoded an image that should pass through")

    for name in ("decode", "encode_jpeg", "encode_png", "looks_like_graphic"):
        monkeypatch.setattr(images, name, refuse)


def _photo(size: tuple[int, int] = (640, 480)) -> Image.Image:
    return Image.fromarray(corpus.photo_array(*size))


def _phone_jpeg(path: Path) -> Path:
    """What a phone writes: EXIF (orientation 1, a 40 kB maker note), XMP and an ICC profile."""
    exif = Image.Exif()
    exif[0x0112] = 1
    exif[0x010F] = "Phone"
    exif[0x927C] = b"\x00" * 40_000
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b" " * 20_000 + b"</x:xmpmeta>"
    _photo().save(path, "JPEG", quality=85, exif=exif.tobytes(), icc_profile=icc, xmp=xmp)
    return path


def _small(tmp_path: Path, kind: str) -> Path:
    """A small image of ``kind`` within the default budget, in a form the service takes as it is."""
    path = tmp_path / f"small-{kind.replace(' ', '-')}"
    card = Image.open(corpus.screenshot_png(tmp_path, size=(320, 240))).convert("RGB")
    if kind == "baseline jpeg":
        _photo().save(path, "JPEG", quality=85)
    elif kind == "progressive jpeg":
        _photo().save(path, "JPEG", quality=85, progressive=True)
    elif kind == "jpeg exif orientation 1":
        exif = Image.Exif()
        exif[0x0112] = 1
        _photo().save(path, "JPEG", quality=85, exif=exif.tobytes())
    elif kind == "jpeg exif without orientation":
        exif = Image.Exif()
        exif[0x010F] = "Camera"
        _photo().save(path, "JPEG", quality=85, exif=exif.tobytes())
    elif kind == "phone jpeg":
        _phone_jpeg(path)
    elif kind == "lossy webp":
        _photo().save(path, "WEBP", quality=80)
    elif kind == "lossless webp":
        card.save(path, "WEBP", lossless=True)
    elif kind == "grey png":
        card.convert("L").save(path, "PNG")
    elif kind == "palette png":
        card.quantize(16).save(path, "PNG")
    else:
        raise AssertionError(kind)
    return path


SMALL_KINDS = [
    "baseline jpeg",
    "progressive jpeg",
    "jpeg exif orientation 1",
    "jpeg exif without orientation",
    "phone jpeg",
    "lossy webp",
    "lossless webp",
    "grey png",
    "palette png",
]


@pytest.mark.parametrize("kind", SMALL_KINDS)
def test_small_accepted_image_is_sent_from_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str):
    """Every still format and mode the service takes as it is, upright and compact, goes through unchanged
    with no whole decode and no trial encode, from a path and from a data: URL alike."""
    path = _small(tmp_path, kind)
    _no_pixels(monkeypatch)
    item = prepare_image(ImagePart(image=str(path)), MediaOptions(model=QWEN3))
    assert _sent_bytes(item) == path.read_bytes()
    assert any("sent as given" in n for n in item.notes), item.notes
    mime = images.identify(path.read_bytes(), "x").mime
    url = f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()
    assert prepare_image(ImagePart(image=url), MediaOptions(model=QWEN3)).sent == url


@pytest.mark.parametrize("kind", SMALL_KINDS)
def test_the_integrity_check_decodes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """``verify`` walks a JPEG's segments, a WebP's RIFF chunks and a PNG's CRCs: no decoder runs, not even at
    1/8 scale (it decoded JPEGs, once at full scale by mistake, and WebPs whole: 0.5-12 ms per small image)."""
    data = _small(tmp_path, kind).read_bytes()
    decodes: list[str] = []
    real_decode, real_load = simplejpeg.decode_jpeg, Image.Image.load

    def decode_spy(*args: Any, **kwargs: Any) -> Any:
        decodes.append("simplejpeg")
        return real_decode(*args, **kwargs)

    def load_spy(self: Image.Image) -> Any:
        decodes.append(f"Pillow {self.format}")
        return real_load(self)

    monkeypatch.setattr(simplejpeg, "decode_jpeg", decode_spy)
    monkeypatch.setattr(Image.Image, "load", load_spy)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load_spy)
    images.verify(data, images.identify(data, "x"), "x")
    assert decodes == []


@pytest.mark.parametrize("kind", SMALL_KINDS)
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.97])
def test_a_small_image_cut_short_is_still_refused(tmp_path: Path, kind: str, keep: float) -> None:
    """The cheaper checks still find a file cut short anywhere: refused before anything is sent."""
    data = _small(tmp_path, kind).read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[: max(64, int(len(data) * keep))])
    with pytest.raises(qwenvl.MediaError, match=r"truncated or corrupt|cut short"):
        prepare_image(ImagePart(image=str(cut)), MediaOptions(model=QWEN3))


def test_a_jpeg_with_restart_markers_or_a_trailer_passes() -> None:
    """Segments after the scan (restart markers, an MPO's or a maker's trailer after the EOI) are not damage."""
    photo = _photo()
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=85, restart_marker_blocks=4)
    assert images.jpeg_complete(buf.getvalue()) and images.jpeg_complete(buf.getvalue() + b"maker trailer")
    assert not images.jpeg_complete(buf.getvalue()[:-40])
    filled = buf.getvalue()[:-2] + b"\xff\xff\xff\xd9"  # fill bytes before the EOI (T.81 B.1.1.2)
    assert images.jpeg_complete(filled)
    data = buf.getvalue()
    no_scan = data[: data.index(b"\xff\xda")] + b"\xff\xd9"  # headers, then the EOI: no pixel data at all
    assert not images.jpeg_complete(no_scan)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=85, progressive=True)
    assert images.jpeg_complete(buf.getvalue()) and not images.jpeg_complete(buf.getvalue()[:-3])


# --- a conversation's earlier turns are not prepared again ----------------------------------------------------


class _Counts:
    """How often each preparation step ran (spies that call the real function)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        for name in ("decode", "verify", "identify"):
            self._spy(monkeypatch, images, name)

    def _spy(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        real = getattr(module, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)


def _model_bodies(server: Any) -> list[dict[str, Any]]:
    return [r.json for r in server.requests if r.json and r.path.endswith(("/chat/completions", "/generation"))]


def _images_in(body: dict[str, Any]) -> list[str]:
    text = json.dumps(body)
    return [part.split('"', 1)[0] for part in text.split('"data:')[1:]]


@pytest.mark.parametrize("kind", ["over budget", "small"])
def test_history_images_are_prepared_once(server, protocol, tmp_path, monkeypatch, kind):
    """An image attached in the first turn (and, to be sure, the same file attached again in the third) is
    decoded or verified once for the whole conversation, and every turn sends the same bytes for it."""
    path = (
        corpus.photo_jpeg(tmp_path, size=(3000, 2000)) if kind == "over budget" else _small(tmp_path, "baseline jpeg")
    )
    counts = _Counts(monkeypatch)
    with make_client(server, protocol) as client:
        conv = Conversation(client)
        conv.attach(str(path))  # checks the header (estimate-only): no decode, nothing kept
        conv.send("what is it?")
        conv.send("and the colours?")
        conv.attach(str(path))
        conv.send("look again")
        conv.send("thanks")
    attached = 2  # each attach checks the file is complete (``Conversation.check``), as sending would
    if kind == "over budget":
        assert counts.calls["decode"] == 1 and counts.calls["verify"] == attached, counts.calls
    else:
        assert counts.calls["decode"] == 0 and counts.calls["verify"] == attached + 1, counts.calls
    sent = [_images_in(body) for body in _model_bodies(server)]
    assert [len(s) for s in sent] == [1, 1, 2, 2]
    assert len({url for s in sent for url in s}) == 1  # the same data URL every time


def test_library_history_is_not_prepared_again(server, tmp_path, monkeypatch):
    """``complete(messages=r.messages)`` (the documented multi-turn way) and the async client alike."""
    path = corpus.photo_jpeg(tmp_path, size=(3000, 2000))
    counts = _Counts(monkeypatch)
    with make_client(server) as client:
        r = client.complete(prompt="what is it?", image=str(path))
        r = client.complete(prompt="and then?", messages=r.messages)
        client.complete(prompt="and then?", messages=r.messages, stream=True)
    assert counts.calls["decode"] == 1, counts.calls

    async def turns() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url) as aclient:
            r = await aclient.complete(prompt="what is it?", image=str(path))
            await aclient.complete(prompt="and then?", messages=r.messages)

    asyncio.run(turns())
    assert counts.calls["decode"] == 2, counts.calls  # one more client, one more preparation


def test_changed_file_is_prepared_anew(server, tmp_path, monkeypatch):
    """The cache goes by content: a file rewritten between turns is read, checked and prepared again, and a
    file that is now damaged is refused, never answered from what it was."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(corpus.photo_jpeg(tmp_path, name="a.jpg", size=(3000, 2000)).read_bytes())
    counts = _Counts(monkeypatch)
    with make_client(server) as client:
        r = client.complete(prompt="what is it?", image=str(path))
        _photo((3200, 2000)).save(path, "JPEG", quality=90)
        r = client.complete(prompt="and now?", messages=r.messages)
        assert counts.calls["decode"] == 2
        assert r.messages[0].content[0].image == str(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(qwenvl.MediaError, match="truncated or corrupt"):
            client.complete(prompt="and now?", messages=r.messages)


def test_video_and_pdf_in_history_are_not_sampled_or_rendered_again(server, tmp_path, monkeypatch):
    from qwenvl.media import pdf, video
    from test_media_pdf import THREE_PAGES, make_pdf
    from test_media_video import make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=48)
    doc = tmp_path / "report.pdf"
    doc.write_bytes(make_pdf(THREE_PAGES))
    calls: Counter[str] = Counter()
    for module, name in ((video, "sample_video"), (pdf, "render_pdf")):
        real = getattr(module, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    with make_client(server, "native") as client:
        conv = Conversation(client)
        conv.attach(str(clip))
        conv.send("what happens?")
        conv.attach(str(doc))
        conv.send("and in the report?")
        conv.send("thanks")
    assert calls == {"sample_video": 1, "render_pdf": 1}
    bodies = _model_bodies(server)
    assert _images_in(bodies[1])[: len(_images_in(bodies[0]))] == _images_in(bodies[0])


def test_prepared_cache_is_bounded() -> None:
    cache = PreparedCache(max_bytes=1000)
    for i in range(10):
        cache.put(i, i, 200)
    assert len(cache) == 5 and cache.get(0) is None and cache.get(9) == 9
    cache.get(5)  # used: kept over 6
    cache.put("new", "x", 200)
    assert cache.get(5) == 5 and cache.get(6) is None
    cache.put("huge", "y", 600)  # over half of the bound: not kept
    assert cache.get("huge") is None
    cache.clear()
    assert len(cache) == 0


def test_without_a_cache_nothing_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``prepare_image`` alone (no client) prepares every time; a hit is a copy the caller may change."""
    path = corpus.photo_jpeg(tmp_path, size=(3000, 2000))
    counts = _Counts(monkeypatch)
    part, options = ImagePart(image=str(path)), MediaOptions(model=QWEN3)
    prepare_image(part, options)
    prepare_image(part, options)
    assert counts.calls["decode"] == 2
    cache = PreparedCache()
    first = prepare_image(part, options, cache)
    first.notes.append("changed by the caller")
    again = prepare_image(
        ImagePart(image="data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()), options, cache
    )
    assert counts.calls["decode"] == 3
    assert "changed by the caller" not in again.notes and again.sent == first.sent
    assert again.source.startswith("data:")
    other = prepare_image(ImagePart(image=str(path), max_pixels=200_000), options, cache)  # another budget
    assert counts.calls["decode"] == 4 and other.sent != first.sent
    assert prepare_module.PREPARED_CACHE_BYTES >= 8_000_000


# --- imports: a command loads what it needs ---------------------------------------------------------------------

HEAVY = ("torch", "transformers", "av", "pypdfium2", "fastapi", "uvicorn", "starlette", "mcp")


def _imported(code: str, env: dict[str, str] | None = None) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, **(env or {})},
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def _cli(args: list[str]) -> str:
    return (
        "from qwenvl.cli.main import cli\n"
        f"try:\n    cli.main({args!r}, prog_name='qwenvl', standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
    )


def test_import_qwenvl_loads_no_media_or_model_stack() -> None:
    loaded = _imported("import qwenvl")
    assert not loaded & {*HEAVY, "PIL", "numpy", "simplejpeg", "httpx", "rich", "click", "jsonschema"}, loaded


def test_cli_loads_only_the_verb_it_runs(server, env, png) -> None:
    """``qwenvl ask --help`` and a one-shot ``qwenvl ask photo.png "..."`` (as a shell user starts them) load
    no local-model, video, PDF or server stack, no other verb's modules, and neither numpy (JPEG checks and
    16-bit images need it) nor jsonschema (only with --schema)."""
    unneeded = {*HEAVY, "numpy", "simplejpeg", "jsonschema", "referencing", "filelock"}
    loaded = _imported(_cli(["ask", "--help"]))
    assert not loaded & unneeded, loaded & unneeded
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _cli(["ask", str(png), "what is it?", "--no-stream"])
            + "import sys\nprint(sorted(m for m in sys.modules if m.startswith('qwenvl.cli.')))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert "echo: what is it?" in out.stdout, out.stderr
    verbs = {m.split(".")[2] for m in json.loads(out.stdout.splitlines()[-1].replace("'", '"'))}
    assert verbs <= {"main", "ask", "common", "signals", "streams", "render", "tasks_common"}, verbs
    loaded = _imported(_cli(["ask", str(png), "what is it?"]), env)
    assert not loaded & unneeded, loaded & unneeded


def test_a_batch_prepares_a_shared_image_once_in_one_bounded_cache(server, tmp_path, monkeypatch) -> None:
    """Every shard's client of a batch shares one cache of prepared media: an image every item names is prepared
    once (not once per shard), and a batch keeps at most one cache's bound (a cache per client kept up to
    PREPARED_CACHE_BYTES per shard: 8 shards at concurrency 64)."""
    from qwenvl.batch import Batch, BatchItem

    photo = corpus.photo_jpeg(tmp_path, "shared.jpg", (2400, 1800))  # over the budget: prepared, not passed
    checked: list[str] = []
    real = prepare_module._check_image

    def spy(part: Any, data: Any, info: Any, label: str, options: MediaOptions) -> Any:
        if not options.estimate_only:  # the estimate reads headers only, and is not cached
            checked.append(part.image)
        return real(part, data, info, label, options)

    monkeypatch.setattr(prepare_module, "_check_image", spy)
    items = [BatchItem(id=f"i{n}", request={"prompt": f"question {n}", "image": str(photo)}) for n in range(24)]
    with Batch(items, tmp_path / "out.jsonl", base_url=server.url, api_key=API_KEY, concurrency=24) as batch:
        summary = batch.run()
        clients = {id(c.prepared) for c in [batch.planner, batch._new_client()]}
    assert summary.ok == 24
    assert len(clients) == 1  # one cache for the planner and every shard
    assert checked.count(str(photo)) == 1, checked  # prepared once (24 workers at once), sent 24 times


def test_a_batch_does_not_keep_images_sent_as_they_are(tmp_path: Path) -> None:
    """What passes through (checked, nothing decoded) is cheap to check again: a batch's cache keeps only what cost
    a decode, a sampling or a rendering, so items naming distinct small images do not fill it; a client's (a
    conversation's) keeps both."""
    from qwenvl.batch import Batch, BatchItem

    small = _small(tmp_path, "baseline jpeg")
    large = corpus.photo_jpeg(tmp_path, "large.jpg", (3000, 2000))
    with Batch([BatchItem(id="x", request={"prompt": "x"})], tmp_path / "o.jsonl", api_key=API_KEY) as batch:
        kinds = [(batch.prepared, 1), (PreparedCache(), 2)]
        for cache, kept in kinds:
            for path in (small, large):
                prepare_image(ImagePart(image=str(path)), MediaOptions(model=QWEN3), cache)
            assert len(cache) == kept


def test_threads_asking_for_what_another_prepares_wait_for_it() -> None:
    """``get_or_make``: one make per key at a time; a failed make is not stored, and the waiters make their own."""
    import threading
    import time

    cache = PreparedCache(max_bytes=10_000)
    made: list[int] = []

    def slow() -> str:
        made.append(1)
        time.sleep(0.2)
        return "v"

    results: list[tuple[Any, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_make("k", slow, len))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(made) == 1 and len(results) == 8 and {v for v, _ in results} == {"v"}
    assert sorted(hit for _, hit in results) == [False] + [True] * 7

    def failing() -> str:
        raise ValueError("bad file")

    for _ in range(2):  # nothing stored, nothing left waiting
        with pytest.raises(ValueError):
            cache.get_or_make("bad", failing, len)
