"""Benchmark: image preparation on a corpus this script makes, against qwen-vl-utils' way, timed fairly.

Corpus (generated here, written to a temporary folder):

- **photo**: 4000x3000 photo-like JPEG q95 (gradients, soft shapes, sensor noise, light grain);
- **foliage**: 4000x3000 JPEG q95 of fine multi-scale texture (1-32 px, leaves and twigs) with sensor noise;
- **gravel**: 4032x3024 JPEG q92 of 1-3 px grain under strong sensor noise (a high-ISO shot);
- **screenshot**: 3840x2160 PNG of a document window (text in several sizes, flat panels, a chart);
- **photo (48 MP)**: 8000x6000 photo-like JPEG q92 (a phone's full-resolution mode), reduced 3.7x per side.

Ways, each timed end to end from the file on disk to the data URL:

1. qwen-vl-utils (the reference): ``fetch_image`` at qwen3-vl-plus's default budget (patch 16 -> factor 32),
   then JPEG quality 90 and base64, as its users send it.
2. Ours: ``qwenvl.media.prepare.prepare_image``.

Fairness: each way runs in its own worker process (ours in the project's venv, the reference in
bench/.venv-ref; same Pillow), one timed run per request, the two interleaved round by round after a warm-up.
Both workers run with the same allocator settings (``ALLOCATOR_ENV``): Pillow keeps freed image blocks for
reuse and glibc keeps freed memory instead of unmapping it, so neither pays tens of thousands of page faults
per call for memory it just freed (as a long-running caller's process would not either). Times are medians,
the speed-up is the median of the per-round ratios.

Fidelity: the "exact resize" is qwen-vl-utils' own output before its JPEG encode (full decode, bicubic to
the target size). PSNR of each way's sent image against it, and its bytes. Targets on every image: ours at
least 2x faster, PSNR at least the reference's, bytes at most the reference's.

Run (from the repository root; not part of CI):

    python3 -m venv bench/.venv-ref && bench/.venv-ref/bin/pip install torch torchvision qwen-vl-utils decord
    .venv/bin/python bench/bench_image_prepare.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from results_md import load_words, machine, write_section  # noqa: E402

from qwenvl.media.prepare import MediaOptions  # noqa: E402
from qwenvl.media.resize import image_budget, smart_resize  # noqa: E402
from qwenvl.models import model_info  # noqa: E402

REF_PYTHON = ROOT / "bench" / ".venv-ref" / "bin" / "python"
OUR_PYTHON = Path(sys.executable)
MODEL = "qwen3-vl-plus"
ALLOCATOR_ENV = {
    "PILLOW_BLOCKS_MAX": "64",
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 31),
}

# A worker: argv = way ("ours" | "reference"), path, min_pixels, max_pixels, output file. The warm-up run
# writes what is sent (and, for the reference, the exact resize as PNG beside it); then each line on stdin
# asks for one timed run, answered by one JSON line.
WORKER_SCRIPT = r"""
import base64, io, json, sys, time
way, path, min_pixels, max_pixels, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if way == "reference":
    from importlib.metadata import version
    from qwen_vl_utils import fetch_image
    name = "qwen-vl-utils " + version("qwen-vl-utils")

    def run(keep=False):
        img = fetch_image({"image": path, "min_pixels": min_pixels, "max_pixels": max_pixels}, image_patch_size=16)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        if keep:
            img.save(out + ".exact.png")
        return img.size, "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
elif way == "floor":
    # Decoding at full scale and nothing else, with the fastest decoder here (libjpeg-turbo through simplejpeg
    # for a JPEG, else Pillow): what any preparation as faithful as the reference must at least do.
    import simplejpeg
    from PIL import Image
    name = "full-scale decode only"

    def run(keep=False):
        data = open(path, "rb").read()
        if data[:2] == b"\xff\xd8":
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
            return (pixels.shape[1], pixels.shape[0]), "data:,"
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.size, "data:,"
else:
    sys.path.insert(0, sys.argv[6])
    from qwenvl.media.prepare import MediaOptions, prepare_image
    from qwenvl.models import model_info
    from qwenvl.types import ImagePart
    options = MediaOptions(model=model_info("qwen3-vl-plus"))
    name = "qwenvl"

    def run(keep=False):
        item = prepare_image(ImagePart(image=path), options)
        return (item.width, item.height), item.sent

size, url = run(keep=True)
if way != "floor":
    open(out, "wb").write(base64.b64decode(url.partition(",")[2]))
print(json.dumps({"name": name}), flush=True)
for _ in sys.stdin:
    t0, c0 = time.perf_counter(), time.process_time()
    size, url = run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0  # cpu: every thread of the process
    print(json.dumps({"seconds": wall, "cpu": cpu, "size": size, "chars": len(url)}), flush=True)
