"""The `qwenvl` command: a click group whose verbs live in one module each.

Errors are turned into a message, a hint and an exit code here and nowhere else:
0 ok, 2 usage error, 3 input error, 4 authentication or permission, 5 service or network error; 130, 143, 129
for Ctrl-C, SIGTERM, SIGHUP (``qwenvl.cli.signals``), 141 for a stdout that closed (``qwenvl.cli.streams``).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterator, MutableMapping
from typing import Any

import click
from rich.markup import escape

from qwenvl import __version__
from qwenvl import env as qenv
from qwenvl.cli.common import err_console, json_failure, report, show_paid
from qwenvl.cli.signals import Terminated, exit_code, terminate_like_ctrl_c
from qwenvl.cli.streams import OutputClosed, guarded_streams
from qwenvl.errors import EXIT_SERVICE, QwenVLError, safe_line
from qwenvl.notes import SaidOnce
from qwenvl.spelling import did_you_mean, nearest


class QwenVLGroup(click.Group):
    """Maps qwenvl errors to exit codes; never shows a traceback unless QWENVL_DEBUG is set."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if qenv.shell_completion(kwargs.get("complete_var") or "_QWENVL_COMPLETE"):  # the shell asks for completions
            from qwenvl.cli.completion import complete

            complete(self)
        with guarded_streams():  # also for what click writes itself: --help, --version, usage errors
            return super().main(*args, **kwargs)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as exc:  # a bad flag of the group itself: one line and a hint, exit 2
            _say_click_error(exc)
            raise click.exceptions.Exit(exc.exit_code) from None
        except OutputClosed as exc:  # `qwenvl --help | head -1`: as in a verb (click would say "Aborted!")
            _say_closed(exc)
            raise click.exceptions.Exit(exit_code(exc)) from None

    def invoke(self, ctx: click.Context) -> Any:
        with guarded_streams() as stdout:  # a closed stdout ends the verb as SIGPIPE; a closed stderr changes nothing
            try:
                # SIGTERM, SIGHUP: as Ctrl-C, exit 128 + the signal (qwenvl.cli.signals)
                with terminate_like_ctrl_c():
                    try:
                        result = self._invoke(ctx)
                    except click.exceptions.Exit as exc:
                        stdout.finish(quietly=exc.exit_code != 0)  # a failure's own exit code is kept
                        raise
                    stdout.finish()  # the last bytes may be what finds the reader gone
                    return result
            except KeyboardInterrupt as exc:
                if isinstance(exc, OutputClosed):
                    _say_closed(exc)
                else:
                    from qwenvl.client import unrepaired

                    kept = unrepaired(exc)  # Ctrl-C during a schema repair: the first, paid answer is shown
                    if kept is not None:
                        show_paid(kept)
                    said = f"terminated ({exc.name})" if isinstance(exc, Terminated) else "interrupted"
                    err_console().print(f"[dim]{said}[/]")
                    json_failure(exc)  # --json: stdout holds JSON whatever happens
                ctx.exit(exit_code(exc))

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except QwenVLError as exc:
            report(exc)
            json_failure(exc)  # --json: stdout holds JSON whatever happens
            ctx.exit(exc.exit_code)
        except click.ClickException as exc:  # click's own usage errors (a bad value, an unknown option or verb)
            _say_click_error(exc)
            json_failure(exc)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # a bug: one line, the traceback only on request
            if qenv.debug():
                raise
            err_console().print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(safe_line(str(exc)))}",
                highlight=False,
                soft_wrap=True,
            )
            err_console().print(
                "[yellow]hint:[/] run again with QWENVL_DEBUG=1 for the traceback, and please report it.",
                highlight=False,
            )
            ctx.exit(EXIT_SERVICE)


_DID_YOU_MEAN = re.compile(r"\s*\(?((?:Possible options|Did you mean)[^()]*?)\)?$")


