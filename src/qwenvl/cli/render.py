"""Rendering a streamed answer: text to stdout as it arrives, reasoning to stderr, dimmed."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from qwenvl.cli.common import err_console
from qwenvl.errors import StreamInterruptedError
from qwenvl.types import Response, StreamEvent


def stream_to_terminal(events: Iterator[StreamEvent], *, show_reasoning: bool = True) -> Response:
    """Print deltas as they come; returns the final response. On a broken stream the partial answer
    stays printed and the error (which keeps it) is raised."""
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
                err.print(f"[dim italic]{_escape(event.text)}[/]", end="")
            elif event.type == "text":
                if in_reasoning:
                    err.print()
                    in_reasoning = False
                sys.stdout.write(event.text)
                sys.stdout.flush()
                wrote_text = True
            elif event.type == "done":
                response = event.response
    except StreamInterruptedError:
        if wrote_text:
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    if wrote_text:
        sys.stdout.write("\n")
        sys.stdout.flush()
    assert response is not None
    return response


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
