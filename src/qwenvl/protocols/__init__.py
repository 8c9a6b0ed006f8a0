"""Wire protocols: a Call in, a body dict out; a body or SSE event in, a Response or deltas out. No I/O.

The registry: ``get(name)`` gives the ``WireProtocol`` (``qwenvl.protocols.base``) registered under ``name``
(``compat``, ``native``, ``openai``), ``names()`` lists them. Everything that depends on the protocol calls the
object it gets here; nothing tests a protocol's name.
"""

from __future__ import annotations

from qwenvl.errors import UsageError
from qwenvl.protocols import compat, native, openai
from qwenvl.protocols.base import WireProtocol
from qwenvl.spelling import meant

# mypy checks each object against WireProtocol here
_REGISTRY: dict[str, WireProtocol] = {"compat": compat.WIRE, "native": native.WIRE, "openai": openai.WIRE}


def get(name: str) -> WireProtocol:
    """The protocol registered as ``name``. Raises UsageError for a name that is not registered."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown protocol {name!r}: use {', '.join(names())}{meant(name, names())}",
            hint="Use --protocol compat, native or openai.",
        ) from None


def names() -> tuple[str, ...]:
    """The registered protocols' names, in registration order."""
    return tuple(_REGISTRY)


def register(protocol: WireProtocol) -> None:
    """Register (or replace) a protocol under its ``name``."""
    _REGISTRY[protocol.name] = protocol


__all__ = ["WireProtocol", "get", "names", "register"]
