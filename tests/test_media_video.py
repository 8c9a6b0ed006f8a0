"""Video: the sampling rule, the frame budget, seek vs one pass, bad files, frame lists, the prepare seam.

Clips are generated with PyAV in tmp_path (a few seconds, small frames); nothing touches the network.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import simplejpeg
from PIL import Image

import media_corpus as corpus
from qwenvl.errors import MediaError
from qwenvl.media import MediaOptions, images, prepare_messages, video
from qwenvl.media.prepare import frames_mime, prepare_video
from qwenvl.media.resize import smart_resize
from qwenvl.media.sources import decode_data_url
from qwenvl.media.tokens import video_tokens
from qwenvl.media.video import (
    choose_strategy,
    frame_budget,
    frame_list_count,
    probe_video,
    sample_count,
    sample_indices,
    sample_video,
)
from qwenvl.models import model_info
from qwenvl.types import Message, VideoPart

ONE_KEYFRAME = {"x264-params": "keyint=10000:scenecut=0"}
PLUS = model_info("qwen3-vl-plus")  # 640-token frames, 131072 tokens in all
FLASH = model_info("qwen3-vl-flash")  # 768-token frames, 65536 tokens in all
QWEN25 = model_info("qwen2.5-vl-7b-instruct")  # 28 px, 768 frames at most


# --- clips ----------------------------------------------------------------------------------------------------


def frame_array(i: int, width: int, height: int) -> np.ndarray:
    """Frame ``i``: its brightness encodes its index (so a decoded frame tells which it is) plus a gradient."""
    a = np.empty((height, width, 3), np.uint8)
    a[..., 0] = (40 + i * 7) % 256
    a[..., 1] = (np.arange(width)[None, :] * 255 // max(width - 1, 1)).astype(np.uint8)
    a[..., 2] = 128
    return a


def make_clip(
    path: Path,
    *,
    frames: int = 120,
    fps: int = 30,
    width: int = 320,
    height: int = 240,
    codec: str = "libx264",
    gop: int | None = None,
    rotation: int | None = None,
    options: dict[str, str] | None = None,
    pix_fmt: str = "yuv420p",
    draw=frame_array,
    container_options: dict[str, str] | None = None,
    bit_rate: int | None = None,
) -> Path:
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if bit_rate:
            stream.bit_rate = bit_rate
        if gop:
            stream.codec_context.gop_size = gop
        if options:
            stream.codec_context.options = options
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(draw(i, width, height), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {
        "mp4": make_clip(d / "a.mp4", options=ONE_KEYFRAME),  # 4 s, 120 frames, one keyframe
        "gop10": make_clip(d / "gop10.mp4", frames=240, gop=10),  # 8 s, a keyframe every 10 frames
        "bframes": make_clip(
            d / "bframes.mp4",
            frames=90,
            draw=noisy_frame,
            options={"preset": "ultrafast", "x264-params": "bframes=3:b-adapt=0:b-pyramid=none:keyint=30"},
        ),
        "short3": make_clip(d / "three.mp4", frames=3),
        "one": make_clip(d / "one.mp4", frames=1),
        "rotated": make_clip(d / "rot.mp4", frames=30, rotation=90, draw=marked_frame),
    }


def noisy_frame(i: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    base = frame_array(i, width, height).astype(np.int16)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def marked_frame(i: int, width: int, height: int) -> np.ndarray:
    """Dark frame with a white block in its top-left corner."""
    a = np.full((height, width, 3), 30, np.uint8)
    a[: height // 4, : width // 4] = 250
    return a


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


# --- the rule -------------------------------------------------------------------------------------------------


def reference_nframes(total: int, video_fps: float, fps: float, max_frames: int) -> int:
    """qwen-vl-utils ``smart_nframes`` (fps branch), written out from its documented behaviour."""
    min_frames = math.ceil(4 / 2) * 2
    max_f = math.floor(min(max_frames, total) / 2) * 2
    n = total / video_fps * fps
    n = min(min(max(n, min_frames), max_f), total)
    return math.floor(n / 2) * 2


@pytest.mark.parametrize(
    ("total", "video_fps", "fps", "max_frames", "expected"),
    [
        (120, 30, 2.0, 2000, 8),  # 4 s at 2 fps
        (121, 30, 2.0, 2000, 8),  # 8.07 -> even floor
        (90, 30, 2.0, 2000, 6),
        (30, 30, 2.0, 2000, 4),  # 1 s gives 2, clamped up to 4
        (5, 30, 2.0, 2000, 4),
        (1800, 30, 2.0, 16, 16),  # max_frames clamp
        (1800, 30, 2.0, 15, 14),  # an odd max goes down to even
        (100_000, 30, 2.0, 2000, 2000),
        (300, 25, 0.5, 2000, 6),
        (240, 24, 30.0, 2000, 240),  # asking for more than the video has: every frame
        (241, 24, 30.0, 2000, 240),
    ],
)
def test_sample_count(total: int, video_fps: float, fps: float, max_frames: int, expected: int) -> None:
    assert sample_count(total, video_fps, fps, max_frames=max_frames) == expected
    assert reference_nframes(total, video_fps, fps, max_frames) == expected


def test_sample_count_matches_reference_on_a_grid() -> None:
    for total in range(4, 400, 7):
        for video_fps in (23.976, 25, 29.97, 30, 60):
            for fps in (0.25, 1, 2, 4.5):
                for max_frames in (16, 17, 768, 2000):
                    got = sample_count(total, video_fps, fps, max_frames=max_frames)
                    assert got == reference_nframes(total, video_fps, fps, max_frames)
                    assert got % 2 == 0 and got >= 4


def test_short_videos_are_padded_to_four_frames() -> None:
    assert sample_count(3, 30, 2.0, max_frames=2000) == 4
    assert sample_count(1, 30, 2.0, max_frames=2000) == 4
    assert sample_indices(3, 4) == [0, 1, 1, 2]
    assert sample_indices(1, 4) == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        sample_count(0, 30, 2.0, max_frames=2000)


def test_sample_indices_are_rounded_linspace() -> None:
    assert sample_indices(120, 8) == [0, 17, 34, 51, 68, 85, 102, 119]
    for total in (4, 5, 17, 120, 1801, 9999):
        for n in (4, 6, 16, 32):
            expected = np.round(np.linspace(0, total - 1, n)).astype(int).tolist()
            assert sample_indices(total, n) == expected


def test_frame_budget_follows_the_service_formula() -> None:
    ppt = 32 * 32
    assert frame_budget(PLUS, 16) == (4 * ppt, 640 * ppt)  # the per-frame cap
    assert frame_budget(FLASH, 16) == (4 * ppt, 768 * ppt)
    _, high = frame_budget(PLUS, 2000)  # the total cap shared by many frames
    assert high == pytest.approx(131072 * ppt / 2000 * 2)
    assert frame_budget(FLASH, 2000)[1] == pytest.approx(65536 * ppt / 2000 * 2)
    assert frame_budget(PLUS, 10**6)[1] == int(4 * ppt * 1.05)  # never below min_pixels * 1.05
    assert frame_budget(PLUS, 16, max_pixels=100_000)[1] == 100_000  # a user's max_pixels lowers it
    assert frame_budget(PLUS, 16, max_pixels=10)[1] == 4 * ppt  # but not below min_pixels
    assert frame_budget(QWEN25, 16) == (4 * 28 * 28, 768 * 28 * 28)


def test_choose_strategy_counts_decoded_frames() -> None:
    samples = sample_indices(1800, 16)
    # keyframes every 30 frames, samples 120 apart: seek
    choice, seek, one_pass = choose_strategy(samples, list(range(0, 1800, 30)))
    assert choice == "seek" and one_pass == 1800 and seek < 16 * 40
    # a single keyframe: every seek decodes from frame 0
    assert choose_strategy(samples, [0])[0] == "sequential"
    # keyframes every 250 frames, samples 120 apart: about even; one pass wins by the seek overhead
    assert choose_strategy(sample_indices(120, 8), [0])[0] == "sequential"


def test_frame_list_count() -> None:
    assert frame_list_count(1, PLUS) == 4
    assert frame_list_count(3, PLUS) == 4
    assert frame_list_count(4, PLUS) == 4
    assert frame_list_count(5, PLUS) == 6
    assert frame_list_count(2000, PLUS) == 2000
    with pytest.raises(MediaError, match="at most 2000"):
        frame_list_count(2001, PLUS)
    with pytest.raises(MediaError, match="empty"):
        frame_list_count(0, PLUS)


# --- probing and sampling real clips ------------------------------------------------------------------------


def test_probe_video(clips: dict[str, Path]) -> None:
    info = probe_video(clips["mp4"])
    assert (info.frames, info.fps, info.width, info.height, info.codec) == (120, 30.0, 320, 240, "h264")
    assert info.duration == pytest.approx(4.0)
    assert info.keyframe_interval == 120
    assert probe_video(clips["gop10"]).keyframe_interval == pytest.approx(10, abs=1.5)


def test_sample_video_follows_the_rule(clips: dict[str, Path]) -> None:
    sampled = sample_video(clips["mp4"], PLUS, output="array")
    assert sampled.nframes == 8
    assert sampled.indices == [0, 17, 34, 51, 68, 85, 102, 119]
    assert sampled.times == pytest.approx([i / 30 for i in sampled.indices])
    # each frame is the source frame the rule names (its red channel encodes its index)
    reds = [round(float(f[..., 0].mean())) for f in sampled.frames]
    assert reds == pytest.approx([(40 + i * 7) % 256 for i in sampled.indices], abs=3)
    h_bar, w_bar = smart_resize(240, 320, 32, *frame_budget(PLUS, 8))
    assert (sampled.height, sampled.width) == (h_bar, w_bar) == (256, 320)
    assert all(f.shape == (h_bar, w_bar, 3) for f in sampled.frames)
    assert sampled.notes[0] == "8 frames at 2 fps from 4.0 s"


def test_fps_and_model_limits(clips: dict[str, Path]) -> None:
    assert sample_video(clips["gop10"], PLUS, fps=1.0).nframes == 8  # 8 s at 1 fps
    assert sample_video(clips["gop10"], PLUS, fps=0.25).nframes == 4  # 2 frames clamped up to 4
    limited = replace(PLUS, video_max_frames=6)
    sampled = sample_video(clips["gop10"], limited)
    assert sampled.nframes == 6
    assert any("limit of 6 frames" in n for n in sampled.notes)
    assert sampled.sample_fps == pytest.approx(6 / 240 * 30)  # what the frame list stands for, as qwen-vl-utils
    assert sampled.notes[0] == "6 frames at 0.75 fps from 8.0 s (2 fps asked)"
    with pytest.raises(MediaError, match="fps must be positive"):
        sample_video(clips["mp4"], PLUS, fps=0)


def test_frames_fit_the_per_frame_budget(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "big.mp4", frames=8, width=1280, height=720, fps=4)
    sampled = sample_video(clip, PLUS)
    low, high = frame_budget(PLUS, sampled.nframes)
    assert (sampled.height, sampled.width) == smart_resize(720, 1280, 32, low, high)
    assert sampled.width * sampled.height <= high
    assert sampled.width % 32 == 0 and sampled.height % 32 == 0
    assert all(jpeg_size(f) == (sampled.width, sampled.height) for f in sampled.frames)
    qwen25 = sample_video(clip, QWEN25)
    assert qwen25.width % 28 == 0 and qwen25.height % 28 == 0
    assert qwen25.width * qwen25.height <= 768 * 28 * 28


@pytest.mark.parametrize("name", ["mp4", "gop10", "bframes"])
def test_seek_and_one_pass_give_the_same_frames(clips: dict[str, Path], name: str) -> None:
    seek = sample_video(clips[name], PLUS, strategy="seek", output="array")
    one_pass = sample_video(clips[name], PLUS, strategy="sequential", output="array")
    assert seek.strategy == "seek" and one_pass.strategy == "sequential"
    assert seek.times == one_pass.times
    assert [f.mean() for f in seek.frames] == pytest.approx([f.mean() for f in one_pass.frames])
    assert all(np.array_equal(a, b) for a, b in zip(seek.frames, one_pass.frames, strict=True))


def test_auto_seeks_when_keyframes_are_dense(clips: dict[str, Path]) -> None:
    dense = sample_video(clips["gop10"], PLUS, fps=0.5)  # samples 60+ frames apart, keyframes every 10
    assert dense.strategy == "seek"
    assert dense.decoded < 240 / 2
    assert sample_video(clips["mp4"], PLUS).strategy == "sequential"  # one keyframe: one pass


def test_skipping_unreferenced_frames_changes_nothing(clips: dict[str, Path]) -> None:
    """One pass skips H.264 frames nothing refers to; the samples equal a plain full decode's."""
    sampled = sample_video(clips["bframes"], PLUS, strategy="sequential", output="array")
    with av.open(str(clips["bframes"])) as container:
        stream = container.streams.video[0]
        every = sorted(container.decode(stream), key=lambda f: f.pts)
        types = {str(f.pict_type) for f in every}
        plain = [
            every[i].to_ndarray(width=sampled.width, height=sampled.height, format="rgb24", interpolation="BICUBIC")
            for i in sampled.indices
        ]
    assert "3" in types  # the clip really has B-frames (PictureType.B)
    assert sampled.decoded < len(every)  # some were skipped
    assert all(np.array_equal(a, b) for a, b in zip(sampled.frames, plain, strict=True))


