"""Rendering a streamed answer: text to stdout as it arrives, reasoning to stderr, dimmed."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from rich.markup import escape

from qwenvl.cli.common import err_console, fit_line, shown
from qwenvl.errors import StreamInterruptedError, printable
from qwenvl.notes import answer_notes
from qwenvl.types import Response, StreamEvent


def warn_answer(
    response: Response, max_tokens: int | None = None, *, include_cut_off: bool = True, items_shown: bool = False
) -> None:
    """The notes on an answer (``qwenvl.notes``: cut off at max_tokens, empty, items not shown), on stderr."""
    console = err_console()
    for note in answer_notes(response, max_tokens, include_cut_off=include_cut_off, items_shown=items_shown):
        console.print(f"[yellow]warning:[/] {escape(printable(fit_line(note)))}", highlight=False, soft_wrap=True)


def stream_to_terminal(
    events: Iterator[StreamEvent], *, show_reasoning: bool = True, max_tokens: int | None = None
) -> Response:
    """Print deltas as they come, then the notes on the answer (``warn_answer``); returns the final response.
    On a broken stream the partial answer stays printed and the error (which keeps it) is raised."""
    err = err_console()
    in_reasoning = False
    wrote_text = False
    response: Response | None = None
    try:
        for event in events:
            if event.type == "reasoning" and show_reasoning:
                if not in_reasoning:
                    err.print("[dim]thinking…[/]")
                    in_reasoning = True
                err.print(f"[dim italic]{_escape(shown(event.text, sys.stderr))}[/]", end="")
            elif event.type == "text":
                if in_reasoning:
                    err.print()
                    in_reasoning = False
                sys.stdout.write(shown(event.text))  # byte-exact when piped
                sys.stdout.flush()
                wrote_text = True
            elif event.type == "done":
                response = event.response
    except StreamInterruptedError:
        if wrote_text:
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    except BaseException:  # Ctrl-C, a closed stdout: the stream is closed now, while its usage log is open
        close = getattr(events, "close", None)
        if close is not None:
            close()
        raise
    if in_reasoning:
        err.print()
    if wrote_text:
        sys.stdout.write("\n")
        sys.stdout.flush()
    assert response is not None
    warn_answer(response, max_tokens)
    return response


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
