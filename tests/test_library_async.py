"""The library in an asyncio / web-service integrator's hands (the loopback DashScope server, both protocols):

- ``break`` out of ``Conversation.stream()`` / ``astream()`` ends the turn at once: the next turn may begin at
  once (before, ``asend`` right after the ``break`` raised "a turn in progress" until the event loop's finaliser
  ran), the conversation as the docs say (unchanged before ``done``, the answer taken after);
- the streams are typed as the generators they are, so ``contextlib.closing``/``aclosing`` and ``aclose()`` pass
  ``mypy --strict``;
- every public exception survives pickling with its attributes (a ``ProcessPoolExecutor`` worker's 401 is the
  parent's AuthenticationError, not a BrokenProcessPool);
- ``qwenvl.client.unrepaired`` finds the paid first answer behind ``asyncio.wait_for`` / ``asyncio.timeout``;
- preparing bytes and PIL images never holds the event loop (``test_media_objects_are_prepared_off_the_loop``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import pickle
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import qwenvl
import qwenvl.batch.batchapi
import qwenvl.errors
from conftest import API_KEY, make_client
from dashscope_server import Reply
from qwenvl.chat import Conversation


def _outcomes(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT outcome FROM requests ORDER BY id")]
    finally:
        conn.close()


# --- 1. break out of a conversation's stream ends the turn at once ----------------------------------------------


@pytest.mark.parametrize("at", ["text", "done"])
def test_break_out_of_astream_ends_the_turn_at_once(server, protocol, tmp_path, at):
    server.enqueue(Reply(text="one two three four five six", chunk_delay_s=0.05), Reply(text="second answer"))
    log = tmp_path / "usage.db"

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url, usage_log=log) as ac:
            conv = Conversation(ac)
            async for event in conv.astream("first"):
                if event.type == at:
                    break
            assert len(conv.messages) == (2 if at == "done" else 0)  # taken at done, else as it was
            r = await conv.asend("next")  # no sleep: before, "this conversation has a turn in progress"
            assert r.text == "second answer" and conv.messages[-1].content == "second answer"
            assert len(conv.messages) == (4 if at == "done" else 2)

    asyncio.run(asyncio.wait_for(go(), 60))
    outcomes = _outcomes(log)
    assert outcomes[-1] == "ok" and outcomes[0] == ("ok" if at == "done" else "cancelled"), outcomes


def test_break_out_of_stream_ends_the_turn_at_once(server, protocol):
    server.enqueue(Reply(text="one two three four five six", chunk_delay_s=0.05), Reply(text="second answer"))
    with make_client(server, protocol) as client:
        conv = Conversation(client)
        events = conv.stream("first")  # a reference kept: closing it ends the turn
        for event in events:
            if event.type == "text":
                break
        with pytest.raises(qwenvl.UsageError, match="turn in progress"):
            conv.send("too soon")  # the stream is still open, held here: its turn goes on
        events.close()
        assert conv.send("next").text == "second answer" and len(conv.messages) == 2
        for _event in conv.stream("third"):  # no reference kept: break alone ends it
            break
        assert conv.send("fourth").text and len(conv.messages) == 4


def test_a_stream_being_read_still_holds_its_turn(server):
    """The turn ends when the reader lets its stream go, never while another task reads it."""
    server.enqueue(Reply(text="one two three four five six", chunk_delay_s=0.2))

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url) as ac:
            conv = Conversation(ac)
            started = asyncio.Event()

            async def read() -> str:
                text = ""
                async for event in conv.astream("first"):
                    started.set()
                    text += event.text or ""
                return text

            task = asyncio.create_task(read())
            await started.wait()
            with pytest.raises(qwenvl.UsageError, match="turn in progress"):
                await conv.asend("meanwhile")
            assert await task and len(conv.messages) == 2

    asyncio.run(asyncio.wait_for(go(), 60))


# --- 2. the streams are generators, typed so --------------------------------------------------------------------

CLOSING = """\
import asyncio
import contextlib

import qwenvl
from qwenvl.chat import Conversation


def sync() -> None:
    with qwenvl.Client() as client:
        with contextlib.closing(client.stream(prompt="x")) as events:
            for event in events:
                print(event.text)
        gen = client.stream(prompt="x")
        next(gen)
        gen.close()
        conv = Conversation(client)
        with contextlib.closing(conv.stream("hi")) as turn:
            for event in turn:
                break


async def main() -> None:
    async with qwenvl.AsyncClient() as client:
        async with contextlib.aclosing(client.stream(prompt="x")) as events:
            async for event in events:
                print(event.text)
        agen = client.stream(prompt="x")
        await agen.__anext__()
        await agen.aclose()
        conv = Conversation(client)
        async with contextlib.aclosing(conv.astream("hi")) as turn:
            async for event in turn:
                break


