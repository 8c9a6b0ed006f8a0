"""A conversation about images and videos: the messages so far, the files for the next message, an optional
saved session and what the chat commands mean. ``qwenvl chat`` is this plus a terminal; a server or the
playground can hold one per user.

    conv = Conversation(qwenvl.Client(), session="trip")   # resumes the saved session "trip", if there is one
    conv.attach("beach.jpg")                                # checked now (MediaError), sent with the next message
    print(conv.send("What is here?").text)
    for event in conv.stream("And the colours?"):           # "reasoning"/"text" deltas, then "done"
        ...
    conv.command("reset")                                   # the /commands, without the terminal

A turn changes the conversation only when it is answered: an error, an interrupted stream or a stream closed
before its end (Ctrl-C in the chat) leave the messages as they were, and the attachments wait for a retry.
Attachments are checked when attached (``attach``: the same checks as sending, from the headers); one that
still fails when the turn prepares it (MediaError: changed or damaged since) is dropped (``dropped``), the
conversation and the other attachments kept. A named
session is saved after every answered turn (``qwenvl.sessions``: JSON, media as absolute paths), so it
resumes from any folder; files of earlier turns that have gone since are dropped before the next turn, each
turn kept with its text (``drop_unavailable`` says which, for the caller to tell the user).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import shlex
import threading
import weakref
from collections.abc import AsyncGenerator, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Never, cast

from qwenvl.batch.inputs import expand_globs
from qwenvl.errors import MediaError, OptionNotAppliedError, QwenVLError, UsageError
from qwenvl.media import images as media_images
from qwenvl.media.sources import (
    NotApplied,
    classify,
    media_kind,
    pages_not_applied,
    read_bytes,
    video_options_not_applied,
)
from qwenvl.plan import Call
from qwenvl.sessions import Session, drop_media, drop_unavailable_media
from qwenvl.spelling import nearest
from qwenvl.types import MediaInput, Message, Request, Response, StreamEvent, media_refs, not_blank

if TYPE_CHECKING:
    from qwenvl.client import AsyncClient, Client

# The commands, by the name typed after "/" (lower case); "quit" is "exit".
COMMANDS = ("image", "reset", "history", "help", "exit")
# A command is a first word like /reset: a line starting with a path such as /home/me/x.jpg is a message.
_COMMAND = re.compile(r"^/([A-Za-z][\w-]*)(?:\s+(.*))?$", re.DOTALL)

Outcome = Literal["end", "cleared", "history", "help", "attached", "needs-path", "not-attached", "unknown"]


def parse_command(line: str) -> tuple[str, str] | None:
    """``(name, argument)`` of a command line such as ``/image a.jpg`` (name in lower case, argument stripped),
    or None when the line is a message (``/usr/bin holds programs?`` is one: its first word is a path)."""
    match = _COMMAND.match(line.strip())
    if match is None:
        return None
    return match.group(1).lower(), (match.group(2) or "").strip()


def _for_media(
    fields: dict[str, Any],
    images: list[str],
    video: str | list[str] | None,
    earlier: list[Message] | None = None,
) -> dict[str, Any]:
    """The conversation's ``fields`` for a turn with these media: those that only some media read apply to the
    turns that have them (``pages`` to a turn with a PDF, ``fps`` and ``video_as`` to one with a video) and are
    left out of the others. ``earlier``: the conversation's messages so far, for a turn about to be sent (None: a
    check of attachments, which refuses nothing here). Such an option is refused (UsageError, nothing sent) when
    the turn sends media and neither they nor any earlier turn's are of the kind it applies to (or might be: a
    URL): it would have changed nothing the user sent, silently, as ``plan.check_media_options`` refuses it in a
    single request. A turn of text alone is never refused (it has nothing the option could apply to; a later turn
    may bring a PDF or a video), nor one after a turn that had such media (the option applied there). The CLI's
    chat refuses them at start when the files given at start do not take them (``cli.common.check_pages_apply``).
    """
    out = dict(fields)
    sent = bool(images) or video is not None
    earlier_images: list[str] = []
    earlier_video = False
    for message in earlier or []:
        for part in message.media():
            if hasattr(part, "video"):
                earlier_video = True
            else:
                earlier_images += _part_refs(part)
    if pages_not_applied(out.get("pages"), images) is not None:
        if earlier is not None and sent:
            refusal = pages_not_applied(out.get("pages"), earlier_images)
            if refusal is not None:
                raise _not_applied(refusal)
        del out["pages"]
    if video is None:
        given = [
            n for n, v in (("fps", out.get("fps")), ("video_as", out.get("video_as") not in (None, "frames"))) if v
        ]
        if given and earlier is not None and sent and not earlier_video:
            refusal = video_options_not_applied(given, [*images, *earlier_images])
            if refusal is not None:
                raise _not_applied(refusal)
        out.pop("fps", None)
        out.pop("video_as", None)
    return out


def _not_applied(refusal: NotApplied) -> OptionNotAppliedError:
    """The refusal (``media.sources.not_applied``, the one rule) of an option set for the conversation, on a turn
    whose media, like every earlier turn's, do not read it (written in flags, as every message: ``QwenVLError.message``
    is in the library's words)."""
    flag = "--" + refusal.field.replace("_", "-")
    return refusal.named(flag).error(
        f"{flag} (set for the conversation) applies to {refusal.media} only, and no file of this conversation so far "
        f"is {refusal.medium}: nothing was sent",
        hint=f"Leave {flag} out, or give it only with {refusal.medium}.",
    )


