"""--fetch-urls: remote images downloaded (time-out, size cap, redirects limited) and prepared locally."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

import qwenvl
from conftest import API_KEY, make_client, run_cli
from file_server import FileServer, Page
from qwenvl.errors import MediaError


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def _loop(path: str) -> Page:
    """A redirect to the next of an endless chain: /loop0 -> /loop1 -> ..."""
    return Page(status=302, headers={"Location": f"/loop{int(path[5:] or 0) + 1}"})


@pytest.fixture
def files(file_server: FileServer) -> str:
    big_png = _png((3000, 2000))
    file_server.add("/photo.png", big_png, "image/png")  # /photo.png?v=2 too
    file_server.route("/huge.bin", lambda _: Page(b"\0" * (70 * 1024 * 1024)))  # made when asked for
    file_server.route("/loop", _loop)
    file_server.pages["/slow.png"] = Page(big_png, "image/png", delay_s=3)
    file_server.add("/page.html", b"<html>not an image</html>", "text/html")
    return file_server.url


def test_remote_image_is_fetched_and_prepared(server, files):
    with make_client(server) as c:
        call = c.plan(prompt="x", image=f"{files}/photo.png", fetch_urls=True)
        item = call.media[0]
        assert item.sent.startswith("data:image/") and item.tokens is not None
        assert (item.width, item.height) != (3000, 2000)  # prepared to the model's budget
        assert item.width * item.height <= call.model.default_max_pixels
        r = c.send(call)
    assert "[images=1" in r.text


def test_remote_image_without_fetch_passes_through(server, files):
    with make_client(server) as c:
        call = c.plan(prompt="x", image=f"{files}/photo.png")
    assert call.media[0].sent == f"{files}/photo.png" and call.media[0].tokens is None


@pytest.mark.parametrize(
    "path,needle",
    [("/huge.bin", "limit"), ("/loop0", "redirects"), ("/nope.png", "404"), ("/page.html", "not an image")],
)
def test_fetch_failures_are_media_errors(server, files, path, needle):
    with make_client(server) as c, pytest.raises(MediaError, match=needle):
        c.plan(prompt="x", image=files + path, fetch_urls=True)
    assert server.requests == []


def test_fetch_timeout(server, files):
    with make_client(server) as c, pytest.raises(MediaError, match="timed out"):
        c.plan(prompt="x", image=f"{files}/slow.png", fetch_urls=True, timeout_s=0.5)


def test_fetch_urls_cli_dry_run(server, files):
    p = run_cli("ask", f"{files}/photo.png", "-p", "x", "--fetch-urls", "--dry-run", env={"DASHSCOPE_API_KEY": API_KEY})
    assert p.returncode == 0, p.stderr
    assert '"tokens": ' in p.stdout and "data:image/" in p.stdout


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_conversation_downloads_each_url_once(server, files, file_server, how):
    """Each turn sends the whole history: its URLs' preparation was reused, but each was downloaded again, every
    turn. A client downloads a URL once (the same URL is the same content for the client's life); another client
    downloads it again."""
    from qwenvl.chat import Conversation

    if how == "sync":
        with make_client(server) as c:
            conv = Conversation(c, fields={"fetch_urls": True})
            conv.attach(f"{files}/photo.png")
            for turn in range(5):
                assert f"[images={1 + (turn > 2)}" in conv.send(f"turn {turn}").text
                if turn == 2:  # a second URL later on
                    conv.attach(f"{files}/photo.png?v=2")
    else:

        async def run() -> None:
            async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, retry_backoff_s=0.01) as c:
                conv = Conversation(c, fields={"fetch_urls": True})
                await conv.aattach(f"{files}/photo.png")
                for turn in range(5):
                    await conv.asend(f"turn {turn}")
                    if turn == 2:
                        await conv.aattach(f"{files}/photo.png?v=2")

        asyncio.run(run())
    assert file_server.gets == {"/photo.png": 1, "/photo.png?v=2": 1}
    assert len(server.requests) == 5
    with make_client(server) as other:
        other.plan(prompt="x", image=f"{files}/photo.png", fetch_urls=True)
    assert file_server.gets["/photo.png"] == 2


def test_a_failed_download_is_not_kept(server, files, file_server):
    with make_client(server) as c:
        for _ in range(2):
            with pytest.raises(MediaError, match="404"):
                c.plan(prompt="x", image=f"{files}/nope.png", fetch_urls=True)
    assert file_server.gets["/nope.png"] == 2
