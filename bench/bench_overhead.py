"""Benchmark: client time per request with a small image, against the official SDKs, on an instant server.

Every way sends the same question about the same 320x240 PNG (about 2 kB, made by this script) to a
loopback server (in its own process) that answers at once, and waits for the answer:

- **openai** SDK (``OpenAI(...).chat.completions.create``, OpenAI-compatible protocol): the caller reads
  the file and builds the ``data:image/png;base64,...`` URL itself, inside the timed call, as a user must.
- **dashscope** SDK (``MultiModalConversation.call``, DashScope protocol): the same data URL, built in the
  timed call (a local path would be uploaded to OSS, which a loopback server cannot stand in for).
- **qwenvl** ``Client.complete(prompt=..., image=path)`` in both protocols: the file is read, identified and
  checked, then (within budget, a PNG without rotation or transparency) passed through from its header.
  The usage log is on (as by default), in a temporary ``QWENVL_HOME``. The client's cache of prepared media
  (``Client.prepared``) is emptied before each request, so every image is new to it (as the files of a batch
  are) and its checks run every time; only the Conversation row below keeps it, as a conversation does.

Each client is made once (as a caller would keep it), warmed up, then the ways run in interleaved rounds
of ``--per-round`` requests each; a way's time is the median over rounds of its mean time per request, and
each ratio is the median of the per-round ratios. Text-only requests are timed the same way, for
information. Target: qwenvl (compat) with the image at most 1.2x the openai SDK's time.

A second table takes the same measure for the other small media a caller sends that need nothing done, and
the other ways of sending them, each against the openai SDK sending the same bytes (its data URL built in the
timed call) in the same rounds: JPEG (baseline, progressive, a phone's with 60 kB of EXIF/XMP/ICC), WebP
(lossy, lossless), grey and palette PNG, the PNG given as a ``data:`` URL, four images in one request, the
fifth turn of a ``Conversation`` whose every turn attached the same JPEG (the openai caller keeps its
history's data URLs), ``AsyncClient`` against ``AsyncOpenAI``, and a streamed answer (``stream=True``, the
whole answer read) against the SDK's stream. Rounds are interleaved with the first table's.

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
            if b"/compatible-mode/" in target and body.get("stream"):
                chunk = {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body["model"],
                }
                events = [
                    {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "A test"}}]},
                    {**chunk, "choices": [{"index": 0, "delta": {"content": " card."}, "finish_reason": "stop"}]},
                    {
                        **chunk,
                        "choices": [],
                        "usage": {"prompt_tokens": 90, "completion_tokens": 3, "total_tokens": 93},
                    },
                ]
                data = b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in events) + b"data: [DONE]\n\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(data), data)
                )
                await writer.drain()
                continue
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


def data_url(path: Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def small_media(folder: Path, card: Path) -> dict[str, tuple[Path, str]]:
    """The second table's media, made here: {case: (file, MIME type)}. The photograph is 640x480 of smooth
    gradients with sensor-like noise (a downsized phone picture); the graphics are the test card's."""
    import numpy as np
    from PIL import Image, ImageCms

    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    base = np.stack([x / 640 * 255, y / 480 * 255, (x + y) / 1120 * 255], -1)
    noise = np.random.default_rng(1).normal(0, 10, base.shape)
    photo = Image.fromarray((base + noise).clip(0, 255).astype(np.uint8))
    graphic = Image.open(card).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 1  # upright
    exif[0x010F] = "Phone"
    exif[0x927C] = b"\x00" * 40_000  # a maker note, as phones write
    phone = {
        "exif": exif.tobytes(),
        "icc_profile": ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
        "xmp": b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b" " * 20_000 + b"</x:xmpmeta>",
    }
    made = {
        "JPEG photo 640x480, baseline": ("photo.jpg", "image/jpeg", photo, {"quality": 85}),
        "JPEG photo 640x480, progressive": ("prog.jpg", "image/jpeg", photo, {"quality": 85, "progressive": True}),
        "JPEG photo 640x480 from a phone (EXIF, XMP, ICC)": (
            "phone.jpg",
            "image/jpeg",
            photo,
            {"quality": 85, **phone},
        ),
        "WebP photo 640x480, lossy": ("photo.webp", "image/webp", photo, {"quality": 80}),
        "WebP test card, lossless": ("card.webp", "image/webp", graphic, {"lossless": True}),
        "PNG test card, grey (L)": ("grey.png", "image/png", graphic.convert("L"), {}),
        "PNG test card, palette (P)": ("palette.png", "image/png", graphic.quantize(16), {}),
    }
    out = {}
    for case, (name, mime, img, options) in made.items():
        path = folder / name
        img.save(path, **options)
        out[case] = (path, mime)
    return out


