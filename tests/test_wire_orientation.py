"""Issue 8 item 6: `ground --no-resize` on an EXIF-rotated JPEG gives boxes in the image the user sees."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import make_client, run_cli
from dashscope_server import Reply
from qwenvl.media.resize import smart_resize
from qwenvl.models import model_info
from qwenvl.tasks import ground
from qwenvl.tasks.grounding import to_upright

STORED = (400, 200)  # width, height as stored
RED = (50, 20, 150, 60)  # x1, y1, x2, y2 of a red block in the stored pixels


def rotated_jpeg(path, orientation: int):
    img = Image.new("RGB", STORED, (255, 255, 255))
    img.paste((255, 0, 0), RED)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


def red_box_upright(path) -> tuple[int, int, int, int]:
    """Where a viewer shows the red block (EXIF applied, as every viewer does)."""
    with Image.open(path) as img:
        up = np.asarray(ImageOps.exif_transpose(img).convert("RGB")).astype(int)
    mask = (up[:, :, 0] > 200) & (up[:, :, 1] < 60) & (up[:, :, 2] < 60)
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("orientation", range(2, 9))
def test_to_upright_matches_what_viewers_show(isolated_env, orientation):
    path = rotated_jpeg(isolated_env / "r.jpg", orientation)
    (ax, ay), (bx, by) = (
        to_upright(RED[0], RED[1], STORED, orientation),
        to_upright(RED[2], RED[3], STORED, orientation),
    )
    got = (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
    assert all(abs(g - e) <= 2 for g, e in zip(got, red_box_upright(path), strict=True))


def _answer(model: str) -> str:
    """The model's answer for the red block in the STORED image it was sent, in its family's convention."""
    info = model_info(model)
    if info.grounding == "absolute":
        h, w = smart_resize(STORED[1], STORED[0], info.factor, info.min_pixels, info.default_max_pixels)
        sx, sy = w / STORED[0], h / STORED[1]
    else:
        sx, sy = 1000 / STORED[0], 1000 / STORED[1]
    box = [round(RED[0] * sx), round(RED[1] * sy), round(RED[2] * sx), round(RED[3] * sy)]
    return json.dumps([{"bbox_2d": box, "label": "red"}])


@pytest.mark.parametrize("model", ["qwen2.5-vl-7b-instruct", "qwen3-vl-plus"])
@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_ground_no_resize_returns_upright_boxes(server, protocol, isolated_env, model, orientation):
    path = rotated_jpeg(isolated_env / "r.jpg", orientation)
    server.enqueue(Reply(text=_answer(model)))
    with make_client(server, protocol) as c:
        g = ground(c, str(path), "red block", model=model, prepare=False)
    expected = red_box_upright(path)
    b = g.boxes[0]
    assert all(abs(got - e) <= 3 for got, e in zip((b.x1, b.y1, b.x2, b.y2), expected, strict=True)), (b, expected)
    upright = (STORED[1], STORED[0]) if orientation in (6, 8) else STORED
    assert (g.width, g.height) == upright
    assert any("EXIF orientation" in w for w in g.warnings)


def test_prepared_image_needs_no_turning(server, isolated_env):
    """Prepared (the default), the image is sent upright: boxes are read on it directly, with no warning."""
    path = rotated_jpeg(isolated_env / "r.jpg", 6)
    expected = red_box_upright(path)
    answer = [
        round(expected[0] / 200 * 1000),
        round(expected[1] / 400 * 1000),
        round(expected[2] / 200 * 1000),
        round(expected[3] / 400 * 1000),
    ]
    server.enqueue(Reply(text=json.dumps([{"bbox_2d": answer, "label": "red"}])))
    with make_client(server) as c:
        g = ground(c, str(path), "red block")
    b = g.boxes[0]
    assert all(abs(got - e) <= 3 for got, e in zip((b.x1, b.y1, b.x2, b.y2), expected, strict=True))
    assert not any("EXIF" in w for w in g.warnings)


def test_cli_ground_no_resize(server, env, isolated_env):
    path = rotated_jpeg(isolated_env / "r.jpg", 6)
    server.enqueue(Reply(text=_answer("qwen2.5-vl-7b-instruct")))
    p = run_cli("ground", str(path), "red block", "--no-resize", "-m", "qwen2.5-vl-7b-instruct", "--json", env=env)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    box = data["boxes"][0]
    expected = red_box_upright(path)
    assert all(abs(box[k] - e) <= 3 for k, e in zip(("x1", "y1", "x2", "y2"), expected, strict=True))
    assert (data["width"], data["height"]) == (200, 400)
    assert "EXIF orientation 6" in p.stderr
