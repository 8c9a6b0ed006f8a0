"""Video end to end: `qwenvl ask clip.mp4` and `qwenvl events` (timeline, checks, contact sheet)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, write_image
from dashscope_server import Reply

SEED_ANSWER = {
    "events": [  # the seed docs' example, in English
        {"start_time": "00:00:00", "end_time": "00:00:01", "event": "A person carries a box to the table."},
        {"start_time": "00:00:01", "end_time": "00:00:02", "event": "The person scans the label on the box."},
        {"start_time": "00:00:02", "end_time": "00:00:03", "event": "The person writes in a notebook."},
    ]
}


def make_clip(path: Path, seconds: float = 3.0, fps: int = 10, size: tuple[int, int] = (96, 64)) -> Path:
    """A tiny H.264 clip whose colour changes every second (red, green, blue)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        total = int(seconds * fps)
        for i in range(total):
            frame = np.zeros((size[1], size[0], 3), np.uint8)
            frame[:, :, min(2, i * 3 // total)] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture
def clip(isolated_env) -> Path:
    return make_clip(isolated_env / "clip.mp4")


def video_part(server) -> dict:
    body = server.requests[-1].json
    content = (body["messages"] if "messages" in body else body["input"]["messages"])[-1]["content"]
    return next(p for p in content if p.get("type") in ("video", "video_url") or "video" in p)


def run(env, *args):
    p = run_cli(*args, env=env)
    assert "Traceback" not in p.stderr
    return p


def test_ask_about_a_local_clip(server, env, clip, protocol):
    p = run(env, "ask", "clip.mp4", "What happens?", "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("[images=0 videos=1]")
    frames = video_part(server)["video"]
    assert isinstance(frames, list) and len(frames) == 6  # 3 s at 2 fps
    # flat-colour frames are graphics: lossless PNG, smaller than a JPEG (the images' rule, images.encode_image)
    assert all(f.startswith("data:image/png;base64,") for f in frames)


def test_events_timeline(server, env, clip, protocol):
    server.enqueue(Reply(text="```json\n" + json.dumps(SEED_ANSWER) + "\n```"))
    p = run(env, "events", "clip.mp4", "--protocol", protocol)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "00:00:00–00:00:01  A person carries a box to the table.",
        "00:00:01–00:00:02  The person scans the label on the box.",
        "00:00:02–00:00:03  The person writes in a notebook.",
    ]
    body = server.requests[-1].json
    text = json.dumps(body, ensure_ascii=False)
    assert "start_time" in text and "HH:mm:ss" in text and "JSON Schema" in text
    assert (body.get("response_format") or body["parameters"]["response_format"]) == {"type": "json_object"}


def test_events_json_and_contact_sheet(server, env, clip, isolated_env):
    server.enqueue(Reply(text=json.dumps(SEED_ANSWER)))
    p = run(env, "events", "clip.mp4", "--json", "--sheet", "sheet.png")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["duration"] == 3.0 and out["warnings"] == []
    assert out["events"][0] == {"start": "00:00:00", "end": "00:00:01", "event": "A person carries a box to the table."}
    with Image.open(isolated_env / "sheet.png") as sheet:
        assert sheet.width > 3 * 96 and sheet.height > 2 * 64
    assert "wrote sheet.png" in p.stderr


def test_events_out_of_range_unsorted_and_swapped(server, env, clip):
    answer = {
        "events": [
            {"start_time": "00:00:02", "end_time": "00:00:09", "event": "runs past the end"},
            {"start_time": "00:00:01", "end_time": "00:00:00", "event": "backwards"},
            {"start_time": "00:00:30", "end_time": "00:00:40", "event": "after the clip"},
        ]
    }
    server.enqueue(Reply(text=json.dumps(answer)))
    p = run(env, "events", "clip.mp4", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["events"] == [
        {"start": "00:00:00", "end": "00:00:01", "event": "backwards"},
        {"start": "00:00:02", "end": "00:00:03", "event": "runs past the end"},
    ]
    text = " | ".join(out["warnings"])
    assert "clipped" in text and "dropped" in text and "swapped" in text and "sorted" in text


def test_events_invalid_after_repair_keeps_what_it_can(server, env, clip):
    # a bare list, twice: not valid for the schema even after the repair, but the events are readable
    bare = json.dumps(SEED_ANSWER["events"][:2])
    server.enqueue(Reply(text=bare), Reply(text=bare))
    p = run(env, "events", "clip.mp4", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["events"]) == 2 and "not valid for the timeline schema" in out["warnings"][0]
    server.enqueue(Reply(text="I watched it."), Reply(text="Nothing happens."))
    p = run(env, "events", "clip.mp4")
    assert p.returncode == 5 and "Nothing happens." in p.stderr
    assert "no readable event" in p.stderr and "loosen the schema" not in p.stderr  # the schema is qwenvl's own


def test_events_from_frame_images_and_a_url(server, env, isolated_env):
    for i, colour in enumerate(["red", "green", "blue", "white"]):
        Image.new("RGB", (64, 48), colour).save(isolated_env / f"f{i}.png")
    server.enqueue(
        Reply(
            text=json.dumps({"events": [{"start_time": "00:00:00", "end_time": "00:00:04", "event": "colours change"}]})
        )
    )
    p = run(env, "events", "f0.png", "f1.png", "f2.png", "f3.png", "--fps", "1", "--json", "--sheet", "s.png")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["duration"] == 4.0 and out["events"][0]["end"] == "00:00:04" and out["video"] == "4 frames"
    assert video_part(server)["fps"] == 1 and (isolated_env / "s.png").exists()

    server.enqueue(Reply(text=json.dumps(SEED_ANSWER)))
    p = run(env, "events", "https://example.com/clip.mp4", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["duration"] is None and "duration is unknown" in out["warnings"][0]
    assert video_part(server)["video_url"]["url"] == "https://example.com/clip.mp4"


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["clip.mp4", "--thinking"], 2, "only in non-thinking mode"),
        (["clip.mp4", "--schema", "s.json"], 2, "--schema does not apply"),
        (["https://example.com/a.mp4", "--sheet", "s.png"], 2, "--sheet needs the frames"),
        (["clip.mp4", "photo.png"], 2, "not both"),
        (["broken.mp4"], 3, "broken.mp4"),
    ],
)
def test_events_bad_input(server, env, clip, isolated_env, args, code, needle):
    write_image(isolated_env / "photo.png")
    (isolated_env / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    p = run(env, "events", *args)
    assert p.returncode == code, p.stderr
    assert needle in p.stderr and server.requests == []


def test_library_events(client, server, clip):
    from qwenvl import tasks

    server.enqueue(Reply(text=json.dumps(SEED_ANSWER)))
    t = tasks.events(client, str(clip))
    assert [e.start for e in t.events] == ["00:00:00", "00:00:01", "00:00:02"]
    assert t.duration == 3.0 and len(t.frame_times) == 6 and t.frame_times[0] == 0.0
    assert t.events[1].start_s == 1.0 and t.response is not None


def test_times_printed_never_pass_the_clips_end():
    """An end clipped to the clip's end (1.5 s, 1.56 s) is printed at or before it, in the event and the warning."""
    from qwenvl.tasks.events import build_timeline

    for duration, said in ((1.5, "00:00:01.5"), (1.56, "00:00:01.5")):
        items = [
            {"start_time": "00:00:01", "end_time": "00:00:09", "event": "runs past the end"},
            {"start_time": "00:00:02", "end_time": "00:00:02", "event": "within the allowance"},
        ]
        events, warnings = build_timeline(items, duration)
        assert [(e.start, e.end) for e in events] == [("00:00:01", "00:00:01"), ("00:00:01", "00:00:01")]
        assert f"after the clip ends ({said}): clipped to the end" in warnings[0], warnings


def test_a_sheet_changed_since_is_said_so(server, env, clip, isolated_env):
    """``touch sheet.png`` after qwenvl wrote it: a re-run says it was changed since, not that qwenvl never wrote it."""
    import os

    server.enqueue(Reply(text=json.dumps(SEED_ANSWER)))
    assert run(env, "events", "clip.mp4", "--sheet", "sheet.png").returncode == 0
    st = os.stat(isolated_env / "sheet.png")
    os.utime(isolated_env / "sheet.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    sent = len(server.requests)
    p = run(env, "events", "clip.mp4", "--sheet", "sheet.png")
    assert p.returncode == 2 and "sheet.png was changed since qwenvl wrote it" in p.stderr, p.stderr
    assert "--force" in p.stderr and len(server.requests) == sent
