"""Saved conversations: one JSON file per session under the user's data folder ($QWENVL_HOME overrides).

Media are kept as references (URLs, and local files as absolute paths), never as inline data: a session file
stays small, a resumed session re-reads (and re-prepares) its files, and it resumes from any folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from qwenvl import env as qenv
from qwenvl._constants import MAX_TEXT_FILE_BYTES
from qwenvl.errors import MediaError, UsageError, blank_error
from qwenvl.media.sources import classify, read_regular_text
from qwenvl.outputs import write_atomic
from qwenvl.types import ImagePart, Message, Role, VideoPart

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def home() -> Path:
    """qwenvl's data folder: $QWENVL_HOME, else the platform's user data folder."""
    return qenv.data_dir()


def sessions_dir() -> Path:
    return home() / "sessions"


class SessionFile(BaseModel):
    """The shape of a session file (what ``Session.save`` writes): an object with ``model`` (a string or null),
    ``created`` (seconds since the epoch) and ``messages`` (a list of ``Message`` objects: a known role, content
    a string or a list of parts); other keys (``name``, ``updated``) are ignored. pydantic.ValidationError for
    any other shape."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = None
    created: float | None = None
    messages: list[Message] = []


_ROLES: tuple[str, ...] = get_args(Role)
_JSON_TYPES = {
    bool: "true or false",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def message_fault(data: object) -> str | None:
    """What is wrong with the messages of a session file's JSON ``data``, as one phrase naming the message by its
    index (``messages[2] has no content``), or None when each message has a known ``role`` and a ``content``
    that is a string or a list (a user's not empty). A message with no content, or content null, would be sent
    as an empty turn (the model answers an empty question, or the service refuses the whole conversation).
    The parts of a list and every other field are ``SessionFile``'s to check. Raises nothing."""
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        return None  # not a list of messages at all: SessionFile says so
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            return f"{where} is {_JSON_TYPES.get(type(message), 'not an object')}, not a message object"
        role = message.get("role")
        if role is None:
            return f"{where} has no role ({', '.join(_ROLES)})"
        if role not in _ROLES:
            shown = repr(role) if isinstance(role, str) else json.dumps(role)
            return f"{where} has the unknown role {shown} (one of {', '.join(_ROLES)})"
        content = message.get("content")
        if content is None:
            return f"{where} ({role}) has no content" + (" (null)" if "content" in message else "")
        if not isinstance(content, str | list):
            kind = _JSON_TYPES.get(type(content), "of the wrong type")
            return f"{where} ({role}): its content is {kind}, not a string or a list of parts"
        if role == "user" and not (content.strip() if isinstance(content, str) else content):
            return f"{where} (user) has empty content"
        try:
            Message.model_validate(message)
        except ValidationError as exc:
            return f"{where} ({role}): {_first_fault(exc, content)}"
    return None


def _first_fault(exc: ValidationError, content: object) -> str:
    """The first of a message's validation errors, in words: a part of its content by index, or the field."""
    errors = exc.errors()
    if isinstance(content, list):  # not the union's other branch ("content.str: should be a valid string")
        errors = [e for e in errors if e["loc"][:1] != ("content",) or "str" not in e["loc"]] or errors
    err = errors[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("list[", "union[", "function-")))]
    if len(loc) >= 2 and loc[0] == "content" and isinstance(loc[1], int) and isinstance(content, list):
        part = json.dumps(content[loc[1]], ensure_ascii=False)
        part = part if len(part) <= 60 else part[:57] + "..."
        return f"content part {loc[1]} is not a text, image or video part: {part}"
    field = ".".join(str(p) for p in loc)
    return f"{field}: {err['msg']}" if field else err["msg"]


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
        """The saved session, or a new empty one. Raises UsageError for an invalid name or a damaged file,
        MediaError (CLI exit code 3) for a session file that cannot be read (a folder, a pipe, no
        permission)."""
        if isinstance(name, str) and not name.strip():
            raise blank_error("session", "the session name", required=True)
        if not _NAME.match(name):
            raise UsageError(
                f"invalid session name {name!r}: use letters, digits, '.', '_' or '-'",
                hint="Use a name such as my-chat_1.",
            )
        session = cls(name)
        if not session.path.exists():
            session._folder()  # a folder it cannot be saved in is said now, before anything is sent
            return session
        try:
            text = read_regular_text(session.path, error=UsageError, what="session file")
        except MediaError as exc:
            raise MediaError(exc.message, source=exc.source, hint="Move it away to start the session afresh.") from None
        damaged = f"session file {session.path} is damaged"
        hint = "Move it away to start the session afresh."
        try:
            data = json.loads(text)
        except ValueError as exc:  # not JSON
            raise UsageError(f"{damaged}: {exc}", hint=hint) from None
        fault = message_fault(data)
        if fault is not None:
            raise UsageError(f"{damaged}: {fault}", hint=hint)
        try:
            saved = SessionFile.model_validate(data)
        except ValidationError as exc:
            from qwenvl.client import describe_validation_error

            raise UsageError(describe_validation_error(exc, damaged), hint=hint) from None
        session.model = saved.model
        session.created = saved.created if saved.created is not None else session.created
        session.messages = saved.messages
        return session

    def _folder(self) -> None:
        """Make the sessions folder; UsageError (naming ``$QWENVL_HOME``) when it cannot be made or written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(self.path.parent, os.W_OK):
                raise PermissionError(f"no permission to write in {self.path.parent}")
        except OSError as exc:
            raise UsageError(
                f"cannot keep session {self.name!r} in {self.path.parent}: {exc.strerror or exc}",
                hint=f"Sessions are kept under ${qenv.HOME_ENV} (or the user data folder): point it at a folder "
                "you can write, or chat without --session.",
            ) from None

    def save(self) -> None:
        """Atomically: a crash leaves the previous version, never half a file. Raises UsageError when the
        sessions folder cannot be made or written (``$QWENVL_HOME``). A file over ``MAX_TEXT_FILE_BYTES`` (which
        ``load`` refuses) is still written, with a warning to start a new session."""
        self._folder()
        messages = [absolute_media(m) for m in self.messages]
        data = {
            "name": self.name,
            "model": self.model,
            "created": self.created,
            "updated": time.time(),
            "messages": [m.model_dump(mode="json", exclude_none=True) for m in messages],
        }
        text = json.dumps(data, ensure_ascii=False, indent=1)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a file name that is not UTF-8: its lone surrogates as \u escapes (read back so)
            text = json.dumps(data, ensure_ascii=True, indent=1)
        write_atomic(self.path, [text], mode=0o600)  # private chats
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_TEXT_FILE_BYTES:  # saved whole, but no session file this large is read back
            logging.getLogger("qwenvl").warning(
                "session %r is now %s bytes, over the %s a session file may be when it is read back: start a new "
                "session (media given as data: URLs are kept in it as given; files and URLs take a line)",
                self.name,
                f"{size:,}",
                f"{MAX_TEXT_FILE_BYTES:,}",
            )


def list_sessions() -> list[str]:
    folder = sessions_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http(s)://, oss://, file://, data:


def absolute_ref(ref: str) -> str:
    """A local path made absolute (against the current folder, ``~`` expanded); URLs and data: URLs as given."""
    if _SCHEME.match(ref) and not re.match(r"^[A-Za-z]:[\\/]", ref):  # (a Windows drive is a path)
        return ref
    return str(Path(ref).expanduser().absolute())


def _refs(part: ImagePart | VideoPart) -> list[str]:
    value = part.image if isinstance(part, ImagePart) else part.video
    return [value] if isinstance(value, str) else list(value)


def absolute_media(message: Message) -> Message:
    """The message with every local media path absolute."""
    if isinstance(message.content, str) or not message.media():
        return message
    parts = []
    for part in message.content:
        if isinstance(part, ImagePart):
            part = part.model_copy(update={"image": absolute_ref(part.image)})
        elif isinstance(part, VideoPart):
            video = part.video
            part = part.model_copy(
                update={"video": absolute_ref(video) if isinstance(video, str) else [absolute_ref(v) for v in video]}
            )
        parts.append(part)
    return message.model_copy(update={"content": parts})


def drop_unavailable_media(messages: list[Message]) -> tuple[list[Message], list[str]]:
    """(messages, what was dropped): the history without the media items that can no longer be sent (a file
    that has gone, moved or become unreadable), each turn kept with its text. Nothing is read but the file
    system's entries; one line per dropped item says why."""

    def gone(part: ImagePart | VideoPart) -> list[str]:
        problems = []
        for ref in _refs(part):
            try:
                classify(ref)
            except MediaError as exc:
                problems.append(exc.message)
        return problems[:1]

    return _without_media(messages, gone)


