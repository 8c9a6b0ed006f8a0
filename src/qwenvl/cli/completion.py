"""Shell completion (click's: ``eval "$(_QWENVL_COMPLETE=bash_source qwenvl)"``, zsh_source, fish_source).

click completes verbs, options and ``click.Choice`` values by itself. What it cannot know is added here, only
when the shell asks (``complete``, called by ``QwenVLGroup.main`` when ``_QWENVL_COMPLETE`` is set, so that a
normal run loads nothing more):

- the values of the options that take a fixed set of names but are plain text, so that a misspelling gets a
  "did you mean" rather than click's list (``--region``, ``config --protocol``, ``--dtype``, ``ocr --task``) and
  the models of qwenvl's table for ``--model`` (any other name is allowed);
- file names for file arguments and options (``cli.common.FileName``: ``shell_complete``);
- ``qwenvl batch ARGS``, short for ``qwenvl batch run ARGS``: ``batch.BatchGroup.shell_complete`` adds
  ``run``'s options.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click
from click.shell_completion import CompletionItem


def _values() -> dict[str, Callable[[], Iterable[str]]]:
    """Each plain-text option's values, by its long name, read from their one home."""
    from qwenvl.config import DTYPES, PROTOCOLS, REGIONS
    from qwenvl.models import MODELS
    from qwenvl.tasks.ocr import OCR_TASKS

    return {
        "--region": lambda: REGIONS,
        "--protocol": lambda: PROTOCOLS,
        "--dtype": lambda: DTYPES,
        "--task": lambda: OCR_TASKS,
        "--model": lambda: MODELS,
    }


def _completer(values: Callable[[], Iterable[str]]) -> Callable[..., list[CompletionItem]]:
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        return [CompletionItem(v) for v in values() if v.startswith(incomplete)]

    return complete


def complete(group: click.Group) -> None:
    """Give every plain-text option of ``group``'s verbs whose values are known (``_values``) their completion.
    Loads every verb: called only when the shell asks for completions. Raises nothing."""
    values = _values()
    ctx = click.Context(group, resilient_parsing=True)

    def walk(command: click.Command) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None:
                    walk(sub)
        for param in command.params:
            if not isinstance(param, click.Option) or isinstance(param.type, click.Choice):
                continue
            known = next((values[o] for o in param.opts if o in values), None)
            # ``_custom_shell_complete`` is what the ``shell_complete=`` argument of an option sets
            if known is not None and getattr(param, "_custom_shell_complete", None) is None:
                param._custom_shell_complete = _completer(known)

    walk(group)


def file_items(incomplete: str) -> list[Any]:
    """What a file argument or option completes to: the shell's own file names (click's "file" item)."""
    return [CompletionItem(incomplete, type="file")]