def _closest_options(given: str, ctx: click.Context | None) -> str | None:
    """ "Did you mean" for an unknown option: the verb's options the given name begins (``--temp``:
    ``--temperature``; for a short option ``-o``, the long ones of its letter: ``--out``),
    else the one closest option (``qwenvl.spelling.nearest``, the one rule) of the verb or of
    the groups above it (``qwenvl ask --versoin``: "Did you mean `qwenvl --version`?"); None when none is close
    (never a far one: ``--max-token`` is not near ``--backend``)."""
    name = given.lstrip("-")

    def longs(command: click.Command) -> list[str]:
        return [o for p in command.params for o in [*p.opts, *p.secondary_opts] if o.startswith("--")]

    options = [*longs(ctx.command), "--help"] if ctx is not None else []
    kept = [o for o in options if len(name) >= 3 and o[2:].startswith(name)]
    if len(given) == 2 and given[0] == "-" and given[1] != "-":  # a short option the verb lacks (serve -x): the
        # verb's long options of its letter (`usage -m`: --model; `ground -o`: --out)
        kept = [o for o in options if o[2:3] == given[1] and o != "--help"]
    if len(kept) > 1:
        return "Did you mean one of: " + ", ".join(kept) + "?"
    if kept:
        return f"Did you mean {kept[0]}?"
    above = {}
    parent = ctx.parent if ctx is not None else None
    while parent is not None:  # a group's own options (qwenvl --version), said with the group's path
        above.update({o: parent.command_path for o in longs(parent.command) if o not in options})
        parent = parent.parent
    near = nearest(given, [*options, *above])
    if near is None:
        return None
    return f"Did you mean `{above[near]} {near}`?" if near in above else f"Did you mean {near}?"


def _closest_choice(message: str, choices: Any) -> str | None:
    """ "Did you mean 'native'?" for a value click refused as not one of a flag's choices (``--protocol nativ``),
    from click's message ("'nativ' is not one of ..."); None when no choice is close (``qwenvl.spelling.nearest``)."""
    m = re.search(r"'([^']*)' is not (?:one of|a valid choice)", message)
    return did_you_mean(m[1], [str(c) for c in choices]) if m else None


def _say_click_error(exc: click.ClickException) -> None:
    """click's own errors (a bad flag value, an unknown option or verb, a missing argument) as every other error
    is shown: one ``error:`` line, then a ``hint:`` line (click's "Did you mean ..." when it has one, and where
    the verb's options are listed), instead of click's Usage/Try/Error block. The exit code stays click's (2).
    A group given no verb (``qwenvl``, ``qwenvl batch``) is the exception: its help is shown whole, as click
    shows it (on stderr, exit 2: no command was run), never folded into one line."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        exc.show()
        return
    message = safe_line(exc.format_message())
    command_path = "qwenvl"
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        command_path = exc.ctx.command_path
    listed = "commands" if "No such command" in message else "options"  # `qwenvl asks`: the commands are listed
    hint = f"`{command_path} --help` lists the {listed}."
    near = _DID_YOU_MEAN.search(message)
    said = near[1].strip() if near else None
    if near:
        message = message[: near.start()].rstrip()
    if isinstance(exc, click.NoSuchOption):  # click's own guesses replaced by the one rule's (spelling.nearest)
        said = _closest_options(exc.option_name, exc.ctx)
    elif isinstance(exc, click.BadParameter) and isinstance(getattr(exc.param, "type", None), click.Choice):
        said = _closest_choice(message, exc.param.type.choices)  # type: ignore[union-attr]
    if said:
        hint = f"{said} {hint}"
    own = getattr(exc, "hint", None)  # cli.common.HintedBadParameter: the hint of the fault itself
    if isinstance(own, str) and own:
        hint = own
    console = err_console()
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)


def _say_closed(exc: OutputClosed) -> None:
    """A reader that left (``| head``): no word, as SIGPIPE would end the process; a closed stdout: one line."""
    if not exc.reader_left:
        err_console().print(
            "[bold red]error:[/] standard output is closed: nothing more could be written",
            highlight=False,
            soft_wrap=True,
        )


# The verbs, in the order they were registered; each lives in ``qwenvl.cli.<verb>`` as the function ``<verb>``.
VERBS = (
    "analyze",
    "ask",
    "chat",
    "tokens",
    "ground",
    "ocr",
    "extract",
    "events",
    "batch",
    "usage",
    "models",
    "config",
    "serve",
    "mcp",
    "skill",
)


class _Verbs(MutableMapping[str, click.Command]):
    """The group's commands by name, each verb's module imported when the verb is first looked up: ``qwenvl
    ask`` loads ask's modules, not those of batch, serve or mcp (``qwenvl --help`` lists, so loads, them all).
    Listing the names imports nothing (click's ``list_commands``, its "Did you mean" hints)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = list(names)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            if name not in self._names:
                raise KeyError(name)
            command = getattr(importlib.import_module(f"qwenvl.cli.{name}"), name)
            assert isinstance(command, click.Command) and command.name == name, name
            self._loaded[name] = command
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        if name not in self._names:
            self._names.append(name)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)


