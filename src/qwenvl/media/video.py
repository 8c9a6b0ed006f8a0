"""Video: probe a local file with PyAV and sample it into a frame list exactly the way the service samples.

The sampling rule (qwen-vl-utils ``smart_nframes`` and the billing page; dashscope-api.md §4.2):

* ``nframes = total_frames / video_fps * fps`` (``fps`` defaults to ``VIDEO_FPS``), clamped to
  ``[VIDEO_MIN_FRAMES, min(max_frames, total_frames)]`` and floored to an even count (``VIDEO_FRAME_FACTOR``);
* sample ``i`` is source frame ``round(linspace(0, total_frames - 1, nframes)[i])`` (round half to even);
* every frame is resized with ``smart_resize`` to the per-frame budget
  ``max_pixels = max(min(frame cap, total cap / nframes * 2), min_pixels * 1.05)`` and encoded.

Decisions (documented in the module so that callers and tests agree):

* **Short videos.** A video with 1-3 frames is *padded*: it is sampled at ``VIDEO_MIN_FRAMES`` positions of the
  same linspace rule, so frames repeat (3 frames give 0, 1, 1, 2) and a note says so. qwen-vl-utils returns
  2 frames for 2-3 frame videos and fails on 1; the service needs at least 4, so padding is the only way such a
  clip can be sent. A file with no decodable frame is an error.
* **Decoding.** One demux pass (packets only, nothing decoded) gives every frame's timestamp and the keyframes.
  From them ``choose_strategy`` counts the frames each way must decode: one sequential pass (decodes up to the
  last sample) or a seek plan (runs of samples, each decoded from the keyframe before it up to its last sample
  and no further: the decoder is drained there; wins when samples lie further apart than the keyframe
  interval). Both give the same frames, and only the sampled frames are converted (resized in swscale straight
  from the decoder's YUV). The decoder runs FFmpeg's frame threads on all cores (``thread_type="AUTO"``,
  automatic count: one per core plus one; a seek flushes them but keeps them). For H.264, frames that no other
  frame refers to are not even decoded unless sampled (``skip_frame=NONREF`` per packet), which cannot change
  any other frame.
* **Damaged files.** An empty file, a file that is not a video by its bytes, one PyAV cannot open, an
  audio-only file, one with no frames, and one whose index lists over 5% more frames than it holds
  (truncated) are MediaErrors naming the file. A sample whose frame does not decode is replaced by the
  nearest frame that does, with a note.
* **Rotation.** A display matrix (phone videos) is applied, so the model sees the video upright.
* **Encoding.** Each sampled frame (the exact pixels of the resize) is encoded by the images' rule
  (``images.encode_image``), decided per frame: a camera frame as JPEG at least as faithful as a plain
  quality-90 JPEG of it and no larger; a screen recording's frame, which is a screenshot, as PNG or full-chroma
  JPEG (visually lossless). The cost, against the plain quality-90 encoding it replaces, is in bench/bench_video.py.
* ``prepare=False`` does not apply: a local video is always sampled (sending it whole needs an upload).
"""

from __future__ import annotations

import bisect
import io
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from PIL import Image

from qwenvl.errors import MediaError
from qwenvl.media import images
from qwenvl.media.sources import DAMAGED_HINT, sniff
from qwenvl.models import (
    MAX_ASPECT_RATIO,
    VIDEO_FPS,
    VIDEO_FRAME_FACTOR,
    VIDEO_MIN_FRAME_TOKENS,
    VIDEO_MIN_FRAMES,
    ModelInfo,
)

# Containers we accept, identified by content (``sniff``). The issue names mp4, mov, mkv, webm and avi; the
# older official doc also lists FLV and WMV, which PyAV reads just as well.
VIDEO_MIMES = frozenset(
    {
        "video/mp4",
        "video/quicktime",
        "video/x-matroska",
        "video/webm",
        "video/x-msvideo",
        "video/x-flv",
        "video/x-ms-wmv",
    }
)
SUPPORTED = "MP4, MOV, MKV, WebM, AVI, FLV, WMV"
MIN_PIXELS_HEADROOM = 1.05  # the per-frame budget is never below min_pixels * 1.05 (the service's formula)
# The fixed price of one seek, in decoded frames: the seek itself, the decoder flush and refilling the
# frame-thread pipeline. An estimate (bench/bench_video.py shows both ways); it tips close calls to one pass.
SEEK_COST_FRAMES = 8
# A file whose index lists more frames than its packets hold is cut short: refused when over 5% (and 2 frames)
# are missing, rather than sampled from the part that is there.
TRUNCATION_SHARE = 0.05
TRUNCATION_SLACK = 2

