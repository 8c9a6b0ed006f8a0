"""The small interface every backend implements: ``Backend`` (sync) and ``AsyncBackend``, typing.Protocols, so a
backend needs no base class; mypy checks each shipped one where it is used, ``isinstance`` works at run time.

This module imports no media code (no Pillow, no numpy)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from qwenvl.errors import MalformedResponseError
from qwenvl.types import Response, StreamEvent

if TYPE_CHECKING:
    from qwenvl.plan import Call


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
