"""Benchmark: 16 frames sampled from a 60 s 1280x720 H.264 clip with x264's default keyframe interval.

    .venv/bin/python bench/bench_video.py [--repeat 5] [--keep DIR] [--no-write]

Generates its input with PyAV (nothing is downloaded): a 60 s, 30 fps, 1280x720 clip of a moving gradient and
checkerboard with fresh noise, encoded with libx264 (preset veryfast, CRF 23, x264's default keyint of 250
frames, 3 B-frames, about 4 Mbit/s). ``--keep DIR`` keeps the clip there and reuses it. In one run it times,
interleaved round by round (medians):

  (a) ours: ``qwenvl.media.video.sample_video`` at 2 fps with max_frames 16, the frames resized to
      qwen3-vl-plus's per-frame budget, as RGB arrays (and as JPEG, for information);
  (b) qwen-vl-utils ``fetch_video`` with its decord backend (``FORCE_QWENVL_VIDEO_READER=decord``), at the same
      fps, max_frames and patch size 16, and with (a)'s per-frame min/max pixels, so that both return frames of
      the same size: decord's ``get_batch`` of the sampled indices, then its resize. It runs in bench/.venv-ref
      (torch, torchvision, decord) in a worker process, one timed call per round; what users of qwen-vl-utils
      get today (torchvision 0.28+ dropped ``read_video``);
  (c) the decode-only floor: every frame decoded with PyAV, frame-threaded on all cores, none converted.

Then the frame encoding alone (the difference between (a) and (a')), on (a)'s 16 frames and on 16 frames of a
generated screen recording (a build log in three colours scrolling in a terminal, H.264 CRF 23), interleaved
round by round: qwenvl's ``images.encode_image`` (the images' fidelity rule) against the plain quality-90 JPEG
of the same pixels (Pillow, standard tables, 4:2:0: qwen-vl-utils' re-encode, the yardstick) and simplejpeg's
quality-90 JPEG (what qwenvl sent before): milliseconds per frame, bytes, and PSNR against the exact frame.

Each way's wall time and CPU time (user + system of its process, all threads, ``getrusage``) are recorded:
on a shared machine the wall time follows the load, the CPU time is the work done. The 1-minute load average
is printed before and after. Targets: (a) at least 2x faster than (b) in wall time with the identical frame
indices, and below (c). Results go to ``bench/RESULTS.md`` under "## Video sampling" (through
``bench/results_md.py``; other sections stay).

bench/.venv-ref: ``python3 -m venv bench/.venv-ref && bench/.venv-ref/bin/pip install qwen-vl-utils==0.0.14
decord torch torchvision`` (a CPU build of torch with its matching torchvision).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
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
import simplejpeg
from PIL import Image, ImageDraw, ImageFont
from results_md import load_words, machine, write_section  # bench/results_md.py: one writer for every section

from qwenvl.media import images
from qwenvl.media.video import (
    SEEK_COST_FRAMES,
    _keyframe_before,
    _seek_segments,
    choose_strategy,
    frame_plan,
    probe_video,
    sample_video,
)
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
            frame = av.VideoFrame.from_ndarray(texture[:, off : off + WIDTH] + pool[i % len(pool)], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_screen_recording(path: Path, frames: int = 16, fps: int = 8) -> None:
    """A terminal scrolling a build log (three text colours, a title bar), 1280x720, libx264 CRF 23."""
    font, title = ImageFont.load_default(size=15), ImageFont.load_default(size=20)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(frames):
            img = Image.new("RGB", (WIDTH, HEIGHT), "#fafafa")
            draw = ImageDraw.Draw(img)
            draw.rectangle((0, 0, WIDTH, 44), fill="#2b579a")
            draw.text((16, 10), "Terminal - make -j8", font=title, fill="white")
            for row in range(30):
                colour = ("#c00000", "#1a7f37", "#222222")[(row + i) % 3]
                text = f"[{i + row:04d}] CC src/module_{(i + row) % 41}.c -o build/module_{(i + row) % 41}.o ... ok"
                draw.text((16, 60 + row * 21), text, font=font, fill=colour)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _psnr(data: bytes, exact: np.ndarray) -> float:
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64)
    return float(10 * np.log10(255**2 / max(float(np.mean((decoded - exact) ** 2)), 1e-12)))


def _plain_q90(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def encoding_rows(kinds: dict[str, list[np.ndarray]], repeat: int) -> list[str]:
    """Table rows: each way of encoding each kind of frames, timed round by round (medians per frame)."""
    ways: dict[str, Callable[[np.ndarray], bytes]] = {
        "qwenvl `images.encode_image`": lambda a: images.encode_image(Image.fromarray(a))[0],
        "plain q90 (Pillow; the yardstick)": lambda a: _plain_q90(Image.fromarray(a)),
        "simplejpeg q90 4:2:0 (qwenvl before)": lambda a: simplejpeg.encode_jpeg(
            np.ascontiguousarray(a), quality=90, colorspace="RGB", colorsubsampling="420"
        ),
    }
    rows = []
    for kind, frames in kinds.items():
        times: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(repeat):
            for way, encode in ways.items():
                t = time.perf_counter()
                for a in frames:
                    encode(a)
                times[way].append((time.perf_counter() - t) / len(frames))
        plain = [_plain_q90(Image.fromarray(a)) for a in frames]
        plain_psnr = [_psnr(d, a.astype(np.float64)) for d, a in zip(plain, frames, strict=True)]
        for way, encode in ways.items():
            out = [encode(a) for a in frames]
            gains = [_psnr(d, a.astype(np.float64)) - p for d, a, p in zip(out, frames, plain_psnr, strict=True)]
            kinds_sent = sorted({Image.open(io.BytesIO(d)).format or "" for d in out})
            ratio = sum(map(len, out)) / sum(map(len, plain))
            rows.append(
                f"| {kind} | {way} ({'/'.join(kinds_sent)}) | {statistics.median(times[way]) * 1e3:.1f} | "
                f"{sum(map(len, out)) / len(out) / 1e3:.0f} | {ratio:.3f}x | {min(gains):+.2f} to {max(gains):+.2f} |"
            )
    return rows


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


DECORD_WORKER = r"""
import json, os, resource, sys, time
os.environ["FORCE_QWENVL_VIDEO_READER"] = "decord"
from importlib.metadata import version
from qwen_vl_utils import vision_process as vp
ele = {"video": sys.argv[1], "fps": 2.0, "max_frames": int(sys.argv[2]), "min_pixels": int(sys.argv[3]),
       "max_pixels": float(sys.argv[4])}
