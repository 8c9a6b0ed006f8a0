"""qwenvl: visual understanding with Qwen-VL models, in DashScope (both protocols) or locally."""

__version__ = "0.1.0"

from qwenvl.client import AsyncClient, Client
from qwenvl.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    MalformedResponseError,
    MediaError,
    MissingAPIKeyError,
    NotFoundError,
    PermissionDeniedError,
    QwenVLError,
    RateLimitError,
    SchemaDefinitionError,
    StreamInterruptedError,
    StructuredOutputError,
    UsageError,
)
from qwenvl.models import ModelInfo, model_info
from qwenvl.plan import Call
from qwenvl.types import ImagePart, Message, Part, Request, Response, StreamEvent, TextPart, Usage, VideoPart

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
    "ImagePart",
    "InternalServerError",
    "MalformedResponseError",
    "MediaError",
    "Message",
    "MissingAPIKeyError",
    "ModelInfo",
    "NotFoundError",
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
    "Usage",
    "UsageError",
    "VideoPart",
    "__version__",
    "model_info",
]
