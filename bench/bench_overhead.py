"""Benchmark: client time per request with a small image, against the official SDKs, on an instant server.

Every way sends the same question about the same 320x240 PNG (about 2 kB, made by this script) to a
loopback server (in its own process) that answers at once, and waits for the answer:

- **openai** SDK (``OpenAI(...).chat.completions.create``, OpenAI-compatible protocol): the caller reads
  the file and builds the ``data:image/png;base64,...`` URL itself, inside the timed call, as a user must.
- **dashscope** SDK (``MultiModalConversation.call``, DashScope protocol): the same data URL, built in the
  timed call (a local path would be uploaded to OSS, which a loopback server cannot stand in for).
- **qwenvl** ``Client.complete(prompt=..., image=path)`` in both protocols: the file is read, identified and
  checked, then (within budget, a PNG without rotation or transparency) passed through from its header.
  The usage log is on (as by default), in a temporary ``QWENVL_HOME``.

Each client is made once (as a caller would keep it), warmed up, then the ways run in interleaved rounds
of ``--per-round`` requests each; a way's time is the median over rounds of its mean time per request, and
each ratio is the median of the per-round ratios. Text-only requests are timed the same way, for
information. Target: qwenvl (compat) with the image at most 1.2x the openai SDK's time.

Run (from the repository root; not part of CI; the SDKs are in the ``bench`` extra):

    .venv/bin/pip install -e ".[bench]" && .venv/bin/python bench/bench_overhead.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

MODEL = "qwen3-vl-plus"
PROMPT = "What is in this picture?"


# --- the server (its own process: `bench_overhead.py --serve`) ----------------------------------------------


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = json.loads(await reader.readexactly(length))
            if b"/compatible-mode/" in target:
                reply = {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "usage": {"prompt_tokens": 90, "completion_tokens": 3, "total_tokens": 93},
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "A test card."},
                        }
                    ],
                }
            else:
                reply = {
                    "request_id": "bench",
                    "output": {
                        "choices": [
                            {
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": [{"text": "A test card."}]},
                            }
                        ]
                    },
                    "usage": {"input_tokens": 90, "output_tokens": 3, "total_tokens": 93, "image_tokens": 80},
                }
            data = json.dumps(reply).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve() -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", 0, backlog=64)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# --- the ways --------------------------------------------------------------------------------------------------


def small_png(path: Path) -> None:
    """A 320x240 test card: flat colour bars and a few labels, as a small screenshot or icon sheet would be."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (320, 240), "white")
    draw = ImageDraw.Draw(img)
    colours = ["#c0c0c0", "#c0c000", "#00c0c0", "#00c000", "#c000c0", "#c00000", "#0000c0"]
    for i, colour in enumerate(colours):
        draw.rectangle((i * 320 // 7, 0, (i + 1) * 320 // 7, 160), fill=colour)
    for i in range(4):
        draw.text((10 + 80 * i, 180), f"CH {i + 1}", fill="black")
    draw.rectangle((0, 200, 320, 240), fill="#202020")
    img.save(path, "PNG", optimize=True)


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def make_ways(base: str, image: Path) -> dict[str, tuple[object, object]]:
    """{name: (with image, text only)}: zero-argument callables, each one request answered."""
    import dashscope
    import openai

    import qwenvl

    oa = openai.OpenAI(api_key="sk-bench", base_url=f"{base}/compatible-mode/v1", max_retries=0)

    def openai_image():
        r = oa.chat.completions.create(
            model=MODEL,
            max_tokens=512,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url(image)}},
                        {"type": "text", "text": PROMPT},
                    ],
                }
            ],
        )
        assert r.choices[0].message.content

    def openai_text():
        r = oa.chat.completions.create(model=MODEL, max_tokens=512, messages=[{"role": "user", "content": PROMPT}])
        assert r.choices[0].message.content

    dashscope.base_http_api_url = f"{base}/api/v1"

    def dashscope_image():
        r = dashscope.MultiModalConversation.call(
            api_key="sk-bench",
            model=MODEL,
            max_tokens=512,
            messages=[{"role": "user", "content": [{"image": data_url(image)}, {"text": PROMPT}]}],
        )
        assert r.status_code == 200, r

    def dashscope_text():
        r = dashscope.MultiModalConversation.call(
            api_key="sk-bench", model=MODEL, max_tokens=512, messages=[{"role": "user", "content": [{"text": PROMPT}]}]
        )
        assert r.status_code == 200, r

    ours = {
        p: qwenvl.Client(api_key="sk-bench", protocol=p, base_url=base, model=MODEL, max_retries=0)
        for p in ("compat", "native")
    }

    def ours_image(protocol: str):
        def run():
            assert ours[protocol].complete(prompt=PROMPT, image=str(image)).text

        return run

    def ours_text(protocol: str):
        def run():
            assert ours[protocol].complete(prompt=PROMPT).text

        return run

    return {
        f"openai {version('openai')}": (openai_image, openai_text),
        f"dashscope {version('dashscope')}": (dashscope_image, dashscope_text),
        "qwenvl (compat)": (ours_image("compat"), ours_text("compat")),
        "qwenvl (native)": (ours_image("native"), ours_text("native")),
    }


