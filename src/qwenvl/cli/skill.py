"""`qwenvl skill`: the SKILL.md that lets an agent use qwenvl (printed, or written into a skill folder)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from qwenvl.cli.common import FILE_NAME, Verb, err_console, not_dash, pass_opts
from qwenvl.errors import UsageError, safe_line
from qwenvl.outputs import write_failure_hint


def skill_text() -> str:
    """The skill file shipped in the package (``qwenvl/data/SKILL.md``)."""
    return resources.files("qwenvl").joinpath("data", "SKILL.md").read_text(encoding="utf-8")


@click.command(cls=Verb)
@click.option(
    "--install",
    "folder",
    type=FILE_NAME,
    metavar="DIR",
    callback=not_dash("Leave --install out to print SKILL.md on standard output."),
    help="Write DIR/SKILL.md (the folder is created), e.g. the skill folder the agent loads.",
)
@click.option("--force", is_flag=True, help="Replace an existing DIR/SKILL.md.")
@pass_opts
def skill(opts: dict[str, Any]) -> None:
    """Print the agent skill file (SKILL.md) for qwenvl, or install it: qwenvl skill --install DIR

    The skill tells an agent which verb to use when, the exact commands (analyze's request format), the
    exit codes and how to keep the cost down. It replaces the alicloud-ai-multimodal-qwen-vl skill folder.
    """
    text = skill_text()
    if opts["folder"] is None:
        if opts["force"]:
            raise UsageError("--force applies to --install only", hint="Add --install DIR, or leave out --force.")
        click.echo(text, nl=False)
        return
    folder = Path(opts["folder"]).expanduser()
    target = folder / "SKILL.md"
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a folder", hint="Give the skill's folder: DIR/SKILL.md is written.")
    if target.exists() and not opts["force"]:
        raise UsageError(f"{target} exists", hint="Add --force to replace it.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot write {target}: {exc.strerror or exc}",
            hint=write_failure_hint(exc, "give another folder with --install"),
        ) from None
    err_console().print(f"wrote {escape(safe_line(target))}", highlight=False)