def image_refs(arg: str) -> list[str]:
    """The references after /image: shell-like words, so quoted or escaped names with spaces work (an
    unbalanced quote makes the rest of the line one name)."""
    try:
        words = shlex.split(arg)
    except ValueError:
        words = [arg.strip().strip("'\"")]
    return [w for w in words if w]


@dataclass
class CommandResult:
    """What a command did (nothing is ever sent to the model). ``outcome``: ``end`` (/exit, /quit), ``cleared``
    (/reset), ``history`` (/history: ``messages``), ``help`` (/help: ``COMMANDS``), ``attached`` (/image:
    ``attached`` refs, ``pending`` files now waiting for the next message), ``needs-path`` (/image without
    one), ``not-attached`` (/image refused: ``error``, nothing attached), ``unknown`` (no such command)."""

    name: str
    outcome: Outcome
    attached: list[str] = field(default_factory=list)
    pending: int = 0
    messages: list[Message] = field(default_factory=list)
    error: QwenVLError | None = None

    @property
    def end(self) -> bool:
        """True when the chat should end."""
        return self.outcome == "end"


# The request fields each turn sets itself (``Conversation.plan``), with what to do instead of giving one
_TURN_FIELDS = {
    "prompt": 'The prompt is given per turn: conversation.send("...").',
    "messages": "The conversation keeps its messages itself; resume one with session=.",
    "images": "Images are given per turn: conversation.attach(...) before send().",
    "video": "A video is given per turn: conversation.attach(...) before send().",
}


def _turn_field(given: Mapping[str, Any], turn: bool) -> None:
    """UsageError naming the first field of ``given`` (the conversation's ``fields``, or a turn's keyword arguments:
    ``turn``) that each turn sets itself (``_TURN_FIELDS``); nothing when there is none."""
    name = next((n for n in _TURN_FIELDS if n in given), None)
    if name is not None:
        said = f"a turn takes no keyword {name!r}" if turn else f"fields has {name!r}"
        raise UsageError(f"{said}: each turn sets {name} itself", hint=_TURN_FIELDS[name])


