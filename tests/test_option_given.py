"""Which media options count as "given", for the refusal of one that does not apply, is one rule on every surface
(``qwenvl.media.sources.option_given``): a value that does nothing (``detail`` "auto", ``video_as`` "frames"), even
given explicitly, is not given; any other value where no media reads it is refused. The CLI used to refuse
``--detail auto`` with a video, which the library took."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, make_client, run_cli, write_image
from dashscope_server import DashScopeServer, Reply
from qwenvl.errors import UsageError


@pytest.fixture
def media(isolated_env: Path) -> Path:
    from test_new_user_faults import _video

    write_image(isolated_env / "x.png")
    _video(isolated_env / "clip.mp4")
    return isolated_env


def _model_calls(server: DashScopeServer) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


@pytest.mark.parametrize(
    ("flag", "value", "image"), [("--detail", "auto", "clip.mp4"), ("--video-as", "frames", "x.png")]
)
def test_the_cli_takes_an_explicit_default_that_does_nothing(server, env, media, flag, value, image):
    server.enqueue(Reply(text="ok"))
    p = run_cli("ask", image, "-p", "hi", flag, value, env=env)
    assert p.returncode == 0, p.stderr  # was 2: "--detail applies to images and PDFs only"
    assert _model_calls(server) == 1


@pytest.mark.parametrize(("flag", "value", "image"), [("--detail", "low", "clip.mp4"), ("--video-as", "file", "x.png")])
def test_the_cli_refuses_a_value_that_does_not_apply(server, env, media, flag, value, image):
    p = run_cli("ask", image, "-p", "hi", flag, value, env=env)
    assert p.returncode == 2 and f"{flag} applies to" in p.stderr, p.stderr
    assert _model_calls(server) == 0


def test_batch_request_lines_follow_the_same_rule(server, env, media):
    server.enqueue(Reply(text="ok", times=2))
    lines = [
        {"prompt": "hi", "video": "clip.mp4", "detail": "auto"},
        {"prompt": "hi", "image": "x.png", "video_as": "frames"},
    ]
    (media / "r.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "o.jsonl", env=env)
    assert p.returncode == 0, p.stderr
    out = [json.loads(x) for x in (media / "o.jsonl").read_text().splitlines()]
    assert len(out) == 2 and all(x.get("error") is None for x in out), out
    (media / "r.jsonl").write_text(json.dumps({"prompt": "hi", "video": "clip.mp4", "detail": "low"}) + "\n")
    p = run_cli("batch", "--requests", "r.jsonl", "-o", "o2.jsonl", env=env)
    out = [json.loads(x) for x in (media / "o2.jsonl").read_text().splitlines()]
    assert "detail applies to" in json.dumps(out), out


def test_the_library_sync_and_async_follow_the_same_rule(server, media):
    video = str(media / "clip.mp4")
    with make_client(server) as c:
        c.plan(prompt="hi", video=video, detail="auto")
        with pytest.raises(UsageError, match="detail applies to"):
            c.plan(prompt="hi", video=video, detail="low")

    async def main() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False) as ac:
            server.enqueue(Reply(text="ok"))
            await ac.ask("hi", video=video, detail="auto")
            with pytest.raises(UsageError, match="detail applies to"):
                await ac.ask("hi", video=video, detail="low")

    asyncio.run(main())


def test_mcp_follows_the_same_rule(server, env, media):
    pytest.importorskip("mcp")
    from test_mcp import run, stdio_session, text_of

    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(media)) as c:
            server.enqueue(Reply(text="ok"))
            r = await c.call_tool("ask", {"prompt": "hi", "media": ["clip.mp4"], "options": {"detail": "auto"}})
            assert not r.is_error, text_of(r)
            r = await c.call_tool("ask", {"prompt": "hi", "media": ["clip.mp4"], "options": {"detail": "low"}})
            assert r.is_error and "detail applies to" in text_of(r), text_of(r)

    run(main)
    assert _model_calls(server) == 1
