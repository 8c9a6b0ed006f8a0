"""The one home for "did you mean": the closest of some known names to a name given (a flag, a model name).

Used by the CLI for an unknown option (``qwenvl.cli.main``) and by the model table for a model name that looks
like a misspelling of a listed one (``qwenvl.models.near_model``). Built on ``difflib.SequenceMatcher``'s ratio
(2 × matching characters / both lengths: 1.0 for the same name)."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable


def closest(given: str, choices: Iterable[str], *, cutoff: float = 0.6, prefix_min: int = 3) -> list[str]:
    """The choices ``given`` most likely means, best first. Those that begin with ``given`` (when it has at least
    ``prefix_min`` characters: ``temp`` for ``temperature``) come first and alone, in the order given; otherwise the
    choices whose ratio to ``given`` is at least ``cutoff`` and within 0.1 of the best one's (``max-token`` keeps
    ``max-tokens`` and drops ``backend``). Empty when none is close. Raises nothing."""
    names = list(dict.fromkeys(choices))
    begun = [c for c in names if len(given) >= prefix_min and c != given and c.startswith(given)]
    if begun:
        return begun
    scored = sorted(((difflib.SequenceMatcher(None, given, c).ratio(), c) for c in names), key=lambda t: -t[0])
    scored = [(s, c) for s, c in scored if s >= cutoff]
    return [c for s, c in scored if s >= scored[0][0] - 0.1] if scored else []


def nearest(given: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The one choice closest to ``given`` by ratio alone (difflib's ``get_close_matches(n=1)``: ``max_tokens``
    for ``max_token``), or None when none reaches ``cutoff``. Raises nothing."""
    near = closest(given, choices, cutoff=cutoff, prefix_min=sys.maxsize)
    return near[0] if near else None