class Conversation:
    """One conversation through ``client`` (a ``qwenvl.Client`` for ``send``/``stream``, an
    ``AsyncClient`` for ``aattach``/``asend``/``astream``).

    ``session``: a name (loaded with ``Session.load``, created at the first answered turn; UsageError for an
    invalid name or a damaged file), a ``Session``, or None for a conversation that is not saved.
    ``fields``: request fields for every turn (``Request``'s: ``model``, ``max_tokens``, ``enable_thinking``...; a
    turn's own keyword arguments override them); without a ``model``, a resumed session's model is used.
    One turn at a time: a conversation is one line of messages (a server keeps one per user); a turn begun while
    another is in progress (``send``, ``stream``, ``asend``, ``astream`` from another thread or task) is refused
    with UsageError before it is sent.
    ``last_response``: the answer of the last turn the conversation took (None before the first): a turn is taken
    when its answer is complete (``send``; ``stream``'s ``done`` event, before it is yielded), so an interrupt after
    that (a Ctrl-C while the answer is still being shown) leaves it in the conversation, as it was paid.

    Raises UsageError for a ``client`` without ``plan``, ``send`` and ``send_stream``, a ``session`` or ``fields``
    of another type, ``fields`` (or a turn's keyword arguments) with a field each turn sets itself (``prompt``,
    ``messages``, ``images``, ``video``: ``_TURN_FIELDS``); ``send``/``stream`` raise it
    for an AsyncClient's conversation, ``asend``/``astream`` for a Client's.
    """

    def __init__(
        self,
        client: Client | AsyncClient,
        *,
        session: str | Session | None = None,
        fields: dict[str, Any] | None = None,
        **unknown: Never,  # none is taken: a request field goes in ``fields`` (UsageError saying so)
    ) -> None:
        if unknown:  # Conversation(client, max_tokens=300): not a raw TypeError
            name = next(iter(unknown))
            near = nearest(name, Request.model_fields)
            raise UsageError(
                f"Conversation() takes no keyword {name!r}",
                hint=f'Request fields go in fields={{"{near}": ...}}.'
                if near is not None
                else "The keywords: session, fields (a dict of request fields).",
            )
        missing = [m for m in ("plan", "send", "send_stream") if not callable(getattr(client, m, None))]
        if missing:  # refused now, not as an AttributeError of the first turn
            raise UsageError(
                f"a Conversation talks through a qwenvl.Client or AsyncClient, not {type(client).__name__} "
                f"(it has no {', '.join(missing)})",
                hint="Conversation(qwenvl.Client(), ...), or an AsyncClient for asend/astream.",
            )
        if not isinstance(session, str | Session | None):
            raise UsageError(
                f"session is a name, a qwenvl.sessions.Session or None, not {type(session).__name__}",
                hint='Give session="trip" (saved under that name), or leave it out.',
            )
        if not isinstance(fields, dict | None):
            raise UsageError(
                f"fields is a dict of request fields, not {type(fields).__name__}",
                hint='Give fields={"model": "qwen3-vl-flash", "max_tokens": 300}, or leave it out.',
            )
        _turn_field(fields or {}, turn=False)
        self.client = client
        self._async = inspect.iscoroutinefunction(client.send)  # an AsyncClient: asend/astream, not send/stream
        self._turn_lock = threading.Lock()  # guards ``_turn``
        self._turn: object | None = None  # the token of the turn in progress (``_one_turn``): one at a time
        self.session = Session.load(session) if isinstance(session, str) else session
        self.fields = dict(fields or {})
        if self.session is not None and self.session.model and not self.fields.get("model"):
            self.fields["model"] = self.session.model
        self.messages: list[Message] = list(self.session.messages) if self.session is not None else []
        self.images: list[str] = []
        self.video: str | list[str] | None = None
        self.dropped: list[str] = []  # the attachments the last failed turn dropped (a MediaError)
        self.last_response: Response | None = None

    def __repr__(self) -> str:
        name = self.session.name if self.session is not None else None
        return f"Conversation(session={name!r}, messages={len(self.messages)}, pending={self.pending})"

    # --- attachments and history --------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """How many files wait for the next message."""
        return len(self.images) + (self.video is not None)

    def attach(self, *refs: MediaInput) -> None:
        """Files or URLs for the next message, checked now as sending would check them (``check``): MediaError
        for one that is missing, unreadable, not an image or video, too small or large, animated...; UsageError
        for a second video in one message or a file the model cannot take. Nothing of ``refs`` is attached when
        one fails; the files attached before stay. ``refs``: paths (``str`` or ``os.PathLike``), URLs, or images as
        bytes or PIL images (sent as ``data:`` URLs); a blank one is a UsageError."""
        from qwenvl.media.sources import split_media

        images, video = split_media([not_blank(media_refs(ref), "image", required=True) for ref in refs])
        if video is not None and self.video is not None:
            raise UsageError(
                "one video per message: this one already has " + str(self.video),
                hint="Send the other video in a message of its own.",
            )
        self.check(images, video)
        self.images += images
        self.video = video if video is not None else self.video

    async def aattach(self, *refs: MediaInput) -> None:
        """``attach`` for async code (an ``AsyncClient``): the check reads file headers, and a local backend may
        ask its server, so it runs in a worker thread and the event loop goes on meanwhile. Raises as
        ``attach``."""
        await asyncio.to_thread(self.attach, *refs)

    def check(self, images: list[str], video: str | list[str] | None = None) -> None:
        """Check media as the next turn will prepare them, from their headers (the client's estimate-only
        planning, ``qwenvl.media.prepare``: format, sides, aspect ratio, pixel and size limits, the model's
        rules), and a local image's data for completeness (``images.verify``: a file cut short), nothing sent.
        Raises MediaError, UsageError; for a local backend, APIError when its server must be asked about the
        model. Not found here: damage inside complete pixel data, which only a decode finds."""
        request = {k: v for k, v in self.fields.items() if k not in ("prompt", "messages", "image", "images")}
        request = _for_media(request, images, video)
        self.client.plan(prompt="check", images=images, video=video, estimate_only=True, **request)
        for ref in images:
            source = classify(ref)
            if source.is_remote or media_kind(source) != "image":  # a URL, a PDF: checked when sent
                continue
            data = read_bytes(source)
            info = media_images.identify(data, source.label)
            media_images.verify(data, info, source.label)

    def reset(self) -> None:
        """Forget the messages and the attachments (a saved session keeps its file until the next turn)."""
        self.messages, self.images, self.video = [], [], None

    def drop_unavailable(self) -> list[str]:
        """Drop the files of earlier turns that can no longer be sent (gone, moved, unreadable), keeping each
        turn's text; one line per dropped file says why (empty: nothing was dropped)."""
        self.messages, gone = drop_unavailable_media(self.messages)
        return gone

    # --- commands -------------------------------------------------------------------------------------------
    def command(self, name: str, arg: str = "") -> CommandResult:
        """Run a command by name, with or without its slash (``"reset"``, ``"/reset"``; ``"/image a.jpg"``, a
        whole typed line, is read by ``parse_command``). ``/image``'s quoted globs are expanded as every verb
        expands them (``batch.inputs.expand_globs``: ``/image "photos/*.png"``). Never sends anything."""
        parsed = parse_command(name) if name.lstrip().startswith("/") and not arg else None
        if parsed is not None:
            name, arg = parsed
        name = name.strip().lower().removeprefix("/")
        if name in ("exit", "quit"):
            return CommandResult(name, "end")
        if name == "reset":
            self.reset()
            return CommandResult(name, "cleared")
        if name == "history":
            return CommandResult(name, "history", messages=list(self.messages))
        if name == "help":
            return CommandResult(name, "help")
        if name == "image":
            refs = image_refs(arg)
            if not refs:
                return CommandResult(name, "needs-path")
            try:
                refs = expand_globs(refs)  # "photos/*.png", as every verb expands a quoted glob
                self.attach(*refs)
            except QwenVLError as exc:
                return CommandResult(name, "not-attached", error=exc, pending=self.pending)
            return CommandResult(name, "attached", attached=refs, pending=self.pending)
        return CommandResult(name, "unknown")

    # --- turns ------------------------------------------------------------------------------------------------
    def plan(self, text: str, **fields: Any) -> Call:
        """The next turn, planned (nothing sent): ``text`` with the attachments, after the messages so far.
        MediaError drops the bad attachments (``dropped``; the conversation and the others are kept) and is
        raised; UsageError for bad fields."""
        _turn_field(self.fields, turn=False)  # fields changed since (a dict of the caller's, an attribute)
        _turn_field(fields, turn=True)
        self.dropped = []
        self.drop_unavailable()
        common = {k: v for k, v in self.fields.items() if k not in fields}  # a turn's own fields as given, over them
        request = {**_for_media(common, self.images, self.video, self.messages), **fields}
        with self._media_checked():
            return self.client.plan(
                prompt=text, images=self.images, video=self.video, messages=self.messages, **request
            )

    @contextlib.contextmanager
    def _media_checked(self) -> Iterator[None]:
        """A MediaError in a turn (preparing, uploading: a file changed or damaged since it was attached) drops
        the attachments that fail ``check`` now or that the error names, the others wait for a retry (all are
        dropped when none can be told apart): a retry must not resend a bad file. ``dropped`` lists them."""
        try:
            yield
        except MediaError as exc:
            self.dropped = self._bad_attachments(exc)
            self.images = [ref for ref in self.images if ref not in self.dropped]
            if self.video is not None and _refs_of(self.video)[0] in self.dropped:
                self.video = None
            source = exc.source  # a file of an earlier turn (changed or damaged since): its turn kept without it
            self.messages, earlier = drop_media(self.messages, lambda ref: _names(source, ref))
            self.dropped += [ref for ref in earlier if ref not in self.dropped]
            raise

    def _bad_attachments(self, exc: MediaError) -> list[str]:
        pending = [*self.images, *([_refs_of(self.video)[0]] if self.video is not None else [])]
        bad = []
        for ref in pending:
            try:
                self.check([ref]) if ref in self.images else self.check([], self.video)
            except QwenVLError:
                bad.append(ref)
        if not bad and exc.source:
            bad = [ref for ref in pending if _names(exc.source, ref)]
        if not bad and any(
            _names(exc.source, ref) for m in self.messages for part in m.media() for ref in _part_refs(part)
        ):
            return []  # an earlier turn's file: ``_media_checked`` drops it from the history
        return bad or pending

    @contextlib.contextmanager
    def _one_turn(self, held: list[object] | None = None) -> Iterator[None]:
        """The turn in progress: a second one begun meanwhile (another thread, another task, a stream not yet
        read to its end, closed or let go) is refused with UsageError before anything of it is planned or sent,
        as each turn replaces ``messages`` with its own answer's history and one of the two paid answers would be
        lost. Never waits. ``held``: a stream's holder, given its turn's token (``_ended`` ends the turn when the
        stream is let go)."""
        token = object()
        with self._turn_lock:
            if self._turn is not None:
                raise UsageError(
                    "this conversation has a turn in progress: one turn at a time (nothing of this one was sent)",
                    hint="Wait for the answer (or read its stream to the end, or close it) before the next message; "
                    "give each thread or task its own Conversation for parallel questions.",
                )
            self._turn = token
        if held is not None:
            held.append(token)
        try:
            yield
        finally:
            self._ended(held or [token])

    def _ended(self, held: list[object]) -> None:
        """End the turn whose token ``held`` holds, if it is still the one in progress (a later turn's stays)."""
        with self._turn_lock:
            if held and self._turn is held[0]:
                self._turn = None

    def _let_go(self, events: Any, held: list[object]) -> None:
        """End a stream's turn as soon as its reader lets it go (``break`` out of the loop, the last reference
        dropped): at once, not when its finaliser runs (an async generator's is only scheduled by the event
        loop, a moment later, so the next ``asend`` would find the turn still in progress). The turn ends with
        the conversation as the stream left it (its answer taken if ``done`` came); the stream's own close (its
        connection, its ``cancelled`` usage row) follows in its finaliser. Safe: a stream being read is never let
        go."""
        weakref.finalize(events, self._ended, held)

    def _kind(self, asynchronous: bool) -> Client | AsyncClient:
        """The client, or UsageError when a turn's method does not fit it: ``send``/``stream`` with an AsyncClient
        (their coroutines would never be awaited), ``asend``/``astream`` with a Client."""
        if asynchronous == self._async:
            return self.client
        name = type(self.client).__name__
        use = "await conv.asend(...) / conv.astream(...)" if self._async else "conv.send(...) / conv.stream(...)"
        raise UsageError(
            f"this Conversation talks through {'an' if name[0] in 'AEIOU' else 'a'} {name}: use {use}",
            hint="send/stream take a qwenvl.Client; asend/astream an AsyncClient.",
        )

    def send(self, text: str, **fields: Any) -> Response:
        """One turn, answered whole (a ``Client``). The errors are the client's (``qwenvl.errors``)."""
        client = cast("Client", self._kind(False))
        with self._one_turn():
            call = self.plan(text, **fields)
            with self._media_checked():
                response = client.send(call)
            return self._answered(call, response)

    def stream(self, text: str, **fields: Any) -> Generator[StreamEvent, None, None]:
        """One turn, streamed (a ``Client``): the client's events; the conversation takes the answer when the
        ``done`` event comes (before it is yielded). Stopping early (``break``, or ``.close()``; ``with
        contextlib.closing(conv.stream(...)) as events:``) ends the turn at once: the connection closed, the
        conversation as it was (or with the answer, after ``done``), the next turn may begin. A generator kept
        unread and unclosed holds the turn."""
        held: list[object] = []
        events = self._stream(held, text, fields)
        self._let_go(events, held)
        return events

    def _stream(self, held: list[object], text: str, fields: dict[str, Any]) -> Generator[StreamEvent, None, None]:
        client = cast("Client", self._kind(False))
        with self._one_turn(held):
            call = self.plan(text, **fields)
            events = client.send_stream(call)
            try:
                with self._media_checked():
                    for event in events:
                        if event.type == "done" and event.response is not None:
                            self._answered(call, event.response)
                        yield event
            finally:
                close = getattr(events, "close", None)  # the connection goes with the stream
                if close is not None:
                    close()

    async def asend(self, text: str, **fields: Any) -> Response:
        """``send`` through an ``AsyncClient`` (planning and saving in a worker thread)."""
        client = cast("AsyncClient", self._kind(True))
        with self._one_turn():
            call = await asyncio.to_thread(self.plan, text, **fields)
            with self._media_checked():
                response = await client.send(call)
            return await asyncio.to_thread(self._answered, call, response)

    def astream(self, text: str, **fields: Any) -> AsyncGenerator[StreamEvent, None]:
        """``stream`` through an ``AsyncClient``: an async generator. ``break`` ends the turn at once (the next
        ``asend`` may follow at once), the conversation as ``stream`` leaves it; its connection is closed by the
        event loop's finaliser a moment later, or at once with ``async with contextlib.aclosing(conv.astream(...))
        as events:`` (or ``await events.aclose()``)."""
        held: list[object] = []
        events = self._astream(held, text, fields)
        self._let_go(events, held)
        return events

    async def _astream(
        self, held: list[object], text: str, fields: dict[str, Any]
    ) -> AsyncGenerator[StreamEvent, None]:
        client = cast("AsyncClient", self._kind(True))
        with self._one_turn(held):
            call = await asyncio.to_thread(self.plan, text, **fields)
            events = client.send_stream(call)
            try:
                with self._media_checked():
                    async for event in events:
                        if event.type == "done" and event.response is not None:
                            await asyncio.to_thread(self._answered, call, event.response)
                        yield event
            finally:
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    await aclose()

    def _answered(self, call: Call, response: Response) -> Response:
        """The turn is in: attachments used, messages from the answer (which holds the whole history), the
        session saved (atomically) when there is one."""
        self.images, self.video = [], None
        self.messages = list(response.messages)
        self.last_response = response
        if self.session is not None:
            self.session.messages = self.messages
            self.session.model = call.request.model
            self.session.save()
        return response


def _refs_of(media: str | list[str]) -> list[str]:
    return [media] if isinstance(media, str) else list(media)


def _names(source: str | None, ref: str) -> bool:
    """Whether a MediaError's ``source`` names the media reference ``ref`` (as given, labelled, or by file name)."""
    return bool(source) and (source in (ref, _label(ref)) or Path(str(source)).name == Path(ref).name)


def _part_refs(part: Any) -> list[str]:
    value = part.image if hasattr(part, "image") else part.video
    return [value] if isinstance(value, str) else list(value)


def _label(ref: str) -> str:
    try:
        return classify(ref).label
    except QwenVLError:
        return ref
