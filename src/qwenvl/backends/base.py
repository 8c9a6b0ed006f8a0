"""The small interface every backend implements (DashScope today; local models plug in here)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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


@runtime_checkable
class Backend(Protocol):
    name: str
    protocol: str  # the wire form media is prepared for ("compat" | "native")

    def complete(self, call: Call) -> Response: ...

    def stream(self, call: Call) -> Iterator[StreamEvent]:
        """Text and reasoning deltas, then one ``done`` event carrying the whole Response."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncBackend(Protocol):
    name: str
    protocol: str

    async def complete(self, call: Call) -> Response: ...

    def stream(self, call: Call) -> AsyncIterator[StreamEvent]: ...

    async def aclose(self) -> None: ...
