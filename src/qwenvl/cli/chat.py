"""`qwenvl chat [IMAGE...]`: an interactive conversation about images, optionally saved as a session."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape

from qwenvl.cli.common import (
    STDIN,
    err_console,
    generation_options,
    make_client,
    media_args,
    pass_opts,
    report,
    request_fields,
    service_options,
    split_media,
    usage_line,
)
from qwenvl.cli.render import stream_to_terminal
from qwenvl.cli.tasks_common import warn
from qwenvl.errors import APIError, MediaError, StreamInterruptedError, UsageError
from qwenvl.interfaces import SupportsStream
from qwenvl.sessions import Session, drop_unavailable_media, home, list_sessions
from qwenvl.types import Message

COMMANDS = (
    ("/image PATH", "attach a file or URL to your next message (checked at once; several allowed)"),
    ("/reset", "forget the conversation"),
    ("/history", "show the conversation so far"),
    ("/help", "this list"),
    ("/exit", "end the chat (or Ctrl-D; Ctrl-C cancels an answer, and at the prompt ends the chat)"),
)
WELCOME = "Type a message, or /help for the commands. Ctrl-D ends the chat."
# A command is a first word like /reset: a line starting with a path such as /home/me/x.jpg is a message.
_COMMAND = re.compile(r"^/([A-Za-z][\w-]*)(?:\s+(.*))?$", re.DOTALL)


def _lines(prompt: str) -> Iterator[str]:
    """Input lines: with line editing and history on a terminal, plain lines otherwise. Ends on Ctrl-D (end of
    input) and on Ctrl-C at the prompt."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        home().mkdir(parents=True, exist_ok=True)
        session: PromptSession[str] = PromptSession(history=FileHistory(str(home() / "chat_history")))
        while True:
            try:
                yield session.prompt(prompt)
            except (KeyboardInterrupt, EOFError):
                return
    else:
        try:
            for line in sys.stdin:
                yield line.rstrip("\n")
        except KeyboardInterrupt:
            return


def _paths(arg: str) -> list[str]:
    """The references after /image: shell-like words, so quoted or escaped names with spaces work."""
    try:
        words = shlex.split(arg)
    except ValueError:  # an unbalanced quote: the rest of the line is one name
        words = [arg.strip().strip("'\"")]
    return [w for w in words if w]


