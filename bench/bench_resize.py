"""Benchmark (c): our smart_resize against qwen-vl-utils' on random sizes and budgets, for factors 28 and 32.

Run (from the repository root; not part of CI):

    python3 -m venv bench/.venv-ref && bench/.venv-ref/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        qwen-vl-utils                      # once: the reference needs torch to import
    .venv/bin/python bench/bench_resize.py [--cases 1500] [--seed 20260101]

The script runs in the project's venv. It generates the cases (seeded), asks qwen-vl-utils for its answers
in a subprocess that runs in bench/.venv-ref, and compares them with ours. Then it writes the cases and the
reference answers to tests/data/smart_resize_reference.json: CI checks our implementation against them
without torch. The results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from results_md import machine, write_section  # noqa: E402

from qwenvl.media.resize import smart_resize  # noqa: E402

REF_PYTHON = ROOT / "bench" / ".venv-ref" / "bin" / "python"
REFERENCE_JSON = ROOT / "tests" / "data" / "smart_resize_reference.json"
FACTORS = {28: 14, 32: 16}  # factor -> qwen-vl-utils image_patch_size

# Runs inside bench/.venv-ref: reads cases on stdin, prints [[h, w] | "error"] on stdout.
REFERENCE_SCRIPT = r"""
import json, sys, time
import qwen_vl_utils
from importlib.metadata import version
from qwen_vl_utils.vision_process import smart_resize
cases = json.load(sys.stdin)
out = []
t0 = time.perf_counter()
for c in cases:
    try:
        out.append(list(smart_resize(c["height"], c["width"], factor=c["factor"],
                                     min_pixels=c["min_pixels"], max_pixels=c["max_pixels"])))
    except (ValueError, AssertionError, ZeroDivisionError):
        out.append("error")
elapsed = time.perf_counter() - t0
json.dump({"version": version("qwen-vl-utils"), "results": out, "seconds": elapsed}, sys.stdout)
"""


def make_cases(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    cases: list[dict] = []
    for factor in FACTORS:
        f2 = factor * factor
        for i in range(n):
            # Sides: log-uniform 1..30000 px, with an aspect ratio mostly within 200:1 (some beyond, to
            # check the refusal), and some sides that sit exactly on a rounding tie (k + 1/2) * factor.
            height = round(10 ** rng.uniform(0, 4.5))
            ratio = 10 ** rng.uniform(-2.4, 2.4)
            width = max(1, round(height * ratio))
            if i % 10 == 0:
                height = (2 * rng.randint(0, 200) + 1) * factor // 2
            if i % 15 == 0:
                width = (2 * rng.randint(0, 200) + 1) * factor // 2
            kind = rng.random()
            if kind < 0.25:  # the defaults (4 and 16384 tokens)
                min_pixels = max_pixels = None
            elif kind < 0.75:  # token budgets as the service states them
                min_pixels = rng.choice([4, 16, 64, 256]) * f2
                max_pixels = rng.choice([64, 256, 320, 640, 1024, 1280, 2560, 4096, 8192, 16384]) * f2
            else:  # arbitrary pixel counts, not multiples of factor²
                min_pixels = rng.randint(1, 200_000)
                max_pixels = rng.randint(1, 20_000_000)
            if rng.random() < 0.05 and min_pixels is not None:  # min > max: both refuse
                min_pixels, max_pixels = max_pixels + 1, max_pixels
            cases.append(
                {"height": height, "width": width, "factor": factor, "min_pixels": min_pixels, "max_pixels": max_pixels}
            )
    return cases


def ours(case: dict) -> list[int] | str:
    try:
        return list(smart_resize(case["height"], case["width"], case["factor"], case["min_pixels"], case["max_pixels"]))
    except ValueError:
        return "error"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1500, help="random cases per factor (default 1500)")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md or the JSON")
    args = parser.parse_args()
    if not REF_PYTHON.exists():
        sys.exit(f"{REF_PYTHON} is missing: create bench/.venv-ref first (see the top of this script)")

    cases = make_cases(args.cases, args.seed)
    proc = subprocess.run(
        [str(REF_PYTHON), "-c", REFERENCE_SCRIPT], input=json.dumps(cases), capture_output=True, text=True, check=True
    )
    reference = json.loads(proc.stdout)
    t0 = time.perf_counter()
    mine = [ours(c) for c in cases]
    our_seconds = time.perf_counter() - t0

    rows = []
    total_mismatches = 0
    for factor, patch in FACTORS.items():
        idx = [i for i, c in enumerate(cases) if c["factor"] == factor]
        mismatches = [i for i in idx if mine[i] != reference["results"][i]]
        errors = sum(1 for i in idx if reference["results"][i] == "error")
        zero = sum(1 for i in idx if reference["results"][i] != "error" and 0 in reference["results"][i])
        total_mismatches += len(mismatches)
        rows.append(
            f"| {factor} (patch {patch}) | {len(idx)} | {len(idx) - len(mismatches)} | {len(mismatches)} "
            f"| {errors} | {zero} |"
        )
        for i in mismatches[:10]:
            print("MISMATCH", cases[i], "ours", mine[i], "reference", reference["results"][i])
    print("\n".join(rows))
    print(
        f"qwen-vl-utils {reference['version']}: {total_mismatches} mismatches in {len(cases)} cases; "
        f"ours {our_seconds * 1e6 / len(cases):.2f} us/call, reference "
        f"{reference['seconds'] * 1e6 / len(cases):.2f} us/call"
    )
    if args.no_write:
        return

    REFERENCE_JSON.write_text(
        json.dumps(
            {
                "source": f"qwen_vl_utils.vision_process.smart_resize, qwen-vl-utils {reference['version']}",
                "made_by": "bench/bench_resize.py",
                "seed": args.seed,
                "cases": [{**c, "expected": r} for c, r in zip(cases, reference["results"], strict=True)],
            },
            separators=(",", ":"),
        )
        + "\n"
    )
    body = f"""Machine: {machine()}.
Command: `.venv/bin/python bench/bench_resize.py --cases {args.cases} --seed {args.seed}` (the reference runs in
bench/.venv-ref with qwen-vl-utils {reference["version"]}).

Sides are log-uniform from 1 to 30,000 px, with ratios up to about 250:1 and exact rounding ties. Budgets are
the defaults, token budgets (4-256 min, 64-16384 max tokens), or arbitrary pixel counts; 5% have min > max.
"error" means both implementations refused: a ratio over 200:1 or min > max. "0 side" counts outputs with
a 0 px side (a tiny budget and an extreme ratio); ours reproduces those too, and `prepare_image` refuses them.

| factor | cases | equal | mismatches | refused (both) | with a 0 side |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Result: **{total_mismatches} mismatches** in {len(cases)} cases (target: 0 on at least 1,000 per factor). Speed:
ours {our_seconds * 1e6 / len(cases):.2f} us per call, qwen-vl-utils {reference["seconds"] * 1e6 / len(cases):.2f} us.
The cases and the reference answers are in `tests/data/smart_resize_reference.json`; `tests/test_resize.py`
checks them in CI.
"""
    write_section("Resize rule equality (bench_resize.py)", body)
    print(f"wrote {REFERENCE_JSON.relative_to(ROOT)} and bench/RESULTS.md")


if __name__ == "__main__":
    main()