def make_cases(base: str, card: Path, media: dict[str, tuple[Path, str]]) -> dict[str, tuple[object, object]]:
    """{case: (openai SDK, qwenvl compat)}: zero-argument callables, each one request answered; both send the
    same bytes (the SDK's caller reads each file and builds its data URL in the timed call)."""
    import openai

    import qwenvl
    from qwenvl.chat import Conversation

    oa = openai.OpenAI(api_key="sk-bench", base_url=f"{base}/compatible-mode/v1", max_retries=0)
    ours = qwenvl.Client(api_key="sk-bench", protocol="compat", base_url=base, model=MODEL, max_retries=0)

    def user_turn(files: list[tuple[Path, str]]) -> dict:
        parts: list[dict] = [{"type": "image_url", "image_url": {"url": data_url(p, m)}} for p, m in files]
        return {"role": "user", "content": [*parts, {"type": "text", "text": PROMPT}]}

    def openai_ask(files: list[tuple[Path, str]], history: list[dict] | None = None):
        def run():
            messages = [*(history or []), user_turn(files)]
            r = oa.chat.completions.create(model=MODEL, max_tokens=512, messages=messages)
            assert r.choices[0].message.content

        return run

    def ours_ask(files: list[Path]):
        def run():
            ours.prepared.clear()  # new to the client (the Conversation row is where it keeps what it prepared)
            assert ours.complete(prompt=PROMPT, images=[str(p) for p in files]).text

        return run

    cases: dict[str, tuple[object, object]] = {}
    for case, (path, mime) in media.items():
        cases[case] = (openai_ask([(path, mime)]), ours_ask([path]))

    def ours_data_url():
        ours.prepared.clear()
        assert ours.complete(prompt=PROMPT, image=data_url(card)).text

    cases["PNG test card given as a data: URL"] = (openai_ask([(card, "image/png")]), ours_data_url)
    four = [media["JPEG photo 640x480, baseline"], (card, "image/png"), media["PNG test card, grey (L)"]]
    four.append(media["WebP photo 640x480, lossy"])
    cases["4 images in one request (JPEG, 2 PNG, WebP)"] = (openai_ask(four), ours_ask([p for p, _ in four]))

    photo = media["JPEG photo 640x480, baseline"]
    conv = Conversation(ours)
    for _ in range(4):
        conv.attach(str(photo[0]))
        conv.send(PROMPT)
    history = list(conv.messages)
    openai_history: list[dict] = []
    for _ in range(4):
        openai_history += [user_turn([photo]), {"role": "assistant", "content": "A test card."}]

    def ours_fifth_turn():
        conv.messages = list(history)
        conv.attach(str(photo[0]))
        assert conv.send(PROMPT).text

    cases["Conversation, 5th turn, the JPEG attached in every turn"] = (
        openai_ask([photo], openai_history),
        ours_fifth_turn,
    )

    def ours_fifth_turn_anew():
        ours.prepared.clear()
        ours_fifth_turn()

    cases["the same, every image prepared anew (as before the client kept them)"] = (
        openai_ask([photo], openai_history),
        ours_fifth_turn_anew,
    )

    loop = asyncio.new_event_loop()
    aoa = openai.AsyncOpenAI(api_key="sk-bench", base_url=f"{base}/compatible-mode/v1", max_retries=0)
    aours = qwenvl.AsyncClient(api_key="sk-bench", protocol="compat", base_url=base, model=MODEL, max_retries=0)

    async def openai_async():
        r = await aoa.chat.completions.create(model=MODEL, max_tokens=512, messages=[user_turn([(card, "image/png")])])
        assert r.choices[0].message.content

    async def ours_async():
        aours.prepared.clear()
        assert (await aours.complete(prompt=PROMPT, image=str(card))).text

    cases["async: AsyncClient vs AsyncOpenAI, the PNG"] = (
        lambda: loop.run_until_complete(openai_async()),
        lambda: loop.run_until_complete(ours_async()),
    )

    def openai_stream():
        stream = oa.chat.completions.create(
            model=MODEL,
            max_tokens=512,
            messages=[user_turn([(card, "image/png")])],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text

    def ours_stream():
        ours.prepared.clear()
        assert ours.complete(prompt=PROMPT, image=str(card), stream=True).text

    cases["streamed answer, the PNG"] = (openai_stream, ours_stream)
    return cases


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
            ours[protocol].prepared.clear()  # the image is new to the client, as each file of a batch is
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


def check_costs(card: Path, media: dict[str, tuple[Path, str]], n: int = 100) -> str:
    """A table of what qwenvl's checks of each file cost by themselves (``images.identify``: the header;
    ``images.verify``: the integrity check of the pixel data), beside the openai caller's own work on it (read
    the file and build its base64 data URL): medians of ``n`` calls, in microseconds."""
    from qwenvl.media import images

    def median_us(fn, *args) -> float:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn(*args)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) * 1e6

    rows = [
        "| file | bytes | identify (us) | verify (us) | what verify does | data URL, the SDK caller's (us) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for case, (path, mime) in {"PNG test card, RGB": (card, "image/png"), **media}.items():
        data = path.read_bytes()
        info = images.identify(data, case)
        how = {"PNG": "every chunk's CRC", "JPEG": "segments walked to the EOI", "WEBP": "RIFF chunks walked"}
        how = how[info.format]
        rows.append(
            f"| {case} | {len(data):,} | {median_us(images.identify, data, case):.0f} | "
            f"{median_us(images.verify, data, info, case):.0f} | {how} | {median_us(data_url, path, mime):.0f} |"
        )
    return "\n".join(rows)


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

    from results_md import load_words, machine, write_section

    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["QWENVL_HOME"] = str(Path(tmp) / "home")
            image = Path(tmp) / "card.png"
            small_png(image)
            ways = make_ways(base, image)
            media = small_media(Path(tmp), image)
            cases = make_cases(base, image, media)
            for pair in [*ways.values(), *cases.values()]:
                for fn in pair:
                    per_request(fn, 20)  # warm-up: connections, imports, caches
            load_before = os.getloadavg()[0]
            times: dict[tuple[str, str], list[float]] = {(w, k): [] for w in ways for k in ("image", "text")}
            case_times: dict[tuple[str, str], list[float]] = {(c, k): [] for c in cases for k in ("openai", "qwenvl")}
            for _ in range(args.rounds):
                for name, (with_image, text_only) in ways.items():
                    times[(name, "image")].append(per_request(with_image, args.per_round))
                    times[(name, "text")].append(per_request(text_only, args.per_round))
                for case, (theirs, ours) in cases.items():
                    case_times[(case, "openai")].append(per_request(theirs, args.per_round))
                    case_times[(case, "qwenvl")].append(per_request(ours, args.per_round))
            load_after = os.getloadavg()[0]
            size = image.stat().st_size
            sizes = {case: path.stat().st_size for case, (path, _) in media.items()}
            table3 = check_costs(image, media)
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
    rows = [
        f"| case | file | openai {version('openai')} (ms/request) | qwenvl compat (ms/request) | qwenvl vs openai |",
        "| --- | --- | --- | --- | --- |",
    ]
    ratios = {}
    for case in cases:
        theirs, ours = case_times[(case, "openai")], case_times[(case, "qwenvl")]
        ratios[case] = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
        file = f"{sizes[case]:,} B" if case in sizes else ""
        rows.append(
            f"| {case} | {file} | {statistics.median(theirs) * 1e3:.2f} | {statistics.median(ours) * 1e3:.2f} | "
            f"{ratios[case]:.2f}x |"
        )
    worst = max(ratios, key=ratios.__getitem__)
    table2 = "\n".join(rows)
    verdict2 = (
        f"Every case at most **{ratios[worst]:.2f}x** the openai SDK's time (the highest: {worst}); target <= 1.2x: "
        f"{'met' if ratios[worst] <= 1.2 else 'NOT MET'}."
    )
    print(table, verdict, table2, verdict2, table3, sep="\n\n")
    if args.no_write:
        return
    body = f"""Measured by `bench/bench_overhead.py --rounds {args.rounds} --per-round {args.per_round}` on \
{datetime.date.today().isoformat()}. Machine: {machine()}; 1-minute load average {load_before:.1f} before the \
timed rounds and {load_after:.1f} after ({load_words(load_before, load_after)}).

What is timed: one request from the caller's side, from the call to the parsed answer, against a loopback
asyncio server in its own process that answers at once (so only client time counts). qwenvl's cache of
prepared media is emptied before each request (every image new to the client, its checks run each time),
except in the Conversation row. The image is a
320x240 PNG of {size:,} bytes; the openai and dashscope callers read it and build the base64 data URL
inside the timed call. Anchors: openai {version("openai")} (`OpenAI().chat.completions.create`,
max_retries=0) and dashscope {version("dashscope")} (`MultiModalConversation.call`), both in the same process
and run; qwenvl with its usage log on. {args.rounds} interleaved rounds of {args.per_round} requests per way;
times are medians of the per-round means, ratios medians of the per-round ratios.

{table}

{verdict}

The other small media that need nothing done, and the other ways to send them (same run, same rounds; the
openai caller builds each data URL in the timed call, the Conversation's caller keeps its history's):

{table2}

{verdict2}

A file's rows differ from the first table's PNG row only in the file sent (a Conversation's, in the turns
before), so what one costs more is its own checks. Those checks alone, for a file new to the client (medians
of 100 calls, after the timed rounds): `verify` checks that the pixel data is complete, so that a file cut
short is refused before it is paid for, without decoding anything: a PNG's chunk CRCs, a JPEG's segments
and scans walked to its EOI, a WebP's RIFF chunks walked to the declared end (`qwenvl.media.images.verify`).
A file of at most 1 MiB is read in one read and identified once (`prepare.read_image`).

{table3}
"""
    write_section("Per-request overhead (bench_overhead.py)", body)
    print("wrote bench/RESULTS.md")


if __name__ == "__main__":
    main()
