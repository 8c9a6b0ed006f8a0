"""Benchmark: what the batch fingerprint (``journal.fingerprint``: ``plan.question`` hashed) costs a large batch.

A batch fingerprints every item once, when ``Batch(...)`` takes the items, and a rerun on an output whose journal
an earlier version wrote also computes the earlier formulas (``legacy_fingerprints``). Measured against a
reference tree (``--against``, e.g. the commit before the change, exported with ``git archive``), each in a
fresh process, on the same 10,000-line requests file (as ``qwenvl batch --requests`` reads it; text items with a
few options, the worst case: no media work to hide the fingerprint):

1. **fingerprint**: the function alone over the 10,000 items' fields (microseconds per item);
2. **take**: ``Batch(read_requests(...))`` (reading the file, validating each line, fingerprinting, spooling);
3. **first run**: estimate and run against a loopback server that answers at once (bench_batch's);
4. **rerun**: the same command again: take, estimate and run, every answer reused, nothing sent.

Run (from the repository root; not part of CI):

    git archive <ref-commit> src | tar -x -C /tmp/fp_ref
    .venv/bin/python bench/bench_fingerprint.py --against /tmp/fp_ref/src [--items 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def write_requests(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            line = {"id": f"item-{i}", "prompt": f"Caption item {i}", "max_tokens": 16, "temperature": 0.0}
            if i % 2:
                line.update(enable_thinking=False, seed=7)
            fh.write(json.dumps(line) + "\n")


def child(url: str, n: int) -> dict:
    from qwenvl.batch import Batch, read_requests
    from qwenvl.batch.journal import fingerprint

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["QWENVL_HOME"] = str(folder / "home")
        os.environ["QWENVL_CACHE_DIR"] = str(folder / "cache")
        requests = folder / "requests.jsonl"
        write_requests(requests, n)
        fields = [item.request for item in read_requests(requests)]
        defaults = {"model": "qwen3-vl-plus"}
        t0 = time.perf_counter()
        for f in fields:
            fingerprint(f, defaults)
        fp_s = time.perf_counter() - t0
        out: dict = {"n": n, "fingerprint_us": fp_s / n * 1e6}
        for phase in ("first", "rerun"):
            t0 = time.perf_counter()
            batch = Batch(read_requests(requests), folder / "out.jsonl", api_key="sk-bench", base_url=url)
            t1 = time.perf_counter()
            batch.estimate()
            summary = batch.run()
            t2 = time.perf_counter()
            batch.close()
            assert summary.ok == n and summary.sent == (n if phase == "first" else 0), summary
            out[f"{phase}_take_s"] = t1 - t0
            out[f"{phase}_total_s"] = t2 - t0
        return out


def measure(url: str, n: int, src: str | None) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    p = subprocess.run(
        [sys.executable, __file__, "--child", url, "--items", str(n)], env=env, capture_output=True, text=True
    )
    if p.returncode:
        raise SystemExit(p.stderr)
    return json.loads(p.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--against", help="the reference tree's src folder")
    ap.add_argument("--child", metavar="URL")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.items)))
        return
    from bench_batch import ServerProcess

    keys = ("fingerprint_us", "first_take_s", "first_total_s", "rerun_take_s", "rerun_total_s")
    runs: dict[str, list[dict]] = {"ours": [], "ref": []}
    with ServerProcess(0.0) as srv:
        for _ in range(args.repeat):  # interleaved, so that the machine's load falls on both alike
            runs["ours"].append(measure(srv.url, args.items, None))
            if args.against:
                runs["ref"].append(measure(srv.url, args.items, args.against))
    print(f"{args.items:,} items, median of {args.repeat} fresh processes each")
    for key in keys:
        ours = statistics.median(r[key] for r in runs["ours"])
        line = f"  {key:16} ours {ours:9.3f}"
        if runs["ref"]:
            ref = statistics.median(r[key] for r in runs["ref"])
            line += f"   ref {ref:9.3f}   ratio ours/ref {ours / ref:5.2f}"
        print(line)


if __name__ == "__main__":
    main()
