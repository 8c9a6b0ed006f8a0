"""`qwenvl mcp` as an MCP host runs it: the official SDK's client starts the server over stdio (or talks to it over
streamable HTTP) and calls its tools against the loopback DashScope server; `qwenvl skill`."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from conftest import run_cli, write_image
from dashscope_server import Reply

mcp = pytest.importorskip("mcp")
import httpx2  # noqa: E402  (the SDK's HTTP client)
import mcp.types as t  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

DEADLINE_S = 120  # bounds a hang; never an assertion on speed
TOOLS = {"ask", "ground", "ocr", "extract", "events", "estimate"}
INVOICE_SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["title", "amount"],
    "additionalProperties": False,
}


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The test's environment (isolated HOME, QWENVL_HOME, cache) with the loopback server's settings."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "ALIBABA_CLOUD_"))}
    full.update(env)
    return full


@asynccontextmanager
async def stdio_session(
    env: dict[str, str], *args: str, roots: list[Path] | None = None, mode: str = "auto"
) -> AsyncIterator[Client]:
    """`qwenvl mcp ARGS` started by the SDK's stdio client; ``roots`` are declared as the client's MCP roots."""
    callback = None
    if roots is not None:

        async def callback(ctx: Any) -> t.ListRootsResult:
            return t.ListRootsResult(roots=[t.Root(uri=p.as_uri()) for p in roots])

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "qwenvl", "mcp", *args], env=child_env(env), cwd=os.getcwd()
    )
    with anyio.fail_after(DEADLINE_S):
        async with Client(params, mode=mode, list_roots_callback=callback, read_timeout_seconds=DEADLINE_S) as c:
            yield c


def run(fn: Any) -> Any:
    return anyio.run(fn)


def text_of(result: t.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, t.TextContent))


def sent_images(server: Any) -> int:
    body = server.requests[-1].json
    messages = body["messages"] if "messages" in body else body["input"]["messages"]
    content = messages[-1]["content"]
    return sum(1 for p in content if p.get("type") == "image_url" or "image" in p)


# == Tools and schemas ============================================================================================


def test_lists_the_tools_with_their_schemas(env, isolated_env):
    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            tools = {tool.name: tool for tool in (await c.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            props = tool.input_schema["properties"]
            assert tool.description and tool.output_schema is not None, tool.name
            assert "ctx" not in props and "roots" not in props, tool.name  # filled by the server, not the caller
        required = {name: set(tool.input_schema.get("required", [])) for name, tool in tools.items()}
        assert required == {
            "ask": {"prompt"},
            "ground": {"image", "query"},
            "ocr": {"file"},
            "extract": {"file", "schema"},
            "events": set(),
            "estimate": {"files"},
        }
        ask = tools["ask"]
        assert ask.input_schema["properties"]["media"]["type"] == "array"
        assert {"text", "reasoning", "json", "usage", "cost", "model"} <= set(ask.output_schema["properties"])
        assert {"boxes", "points", "width", "height", "annotated"} <= set(tools["ground"].output_schema["properties"])
        assert {"items", "total"} <= set(tools["estimate"].output_schema["properties"])
        assert tools["estimate"].annotations.read_only_hint is True
        # generation options are one typed object; unknown option names are refused by the schema
        options = ask.input_schema["$defs"]["Options"]
        assert options["additionalProperties"] is False
        assert {"max_tokens", "temperature", "detail", "fps", "pages"} <= set(options["properties"])

    run(main)


# == ask ==========================================================================================================


def test_ask_about_a_local_image(server, env, png):
    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(png.parent)) as c:
            r = await c.call_tool(
                "ask", {"prompt": "What is it?", "media": [png.name], "options": {"max_tokens": 64, "temperature": 0.5}}
            )
            assert not r.is_error, text_of(r)
            data = r.structured_content
            assert data["text"] == "echo: What is it? [images=1 videos=0]"
            assert data["usage"]["input_tokens"] == 110 and data["usage"]["image_tokens"] == 100
            assert data["cost"] > 0 and data["currency"] == "CNY" and data["model"] == "qwen3-vl-plus"
            assert data["reasoning"] is None and data["request_id"]
            assert json.loads(text_of(r)) == data  # the same result as text, for hosts without structured output
            body = server.requests[-1].json
            assert body["max_tokens"] == 64 and body["temperature"] == 0.5
            assert sent_images(server) == 1

            server.enqueue(Reply(text="A red square.", reasoning="It is all red."))
            r = await c.call_tool("ask", {"prompt": "What is it?", "media": [str(png)], "thinking": True})
            assert r.structured_content["reasoning"] == "It is all red."
            assert r.structured_content["text"] == "A red square."
            assert r.structured_content["usage"]["reasoning_tokens"] == 4

    run(main)


def test_ask_with_a_schema_and_the_service_options_of_the_server(server, env, png):
    """--model and --protocol given to `qwenvl mcp` are every call's defaults; a tool's model overrides."""

    async def main() -> None:
        args = ("--allow-dir", str(png.parent), "--protocol", "native", "--model", "qwen3-vl-flash")
        async with stdio_session(env, *args) as c:
            server.enqueue(Reply(text='{"title": "Cafe", "amount": 16.5}'))
            r = await c.call_tool("ask", {"prompt": "Fields?", "media": [str(png)], "schema": INVOICE_SCHEMA})
            assert r.structured_content["json"] == {"title": "Cafe", "amount": 16.5}
            assert server.requests[-1].path.endswith("/generation")  # native
            assert server.requests[-1].json["model"] == "qwen3-vl-flash"
            r = await c.call_tool("ask", {"prompt": "Hi", "model": "qwen3-vl-plus"})
            assert server.requests[-1].json["model"] == "qwen3-vl-plus"
            assert r.structured_content["text"] == "echo: Hi [images=0 videos=0]"

    run(main)


# == ground =======================================================================================================


def test_ground_in_original_pixels_with_the_annotated_image(server, env, isolated_env):
    photo = write_image(isolated_env / "photo.png", size=(640, 480))
    out = isolated_env / "out" / "boxes.png"

    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            server.enqueue(Reply(text='[{"bbox_2d": [100, 200, 500, 1000], "label": "person"}]'))
            r = await c.call_tool("ground", {"image": photo.name, "query": "person", "out": str(out)})
            assert not r.is_error, text_of(r)
            data = r.structured_content
            assert [(b["label"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in data["boxes"]] == [
                ("person", 64, 96, 320, 480)
            ]
            assert (data["width"], data["height"], data["convention"]) == (640, 480, "relative-1000")
            assert data["annotated"] == str(out.resolve())
            images = [c for c in r.content if isinstance(c, t.ImageContent)]
            assert len(images) == 1 and images[0].mime_type == "image/png"
            shown = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
            written = Image.open(out)
            assert written.size == (640, 480) and shown.size == (640, 480)
            assert written.getpixel((64, 200)) != (200, 30, 30)  # the box's outline is drawn on the left edge

            # points, no file written, the drawing only on request
            server.enqueue(Reply(text='[{"point_2d": [500, 500], "label": "dog"}]'))
            r = await c.call_tool("ground", {"image": str(photo), "query": "dog", "points": True, "return_image": True})
            assert [(p["x"], p["y"]) for p in r.structured_content["points"]] == [(320, 240)]
            assert r.structured_content["annotated"] is None
            assert any(isinstance(c, t.ImageContent) for c in r.content)

    run(main)


def test_ground_refuses_to_write_outside_the_allowed_folders(server, env, isolated_env, tmp_path):
    photo = write_image(isolated_env / "photo.png")

    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            r = await c.call_tool("ground", {"image": str(photo), "query": "x", "out": str(tmp_path / "o.png")})
            assert r.is_error and "outside the folders this server may write" in text_of(r)
            r = await c.call_tool("ground", {"image": "https://example.com/a.jpg", "query": "x", "return_image": True})
            assert r.is_error and "needs the image's pixels" in text_of(r)
        assert not (tmp_path / "o.png").exists()
        assert not server.requests  # refused before anything was paid for

    run(main)


# == ocr ==========================================================================================================


def test_ocr_reads_the_text(server, env, png):
    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(png.parent)) as c:
            server.enqueue(Reply(text="CAFE ALIBABA\nTOTAL 16.50"))
            r = await c.call_tool("ocr", {"file": png.name})
            assert not r.is_error, text_of(r)
            assert r.structured_content["text"] == "CAFE ALIBABA\nTOTAL 16.50"
            assert r.structured_content["source"] == png.name and r.structured_content["usage"]["input_tokens"]
            assert sent_images(server) == 1

    run(main)


def test_ocr_that_fails_midway_gives_the_pages_it_read(server, env, isolated_env):
    pages = [Image.new("RGB", (595, 842), "white") for _ in range(3)]
    pages[0].save(isolated_env / "doc.pdf", save_all=True, append_images=pages[1:])

    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            server.enqueue(Reply(text="PAGE ONE"), Reply(status=500, times=10))
            r = await c.call_tool("ocr", {"file": "doc.pdf"})
            assert r.is_error
            assert "read before it (paid for): page 1\nPAGE ONE" in text_of(r)

    run(main)


# == extract ======================================================================================================


def test_extract_gives_json_valid_for_the_schema(server, env, png):
    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(png.parent)) as c:
            server.enqueue(Reply(text='```json\n{"title": "Cafe Alibaba", "amount": 16.5}\n```'))
            r = await c.call_tool("extract", {"file": str(png), "schema": INVOICE_SCHEMA})
            assert not r.is_error, text_of(r)
            assert r.structured_content["json"] == {"title": "Cafe Alibaba", "amount": 16.5}
            assert r.structured_content["file"] == str(png)
            sent = server.requests[-1].json
            assert sent["response_format"]["type"] in ("json_schema", "json_object")

            # invalid twice (the answer and its one repair): a tool error, one line and a hint
            server.enqueue(Reply(text='{"title": "x"}'), Reply(text='{"title": "x"}'))
            r = await c.call_tool("extract", {"file": str(png), "schema": INVOICE_SCHEMA})
            assert r.is_error
            lines = text_of(r).splitlines()
            assert lines[0].startswith("error: the answer is not valid JSON for the schema")
            assert re.fullmatch(r"paid: 2 requests, [1-9]\d* in / \d+ out tokens, cost ¥[\d.]+", lines[1]), lines
            assert lines[2].startswith("hint: ") and len(lines) == 3

    run(main)


# == estimate =====================================================================================================


def test_estimate_names_a_pdf_page_by_its_number(server, env, isolated_env):
    pages = [Image.new("RGB", (595, 842), "white") for _ in range(5)]
    pages[0].save(isolated_env / "doc.pdf", save_all=True, append_images=pages[1:])

    async def main() -> dict[str, Any]:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            r = await c.call_tool("estimate", {"files": ["doc.pdf"], "pages": "4,2", "fast": True})
            assert not r.is_error, text_of(r)
            return r.structured_content

    data = run(main)
    assert [(i["source"], i["page"]) for i in data["items"]] == [("doc.pdf", 4), ("doc.pdf", 2)]
    assert data["warnings"] == []


def test_estimate_is_the_tokens_estimate_and_sends_nothing(server, env, isolated_env):
    photo = write_image(isolated_env / "photo.png", size=(1600, 1200))
    small = write_image(isolated_env / "small.jpg", size=(300, 200), fmt="JPEG")

    async def main() -> dict[str, Any]:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            r = await c.call_tool("estimate", {"files": [photo.name, str(small)], "model": "qwen-vl-max"})
            assert not r.is_error, text_of(r)
            return r.structured_content

    data = run(main)
    assert not server.requests
    cli = run_cli("tokens", photo.name, str(small), "--model", "qwen-vl-max", "--json", env=env)
    assert cli.returncode == 0, cli.stderr
    assert data == json.loads(cli.stdout)  # the same estimate as `qwenvl tokens`, names as the caller gave them
    assert data["items"][0]["source"] == "photo.png" and data["total"]["tokens"] > 0


# == where files may be read ======================================================================================


def test_paths_outside_the_allowed_folders_are_refused(server, env, isolated_env, tmp_path):
    allowed = isolated_env / "allowed"
    allowed.mkdir()
    inside = write_image(allowed / "in.png")
    secret = write_image(tmp_path / "secret.png")
    (allowed / "link.png").symlink_to(secret)  # a symlink inside that points outside
    escapes = [str(secret), str(allowed / "link.png"), str(allowed / ".." / ".." / "secret.png"), secret.as_uri()]

    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(allowed)) as c:
            for ref in escapes:
                for tool, args in (
                    ("ask", {"prompt": "?", "media": [ref]}),
                    ("estimate", {"files": [ref]}),
                    ("extract", {"file": ref, "schema": INVOICE_SCHEMA}),
                    ("ground", {"image": ref, "query": "x"}),
                ):
                    r = await c.call_tool(tool, args)
                    assert r.is_error, (tool, ref)
                    text = text_of(r)
                    assert "outside the folders this server may read" in text, text
                    assert "--allow-dir" in text and "Traceback" not in text
            r = await c.call_tool("ask", {"prompt": "?", "media": [str(inside)]})
            assert not r.is_error, text_of(r)
        assert len(server.requests) == 1  # only the allowed file was sent

    run(main)


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # the 2026-07-28 input_required flow, and the handshake era
def test_the_clients_roots_allow_reading(server, env, isolated_env, tmp_path, mode):
    root = tmp_path / "project"
    root.mkdir()
    photo = write_image(root / "photo.png")
    other = write_image(isolated_env / "other.png")

    async def main() -> None:
        async with stdio_session(env, roots=[root], mode=mode) as c:  # no --allow-dir: the roots only
            r = await c.call_tool("ask", {"prompt": "?", "media": [str(photo)]})
            assert not r.is_error, text_of(r)
            r = await c.call_tool("ask", {"prompt": "?", "media": [str(other)]})
            assert r.is_error and str(root) in text_of(r)
        async with stdio_session(env, mode=mode) as c:  # no roots, no --allow-dir: no local file at all
            r = await c.call_tool("ask", {"prompt": "?", "media": [str(photo)]})
            assert r.is_error and "(allowed: none)" in text_of(r)
            r = await c.call_tool(
                "ask",
                {"prompt": "?", "media": ["data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode()]},
            )
            assert not r.is_error, text_of(r)  # data: URLs need no folder

    run(main)


# == errors =======================================================================================================


def test_errors_come_back_as_tool_errors_with_a_hint(server, env, isolated_env):
    write_image(isolated_env / "a.png")

    async def main() -> None:
        bad_key = {**env, "DASHSCOPE_API_KEY": "sk-wrong-key-0000"}
        async with stdio_session(bad_key, "--allow-dir", str(isolated_env), "--max-retries", "0") as c:
            r = await c.call_tool("ask", {"prompt": "?", "media": ["a.png"]})
            assert r.is_error
            first, hint = text_of(r).splitlines()
            assert first.startswith("error: HTTP 401") and hint.startswith("hint: This server is not DashScope's")
            r = await c.call_tool("ask", {"prompt": "?", "media": ["missing.png"]})
            assert r.is_error and text_of(r).startswith("error: file not found")
            r = await c.call_tool("ask", {"prompt": "?", "options": {"pages": "x-y"}, "media": ["a.png"]})
            assert r.is_error and text_of(r).startswith("error: ")
            r = await c.call_tool("ask", {"prompt": "?", "options": {"temprature": 1}, "media": ["a.png"]})
            assert r.is_error and "Did you mean 'temperature'?" in text_of(r)  # as the CLI and library say
            r = await c.call_tool("events", {})
            assert r.is_error and text_of(r).splitlines()[0] == "error: give either video or frames"
            assert "hint: Give the video alone, or the frames alone" in text_of(r)
            # the library's hint names CLI flags; a tool's caller gets the tools' arguments instead
            r = await c.call_tool("ask", {"prompt": "?", "options": {"max_tokens": 10**6}, "media": ["a.png"]})
            assert r.is_error and "hint: Give options.max_tokens of at most 32,768" in text_of(r), text_of(r)
            assert "--max-tokens" not in text_of(r)

    run(main)


# == progress =====================================================================================================


def test_events_reports_progress(server, env, isolated_env):
    from test_tasks_events import SEED_ANSWER, make_clip

    clip = make_clip(isolated_env / "clip.mp4")
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            server.enqueue(Reply(text=json.dumps(SEED_ANSWER), delay_s=2.5))  # a slow answer: heartbeats
            r = await c.call_tool("events", {"video": clip.name}, progress_callback=on_progress)
            assert not r.is_error, text_of(r)
            data = r.structured_content
            assert [e["start"] for e in data["events"]] == ["00:00:00", "00:00:01", "00:00:02"]
            assert data["duration"] == pytest.approx(3.0, abs=0.2) and data["video"] == "clip.mp4"

    run(main)
    values = [p for p, _, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values)  # strictly increasing
    assert seen[0][2].startswith("sampling the video") and seen[-1] == (2, 2, "done")
    assert any(m and m.startswith("asking") and m.endswith(" s)") for _, _, m in seen)  # a heartbeat


# == streamable HTTP ==============================================================================================


@asynccontextmanager
async def http_server(env: dict[str, str], *args: str) -> AsyncIterator[str]:
    """`qwenvl mcp --http 0 ARGS` in a subprocess; yields its URL (read from the line it prints)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwenvl", "mcp", "--http", "0", *args],
        env=child_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = await anyio.to_thread.run_sync(proc.stderr.readline)
        match = re.search(r"listening on (http://\S+)", line)
        assert match, line + (proc.stderr.read() if proc.poll() is not None else "")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in leaves(e)]
    return [exc]


