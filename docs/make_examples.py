"""Make the README's example outputs: run each verb against the loopback fake of DashScope (tests/
dashscope_server.py) with recorded-style answers, and write the README's console blocks and pictures:

    docs/ground-example.png    `qwenvl ground ... --out`: boxes drawn on the original image
    docs/ground-points-example.png   the same with --points (a Qwen2.5-VL answer in its XML form)
    docs/events-sheet.png      `qwenvl events ... --sheet`: the sampled frames with their times

Run from the repository root: ``python docs/make_examples.py`` prints the transcripts and rewrites the pictures;
``--write`` also puts each transcript in its README block (the console block that starts with its first
command). ``tests/test_readme_examples.py`` runs the same steps and fails when a README block or a picture is not
what the commands make. Needs no key and no network; every input is generated here, the same on every run. The
answers are scripted, so the output shows what qwenvl does with a model's answer (parsing, coordinate
conversion, checks), not what a model would say about these pictures. A transcript is the command's standard
output, then its standard error; a JSON document with a list of several items is shortened to its first item
(``…`` stands for the rest), and the command line may carry a comment saying so. The service's request ids are
random: each is shown as its first four characters and ``…``, the same ones on every run (``_request_ids``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PICTURES = ("ground-example.png", "ground-points-example.png", "events-sheet.png")
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


def usage(inputs: int, outputs: int, *, images: int) -> dict[str, object]:
    """A compatible-mode usage object as the service reports it (the fake's own counts are placeholders)."""
    return {
        "prompt_tokens": inputs,
        "completion_tokens": outputs,
        "total_tokens": inputs + outputs,
        "prompt_tokens_details": {"image_tokens": images},
    }


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
    x264 = "libx264" in av.codecs_available
    # The same bytes on every run: one encoder thread, and x264's C code (asm=0). With its SIMD code two clips came
    # out, in shares that changed from process to process (the README's clip row said 28 kB or 31 kB), though the
    # frames were the same; its C code gives one clip every time (tests/test_readme_examples.py).
    options = {"x264-params": "asm=0"} if x264 else None
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264" if x264 else "mpeg4", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.codec_context.thread_count = 1
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


def photo(path: Path) -> None:
    """A 4000x3000 camera photo: the beach scene, enlarged, with seeded sensor noise (the same on every run)."""
    scene(path)
    big = np.asarray(Image.open(path).resize((4000, 3000), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = np.random.default_rng(7).integers(-6, 7, big.shape, dtype=np.int16)
    Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)).save(path, quality=92)


def diagram(path: Path) -> None:
    """An 800x600 diagram: three boxes joined by arrows."""
    img = Image.new("RGB", (800, 600), "white")
    draw = ImageDraw.Draw(img)
    for i, label in enumerate(("sources", "media", "protocols")):
        x = 60 + i * 250
        draw.rectangle((x, 250, x + 180, 350), outline="black", width=3)
        draw.text((x + 50, 292), label, fill="black")
        if i:
            draw.line((x - 70, 300, x, 300), fill="black", width=3)
    img.save(path)


def document(path: Path, pages: int = 3) -> None:
    """A PDF of ``pages`` A4 pages of text lines (Pillow's PDF writer)."""
    sheets = []
    for n in range(pages):
        img = Image.new("RGB", (1240, 1754), "white")
        draw = ImageDraw.Draw(img)
        for i in range(30):
            draw.text((120, 120 + i * 50), f"Page {n + 1}, line {i + 1}: the quick brown fox", fill="black")
        sheets.append(img)
    sheets[0].save(path, save_all=True, append_images=sheets[1:], resolution=150)


def inputs(work: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every input file of the examples, made in ``work``; returns the beach's boxes in pixels."""
    boxes = scene(work / "beach.jpg")
    photo(work / "photo.jpg")
    diagram(work / "diagram.png")
    document(work / "doc.pdf")
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
    return boxes


@dataclass
class Step:
    """One command of a README block: its arguments (a picture it writes named ``docs/NAME``), the answers the
    fake service gives it, the comment shown after it (spaces included), whether its JSON is shortened, and
    whether its output is shown at all."""

    args: list[str]
    replies: list[Reply] = field(default_factory=list)
    comment: str = ""
    shorten: bool = False
    output: bool = True


def steps(boxes: dict[str, tuple[int, int, int, int]]) -> list[list[Step]]:
    """The README's example blocks, each a list of steps, in README order."""
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
    receipt_text = "CAFE ALIBABA\n2 x Green tea   12.00\n1 x Bun          4.50\nTOTAL           16.50"
    lines = [  # each line of the receipt as drawn (6 px a character, 16 px high), on the 0-1000 grid of 480x320
        {
            "bbox_2d": [
                83,
                round((40 + i * 60) / 320 * 1000),
                round((40 + 6 * len(t)) / 480 * 1000),
                round((56 + i * 60) / 320 * 1000),
            ],
            "text_content": t,
        }
        for i, t in enumerate(receipt_text.split("\n"))
    ]
    return [
        [
            Step(["tokens", "photo.jpg", "diagram.png", "clip.mp4", "doc.pdf", "--model", "qwen3-vl-plus"]),
            Step(["tokens", "photo.jpg", "--model", "qwen-vl-max", "--region", "intl"]),
            Step(
                ["tokens", "photo.jpg", "--model", "qwen-vl-max", "--high-res", "--json"],
                comment="     # machine-readable",
                output=False,
            ),
        ],
        [
            Step(
                ["ground", "beach.jpg", "every person and dog", "--out", "docs/ground-example.png"],
                [Reply(text="```json\n" + json.dumps(qwen3) + "\n```")],
            ),
            Step(
                [
                    "ground",
                    "beach.jpg",
                    "the ball",
                    "--points",
                    "--model",
                    "qwen2.5-vl-72b-instruct",
                    "--out",
                    "docs/ground-points-example.png",
                ],
                [Reply(text=points)],
            ),
            Step(
                ["ground", "beach.jpg", "every person and dog", "--json"],
                [
                    Reply(
                        text=json.dumps(qwen3[:2]) + ', {"bbox_2d": [641, 70',
                        finish_reason="length",
                        usage=usage(1250, 2048, images=1192),  # the photo's tokens; cut off at max_tokens
                    )
                ],
                comment="      # an answer cut off at max_tokens (shortened: …)",
                shorten=True,
            ),
        ],
        [
            Step(["ocr", "receipt.png"], [Reply(text=receipt_text)]),
            Step(
                ["ocr", "receipt.png", "--format", "json"],
                [Reply(text=json.dumps(lines), usage=usage(420, 180, images=390))],
                comment="        # indented, 2 spaces (shortened here: …)",
                shorten=True,
            ),
        ],
        [
            Step(
                ["extract", "invoice-1.png", "invoice-2.png", "--schema", "invoice.schema.json"],
                [
                    Reply(text='{"title": "Cafe Alibaba", "invoice_no": "A-1021", "amount": 16.5}'),
                    Reply(text='```json\n{"title": "Book shop", "invoice_no": "B-77", "amount": 42}\n```'),
                ],
            )
        ],
        [Step(["events", "clip.mp4", "--sheet", "docs/events-sheet.png"], [Reply(text=json.dumps(timeline))])],
    ]


def shortened(text: str) -> str:
    """A JSON document as the README shows it: indented by 2, each list of several items cut to its first and
    ``…``. Text that is not one JSON document is returned as it is."""
    try:
        data = json.loads(text)
    except ValueError:
        return text

    def cut(value: object) -> object:
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        if isinstance(value, list):
            return [cut(value[0]), "\u2026"] if len(value) > 1 else [cut(v) for v in value]
        return value

    said = json.dumps(cut(data), indent=2, ensure_ascii=False)
    return re.sub(r'^(\s*)"\u2026"$', lambda m: m[1] + "\u2026", said, flags=re.M)


def transcript(step: Step, work: Path, docs: Path, env: dict[str, str]) -> str:
    """``step`` run as ``python -m qwenvl`` in ``work`` (pictures written in ``docs``): its command line, then
    its standard output and standard error, as the README shows them."""
    args = [a.replace("docs/", f"{docs}/") if a.startswith("docs/") else a for a in step.args]
    p = subprocess.run(
        [sys.executable, "-m", "qwenvl", *args], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    shown = [f"$ qwenvl {' '.join(_shell_word(a) for a in step.args)}{step.comment}"]
    if step.output:
        out = p.stdout.rstrip("\n")
        shown += [(shortened(out) if step.shorten else out), p.stderr.rstrip("\n").replace(f"{docs}/", "docs/")]
        if p.returncode:
            shown.append(f"[exit {p.returncode}]")
    return _request_ids("\n".join(line for line in shown if line), step)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _request_ids(text: str, step: Step) -> str:
    """``text`` with each request id (a random UUID from the fake service) shown short and the same on every run:
    four hex characters made from the command and the id's place in the transcript, then ``…``."""
    seen: dict[str, str] = {}

    def short(m: re.Match[str]) -> str:
        if m[0] not in seen:
            seed = f"{' '.join(step.args)}#{len(seen)}".encode()
            seen[m[0]] = hashlib.sha256(seed).hexdigest()[:4] + "\u2026"
        return seen[m[0]]

    return _UUID.sub(short, text)


def _shell_word(word: str) -> str:
    """``word`` as a shell reads it, in double quotes where it needs quoting (as the README writes commands)."""
    quoted = shlex.quote(word)
    if quoted == word or re.search(r'["$`\\!]', word):
        return quoted
    return f'"{word}"'


def run(docs: Path) -> list[str]:
    """Every README block's text (its lines between the fences), the pictures written in ``docs``."""
    docs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qwenvl-examples-") as folder, DashScopeServer(api_key="sk-ex") as srv:
        work = Path(folder)
        boxes = inputs(work)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "QWENVL_", "ALIBABA_CLOUD_"))},
            "DASHSCOPE_API_KEY": "sk-ex",
            "DASHSCOPE_COMPATIBLE_BASE_URL": srv.compat_base,
            "DASHSCOPE_HTTP_BASE_URL": srv.native_base,
            "QWENVL_HOME": str(work / ".qwenvl"),  # no usage log, cache or config of the user's
            "COLUMNS": "110",
            "NO_COLOR": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        blocks = []
        for block in steps(boxes):
            said = []
            for step in block:
                srv.enqueue(*step.replies)
                said.append(transcript(step, work, docs, env))
            blocks.append("\n".join(said))
        return blocks