"""


class Worker:
    """One way in its own process, one timed run per call, so that the ways interleave."""

    def __init__(self, way: str, path: Path, min_pixels: int, max_pixels: int) -> None:
        python = REF_PYTHON if way == "reference" else OUR_PYTHON
        self.output = path.with_suffix(f".{way}.out")
        env = {**os.environ, **ALLOCATOR_ENV}
        self.proc = subprocess.Popen(
            [
                str(python),
                "-c",
                WORKER_SCRIPT,
                way,
                str(path),
                str(min_pixels),
                str(max_pixels),
                str(self.output),
                str(ROOT / "src"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.name = json.loads(self._line())["name"]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark worker stopped")
        return line

    def run(self) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def photo_like(
    width: int = 4000, height: int = 3000, *, noise: float = 6.0, texture: float = 0.05, seed: int = 7
) -> Image.Image:
    """Smooth gradients and soft-edged shapes with sensor-like noise (per pixel) and some fine texture.

    ``texture`` scales a band of detail about 4 px across (foliage, fabric): that detail survives the
    downscale, unlike per-pixel noise, so it decides how much smaller the prepared image gets.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            120 + 80 * np.sin(x / 700 + 0.5) * np.cos(y / 900),
            110 + 70 * np.cos(x / 1100 - y / 1300),
            100 + 90 * (x + y) / (width + height) - 30 * np.sin(y / 500),
        ],
        axis=-1,
    )
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(60):  # shapes of every size, then blurred so the edges look optical
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        r = int(rng.integers(40, 700))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((cx - r, cy - r // 2, cx + r, cy + r // 2), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(3))
    arr = np.asarray(img).astype(np.float32)
    if texture:
        grain = rng.normal(0, 1, (height // 4, width // 4)).astype(np.float32)
        grain_img = Image.fromarray(((grain + 4) * 32).clip(0, 255).astype(np.uint8))
        grain = np.asarray(grain_img.resize((width, height), Image.Resampling.BICUBIC)).astype(np.float32)
        arr += (grain[:, :, None] - 128) * texture
    arr += rng.normal(0, noise, arr.shape).astype(np.float32)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def foliage(width: int = 4000, height: int = 3000, *, seed: int = 11, noise: float = 5.0) -> Image.Image:
    """Fine multi-scale texture (octaves of noise from 1 to 32 px), green, with sensor noise: leaves and twigs
    whose detail survives a 2x downscale and costs bytes."""
    rng = np.random.default_rng(seed)
    lum = np.full((height, width), 110, np.float32)
    for scale, amp in ((1, 14), (2, 22), (4, 26), (8, 22), (32, 30)):
        grain = rng.normal(0, 1, (height // scale + 1, width // scale + 1)).astype(np.float32)
        if scale > 1:
            grain = np.asarray(Image.fromarray(grain, "F").resize((width, height), Image.Resampling.BICUBIC))
        lum += amp * grain[:height, :width]
    rgb = np.stack([lum * 0.55, lum * 0.95 + 10, lum * 0.45], -1)
    rgb += rng.normal(0, noise, rgb.shape).astype(np.float32)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def gravel(width: int = 4032, height: int = 3024, *, seed: int = 5) -> Image.Image:
    """1-3 px grain of stones in warm greys, soft light, and strong per-pixel sensor noise (high ISO)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 120 + 50 * np.cos(x / 1500) * np.sin(y / 1100 + 0.3)
    stones = rng.normal(0, 1, (height // 2 + 1, width // 2 + 1)).astype(np.float32)
    stones = np.asarray(Image.fromarray(stones, "F").resize((width, height), Image.Resampling.BICUBIC))
    lum = light + 28 * stones + 10 * rng.normal(0, 1, (height, width)).astype(np.float32)
    rgb = np.stack([lum * 1.05, lum, lum * 0.9], -1) + rng.normal(0, 9, (height, width, 3)).astype(np.float32)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def screenshot(width: int = 3840, height: int = 2160, *, seed: int = 3) -> Image.Image:
    """A document window: title bar, side panel, paragraphs of text in three sizes, a table and a bar chart."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), "#f3f3f3")
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, width, 90), fill="#2b579a")
    draw.text((40, 22), "Quarterly report - Document1.docx", font=ImageFont.load_default(size=40), fill="white")
    draw.rectangle((0, 90, 560, height), fill="#e1e1e1")
    small, body, heading = (ImageFont.load_default(size=s) for s in (22, 30, 52))
    for i in range(40):
        draw.text((30, 120 + 48 * i), f"Section {i + 1}: item {rng.integers(100, 999)}", font=small, fill="#333333")
    draw.rectangle((700, 150, width - 140, height - 60), fill="white", outline="#c8c8c8", width=3)
    words = [
        "revenue",
        "growth",
        "margin",
        "the",
        "of",
        "quarter",
        "customers",
        "increased",
        "and",
        "region",
        "compared",
        "with",
        "last",
        "year",
        "costs",
        "operating",
        "net",
        "per",
        "cent",
        "market",
    ]
    top = 220
    draw.text((800, top), "Results for the third quarter", font=heading, fill="#1f1f1f")
    top += 110
    for _ in range(22):
        line = " ".join(str(rng.choice(words)) for _ in range(int(rng.integers(14, 22))))
        draw.text((800, top), line.capitalize() + ".", font=body, fill="#202020")
        top += 46
    for row in range(8):  # a table
        for col in range(5):
            x0, y0 = 800 + col * 300, top + 40 + row * 56
            draw.rectangle(
                (x0, y0, x0 + 300, y0 + 56), outline="#9a9a9a", width=2, fill="#dde7f3" if row == 0 else "white"
            )
            draw.text(
                (x0 + 14, y0 + 12),
                f"{rng.integers(0, 99999):,}" if row else f"Column {col + 1}",
                font=small,
                fill="#111111",
            )
    for i in range(12):  # a bar chart
        h = int(rng.integers(80, 520))
        draw.rectangle((2500 + i * 90, 1500 - h, 2560 + i * 90, 1500), fill=("#4472c4", "#ed7d31")[i % 2])
    return img


CORPUS = {  # name -> (generator, file format and options)
    "photo": (lambda: photo_like(noise=6.0, texture=0.05), ("JPEG", {"quality": 95})),
    "foliage (12 MP)": (foliage, ("JPEG", {"quality": 95})),
    "gravel, high ISO (12 MP)": (gravel, ("JPEG", {"quality": 92})),
    "screenshot (document, 4K)": (screenshot, ("PNG", {})),
    # a 48 MP phone photo: 3.7x per side to the default budget, a reduction that once took a DCT-scaled decode
    "photo (48 MP)": (lambda: photo_like(8000, 6000, noise=6.0, texture=0.05, seed=21), ("JPEG", {"quality": 92})),
}


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a.convert("RGB"), np.float64) - np.asarray(b.convert("RGB"), np.float64)
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def measure(path: Path, repeat: int) -> dict:
    model = model_info(MODEL)
    min_pixels, max_pixels = image_budget(MediaOptions(model=model))
    with Image.open(path) as probe:
        width, height = probe.size
    h_bar, w_bar = smart_resize(height, width, model.factor, min_pixels, max_pixels)
    ours, ref = Worker("ours", path, min_pixels, max_pixels), Worker("reference", path, min_pixels, max_pixels)
    floor = Worker("floor", path, min_pixels, max_pixels)
    try:
        rounds, floors = [], []
        for i in range(repeat):  # alternate which goes first, so neither always follows the other
            a, b = (ours, ref) if i % 2 == 0 else (ref, ours)
            first, second = a.run(), b.run()
            rounds.append((first, second) if a is ours else (second, first))
            floors.append(floor.run()["seconds"])
    finally:
        ours.close()
        ref.close()
        floor.close()
    exact = Image.open(str(ref.output) + ".exact.png")
    result = {
        "raw": path.stat().st_size,
        "source": f"{width}x{height}",
        "target": f"{w_bar}x{h_bar}",
        "reference": ref.name,
        "speedup": statistics.median(r["seconds"] / o["seconds"] for o, r in rounds),
        "floor_ms": statistics.median(floors) * 1e3,
        # the most any full-scale (faithful) preparation could gain over the reference on one core
        "ceiling": statistics.median(r["seconds"] / f for (_, r), f in zip(rounds, floors, strict=True)),
    }
    for key, worker, i in (("ours", ours, 0), ("ref", ref, 1)):
        sent = worker.output.read_bytes()
        with Image.open(io.BytesIO(sent)) as img:
            result[key] = {
                "ms": statistics.median(r[i]["seconds"] for r in rounds) * 1e3,
                "cpu_ms": statistics.median(r[i]["cpu"] for r in rounds) * 1e3,
                "bytes": len(sent),
                "psnr": psnr(img, exact),
                "format": img.format,
                "size": "x".join(map(str, rounds[-1][i]["size"])),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args()
    if not REF_PYTHON.exists():
        sys.exit(f"{REF_PYTHON} is missing: create bench/.venv-ref first (see the top of this script)")
    rows, met, version = [], True, ""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, (make, (fmt, save))) in enumerate(CORPUS.items()):
            path = Path(tmp) / f"input-{index}.{fmt.lower()}"
            make().save(path, fmt, **save)
            m = measure(path, args.repeat)
            version = m["reference"]
            o, r = m["ours"], m["ref"]
            ok = m["speedup"] >= 2 and o["psnr"] >= r["psnr"] and o["bytes"] <= r["bytes"]
            met &= ok
            rows.append(
                f"| {name}: {m['source']} {fmt} {m['raw'] / 1e6:.1f} MB -> {m['target']} | {r['ms']:.0f} | "
                f"{o['ms']:.0f} | **{m['speedup']:.2f}x** | {r['psnr']:.2f} | {o['psnr']:.2f} | "
                f"{r['bytes'] / 1e3:,.0f} | {o['bytes'] / 1e3:,.0f} ({o['bytes'] / r['bytes']:.3f}) | "
                f"{o['format']} | {m['floor_ms']:.0f} ({m['ceiling']:.2f}x) | {r['cpu_ms']:.0f} / {o['cpu_ms']:.0f} "
                f"({o['cpu_ms'] / r['cpu_ms']:.2f}) | {'met' if ok else 'NOT MET'} |"
            )
            print(rows[-1], flush=True)
    load_after = os.getloadavg()[0]
    table = "\n".join(
        [
            f"| image | {version} (ms) | qwenvl (ms) | speed-up | PSNR ref (dB) | PSNR ours (dB) | bytes ref (kB) "
            "| bytes ours (kB, ratio) | ours sent as | decode-only floor (ms, reference / floor) "
            "| CPU ms, reference / ours (ours / reference) | targets |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(table)
    if args.no_write:
        return
    allocator = ", ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items())
    body = f"""Measured by `bench/bench_image_prepare.py --repeat {args.repeat}` on \
{datetime.date.today().isoformat()}. Machine: {machine()}; 1-minute load average {load_before:.1f} before and
{load_after:.1f} after the run ({load_words(load_before, load_after)}).

Anchor: {version} `fetch_image` (full decode, RGB, bicubic `resize` to `smart_resize`'s size at
{MODEL}'s default budget, 2,621,440 px), then Pillow JPEG quality 90 and base64, in bench/.venv-ref (torch
and torchvision installed, as the package needs). Ours: `qwenvl.media.prepare.prepare_image` (decoded at full
scale by Pillow and resized by Pillow's bicubic convolution as one call would, without `reducing_gap`, its two
passes split in bands over both cores: the reference's pixels, bit for bit; then `images.encode_photo`: q90
with optimised Huffman tables, or flat-table JPEG for dense texture when smaller still; a screenshot as PNG
(tried only when a banded sample says it may fit) or full-chroma JPEG q95/q90 with optimised tables, by
`images.encode_graphic`).
Each way runs in its own worker process with the same allocator settings ({allocator}),
so neither re-faults the memory it just freed;
{args.repeat} interleaved rounds after a warm-up; times are medians, the speed-up is the median of per-round
ratios. PSNR is against the exact resize (qwen-vl-utils' image before its JPEG encode). The corpus is made by
the script: see its docstring.

{table}

Result: {"all targets met on every image" if met else "NOT all targets met (see the last column)"}
(targets: >= 2x faster, PSNR >= the reference's, bytes <= the reference's).

The decode-only floor is a third worker that decodes the file at full scale and does nothing else (simplejpeg,
i.e. libjpeg-turbo, for a JPEG; Pillow otherwise), timed in the same rounds. "reference / floor" is the most
that any preparation which decodes at full scale, as the reference does, could gain over it on one core: where
it is under 2, the speed target can only be met by decoding at reduced scale (a DCT-scaled decode, whose
pixels are not the reference's: up to 6 dB lost on texture, and 0.01-0.09 dB under the reference after
encoding even at reductions of 4x per side and more, so it is no longer used) or by decoding on more than one
core.

The CPU column is each way's processor time per preparation, every thread of its process. The reference runs on
one core, so its CPU time is its wall time. On this 2-core machine a way can be at most (cores) x (reference CPU /
its own CPU) times faster in wall time, and only with both cores busy for the whole preparation, the decode
included (a baseline JPEG's entropy-coded data is one serial stream): where ours' CPU time is at or above the
reference's (ratio >= 1.00), 2x asks for a perfect overlap of every step on two cores.
"""
    write_section("Image preparation (bench_image_prepare.py)", body)
    print("wrote bench/RESULTS.md")


if __name__ == "__main__":
    main()