async def http_call(url: str, key: str | None) -> t.CallToolResult:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=DEADLINE_S) as hc,
        Client(streamable_http_client(url, http_client=hc), read_timeout_seconds=DEADLINE_S) as c,
    ):
        names = {tool.name for tool in (await c.list_tools()).tools}
        assert names == TOOLS
        return await c.call_tool("ask", {"prompt": "Hello"})


def test_http_needs_the_key(server, env):
    async def main() -> None:
        with anyio.fail_after(DEADLINE_S):
            async with http_server({**env, "QWENVL_SERVE_API_KEY": "mcp-key-123"}) as url:
                r = await http_call(url, "mcp-key-123")
                assert r.structured_content["text"] == "echo: Hello [images=0 videos=0]"
                init = {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                }
                accept = {"Accept": "application/json, text/event-stream"}
                for auth in (None, "Bearer wrong-key", "Bearer mcp-key-12", "Basic mcp-key-123", "mcp-key-123"):
                    headers = {**accept, **({"Authorization": auth} if auth else {})}
                    resp = await anyio.to_thread.run_sync(
                        lambda h=headers: httpx.post(url, json=init, headers=h, timeout=DEADLINE_S)
                    )
                    assert resp.status_code == 401, auth
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                with pytest.raises(BaseException) as info:  # the SDK's client fails on the 401
                    await http_call(url, "wrong-key")
                assert any(isinstance(e, mcp.MCPError) for e in leaves(info.value)), info.value

    run(main)


