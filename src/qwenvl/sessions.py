"""Saved conversations: one JSON file per session under the user's data folder ($QWENVL_HOME overrides).

Media are kept as the references the user gave (paths, URLs), never as inline data: a session file stays
small, and a resumed session re-reads (and re-prepares) its files.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs
from pydantic import ValidationError

from qwenvl.errors import UsageError
from qwenvl.media.sources import read_regular_text
from qwenvl.types import Message

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def home() -> Path:
    """qwenvl's data folder: $QWENVL_HOME, else the platform's user data folder."""
    env = os.environ.get("QWENVL_HOME")
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir("qwenvl", appauthor=False))


def sessions_dir() -> Path:
    return home() / "sessions"


@dataclass
class Session:
    name: str
    model: str | None = None
    messages: list[Message] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def path(self) -> Path:
        return sessions_dir() / f"{self.name}.json"

    @classmethod
    def load(cls, name: str) -> Session:
        """The saved session, or a new empty one."""
        if not _NAME.match(name):
            raise UsageError(f"invalid session name {name!r}: use letters, digits, '.', '_' or '-'")
        session = cls(name)
        if not session.path.exists():
            return session
        try:
            data = json.loads(read_regular_text(session.path, error=UsageError, what="session file"))
            session.model = data.get("model")
            session.created = float(data.get("created", session.created))
            session.messages = [Message.model_validate(m) for m in data.get("messages", [])]
        except (OSError, ValueError, ValidationError) as exc:
            raise UsageError(f"session file {session.path} is damaged: {exc}",
                             hint="Move it away to start the session afresh.") from None
        return session

    def save(self) -> None:
        """Atomically: a crash leaves the previous version, never half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"name": self.name, "model": self.model, "created": self.created, "updated": time.time(),
                "messages": [m.model_dump(mode="json", exclude_none=True) for m in self.messages]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, ensure_ascii=False, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def list_sessions() -> list[str]:
    folder = sessions_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
