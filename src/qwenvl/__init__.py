"""qwenvl: visual understanding with Qwen-VL models, in DashScope (both protocols) or locally."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from qwenvl.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    InternalServerError,
    MalformedResponseError,
    MediaError,
    MissingAPIKeyError,
    ModelNotFoundError,
    NotFoundError,
    OptionNotAppliedError,
    PermissionDeniedError,
    QwenVLError,
    RateLimitError,
    SchemaDefinitionError,
    StreamInterruptedError,
    StructuredOutputError,
    UnsupportedParameterError,
    UsageError,
)
from qwenvl.models import ModelInfo, model_info
from qwenvl.types import ImagePart, Message, Part, Request, Response, StreamEvent, TextPart, Usage, VideoPart

if TYPE_CHECKING:
    from qwenvl.client import AsyncClient, Client
    from qwenvl.plan import Call

# Names imported on first use: the client pulls in the media pipeline (Pillow, numpy), which the interface
# modules (qwenvl.backends.base, qwenvl.protocols) must not (tests/test_seams.py).
_LAZY = {"Client": "qwenvl.client", "AsyncClient": "qwenvl.client", "Call": "qwenvl.plan"}


if not TYPE_CHECKING:  # a type checker sees the imports above, and an unknown name (``qwenvl.Clinet``) as an error

    def __getattr__(name: str) -> Any:
        if name in _LAZY:
            import importlib

            value = getattr(importlib.import_module(_LAZY[name]), name)
            globals()[name] = value
            return value
        raise AttributeError(f"module 'qwenvl' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (``__all__``, the lazy ones included) and the submodules: not the helpers this file
    imports for itself (``Any``, ``TYPE_CHECKING``) nor private modules."""
    import pkgutil

    return sorted({*__all__, *(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))})


__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Call",
    "Client",
    "ClientClosedError",
    "ImagePart",
    "InternalServerError",
    "MalformedResponseError",
    "MediaError",
    "Message",
    "MissingAPIKeyError",
    "ModelInfo",
    "ModelNotFoundError",
    "NotFoundError",
    "OptionNotAppliedError",
    "Part",
    "PermissionDeniedError",
    "QwenVLError",
    "RateLimitError",
    "Request",
    "Response",
    "SchemaDefinitionError",
    "StreamEvent",
    "StreamInterruptedError",
    "StructuredOutputError",
    "TextPart",
    "UnsupportedParameterError",
    "Usage",
    "UsageError",
    "VideoPart",
    "__version__",
    "model_info",
]