def test_http_without_auth_on_loopback_only(server, env):
    async def main() -> None:
        with anyio.fail_after(DEADLINE_S):
            async with http_server(env, "--no-auth") as url:
                r = await http_call(url, None)
                assert not r.is_error

    run(main)
    p = run_cli("mcp", "--http", "0", env=env)
    assert p.returncode == 2 and "needs an API key" in p.stderr and "QWENVL_SERVE_API_KEY" in p.stderr
    p = run_cli("mcp", "--http", "0", "--no-auth", "--host", "0.0.0.0", env=env)
    assert p.returncode == 2 and "loopback host only" in p.stderr
    p = run_cli("mcp", "--api-key", "k", env=env)
    assert p.returncode == 2 and "--http only" in p.stderr and "Traceback" not in p.stderr


def test_http_accepts_connections_as_soon_as_it_announces(server):
    """The URL is announced once the socket listens: a client that connects at that very moment (before the
    server's start-up has run) waits in the backlog instead of being refused (on a busy machine the start-up
    takes long enough for a host to try; a refusal there was a flaky "connection refused")."""
    import socket
    from urllib.parse import urlsplit

    from conftest import make_client
    from qwenvl.mcp_server import build_server, serve_http

    class Announced(Exception):
        pass

    def announce(url: str) -> None:
        with socket.create_connection(("127.0.0.1", urlsplit(url).port), timeout=DEADLINE_S):
            raise Announced(url)  # connected while serve_http had not yet started uvicorn

    mcp_server = build_server(lambda: make_client(server))
    try:
        with pytest.raises(Announced, match=r"^http://127\.0\.0\.1:\d+/mcp$"):
            run(lambda: serve_http(mcp_server, "127.0.0.1", 0, api_key=None, announce=announce))
    finally:
        mcp_server.client.close()


