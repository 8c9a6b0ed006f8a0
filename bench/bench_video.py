"""Benchmark: 16 frames sampled from a 60 s 1280x720 H.264 clip (issue 3, point 9b). Not run in CI.

    /work/main/.venv/bin/python bench/bench_video.py [--repeat 3] [--keep DIR] [--no-write]

Generates its inputs with PyAV (nothing is downloaded): a 60 s, 30 fps, 1280x720 clip of a moving gradient
and checkerboard with fresh noise, encoded with libx264 (preset veryfast, CRF 23, x264's default keyint of
250 frames, about 4 Mbit/s), and the same content with a keyframe every 30 frames. ``--keep DIR`` keeps the
clips there and reuses them on the next run. In one run, on the same machine, it times:

  (i)   ours: ``qwenvl.media.video.sample_video`` at 2 fps with max_frames 16 (the clamp gives 16 frames),
        frames as RGB arrays and as JPEG (resized to qwen3-vl-plus's per-frame budget);
  (ii)  reading every frame into arrays as qwen-vl-utils' torchvision backend does. torchvision.io.read_video
        decodes with PyAV's default (slice) threading, keeps every frame, converts each with
        ``frame.to_rgb().to_ndarray()``, stacks them and then indexes the samples; this is emulated with PyAV
        directly (torchvision 0.29 no longer ships its video decoder). A lighter variant that converts every
        frame with threaded decoding and keeps none is reported too;
  (iii) merely decoding every frame (threaded, no conversion): the floor for a sequential decoder.

Targets: (i) at least 5x faster than (ii), within 1.5x of (iii), and the same frame times as the sampling
rule. When ``bench/.venv-ref`` exists, real qwen-vl-utils ``fetch_video`` is tried as well. Results go to
``bench/RESULTS.md`` under "## Video sampling" (through ``bench/results_md.py``; other sections stay).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import numpy as np
from results_md import machine, write_section  # bench/results_md.py: one writer for every section

from qwenvl.media.video import choose_strategy, probe_video, sample_count, sample_indices, sample_video
from qwenvl.models import model_info

HERE = Path(__file__).resolve().parent
HEADING = "Video sampling"
SECONDS, FPS, WIDTH, HEIGHT = 60, 30, 1280, 720
SAMPLES = 16


# --- inputs ---------------------------------------------------------------------------------------------------

def make_clip(path: Path, *, gop: int | None = None, noise: int = 26) -> None:
    """A moving gradient and checkerboard with fresh noise each frame (a pool of 64 noise frames, far more
    than the encoder's reference window), so the encoder sees camera-like texture."""
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, noise, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(64)]
    period = 512
    x = np.arange(WIDTH + period)[None, :]
    y = np.arange(HEIGHT)[:, None]
    texture = np.empty((HEIGHT, WIDTH + period, 3), np.uint8)
    texture[..., 0] = (x * 255 // period) % 256 // 2 + 64
    texture[..., 1] = y * 200 // HEIGHT
    texture[..., 2] = ((x // 64 + y // 64) % 2) * 120 + 40
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast"}
        stream.codec_context.thread_type = "FRAME"  # frame threads and one slice per frame, as ffmpeg -c:v libx264
        if gop:
            stream.codec_context.gop_size = gop
        for i in range(SECONDS * FPS):
            off = (i * 6) % period
            frame = av.VideoFrame.from_ndarray(texture[:, off:off + WIDTH] + pool[i % len(pool)], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def clip(directory: Path, name: str, gop: int | None) -> Path:
    path = directory / name
    if not path.exists():
        t = time.perf_counter()
        make_clip(path, gop=gop)
        print(f"generated {path.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return path


# --- the ways to read 16 frames ---------------------------------------------------------------------------------

def floor_decode(path: Path) -> int:
    """(iii) decode every frame, convert none."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def torchvision_way(path: Path) -> np.ndarray:
    """(ii) torchvision.io.read_video as qwen-vl-utils calls it, then ``video[idx]``."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]  # default threading, as torchvision leaves it
        frames = {frame.pts: frame for frame in container.decode(stream)}
        video_fps = float(stream.average_rate)
    arrays = [frames[pts].to_rgb().to_ndarray() for pts in sorted(frames)]
    video = np.stack(arrays).transpose(0, 3, 1, 2)  # TCHW
    total = video.shape[0]
    nframes = sample_count(total, video_fps, 2.0, max_frames=SAMPLES)
    return video[sample_indices(total, nframes)]


def convert_every_frame(path: Path) -> int:
    """(ii, lighter) threaded decode, every frame converted to an RGB array and dropped."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = 0
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
        return n


def interleaved(ways: dict[str, Callable[[], Any]], repeat: int) -> dict[str, tuple[float, float, Any]]:
    """Run every way once per round, ``repeat`` rounds (so a busy spell on the machine hits them all alike);
    (best, median, last result) per way."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    results: dict[str, Any] = {}
    for _ in range(repeat):
        for name, fn in ways.items():
            results[name] = None  # let a previous round's frames go before timing again
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {name: (min(ts), statistics.median(ts), results[name]) for name, ts in times.items()}


def reference_qwen_vl_utils(path: Path, total: int, video_fps: float) -> dict[str, Any]:
    """Real qwen-vl-utils in bench/.venv-ref, when that environment exists: its sampling rule
    (``smart_nframes`` and ``torch.linspace(...).round()``) for this clip, and ``fetch_video`` timed."""
    python = HERE / ".venv-ref" / "bin" / "python"
    if not python.exists():
        return {"status": "bench/.venv-ref not found"}
    script = f"""
import json, os, time
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "torchvision")
import torch
from qwen_vl_utils import vision_process as vp
ele = {{"video": {str(path)!r}, "fps": 2.0, "max_frames": {SAMPLES}}}
n = vp.smart_nframes(ele, total_frames={total}, video_fps={video_fps})
out = {{"rule_indices": torch.linspace(0, {total} - 1, n).round().long().tolist()}}
try:
    t = time.perf_counter()
    video, meta = vp.fetch_video(ele, image_patch_size=16, return_video_metadata=True)
    out.update(seconds=time.perf_counter() - t, indices=[int(i) for i in meta["frames_indices"]])
except Exception as exc:
    out["fetch_error"] = f"{{type(exc).__name__}}: {{exc}}"[:200]
print(json.dumps(out))
"""
    try:
        out = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"status": "timed out"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": f"failed: {last[:200]}"}
    return {"status": "ok", **json.loads(out.stdout.strip().splitlines()[-1])}


# --- the run ------------------------------------------------------------------------------------------------------

def run(directory: Path, repeat: int) -> tuple[str, bool]:
    default_gop = clip(directory, "clip_gop250.mp4", None)
    short_gop = clip(directory, "clip_gop30.mp4", 30)
    model = replace(model_info("qwen3-vl-plus"), video_max_frames=SAMPLES)
    lines: list[str] = []
    ok = True

    info = probe_video(default_gop)
    for path in (default_gop, short_gop):
        path.read_bytes()  # warm the page cache: every way reads the same file
    size_mb = default_gop.stat().st_size / 1e6
    lines.append(f"Input: {SECONDS} s, {WIDTH}x{HEIGHT}, {FPS} fps H.264 (libx264 preset veryfast, CRF 23, "
                 f"keyint 250 = x264's default, 3 B-frames), {size_mb:.1f} MB "
                 f"({size_mb * 8 / SECONDS:.1f} Mbit/s), {info.frames} frames, one keyframe every "
                 f"{info.keyframe_interval:.0f} frames. Model qwen3-vl-plus, fps 2, max_frames {SAMPLES}. "
                 f"PyAV {av.__version__}. Every way runs once per round, {repeat} rounds: best (median).")
    lines.append("")

    runs = interleaved({
        "floor": lambda: floor_decode(default_gop),
        "arrays": lambda: sample_video(default_gop, model, fps=2.0, output="array"),
        "jpeg": lambda: sample_video(default_gop, model, fps=2.0),
        "seek": lambda: sample_video(default_gop, model, fps=2.0, strategy="seek", output="array"),
        "sequential": lambda: sample_video(default_gop, model, fps=2.0, strategy="sequential", output="array"),
        "torchvision": lambda: torchvision_way(default_gop),
        "convert": lambda: convert_every_frame(default_gop),
    }, repeat)
    floor_best, floor_med, _ = runs["floor"]
    arr_best, arr_med, sampled = runs["arrays"]
    jpg_best, jpg_med, sampled_jpeg = runs["jpeg"]
    seek_best, seek_med, _ = runs["seek"]
    seq_best, seq_med, _ = runs["sequential"]
    tv_best, tv_med, tv_frames = runs["torchvision"]
    conv_best, conv_med, _ = runs["convert"]

    rule_indices = sample_indices(info.frames, sample_count(info.frames, info.fps, 2.0, max_frames=SAMPLES))
    rule_times = [round(i / info.fps, 4) for i in rule_indices]
    our_times = [round(t, 4) for t in sampled.times]
    same_times = rule_times == our_times and sampled.indices == rule_indices
    same_pixels = bool(np.allclose([f.mean() for f in sampled.frames],
                                   [f.mean() for f in _resized(tv_frames, sampled.width, sampled.height)],
                                   atol=1.5))
    strategy, seek_cost, seq_cost = choose_strategy(sampled.indices, _keyframes(default_gop))

    vs_tv = tv_best / arr_best
    vs_floor = arr_best / floor_best
    ok &= vs_tv >= 5 and vs_floor <= 1.5 and same_times
    lines += [
        "| way (keyint 250 clip) | seconds | vs ours (arrays) |",
        "|---|---|---|",
        f"| (i) ours, 16 frames as RGB arrays ({sampled.strategy}) | {arr_best:.3f} ({arr_med:.3f}) | 1.00x |",
        f"| (i) ours, 16 frames as JPEG {sampled_jpeg.width}x{sampled_jpeg.height} | {jpg_best:.3f} "
        f"({jpg_med:.3f}) | {jpg_best / arr_best:.2f}x |",
        f"| (i) ours, forced seek per sample | {seek_best:.3f} ({seek_med:.3f}) | {seek_best / arr_best:.2f}x |",
        f"| (i) ours, forced one pass | {seq_best:.3f} ({seq_med:.3f}) | {seq_best / arr_best:.2f}x |",
        f"| (ii) every frame to arrays, torchvision read_video way | {tv_best:.3f} ({tv_med:.3f}) | "
        f"{vs_tv:.2f}x |",
        f"| (ii') every frame to arrays, threaded, none kept | {conv_best:.3f} ({conv_med:.3f}) | "
        f"{conv_best / arr_best:.2f}x |",
        f"| (iii) decode every frame, convert none (floor) | {floor_best:.3f} ({floor_med:.3f}) | "
        f"{floor_best / arr_best:.2f}x |",
        "",
        f"- (i) vs (ii): **{vs_tv:.1f}x faster** (target >= 5x: {'met' if vs_tv >= 5 else 'NOT met'}); "
        f"vs the lighter (ii'): {conv_best / arr_best:.1f}x.",
        f"- (i) vs (iii): **{vs_floor:.2f}x the floor** (target <= 1.5x: {'met' if vs_floor <= 1.5 else 'NOT met'}).",
        f"- Strategy chosen: {strategy}. It is counted from the keyframe positions: a seek plan would decode "
        f"{seek_cost} frames, one pass {seq_cost} (samples every {info.frames / SAMPLES:.0f} frames, keyframes "
        f"every {info.keyframe_interval:.0f}: close, and either way ours stays near the floor).",
        f"- Frame times, rule (index / fps): {rule_times}",
        f"- Frame times, ours (decoded pts):  {our_times}",
        f"- Same frame times: {'yes' if same_times else 'NO'}; same pixels as (ii) after resizing (frame means "
        f"within 1.5/255): {'yes' if same_pixels else 'NO'}.",
    ]

    info30 = probe_video(short_gop)
    runs30 = interleaved({
        "floor": lambda: floor_decode(short_gop),
        "auto": lambda: sample_video(short_gop, model, fps=2.0, output="array"),
        "sequential": lambda: sample_video(short_gop, model, fps=2.0, strategy="sequential", output="array"),
    }, repeat)
    s_floor, s_floor_med, _ = runs30["floor"]
    s_auto, s_auto_med, s_sampled = runs30["auto"]
    s_seq, s_seq_med, s_seq_sampled = runs30["sequential"]
    same_short = all(np.array_equal(a, b) for a, b in zip(s_sampled.frames, s_seq_sampled.frames, strict=True))
    lines += [
        "",
        f"Same content with a keyframe every {info30.keyframe_interval:.0f} frames (samples lie further apart than "
        "the keyframe interval, so the per-clip choice is to seek):",
        "",
        "| way (keyint 30 clip) | seconds |",
        "|---|---|",
        f"| ours, auto ({s_sampled.strategy}, {s_sampled.decoded} frames decoded) | {s_auto:.3f} ({s_auto_med:.3f}) |",
        f"| ours, forced one pass ({s_seq_sampled.decoded} frames decoded) | {s_seq:.3f} ({s_seq_med:.3f}) |",
        f"| decode every frame (floor of one pass) | {s_floor:.3f} ({s_floor_med:.3f}) |",
        "",
        f"- Seeking is {s_seq / s_auto:.1f}x faster than one pass here, {s_floor / s_auto:.1f}x faster than the "
        f"sequential floor; seek and one pass give identical frames: {'yes' if same_short else 'NO'}.",
    ]
    ok &= same_short

    ref = reference_qwen_vl_utils(default_gop, info.frames, info.fps)
    lines.append("")
    if ref.get("status") != "ok":
        lines.append(f"- qwen-vl-utils (bench/.venv-ref): not run ({ref.get('status')}).")
    else:
        ref_same = ref["rule_indices"] == rule_indices
        ok &= ref_same
        lines.append(f"- qwen-vl-utils 0.0.14's own rule (`smart_nframes` + `torch.linspace(...).round()`, run in "
                     f"bench/.venv-ref) picks frames {ref['rule_indices']}: "
                     f"{'the same as ours' if ref_same else 'DIFFERENT from ours'}.")
        if "seconds" in ref:
            lines.append(f"- Real qwen-vl-utils `fetch_video` (torchvision backend): {ref['seconds']:.3f} s, "
                         f"{float(ref['seconds']) / arr_best:.1f}x ours; frames {ref.get('indices')}.")
        else:
            lines.append(f"- Real qwen-vl-utils `fetch_video` could not run: {ref.get('fetch_error')} "
                         "(torchvision 0.29 dropped its video decoder, and neither decord nor torchcodec is "
                         "installed there); (ii) above emulates torchvision.io.read_video with PyAV instead.")
    return "\n".join(lines), ok


def _keyframes(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts, keys = [], []
        for packet in container.demux(stream):
            if packet.size:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
    order = sorted(pts)
    return sorted(order.index(k) for k in keys)


def _resized(frames_tchw: np.ndarray, width: int, height: int) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.fromarray(np.ascontiguousarray(f.transpose(1, 2, 0))).resize(
        (width, height), Image.Resampling.BICUBIC)) for f in frames_tchw]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the generated clips in this directory (and reuse them)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        body, ok = run(args.keep, args.repeat)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            body, ok = run(Path(tmp), args.repeat)
    print(body)
    if not args.no_write:
        write_section(HEADING, f"Measured by `bench/bench_video.py --repeat {args.repeat}` on "
                               f"{time.strftime('%Y-%m-%d')}. Machine: {machine()}.\n\n{body}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
