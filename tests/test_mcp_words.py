"""A task's warnings come back from the MCP tools in the tools' words (``options.max_tokens``), never the CLI's flags,
as its errors do. Through the MCP SDK's stdio client, against the loopback DashScope server."""

from __future__ import annotations

import pytest

from conftest import write_image
from dashscope_server import Reply

pytest.importorskip("mcp")

from test_mcp import run, stdio_session, text_of


def test_a_cut_off_answer_says_which_option_to_raise(server, env, isolated_env):
    photo = write_image(isolated_env / "photo.png", size=(64, 48))

    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            server.enqueue(
                Reply(text='[{"bbox_2d": [100, 200, 500, 1000], "label": "person"}, {"bbox', finish_reason="length")
            )
            r = await c.call_tool("ground", {"image": photo.name, "query": "person"})
            assert not r.is_error, text_of(r)
            said = " ".join(r.structured_content["warnings"])
            assert "cut off" in said and "options.max_tokens" in said and "--" not in said, said
            server.enqueue(Reply(text="some text", finish_reason="length"))
            r = await c.call_tool("ocr", {"file": photo.name})
            assert not r.is_error, text_of(r)
            said = " ".join(r.structured_content["warnings"])
            assert "options.max_tokens" in said and "--" not in said, said

    run(main)
