"""The one refusal of ``qwenvl serve``: an answer the server gives without asking the model (a bad key, a body over
the limit, an unknown file or job, too many requests at once). Raised by the chat routes (``app``) and the Batch
API (``batches``); each route turns it into the protocol's error body with ``status``, ``message`` and ``code``."""

from __future__ import annotations


class Refused(Exception):
    """An answer without the model: HTTP ``status``, a one-line ``message``, the service's ``code`` (None: the
    status's own) and extra response ``headers`` (``Retry-After`` on a 429)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
