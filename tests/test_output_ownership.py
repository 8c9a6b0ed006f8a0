"""An output never destroys a file you have: every writer (the verbs' picture and text outputs, the library's
``annotate`` and ``contact_sheet``, the MCP ground tool) replaces only qwenvl's own earlier output, unless told to
(``--force``, ``overwrite=True``), and never one of the run's inputs.

A new user found that `ground beach.jpg person --out keep.jpg` replaced a photo (exit 0), `--out doc.pdf` a 3-page
PDF, `events clip.mp4 --sheet report.pdf` too, `tasks.annotate('b2.jpg', g, 'b2.jpg')` its own input, and `ocr
screenshot.png -o notes.txt` / `extract --csv ledger.csv` hand-made files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli, write_image
from dashscope_server import DashScopeServer, Reply
from qwenvl import tasks
from qwenvl.errors import UsageError
from qwenvl.outputs import written_by_qwenvl
from test_tasks_events import SEED_ANSWER, make_clip

BOXES = '[{"bbox_2d": [100, 200, 500, 900], "label": "person"}]'
SCHEMA = '{"type": "object", "properties": {"title": {"type": "string"}}}'


@pytest.fixture
def user_files(isolated_env: Path) -> Path:
    write_image(isolated_env / "beach.jpg", (120, 80), (200, 180, 90), fmt="JPEG")
    write_image(isolated_env / "keep.jpg", (64, 48), (10, 90, 200), fmt="JPEG")  # a photo of the user's
    pages = [Image.new("RGB", (60, 80), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    pages[0].save(isolated_env / "doc.pdf", save_all=True, append_images=pages[1:])  # a 3-page PDF
    (isolated_env / "notes.txt").write_text("my own notes\n")
    (isolated_env / "ledger.csv").write_text("date,amount\n2026-11-30,12.50\n")
    (isolated_env / "s.json").write_text(SCHEMA)
    make_clip(isolated_env / "clip.mp4")
    return isolated_env


def _bytes(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}


REFUSED = {
    "ground --out over a photo": (["ground", "beach.jpg", "person", "--out", "keep.jpg"], "--out", "keep.jpg"),
    "ground --out over a PDF": (["ground", "beach.jpg", "dog", "--out", "doc.pdf"], "--out", "doc.pdf"),
    "events --sheet over a PDF": (["events", "clip.mp4", "--sheet", "doc.pdf"], "--sheet", "doc.pdf"),
    "events --sheet over a photo": (["events", "clip.mp4", "--sheet", "keep.jpg"], "--sheet", "keep.jpg"),
    "ocr -o over notes": (["ocr", "beach.jpg", "-o", "notes.txt"], "-o/--output", "notes.txt"),
    "extract --csv over a ledger": (
        ["extract", "beach.jpg", "keep.jpg", "--schema", "s.json", "--csv", "ledger.csv"],
        "--csv",
        "ledger.csv",
    ),
    "analyze --output over notes": (
        ["analyze", "--request", '{"prompt": "p", "image": "beach.jpg"}', "--output", "notes.txt"],
        "--output",
        "notes.txt",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_an_output_over_a_file_qwenvl_did_not_write_is_refused(
    case: str, user_files: Path, server: DashScopeServer, env: dict[str, str]
) -> None:
    args, option, name = REFUSED[case]
    before = _bytes(user_files)
    p = run_cli(*args, env=env)
    assert p.returncode == 2, (p.stdout, p.stderr)
    error, hint = p.stderr.splitlines()[0], p.stderr.splitlines()[-1]
    assert (
        error
        == f"error: {option} {name} exists and was not written by qwenvl: writing this output there would replace it"
    )
    assert hint.startswith("hint:") and "--force" in hint and "new file name" in hint
    assert server.requests == []  # refused before anything was sent (paid)
    assert _bytes(user_files) == before


def test_force_replaces_a_file_of_the_users(user_files: Path, server: DashScopeServer, env: dict[str, str]) -> None:
    server.enqueue(Reply(text=BOXES))
    p = run_cli("ground", "beach.jpg", "person", "--out", "keep.jpg", "--force", env=env)
    assert p.returncode == 0, p.stderr
    with Image.open(user_files / "keep.jpg") as img:
        assert img.size == (120, 80)  # the drawing, over the photo the user chose to replace
    # never an input, even with --force
    before = (user_files / "beach.jpg").read_bytes()
    p = run_cli("ground", "beach.jpg", "person", "--out", "beach.jpg", "--force", env=env)
    assert p.returncode == 2 and "is also an input of this command" in p.stderr
    assert (user_files / "beach.jpg").read_bytes() == before


def test_a_rerun_replaces_qwenvls_own_output_but_not_once_edited(
    user_files: Path, server: DashScopeServer, env: dict[str, str]
) -> None:
    server.enqueue(Reply(text=BOXES, times=2))
    for _ in range(2):  # the second run replaces what the first wrote
        p = run_cli("ground", "beach.jpg", "person", "--out", "boxes.png", env=env)
        assert p.returncode == 0, p.stderr
    server.enqueue(Reply(text="page text", times=2))
    for _ in range(2):
        p = run_cli("ocr", "beach.jpg", "-o", "out.txt", env=env)
        assert p.returncode == 0, p.stderr
    assert (user_files / "out.txt").read_text() == "page text\n" and written_by_qwenvl(user_files / "out.txt")
    server.enqueue(Reply(text=json.dumps(SEED_ANSWER), times=2))
    for _ in range(2):
        p = run_cli("events", "clip.mp4", "--sheet", "sheet.jpg", env=env)
        assert p.returncode == 0, p.stderr
    server.enqueue(Reply(text='{"title": "x"}', times=4))
    for _ in range(2):
        p = run_cli("extract", "beach.jpg", "keep.jpg", "--schema", "s.json", "--csv", "t.csv", env=env)
        assert p.returncode == 0, p.stderr
    # edited by the user since: theirs now
    with (user_files / "out.txt").open("a") as fh:
        fh.write("my correction\n")
    sent = len(server.requests)
    p = run_cli("ocr", "beach.jpg", "-o", "out.txt", env=env)
    assert p.returncode == 2 and "was changed since qwenvl wrote it" in p.stderr
    assert (user_files / "out.txt").read_text() == "page text\nmy correction\n" and len(server.requests) == sent


def test_an_empty_file_holds_nothing_to_lose(user_files: Path, server: DashScopeServer, env: dict[str, str]) -> None:
    (user_files / "empty.txt").touch()
    server.enqueue(Reply(text="page text"))
    p = run_cli("ocr", "beach.jpg", "-o", "empty.txt", env=env)
    assert p.returncode == 0, p.stderr
    assert (user_files / "empty.txt").read_text() == "page text\n"


def test_the_library_annotate_and_contact_sheet_keep_the_users_files(user_files: Path) -> None:
    g = tasks.Grounding(image="beach.jpg", width=120, height=80, boxes=[tasks.Box(label="a", x1=1, y1=1, x2=50, y2=40)])
    before = _bytes(user_files)
    with pytest.raises(UsageError) as caught:  # its own input
        tasks.annotate("beach.jpg", g, "beach.jpg", overwrite=True)
    assert "is also an input" in str(caught.value)
    with pytest.raises(UsageError) as caught:  # a photo of the user's
        tasks.annotate("beach.jpg", g, "keep.jpg")
    assert "was not written by qwenvl" in str(caught.value) and "overwrite=True" in caught.value.hint
    frames = [Image.new("RGB", (32, 24), (9, 9, 9))] * 2
    with pytest.raises(UsageError):
        tasks.contact_sheet(frames, [0.0, 1.0], "doc.pdf")
    assert _bytes(user_files) == before
    tasks.annotate("beach.jpg", g, "drawn.png")
    tasks.annotate("beach.jpg", g, "drawn.png")  # its own earlier output: replaced
    tasks.annotate("beach.jpg", g, "keep.jpg", overwrite=True)
    tasks.contact_sheet(frames, [0.0, 1.0], "doc.pdf", overwrite=True)
    with Image.open(user_files / "keep.jpg") as img:
        assert img.size == (120, 80)


def test_annotate_refuses_a_suffix_that_names_no_picture_before_drawing(user_files: Path) -> None:
    g = tasks.Grounding(image="beach.jpg", width=120, height=80)
    with pytest.raises(UsageError, match=r"boxes\.txt.*not a picture format"):
        tasks.annotate("beach.jpg", g, "boxes.txt")
    assert not (user_files / "boxes.txt").exists()


def test_the_drawing_functions_say_what_they_raise() -> None:
    """help(qwenvl.tasks.annotate) said "PNG when unknown" for a suffix that is in fact refused (UsageError)."""
    for fn in (tasks.annotate, tasks.contact_sheet):
        doc = " ".join((fn.__doc__ or "").split())
        assert "PNG when unknown" not in doc
        assert "UsageError" in doc and "overwrite=True" in doc, fn.__name__


def test_a_batch_csv_keeps_a_hand_made_file_and_rewrites_its_own(
    user_files: Path, server: DashScopeServer, env: dict[str, str]
) -> None:
    (user_files / "pics").mkdir()
    write_image(user_files / "pics" / "a.png", (32, 24))
    before = (user_files / "ledger.csv").read_bytes()
    p = run_cli("batch", "pics", "-p", "x", "-o", "r.jsonl", "--csv", "ledger.csv", env=env)
    assert p.returncode == 2 and "--csv ledger.csv exists and was not written by qwenvl" in p.stderr
    assert "--fresh" not in p.stderr.splitlines()[-1]  # it would also delete the batch's answers: never advised
    assert (user_files / "ledger.csv").read_bytes() == before and server.requests == []
    for _ in range(2):  # the second run resumes and rewrites the csv it wrote
        p = run_cli("batch", "pics", "-p", "x", "-o", "r.jsonl", "--csv", "t.csv", env=env)
        assert p.returncode == 0, p.stderr
    assert written_by_qwenvl(user_files / "t.csv") and len(server.requests) == 1