class _Chat:
    """One conversation: the history, the attachments for the next message, and the commands."""

    def __init__(self, opts: dict[str, Any], session: Session, attachments: list[str]) -> None:
        self.opts = opts
        self.session = session
        self.err = err_console()
        self.history: list[Message] = list(session.messages)
        self.images: list[str] = []
        self.video: str | list[str] | None = None
        self.attach(attachments)

    def attach(self, refs: list[str]) -> None:
        images, video = split_media(refs)
        if video is not None and self.video is not None:
            raise UsageError("one video per message: this one already has " + str(self.video))
        self.images += images
        self.video = video if video is not None else self.video

    def forget_gone_files(self) -> None:
        """Files of earlier turns that have gone: said once, and the turns are kept without them."""
        self.history, gone = drop_unavailable_media(self.history)
        warn([f"{why}: the earlier turn is kept, without it" for why in gone])

    def command(self, name: str, arg: str) -> bool:
        """Run a /command; False when the chat should end. Nothing here is ever sent to the model."""
        err = self.err
        if name in ("exit", "quit"):
            return False
        if name == "reset":
            self.history, self.images, self.video = [], [], None
            err.print("[dim]conversation cleared[/]")
        elif name == "history":
            for m in self.history:
                err.print(f"[bold]{m.role}:[/] {escape(m.text()[:200])}", highlight=False)
        elif name == "help":
            for usage, what in COMMANDS:
                err.print(f"  [bold]{escape(usage)}[/]  {escape(what)}", highlight=False)
        elif name == "image":
            refs = _paths(arg)
            if not refs:
                err.print("[yellow]usage:[/] /image PATH (a file or URL; quote names with spaces)")
                return True
            try:
                self.attach(media_args(refs))
            except (MediaError, UsageError) as exc:  # nothing attached; the chat goes on
                report(exc)
                return True
            count = len(self.images) + (self.video is not None)
            err.print(
                f"[dim]attached {escape(', '.join(refs))}: {count} file{'s' if count != 1 else ''} for "
                "your next message[/]",
                highlight=False,
            )
        else:
            err.print(
                f"[yellow]unknown command[/] /{escape(name)}: /help lists the commands (nothing was sent)",
                highlight=False,
            )
        return True

    def ask(self, client: SupportsStream, text: str, fields: dict[str, Any]) -> None:
        """One turn. Ctrl-C during the answer cancels it: nothing is added to the conversation."""
        err = self.err
        self.forget_gone_files()
        events: Any = None
        try:
            call = client.plan(prompt=text, images=self.images, video=self.video, messages=self.history, **fields)
            events = client.send_stream(call)
            response = stream_to_terminal(events, show_reasoning=not self.opts["hide_reasoning"])
        except KeyboardInterrupt:  # the connection is closed with the stream; the attachments stay for a retry
            if events is not None:
                events.close()
            sys.stdout.write("\n")
            sys.stdout.flush()
            err.print("[dim](answer cancelled: not added to the conversation)[/]")
            return
        except MediaError as exc:  # drop the bad attachment, keep the conversation
            report(exc)
            self.images, self.video = [], None
            return
        except StreamInterruptedError as exc:
            report(exc)
            err.print("[dim](not added to the conversation)[/]")
            return
        except APIError as exc:
            if getattr(exc, "exit_code", 5) == 4:
                raise
            report(exc)
            return
        self.images, self.video = [], None
        self.history = response.messages
        if err.is_terminal:
            err.print(f"[dim]{usage_line(response, client.region)}[/]")
        if self.opts["session_name"]:
            self.session.messages = self.history
            self.session.model = call.request.model
            self.session.save()


@click.command()
@click.argument("media", nargs=-1)
@click.option("--session", "session_name", help="Save the conversation under NAME and resume it next time.")
@click.option("--list-sessions", is_flag=True, help="List saved sessions and exit.")
@click.option("--hide-reasoning", is_flag=True, help="Do not show the model's thinking.")
@generation_options
@service_options
@pass_opts
def chat(opts: dict[str, Any]) -> None:
    """Talk about images: qwenvl chat photo.jpg [--session trip]

    Commands: /image PATH, /reset, /history, /help, /exit. Ctrl-C cancels an answer; at the prompt, Ctrl-C or
    Ctrl-D ends the chat. A saved session keeps its files as absolute paths, so it resumes from any folder.
    """
    if opts["list_sessions"]:
        for name in list_sessions():
            click.echo(name)
        return
    if STDIN in opts["media"]:
        raise UsageError(
            "chat reads your messages from standard input: give the file by its name",
            hint="Or attach it later with /image PATH.",
        )
    attachments = media_args(opts["media"])  # a missing file stops here, before the chat starts (exit 3)
    session = Session.load(opts["session_name"]) if opts["session_name"] else Session("unsaved")
    if opts.get("model") is None and session.model:
        opts["model"] = session.model
    fields = request_fields(opts)
    state = _Chat(opts, session, attachments)
    err = state.err
    if state.history:
        err.print(f"[dim]resumed session {session.name!r}: {len(state.history)} messages[/]")
        state.forget_gone_files()
    err.print(f"[dim]{WELCOME}[/]")
    client = make_client(opts)
    with client:
        for line in _lines("you> "):
            text = line.strip()
            if not text:
                continue
            command = _COMMAND.match(text)
            if command:
                if not state.command(command.group(1).lower(), (command.group(2) or "").strip()):
                    break
                continue
            state.ask(client, text, fields)
    if opts["session_name"] and state.history:
        err.print(f"[dim]saved session {session.name!r} ({len(state.history)} messages)[/]")
