"""Benchmark: a one-shot shell user's cold start, ``qwenvl ask`` against a Python one-liner with the openai SDK.

Each way is a new process that sends one question about a small image to a loopback server (in its own
process, ``bench_overhead.py --serve``) that answers at once, and prints the answer:

- **openai** SDK: ``python oneshot.py card.png "..."``: a four-line script (written by this benchmark) that
  imports ``openai``, reads the file, builds the data URL and calls ``chat.completions.create``.
- **qwenvl ask** with the 320x240 PNG and with a 640x480 JPEG photograph (a JPEG's integrity check loads
  simplejpeg and numpy, a PNG's does not), ``--no-stream``, the usage log on (as by default), run as
  ``python -c "from qwenvl.cli.main import main; main()" ask ...`` with the tree under test first on
  ``PYTHONPATH`` (the installed ``qwenvl`` script does the same).
- for information: ``qwenvl ask --help``, ``python -c "import openai"`` and ``python -c "import qwenvl"``.

With ``--against SRC`` (a ``src`` folder of another qwenvl tree, e.g. ``/work/main/src``) its ``qwenvl ask``
runs too, in the same rounds. The ways run in interleaved rounds; a way's time is the median over rounds,
each ratio the median of the per-round ratios against the openai one-shot.

    .venv/bin/python bench/bench_cold_start.py [--rounds 15] [--against ../main/src]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))

ONESHOT = """import base64, sys
import openai
path, prompt, base = sys.argv[1:4]
url = "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()
client = openai.OpenAI(api_key="sk-bench", base_url=base + "/compatible-mode/v1", max_retries=0)
content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}]
messages = [{"role": "user", "content": content}]
reply = client.chat.completions.create(model="qwen3-vl-plus", max_tokens=512, messages=messages)
print(reply.choices[0].message.content)
"""
QWENVL = "from qwenvl.cli.main import main; main()"
PROMPT = "What is in this picture?"


def run(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--against", type=Path, help="the src folder of another qwenvl tree to time as well")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args()

    from bench_overhead import small_media, small_png
    from results_md import machine, write_section

    server = subprocess.Popen(
        [sys.executable, str(HERE / "bench_overhead.py"), "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            card = folder / "card.png"
            small_png(card)
            photo = small_media(folder, card)["JPEG photo 640x480, baseline"][0]
            oneshot = folder / "oneshot.py"
            oneshot.write_text(ONESHOT)
            env = {**os.environ, "QWENVL_HOME": str(folder / "home"), "DASHSCOPE_API_KEY": "sk-bench"}
            env.pop("PYTHONPATH", None)
            ours = {**env, "PYTHONPATH": str(SRC)}
            py = sys.executable
            ask = ["ask", "--no-stream", "--base-url", base]
            ways: dict[str, tuple[list[str], dict[str, str]]] = {
                f"openai {version('openai')} one-shot script, the PNG": (
                    [py, str(oneshot), str(card), PROMPT, base],
                    env,
                ),
                "qwenvl ask, the PNG": ([py, "-c", QWENVL, *ask, str(card), PROMPT], ours),
                "qwenvl ask, the JPEG": ([py, "-c", QWENVL, *ask, str(photo), PROMPT], ours),
            }
            if args.against:
                theirs = {**env, "PYTHONPATH": str(args.against.resolve())}
                ways[f"qwenvl ask, the PNG ({args.against})"] = ([py, "-c", QWENVL, *ask, str(card), PROMPT], theirs)
                ways[f"qwenvl ask, the JPEG ({args.against})"] = ([py, "-c", QWENVL, *ask, str(photo), PROMPT], theirs)
            ways["qwenvl ask --help"] = ([py, "-c", QWENVL, "ask", "--help"], ours)
            ways['python -c "import openai"'] = ([py, "-c", "import openai"], env)
            ways['python -c "import qwenvl"'] = ([py, "-c", "import qwenvl"], ours)
            ways['python -c "pass"'] = ([py, "-c", "pass"], env)
            for argv, way_env in ways.values():
                run(argv, way_env)  # warm-up: the page cache, .pyc files
            load_before = os.getloadavg()[0]
            times: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(args.rounds):
                for name, (argv, way_env) in ways.items():
                    times[name].append(run(argv, way_env))
            load_after = os.getloadavg()[0]
    finally:
        server.terminate()
        server.wait(timeout=10)

    anchor = next(iter(ways))
    lines = ["| process | wall time (ms) | vs the openai one-shot |", "| --- | --- | --- |"]
    ratios = {}
    for name in ways:
        ratios[name] = statistics.median(a / b for a, b in zip(times[name], times[anchor], strict=True))
        lines.append(f"| {name} | {statistics.median(times[name]) * 1e3:.0f} | {ratios[name]:.2f}x |")
    table = "\n".join(lines)
    worst = max(ratios["qwenvl ask, the PNG"], ratios["qwenvl ask, the JPEG"])
    verdict = f"`qwenvl ask` from a cold start: at most **{worst:.2f}x** the openai one-shot's time."
    print(table, verdict, sep="\n\n")
    if args.no_write:
        return
    against = f" --against {args.against}" if args.against else ""
    if args.against:
        commit = subprocess.run(
            ["git", "-C", str(args.against), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        against += f" (that tree at commit {commit or 'unknown'})"
    body = f"""Measured by `bench/bench_cold_start.py --rounds {args.rounds}{against}` on \
{datetime.date.today().isoformat()}. Machine: {machine()}; 1-minute load average {load_before:.1f} before the \
timed rounds and {load_after:.1f} after (shared with other engineers' work: busy).

What is timed: the wall time of a new process that asks one question about a small image of a loopback server
that answers at once (`bench_overhead.py --serve`) and prints the answer, as a shell user runs it once. The
anchor is a Python script with the openai SDK {version("openai")} that reads the 320x240 PNG, builds its data URL
and calls `chat.completions.create`; `qwenvl ask --no-stream` sends the same PNG, or a 640x480 JPEG photograph
(whose integrity check loads simplejpeg and numpy), with its usage log on. {args.rounds} interleaved rounds;
medians of the wall times and of the per-round ratios.

{table}

{verdict}
"""
    write_section("CLI cold start (bench_cold_start.py)", body)
    print("wrote bench/RESULTS.md")


if __name__ == "__main__":
    main()