asyncio.run(main())
"""


def test_closing_the_streams_passes_mypy_strict(tmp_path):
    api = pytest.importorskip("mypy.api")
    (tmp_path / "closing.py").write_text(CLOSING, encoding="utf-8")
    source = Path(qwenvl.__file__).resolve().parents[1]
    cache = Path(tempfile.gettempdir()) / "qwenvl-test-mypy-cache"
    os.environ["MYPYPATH"] = str(source)
    try:
        out, err, _ = api.run(
            [
                "--strict",
                "--follow-imports=silent",
                "--no-error-summary",
                "--cache-dir",
                str(cache),
                "--config-file",
                os.devnull,
                str(tmp_path / "closing.py"),
            ]
        )
    finally:
        del os.environ["MYPYPATH"]
    assert ": error:" not in out, out + err


def test_the_streams_are_generators(server):
    with make_client(server) as client:
        assert inspect.isgenerator(client.stream(prompt="x"))
        assert inspect.isgenerator(Conversation(client).stream("x"))

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url) as ac:
            for agen in (ac.stream(prompt="x"), Conversation(ac).astream("x")):
                assert inspect.isasyncgen(agen)
                await agen.aclose()

    asyncio.run(go())


# --- 3. every public exception pickles with its attributes ------------------------------------------------------


def _public_errors() -> list[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for module in (qwenvl, qwenvl.errors, qwenvl.batch.batchapi):
        for name in dir(module):
            obj = getattr(module, name, None)
            if isinstance(obj, type) and issubclass(obj, qwenvl.QwenVLError) and not name.startswith("_"):
                found.add(obj)
    return sorted(found, key=lambda c: c.__name__)


_VALUES = {"status": 401, "raw_text": '{"a": 1', "param": "top_k", "source": "a.jpg"}


def _instance(cls: type[BaseException]) -> BaseException:
    """One of ``cls``, each of its required keywords given (``_VALUES``) and its optional ones too."""
    kw = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if p.kind is p.KEYWORD_ONLY:
            if name in _VALUES:
                kw[name] = _VALUES[name]
            elif name in ("code", "request_id"):
                kw[name] = f"{name}-1"
            elif name == "hint":
                kw[name] = "do this"
            elif p.default is p.empty:  # another required keyword (a batch id...): a value of its own
                kw[name] = f"{name}-value"
    if issubclass(cls, qwenvl.APIStatusError) and cls is not qwenvl.MissingAPIKeyError:
        kw.setdefault("status", 404)  # passed on through **kw
    return cls("it failed", **kw)


@pytest.mark.parametrize("cls", _public_errors(), ids=lambda c: c.__name__)
def test_every_public_error_round_trips_pickle(cls):
    exc = _instance(cls)
    exc.__dict__.setdefault("request_id", "req-1")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and back.args == exc.args and str(back) == str(exc)
    assert back.__dict__ == exc.__dict__ and back.hint == exc.hint and back.exit_code == exc.exit_code


def test_a_structured_output_error_keeps_its_answer_through_pickle(server, protocol):
    server.enqueue(Reply(text="not json"))
    with make_client(server, protocol) as client, pytest.raises(qwenvl.StructuredOutputError) as info:
        client.complete(prompt="x", json_mode=True, repair=False)
    back = pickle.loads(pickle.dumps(info.value))
    assert back.raw_text == "not json" and back.response is not None and back.response.text == "not json"
    assert back.errors == info.value.errors and back.request_ids == info.value.request_ids


def _ask_in_worker(base_url: str) -> str:
    with qwenvl.Client(api_key="sk-wrong-key-0000", base_url=base_url, max_retries=0, usage_log=False) as client:
        return client.ask("hi").text


def test_a_401_in_a_process_pool_worker_is_raised_in_the_parent(server):
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        future = pool.submit(_ask_in_worker, server.url)
        with pytest.raises(qwenvl.AuthenticationError) as info:
            future.result(timeout=120)
        assert info.value.status == 401 and "401" in str(info.value)
        assert pool.submit(len, "pool alive").result(timeout=60) == 10  # not a BrokenProcessPool


# --- 6. unrepaired() behind asyncio.wait_for / asyncio.timeout --------------------------------------------------

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.mark.parametrize("idiom", ["wait_for", "timeout"])
def test_unrepaired_finds_the_paid_answer_behind_a_timeout(server, protocol, idiom):
    from qwenvl.client import unrepaired

    server.enqueue(Reply(text='{"m": 1}'), Reply(text='{"n": 1}', delay_s=60))

    async def go() -> BaseException:
        async with qwenvl.AsyncClient(api_key=API_KEY, protocol=protocol, base_url=server.url) as ac:
            try:
                if idiom == "wait_for":
                    await asyncio.wait_for(ac.complete(prompt="x", schema=SCHEMA), 3)
                else:
                    async with asyncio.timeout(3):
                        await ac.complete(prompt="x", schema=SCHEMA)
            except TimeoutError as exc:
                return exc
            raise AssertionError("no time-out")

    exc = asyncio.run(asyncio.wait_for(go(), 60))
    kept = unrepaired(exc)
    assert kept is not None and kept.raw_text == '{"m": 1}' and kept.response is not None
    assert unrepaired(TimeoutError()) is None


# --- 7. bytes and PIL images are prepared off the event loop, never holding it -----------------------------------


def _big_photo(path: Path) -> Path:
    """A 23 MB 6000x4000 JPEG of noise (a photo's size, and no smaller when compressed)."""
    Image.effect_noise((6000, 4000), 64).convert("RGB").save(path, "JPEG", quality=95)
    return path


def test_a_large_image_given_as_bytes_or_pil_never_stalls_the_loop(server, tmp_path):
    """A heartbeat task ticks every 5 ms while an AsyncClient prepares a 23 MB photo given as a path, as bytes
    and as a PIL image. Preparing runs in a worker thread, but a step that holds the GIL through the whole of a
    large payload (base64 of 30 MB, a regular expression over it) stalls the loop all the same: before, bytes and
    PIL images stalled it many times longer than the same photo given as a path (whose preparation is the same
    decoding, resizing and encoding). The bound is relative to the path's, and generous (a busy machine). Every
    step of theirs ran in a worker thread already: what held the loop was the GIL (``sources._STEP``)."""
    photo = _big_photo(tmp_path / "big.jpg")
    data = photo.read_bytes()
    image = Image.open(photo)
    image.load()

    async def longest_gap(work: Any) -> float:
        gaps: list[float] = []
        done = asyncio.Event()

        async def beat() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        beating = asyncio.create_task(beat())
        await asyncio.sleep(0.05)
        try:
            await work
        finally:
            done.set()
            await beating
        return max(gaps)

    async def go() -> dict[str, float]:
        out: dict[str, float] = {}
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False) as ac:
            await ac.ask("warm up", str(photo))  # imports, connections: outside the measure
            for name, given in (("path", str(photo)), ("bytes", data), ("pil", image)):
                ac.prepared.clear()  # prepared again, not taken from what the client kept
                out[name] = await longest_gap(ac.ask("what?", given))
            conv = Conversation(ac)
            ac.prepared.clear()
            out["attach"] = await longest_gap(conv.aattach(data))
            out["turn"] = await longest_gap(conv.asend("what?"))
        return out

    first, second = (asyncio.run(asyncio.wait_for(go(), 300)) for _ in range(2))
    gaps = {k: min(first[k], second[k]) for k in first}  # the better of two rounds: a busy moment is not the code's
    bound = max(4 * gaps["path"], 0.2) + 0.2  # before: bytes 0.5-1.5 s against a path's 0.02-0.2 s
    assert all(gap < bound for gap in gaps.values()), gaps