@pytest.mark.parametrize(("hidden", "says"), [("mcp", "not installed"), ("mcp.server.mcpserver", "needs mcp 2.3")])
def test_missing_extra_names_the_install_command(env, hidden, says):
    code = f"import sys; sys.modules[{hidden!r}] = None; from qwenvl.cli.main import main; main(['mcp'])"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(env), timeout=60)
    assert p.returncode == 2, p.stderr
    assert says in p.stderr and 'pip install "qwenvl[mcp]"' in p.stderr and "Traceback" not in p.stderr


# == the skill ====================================================================================================


def test_skill_prints_and_installs(isolated_env):
    p = run_cli("skill")
    assert p.returncode == 0, p.stderr
    text = p.stdout
    front = re.match(r"---\nname: (\S+)\ndescription: (.+?)\n---\n", text, re.S)
    assert front and front.group(1) == "alicloud-ai-multimodal-qwen-vl"  # the folder it replaces
    folder = isolated_env / "skills" / "alicloud-ai-multimodal-qwen-vl"
    p = run_cli("skill", "--install", str(folder))
    assert p.returncode == 0 and (folder / "SKILL.md").read_text(encoding="utf-8") == text
    p = run_cli("skill", "--install", str(folder))
    assert p.returncode == 2 and "--force" in p.stderr
    assert run_cli("skill", "--install", str(folder), "--force").returncode == 0


