"""The one home for "did you mean": the known name closest to a name given (a flag, a choice, a request field, a
model name, a variable, a file in a folder).

Built on ``difflib.SequenceMatcher``'s ratio (2 × matching characters / both lengths: 1.0 for the same name).
Used by the CLI (unknown options, choices, verbs), the library (request fields, ``--param`` names, OCR tasks),
the model table (``qwenvl.models.near_model``), MCP options, ``qwenvl env`` and missing files' hints."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# difflib's ratio at or above which a name is taken for a misspelling of a known one ("hgh" for "high", "nativ" for
# "native", "max_token" for "max_tokens"); a name further from every known one gets no suggestion.
CLOSE = 0.6

# The names other APIs give a request field (OpenAI's, Hugging Face's ``generate``, Anthropic's, the prose of the
# docs), by the field each means here: a name no ratio would bring near ("thinking" is nearer "thinking_budget"
# than "enable_thinking"). Used by ``nearest`` only when the field is among the names it chooses from, so it
# serves the library's keyword names and the CLI's flags ("--max-new-tokens" -> "--max-tokens") alike.
ALIASES = {
    "thinking": "enable_thinking",
    "reasoning": "enable_thinking",
    "enable_reasoning": "enable_thinking",
    "max_new_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "max_output_tokens": "max_tokens",
    "max_length": "max_tokens",
    "budget_tokens": "thinking_budget",
    "reasoning_budget": "thinking_budget",
    "system_prompt": "system",
    "system_message": "system",
    "instructions": "system",
    "retries": "max_retries",
    "json_schema": "schema",
    "response_model": "schema",
    "stop_sequences": "stop",
    "image_url": "image",
    "image_urls": "images",
    "videos": "video",
    "question": "prompt",
    "query": "prompt",
}


def closest(given: str, choices: Iterable[str], *, cutoff: float = CLOSE, prefix_min: int = 3) -> list[str]:
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


def nearest(given: str, choices: Iterable[str], *, cutoff: float = CLOSE) -> str | None:
    """The one known name ``given`` was most likely meant to be: the same name in other case or with "-" for "_"
    (a flag's spelling of a key), else the choice of highest ratio at ``cutoff`` or above (difflib's
    ``get_close_matches(n=1)``: ``max_tokens`` for ``max_token``); before the ratio, a common name of another API
    for one of the choices (``ALIASES``: ``enable_thinking`` for ``thinking``, ``max_tokens`` for
    ``max_new_tokens``); None when none is close. Raises nothing."""
    names = list(dict.fromkeys(choices))

    def spelled(text: str) -> str:
        return text.strip().lower().replace("-", "_").replace(" ", "_")

    same = [c for c in names if spelled(c) == spelled(given)]
    if same:
        return same[0]
    alias = ALIASES.get(spelled(given).lstrip("_"))
    known_as = [c for c in names if alias is not None and spelled(c).lstrip("_") == alias]
    if known_as:
        return known_as[0]
    near = difflib.get_close_matches(given, names, n=1, cutoff=cutoff)
    return near[0] if near else None


def meant(given: object, choices: Iterable[str], *, cutoff: float = CLOSE) -> str:
    """``" (did you mean 'x'?)"`` for the ``nearest`` known name, to end an "unknown ..." message with (``unknown
    region 'intll': use one of cn, intl, us (did you mean 'intl'?)``); empty when none is close or ``given`` is
    not text. Raises nothing."""
    near = nearest(given, choices, cutoff=cutoff) if isinstance(given, str) and given.strip() else None
    return f" (did you mean {near!r}?)" if near is not None else ""


def did_you_mean(given: str, choices: Iterable[str], *, cutoff: float = CLOSE, quote: str = "'") -> str | None:
    """``"Did you mean 'x'?"`` for the ``nearest`` known name (quoted with ``quote``), or None. Raises nothing."""
    near = nearest(given, choices, cutoff=cutoff)
    return f"Did you mean {quote}{near}{quote}?" if near is not None else None
