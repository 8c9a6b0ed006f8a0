"""What the tasks, the batch exchange, the CLI and the server need of a client, as small ``typing.Protocol``s.

``qwenvl.Client`` satisfies the synchronous ones and ``qwenvl.AsyncClient`` the asynchronous ones; a test double
(or any other object) does too when it has the same members, without subclassing anything. The module imports
nothing at run time beyond ``typing``: the types it names are imported for the type checker only.

- ``SupportsPlan``: plan a request (the ``plan_*`` task functions; sync or async client alike).
- ``SupportsComplete``: plan and send it, synchronously (``tasks.ground``, ``tasks.ocr``, ...).
- ``SupportsStream``: plan and stream it, synchronously (``qwenvl chat``).
- ``SupportsAsyncComplete``: plan, send and stream asynchronously, and close (``qwenvl serve``).
- ``SupportsPreview``: the dry run of a planned call (``--dry-run``).
- ``SupportsEstimate``: what ``qwenvl.estimate.estimate_files`` asks of a client.
- ``ClientEndpoint``: where a client's calls go (the cache key and the usage log, ``batch.exchange``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Protocol, Unpack, runtime_checkable

if TYPE_CHECKING:
    from qwenvl.config import Protocol as WireProtocol
    from qwenvl.models import ModelInfo
    from qwenvl.plan import Call
    from qwenvl.types import Request, RequestFields, Response, StreamEvent


@runtime_checkable
class SupportsPlan(Protocol):
    """A client that plans requests (``Client`` and ``AsyncClient``: their ``plan`` is synchronous in both)."""

    def plan(
        self,
        request: Request | dict[str, Any] | None = None,
        *,
        estimate_only: bool = False,
        **fields: Unpack[RequestFields],
    ) -> Call:
        """A validated, prepared call (nothing sent). Raises UsageError (invalid fields), MediaError (media)."""
        ...

    def resolve_model(self, name: str | None = None) -> ModelInfo:
        """The rules of the model a request would use (``name``, else the client's default)."""
        ...


@runtime_checkable
class SupportsComplete(SupportsPlan, Protocol):
    """A synchronous client that plans and sends (``qwenvl.Client``)."""

    def send(self, call: Call) -> Response:
        """Send a planned call. Raises APIError (service, network) and StructuredOutputError."""
        ...


@runtime_checkable
class SupportsStream(SupportsPlan, Protocol):
    """A synchronous client that plans and streams (``qwenvl.Client``)."""

    @property
    def region(self) -> str:
        """The region in force (``cn``, ``intl``, ``us``): it picks the currency of costs."""
        ...

    def send_stream(self, call: Call) -> Iterator[StreamEvent]:
        """Deltas, then one ``done`` event with the Response. Raises APIError, StreamInterruptedError."""
        ...


@runtime_checkable
class SupportsAsyncComplete(SupportsPlan, Protocol):
    """An asynchronous client that plans, sends, streams and closes (``qwenvl.AsyncClient``)."""

    @property
    def region(self) -> str:
        """The region in force (``cn``, ``intl``, ``us``): it picks the currency of costs."""
        ...

    async def send(self, call: Call) -> Response:
        """Send a planned call. Raises APIError (service, network) and StructuredOutputError."""
        ...

    def send_stream(self, call: Call) -> AsyncIterator[StreamEvent]:
        """Deltas, then one ``done`` event with the Response. Raises APIError, StreamInterruptedError."""
        ...

    async def aclose(self) -> None:
        """Close the backend's connections. Raises nothing."""
        ...


@runtime_checkable
class SupportsPreview(Protocol):
    """A client that shows what a planned call would send (``Client.preview``, ``AsyncClient.preview``)."""

    def preview(self, call: Call, *, stream: bool = False) -> dict[str, Any]:
        """The dry run of ``call``: endpoint, headers (key redacted), body and estimates. Sends nothing."""
        ...


@runtime_checkable
class ClientEndpoint(Protocol):
    """Where a client's calls go: its wire protocol, region and base URL (``None``: the region's default)."""

    @property
    def protocol(self) -> WireProtocol:
        """``compat``, ``native`` or ``openai``."""
        ...

    @property
    def region(self) -> str:
        """``cn``, ``intl`` or ``us``."""
        ...

    @property
    def base_url(self) -> str | None:
        """The endpoint's base URL, or None for the region's DashScope URL."""
        ...


@runtime_checkable
class SupportsEstimate(Protocol):
    """What ``qwenvl.estimate.estimate_files`` asks of a client (``Client`` and ``AsyncClient``)."""

    @property
    def region(self) -> str:
        """``cn``, ``intl`` or ``us``: the currency and prices of the estimate."""
        ...

    @property
    def is_local(self) -> bool:
        """True for a local model (no price): a backend other than DashScope, which gives its model's rules
        (``resolve_model``), or a server that says its model is local (``Client.served_model``)."""
        ...

    @property
    def backend(self) -> Any:
        """The backend (may have ``adapt(request) -> Request``, a local model's own budget)."""
        ...

    def request(self, request: Request | dict[str, Any] | None = None, **fields: Unpack[RequestFields]) -> Request:
        """A validated Request with the client's defaults. Raises UsageError."""
        ...

    def resolve_model(self, name: str | None = None) -> ModelInfo:
        """The rules of the model a request would use (``name``, else the client's default)."""
        ...