video, meta = vp.fetch_video(ele, image_patch_size=16, return_video_metadata=True)  # warm-up
print(json.dumps({"versions": {p: version(p) for p in ("qwen-vl-utils", "decord", "torch", "torchvision")},
                  "indices": [int(i) for i in meta["frames_indices"]], "shape": list(video.shape)}), flush=True)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
for _ in sys.stdin:
    c0, t0 = cpu(), time.perf_counter()
    video, meta = vp.fetch_video(ele, image_patch_size=16, return_video_metadata=True)
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": cpu() - c0}), flush=True)
"""


class DecordWorker:
    """qwen-vl-utils with decord in bench/.venv-ref, one timed ``fetch_video`` per call."""

    def __init__(self, path: Path, min_pixels: int, max_pixels: float) -> None:
        python = HERE / ".venv-ref" / "bin" / "python"
        if not python.exists():
            raise SystemExit(
                "bench/.venv-ref is missing: python3 -m venv bench/.venv-ref && "
                "bench/.venv-ref/bin/pip install torch torchvision qwen-vl-utils decord"
            )
        self.proc = subprocess.Popen(
            [str(python), "-c", DECORD_WORKER, str(path), str(SAMPLES), str(min_pixels), repr(max_pixels)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.meta = json.loads(self._line())

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the decord worker stopped")
        return line

    def __call__(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of one ``fetch_video``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        out = json.loads(self._line())
        return float(out["seconds"]), float(out["cpu"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


# --- the run ------------------------------------------------------------------------------------------------------


def _cpu() -> float:
    """CPU seconds of this process so far, every thread (user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    c, t = _cpu(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, _cpu() - c


def run(directory: Path, repeat: int) -> tuple[str, bool]:
    path = clip(directory, "clip_gop250.mp4", None)
    model = replace(model_info("qwen3-vl-plus"), video_max_frames=SAMPLES)
    info = probe_video(path)
    plan = frame_plan(model, info.frames, info.fps, 2.0, info.width, info.height)
    path.read_bytes()  # warm the page cache: every way reads the same file
    size_mb = path.stat().st_size / 1e6
    load_before = os.getloadavg()[0]
    decord = DecordWorker(path, plan.min_pixels, plan.max_pixels)
    try:
        wall: dict[str, list[float]] = {"ours": [], "jpeg": [], "decord": [], "floor": []}
        cpu: dict[str, list[float]] = {k: [] for k in wall}
        sample_video(path, model, fps=2.0, output="array")  # warm-up
        floor_decode(path)
        sampled = sampled_jpeg = None
        for _ in range(repeat):
            sampled, w, c = _timed(lambda: sample_video(path, model, fps=2.0, output="array"))
            wall["ours"].append(w)
            cpu["ours"].append(c)
            w, c = decord()
            wall["decord"].append(w)
            cpu["decord"].append(c)
            _, w, c = _timed(lambda: floor_decode(path))
            wall["floor"].append(w)
            cpu["floor"].append(c)
            sampled_jpeg, w, c = _timed(lambda: sample_video(path, model, fps=2.0))
            wall["jpeg"].append(w)
            cpu["jpeg"].append(c)
    finally:
        decord.close()
    load_after = os.getloadavg()[0]
    assert sampled is not None and sampled_jpeg is not None
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}

    def ratio(num: str, den: str, table: dict[str, list[float]]) -> float:
        return statistics.median(n / d for n, d in zip(table[num], table[den], strict=True))

    vs_decord, vs_floor = ratio("decord", "ours", wall), ratio("ours", "floor", wall)
    cpu_vs_decord, cpu_vs_floor = ratio("decord", "ours", cpu), ratio("ours", "floor", cpu)
    same = sampled.indices == decord.meta["indices"]
    ref_size = decord.meta["shape"][-1], decord.meta["shape"][-2]
    ok = vs_decord >= 2 and vs_floor < 1 and same
    keyframes = _keyframes(path)
    strategy, seek_cost, seq_cost = choose_strategy(sampled.indices, keyframes)
    runs = _seek_segments(sorted(set(sampled.indices)), keyframes, SEEK_COST_FRAMES)
    needed = sum(r[-1] - _keyframe_before(keyframes, r[0]) + 1 for r in runs)
    holding = len({_keyframe_before(keyframes, i) for i in sampled.indices})
    v = decord.meta["versions"]
    lines = [
        f"Input: {SECONDS} s, {WIDTH}x{HEIGHT}, {FPS} fps H.264 (libx264 preset veryfast, CRF 23, keyint 250 = "
        f"x264's default, 3 B-frames), {size_mb:.1f} MB ({size_mb * 8 / SECONDS:.1f} Mbit/s), {info.frames} frames, "
        f"{len(keyframes)} keyframes (one every {info.keyframe_interval:.0f} frames). Model qwen3-vl-plus, fps 2, "
        f"max_frames {SAMPLES}: {len(sampled.indices)} frames of {sampled.width}x{sampled.height} (the reference "
        f"is given the same per-frame min/max pixels: {ref_size[0]}x{ref_size[1]}). PyAV {av.__version__}; "
        f"qwen-vl-utils {v['qwen-vl-utils']} with decord {v['decord']}, torch {v['torch']}, torchvision "
        f"{v['torchvision']} (bench/.venv-ref, its own process). {repeat} interleaved rounds; medians; ratios are "
        f"medians of per-round ratios. 1-minute load average {load_before:.1f} before, {load_after:.1f} after "
        f"(before the run: {load_words(load_before, load_before)}; the run's own decoder threads raise it; 2 cores: "
        "wall times are stretched by the load; CPU seconds, every thread of the process, are not).",
        "",
        "| way | wall s (median) | vs ours | CPU s (median) | vs ours |",
        "|---|---|---|---|---|",
        f"| (a) ours: `sample_video`, 16 resized RGB arrays ({sampled.strategy}, {sampled.decoded} frames decoded) "
        f"| {med['ours']:.3f} | 1.00x | {med_cpu['ours']:.2f} | 1.00x |",
        f"| (a') ours, 16 JPEG frames | {med['jpeg']:.3f} | {med['jpeg'] / med['ours']:.2f}x | "
        f"{med_cpu['jpeg']:.2f} | {med_cpu['jpeg'] / med_cpu['ours']:.2f}x |",
        f"| (b) qwen-vl-utils `fetch_video`, decord backend (16 resized frames) | {med['decord']:.3f} | "
        f"{vs_decord:.2f}x | {med_cpu['decord']:.2f} | {cpu_vs_decord:.2f}x |",
        f"| (c) decode every frame, convert none (floor) | {med['floor']:.3f} | {med['floor'] / med['ours']:.2f}x | "
        f"{med_cpu['floor']:.2f} | {med_cpu['floor'] / med_cpu['ours']:.2f}x |",
        "",
        f"- (a) vs (b): **{vs_decord:.2f}x** the speed of qwen-vl-utils with decord in wall time (target >= 2x: "
        f"{'met' if vs_decord >= 2 else 'NOT met'}); (b) uses {cpu_vs_decord:.2f}x (a)'s CPU time.",
        f"- (a) vs (c): **{vs_floor:.2f}x the decode-only floor** in wall time (target < 1: "
        f"{'met' if vs_floor < 1 else 'NOT met'}); {cpu_vs_floor:.2f}x its CPU time.",
        f"- Frame indices, ours: {sampled.indices}",
        f"- Frame indices, qwen-vl-utils + decord: {decord.meta['indices']}: {'identical' if same else 'DIFFERENT'}.",
        f"- Strategy: {strategy}, from the keyframe positions (a seek plan decodes {seek_cost} frames, one pass "
        f"{seq_cost}); {holding} of {len(keyframes)} GOPs hold a sample, {len(runs)} runs; each run is decoded "
        f"from its keyframe to its last sample, {needed} frames in all ({needed / info.frames:.0%} of the clip), "
        "and the decoder is drained there (nothing past it is decoded); H.264 frames that nothing refers to are "
        "skipped unless sampled.",
        f"- The work the samples need: the floor's CPU time per frame ({med_cpu['floor'] / info.frames * 1e3:.2f} ms) "
        f"times the {sampled.decoded} frames (a) decodes is {med_cpu['floor'] / info.frames * sampled.decoded:.2f} s "
        f"of CPU; (a) used {med_cpu['ours']:.2f} s. Half of (b)'s CPU time is {med_cpu['decord'] / 2:.2f} s.",
    ]
    screen = directory / "screen_recording.mp4"
    if not screen.exists():
        make_screen_recording(screen)
    shots = sample_video(screen, model, fps=8.0, output="array")
    lines += [
        "",
        f"Frame encoding alone, {repeat} interleaved rounds, median ms per frame: (a)'s {sampled.nframes} frames of "
        f"{sampled.width}x{sampled.height}, and {shots.nframes} frames of {shots.width}x{shots.height} from a "
        "generated screen recording (a terminal's build log in three colours, H.264 CRF 23). Bytes per frame, "
        "total bytes against the plain q90 JPEG's, and each frame's PSNR gain over the plain q90 JPEG (dB, "
        "against the exact frame).",
        "",
        "| frames | encoding | ms per frame | kB per frame | bytes vs plain q90 | PSNR vs plain q90 |",
        "|---|---|---|---|---|---|",
        *encoding_rows({"camera-like (a)": sampled.frames, "screen recording": shots.frames}, repeat),
    ]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
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
        write_section(
            HEADING,
            f"Measured by `bench/bench_video.py --repeat {args.repeat}` on "
            f"{time.strftime('%Y-%m-%d')}. Machine: {machine()}.\n\n{body}",
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
