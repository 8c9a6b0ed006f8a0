"""Refusals, hints and suggestions a new user found wrong: each fixed as a kind, on every surface where it occurs.

Library errors speak the library's words (keyword arguments) and the CLI its flags; ``dir(qwenvl)`` lists the
public names; the empty-value hint is true for each option; a damaged SQLite file is one refusal naming it; an
option that does not apply to the input is refused; ``ocr --task`` is checked; messages name what the user gave;
"did you mean" comes from one helper everywhere."""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import qwenvl

# -- 2. dir(qwenvl) ----------------------------------------------------------------------------------------------


def test_dir_lists_the_public_names_and_submodules_only() -> None:
    names = dir(qwenvl)
    assert set(qwenvl.__all__) <= set(names)  # Client and AsyncClient are lazy, and listed
    assert {"Client", "AsyncClient", "Call", "client", "types", "errors"} <= set(names)
    assert not {"Any", "TYPE_CHECKING", "annotations"} & set(names)
    public_modules = {m.name for m in pkgutil.iter_modules(qwenvl.__path__) if not m.name.startswith("_")}
    assert set(names) == set(qwenvl.__all__) | public_modules


# -- 9. docs -----------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_the_ask_section_names_only_flags_ask_has() -> None:
    from qwenvl.cli.main import cli

    readme = (ROOT / "README.md").read_text()
    start = readme.index("Images are https URLs (passed through)")
    section = readme[start : readme.index("\n\n", start)]
    ask = cli.commands["ask"]  # type: ignore[attr-defined]
    flags = {o for p in ask.params for o in (*p.opts, *p.secondary_opts)}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", section))
    assert named and named <= flags, named - flags


def test_the_docs_link_nothing_outside_the_repository() -> None:
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = doc.read_text()
        links = [t for t in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in t and not t.startswith("mailto:")]
        for target in links + re.findall(r"`(\.\./[^`\s]+)`", text):  # a link, or a path that leaves the folder
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT), f"{doc.name} names {target}, outside the repository"
            if target in links:
                assert path.exists(), f"{doc.name} links {target}, which does not exist"