def test_skill_commands_are_real():
    """Every `qwenvl VERB` the skill shows exists, and every analyze request in it is valid for the library."""
    from qwenvl.cli.main import cli
    from qwenvl.cli.skill import skill_text
    from qwenvl.types import Request

    text = skill_text()
    verbs = set(re.findall(r"(?:^|`)qwenvl ([a-z]+)\b", text, re.M))  # commands: in code, or a code line
    assert {"analyze", "ask", "ground", "ocr", "extract", "events", "tokens", "mcp"} <= verbs
    assert verbs <= set(cli.commands)
    requests = re.findall(r"--request '(\{.*?\})'", text)
    assert len(requests) >= 3
    for raw in requests:
        data = json.loads(raw)
        assert set(data) <= set(Request.model_fields), data
    for code in ("| 2 |", "| 3 |", "| 4 |", "| 5 |"):
        assert code in text


def test_wrong_arguments_are_one_line_naming_each(env, isolated_env):
    async def main() -> list[str]:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            out = []
            for args in ({"prompt": "x", "media": "photo.png"}, {}):
                r = await c.call_tool("ask", args)
                assert r.is_error
                out.append(text_of(r))
            return out

    wrong_type, missing = run(main)
    assert wrong_type.splitlines()[0] == "error: invalid arguments for ask: media: Input should be a valid list"
    assert missing.splitlines()[0] == "error: invalid arguments for ask: prompt: Field required"
    assert "errors.pydantic.dev" not in wrong_type + missing and len(wrong_type.splitlines()) == 2


