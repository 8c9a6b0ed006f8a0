"""The README's example outputs are what the commands print: ``docs/make_examples.py`` runs each example against
the loopback fake of DashScope and this test compares its transcripts with the README's console blocks, and its
pictures with the committed ones (decoded pixels, the same on every run)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, write_image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _make_examples():
    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "docs" / "make_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_examples"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_readme_examples_are_what_the_commands_print(tmp_path: Path) -> None:
    """Found by a new user: the README's `ocr --format json` text was not what make_examples.py printed, the
    `tokens` example left out printed lines (diagram.png: sent as given..., doc.pdf page N: rendered...), and the
    `events --sheet` one its "wrote ..." line; the events sheet changed on every run."""
    examples = _make_examples()
    blocks = examples.run(tmp_path / "docs")
    firsts = [block.split("\n", 1)[0] for block in blocks]
    found = examples.readme_blocks(README.read_text(encoding="utf-8"), firsts)
    assert sorted(found) == sorted(firsts), "a README block is missing: run python docs/make_examples.py --write"
    for first, block in zip(firsts, blocks, strict=True):
        assert found[first] == block, f"README block {first!r} differs: run python docs/make_examples.py --write"
    for name in examples.PICTURES:
        made = np.asarray(Image.open(tmp_path / "docs" / name).convert("RGB"))
        committed = np.asarray(Image.open(ROOT / "docs" / name).convert("RGB"))
        assert made.shape == committed.shape and (made == committed).all(), f"docs/{name} is not what the command makes"


def test_a_json_example_is_shortened_to_the_first_item_of_each_list() -> None:
    examples = _make_examples()
    said = examples.shortened('{"a": [1, 2, 3], "b": [{"c": [4]}], "d": "x"}')
    expected = ["{", '  "a": [', "    1,", "    …", "  ],", '  "b": [', "    {", '      "c": [', "        4", "      ]"]
    assert said.split("\n") == [*expected, "    }", "  ],", '  "d": "x"', "}"]
    assert examples.shortened("not json") == "not json"


@pytest.mark.parametrize("key", ["max_token"])
def test_the_readme_quotes_analyzes_unknown_key_warning_as_printed(isolated_env: Path, key: str) -> None:
    """The README said "ignored unknown keys max_token"; analyze prints "key" for one."""
    write_image(isolated_env / "photo.png")
    p = run_cli(
        "analyze",
        "--request",
        f'{{"prompt": "x", "image": "photo.png", "{key}": 5}}',
        "--dry-run",
        env={"DASHSCOPE_API_KEY": "sk-test"},
    )
    assert p.returncode == 0, p.stderr
    (warning,) = [line for line in p.stderr.splitlines() if "ignored unknown" in line]
    quoted = " ".join(README.read_text(encoding="utf-8").split())  # the README wraps its lines
    assert f"`{warning}`" in quoted, warning


def test_the_example_clip_is_the_same_bytes_on_every_run(tmp_path: Path) -> None:
    """Found when the README test failed now and then (2 runs in 10): the `tokens` example's clip.mp4 row said
    31 kB, not 28 kB. qwenvl sent the same bytes for the same file; the clip itself differed: x264's SIMD code made
    one of two clips from the same frames (the second in 3-40% of runs, by process). Made 30 times (a failure then
    shows almost surely), it is the same file every time."""
    examples = _make_examples()
    made = set()
    for i in range(30):
        path = tmp_path / f"clip{i}.mp4"
        examples.clip(path)
        made.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(made) == 1, f"{len(made)} different clips from one recipe"
