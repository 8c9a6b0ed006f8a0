"""`qwenvl chat [IMAGE...]`: an interactive conversation about images, optionally saved as a session."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape

from qwenvl.cli.common import (
    err_console,
    generation_options,
    make_client,
    pass_opts,
    report,
    request_fields,
    service_options,
    split_media,
    usage_line,
)
from qwenvl.cli.render import stream_to_terminal
from qwenvl.errors import APIError, MediaError, StreamInterruptedError
from qwenvl.sessions import Session, home, list_sessions
from qwenvl.types import Message

HELP = """Commands: /image PATH (attach to your next message), /reset (forget the conversation),
/history, /exit (or Ctrl-D)."""


def _lines(prompt: str) -> Iterator[str]:
    """Input lines: with line editing and history on a terminal, plain lines otherwise."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        home().mkdir(parents=True, exist_ok=True)
        session: PromptSession[str] = PromptSession(history=FileHistory(str(home() / "chat_history")))
        while True:
            try:
                yield session.prompt(prompt)
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
    else:
        for line in sys.stdin:
            yield line.rstrip("\n")


@click.command()
@click.argument("media", nargs=-1)
@click.option("--session", "session_name", help="Save the conversation under NAME and resume it next time.")
@click.option("--list-sessions", is_flag=True, help="List saved sessions and exit.")
@click.option("--hide-reasoning", is_flag=True, help="Do not show the model's thinking.")
@generation_options
@service_options
@pass_opts
def chat(opts: dict[str, Any]) -> None:
    """Talk about images: qwenvl chat photo.jpg [--session trip]"""
    if opts["list_sessions"]:
        for name in list_sessions():
            click.echo(name)
        return
    err = err_console()
    session = Session.load(opts["session_name"]) if opts["session_name"] else Session("unsaved")
    if opts.get("model") is None and session.model:
        opts["model"] = session.model
    fields = request_fields(opts)
    pending_images, video = split_media(list(opts["media"]))
    history: list[Message] = list(session.messages)
    if history:
        err.print(f"[dim]resumed session {session.name!r}: {len(history)} messages[/]")
    err.print(f"[dim]{HELP}[/]")
    client = make_client(opts)
    with client:
        for line in _lines("you> "):
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                history, video = [], None
                err.print("[dim]conversation cleared[/]")
                continue
            if text == "/history":
                for m in history:
                    err.print(f"[bold]{m.role}:[/] {escape(m.text()[:200])}", highlight=False)
                continue
            if text.startswith("/image "):
                pending_images.append(text[len("/image "):].strip())
                continue
            try:
                call = client.plan(prompt=text, images=pending_images, video=video, messages=history, **fields)
                response = stream_to_terminal(client.send_stream(call),
                                              show_reasoning=not opts["hide_reasoning"])
            except MediaError as exc:  # drop the bad attachment, keep the conversation
                report(exc)
                pending_images, video = [], None
                continue
            except StreamInterruptedError as exc:
                report(exc)
                err.print("[dim](not added to the conversation)[/]")
                continue
            except APIError as exc:
                if getattr(exc, "exit_code", 5) == 4:
                    raise
                report(exc)
                continue
            pending_images, video = [], None
            history = response.messages
            if err.is_terminal:
                err.print(f"[dim]{usage_line(response, client.region)}[/]")
            if opts["session_name"]:
                session.messages = history
                session.model = call.request.model
                session.save()
    if opts["session_name"] and history:
        err.print(f"[dim]saved session {session.name!r} ({len(history)} messages)[/]")
