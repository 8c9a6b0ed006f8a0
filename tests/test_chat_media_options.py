"""A conversation's option that only some media read (``pages``: PDFs; ``fps``, ``video_as``: videos) applies to
the turns that have such media; a turn that sends media while nothing of the conversation so far is of that kind
is refused (nothing sent, nothing lost) rather than the option silently doing nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, make_client, write_image
from dashscope_server import DashScopeServer
from qwenvl.chat import Conversation
from qwenvl.errors import UsageError
from test_media_pdf import make_pdf


def _images_sent(server: DashScopeServer) -> int:
    content = server.requests[-1].json["messages"][-1]["content"]
    return sum(1 for part in content if part.get("type") == "image_url")


def test_pages_for_a_conversation_with_no_pdf_is_refused_when_media_is_sent(
    server: DashScopeServer, isolated_env: Path
) -> None:
    image = str(write_image(isolated_env / "x.png"))
    with make_client(server) as client:
        conv = Conversation(client, fields={"pages": "1-2"})
        conv.send("hello")  # text alone: nothing the option could apply to, and a PDF may come later
        assert len(server.requests) == 1
        conv.attach(image)
        with pytest.raises(UsageError) as caught:
            conv.send("what is this?")
        said = str(caught.value)
        assert said.startswith("pages (set for the conversation) applies to PDFs only") and "--" not in said, said
        assert "--pages (set for the conversation)" in caught.value.as_written()  # the CLI's words
        assert len(server.requests) == 1 and conv.pending == 1 and len(conv.messages) == 2  # nothing sent or lost
        conv.send("what is this?", pages=None)  # the turn's own fields override the conversation's
        assert len(server.requests) == 2


def test_pages_applies_to_the_turn_with_the_pdf_and_is_left_out_of_later_ones(
    server: DashScopeServer, isolated_env: Path
) -> None:
    pdf = isolated_env / "doc.pdf"
    pdf.write_bytes(make_pdf([(200, 200, (1, 0, 0))] * 3))
    image = str(write_image(isolated_env / "x.png"))
    with make_client(server) as client:
        conv = Conversation(client, fields={"pages": "1-2"})
        conv.attach(str(pdf))
        conv.send("read it")
        assert _images_sent(server) == 2  # pages 1 and 2
        conv.attach(image)
        conv.send("and this?")  # the conversation has a PDF: the option applied there
        assert len(server.requests) == 2


def test_fps_for_a_conversation_with_no_video_is_refused_sync_and_async(
    server: DashScopeServer, isolated_env: Path
) -> None:
    image = str(write_image(isolated_env / "x.png"))
    with make_client(server) as client:
        conv = Conversation(client, fields={"fps": 1.0})
        conv.attach(image)
        with pytest.raises(UsageError, match=r"^fps \(set for the conversation\) applies to videos only"):
            conv.send("what is this?")
        with pytest.raises(UsageError, match=r"^fps \(set for the conversation\)"):
            list(conv.stream("what is this?"))
        conv = Conversation(client, fields={"video_as": "file"})
        conv.attach(image)
        with pytest.raises(UsageError, match=r"^video_as \(set for the conversation\) applies to videos only"):
            conv.send("what is this?")

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url) as client:
            conv = Conversation(client, fields={"fps": 1.0})
            await conv.aattach(image)
            with pytest.raises(UsageError, match=r"^fps \(set for the conversation\)"):
                await conv.asend("what is this?")
            with pytest.raises(UsageError, match=r"^fps \(set for the conversation\)"):
                async for _ in conv.astream("what is this?"):
                    pass
            assert conv.pending == 1

    asyncio.run(go())
    assert server.requests == []
