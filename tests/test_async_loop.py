"""Issue 9 item 5: AsyncClient never blocks the event loop while it prepares media.

A task ticks every 10 ms during ``AsyncClient.complete`` on a large photo and on a video; its longest pause
must stay well below the time the same preparation takes when run on the loop (measured first, in the same
test, so a slow or busy machine moves both). Before the fix the pause was the whole preparation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import qwenvl
from conftest import API_KEY
from test_media_video import make_clip


def big_photo(path: Path, size: tuple[int, int] = (6000, 4000)) -> Path:
    """A 24 MP JPEG: decoding and resizing it is the work (its content does not matter)."""
    Image.radial_gradient("L").resize(size).convert("RGB").save(path, "JPEG", quality=90)
    return path


async def longest_pause(work) -> tuple[float, object]:
    """(longest gap between two ticks of a 10 ms ticker while ``work`` runs, its result)."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    try:
        result = await work
    finally:
        done.set()
        await task
    return max(gaps), result


def bar(i: int, width: int, height: int) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:, : (i * 7) % width] = 200
    return frame


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, dict]:
    """Four 24 MP photos; a 4 s 720p video sampled at 8 fps (the work must dwarf any one GIL hold)."""
    d = tmp_path_factory.mktemp("loop")
    clip = make_clip(d / "clip.mp4", frames=120, width=1280, height=720, codec="mpeg4", draw=bar)
    return {
        # four different photos: the same one four times is prepared once (the client keeps what it prepared)
        "images": {"images": [str(big_photo(d / f"big{i}.jpg", (6000, 4000 + 32 * i))) for i in range(4)]},
        "video": {"video": str(clip), "fps": 8},
    }


@pytest.mark.parametrize("kind", ["images", "video"])
def test_the_loop_keeps_ticking_while_media_are_prepared(server, media, kind):
    fields = {"prompt": "describe", **media[kind]}
    sync = qwenvl.Client(api_key=API_KEY, base_url=server.url)
    sync.plan(**fields)  # imports (PyAV...) once, outside the measure
    sync.prepared.clear()  # prepared again, not taken from what the client kept
    started = time.perf_counter()
    sync.plan(**fields)
    on_loop = time.perf_counter() - started  # what a blocked loop would pause for

    import qwenvl.client as client_module

    threads: list[int] = []
    real_plan = client_module.plan

    def recording_plan(*args, **kwargs):  # where the preparation runs: never on the loop's thread
        threads.append(threading.get_ident())
        return real_plan(*args, **kwargs)

    async def main() -> tuple[float, object, int]:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url) as c:
            pause, response = await longest_pause(c.complete(**fields))
            return pause, response, threading.get_ident()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(client_module, "plan", recording_plan)
        pause, response, loop_thread = asyncio.run(main())
    assert response.text.startswith("echo: describe")
    assert threads and loop_thread not in threads  # the decisive check: the work is off the event loop
    assert on_loop > 0.05, "the preparation is too quick to tell anything"
    # the loop's longest pause, for the record (a busy machine's GIL contention varies; a blocked loop pauses
    # for the whole preparation, so a pause as long as that is a failure whatever the load)
    assert pause < on_loop, f"the loop paused {pause:.3f} s (preparation: {on_loop:.3f} s)"


def test_the_loop_keeps_ticking_during_a_fetch_urls_download(server):
    """A download (``--fetch-urls``) from a server that answers only once the loop has ticked 5 times after the
    request arrived: a download that held the loop could never finish (the server gives up after 60 s, a bound
    on the failure only). No time is measured: a busy machine only makes it slower."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    png = Path("small.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(png)
    body = png.read_bytes()
    arrived, ticked, answered_after_ticks = threading.Event(), threading.Event(), []

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            arrived.set()
            answered_after_ticks.append(ticked.wait(60))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    async def ticker() -> None:
        while not arrived.is_set():
            await asyncio.sleep(0.01)
        for _ in range(5):
            await asyncio.sleep(0.01)
        ticked.set()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:

        async def main() -> object:
            async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url) as c:
                url = f"http://127.0.0.1:{httpd.server_address[1]}/a.png"
                ticks = asyncio.create_task(ticker())
                try:
                    return await c.complete(prompt="x", image=url, fetch_urls=True, timeout_s=120)
                finally:
                    ticks.cancel()

        response = asyncio.run(main())
    finally:
        ticked.set()
        httpd.shutdown()
        httpd.server_close()
    assert response.text.startswith("echo: x")
    assert answered_after_ticks == [True], "the loop did not tick while the download was waited for"
