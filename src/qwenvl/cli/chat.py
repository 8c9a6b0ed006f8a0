"""`qwenvl chat [IMAGE...]`: an interactive conversation about images, optionally saved as a session.

The conversation itself (history, attachments, sessions, what the commands do) is ``qwenvl.chat.Conversation``;
this module is the terminal: the prompt, line editing, rendering, Ctrl-C and the messages to the user.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape

from qwenvl.chat import CommandResult, Conversation, image_refs, parse_command
from qwenvl.cli.common import (
    FILE_NAME,
    STDIN,
    Verb,
    check_pages_apply,
    err_console,
    generation_options,
    make_client,
    media_args,
    pass_opts,
    print_usage_line,
    report,
    request_fields,
    service_options,
    shown,
    utf8_text,
)
from qwenvl.cli.render import stream_to_terminal
from qwenvl.cli.signals import EXIT_INTERRUPTED, Terminated
from qwenvl.cli.streams import OutputClosed
from qwenvl.cli.tasks_common import warn
from qwenvl.errors import EXIT_USAGE, APIError, MediaError, StreamInterruptedError, UsageError, safe_line
from qwenvl.sessions import Session, home, list_sessions

COMMANDS = (
    ("/image PATH", "attach a file or URL to your next message (checked at once; several allowed)"),
    ("/reset", "forget the conversation"),
    ("/history", "show the conversation so far"),
    ("/help", "this list"),
    ("/exit", "end the chat (or Ctrl-D; Ctrl-C cancels an answer, and at the prompt ends the chat)"),
)
WELCOME = "Type a message, or /help for the commands. Ctrl-D ends the chat."


def _lines(prompt: str) -> Iterator[str]:
    """Input lines: with line editing and history on a terminal, plain lines otherwise. Ends on Ctrl-D (end of
    input) and on Ctrl-C at the prompt of a terminal; piped, Ctrl-C while the next line is awaited goes through
    (the chat ends as interrupted, exit 130: the lines still to come were never answered)."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        home().mkdir(parents=True, exist_ok=True)
        session: PromptSession[str] = PromptSession(history=FileHistory(str(home() / "chat_history")))
        while True:
            try:
                yield session.prompt(prompt)
            except Terminated:  # SIGTERM, SIGHUP: the chat ends, with the signal's exit code
                raise
            except (KeyboardInterrupt, EOFError):
                return
    else:
        try:  # bytes, so that a line that is not UTF-8 is refused alone (``utf8_text``), never ending the chat
            for raw in sys.stdin.buffer:
                yield raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
        except KeyboardInterrupt as exc:
            if isinstance(exc, Terminated) or not sys.stdin.isatty():  # piped: the lines to come go unanswered
                raise
            return  # typed at a terminal (its output redirected): Ctrl-C at the prompt ends the chat


def _forget_gone_files(conv: Conversation) -> None:
    """Files of earlier turns that have gone: said once, and the turns are kept without them."""
    warn([f"{why}: the earlier turn is kept, without it" for why in conv.drop_unavailable()])


def _show(result: CommandResult) -> None:
    """What a command did, on stderr (nothing of it is ever sent to the model)."""
    err = err_console()
    if result.outcome == "cleared":
        err.print("[dim]conversation cleared[/]")
    elif result.outcome == "history":
        if not result.messages:
            err.print("[dim](the conversation is empty: nothing was asked yet)[/]")
        for m in result.messages:
            err.print(f"[bold]{m.role}:[/] {escape(shown(m.text()[:200], sys.stderr))}", highlight=False)
    elif result.outcome == "help":
        for usage, what in COMMANDS:
            err.print(f"  [bold]{escape(usage)}[/]  {escape(what)}", highlight=False)
    elif result.outcome == "needs-path":
        err.print("[yellow]usage:[/] /image PATH (a file or URL; quote names with spaces)")
    elif result.outcome == "not-attached" and result.error is not None:  # nothing attached; the chat goes on
        report(result.error)
        count = result.pending
        err.print(
            f"[dim](nothing of this /image attached; {count} file{'s' if count != 1 else ''} for your next message)[/]"
        )
    elif result.outcome == "attached":
        count = result.pending
        names = escape(safe_line(", ".join(result.attached)))  # the user's file names and URLs
        err.print(
            f"[dim]attached {names}: {count} file{'s' if count != 1 else ''} for your next message[/]",
            highlight=False,
        )
    elif result.outcome == "unknown":
        err.print(
            f"[yellow]unknown command[/] /{escape(safe_line(result.name))}: "
            "/help lists the commands (nothing was sent)",
            highlight=False,
        )


def _kept(conv: Conversation) -> str:
    """What waits for the retry of a failed turn: its attachments (the message is to be sent again)."""
    count = conv.pending
    files = f"{count} file{'s' if count != 1 else ''} still attached" if count else "nothing attached"
    return f"; {files}: send your message again to retry"