def _full_decode(path: Path, indices: list[int], width: int, height: int) -> list[np.ndarray]:
    """The frames at ``indices`` from a plain decode of every frame (no seek, no skip, no threads)."""
    with av.open(str(path)) as container:
        every = sorted(container.decode(container.streams.video[0]), key=lambda f: f.pts)
        return [
            every[i].to_ndarray(width=width, height=height, format="rgb24", interpolation="BICUBIC") for i in indices
        ]


def test_seek_runs_stop_at_their_last_sample_and_equal_a_full_decode(tmp_path: Path) -> None:
    """The seek path feeds the decoder only up to each run's last sample and drains it (B-pyramid: decode
    order differs from display order, B-frames are references); its frames equal a plain full decode's."""
    clip = make_clip(
        tmp_path / "pyramid.mp4",
        frames=240,
        draw=noisy_frame,
        options={"preset": "ultrafast", "x264-params": "bframes=3:b-pyramid=normal:b-adapt=0:keyint=40:scenecut=0"},
    )
    sampled = sample_video(clip, PLUS, fps=2, strategy="seek", output="array")
    index = probe_video(clip)
    assert index.keyframe_interval == 40
    runs = video._seek_segments(sampled.indices, list(range(0, 240, 40)), video.SEEK_COST_FRAMES)
    assert len(runs) >= 2 and max(len(r) for r in runs) >= 3  # a drain, a seek, runs of several samples
    # each run decodes from its keyframe to its last sample (plus at most the 3 B-frames' anchor after it):
    # nothing is decoded twice
    assert sampled.decoded <= sum(r[-1] - r[0] // 40 * 40 + 1 + 4 for r in runs)
    assert sampled.strategy == "seek" and sampled.times == pytest.approx([i / 30 for i in sampled.indices])
    plain = _full_decode(clip, sampled.indices, sampled.width, sampled.height)
    assert all(np.array_equal(a, b) for a, b in zip(sampled.frames, plain, strict=True))


@pytest.mark.parametrize(
    ("codec", "options"),
    [
        ("libx264", {"preset": "ultrafast", "x264-params": "bframes=3:b-pyramid=normal:b-adapt=0:keyint=20"}),
        ("mpeg4", {"bf": "2", "g": "20"}),  # no frame is skipped: every B-frame decodes
    ],
)
def test_a_sample_that_does_not_decode_gets_the_one_pass_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: str, options: dict[str, str]
) -> None:
    """When a sampled frame does not come out of the decoder, the seek path (which stops each run at its last
    sample) gives the same stand-in as one pass: the first frame after it that decodes."""
    clip = make_clip(tmp_path / f"{codec}.mp4", frames=120, codec=codec, draw=noisy_frame, options=options)
    whole = sample_video(clip, PLUS, fps=2, strategy="sequential", output="array")
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.size)
    lost = {pts[i] for i in whole.indices[1:]}  # every sample but the first is lost in decoding
    real = video._decoded

    def lossy(container: Any, stream: Any, wanted: set[int], stop: set[int] | None = None) -> Iterator[Any]:
        return (f for f in real(container, stream, wanted, stop) if f.pts not in lost)

    monkeypatch.setattr(video, "_decoded", lossy)
    one_pass = sample_video(clip, PLUS, fps=2, strategy="sequential", output="array")
    seek = sample_video(clip, PLUS, fps=2, strategy="seek", output="array")
    assert seek.strategy == "seek"
    assert seek.times == one_pass.times
    # stand-ins: the next frame that decodes; for the last frame, the last one before it that decodes
    assert all(t > i / 30 for t, i in zip(seek.times[1:-1], seek.indices[1:-1], strict=True))
    assert seek.times[-1] < seek.indices[-1] / 30
    assert all(np.array_equal(a, b) for a, b in zip(seek.frames, one_pass.frames, strict=True))
    assert any("did not decode" in n for n in seek.notes)