Strategy = Literal["auto", "seek", "sequential"]


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, from its container and packets (nothing decoded but the first frame)."""

    duration: float  # seconds, first frame to the end of the last
    fps: float  # average frame rate
    frames: int
    width: int  # as displayed (rotation applied)
    height: int
    codec: str
    keyframe_interval: float  # mean distance between keyframes, in frames
    rotation: int = 0  # degrees counter-clockwise applied to display the frames upright


@dataclass
class _Index:
    """One demux pass: every frame's presentation timestamp (sorted) and which of them are keyframes."""

    pts: list[int]
    keyframes: list[int]  # presentation indices of keyframes, ascending
    time_base: Fraction
    fps: float
    codec: str
    coded_width: int
    coded_height: int

    @property
    def frames(self) -> int:
        return len(self.pts)

    def time(self, i: int) -> float:
        return float((self.pts[i] - self.pts[0]) * self.time_base)

    @property
    def duration(self) -> float:
        return self.time(self.frames - 1) + 1 / self.fps if self.frames else 0.0

    @property
    def keyframe_interval(self) -> float:
        return self.frames / max(len(self.keyframes), 1)

    def keyframe_before(self, i: int) -> int:
        return _keyframe_before(self.keyframes, i)

    def position(self, pts: int) -> int:
        """The presentation index of the first frame at or after ``pts``."""
        return min(bisect.bisect_left(self.pts, pts), self.frames - 1)


@dataclass
class SampledVideo:
    """A video as the service will see it: the sampled frames, their times and the size they were sent at."""

    frames: list[Any]  # encoded bytes (output="encoded") or RGB uint8 arrays (output="array"), one per sample
    mimes: list[str]  # each frame's Content-Type (output="encoded"; empty for arrays)
    indices: list[int]  # source frame index of each sample (the rule's)
    times: list[float]  # presentation time of each sent frame, seconds from the first frame
    info: VideoInfo
    width: int  # of every frame as sent
    height: int
    fps: float  # the sampling rate asked for
    strategy: Literal["seek", "sequential"]
    decoded: int  # frames the decoder produced (a measure of the work done)
    notes: list[str] = field(default_factory=list)

    @property
    def nframes(self) -> int:
        return len(self.frames)

    @property
    def sample_fps(self) -> float:
        """The rate the frame list stands for (qwen-vl-utils: nframes / total_frames * video_fps). It differs
        from ``fps`` when the count was clamped or padded; a frame list's ``fps`` on the wire should be this."""
        return self.nframes / self.info.frames * self.info.fps


# --- the rule (pure functions) ------------------------------------------------------------------------------


def _ceil_even(x: float) -> int:
    return math.ceil(x / VIDEO_FRAME_FACTOR) * VIDEO_FRAME_FACTOR


def _floor_even(x: float) -> int:
    return math.floor(x / VIDEO_FRAME_FACTOR) * VIDEO_FRAME_FACTOR


def sample_count(
    total_frames: int, video_fps: float, fps: float = VIDEO_FPS, *, max_frames: int, min_frames: int = VIDEO_MIN_FRAMES
) -> int:
    """How many frames the service samples from a video (qwen-vl-utils ``smart_nframes`` with padding).

    ``total_frames / video_fps * fps``, clamped to ``[min_frames, min(max_frames, total_frames)]`` and floored
    to an even count. A video shorter than ``min_frames`` gives ``min_frames`` (frames repeat; see the module).
    """
    if total_frames <= 0:
        raise ValueError("a video has no frames")
    low = _ceil_even(min_frames)
    if total_frames < low:
        return low
    high = _floor_even(min(max_frames, total_frames))
    wanted = total_frames / video_fps * fps if video_fps > 0 else low
    return max(_floor_even(min(max(wanted, low), high, total_frames)), low)


