"""Issue 8 item 5: hints that fit their verb; HEIC named by every verb; usage errors without library footers."""

from __future__ import annotations

import json

import pytest

from batch_server import BatchServer
from conftest import API_KEY, run_cli

HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256)) * 8
MIF1 = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1heicmiaf" + bytes(range(256)) * 8


@pytest.fixture(params=["heic", "mif1"])
def heic(request, isolated_env):
    path = isolated_env / ("photo.heic" if request.param == "heic" else "IMG_0001.HEIF")
    path.write_bytes(HEIC if request.param == "heic" else MIF1)
    return path


@pytest.mark.parametrize("verb", ["ask", "ground", "ocr", "extract", "events", "tokens", "analyze", "batch"])
def test_heic_gets_the_heic_hint_from_every_verb(server, env, isolated_env, heic, verb):
    (isolated_env / "s.json").write_text(json.dumps({"type": "object"}))
    args = {
        "ask": ["ask", heic.name, "what"],
        "ground": ["ground", heic.name, "dog"],
        "ocr": ["ocr", heic.name],
        "extract": ["extract", heic.name, "--schema", "s.json"],
        "events": ["events", heic.name],
        "tokens": ["tokens", heic.name],
        "analyze": ["analyze", "--request", json.dumps({"prompt": "x", "image": heic.name})],
        "batch": ["batch", heic.name, "-p", "x", "-o", "out.jsonl"],
    }[verb]
    p = run_cli(*args, env=env)
    text = p.stdout + p.stderr + ((isolated_env / "out.jsonl").read_text() if verb == "batch" else "")
    assert "HEIC/HEIF" in text, text
    assert "not a readable video" not in text and "Traceback" not in text
    if verb != "batch":
        assert p.returncode == 3
    assert not [r for r in server.requests if r.method == "POST"]


def test_tokens_min_larger_than_max_is_one_line(env, png):
    p = run_cli("tokens", "--min-pixels", "2000000", "--max-pixels", "100000", str(png), env=env)
    assert p.returncode == 2
    assert "min_pixels is larger than max_pixels" in p.stderr
    lines = p.stderr.strip().splitlines()  # one error line and its hint
    assert "pydantic" not in p.stderr and len(lines) == 2 and lines[1].startswith("hint: Give --min-pixels"), lines


def test_tokens_does_not_suggest_flags_it_lacks(env):
    p = run_cli("tokens", "https://example.com/a.jpg", "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert "--fetch-urls" not in p.stdout + p.stderr


def test_unknown_batch_id_is_not_blamed_on_the_model(isolated_env):
    with BatchServer(api_key=API_KEY) as bserver:
        for verb in ("status", "cancel"):
            p = run_cli("batch", verb, "batch_nope", "--base-url", bserver.url, env={"DASHSCOPE_API_KEY": API_KEY})
            assert p.returncode == 3 and "HTTP 404" in p.stderr  # an unknown id is the user's input
            assert "model" not in p.stderr.lower() and "batch_nope" in p.stderr.split("hint:")[1]


def test_config_keeps_the_profile_name_and_names_the_override(isolated_env):
    home = isolated_env.parent / "home"
    (home / ".alibabacloud").mkdir(parents=True, exist_ok=True)
    (home / ".alibabacloud" / "credentials").write_text("[work]\ndashscope_api_key = sk-abcdef123456\n")
    env = {"ALIBABA_CLOUD_PROFILE": "work", "DASHSCOPE_HTTP_BASE_URL": "http://127.0.0.1:5/api/v1"}
    p = run_cli("config", "--region", "intl", env=env)
    assert p.returncode == 0, p.stderr
    assert "credentials [work]" in p.stdout
    assert "http://127.0.0.1:5/api/v1  (from DASHSCOPE_HTTP_BASE_URL)" in p.stdout
    assert "DASHSCOPE_HTTP_BASE_URL overrides --region" in p.stdout
    assert "https://dashscope-intl.aliyuncs.com/compatible-mode/v1" in p.stdout
    data = json.loads(run_cli("config", "--json", env=env).stdout)
    assert data["endpoint_sources"] == {"compat": "region", "native": "DASHSCOPE_HTTP_BASE_URL"}
    assert data["api_key"].endswith("[work]")


def _hint_texts() -> list[tuple[str, str]]:
    """(where, text) of every hint written in the package: ``hint=...`` arguments and ``default_hint``s."""
    import ast
    from pathlib import Path

    import qwenvl

    out = []
    for path in Path(qwenvl.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            is_hint = isinstance(node, ast.keyword) and node.arg == "hint"
            is_default = isinstance(node, ast.Assign) and any(
                getattr(t, "id", "") == "default_hint" for t in node.targets
            )
            if not (is_hint or is_default):
                continue
            value = node.value  # type: ignore[union-attr]
            text = "".join(c.value for c in ast.walk(value) if isinstance(c, ast.Constant) and isinstance(c.value, str))
            out.append((f"{path.name}:{value.lineno}", text))
    return out


def test_every_flag_a_hint_names_exists():
    """A hint never names a flag no verb has (e.g. --video); shell commands in backticks are not ours."""
    import re

    import click

    from qwenvl.cli.main import cli

    flags: set[str] = set()

    def walk(cmd: click.Command) -> None:
        for param in cmd.params:
            flags.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(cli)
    hints = _hint_texts()
    assert len(hints) > 30
    for where, text in hints:
        text = re.sub(r"`[^`]*`", "", text)
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", text):
            assert flag in flags, f"{where}: hint names {flag}, which no verb has: {text!r}"


@pytest.mark.parametrize("verb", ["ask", "analyze"])
def test_hints_name_what_the_verb_takes(server, env, isolated_env, verb):
    """`--no-resize / prepare=False` in a hint: ask has the flag; analyze takes a JSON request (its key)."""
    from PIL import Image

    Image.new("RGB", (40, 30), (1, 2, 3)).save(isolated_env / "still.gif")
    if verb == "ask":
        p = run_cli("ask", "still.gif", "what", "--no-resize", env=env)
    else:
        p = run_cli(
            "analyze", "--request", json.dumps({"prompt": "what", "image": "still.gif", "prepare": False}), env=env
        )
    assert p.returncode == 3, p.stderr
    hint = p.stderr.split("hint:")[1]
    if verb == "ask":
        assert "--no-resize" in hint and "prepare=False" not in hint
    else:
        assert "prepare=False" in hint and "--no-resize" not in hint
    assert server.requests == []


def test_fit_hint_keeps_shell_commands_and_maps_missing_flags():
    from qwenvl.cli.common import fit_hint
    from qwenvl.cli.main import cli

    hint = "Choose fewer pages (--pages 1-10) or a smaller budget (--detail low, --max-pixels); `qpdf --decrypt in.pdf`"
    assert fit_hint(hint, cli.commands["ask"]) == hint
    # analyze takes request keys, with a value as its JSON writes it
    expected = (
        'Choose fewer pages (pages 1-10) or a smaller budget ("detail": "low", max_pixels); `qpdf --decrypt in.pdf`'
    )
    assert fit_hint(hint, cli.commands["analyze"]) == expected
    assert fit_hint(hint, None) == hint