@pytest.mark.parametrize(
    ("suffix", "codec"), [(".mkv", "libx264"), (".mov", "libx264"), (".avi", "mpeg4"), (".webm", "libvpx-vp9")]
)
def test_other_containers(tmp_path: Path, suffix: str, codec: str) -> None:
    clip = make_clip(tmp_path / f"c{suffix}", frames=60, width=160, height=120, codec=codec, gop=12, bit_rate=2_000_000)
    sampled = sample_video(clip, PLUS, output="array")
    assert sampled.nframes == 4
    assert sampled.indices == [0, 20, 39, 59]
    assert sampled.times == pytest.approx([i / 30 for i in sampled.indices], abs=0.002)
    reds = [round(float(f[..., 0].mean())) for f in sampled.frames]
    assert reds == pytest.approx([(40 + i * 7) % 256 for i in sampled.indices], abs=4)


def test_rotation_is_applied(clips: dict[str, Path]) -> None:
    info = probe_video(clips["rotated"])
    assert (info.rotation, info.width, info.height) == (90, 240, 320)
    sampled = sample_video(clips["rotated"], PLUS, output="array")
    assert (sampled.width, sampled.height) == (256, 320)  # portrait, as displayed
    frame = sampled.frames[0]
    h, w = frame.shape[:2]
    # rotated 90 degrees counter-clockwise for display: the top-left block is now bottom-left
    assert frame[h - h // 10 :, : w // 10].mean() > 200
    assert frame[: h // 10, : w // 10].mean() < 80


def test_short_video_is_padded(clips: dict[str, Path]) -> None:
    sampled = sample_video(clips["short3"], PLUS, output="array")
    assert sampled.indices == [0, 1, 1, 2]
    assert sampled.nframes == 4
    assert np.array_equal(sampled.frames[1], sampled.frames[2])
    assert any("padded" in n and "3 frames" in n for n in sampled.notes)
    one = sample_video(clips["one"], PLUS)
    assert one.indices == [0, 0, 0, 0] and one.nframes == 4


# --- bad input ------------------------------------------------------------------------------------------------


def test_corrupt_mp4(tmp_path: Path, clips: dict[str, Path]) -> None:
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(clips["mp4"].read_bytes()[:40] + b"\x00garbage" * 200)
    with pytest.raises(MediaError, match=r"corrupt\.mp4 is not a readable video") as err:
        sample_video(bad, PLUS)
    assert err.value.source == str(bad)
    with pytest.raises(MediaError, match="not a readable video"):
        probe_video(bad)


def test_truncated_mp4(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "fast.mp4", container_options={"movflags": "faststart"}, draw=noisy_frame)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(MediaError, match=r"cut\.mp4 is truncated or damaged: its index lists 120 frames"):
        sample_video(cut, PLUS)
    moov_lost = tmp_path / "no_moov.mp4"
    moov_lost.write_bytes(make_clip(tmp_path / "late.mp4").read_bytes()[:3000])
    with pytest.raises(MediaError, match="not a readable video"):
        sample_video(moov_lost, PLUS)


def test_zero_byte_text_and_pdf_are_not_videos(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match=r"empty\.mp4 is empty \(0 bytes\)"):
        sample_video(empty, PLUS)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    with pytest.raises(MediaError, match=r"notes\.mp4 is not a readable video") as err:
        sample_video(text, PLUS)
    assert "MP4" in (err.value.hint or "")
    pdf = tmp_path / "doc.mp4"
    pdf.write_bytes(b"%PDF-1.4\n%%EOF\n")
    with pytest.raises(MediaError, match=r"it is application/pdf"):
        probe_video(pdf)


def test_audio_only_file(tmp_path: Path) -> None:
    audio = make_audio_only(tmp_path / "voice.mp4")
    with pytest.raises(MediaError, match=r"voice\.mp4 has no video stream \(only audio\)"):
        sample_video(audio, PLUS)
    with pytest.raises(MediaError, match="no video stream"):
        probe_video(audio)


def test_bytes_input(clips: dict[str, Path]) -> None:
    sampled = sample_video(clips["mp4"].read_bytes(), PLUS, label="clip.mp4")
    assert sampled.nframes == 8
    with pytest.raises(MediaError, match=r"clip\.bin is empty"):
        sample_video(b"", PLUS, label="clip.bin")


# --- the prepare seam -----------------------------------------------------------------------------------------


def test_prepare_messages_samples_a_local_video(clips: dict[str, Path]) -> None:
    messages = [
        Message(
            role="user",
            content=[{"type": "video", "video": str(clips["mp4"])}, {"type": "text", "text": "what happens?"}],
        )
    ]
    prepared = prepare_messages(messages, MediaOptions(model=PLUS))
    (item,) = prepared.items
    assert item.kind == "video" and item.mime == "image/jpeg"
    assert isinstance(item.sent, list) and len(item.sent) == 8
    assert all(u.startswith("data:image/jpeg;base64,") for u in item.sent)
    assert (item.width, item.height) == (320, 256)
    assert item.tokens == video_tokens(8, 256, 320, 32) == 4 * 8 * 10 + 2
    assert item.frame_times == pytest.approx([i / 30 for i in [0, 17, 34, 51, 68, 85, 102, 119]])
    assert item.notes[0] == "8 frames at 2 fps from 4.0 s"
    assert item.bytes_sent == sum(len(u) for u in item.sent)
    part = prepared.messages[0].content[0]
    assert isinstance(part, VideoPart) and part.video == item.sent
    assert jpeg_size(decode_data_url(item.sent[0])) == (320, 256)


def test_prepare_video_uses_part_then_request_fps(clips: dict[str, Path]) -> None:
    options = MediaOptions(model=PLUS, fps=1.0)
    assert len(prepare_video(VideoPart(video=str(clips["gop10"])), options).sent) == 8
    assert len(prepare_video(VideoPart(video=str(clips["gop10"]), fps=0.5), options).sent) == 4


def test_prepare_video_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x01" * 500)
    with pytest.raises(MediaError, match=r"broken\.mp4 is not a readable video"):
        prepare_messages(
            [Message(role="user", content=[{"type": "video", "video": str(bad)}])], MediaOptions(model=PLUS)
        )


def test_video_url_passes_through() -> None:
    item = prepare_video(VideoPart(video="https://example.com/v.mp4"), MediaOptions(model=PLUS))
    assert item.sent == "https://example.com/v.mp4"
    assert item.tokens is None and item.frame_times is None


def _png(path: Path, width: int, height: int, shade: int) -> str:
    Image.fromarray(np.full((height, width, 3), shade, np.uint8)).save(path)
    return str(path)


def test_frame_list_is_padded_and_budgeted(tmp_path: Path) -> None:
    refs = [_png(tmp_path / f"f{i}.png", 320, 240, 40 * i) for i in range(3)]
    item = prepare_video(VideoPart(video=refs), MediaOptions(model=PLUS))
    assert isinstance(item.sent, list) and len(item.sent) == 4
    assert item.sent[3] == item.sent[2]  # the last frame repeats
    assert any("padded to 4 frames" in n for n in item.notes)
    h_bar, w_bar = smart_resize(240, 320, 32, *frame_budget(PLUS, 4))
    assert item.tokens == video_tokens(4, h_bar, w_bar, 32)
    assert item.frame_times == [0.0, 0.5, 1.0, 1.5]
    odd = prepare_video(VideoPart(video=refs + refs[:2], fps=1.0), MediaOptions(model=PLUS))
    assert len(odd.sent) == 6 and odd.frame_times == [0, 1, 2, 3, 4, 5]


def test_frame_list_frames_are_prepared_to_the_frame_budget(tmp_path: Path) -> None:
    refs = [_png(tmp_path / f"big{i}.png", 2000, 1500, 60 + i) for i in range(4)]
    options = MediaOptions(model=PLUS, vl_high_resolution_images=True, detail="high")
    item = prepare_video(VideoPart(video=refs), options)
    low, high = frame_budget(PLUS, 4)
    assert item.width is not None and item.height is not None
    assert item.width * item.height <= high  # the video budget, not the 16384-token image one
    assert (item.height, item.width) == smart_resize(1500, 2000, 32, low, high)
    assert all(jpeg_or_png_size(u) == (item.width, item.height) for u in item.sent)


def jpeg_or_png_size(url: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(decode_data_url(url))) as img:
        return img.size


def test_frame_list_over_the_model_limit(tmp_path: Path) -> None:
    refs = [_png(tmp_path / f"s{i}.png", 64, 64, i) for i in range(8)]
    with pytest.raises(MediaError, match="8 frames; qwen3-vl-plus takes at most 6"):
        prepare_video(VideoPart(video=refs), MediaOptions(model=replace(PLUS, video_max_frames=6)))


def test_jpeg_frames_decode(clips: dict[str, Path]) -> None:
    sampled = sample_video(clips["mp4"], PLUS)
    arr = simplejpeg.decode_jpeg(sampled.frames[0])
    assert arr.shape == (256, 320, 3)


# --- fidelity: frames follow the images' encoding rule (qwenvl.media.images, "Encoding") -------------------------


def screen_frame(i: int, width: int, height: int) -> np.ndarray:
    """A screen recording's frame ``i``: a title bar, a build log in three colours scrolling by, a moving box."""
    from PIL import ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "#f3f3f3")
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, width, 40), fill="#2b579a")
    draw.text((16, 10), "Terminal - build log", font=ImageFont.load_default(size=18), fill="white")
    font = ImageFont.load_default(size=13)
    for row in range(12):
        colour = ("#c00000", "#1a7f37", "#222222")[(row + i) % 3]
        draw.text(
            (16, 60 + row * 20), f"[{i + row:04d}] compiling module_{(i + row) % 17} ... ok", font=font, fill=colour
        )
    draw.rectangle((16 + 10 * i, height - 30, 40 + 10 * i, height - 10), fill="#ff8800")
    return np.asarray(img)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("recordings")
    return {
        "camera": make_clip(d / "camera.mp4", frames=40, fps=10, width=960, height=540, draw=noisy_frame),
        "screen": make_clip(d / "screen.mp4", frames=40, fps=10, width=960, height=540, draw=screen_frame),
    }