def billed_frame_count(
    total_frames: int, video_fps: float, fps: float = VIDEO_FPS, *, max_frames: int, min_frames: int = VIDEO_MIN_FRAMES
) -> int:
    """How many frames the service counts for a video it samples itself (a video sent whole).

    The billing page's rule (its video example code, ``smart_nframes`` in the official ``token_calculate``;
    reference/dashscope-api.md §4.2): ``int(min(max(total_frames / video_fps * fps, min_frames), max_frames,
    total_frames))``, with **no** rounding to an even count, where qwen-vl-utils floors to even. Tokens then
    count ``ceil(n / 2)`` temporal groups, so an odd count costs one group more than qwen-vl-utils predicts.
    The billing page is followed because it is the one that describes billing; its example prints no figures
    we could check against (searched 2026-11), so its code is the evidence. Frames qwenvl samples itself are
    sent as an even list (``sample_count``) and billed as such.
    """
    if total_frames <= 0:
        raise ValueError("a video has no frames")
    wanted = total_frames / video_fps * fps if video_fps > 0 else min_frames
    return max(1, int(min(max(wanted, min_frames), max_frames, total_frames)))


def sample_indices(total_frames: int, nframes: int) -> list[int]:
    """Source frame indices: ``round(linspace(0, total_frames - 1, nframes))``, rounding half to even."""
    if nframes == 1:
        return [0]
    step = (total_frames - 1) / (nframes - 1)
    return [min(round(i * step), total_frames - 1) for i in range(nframes)]


