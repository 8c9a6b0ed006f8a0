"""A task's warnings are result data in the words of whoever reads them: a library call's ``ground``/``ocr``/
``events`` result says ``max_tokens`` (never ``--max-tokens``), sync and async; the CLI's output keeps its flags."""

from __future__ import annotations

import asyncio
import json

import pytest

import qwenvl
from conftest import API_KEY, run_cli, write_image
from dashscope_server import Reply
from qwenvl import tasks
from test_tasks_events import SEED_ANSWER, make_clip

BOXES = '```json\n[{"bbox_2d": [10, 10, 50, 50], "label": "bird"}, {"bbox_2d": [900, 10, 9'


def _cut(text: str) -> Reply:
    return Reply(text=text, finish_reason="length")


def _run(server, async_: bool, task: str, *args, **kw):
    if not async_:
        with qwenvl.Client(api_key=API_KEY, base_url=server.url, usage_log=False) as client:
            return getattr(tasks, task)(client, *args, **kw)

    async def go():
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False) as client:
            return await getattr(tasks, f"a{task}")(client, *args, **kw)

    return asyncio.run(go())


def _said(warnings: list[str]) -> str:
    cut = [w for w in warnings if "cut off" in w]
    assert cut, warnings
    assert all("--" not in w for w in warnings), warnings
    return " ".join(cut)


@pytest.mark.parametrize("async_", [False, True])
def test_library_task_warnings_name_max_tokens_as_the_library_takes_it(server, isolated_env, async_):
    photo = str(write_image(isolated_env / "photo.png", (200, 150)))
    server.enqueue(_cut(BOXES))
    g = _run(server, async_, "ground", photo, "every bird", max_tokens=300)
    assert "raise max_tokens" in _said(g.warnings)

    server.enqueue(_cut("a long page that goes on"))
    r = _run(server, async_, "ocr", photo, max_tokens=5)
    assert "raise max_tokens" in _said(r.warnings) and "raise max_tokens" in _said(r.pages[0].warnings)

    clip = str(make_clip(isolated_env / "clip.mp4"))
    server.enqueue(_cut(json.dumps(SEED_ANSWER)))
    t = _run(server, async_, "events", clip, max_tokens=400)
    assert "raise max_tokens" in _said(t.warnings)


def test_the_cli_keeps_its_flag_in_the_same_warnings(server, env, isolated_env):
    write_image(isolated_env / "photo.png", (200, 150))
    server.enqueue(_cut(BOXES))
    p = run_cli("ground", "photo.png", "every bird", "--json", "--max-tokens", "300", env=env)
    assert p.returncode == 0, p.stderr
    assert any("raise --max-tokens" in w for w in json.loads(p.stdout)["warnings"])
    server.enqueue(_cut("a long page that goes on"))
    p = run_cli("ocr", "photo.png", "--max-tokens", "5", env=env)
    assert p.returncode == 0 and "raise --max-tokens" in p.stderr, p.stderr
