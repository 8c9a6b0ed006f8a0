"""What an answer says besides its text, in words: cut off at max_tokens, no content, items not shown.

One home for these sentences: the CLI prints them after every answer, and the task readers (grounding, OCR,
video events) put the cut-off one in their ``warnings``. And the one home of "said once per run" (``SaidOnce``,
``once_per_run``): a warning about a request said once in a run of many (an OCR's pages, a CLI verb's files), not
once per request.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
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
# a number standing alone ("1,234 tokens", "page 3"), not a digit in a name ("page3.png", "qwen2.5-vl-72b")
_NUMBERS = re.compile(r"(?<![\w.])\d[\d,.]*(?![\w.])")


class SaidOnce:
    """The kinds of warning said in one run: the one rule of "said once per run", for the library's runs
    (``once_per_run``) and the CLI's (its warning lines, ``qwenvl.cli.main``). A warning's kind is its words with
    the numbers standing alone set aside (another page's or file's token count is the same warning; another file's
    name, digits and all, is another warning). Thread-safe."""

    def __init__(self) -> None:
        self._kinds: set[str] = set()
        self._lock = threading.Lock()

    def first(self, message: str) -> bool:
        """Whether ``message`` is the first of its kind in this run (it is then counted as said). Raises nothing."""
        kind = _NUMBERS.sub("#", message)
        with self._lock:
            if kind in self._kinds:
                return False
            self._kinds.add(kind)
            return True


# The run under way (``once_per_run``); None outside one.
_WARNED: ContextVar[SaidOnce | None] = ContextVar("qwenvl_warned_in_run", default=None)


class _OncePerRun(logging.Filter):
    """Lets a warning through the first time its kind is logged in a run (``SaidOnce``), and drops it after;
    everything outside a run passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        run = _WARNED.get()
        return run is None or record.levelno < logging.WARNING or run.first(record.getMessage())


_ONCE = _OncePerRun()


@contextlib.contextmanager
def once_per_run(run: SaidOnce | None = None) -> Iterator[None]:
    """A run of several requests planned alike (an OCR's pages, estimated then planned; ``extract_many``'s files):
    within it, a warning about a request that the library logs on the ``qwenvl`` logger (``plan.check_context``'s
    "near or over the context", a model guessed...) is logged the first time its kind is (``SaidOnce``: another
    page's token count is the same warning), not once per page. The run is this context (a ``ContextVar``: worker
    threads started with ``asyncio.to_thread`` share it; other threads and tasks are not affected); a run inside a
    run is the outer one. ``run``: the warnings already said, to go on with (a run entered again for each item of
    a generator, which cannot hold a context across its ``yield``); default a new run. Raises nothing of its own."""
    if _WARNED.get() is not None:
        yield
        return
    logger = logging.getLogger("qwenvl")
    if _ONCE not in logger.filters:
        logger.addFilter(_ONCE)
    token = _WARNED.set(SaidOnce() if run is None else run)
    try:
        yield
    finally:
        _WARNED.reset(token)