def per_request(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=40, help="requests per way per round")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return

    from results_md import machine, write_section

    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["QWENVL_HOME"] = str(Path(tmp) / "home")
            image = Path(tmp) / "card.png"
            small_png(image)
            ways = make_ways(base, image)
            for with_image, text_only in ways.values():
                for fn in (with_image, text_only):
                    per_request(fn, 20)  # warm-up: connections, imports, caches
            load_before = os.getloadavg()[0]
            times: dict[tuple[str, str], list[float]] = {(w, k): [] for w in ways for k in ("image", "text")}
            for _ in range(args.rounds):
                for name, (with_image, text_only) in ways.items():
                    times[(name, "image")].append(per_request(with_image, args.per_round))
                    times[(name, "text")].append(per_request(text_only, args.per_round))
            load_after = os.getloadavg()[0]
            size = image.stat().st_size
    finally:
        server.terminate()
        server.wait(timeout=10)

    anchor = next(iter(ways))

    def med(name: str, kind: str) -> float:
        return statistics.median(times[(name, kind)])

    def ratio(name: str, kind: str) -> float:
        return statistics.median(a / b for a, b in zip(times[(name, kind)], times[(anchor, kind)], strict=True))

    lines = [
        "| client | with the 2 kB PNG (ms/request) | vs openai | text only (ms/request) | vs openai |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ways:
        lines.append(
            f"| {name} | {med(name, 'image') * 1e3:.2f} | {ratio(name, 'image'):.2f}x | "
            f"{med(name, 'text') * 1e3:.2f} | {ratio(name, 'text'):.2f}x |"
        )
    goal = ratio("qwenvl (compat)", "image")
    table = "\n".join(lines)
    verdict = (
        f"qwenvl (compat) with the image: **{goal:.2f}x** the openai SDK's time (target <= 1.2x: "
        f"{'met' if goal <= 1.2 else 'NOT MET'})."
    )
    print(table, verdict, sep="\n\n")
    if args.no_write:
        return
    body = f"""Measured by `bench/bench_overhead.py --rounds {args.rounds} --per-round {args.per_round}` on \
{datetime.date.today().isoformat()}. Machine: {machine()}; 1-minute load average {load_before:.1f} before the \
timed rounds and {load_after:.1f} after (shared with other engineers' work: busy).

What is timed: one request from the caller's side, from the call to the parsed answer, against a loopback
asyncio server in its own process that answers at once (so only client time counts). The image is a
320x240 PNG of {size:,} bytes; the openai and dashscope callers read it and build the base64 data URL
inside the timed call. Anchors: openai {version("openai")} (`OpenAI().chat.completions.create`,
max_retries=0) and dashscope {version("dashscope")} (`MultiModalConversation.call`), both in the same process
and run; qwenvl with its usage log on. {args.rounds} interleaved rounds of {args.per_round} requests per way;
times are medians of the per-round means, ratios medians of the per-round ratios.

{table}

{verdict}
"""
    write_section("Per-request overhead (bench_overhead.py)", body)
    print("wrote bench/RESULTS.md")


if __name__ == "__main__":
    main()
