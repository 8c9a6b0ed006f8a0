"""The small interface every backend implements: ``Backend`` (sync) and ``AsyncBackend``, typing.Protocols, so a
backend needs no base class; mypy checks each shipped one where it is used, ``isinstance`` works at run time.

This module imports no media code (no Pillow, no numpy)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from qwenvl.errors import MalformedResponseError
from qwenvl.protocols.common import read_whole
from qwenvl.types import Response, StreamEvent

if TYPE_CHECKING:
    from qwenvl.plan import Call
    from qwenvl.protocols.common import StreamDriver
    from qwenvl.transport import AsyncLineStream, AsyncTransport, LineStream, Transport


def assembled(events: Iterator[StreamEvent]) -> Response:
    """The Response a stream ends with (its ``done`` event); the deltas are dropped.

    Raises MalformedResponseError when the stream ends without one (a backend that broke the contract)."""
    final = None
    for event in events:
        if event.type == "done":
            final = event.response
    if final is None:
        raise MalformedResponseError("the stream ended without a final response")
    return final


async def aassembled(events: AsyncIterator[StreamEvent]) -> Response:
    """``assembled`` for an async stream."""
    final = None
    async for event in events:
        if event.type == "done":
            final = event.response
    if final is None:
        raise MalformedResponseError("the stream ended without a final response")
    return final


@dataclass
class Started:
    """A stream read up to its first content: the events so far and, unless it has ended, the rest."""

    events: list[StreamEvent]
    driver: StreamDriver | None = None
    lines: Any = None  # the line iterator to go on with (sync or async); None when the stream has ended


Driver = Callable[["LineStream"], "StreamDriver"]  # the protocol's stream driver for an open reply
Whole = Callable[["LineStream", bytes], list[StreamEvent]]  # a reply read whole (``read_whole``) as events


def _start(stream: LineStream, driver: Driver, whole: Whole) -> Started:
    """Read a stream up to its first content: an error raised before that is the attempt's, and the transport
    retries it when its status is retried (``Transport.open_stream``)."""
    try:
        if read_whole(stream.content_type):
            return Started(whole(stream, stream.read()))
        drive = driver(stream)
        lines = iter(stream)
        for line in lines:
            events = drive.line(line)
            if events:
                return Started(events, drive, lines)
        return Started(drive.end())
    except MalformedResponseError as exc:  # the reply's status and request id, as for a whole reply
        stream.unreadable(exc)
        raise


async def _astart(stream: AsyncLineStream, driver: Driver, whole: Whole) -> Started:
    try:
        if read_whole(stream.content_type):
            return Started(whole(stream, await stream.aread()))
        drive = driver(stream)
        lines = stream.__aiter__()
        async for line in lines:
            events = drive.line(line)
            if events:
                return Started(events, drive, lines)
        return Started(drive.end())
    except MalformedResponseError as exc:  # the reply's status and request id, as for a whole reply
        stream.unreadable(exc)
        raise


def stream_events(
    transport: Transport, post: tuple[str, dict[str, Any], Any, dict[str, str]], driver: Driver, whole: Whole
) -> Iterator[StreamEvent]:
    """The events of one streamed call, the same for every HTTP backend (so a failure is the same error, and
    retried the same, whichever backend streams): ``post`` is the transport's (url, body, policy, headers),
    ``driver`` decodes the protocol, ``whole`` reads a reply that is not an event stream (``read_whole``)."""
    stream, started = transport.open_stream(*post, start=lambda s: _start(s, driver, whole))
    assert started is not None
    try:
        yield from started.events
        if started.lines is not None and started.driver is not None:
            yield from started.driver.run(started.lines)
    finally:
        stream.close()


async def astream_events(
    transport: AsyncTransport, post: tuple[str, dict[str, Any], Any, dict[str, str]], driver: Driver, whole: Whole
) -> AsyncGenerator[StreamEvent, None]:
    """``stream_events`` for the async backends."""
    stream, started = await transport.open_stream(*post, start=lambda s: _astart(s, driver, whole))
    assert started is not None
    try:
        for event in started.events:
            yield event
        if started.lines is not None and started.driver is not None:
            async with aclosing(started.driver.arun(started.lines)) as rest:
                async for event in rest:
                    yield event
    finally:
        await stream.aclose()


# What a backend takes as media (``qwenvl.plan.plan``): ``data-url`` (local media prepared and sent inline as
# ``data:`` URLs; the DashScope backend moves what does not fit to ``oss://`` temporary storage itself), or
# ``memory`` (an in-process model: prepared images stay decoded in ``PreparedItem.pixels``, no base64).
MediaForm = Literal["data-url", "memory"]

# The abilities a backend may declare (``Backend.abilities``).
ABILITIES = frozenset(
    {
        "images",  # image parts
        "video-frames",  # a video as a list of frames
        "video-file",  # a video file sent whole (video_as="file")
        "stream",  # incremental answers
        "tools",  # tool calls
        "json",  # JSON mode / a response schema
        "thinking",  # enable_thinking
    }
)


@runtime_checkable
class Backend(Protocol):
    """What ``qwenvl.Client`` needs of a backend (DashScope, openai and transformers ship; a custom one plugs in
    the same way: ``Client(backend=my_backend)``).

    ``name``: shown in errors and the client's repr. ``media_form``: see ``MediaForm``. ``abilities``: a subset
    of ``ABILITIES``. ``cache_key(call)``: the response cache's key for a call (what makes two calls the same
    answer: endpoint, model, body). ``stream`` yields text and reasoning deltas, then one ``done`` event with
    the whole Response. Optional planning hooks, used when present: ``adapt(request) -> Request`` (e.g. the
    model a server serves), ``model_info(name) -> ModelInfo``, ``preview_body(call, stream) -> (url, body)``,
    and ``protocol`` (the wire protocol's name, for the usage log; default ``openai``)."""

    name: str
    media_form: MediaForm
    abilities: frozenset[str]

    def cache_key(self, call: Call) -> str: ...

    def complete(self, call: Call) -> Response: ...

    def stream(self, call: Call) -> Iterator[StreamEvent]: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncBackend(Protocol):
    """``Backend`` for ``qwenvl.AsyncClient``: ``complete`` is awaited, ``stream`` is an async iterator,
    ``aclose`` replaces ``close``."""

    name: str
    media_form: MediaForm
    abilities: frozenset[str]

    def cache_key(self, call: Call) -> str: ...

    async def complete(self, call: Call) -> Response: ...

    def stream(self, call: Call) -> AsyncIterator[StreamEvent]: ...

    async def aclose(self) -> None: ...