def frame_budget(
    model: ModelInfo, nframes: int, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> tuple[int, float]:
    """(min_pixels, max_pixels) for each frame of an ``nframes`` video (the service's formula, §4.2).

    ``max(min(frame cap, total cap / nframes * 2), min_pixels * 1.05)``; a user's ``max_pixels`` can only
    lower it, never below ``min_pixels``. The value stays a float, as in the reference, so that
    ``smart_resize`` gives exactly the service's size.
    """
    ppt = model.pixels_per_token
    low = min_pixels if min_pixels is not None else VIDEO_MIN_FRAME_TOKENS * ppt
    frame_cap = model.video_frame_tokens * ppt
    total_cap = model.video_total_tokens * ppt
    high: float = max(min(frame_cap, total_cap / nframes * VIDEO_FRAME_FACTOR), int(low * MIN_PIXELS_HEADROOM))
    if max_pixels is not None:
        high = max(min(high, max_pixels), low)
    return low, high


@dataclass(frozen=True)
class FramePlan:
    """How a video is sent as frames: how many, each frame's budget and the size every frame is sent at."""

    nframes: int
    min_pixels: int
    max_pixels: float
    height: int  # of every frame as sent (a multiple of the model's factor)
    width: int


def frame_plan(
    model: ModelInfo,
    total_frames: int,
    video_fps: float,
    fps: float,
    width: int,
    height: int,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    label: str = "video",
    service_sampled: bool = False,
) -> FramePlan:
    """The service's sampling and size rule for a ``width`` x ``height`` video of ``total_frames`` frames at
    ``video_fps``, sampled at ``fps``: ``sample_count``, then ``frame_budget``, then ``smart_resize``.

    The one place where the three are chained: ``sample_video`` (before decoding), a whole video sent for the
    service to sample, and estimate-only preparation all use it. MediaError naming ``label`` when the frames
    cannot be sent at that budget (aspect ratio, a side that would be 0 px). ``service_sampled``: the video is
    sent whole and the service samples it, so the count is the billing page's (``billed_frame_count``).
    """
    from qwenvl.media.resize import smart_resize

    ratio = max(width, height) / min(width, height) if min(width, height) > 0 else math.inf
    if ratio > MAX_ASPECT_RATIO:  # no budget or rate changes the frames' shape
        raise MediaError(
            f"{label}: its {width}x{height} frames are {ratio:.0f}:1, over the {MAX_ASPECT_RATIO}:1 the service allows",
            source=label,
            hint="Crop the video, e.g. `ffmpeg -i in.mp4 -vf crop=...`: no pixel budget or frame rate changes its "
            "shape.",
        )
    count = billed_frame_count if service_sampled else sample_count
    nframes = count(total_frames, video_fps, fps, max_frames=model.video_max_frames)
    low, high = frame_budget(model, nframes, min_pixels=min_pixels, max_pixels=max_pixels)
    try:
        h_bar, w_bar = smart_resize(height, width, factor=model.factor, min_pixels=low, max_pixels=high)
    except ValueError as exc:
        raise MediaError(f"{label}: {exc}", source=label, hint="Raise --max-pixels, or lower --fps.") from None
    if not (h_bar and w_bar):
        raise MediaError(
            f"{label}: {width}x{height} frames do not fit the per-frame budget of {high:.0f} px",
            source=label,
            hint="Raise --max-pixels, or lower --fps.",
        )
    return FramePlan(nframes, low, high, h_bar, w_bar)


def sampling_notes(
    total_frames: int, video_fps: float, duration: float, nframes: int, fps: float, model: ModelInfo
) -> list[str]:
    """The notes on how a video is sampled: the count and rate, and whether it was padded or clamped."""
    notes: list[str] = []
    sample_fps = nframes / total_frames * video_fps
    if abs(sample_fps - fps) > 0.02 * fps:
        notes.append(f"{nframes} frames at {sample_fps:.3g} fps from {duration:.1f} s ({fps:g} fps asked)")
    else:
        notes.append(f"{nframes} frames at {fps:g} fps from {duration:.1f} s")
    if total_frames < nframes:
        notes.append(
            f"padded: the video has {total_frames} frame{'s' if total_frames != 1 else ''}; the service "
            f"needs at least {nframes}, so frames repeat"
        )
    elif nframes == _floor_even(model.video_max_frames) and total_frames / video_fps * fps > nframes:
        notes.append(f"clamped to {model.name}'s limit of {nframes} frames")
    return notes


def frame_list_count(count: int, model: ModelInfo) -> int:
    """How many frames a list of ``count`` frame images is sent as: padded to at least ``VIDEO_MIN_FRAMES``
    and to an even count by repeating the last frame (qwen-vl-utils pads odd lists the same way).

    More frames than the model takes is an error, not a silent trim: the list's frames have no times, so
    dropping some would change what the model is told about the timeline.
    """
    if count <= 0:
        raise MediaError(
            "a video frame list is empty", source="video", hint="Give the frames as image files, in order."
        )
    limit = _floor_even(model.video_max_frames)
    if count > limit:
        raise MediaError(
            f"a video frame list has {count} frames; {model.name} takes at most {limit}",
            source="video",
            hint="Sample fewer frames, or send the video file and let qwenvl sample it at --fps.",
        )
    return max(_ceil_even(count), _ceil_even(VIDEO_MIN_FRAMES))


def choose_strategy(
    indices: Sequence[int], keyframes: Sequence[int], *, seek_cost: int = SEEK_COST_FRAMES
) -> tuple[Literal["seek", "sequential"], int, int]:
    """Seek per sample or decode once: (choice, frames a seek plan decodes, frames one pass decodes).

    One pass decodes every frame up to the last sample. A seek plan walks the samples in order and, for each,
    either keeps decoding from where it is or seeks to the keyframe before the sample, whichever is cheaper
    (a seek costs ``seek_cost`` frames on top). Seeking wins when samples lie further apart than the keyframe
    interval.
    """
    wanted = sorted(set(indices))
    sequential = wanted[-1] + 1 if wanted else 0
    seek = _seek_plan_cost(wanted, list(keyframes), seek_cost)
    return ("seek" if seek < sequential else "sequential"), seek, sequential


def _keyframe_before(keyframes: list[int], i: int) -> int:
    pos = bisect.bisect_right(keyframes, i) - 1
    return keyframes[pos] if pos >= 0 else 0


def _seek_segments(wanted: list[int], keyframes: list[int], seek_cost: int) -> list[list[int]]:
    """The seek plan: the sorted samples split into runs, each decoded from one seek to the keyframe before its
    first sample. A sample joins the run before it when decoding on from that run's last sample is no dearer
    than a seek (``seek_cost`` frames on top of the frames from the keyframe)."""
    segments: list[list[int]] = []
    for t in wanted:
        k = _keyframe_before(keyframes, t)
        if segments and segments[-1][-1] < t and t - segments[-1][-1] <= t - k + 1 + seek_cost:
            segments[-1].append(t)
        else:
            segments.append([t])
    return segments


def _seek_plan_cost(wanted: list[int], keyframes: list[int], seek_cost: int) -> int:
    cost = 0
    for run in _seek_segments(wanted, keyframes, seek_cost):
        cost += run[0] - _keyframe_before(keyframes, run[0]) + 1 + seek_cost + run[-1] - run[0]
    return cost


# --- probing --------------------------------------------------------------------------------------------------

VideoInput = str | Path | bytes


def _label(src: VideoInput, label: str | None) -> str:
    if label:
        return label
    return f"video ({len(src)} bytes)" if isinstance(src, bytes) else str(src)


def _head(src: VideoInput, label: str) -> bytes:
    if isinstance(src, bytes):
        return src[:4096]
    try:
        with open(src, "rb") as fh:
            return fh.read(4096)
    except OSError as exc:
        raise MediaError(
            f"cannot read {label}: {exc.strerror or exc}", source=label, hint="Check the file's permissions."
        ) from None


def check_video_content(src: VideoInput, label: str | None = None) -> str:
    """The MIME type of a video by its bytes; MediaError for an empty file or anything that is not a video."""
    name = _label(src, label)
    head = _head(src, name)
    if not head:
        raise MediaError(f"{name} is empty (0 bytes)", source=name, hint="Check the file: it has no content.")
    mime = sniff(head)
    if mime in VIDEO_MIMES:
        return mime or ""
    found = f" (it is {mime})" if mime else ""
    raise MediaError(f"{name} is not a readable video{found}", source=name, hint=f"Supported videos: {SUPPORTED}.")


# Video MIME types (``sniff``) -> the format's name, as ``SUPPORTED`` says it.
_FORMAT_NAMES = {
    "video/mp4": "MP4",
    "video/quicktime": "MOV",
    "video/x-matroska": "MKV",
    "video/webm": "WebM",
    "video/x-msvideo": "AVI",
    "video/x-flv": "FLV",
    "video/x-ms-wmv": "WMV",
}


def _open(src: VideoInput, name: str) -> Any:
    """The container of ``src``; MediaError when it cannot be opened: a file that starts as a supported video
    (its magic number) is said to be cut short or damaged (an unfinished download or copy), anything else to be
    no supported video."""
    try:
        return av.open(io.BytesIO(src) if isinstance(src, bytes) else str(src), "r")
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        kind = _FORMAT_NAMES.get(sniff(_head(src, name)) or "")
        if kind is not None:  # the format is one we read: the file itself is incomplete or broken
            raise MediaError(
                f"{name} is not a readable video: it starts like {'an' if kind[0] in 'AMF' else 'a'} {kind} but is "
                f"cut short or damaged ({_reason(exc)})",
                source=name,
                hint=DAMAGED_HINT,
            ) from None
        raise MediaError(
            f"{name} is not a readable video ({_reason(exc)})", source=name, hint=f"Supported videos: {SUPPORTED}."
        ) from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(": '", 1)[0].strip() or type(exc).__name__


def _video_stream(container: Any, name: str) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        what = f"only {', '.join(kinds)}" if kinds else "no streams"
        raise MediaError(
            f"{name} has no video stream ({what})",
            source=name,
            hint="Give a file with a video track; audio is not understood by Qwen-VL models.",
        )
    return container.streams.video[0]


def _index(container: Any, stream: Any, name: str) -> _Index:
    """Demux every packet of the video stream (no decoding): timestamps and keyframe flags."""
    pts: list[int] = []
    key_pts: list[int] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None:  # no timestamps at all: fall back to frame order
                ts = len(pts)
            pts.append(ts)
            if packet.is_keyframe:
                key_pts.append(ts)
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise MediaError(
            f"{name} is not a readable video ({_reason(exc)})",
            source=name,
            hint="Check the video: play it, or convert it again (e.g. to H.264 MP4).",
        ) from None
    if not pts:
        raise MediaError(
            f"{name} is not a readable video (its video stream has no frames)",
            source=name,
            hint="Check the video: play it, or convert it again (e.g. to H.264 MP4).",
        )
    declared = stream.frames or 0
    if declared > len(pts) + TRUNCATION_SLACK and len(pts) < declared * (1 - TRUNCATION_SHARE):
        raise MediaError(
            f"{name} is truncated or damaged: its index lists {declared} frames but only {len(pts)} can be read",
            source=name,
            hint="Re-download or re-export the file.",
        )
    pts.sort()
    positions = sorted({bisect.bisect_left(pts, k) for k in key_pts}) or [0]
    time_base = stream.time_base or Fraction(1, 1)
    rate = stream.average_rate or stream.guessed_rate
    if rate:
        fps = float(rate)
    else:
        span = float((pts[-1] - pts[0]) * time_base)
        fps = (len(pts) - 1) / span if span > 0 and len(pts) > 1 else VIDEO_FPS
    ctx = stream.codec_context
    return _Index(pts, positions, time_base, fps, ctx.name, ctx.width, ctx.height)


def _info(index: _Index, rotation: int, width: int | None = None, height: int | None = None) -> VideoInfo:
    w, h = width or index.coded_width, height or index.coded_height
    if _quarter_turns(rotation) % 2:
        w, h = h, w
    return VideoInfo(
        duration=round(index.duration, 6),
        fps=index.fps,
        frames=index.frames,
        width=w,
        height=h,
        codec=index.codec,
        keyframe_interval=index.keyframe_interval,
        rotation=rotation,
    )


def _quarter_turns(rotation: float) -> int:
    return round(rotation / 90) % 4


def probe_video(src: VideoInput, label: str | None = None) -> VideoInfo:
    """Duration, frame rate, frame count, displayed size, codec and keyframe spacing of a local video.

    Reads the container and its packets (no frame is decoded except the first, for its rotation and to prove
    the stream decodes). Raises MediaError naming the file for an empty, unreadable or audio-only file.
    """
    name = _label(src, label)
    check_video_content(src, name)
    with _open(src, name) as container:
        stream = _video_stream(container, name)
        index = _index(container, stream, name)
    with _open(src, name) as container:
        stream = _video_stream(container, name)
        first = _first_frame(container, stream, name)
    return _info(index, first.rotation, first.width, first.height)


def _first_frame(container: Any, stream: Any, name: str) -> Any:
    try:
        for frame in container.decode(stream):
            return frame
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise MediaError(
            f"{name} is not a readable video ({_reason(exc)})",
            source=name,
            hint="Check the video: play it, or convert it again (e.g. to H.264 MP4).",
        ) from None
    raise MediaError(
        f"{name} is not a readable video (no frame decodes)",
        source=name,
        hint="Check the video: play it, or convert it again (e.g. to H.264 MP4).",
    )


# --- sampling ---------------------------------------------------------------------------------------------------


def sample_video(
    src: VideoInput,
    model: ModelInfo,
    *,
    fps: float | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    strategy: Strategy = "auto",
    output: Literal["encoded", "array"] = "encoded",
    label: str | None = None,
) -> SampledVideo:
    """Sample a local video the way the service does and convert only the sampled frames.

    ``fps`` defaults to ``VIDEO_FPS``; the frame count is clamped to the model's limits (see ``sample_count``);
    each frame is resized to ``frame_budget`` with ``smart_resize`` and, with ``output="encoded"``, encoded by
    ``images.encode_image`` (JPEG, or PNG/full-chroma JPEG for a screen frame; ``SampledVideo.mimes`` says which).
    Every failure is a MediaError naming the file.
    """
    from qwenvl.media.resize import smart_resize

    name = _label(src, label)
    rate = fps if fps is not None else VIDEO_FPS
    if not rate > 0:
        raise MediaError(f"fps must be positive, got {rate}", source=name, hint="Give a positive --fps, e.g. --fps 2.")
    check_video_content(src, name)
    with _open(src, name) as container:
        index = _index(container, _video_stream(container, name), name)

    total = index.frames
    # The rule and its own checks (aspect ratio), before anything is decoded; the size as sent comes from the
    # first frame (its rotation decides), through the same budget.
    plan = frame_plan(
        model,
        total,
        index.fps,
        rate,
        index.coded_width,
        index.coded_height,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        label=name,
    )
    nframes, low, high = plan.nframes, plan.min_pixels, plan.max_pixels
    indices = sample_indices(total, nframes)
    notes: list[str] = []
    chosen = choose_strategy(indices, index.keyframes)[0] if strategy == "auto" else strategy
    size: list[int] = []  # [width, height] as sent, fixed by the first frame (its rotation decides)

    def convert(frame: Any) -> Any:
        turns = _quarter_turns(frame.rotation)
        if not size:
            w, h = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
            h_bar, w_bar = smart_resize(h, w, factor=model.factor, min_pixels=low, max_pixels=high)
            size.extend([w_bar, h_bar])
        w_bar, h_bar = size
        dst_w, dst_h = (h_bar, w_bar) if turns % 2 else (w_bar, h_bar)
        kwargs: dict[str, Any] = {}
        if frame.color_range:  # a tagged range (full-range "yuvj" sources); untagged means limited
            kwargs["src_color_range"] = frame.color_range
        rgb = frame.to_ndarray(width=dst_w, height=dst_h, format="rgb24", interpolation="BICUBIC", **kwargs)
        if turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, turns))
        return images.encode_image(Image.fromarray(rgb)) if output == "encoded" else (rgb, None)

    with _open(src, name) as container:
        stream = _video_stream(container, name)
        stream.thread_type = "AUTO"
        try:
            if chosen == "seek" and index.frames > 1:
                picked, decoded = _decode_seeking(container, stream, index, indices, convert)
            else:
                chosen = "sequential"
                picked, decoded = _decode_sequential(container, stream, index, indices, convert)
        except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
            raise MediaError(
                f"{name} is not a readable video ({_reason(exc)})",
                source=name,
                hint="Check the video: play it, or convert it again (e.g. to H.264 MP4).",
            ) from None
    if not picked:
        raise MediaError(
            f"{name} is not a readable video (no frame decodes)",
            source=name,
            hint="Check the video: play it, or convert it again (e.g. to H.264 MP4).",
        )
    frames = [picked[i][0][0] for i in indices]
    mimes = [picked[i][0][1] for i in indices] if output == "encoded" else []
    times = [picked[i][1] for i in indices]
    stand_ins = sum(1 for i in set(indices) if abs(picked[i][1] - index.time(i)) > 0.5 / index.fps)
    if stand_ins:
        notes.append(
            f"{stand_ins} sampled frame{'s' if stand_ins > 1 else ''} did not decode; the nearest frame "
            "that did stands in"
        )
    rotation = picked[indices[0]][2]
    info = _info(index, rotation)
    sampled = SampledVideo(
        frames=frames,
        mimes=mimes,
        indices=indices,
        times=times,
        info=info,
        width=size[0],
        height=size[1],
        fps=rate,
        strategy=chosen,
        decoded=decoded,
        notes=notes,
    )
    notes[:0] = sampling_notes(total, index.fps, info.duration, nframes, rate, model)
    return sampled


