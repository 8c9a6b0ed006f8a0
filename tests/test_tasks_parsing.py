"""Unit tests of the task parsers and checks: grounding answers, conventions, timelines, CSV rows."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from qwenvl.protocols import native
from qwenvl.protocols.sse import SSEEvent
from qwenvl.tasks.draw import annotate, contact_sheet, contrast_text, hms
from qwenvl.tasks.events import build_timeline, parse_time, raw_events
from qwenvl.tasks.extract import Extraction, columns, to_row
from qwenvl.tasks.grounding import Geometry, interpret
from qwenvl.tasks.ocr import clean_text
from qwenvl.tasks.parsing import parse_answer

# --- parse_answer ------------------------------------------------------------------------------------------

BOX = '{"bbox_2d": [10, 20, 300, 400], "label": "dog"}'


def items(text: str) -> list[tuple[str, list[float], str]]:
    return [(i.kind, i.coords, i.label) for i in parse_answer(text).items]


@pytest.mark.parametrize(
    "text",
    [
        f"[{BOX}]",
        f"```json\n[{BOX}]\n```",
        f"Sure! Here is the dog:\n```json\n[{BOX}]\n```\nThe dog sits on the left.",
        f"[{BOX}]\nThere is one dog in the picture.",
        f'{{"objects": [{BOX}]}}',
        "[{'bbox_2d': [10, 20, 300, 400], 'label': 'dog'}]",  # Python literal
        f"[{BOX},]",  # trailing comma
        '[{"bbox_2d": ["10", "20", "300", "400"], "label": "dog"}]',  # numbers as strings
        '[{"bbox_2d": [[10, 20], [300, 400]], "label": "dog"}]',  # corner pairs
        '{"dog": [10, 20, 300, 400]}',
        "<ref>dog</ref><box>(10,20),(300,400)</box>",
        "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(10,20),(300,400)<|box_end|>",
    ],
)
def test_one_dog_in_many_dresses(text):
    parsed = parse_answer(text)
    assert items(text) == [("box", [10.0, 20.0, 300.0, 400.0], "dog")]
    assert not parsed.truncated


def test_json_lines_without_a_list():
    text = '{"bbox_2d": [1, 2, 3, 4], "label": "a"}\n{"bbox_2d": [5, 6, 7, 8], "label": "b"}'
    assert [i[2] for i in items(text)] == ["a", "b"]


@pytest.mark.parametrize(
    "text,labels",
    [
        (f'[{BOX}, {{"bbox_2d": [5, 6, 7, 8], "label": "ca', ["dog"]),  # cut inside a string
        (f'[{BOX}, {{"bbox_2d": [5, 6, 7, 8], "label": "cat"}}, {{"bbox_2d": [5, 6', ["dog", "cat"]),
        (f'```json\n[{BOX}, {{"bbox_2d": [5, 6, 7, 8]', ["dog"]),  # an object whose end is missing is not kept
        (f'{{"objects": [{BOX}, {{"bbox_2d"', ["dog"]),
        ('[{"bbox_2d": [5, 6', []),
    ],
)
def test_truncated_lists_keep_every_complete_object(text, labels):
    parsed = parse_answer(text)
    assert parsed.truncated
    assert [i.label for i in parsed.items] == labels


def test_prose_with_a_stray_bracket_is_not_truncation():
    parsed = parse_answer("There is no dog here [as far as I can tell")
    assert parsed.items == [] and not parsed.truncated and not parsed.found_structure


def test_points_json_and_xml():
    assert items('[{"point_2d": [100, 200], "label": "dog"}]') == [("point", [100.0, 200.0], "dog")]
    xml = (
        '<points x1="100" y1="200" alt="dog">dog</points>\n'
        '<points x1="1" y1="2" x2="3" y2="4" alt="two cats">two cats</points>'
    )
    assert items(xml) == [
        ("point", [100.0, 200.0], "dog"),
        ("point", [1.0, 2.0], "two cats"),
        ("point", [3.0, 4.0], "two cats"),
    ]
    assert items('<points x1="5" y1="6" alt="ball"></points>') == [("point", [5.0, 6.0], "ball")]  # label from alt
    cut = parse_answer('<points x1="100" y1="200" alt="dog">dog</points><points x1="30" y1')
    assert cut.truncated and len(cut.items) == 1


def test_ocr_shapes():
    lines = parse_answer('[{"bbox_2d": [1, 2, 3, 4], "text_content": "Hello"}]').items
    assert lines[0].label == "Hello"
    quad = parse_answer(
        '{"words_info": [{"rotate_rect": [30, 20, 40, 20, 0], '
        '"location": [10, 10, 50, 12, 50, 30, 10, 28], "text": "World"}]}'
    ).items
    assert [(q.kind, q.coords, q.label) for q in quad] == [("box", [10.0, 10.0, 50.0, 30.0], "World")]


def test_bad_coordinates_are_skipped_and_said():
    parsed = parse_answer('[{"bbox_2d": [1, 2, 3], "label": "bad"}, {"bbox_2d": [1, 2, 3, 4]}]')
    assert [(i.coords, i.label) for i in parsed.items] == [([1.0, 2.0, 3.0, 4.0], "")]
    assert "skipped 1 item" in parsed.notes[0]


def test_nothing_parseable():
    parsed = parse_answer("I cannot find any dog in this image.")
    assert parsed.items == [] and not parsed.found_structure
    assert parse_answer("[]").found_structure


# --- conventions and conversion ------------------------------------------------------------------------------

ORIGINAL = (1280, 853)


def ground(text: str, expected: str, seen: tuple[int, int] | None, **kw):
    return interpret(parse_answer(text), expected=expected, geo=Geometry(ORIGINAL, seen), model="m", **kw)


def test_relative_grid_to_original_pixels():
    g = ground('[{"bbox_2d": [100, 200, 500, 1000], "label": "dog"}]', "relative-1000", (1280, 864))
    assert g.boxes[0].plain() == {"label": "dog", "x1": 128, "y1": 171, "x2": 640, "y2": 853}
    assert g.convention == "relative-1000" and g.warnings == []


def test_absolute_pixels_of_the_seen_image():
    g = ground('[{"bbox_2d": [301, 203, 602, 609], "label": "dog"}]', "absolute", (1204, 812))
    assert g.boxes[0].plain() == {"label": "dog", "x1": 320, "y1": 213, "x2": 640, "y2": 640}
    assert g.boxes[0].raw == [301, 203, 602, 609]


def test_qwen3_coordinates_over_1000_are_read_as_pixels():
    g = ground('[{"bbox_2d": [100, 100, 1200, 800], "label": "car"}]', "relative-1000", (1280, 864))
    assert g.convention == "absolute"
    assert g.boxes[0].plain() == {"label": "car", "x1": 100, "y1": 99, "x2": 1200, "y2": 790}
    assert "0-1000 grid" in g.warnings[0] and "1200" in g.warnings[0] and "1280x864" in g.warnings[0]


def test_qwen25_coordinates_on_a_0_1000_grid_are_detected():
    g = interpret(
        parse_answer('[{"bbox_2d": [100, 100, 950, 900], "label": "cat"}]'),
        expected="absolute",
        geo=Geometry((640, 480), (644, 476)),
        model="qwen2.5-vl-72b-instruct",
    )
    assert g.convention == "relative-1000"
    assert g.boxes[0].plain() == {"label": "cat", "x1": 64, "y1": 48, "x2": 608, "y2": 432}
    assert "within 0-1000" in g.warnings[0] and "644x476" in g.warnings[0]


def test_small_overshoot_is_clipped_not_reinterpreted():
    g = interpret(
        parse_answer('[{"bbox_2d": [-12, 10, 660, 470], "label": "cat"}]'),
        expected="absolute",
        geo=Geometry((640, 480), (644, 476)),
        model="m",
    )
    assert g.convention == "absolute"
    box = g.boxes[0]
    assert (box.x1, box.x2) == (0, 640)
    assert any("outside the 640x480 image" in w and "clipped" in w for w in g.warnings)


def test_swapped_corners_label_less_and_truncated():
    g = ground(
        '[{"bbox_2d": [500, 500, 100, 100]}, {"bbox_2d": [1, 2',
        "relative-1000",
        (1280, 864),
        finish_reason="length",
        max_tokens=64,
    )
    assert len(g.boxes) == 1 and g.boxes[0].label == "" and g.boxes[0].x1 < g.boxes[0].x2
    assert g.truncated
    text = " | ".join(g.warnings)
    assert "swapped" in text and "no label" in text and "max_tokens (64 tokens)" in text


def test_unknown_image_size_keeps_model_coordinates():
    g = interpret(parse_answer(f"[{BOX}]"), expected="relative-1000", geo=Geometry(None, None), model="m")
    assert g.boxes[0].plain()["x2"] == 300 and g.width is None
    assert "size is unknown" in g.warnings[0]


def test_no_boxes_is_a_warning():
    g = ground("There is no dog.", "relative-1000", (1280, 864))
    assert g.boxes == [] and "no boxes or points found" in g.warnings[-1]


# --- drawing -----------------------------------------------------------------------------------------------


def test_annotate_and_contact_sheet(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (320, 200), (250, 250, 250)).save(image)
    answer = (
        '[{"bbox_2d": [100, 100, 500, 900], "label": "狗"}, {"bbox_2d": [600, 100, 900, 500]}]'
        '<points x1="800" y1="800">ball</points>'
    )
    g = interpret(parse_answer(answer), expected="relative-1000", geo=Geometry((320, 200), (320, 200)))
    out = annotate(image, g, tmp_path / "out" / "boxes.png")
    assert out.size == (320, 200) and (tmp_path / "out" / "boxes.png").exists()
    assert out.getpixel((100, 18)) == (230, 25, 75)  # the first label's colour, just outside the top edge
    assert out.getpixel((100, 20)) == (255, 255, 255)  # the light inner line
    assert out.getpixel((256, 160)) != (250, 250, 250)  # the point
    sheet = contact_sheet(
        [Image.new("RGB", (64, 48), c) for c in ("red", "green", "blue", "white")],
        [0, 0.5, 1.0, 1.5],
        tmp_path / "sheet.png",
        title="clip",
        events=[("00:00:00", "00:00:01", "a long description " * 10)],
    )
    assert sheet.width > 64 and (tmp_path / "sheet.png").exists()


def test_contrast_and_times():
    assert contrast_text((255, 225, 25)) == (0, 0, 0) and contrast_text((0, 0, 128)) == (255, 255, 255)
    assert hms(3725.96) == "01:02:05" and hms(2.96, decimals=True) == "00:00:02.9"


# --- timelines -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("00:00:05", 5),
        ("0:01:05", 65),
        ("01:05", 65),
        ("00:00:02.5", 2.5),
        ("7", 7),
        (4, 4),
        ("00:61:00", None),
        ("soon", None),
    ],
)
def test_parse_time(text, seconds):
    assert parse_time(text) == seconds


def test_timeline_checks():
    items = raw_events(
        {
            "events": [
                {"start_time": "00:00:05", "end_time": "00:00:15", "event": "scans the label"},
                {"start_time": "00:00:00", "end_time": "00:00:05", "event": "carries a box"},
                {"start_time": "00:00:21", "end_time": "00:00:15", "event": "backwards"},
                {"start_time": "00:00:18", "end_time": "00:00:40", "event": "too long"},
                {"start_time": "00:01:00", "end_time": "00:01:10", "event": "after the end"},
                {"start_time": "later", "end_time": "00:00:10", "event": "unreadable"},
            ]
        }
    )
    events, warnings = build_timeline(items, duration=21.3)
    assert [e.plain() for e in events] == [
        {"start": "00:00:00", "end": "00:00:05", "event": "carries a box"},
        {"start": "00:00:05", "end": "00:00:15", "event": "scans the label"},
        {"start": "00:00:15", "end": "00:00:21", "event": "backwards"},
        {"start": "00:00:18", "end": "00:00:21", "event": "too long"},
    ]
    text = " | ".join(warnings)
    for needle in ("swapped", "clipped", "dropped", "unreadable time", "sorted by start"):
        assert needle in text
    assert raw_events([{"start": "0:00", "end": "0:02", "description": "x"}])[0]["description"] == "x"


# --- OCR and extraction helpers ------------------------------------------------------------------------------


def test_clean_text_strips_a_wrapping_fence():
    assert clean_text("```markdown\n# Title\n\n- a\n```") == "# Title\n\n- a"
    assert clean_text("text with ``` inside") == "text with ``` inside"


def test_csv_rows_flatten_top_level_keys():
    schema = {"type": "object", "properties": {"title": {}, "amount": {}, "items": {}}}
    rows = [
        Extraction(file="a.png", json={"title": "A", "amount": 3.5, "items": [{"n": 1}], "paid": True}),
        Extraction(file="b.png", error="not valid", exit_code=5),
    ]
    names = columns(schema, rows)
    assert names == ["file", "title", "amount", "items", "paid", "error"]
    assert to_row(rows[0], names) == ["a.png", "A", "3.5", '[{"n": 1}]', "true", ""]
    assert to_row(rows[1], names) == ["b.png", "", "", "", "", "not valid"]


# --- native streaming tool calls ------------------------------------------------------------------------------


def _native_event(tool_calls, finish="null"):
    msg = {"role": "assistant", "content": [], "tool_calls": tool_calls}
    return SSEEvent(
        data=json.dumps({"output": {"choices": [{"message": msg, "finish_reason": finish}]}, "request_id": "r"}),
        event="result",
    )


def test_native_stream_tool_calls_fragments_and_repeats():
    p = native.StreamParser("qwen3-vl-plus")
    fn = {"name": "get_weather", "arguments": '{"city":'}
    p.feed(_native_event([{"index": 0, "id": "call_1", "type": "function", "function": fn}]))
    p.feed(
        _native_event(
            [
                {
                    "index": 0,
                    "id": "",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ' "Hangzhou"}'},
                }
            ]
        )
    )
    p.feed(
        _native_event(
            [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]
        )
    )
    # the last event repeats the whole calls (cumulative), with the finish_reason
    p.feed(
        _native_event(
            [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Hangzhou"}'},
                }
            ],
            finish="tool_calls",
        )
    )
    calls = p.finish().tool_calls
    assert calls == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Hangzhou"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]


def test_every_prompt_formats():
    from qwenvl.models import model_info
    from qwenvl.tasks.grounding import grounding_prompt

    for name in ("qwen3-vl-plus", "qwen2.5-vl-72b-instruct", "qwen-vl-ocr"):
        for kind in ("box", "point", "text"):
            text = grounding_prompt(model_info(name), "dog", kind)  # type: ignore[arg-type]
            assert "{{" not in text and ("dog" in text or kind == "text")
            assert ("0-1000" in text) == (name == "qwen3-vl-plus")


def test_contact_sheet_frames_are_capped_and_spread():
    import io
    from types import SimpleNamespace

    from qwenvl.media import PreparedItem
    from qwenvl.media.sources import to_data_url
    from qwenvl.tasks.events import frames

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    url = to_data_url(buf.getvalue(), "image/png")
    item = PreparedItem("clip", "video", [url] * 100, frame_times=[i / 2 for i in range(100)])
    call = SimpleNamespace(media=[item], request=SimpleNamespace(fps=None))
    pictures, times = frames(call, limit=10)  # type: ignore[arg-type]
    assert len(pictures) == 10 and times[0] == 0 and times[-1] == 49.5