def drop_media(messages: list[Message], named: Callable[[str], bool]) -> tuple[list[Message], list[str]]:
    """(messages, the refs dropped): the history without the media items for which ``named(ref)`` is true (a file
    of an earlier turn that a turn could not send: changed or damaged since), each turn kept with its text."""
    dropped: list[str] = []

    def bad(part: ImagePart | VideoPart) -> list[str]:
        refs = _refs(part)
        return [ref for ref in refs if ref not in dropped] if any(named(ref) for ref in refs) else []

    out, said = _without_media(messages, bad)
    for ref in said:
        if ref not in dropped:
            dropped.append(ref)
    return out, dropped


def _without_media(
    messages: list[Message], why: Callable[[ImagePart | VideoPart], list[str]]
) -> tuple[list[Message], list[str]]:
    """(messages, reasons): each media item for which ``why`` gives reasons left out of its turn (the turn kept
    with its text), and every reason given."""
    out: list[Message] = []
    reasons: list[str] = []
    for message in messages:
        if isinstance(message.content, str) or not message.media():
            out.append(message)
            continue
        parts = []
        for part in message.content:
            if isinstance(part, ImagePart | VideoPart):
                said = why(part)
                if said:
                    reasons.extend(said)
                    continue
            parts.append(part)
        out.append(message.model_copy(update={"content": parts}))
    return out, reasons
