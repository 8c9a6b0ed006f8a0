"""What an answer says besides its text, in words: cut off at max_tokens, no content, items not shown.

One home for these sentences: the CLI prints them after every answer, and the task readers (grounding, OCR,
video events) put the cut-off one in their ``warnings``. And the one home of ``once_per_run``: a warning about a
request said once in a run of many (an OCR's pages), not once per request.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from contextvars import ContextVar

from qwenvl.types import Response


def cut_off(response: Response, max_tokens: int | None = None) -> str | None:
    """The warning for an answer the service stopped at ``max_tokens`` (``finish_reason == "length"``), else None.

    When the model spent the whole budget thinking (reasoning but no text) it says so: raising ``max_tokens``,
    or capping the thinking with ``thinking_budget``, is then the fix."""
    if response.finish_reason != "length":
        return None
    budget = f" ({max_tokens} tokens)" if max_tokens else ""
    if response.reasoning and not response.text.strip():
        return (
            f"the answer was cut off at max_tokens{budget} while the model was still thinking: no answer was "
            "given; raise --max-tokens (or cap the thinking with --thinking-budget)"
        )
    thinking = " (or cap the thinking with --thinking-budget)" if response.reasoning else ""
    return f"the answer was cut off at max_tokens{budget}: it is incomplete; raise --max-tokens{thinking}"


def not_shown(response: Response) -> str | None:
    """A note on content items that are not text (kept in ``Response.other_content``), else None."""
    items = response.other_content or []
    if not items:
        return None
    kinds = sorted({next(iter(item), "?") if item.get("type") is None else str(item["type"]) for item in items})
    n = len(items)
    return (
        f"the answer also holds {n} item{'s' if n != 1 else ''} that {'are' if n != 1 else 'is'} not text "
        f"({', '.join(kinds)}), not shown here (`qwenvl ask --json` prints them)"
    )


def empty(response: Response) -> str | None:
    """A note for an answer with no text and no tool calls (not cut off: ``cut_off`` covers that), else None."""
    if response.text.strip() or response.tool_calls or response.finish_reason == "length":
        return None
    why = f", finish_reason {response.finish_reason}" if response.finish_reason else ""
    return f"the service sent no answer (empty content{why})"


def answer_notes(
    response: Response, max_tokens: int | None = None, *, include_cut_off: bool = True, items_shown: bool = False
) -> list[str]:
    """Every note for ``response``, in the order a user needs them (``items_shown``: the output already holds
    ``other_content``, e.g. ``--json``)."""
    notes = [
        cut_off(response, max_tokens) if include_cut_off else None,
        empty(response),
        None if items_shown else not_shown(response),
    ]
    return [n for n in notes if n]


# --- a warning about a request, once per run ---------------------------------------------------------------------
# The kinds of warning logged (on the ``qwenvl`` logger) in the run under way (``once_per_run``); None outside one.
_WARNED: ContextVar[set[str] | None] = ContextVar("qwenvl_warned_in_run", default=None)
_NUMBERS = re.compile(r"\d[\d,.]*")


class _OncePerRun(logging.Filter):
    """Lets a warning through the first time its kind (its words, numbers aside) is logged in a run, and drops it
    after; everything outside a run passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        seen = _WARNED.get()
        if seen is None or record.levelno < logging.WARNING:
            return True
        kind = _NUMBERS.sub("#", record.getMessage())
        if kind in seen:
            return False
        seen.add(kind)
        return True


_ONCE = _OncePerRun()


@contextlib.contextmanager
def once_per_run() -> Iterator[None]:
    """A run of several requests planned alike (an OCR's pages, estimated then planned): within it, a warning about
    a request that the library logs on the ``qwenvl`` logger (``plan.check_context``'s "near or over the context",
    a model guessed...) is logged the first time its kind is (its words with the numbers set aside: another page's
    token count is the same warning), not once per page. The run is this context (a ``ContextVar``: worker threads
    started with ``asyncio.to_thread`` share it; other threads and tasks are not affected); a run inside a run is
    the outer one. Raises nothing of its own."""
    if _WARNED.get() is not None:
        yield
        return
    logger = logging.getLogger("qwenvl")
    if _ONCE not in logger.filters:
        logger.addFilter(_ONCE)
    token = _WARNED.set(set())
    try:
        yield
    finally:
        _WARNED.reset(token)