def _ask(conv: Conversation, text: str, hide_reasoning: bool) -> int:
    """One turn, streamed to the terminal; 0, or the exit code of the error that ended it (reported here).
    Ctrl-C while the answer arrives cancels it: nothing is added, and the turn's code is 130 (``EXIT_INTERRUPTED``:
    it was not answered, so a script feeding the chat learns of it). One after the whole answer arrived (while the
    terminal is still being written to) keeps it: the conversation took it (``Conversation.last_response``), it
    was paid, and the turn counts as answered."""
    err = err_console()
    _forget_gone_files(conv)
    events: Any = None
    before = conv.last_response
    try:
        events = conv.stream(text)
        response = stream_to_terminal(events, show_reasoning=not hide_reasoning)
    except KeyboardInterrupt as exc:  # the connection is closed with the stream; the attachments stay for a retry
        if events is not None:
            events.close()
        if isinstance(exc, OutputClosed):  # the reader left (`| head`): the chat ends without a word
            raise
        sys.stdout.write("\n")
        sys.stdout.flush()
        kept = conv.last_response
        if kept is not None and kept is not before:  # the whole answer had arrived: the conversation took it
            err.print("[dim](interrupted after the answer arrived: kept in the conversation)[/]")
            if isinstance(exc, Terminated):
                raise
            if err.is_terminal:
                print_usage_line(kept, conv.client.region, err)
            return 0
        err.print("[dim](answer cancelled: not added to the conversation)[/]")
        if isinstance(exc, Terminated):  # SIGTERM, SIGHUP: the chat ends too (qwenvl.cli.signals)
            raise
        return EXIT_INTERRUPTED
    except MediaError as exc:  # the bad attachment is dropped, the conversation and the others kept
        report(exc)
        dropped = safe_line(", ".join(conv.dropped))
        err.print(f"[dim](not sent; dropped {escape(dropped)}{_kept(conv)})[/]", highlight=False)
        return exc.exit_code
    except StreamInterruptedError as exc:
        report(exc)
        err.print(f"[dim](not added to the conversation{_kept(conv)})[/]", highlight=False)
        return exc.exit_code
    except UsageError as exc:  # refused before sending (a conversation past the model's context): the chat goes on
        report(exc)
        err.print(f"[dim](not sent; the conversation is unchanged{_kept(conv)})[/]", highlight=False)
        return exc.exit_code
    except APIError as exc:
        if getattr(exc, "exit_code", 5) == 4:
            raise
        report(exc)
        err.print(f"[dim](not added to the conversation{_kept(conv)})[/]", highlight=False)
        return exc.exit_code
    if err.is_terminal:
        print_usage_line(response, conv.client.region, err)
    return 0


@click.command(cls=Verb)
@click.argument("media", type=FILE_NAME, nargs=-1)
@click.option(
    "--session", "session_name", metavar="NAME", help="Save the conversation under NAME and resume it next time."
)
@click.option("--list-sessions", is_flag=True, help="List saved sessions and exit.")
@click.option("--hide-reasoning", is_flag=True, help="Do not show the model's thinking.")
@generation_options
@service_options
@pass_opts
def chat(opts: dict[str, Any]) -> None:
    """Talk about images: qwenvl chat photo.jpg [--session trip]

    Commands: /image PATH, /reset, /history, /help, /exit. Ctrl-C cancels an answer; at the prompt, Ctrl-C or
    Ctrl-D ends the chat. A saved session keeps its files as absolute paths, so it resumes from any folder.
    With messages piped in, the exit status is that of the last turn or /image that failed (130 for an answer
    cancelled with Ctrl-C; 0 when every turn was answered).
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
    check_pages_apply(opts, attachments)  # --pages, --fps, --video-as: for the files given at start, or refused
    session = Session.load(opts["session_name"]) if opts["session_name"] else None
    if opts.get("model") is None and session is not None and session.model:
        opts["model"] = session.model  # (a local backend is told which model to load by the client)
    fields = request_fields(opts)
    err = err_console()
    with make_client(opts) as client:
        conv = Conversation(client, session=session, fields=fields)
        conv.attach(*attachments)
        if conv.messages and session is not None:
            err.print(f"[dim]resumed session {session.name!r}: {len(conv.messages)} messages[/]")
            _forget_gone_files(conv)
        err.print(f"[dim]{WELCOME}[/]")
        failed = 0  # the exit code of the last turn that failed: a script feeding the chat learns of it
        for line in _lines("you> "):
            text = line.strip()
            if not text:
                continue
            command = parse_command(text)
            if command is None:
                try:
                    utf8_text(text, "the message")
                except UsageError as exc:  # not sent; the chat goes on (a file name after /image may be any bytes)
                    report(exc)
                    failed = exc.exit_code
                    continue
                failed = _ask(conv, text, opts["hide_reasoning"]) or failed
                continue
            name, arg = command
            if name == "image" and STDIN in image_refs(arg):  # standard input is where the messages come from
                refused = UsageError("chat reads your messages from standard input: give the file by its name")
                report(refused)
                failed = refused.exit_code
                continue
            result = conv.command(name, arg)
            if result.end:
                break
            _show(result)
            if result.error is not None:  # a refused /image counts as a failed turn, whatever the reason
                failed = result.error.exit_code
            elif result.outcome == "unknown":  # a mistyped command: a usage error for a script feeding the chat
                failed = EXIT_USAGE
    if session is not None and conv.messages:
        err.print(f"[dim]saved session {session.name!r} ({len(conv.messages)} messages)[/]")
    if failed and not sys.stdin.isatty():  # at a terminal the user saw each error; a script gets the code
        raise SystemExit(failed)