Picked = dict[int, tuple[Any, float, int]]  # source index -> ((converted frame, mime or None), time, rotation)


def _frame_time(frame: Any, index: _Index, fallback: int) -> float:
    if frame.pts is None:
        return index.time(min(fallback, index.frames - 1))
    return float((frame.pts - index.pts[0]) * index.time_base)


def _decode_sequential(
    container: Any, stream: Any, index: _Index, indices: list[int], convert: Callable[[Any], Any]
) -> tuple[Picked, int]:
    """One threaded pass; each sample takes the first decoded frame at or after its timestamp."""
    wanted = sorted(set(indices))
    picked: Picked = {}
    j, n, last = 0, -1, None
    for frame in _decoded(container, stream, {index.pts[i] for i in wanted}):
        n += 1
        done = None
        while j < len(wanted) and (n >= wanted[j] if frame.pts is None else frame.pts >= index.pts[wanted[j]]):
            if done is None:
                done = (convert(frame), _frame_time(frame, index, n), frame.rotation)
            picked[wanted[j]] = done
            j += 1
        if j == len(wanted):
            return picked, n + 1
        last = (frame, n)
    if last is not None:  # the stream ended early (frames that do not decode): the last frame stands in
        frame, n_last = last
        done = (convert(frame), _frame_time(frame, index, n_last), frame.rotation)
        for t in wanted[j:]:
            picked[t] = done
    return picked, n + 1


