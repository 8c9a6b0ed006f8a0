"""The wire-protocol interface: what the backends, the dry run and the server ask of a protocol.

A protocol is a module of pure functions (``compat``, ``native``, ``openai``) and one object that bundles them
(``compat.WIRE``...), registered by name in ``qwenvl.protocols`` (``get(name)``, ``names()``). Callers hold the
object and call it; none of them asks which protocol it is.

Why a ``typing.Protocol`` and not an ABC or a dataclass of functions: the three protocols share no code path
that a base class would hold (what they share lives in ``common.py`` as plain functions), their methods differ
in optional keywords (``openai.build_body`` takes an engine), and a structural interface lets mypy check each
object where it is registered (``dict[str, WireProtocol]``) while a protocol defined elsewhere (a test's, a
plug-in's) registers without importing a base class. ``runtime_checkable`` gives an ``isinstance`` check too.

This module imports no media code (no Pillow, no numpy), nor does any protocol module at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from qwenvl.plan import Call
    from qwenvl.protocols.common import StreamAccumulator
    from qwenvl.protocols.inbound import Inbound, StreamState
    from qwenvl.protocols.sse import SSEEvent
    from qwenvl.types import Response, StreamEvent


class StreamParser(Protocol):
    """One stream's SSE events -> deltas, then the whole Response (``qwenvl.protocols.common.StreamDriver``
    feeds it). ``acc`` keeps what arrived, so a broken stream can say how much did."""

    acc: StreamAccumulator

    def feed(self, event: SSEEvent) -> list[StreamEvent]:
        """The deltas in one event; raises the typed service error for an error event."""
        ...

    def finish(self) -> Response:
        """The assembled Response; raises StreamInterruptedError when the stream ended before the answer did."""
        ...


class StreamParserFactory(Protocol):
    """A StreamParser class: ``parser = factory(model, request_id)``."""

    def __call__(self, model: str, request_id: str | None = None) -> StreamParser: ...


@runtime_checkable
class ServerSide(Protocol):
    """The protocol in reverse, for ``qwenvl serve``: wire body -> Inbound, Response -> wire body, stream
    events -> SSE chunks (bytes, framed as the service frames them), error -> error body. Pure. ``name``: the
    protocol it speaks (``compat`` or ``native``), whose field names its error messages use
    (``qwenvl.wording.api_surface``)."""

    name: str

    def parse_body(self, body: Any, headers: Mapping[str, str]) -> Inbound:
        """A request body (and its headers: native streams are asked for by one) -> Inbound.
        Raises UsageError for a malformed body."""
        ...

    def response_body(self, parsed: Inbound, response: Response, request_id: str) -> dict[str, Any]:
        """The non-streamed reply."""
        ...

    def error_body(
        self,
        status: int,
        message: str,
        *,
        request_id: str,
        code: str | None = None,
        param: str | None = None,
        hint: str | None = None,
    ) -> dict[str, Any]:
        """The service's error envelope for an HTTP ``status`` (``code``: the upstream's own, when it sent one;
        ``hint``: the server's advice, ``qwenvl.protocols.common.HINT_FIELD``)."""
        ...

    def stream_open(self, state: StreamState) -> list[bytes]:
        """Chunks sent before the first delta."""
        ...

    def stream_delta(self, state: StreamState, event: StreamEvent) -> list[bytes]:
        """The chunks of one text or reasoning delta (``state`` already holds it)."""
        ...

    def stream_done(self, state: StreamState, response: Response) -> list[bytes]:
        """The closing chunks of a stream that ended with ``response``."""
        ...

    def stream_error(self, state: StreamState, status: int, body: dict[str, Any]) -> list[bytes]:
        """An error inside a stream (``body`` from ``error_body``)."""
        ...


@runtime_checkable
class WireProtocol(Protocol):
    """One wire protocol. ``endpoint`` is the path appended to the base URL (``/chat/completions``).
    ``oss_references``: whether ``oss://`` references (DashScope temporary storage) may be sent.
    ``server``: the reverse direction, or None where ``qwenvl serve`` does not speak the protocol."""

    name: str
    endpoint: str
    oss_references: bool
    stream_parser: StreamParserFactory
    server: ServerSide | None

    def headers(self, call: Call, *, stream: bool) -> dict[str, str]:
        """The protocol's own request headers (Accept, and e.g. native's SSE and OSS headers); the transport
        adds authorization and content type."""
        ...

    def build_body(self, call: Call, *, stream: bool) -> dict[str, Any]:
        """The request body of a planned call."""
        ...

    def parse_response(self, data: Any, *, model: str, request_id: str | None = None) -> Response:
        """A non-streamed reply -> Response. Raises the typed service error for an error body and
        MalformedResponseError for a reply it cannot read."""
        ...