def test_camera_frames_are_as_faithful_as_q90_in_fewer_bytes(recordings: dict[str, Path]) -> None:
    """Each frame is a JPEG at least as faithful as the plain q90 JPEG of its exact pixels (the resized frame),
    in fewer bytes. qwenvl used to send that plain JPEG (simplejpeg, standard tables)."""
    exact = sample_video(recordings["camera"], PLUS, output="array")
    sent = sample_video(recordings["camera"], PLUS)
    assert sent.mimes == ["image/jpeg"] * sent.nframes and sent.indices == exact.indices
    for data, pixels in zip(sent.frames, exact.frames, strict=True):
        frame = Image.fromarray(pixels)
        reference = corpus.plain_q90(frame)
        assert len(data) < len(reference)
        assert corpus.psnr(Image.open(io.BytesIO(data)), frame) >= corpus.psnr(Image.open(io.BytesIO(reference)), frame)


def test_screen_recording_frames_stay_visually_lossless_and_no_larger(recordings: dict[str, Path]) -> None:
    """A screen recording's frames are screenshots: each goes as PNG or full-chroma JPEG (coloured text keeps its
    edges), at least as faithful as the plain q90 JPEG and no larger. qwenvl used to send 4:2:0 q90."""
    exact = sample_video(recordings["screen"], PLUS, output="array")
    sent = sample_video(recordings["screen"], PLUS)
    for data, mime, pixels in zip(sent.frames, sent.mimes, exact.frames, strict=True):
        frame = Image.fromarray(pixels)
        assert images.looks_like_graphic(frame)
        reference = corpus.plain_q90(frame)
        decoded = Image.open(io.BytesIO(data))
        assert mime == f"image/{decoded.format.lower()}"
        assert decoded.format == "PNG" or corpus.full_chroma(decoded)
        assert len(data) <= len(reference)
        assert corpus.psnr(decoded, frame) >= corpus.psnr(Image.open(io.BytesIO(reference)), frame)