def _decode_seeking(
    container: Any, stream: Any, index: _Index, indices: list[int], convert: Callable[[Any], Any]
) -> tuple[Picked, int]:
    """Decode each run of the seek plan (``_seek_segments``) from the keyframe before it; the same frames as
    ``_decode_sequential``: each sample takes the first decoded frame at or after its timestamp.

    Within a run the decoder is fed only up to the packet of the run's last sample and then drained, so the
    frame threads do not decode packets past it that the next seek would throw away. When a sample's own frame
    does not decode, the run is decoded again without that stop, so the frame after it can stand in.
    """
    wanted = sorted(set(indices))
    wanted_pts = {index.pts[i] for i in wanted}
    picked: Picked = {}
    decoded = 0
    prev: tuple[Any, float, int] | None = None  # the last sample's result
    cur = -1  # presentation index of the frame it took
    for run in _seek_segments(wanted, index.keyframes, SEEK_COST_FRAMES):
        k = index.keyframe_before(run[0])
        stop = {index.pts[t] for t in run}
        frames: Iterator[Any] | None = None
        for t in run:
            if prev is not None and cur >= t:  # the frame taken for the previous sample is also this one's
                picked[t] = prev
                continue
            target = index.pts[t]
            if frames is None:
                frames, frame, n = _seek(container, stream, index, k, target, wanted_pts, stop)
            else:
                frame = next(frames, None)
                n = int(frame is not None)
            frame, before, more = _first_at(frames, frame, target)
            decoded += n + more
            if stop and (frame is None or (frame.pts is not None and frame.pts != target)):
                # This sample's own frame did not decode, and the stop may have left out the frames after it:
                # decode the run again without a stop, so the frame that stands in is the one-pass path's.
                stop = set()
                frames, frame, n = _seek(container, stream, index, k, target, wanted_pts, stop)
                frame, before, more = _first_at(frames, frame, target)
                decoded += n + more
            if frame is None:  # past the last frame that decodes: the last one decoded stands in
                if before is not None:
                    frame = before
                elif prev is not None:
                    picked[t] = prev
                    continue
                else:
                    return picked, decoded
            prev = picked[t] = (convert(frame), _frame_time(frame, index, t), frame.rotation)
            cur = index.position(frame.pts) if frame.pts is not None else t
    return picked, decoded