@click.group(
    cls=QwenVLGroup,
    commands=_Verbs(VERBS),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name="qwenvl")
def cli() -> None:
    """Ask Qwen-VL models about images, documents and video: in Alibaba Cloud Model Studio (DashScope), or
    on your own hardware (--backend openai for vLLM and other engines, --backend transformers in process).

    \b
    Key: DASHSCOPE_API_KEY, ./.env, ~/.alibabacloud/credentials
         or ~/.dashscope/api_key.
    Exit codes: 0 ok, 2 usage error, 3 input error, 4 authentication,
    5 service or network error, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP,
    141 stdout closed, e.g. by | head (what was paid for is kept).
    """
    ctx = click.get_current_context()
    _warnings_to_stderr(once=ctx.invoked_subcommand not in SERVERS)
    _warn_unknown_variables()


def _warn_unknown_variables() -> None:
    """One warning per ``QWENVL_...`` variable that is set but not read (``qwenvl.env.unknown_variables``): never
    ignored silently. It names the variable meant, or the verb's flag of that name when it has one."""
    ctx = click.get_current_context()
    verb = cli.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
    flags = {o for p in (verb.params if verb else []) for o in getattr(p, "opts", [])}
    for name, close in qenv.unknown_variables():
        flag = "--" + name.removeprefix("QWENVL_").lower().replace("_", "-")
        if close in qenv.BACKEND_ONLY:  # read with one backend only: DashScope's own are as likely meant
            backend, dashscope = qenv.BACKEND_ONLY[close]
            others = " or ".join(f"${v}" for v in dashscope)
            instead = f"for DashScope did you mean {others}? ${close} is read with {backend} only"
        elif close:
            instead = f"did you mean ${close}?"
        elif flag in flags:
            instead = f"give {flag} instead"
        else:
            instead = "see `qwenvl --help` and the README's list of variables"
        logging.getLogger("qwenvl").warning("$%s is not a variable qwenvl reads; it is ignored (%s)", name, instead)


class _WarningLine(logging.Handler):
    """The library's warnings (the ``qwenvl`` logger), as one ``warning:`` line each on stderr; ``once``: each said
    once per run (``qwenvl.notes.SaidOnce``: a warning met again, e.g. the same file planned for an estimate and then
    for its request, or every page of a PDF or every file with its own token count, is not repeated), as for every
    verb but the servers (``SERVERS``: each request's are its own)."""

    def __init__(self, level: int = logging.NOTSET, *, once: bool = True) -> None:
        super().__init__(level)
        self._said = SaidOnce() if once else None  # the one rule of "said once per run" (qwenvl.notes)

    def emit(self, record: logging.LogRecord) -> None:
        from qwenvl.cli.common import fit_line

        said = record.getMessage()
        if self._said is not None and not self._said.first(said):
            return
        # a model name, a path: as the user gave it, escaped; a flag in the verb's words (analyze: a request key)
        message = escape(safe_line(fit_line(said)))
        err_console().print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
        if record.exc_info and record.exc_info[1] is not None:  # attached only with QWENVL_DEBUG (qwenvl serve)
            import traceback

            err_console().print(escape("".join(traceback.format_exception(record.exc_info[1]))), highlight=False)


SERVERS = ("serve", "mcp")  # the verbs that answer requests until stopped: their warnings are each request's


def _warnings_to_stderr(*, once: bool = True) -> None:
    logger = logging.getLogger("qwenvl")
    if not any(isinstance(h, _WarningLine) for h in logger.handlers):
        logger.addHandler(_WarningLine(logging.WARNING, once=once))
        logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="qwenvl")