def test_frames_go_on_the_wire_under_their_own_type(recordings: dict[str, Path], tmp_path: Path) -> None:
    """Each data URL says what its frame is; the item's mime names every type its frames use."""
    item = prepare_video(VideoPart(video=str(recordings["screen"])), MediaOptions(model=PLUS))
    assert isinstance(item.sent, list)
    kinds = [u.split(";", 1)[0].removeprefix("data:") for u in item.sent]
    for url, kind in zip(item.sent, kinds, strict=True):
        with Image.open(io.BytesIO(decode_data_url(url))) as img:
            assert kind == f"image/{(img.format or '').lower()}"
    assert item.mime == frames_mime(kinds)
    shot = tmp_path / "shot.png"
    Image.fromarray(screen_frame(0, 320, 240)).save(shot)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(noisy_frame(0, 320, 240)).save(photo, quality=85)
    mixed = prepare_video(VideoPart(video=[str(shot), str(photo), str(photo), str(shot)]), MediaOptions(model=PLUS))
    assert mixed.mime == "image/png, image/jpeg"
    assert frames_mime(["image/jpeg"] * 3) == "image/jpeg"


def test_an_in_process_model_gets_the_exact_frames(
    recordings: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a local model (``keep_pixels``) a sampled video's frames are its exact pixels, never encoded: no JPEG
    round trip between the decoder and the model. Each frame is named by its content."""
    exact = sample_video(recordings["camera"], PLUS, output="array")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a frame kept in memory must not be encoded")

    monkeypatch.setattr(images, "encode_image", refuse)
    item = prepare_video(VideoPart(video=str(recordings["camera"])), MediaOptions(model=PLUS, keep_pixels=True))
    assert isinstance(item.sent, list) and isinstance(item.pixels, list) and len(item.pixels) == exact.nframes
    assert all(np.array_equal(np.asarray(p), a) for p, a in zip(item.pixels, exact.frames, strict=True))
    assert all(ref.startswith("memory://sha256:") for ref in item.sent) and len(set(item.sent)) == exact.nframes
    assert item.bytes_sent == 0 and item.mime == "image/x-raw-rgb"
    assert (item.width, item.height) == (exact.width, exact.height)
    assert item.tokens == video_tokens(exact.nframes, exact.height, exact.width, 32)


def test_a_clip_whose_frames_change_kind_names_both_types(isolated_env: Path) -> None:
    """Flat title cards (graphics: PNG) then camera footage (JPEG): each frame goes under its own type, the item
    names both, and `qwenvl tokens` shows both."""
    from conftest import run_cli

    def cards_then_camera(i: int, width: int, height: int) -> np.ndarray:
        return np.full((height, width, 3), 90, np.uint8) if i < 60 else noisy_frame(i, width, height)

    clip = make_clip(isolated_env / "mixed.mp4", draw=cards_then_camera)
    item = prepare_video(VideoPart(video=str(clip)), MediaOptions(model=PLUS))
    assert isinstance(item.sent, list)
    kinds = [u.split(";", 1)[0].removeprefix("data:") for u in item.sent]
    assert kinds == ["image/png"] * 4 + ["image/jpeg"] * 4
    assert item.mime == "image/png, image/jpeg"
    p = run_cli("tokens", "mixed.mp4", "--model", "qwen3-vl-plus")
    assert p.returncode == 0, p.stderr
    assert "8 frames of 320x256 PNG+JPEG" in p.stdout
