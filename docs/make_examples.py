"""Make the README's task examples: run each verb against the loopback fake of DashScope (tests/
dashscope_server.py) with recorded-style answers, print the transcript, and write the pictures:

    docs/ground-example.png    `qwenvl ground ... --out`: boxes drawn on the original image
    docs/ground-points-example.png   the same with --points (a Qwen2.5-VL answer in its XML form)
    docs/events-sheet.png      `qwenvl events ... --sheet`: the sampled frames with their times

Run from the repository root: python docs/make_examples.py. Needs no key and no network; every input is
generated here. The answers are scripted, so the output shows what qwenvl does with a model's answer (parsing,
coordinate conversion, checks), not what a model would say about these pictures.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "tests"))

from dashscope_server import DashScopeServer, Reply  # noqa: E402

W, H = 1280, 853


def scene(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """A beach with two people and a dog; returns each figure's box in pixels."""
    img = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(img)
    for y in range(H):  # sky, sea, sand
        if y < 420:
            c = (int(120 + 100 * y / 420), int(170 + 60 * y / 420), 235)
        elif y < 520:
            c = (30, 100 + (y - 420) // 2, 160)
        else:
            c = (226 - (y - 520) // 8, 200 - (y - 520) // 8, 150 - (y - 520) // 10)
        draw.line((0, y, W, y), fill=c)
    draw.ellipse((1010, 60, 1130, 180), fill=(255, 214, 90))
    boxes = {}

    def person(x: int, y: int, shirt: tuple[int, int, int], name: str) -> None:
        draw.ellipse((x - 38, y, x + 38, y + 80), fill=(234, 192, 160))
        draw.rounded_rectangle((x - 62, y + 88, x + 62, y + 300), 28, fill=shirt)
        draw.rectangle((x - 50, y + 300, x - 12, y + 440), fill=(40, 50, 80))
        draw.rectangle((x + 12, y + 300, x + 50, y + 440), fill=(40, 50, 80))
        boxes[name] = (x - 62, y, x + 62, y + 440)

    person(330, 300, (200, 60, 50), "person 1")
    person(560, 330, (60, 130, 90), "person 2")
    x, y = 820, 600  # the dog
    draw.ellipse((x, y + 40, x + 230, y + 140), fill=(150, 95, 45))
    draw.ellipse((x + 190, y, x + 290, y + 90), fill=(150, 95, 45))
    for leg in (x + 30, x + 70, x + 160, x + 195):
        draw.rectangle((leg, y + 120, leg + 22, y + 210), fill=(120, 75, 35))
    boxes["dog"] = (x, y, x + 290, y + 210)
    draw.ellipse((700, 760, 750, 810), fill=(250, 250, 250), outline=(200, 40, 40), width=6)
    boxes["ball"] = (700, 760, 750, 810)
    img.save(path, quality=92)
    return boxes


def grid(box: tuple[int, int, int, int]) -> list[int]:
    """A box on Qwen3-VL's 0-1000 grid."""
    x1, y1, x2, y2 = box
    return [round(x1 / W * 1000), round(y1 / H * 1000), round(x2 / W * 1000), round(y2 / H * 1000)]


def receipt(path: Path) -> None:
    img = Image.new("RGB", (480, 320), "white")
    draw = ImageDraw.Draw(img)
    lines = ["CAFE ALIBABA", "2 x Green tea   12.00", "1 x Bun          4.50", "TOTAL           16.50"]
    for i, line in enumerate(lines):
        draw.text((40, 40 + i * 60), line, fill="black")
    img.save(path)


def clip(path: Path, seconds: int = 6, fps: int = 10) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for i in range(seconds * fps):
            frame = np.full((180, 320, 3), (235, 225, 205), np.uint8)
            x = 20 + i * 4  # a box moving right, then a second one appearing
            frame[100:150, x : x + 50] = (170, 120, 60)
            if i >= 3 * fps:
                frame[40:80, 240:280] = (40, 90, 200)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qwenvl-examples-"))
    boxes = scene(work / "beach.jpg")
    receipt(work / "receipt.png")
    clip(work / "clip.mp4")
    for name in ("invoice-1.png", "invoice-2.png"):
        Image.new("RGB", (400, 300), "white").save(work / name)
    (work / "invoice.schema.json").write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "invoice_no": {"type": "string"},
                    "amount": {"type": "number"},
                },
                "required": ["title", "amount"],
            }
        )
    )

    qwen3 = [
        {"bbox_2d": grid(boxes[k]), "label": "person" if k.startswith("person") else k}
        for k in ("person 1", "person 2", "dog")
    ]
    # Qwen2.5-VL points are pixels of the image as it saw it: 1204x812 for this 1280x853 photo
    bx, by = (boxes["ball"][0] + boxes["ball"][2]) / 2, (boxes["ball"][1] + boxes["ball"][3]) / 2
    points = f'<points x1="{round(bx * 1204 / W)}" y1="{round(by * 812 / H)}" alt="ball">ball</points>'
    timeline = {
        "events": [
            {"start_time": "00:00:00", "end_time": "00:00:03", "event": "A brown box slides to the right."},
            {
                "start_time": "00:00:03",
                "end_time": "00:00:06",
                "event": "A blue box appears at the top right while the brown one keeps moving.",
            },
        ]
    }
    steps: list[tuple[list[str], list[Reply]]] = [
        (
            ["ground", "beach.jpg", "every person and dog", "--out", str(DOCS / "ground-example.png")],
            [Reply(text="```json\n" + json.dumps(qwen3) + "\n```")],
        ),
        (
            ["ground", "beach.jpg", "every person and dog", "--json"],
            [Reply(text=json.dumps(qwen3[:2]) + ', {"bbox_2d": [641, 70', finish_reason="length")],
        ),
        (
            [
                "ground",
                "beach.jpg",
                "the ball",
                "--points",
                "--model",
                "qwen2.5-vl-72b-instruct",
                "--out",
                str(DOCS / "ground-points-example.png"),
            ],
            [Reply(text=points)],
        ),
        (
            ["ocr", "receipt.png"],
            [Reply(text="CAFE ALIBABA\n2 x Green tea   12.00\n1 x Bun          4.50\nTOTAL           16.50")],
        ),
        (
            ["ocr", "receipt.png", "--format", "json"],
            [
                Reply(
                    text=json.dumps(
                        [
                            {"bbox_2d": [83, 125, 350, 175], "text_content": "CAFE ALIBABA"},
                            {"bbox_2d": [83, 500, 560, 550], "text_content": "TOTAL 16.50"},
                        ]
                    )
                )
            ],
        ),
        (
            ["extract", "invoice-1.png", "invoice-2.png", "--schema", "invoice.schema.json"],
            [
                Reply(text='{"title": "Cafe Alibaba", "invoice_no": "A-1021", "amount": 16.5}'),
                Reply(text='```json\n{"title": "Book shop", "invoice_no": "B-77", "amount": 42}\n```'),
            ],
        ),
        (["events", "clip.mp4", "--sheet", str(DOCS / "events-sheet.png")], [Reply(text=json.dumps(timeline))]),
        (
            ["ask", "receipt.png", "Is the total right?", "--thinking"],
            [Reply(reasoning="12.00 + 4.50 = 16.50, and the receipt says 16.50.", text="Yes: 12.00 + 4.50 = 16.50.")],
        ),
    ]
    with DashScopeServer(api_key="sk-examples") as srv:
        env = {
            **os.environ,
            "DASHSCOPE_API_KEY": "sk-examples",
            "DASHSCOPE_COMPATIBLE_BASE_URL": srv.compat_base,
            "DASHSCOPE_HTTP_BASE_URL": srv.native_base,
            "COLUMNS": "110",
            "NO_COLOR": "1",
        }
        for args, replies in steps:
            srv.enqueue(*replies)
            p = subprocess.run(
                [sys.executable, "-m", "qwenvl", *args], cwd=work, env=env, capture_output=True, text=True, timeout=120
            )
            shown = [a.replace(str(DOCS), "docs") for a in args]
            print(f"$ qwenvl {shlex.join(shown)}")
            print(p.stdout.rstrip("\n"))
            for line in p.stderr.replace(str(DOCS), "docs").splitlines():
                print(f"  [stderr] {line}")
            if p.returncode:
                print(f"  [exit {p.returncode}]")
            print()


if __name__ == "__main__":
    main()
