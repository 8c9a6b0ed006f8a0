"""`qwenvl ground` through the CLI against the fake service, with answers in both families' styles."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import run_cli, write_image
from dashscope_server import Reply

QWEN25 = "qwen2.5-vl-72b-instruct"


@pytest.fixture
def photo(isolated_env):
    # 1280x853: Qwen3-VL sees it as is (1280x864 after the service's rounding); Qwen2.5-VL's 1280-token budget
    # makes the media step send it at 1204x812, the size whose pixels Qwen2.5-VL answers in.
    return write_image(isolated_env / "photo.jpg", (1280, 853), (90, 140, 200), fmt="JPEG")


def prompt_of(server) -> str:
    body = server.requests[-1].json
    messages = body["messages"] if "messages" in body else body["input"]["messages"]
    content = messages[-1]["content"]
    return " ".join(p["text"] for p in content if "text" in p)


def ground(env, *args):
    p = run_cli("ground", *args, env=env)
    assert "Traceback" not in p.stderr
    return p


# --- Qwen3-VL: a 0-1000 grid ---------------------------------------------------------------------------------


def test_qwen3_boxes_fenced_with_prose(server, env, photo, protocol):
    server.enqueue(
        Reply(
            text='Here they are:\n```json\n[{"bbox_2d": [100, 200, 500, 1000], "label": "person"}, '
            '{"bbox_2d": [550, 600, 900, 950], "label": "dog"}]\n```\nTwo in total.'
        )
    )
    p = ground(env, "photo.jpg", "every person and dog", "--json", "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["boxes"] == [
        {"label": "person", "x1": 128, "y1": 171, "x2": 640, "y2": 853},
        {"label": "dog", "x1": 704, "y1": 512, "x2": 1152, "y2": 810},
    ]
    assert (out["width"], out["height"], out["truncated"], out["warnings"]) == (1280, 853, False, [])
    assert out["convention"] == "relative-1000"
    assert "0-1000 grid" in prompt_of(server) and "every person and dog" in prompt_of(server)
    body = server.requests[-1].json
    assert (body.get("max_tokens") or body["parameters"]["max_tokens"]) == 2048


def test_qwen3_table_output_and_annotated_image(server, env, photo, isolated_env):
    server.enqueue(
        Reply(
            text='[{"bbox_2d": [100, 200, 500, 1000], "label": "person"}, '
            '{"bbox_2d": [550, 600, 900, 950], "label": "dog"}]'
        )
    )
    p = ground(env, "photo.jpg", "every person and dog", "--out", "out/boxes.png")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["person    128   171   640   853", "dog       704   512  1152   810"]
    assert "2 boxes on 1280x853 px" in p.stderr and "wrote" in p.stderr
    with Image.open(isolated_env / "out" / "boxes.png") as img:
        assert img.size == (1280, 853)
        assert img.getpixel((300, 171 - 3)) == (230, 25, 75)  # person's colour along the top edge


def test_qwen3_points(server, env, photo):
    server.enqueue(Reply(text='[{"point_2d": [500, 500], "label": "dog"}]'))
    p = ground(env, "photo.jpg", "the dog's nose", "--points", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["points"] == [{"label": "dog", "x": 640, "y": 426}]
    assert "point_2d" in prompt_of(server)


def test_qwen3_answer_over_1000_breaks_the_convention(server, env, photo):
    server.enqueue(Reply(text='[{"bbox_2d": [100, 100, 1200, 800], "label": "car"}]'))
    p = ground(env, "photo.jpg", "the car", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["convention"] == "absolute"
    assert out["boxes"] == [{"label": "car", "x1": 100, "y1": 99, "x2": 1200, "y2": 790}]
    assert "over 1000" in out["warnings"][0] and "1280x864" in out["warnings"][0]
    assert "over 1000" in p.stderr


# --- Qwen2.5-VL: pixels of the resized image, points as XML -------------------------------------------------------


def test_qwen25_boxes_in_resized_pixels(server, env, photo, protocol):
    server.enqueue(Reply(text='[{"bbox_2d": [301, 203, 602, 609], "label": "dog"}]'))
    p = ground(env, "photo.jpg", "dog", "--json", "--model", QWEN25, "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["boxes"] == [{"label": "dog", "x1": 320, "y1": 213, "x2": 640, "y2": 640}]
    assert out["convention"] == "absolute" and out["warnings"] == []
    assert "0-1000" not in prompt_of(server)


def test_qwen25_points_xml(server, env, photo):
    server.enqueue(
        Reply(
            text='<points x1="602" y1="400" alt="dog">dog</points>\n'
            '<points x1="100" y1="100" x2="1204" y2="812" alt="ball">ball</points>'
        )
    )
    p = ground(env, "photo.jpg", "dog and ball", "--points", "--json", "--model", QWEN25)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["points"] == [
        {"label": "dog", "x": 640, "y": 420},
        {"label": "ball", "x": 106, "y": 105},
        {"label": "ball", "x": 1280, "y": 853},
    ]
    assert "<points" in prompt_of(server)


def test_qwen25_answer_on_a_0_1000_grid(server, env, isolated_env):
    write_image(isolated_env / "small.png", (640, 480))  # Qwen2.5-VL sees it at 644x476
    server.enqueue(Reply(text='[{"bbox_2d": [100, 100, 950, 900], "label": "cat"}]'))
    p = ground(env, "small.png", "cat", "--json", "--model", QWEN25)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["convention"] == "relative-1000"
    assert out["boxes"] == [{"label": "cat", "x1": 64, "y1": 48, "x2": 608, "y2": 432}]
    assert "644x476" in out["warnings"][0]


# --- malformed answers -----------------------------------------------------------------------------------------


def test_truncated_answer_keeps_complete_boxes(server, env, photo, protocol):
    boxes = ", ".join(f'{{"bbox_2d": [{i * 10}, 10, {i * 10 + 5}, 20], "label": "bird"}}' for i in range(40))
    server.enqueue(Reply(text=f'```json\n[{boxes}, {{"bbox_2d": [900, 10, 9', finish_reason="length"))
    p = ground(env, "photo.jpg", "every bird", "--json", "--max-tokens", "300", "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["boxes"]) == 40 and out["truncated"] is True
    assert any("cut off at max_tokens (300 tokens)" in w for w in out["warnings"])


def test_truncated_mid_list_without_length(server, env, photo):
    server.enqueue(Reply(text='[{"bbox_2d": [100, 100, 200, 200], "label": "a"}, {"bbox_2d": [300, 3'))
    p = ground(env, "photo.jpg", "a", "--json")
    out = json.loads(p.stdout)
    assert len(out["boxes"]) == 1 and out["truncated"] is True
    assert "ends in the middle of a list" in out["warnings"][-1]


def test_out_of_range_and_label_less(server, env, photo):
    server.enqueue(
        Reply(text='[{"bbox_2d": [-20, 10, 500, 1008]}, {"bbox_2d": [10, 10, 50, 50], "label": ""}]', times=2)
    )
    p = ground(env, "photo.jpg", "things", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["boxes"][0] == {"label": "", "x1": 0, "y1": 9, "x2": 640, "y2": 853}
    assert out["boxes"][1]["label"] == ""
    text = " | ".join(out["warnings"])
    assert "outside the 1280x853 image" in text and "clipped" in text and "2 items have no label" in text
    p = ground(env, "photo.jpg", "things")  # the table names them
    assert "(no label)" in p.stdout


def test_no_boxes_in_the_answer(server, env, photo):
    server.enqueue(Reply(text="I could not find any unicorn in this picture."))
    p = ground(env, "photo.jpg", "unicorn")
    assert p.returncode == 0 and p.stdout == ""
    assert "no boxes or points found" in p.stderr and "could not find any unicorn" in p.stderr
    server.enqueue(Reply(text="[]"))
    out = json.loads(ground(env, "photo.jpg", "unicorn", "--json").stdout)
    assert out["boxes"] == [] and out["warnings"] == ["the answer has no boxes or points"]


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["photo.jpg", "dog", "--json-mode"], 2, "--json-mode does not apply"),
        (["https://example.com/a.jpg", "dog", "--out", "x.png"], 2, "--out needs the image's pixels"),
        (["missing.jpg", "dog"], 3, "not found"),
        (["photo.jpg"], 2, "Missing argument"),
    ],
)
def test_ground_bad_input(server, env, photo, args, code, needle):
    p = ground(env, *args)
    assert p.returncode == code, p.stderr
    assert needle in p.stderr
    assert server.requests == []


def test_url_image_keeps_model_coordinates(server, env):
    server.enqueue(Reply(text='[{"bbox_2d": [100, 200, 300, 400], "label": "dog"}]'))
    out = json.loads(ground(env, "https://example.com/dog.jpg", "dog", "--json").stdout)
    assert out["boxes"][0]["x1"] == 100 and out["width"] is None
    assert "size is unknown" in out["warnings"][0]


def test_dry_run_sends_nothing(server, env, photo):
    p = ground(env, "photo.jpg", "dog", "--dry-run", "--model", QWEN25)
    assert p.returncode == 0, p.stderr
    assert "Outline the position" in p.stdout and server.requests == []


# --- the library ---------------------------------------------------------------------------------------------


def test_library_ground(client, server, photo):
    from qwenvl import tasks

    server.enqueue(Reply(text='[{"bbox_2d": [100, 200, 500, 1000], "label": "person"}]'))
    g = tasks.ground(client, str(photo), "person")
    assert isinstance(g.boxes[0], tasks.Box) and (g.boxes[0].x1, g.boxes[0].y2) == (128, 853)
    assert g.raw_text.startswith("[") and g.response is not None and not g.truncated
    assert g.model_dump()["boxes"][0]["raw"] == [100, 200, 500, 1000]


def test_ground_a_pdf_page(server, env, isolated_env):
    pages = [Image.new("RGB", (400, 560), c) for c in ("white", "lightgray")]
    pages[0].save(isolated_env / "doc.pdf", save_all=True, append_images=pages[1:])
    server.enqueue(Reply(text='[{"bbox_2d": [0, 0, 500, 500], "label": "table"}]'))
    p = ground(env, "doc.pdf", "table", "--page", "2", "--json", "--out", "page.png")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)  # in pixels of the rendered page
    assert out["image"] == "doc.pdf" and out["boxes"][0]["x2"] * 2 == out["width"]
    body = server.requests[-1].json
    assert sum(1 for part in body["messages"][0]["content"] if part["type"] == "image_url") == 1
    with Image.open(isolated_env / "page.png") as img:
        assert img.size == (out["width"], out["height"])
    assert ground(env, "doc.pdf", "x", "--page", "3").returncode == 3  # the PDF has 2 pages
    write_image(isolated_env / "a.png")
    p = ground(env, "a.png", "x", "--page", "1")
    assert p.returncode == 2 and "PDFs only" in p.stderr


def test_ground_takes_pages_as_one_page_or_refuses_it(server, env, isolated_env):
    """`--pages` (every verb's option) was accepted and ignored: page 1 was read whatever it said."""
    sizes = [(400, 560), (560, 400)]
    pages = [Image.new("RGB", size, "white") for size in sizes]
    pages[0].save(isolated_env / "doc.pdf", save_all=True, append_images=pages[1:])
    server.enqueue(Reply(text='[{"bbox_2d": [0, 0, 500, 500], "label": "table"}]'))
    p = ground(env, "doc.pdf", "table", "--pages", "2", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["width"] > out["height"]  # page 2 is the landscape one
    for args, words in (
        (["--pages", "1-2"], "ground reads one page"),
        (["--pages", "2", "--page", "1"], "not both"),
    ):
        p = ground(env, "doc.pdf", "table", *args)
        assert p.returncode == 2 and words in p.stderr, p.stderr
    write_image(isolated_env / "a.png")
    for verb in (["ground", "a.png", "x"], ["ask", "a.png", "-p", "x"], ["ocr", "a.png"]):
        p = run_cli(*verb, "--pages", "2", env=env)
        assert p.returncode == 2 and "--pages applies to PDFs only" in p.stderr, (verb, p.stderr)


# --- boxes and points outside the image, and boxes with no area: dropped, named and counted -----------------


def test_box_wholly_outside_or_flat_is_dropped_not_printed(server, env, photo, protocol):
    """Qwen2.5-VL answers in the 1204x812 image it saw: y 815 is below the photo's bottom edge (853 px once
    scaled); a box as wide as a line is no box."""
    server.enqueue(
        Reply(
            text='[{"bbox_2d": [1130, 815, 1204, 880], "label": "dog"}, {"bbox_2d": [100, 100, 100, 300], '
            '"label": "pole"}, {"bbox_2d": [10, 10, 50, 50], "label": "cat"}]'
        )
    )
    p = ground(env, "photo.jpg", "animals", "--model", QWEN25, "--json", "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [b["label"] for b in out["boxes"]] == ["cat"] and out["dropped"] == 2
    text = " | ".join(out["warnings"])
    assert "1 item wholly outside the 1280x853 image dropped ('dog'" in text, text
    assert "1 box with no area in the 1280x853 image dropped ('pole'" in text, text
    server.enqueue(Reply(text='[{"bbox_2d": [1130, 815, 1204, 880], "label": "dog"}]'))
    p = ground(env, "photo.jpg", "dog", "--model", QWEN25, "--protocol", protocol, "--out", "boxes.png")
    assert "dog" not in p.stdout  # the table prints no zero-area box
    assert "wholly outside" in p.stderr and "0 boxes and 1 dropped" in p.stderr, p.stderr


def test_point_wholly_outside_is_dropped(server, env, photo):
    server.enqueue(
        Reply(text='<points x1="1300" y1="400" alt="dog">dog</points><points x1="600" y1="400">cat</points>')
    )
    p = ground(env, "photo.jpg", "animals", "--model", QWEN25, "--points", "--json")
    out = json.loads(p.stdout)
    assert [pt["label"] for pt in out["points"]] == ["cat"] and out["dropped"] == 1, out
    assert any("wholly outside the 1280x853 image dropped ('dog' at 1382,420" in w for w in out["warnings"]), out


def test_library_and_ocr_lines_drop_them_too(client, server, photo):
    from qwenvl import tasks

    answer = (
        '[{"bbox_2d": [0, 1000, 300, 1000], "text_content": "gone"}, '
        '{"bbox_2d": [0, 0, 300, 90], "text_content": "kept"}]'
    )
    server.enqueue(Reply(text=answer))
    g = tasks.ground(client, str(photo), "text")
    assert [b.label for b in g.boxes] == ["kept"] and g.dropped == 1
    assert all(b.x1 < b.x2 and b.y1 < b.y2 for b in g.boxes)
    server.enqueue(Reply(text=answer))
    page = tasks.ocr(client, str(photo), format="json").pages[0]
    assert [line.text for line in page.lines] == ["kept"]
    assert any("dropped" in w for w in page.warnings), page.warnings
