"""Refusals, hints and suggestions a new user found wrong: each fixed as a kind, on every surface where it occurs.

Library errors speak the library's words (keyword arguments) and the CLI its flags; ``dir(qwenvl)`` lists the
public names; the empty-value hint is true for each option; a damaged SQLite file is one refusal naming it; an
option that does not apply to the input is refused; ``ocr --task`` is checked; messages name what the user gave;
"did you mean" comes from one helper everywhere."""

from __future__ import annotations

import pkgutil

import qwenvl

# -- 2. dir(qwenvl) ----------------------------------------------------------------------------------------------


def test_dir_lists_the_public_names_and_submodules_only() -> None:
    names = dir(qwenvl)
    assert set(qwenvl.__all__) <= set(names)  # Client and AsyncClient are lazy, and listed
    assert {"Client", "AsyncClient", "Call", "client", "types", "errors"} <= set(names)
    assert not {"Any", "TYPE_CHECKING", "annotations"} & set(names)
    public_modules = {m.name for m in pkgutil.iter_modules(qwenvl.__path__) if not m.name.startswith("_")}
    assert set(names) == set(qwenvl.__all__) | public_modules