_BLOCK = re.compile(r"(```console\n)(.*?)(\n```)", re.S)


def readme_blocks(readme: str, firsts: list[str]) -> dict[str, str]:
    """The README's console blocks that start with each of ``firsts`` (a command line), by that line."""
    found = {}
    for m in _BLOCK.finditer(readme):
        first = m[2].split("\n", 1)[0]
        if first in firsts:
            found[first] = m[2]
    return found


def written(readme: str, blocks: list[str]) -> str:
    """``readme`` with each block that starts as one of ``blocks`` replaced by it."""
    by_first = {b.split("\n", 1)[0]: b for b in blocks}
    return _BLOCK.sub(lambda m: m[1] + by_first.get(m[2].split("\n", 1)[0], m[2]) + m[3], readme)


def main() -> None:
    # the pictures are made in a folder of their own, then copied over the committed ones: the commands never
    # replace a file they did not write (the output rule), and a failed run leaves docs/ as it was
    with tempfile.TemporaryDirectory() as tmp:
        blocks = run(Path(tmp))
        for name in PICTURES:
            (DOCS / name).write_bytes((Path(tmp) / name).read_bytes())
    for block in blocks:
        print(block, end="\n\n")
    if "--write" in sys.argv[1:]:
        README.write_text(written(README.read_text(encoding="utf-8"), blocks), encoding="utf-8")
        print(f"wrote {len(blocks)} blocks in {README.name}")


if __name__ == "__main__":
    main()
