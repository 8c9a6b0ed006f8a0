"""The small interface every backend implements (DashScope today; local models plug in here)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Protocol, runtime_checkable

from qwenvl.plan import Call
from qwenvl.types import Response, StreamEvent


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