def _first_at(frames: Iterator[Any], frame: Any, target: int) -> tuple[Any, Any, int]:
    """From ``frame`` on, the first frame of ``frames`` at or after ``target`` (None past the last; a frame
    without a timestamp is taken as it comes), the frame passed just before it (None if none was) and how
    many more frames that decoded."""
    before, more = None, 0
    while frame is not None and frame.pts is not None and frame.pts < target:
        before, frame = frame, next(frames, None)
        more += frame is not None
    return frame, before, more


def _seek(
    container: Any, stream: Any, index: _Index, k: int, target: int, wanted: set[int], stop: set[int]
) -> tuple[Iterator[Any], Any, int]:
    """Seek so that decoding starts at or before ``target``: to the keyframe ``k``, stepping back a keyframe
    when the container lands after the target (an index of decode times, as in MP4 with B-frames).
    Returns the decode iterator (``_decoded`` with ``stop``), its first frame and how many frames were
    decoded."""
    pos = bisect.bisect_left(index.keyframes, k)
    decoded = 0
    while True:
        key = index.keyframes[pos] if pos >= 0 else 0
        container.seek(index.pts[key], stream=stream, backward=True, any_frame=False)
        frames = _decoded(container, stream, wanted, stop)
        first = next(frames, None)
        decoded += first is not None
        if first is None or first.pts is None or first.pts <= target or pos <= 0:
            return frames, first, decoded
        pos -= 1


def _decoded(container: Any, stream: Any, wanted: set[int], stop: set[int] | None = None) -> Iterator[Any]:
    """Decode the video stream from where the container is.

    For H.264, a frame that no other frame refers to (``nal_ref_idc`` 0) is not decoded at all unless it is
    wanted: skipping it cannot change any other frame, so the samples come out identical and the decoder does
    less work. With ``stop`` (timestamps), once the packets of all those frames are sent the decoder is
    drained and nothing further is read: every frame up to them in decode order comes out, and the frame
    threads (which decode a few packets ahead of what they return) decode nothing past them.
    """
    ctx = stream.codec_context
    can_skip = ctx.name == "h264"
    mode = None
    left = set(stop) if stop else None
    for packet in container.demux(stream):
        if can_skip:
            skip = "DEFAULT" if packet.pts is None or packet.size == 0 or packet.pts in wanted else "NONREF"
            if skip != mode:
                ctx.skip_frame = mode = skip
        yield from packet.decode()
        ts = packet.pts if packet.pts is not None else packet.dts  # as the index has it (``_index``)
        if left and packet.size and ts in left:
            left.discard(ts)
            if not left:
                yield from ctx.decode(None)  # drain; the next seek's flush makes the decoder ready again
                return
