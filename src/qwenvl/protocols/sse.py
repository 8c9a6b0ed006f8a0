"""Server-sent events: a small incremental decoder fed one line at a time (pure, no I/O).

DashScope's native streams add a non-standard ``status:`` field and a ``:HTTP_STATUS/200`` comment; both
are understood here (the comment is ignored like every comment).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def carries_data(line: str) -> bool:
    """Whether a line is a ``data`` field: progress on a stream. Comments (``: keep-alive``, DashScope's
    ``:HTTP_STATUS/200``), blank lines and the ``id``/``event``/``retry`` fields are not."""
    return line.startswith("data:") or line.rstrip("\r\n") == "data"


@dataclass
class SSEEvent:
    data: str = ""
    event: str | None = None
    id: str | None = None
    status: int | None = None


@dataclass
class SSEDecoder:
    _data: list[str] = field(default_factory=list)
    _event: str | None = None
    _id: str | None = None
    _status: int | None = None
    _dirty: bool = False

    def feed(self, line: str) -> SSEEvent | None:
        """Feed one line (without its newline); returns an event when a blank line completes one."""
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        self._dirty = True
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        elif name == "status":
            try:
                self._status = int(value.strip())
            except ValueError:
                self._status = None
        return None

    def flush(self) -> SSEEvent | None:
        """The pending event, if any (call at end of stream too: a last event may lack its blank line)."""
        if not self._dirty:
            return None
        event = SSEEvent("\n".join(self._data), self._event, self._id, self._status)
        self._data, self._event, self._id, self._status, self._dirty = [], None, None, None, False
        return event


def encode(data: Any, *, event_id: int | None = None, event: str | None = None, status: int | None = None) -> bytes:
    """One event as a server sends it: ``id:``, ``event:``, DashScope's ``:HTTP_STATUS/200`` comment, then ``data:``
    (a string as it is, anything else as JSON), ended by a blank line."""
    lines = []
    if event_id is not None:
        lines.append(f"id:{event_id}")
    if event:
        lines.append(f"event:{event}")
    if status is not None:
        lines.append(f":HTTP_STATUS/{status}")
        if event == "error":  # the dashscope SDK reads an error event's status from this field (else says 400)
            lines.append(f"status:{status}")
    lines.append("data:" + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)))
    return ("\n".join(lines) + "\n\n").encode()