def test_one_pil_image_asked_about_twice_at_once_is_sent_alike_and_left_as_it_was(server, monkeypatch):
    """Found when one PIL image was asked about in two requests at once (``asyncio.gather``): each request encodes
    it in a worker thread, and Pillow's save keeps its parameters on the object it saves, so the two saves of the
    caller's image mixed them (a TypeError, or other bytes) and left one save's parameters on it. The two
    requests are made to save at the same moment (a barrier in Pillow's save handlers): both send what one
    request alone sends, only private copies are saved, and the caller's image keeps no parameters."""
    import threading

    from PIL import ImageDraw

    img = Image.new("RGB", (900, 700), "white")
    draw = ImageDraw.Draw(img)
    for i in range(40):  # coloured text: a graphic, so several encodings are tried
        draw.text((20, 15 * i), f"line {i} the quick brown fox " * 3, fill=(200, 30 * (i % 8), 40))

    def sent_images() -> list[str]:
        return [
            part["image_url"]["url"]
            for r in server.requests
            if r.json and "messages" in r.json
            for m in r.json["messages"]
            if isinstance(m["content"], list)
            for part in m["content"]
            if part.get("type") == "image_url"
        ]

    barrier = threading.Barrier(2, timeout=30)
    met = threading.local()
    saved: list[Image.Image] = []

    def held(real):
        def save(im, fp, filename):
            saved.append(im)
            if threading.current_thread().name.startswith("asyncio") and not getattr(met, "done", False):
                met.done = True
                barrier.wait()  # both requests' first saves are under way at once
            return real(im, fp, filename)

        return save

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, usage_log=False) as ac:
            await ac.ask("what?", img)  # alone: what is sent for this image
            ac.prepared.clear()
            for fmt in ("JPEG", "PNG"):
                monkeypatch.setitem(Image.SAVE, fmt, held(Image.SAVE[fmt]))
            await asyncio.gather(ac.ask("what?", img), ac.ask("and?", img))

    asyncio.run(go())
    alone, *together = sent_images()
    assert together == [alone, alone]
    assert not any(im is img for im in saved)  # only private copies are saved
    assert not getattr(img, "encoderinfo", None)