def test_extract_and_ask_with_an_invalid_schema_send_nothing(server, env, png):
    async def main() -> None:
        async with stdio_session(env, "--allow-dir", str(png.parent)) as c:
            for tool, args in (
                ("extract", {"file": str(png), "schema": {"type": "objectx"}}),
                ("ask", {"prompt": "x", "media": [str(png)], "schema": {"$ref": "#/$defs/nope"}}),
            ):
                r = await c.call_tool(tool, args)
                assert r.is_error
                lines = text_of(r).splitlines()
                assert lines[0].startswith("error: not a valid JSON Schema"), lines
                assert lines[1].startswith("hint: ") and len(lines) == 2
        assert server.requests == []

    run(main)


def test_an_estimates_warning_is_in_the_tools_words(server, env, isolated_env):
    """A document over the model's context as one request is still counted, with a warning naming the tool's
    argument (``pages``), never the CLI's ``--pages``."""
    pages = [Image.new("RGB", (595, 842), "white") for _ in range(200)]
    pages[0].save(isolated_env / "long.pdf", save_all=True, append_images=pages[1:])

    async def main() -> dict[str, Any]:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            r = await c.call_tool("estimate", {"files": ["long.pdf"], "fast": True})
            assert not r.is_error, text_of(r)
            return r.structured_content

    data = run(main)
    assert data["warnings"] and all("--pages" not in w for w in data["warnings"]), data["warnings"]
