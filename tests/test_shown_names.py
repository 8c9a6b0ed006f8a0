"""A name the user gave (a file, a folder, a URL, a model, a key) holding control characters is shown the same
way in every message of every verb: escaped (``qwenvl.errors.safe_line``: ``\\x1b[2J``, ``\\n``, ``\\t``), so the
message stays one line, says which file is meant, and cannot clear the screen."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, write_image
from dashscope_server import Reply
from qwenvl.errors import safe_line

NAME = "bad\x1b[2Jname\nline\ttab"
SHOWN = r"bad\x1b[2Jname\nline\ttab"  # as every message shows it


@pytest.fixture
def named(isolated_env):
    (isolated_env / f"{NAME}.png").write_text("not an image")
    (isolated_env / f"{NAME}.dir").mkdir()
    (isolated_env / f"{NAME}.json").write_text("{not json")
    write_image(isolated_env / "red.png")
    for i in range(2):
        write_image(isolated_env / f"f{i}.png", color=(90 * i, 10, 10))
    return isolated_env


CASES = {
    "ask: not an image": ["ask", f"{NAME}.png", "what?"],
    "ask: a folder": ["ask", f"{NAME}.dir", "-p", "what?"],
    "ask: --schema not JSON": ["ask", "red.png", "what?", "--schema", f"{NAME}.json"],
    "ask: --schema missing, did you mean": ["ask", "red.png", "what?", "--schema", f"{NAME}.jso"],
    "ask: a media URL": ["ask", f"https://example.com/{NAME}.png", "what?"],
    "ask: --base-url": ["ask", "red.png", "what?", "--base-url", f"http://127.0.0.1:9/{NAME}"],
    "ask: --model (warning)": ["ask", "red.png", "what?", "--model", NAME, "--dry-run"],
    "ocr": ["ocr", f"{NAME}.png"],
    "ground": ["ground", f"{NAME}.png", "the dot"],
    "events": ["events", f"{NAME}.png", "f0.png"],
    "extract": ["extract", "red.png", "--schema", f"{NAME}.json"],
    "analyze --file": ["analyze", "--file", f"{NAME}.json"],
    "analyze: image in the request": ["analyze", "--request", json.dumps({"prompt": "x", "image": f"{NAME}.dir"})],
    "chat": ["chat", f"{NAME}.png"],
    "batch --requests missing": ["batch", "--requests", f"{NAME}.jsonl", "-o", "o.jsonl"],
    "batch -o a folder": ["batch", "red.png", "-p", "x", "-o", f"{NAME}.dir"],
    "tokens": ["tokens", f"{NAME}.png"],
    "models (warning)": ["models", NAME],
    "mcp --allow-dir": ["mcp", "--allow-dir", f"{NAME}.nodir"],
    "skill --install": ["skill", "--install", f"{NAME}.png"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_name_with_control_characters_is_shown_escaped_in_every_verb(server, env, named, case):
    p = run_cli(*CASES[case], env=env, input="")
    said = p.stderr + p.stdout
    assert "Traceback" not in said and "internal error" not in said
    assert "\x1b" not in said  # nothing reaches the terminal raw
    assert any(SHOWN in line for line in said.splitlines()), said  # the name is shown whole, escaped, on one line
    assert "name\nline" not in said and "name line" not in said  # never split, never mangled


def test_a_note_names_the_file_it_wrote_escaped(server, env, named):
    server.enqueue(Reply(text='[{"bbox_2d": [10, 10, 500, 500], "label": "dot"}]'))
    out = named / f"{NAME}.out.png"
    p = run_cli("ground", "red.png", "the dot", "--out", str(out), env=env)
    assert p.returncode == 0, p.stderr
    assert out.exists()
    assert f"wrote {safe_line(out)}" in p.stderr and "\x1b" not in p.stderr


def test_safe_line_escapes_every_control_character_and_keeps_the_rest():
    assert safe_line(NAME) == SHOWN
    assert safe_line("a\r\u202eb\x07c\x9b ü ✓ C:\\dir") == "a\\r\\u202eb\\x07c\\x9b ü ✓ C:\\dir"


def test_names_from_the_environment_are_escaped(server, env, named):
    p = run_cli("config", env={**env, "QWENVL_MODEL": NAME, "QWENVL_HOME": str(named / NAME)})
    said = p.stdout + p.stderr
    assert p.returncode == 0 and "\x1b" not in said
    assert f"model        {SHOWN}:" in said and f"data folder  {named}/{SHOWN}" in said
