"""What the verbs share: options, building a client and a request from them, rendering."""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from qwenvl import env as qenv
from qwenvl import wording
from qwenvl._constants import (
    DEFAULT_MAX_COST,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_S,
    DEFAULT_TIMEOUT_S,
    MAX_DURATION_S,
    MAX_RETRY_DELAY_S,
    MAX_TEXT_FILE_BYTES,
    MIN_TRANSFER_RATE,
    STREAM_CAP_FACTOR,
    STREAM_CAP_MIN_S,
)
from qwenvl.client import Client
from qwenvl.config import BACKENDS, DEVICES, DTYPES, ENGINES, FAMILIES, PROTOCOLS, REGIONS, effective_region
from qwenvl.errors import (
    MediaError,
    QwenVLError,
    StreamInterruptedError,
    StructuredOutputError,
    UsageError,
    blank_error,
    empty_argument,
    safe_line,
    terminal_safe,
    written,
)
from qwenvl.media.sources import classify, first_names, is_reference, looks_like_file, path_hint
from qwenvl.models import answer_cost, answer_paid, currency_of, format_cost, spent_fields, spent_label
from qwenvl.retry import RetryNotice
from qwenvl.structured import load_schema
from qwenvl.types import (
    DuplicateKeyError,
    Request,
    Response,
    request_field_defaults,
    reserved_extra,
    reserved_extra_hint,
)
from qwenvl.types import loads as qloads

_ERR: Console | None = None
_COMMAND_KEY = "qwenvl.command"
_PATH_KEY = "qwenvl.command_path"  # "qwenvl batch run": for the help hint
_GIVEN_KEY = "qwenvl.given"  # the flags given on the verb's command line (``given_flags``)
_KEYS_KEY = "qwenvl.request_keys"  # the keys a verb read from a request the user wrote (``from_request``)
_REGION_KEY = "qwenvl.region"  # the verb's --region, for pricing what an error paid for


def err_console() -> Console:
    """stderr's console, made again when ``sys.stderr`` is another stream (a run in process, e.g. the tests'
    ``CliRunner``), so that each run's terminal, width and colours are its own, as in a process of its own."""
    global _ERR
    if _ERR is None or _ERR.file is not sys.stderr:
        # not a terminal (a log, a pipe): no hard wrapping, so each message stays one line for grep and parsers
        _ERR = Console(file=sys.stderr, highlight=False, soft_wrap=not sys.stderr.isatty())
    return _ERR


def out_console() -> Console:
    """stdout; when it is not a terminal, wide enough that tables are never cut (the file keeps every cell)."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def shown(text: str, stream: IO[str] | None = None) -> str:
    """``text`` from the model or the service as it may be written to ``stream`` (default: stdout): made safe
    (``qwenvl.errors.terminal_safe``: control characters shown escaped, newlines and tabs kept) when the stream
    is a terminal, byte-exact otherwise (a pipe or a file gets the answer as it came). Raises nothing."""
    stream = sys.stdout if stream is None else stream
    try:
        is_terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        is_terminal = False
    return terminal_safe(text) if is_terminal else text


def report(exc: QwenVLError) -> None:
    """An error as the user sees it: one line, then what was kept, then the hint (all on stderr; ``help_hint``
    when the error has none that fits the verb, so every error has one). Lines are
    never hard-wrapped (the terminal wraps them); control characters left in the message or the hint (a file
    name, a URL or a key the user gave: the service's text is ``printable`` already) are shown escaped
    (``qwenvl.errors.safe_line``)."""
    console = err_console()
    message = fit_line(written(exc))  # the verb's words: its flags, or the request keys of analyze
    ctx = click.get_current_context(silent=True)
    stdin_file = ctx.meta.get(_STDIN_KEY) if ctx is not None else None
    if stdin_file:  # the temporary copy of '-' is named as the user gave it
        message = message.replace(stdin_file, "standard input (-)")
    console.print(f"[bold red]error:[/] {escape(safe_line(message))}", highlight=False, soft_wrap=True)
    if isinstance(exc, StreamInterruptedError) and exc.partial_text:
        console.print(f"[dim](kept {len(exc.partial_text)} characters of partial answer)[/]", soft_wrap=True)
    if isinstance(exc, StructuredOutputError):
        show_paid(exc)
    hint = fit_hint(safe_line(exc.raw_hint), current_command()) if exc.raw_hint else ""
    console.print(f"[yellow]hint:[/] {escape(hint or help_hint())}", highlight=False, soft_wrap=True)


def show_paid(exc: StructuredOutputError) -> None:
    """On stderr, what an answer that was not valid for the schema leaves: the raw answer and the ``paid:`` line
    (``used:`` for a local model's). For a failed call (``report``) and for an interrupt during its repair request
    (``qwenvl.client.unrepaired``), so that a paid answer is never dropped unseen."""
    console = err_console()
    if exc.raw_text:
        console.print("[dim]raw answer:[/]", highlight=False)
        console.print(shown(exc.raw_text, sys.stderr), highlight=False, markup=False, soft_wrap=True)
    if isinstance(exc.response, Response):
        label = spent_label(exc.response.protocol)  # "used" for a local model's answer: it cost no money
        console.print(f"[dim]{label}: {escape(paid_line(exc))}[/]", highlight=False, soft_wrap=True)


def help_hint() -> str:
    """The hint of last resort, for an error whose own hint is missing or names nothing this verb takes: where
    the verb's options are listed (``qwenvl batch run --help``), an action that works on every verb."""
    ctx = click.get_current_context(silent=True)
    path = (ctx.meta.get(_PATH_KEY) or ctx.command_path) if ctx is not None else "qwenvl"
    return f"`{path} --help` lists the options."


def current_command() -> click.Command | None:
    """The verb being run (recorded by ``pass_opts``; the innermost command otherwise), or None outside click."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    return ctx.meta.get(_COMMAND_KEY) or ctx.command


# The options through which a verb takes whole requests (JSON): a flag it lacks is a request key there.
_REQUEST_PARAMS = frozenset({"request_json", "request_file", "requests_file"})


def given_flags() -> set[str]:
    """The long flags the user gave on the command line to the verb at hand (none outside click): a hint never
    asks for one of them again (``fit_hint``)."""
    ctx = click.get_current_context(silent=True)
    return set(ctx.meta.get(_GIVEN_KEY, ())) if ctx is not None else set()


def from_request(keys: Collection[str]) -> None:
    """Record the request keys the verb at hand read from a request the user wrote (``analyze --file``): a hint
    then names such a key (``timeout_s``), not the flag that would have set it (``--timeout``), unless the flag
    was given too (``fit_hint``)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_KEYS_KEY] = frozenset(keys)


def _record_given(ctx: click.Context) -> None:
    """The verb's flags given on its command line, kept in ``ctx.meta`` (shared with the group's context, where
    errors are reported after the verb's context has closed)."""
    given: set[str] = set()
    for param in ctx.command.params:
        if param.name and ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE:
            # an on/off pair (--thinking/--no-thinking): only the side given
            said = param.secondary_opts if param.secondary_opts and ctx.params.get(param.name) is False else param.opts
            given.update(o for o in said if o.startswith("--"))
    ctx.meta[_GIVEN_KEY] = given


def fit_hint(hint: str, command: click.Command | None) -> str:
    """A library hint in the words of the verb at hand (``qwenvl.wording``: the one home of the rules). Hints name
    flags (``--max-pixels``), sometimes beside the library's name for the same thing (``--no-resize /
    prepare=False``). For a verb that has the flag the flag is kept alone. For one that lacks it: a verb that takes
    JSON requests (``analyze``, ``batch --requests``) gets the request key it sets (``types.FIELD_FLAGS``:
    ``--param`` -> ``extra``), with a value as the JSON writes it (``--fetch-urls / fetch_urls=True`` ->
    ``"fetch_urls": true``); else the environment variable that stands for the flag (``--region cn`` ->
    ``QWENVL_REGION=cn``: ``qwenvl.env.FLAG_VARIABLES``); else a parenthesis of flags alone is left out, and a
    sentence that still names a flag the verb lacks is dropped (no hint when none is left), and so is one that
    asks for a flag the user already gave (``--base-url`` given: never "give the endpoint itself with
    --base-url"). Shell commands in backticks are left as they are. Returns "" when nothing of the hint applies."""
    if command is None:
        return hint
    return wording.fit_hint(hint, verb_surface(command))


def fit_line(text: str) -> str:
    """A message, warning or note the library wrote (in CLI flags, sometimes beside its own names: ``--no-resize /
    prepare=False``) in the words of the verb at hand (``verb_surface``): a flag the verb has stays, one it lacks
    becomes the request key of a verb that takes requests (``analyze``: ``raise --max-tokens`` -> ``raise
    max_tokens``) or the environment variable that stands for it; nothing is left out (``wording.fit_message``).
    As written outside a verb. Raises nothing."""
    command = current_command()
    if command is None or isinstance(command, click.Group):  # before a verb is chosen: as written
        return text
    return wording.fit_message(text, verb_surface(command, message=True))


def _json_value(value: str) -> str:
    """A value as a hint writes it after a flag or a keyword (``True``, ``file``, ``4096``), as JSON writes it."""
    if value in ("True", "False"):
        return value.lower()
    if re.fullmatch(r"-?\d+(?:\.\d+)?", value):
        return value
    return json.dumps(value.strip("'\""))


def verb_surface(command: click.Command, *, message: bool = False) -> wording.Surface:
    """How ``command`` (a verb) names each flag a message or hint of the library names (``fit_hint``,
    ``fit_line``): its own flags; a request key where it takes JSON requests; an environment variable; flags the
    user gave are never asked for again. ``message``: for a message (what happened), where a verb that has the flag
    and also takes requests keeps both names (``--thinking / enable_thinking changed``: either may have set it)."""
    flags = {o for p in command.params for o in [*p.opts, *p.secondary_opts] if o.startswith("--")}
    takes_requests = any(p.name in _REQUEST_PARAMS for p in command.params)
    ctx = click.get_current_context(silent=True)
    given = given_flags()
    written = ctx.meta.get(_KEYS_KEY, ()) if ctx is not None else ()

    def keyed(flag: str) -> bool:  # a key the user wrote in the request (analyze's timeout_s): named as written
        return flag not in given and wording.field_of(flag) in written

    def request_key(flag: str) -> str | None:
        if keyed(flag) or (takes_requests and flag not in flags and wording.field_of(flag) in Request.model_fields):
            return wording.field_of(flag)
        return None

    def name(flag: str) -> str | None:  # the flag as this verb can take it, or None
        if keyed(flag):
            return wording.field_of(flag)
        if flag in flags:
            return flag
        return request_key(flag) or qenv.FLAG_VARIABLES.get(flag)

    def pair(flag: str, other: str) -> str:  # the library's name only where the verb takes requests: never "Use tools"
        key = request_key(flag)
        if key is not None:  # "fetch_urls=True" in a JSON request: "fetch_urls": true
            _, eq, value = other.partition("=")
            return f'"{key}": {_json_value(value)}' if eq else key
        if flag in flags:
            return f"{flag} / {other}" if message and takes_requests else flag
        return other if takes_requests else qenv.FLAG_VARIABLES.get(flag, flag)

    def with_value(flag: str, value: str) -> str | None:  # "--region cn" on a verb without it: "QWENVL_REGION=cn"
        key = request_key(flag)
        if key is not None:
            return f'"{key}": {_json_value(value)}'
        said = name(flag)
        return None if said is None or said.startswith("--") else f"{said}={value}"

    def quoted(flag: str, value: str) -> str | None:  # '--prompt "..."' in a request: '"prompt": "..."'
        key = request_key(flag)
        return f'"{key}": {value}' if key is not None else None

    written_flags = {f"--{k.replace('_', '-')}" for k in written} | {
        f for f, k in wording.FLAG_FIELDS.items() if k in written
    }
    keeps = flags | {f for f in written_flags if keyed(f)}
    return wording.Surface(name=name, pair=pair, with_value=with_value, quoted=quoted, keeps=keeps, given=given)


class FiniteFloat(click.FloatRange):
    """click.FloatRange for every float option of the CLI (one home): also refuses ``inf`` and ``nan`` while
    parsing (exit 2, the option named), which Python's ``float()`` accepts and FloatRange lets through (``nan``
    fails no comparison; ``inf`` has no maximum to pass). No option takes ``inf`` for "no limit": where there is
    none, the option is left out (``--max-cost``: ``--yes``)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if isinstance(number, float) and not math.isfinite(number):
            hint = "Give digits (e.g. 0.5 or 30), or leave the option out for its default."
            raise HintedBadParameter(f"{value!r} is not a finite number", hint, ctx, param)
        return number


def max_cost_options(fn: Callable) -> Callable:
    """``--max-cost`` (default ``DEFAULT_MAX_COST``, in the region's currency) and ``-y/--yes``: the cost cap of
    every verb that sends many requests (``batch``; ``ocr``, one request per PDF page), checked by
    ``confirm_cost``. One home for the options, their default and their help."""
    fn = click.option("-y", "--yes", is_flag=True, help="Run whatever the estimated cost.")(fn)
    return click.option(
        "--max-cost",
        type=FiniteFloat(min=0),
        default=DEFAULT_MAX_COST,
        show_default=True,
        help="In the region's currency (CNY in cn, USD in intl/us): above this estimate, ask (on a "
        "terminal) or refuse (elsewhere) unless --yes.",
    )(fn)


def confirm_cost(est: Any, opts: dict[str, Any], what: str) -> float | None:
    """Go on, ask or refuse before sending, by the estimate ``est`` (``qwenvl.batch.runner.Estimate``) and the
    verb's ``--max-cost``/``--yes`` (``max_cost_options``): within the cap, or with ``--yes``, go on; above it,
    ask on a terminal ("``what`` may cost ... Run it?") and refuse elsewhere (UsageError, exit 2: nothing was
    sent); a cap that cannot be checked (a model with no price: ``unpriced_error``) is refused, on a terminal too.
    A local model has no price: a ``--max-cost`` given is said not to apply. The one home of the CLI's cost cap.
    Returns the cap in force for the run's spend (``qwenvl.batch.runner.SpendCap``, ``Batch.run(max_cost=)``):
    ``--max-cost``, or the estimate's most when it was confirmed above it; None with ``--yes``, no cap, or a local
    model."""
    from qwenvl.batch.runner import unpriced_error, within_budget

    max_cost = opts["max_cost"]
    if est.local:  # no price: the budget cannot be exceeded; a --max-cost given is said not to apply, not refused
        ctx = click.get_current_context()
        if ctx.get_parameter_source("max_cost") not in (None, click.core.ParameterSource.DEFAULT):
            click.echo("note: --max-cost does not apply: a local model has no price, so the run goes on", err=True)
        return None
    if opts["yes"] or max_cost is None or math.isinf(max_cost):
        return None
    if within_budget(est, max_cost):
        return float(max_cost)
    unpriced = unpriced_error(est, f"--max-cost {max_cost:g}")
    if unpriced is not None:  # an unknown cost is never taken for 0: refused, on a terminal too
        raise unpriced
    text = f"up to {format_cost(est.cost_max, est.currency)}, above --max-cost {format_cost(max_cost, est.currency)}"
    if sys.stdin.isatty() and err_console().is_terminal:
        if click.confirm(f"{what} may cost {text}. Run it?", default=False, err=True):
            return max(float(max_cost), est.cost_max or 0.0)
        raise UsageError("not confirmed: nothing was sent", hint="Raise --max-cost, or pass --yes to run it anyway.")
    raise UsageError(
        f"the estimated cost is {text}: nothing was sent", hint="Pass --yes to run it anyway, or raise --max-cost."
    )


class Seconds(FiniteFloat):
    """Every duration option of the CLI (``--timeout``, ``--poll-interval``, ``--request-timeout``): a finite
    number of seconds above ``min`` (or from it, ``min_open=False``) and at most ``MAX_DURATION_S`` (a day), the
    library's rule (``qwenvl.types.seconds``); else exit 2 naming the option."""

    def __init__(self, min: float = 0, min_open: bool = True) -> None:
        super().__init__(min=min, max=MAX_DURATION_S, min_open=min_open)


class FileName(click.types.StringParamType):
    """A file name, folder or URL argument/option: kept as the system gave it (a name that is not UTF-8 still
    names a real file, ``os.fsencode`` gives its bytes back), so never checked as text (``refuse_non_utf8``).
    Every other text option or argument is request text, and must be UTF-8."""

    name = "text"  # as click.STRING in --help

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        """Shell completion: the shell's file names (``qwenvl.cli.completion``)."""
        from qwenvl.cli.completion import file_items

        return file_items(incomplete)


FILE_NAME = FileName()


def utf8_text(value: str, what: str) -> str:
    """``value`` as given when it is UTF-8 text. A command line, an environment variable or standard input that
    is not UTF-8 reaches Python with each bad byte kept as a lone surrogate (PEP 383 ``surrogateescape``), which
    no request can carry (JSON over HTTP is UTF-8): UsageError (exit 2) naming ``what`` ("-p/--prompt",
    "standard input (-p -)"), the value shown with its bad bytes escaped (``\\udce9`` for byte 0xe9)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"{what} is not UTF-8 text: {safe_line(value)[:80]}",
            hint="Give it as UTF-8 (convert it with e.g. `iconv -f latin1 -t utf-8`), or set a UTF-8 locale "
            "in the terminal.",
        ) from None
    return value


def _strings(value: Any) -> Iterator[str]:
    """Every string in an option's value: itself, a tuple's items (``--stop``), a dict's keys and values
    (``--param``), nested."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)


def param_label(param: click.Parameter) -> str:
    """How the user names a parameter: its flags (``-p/--prompt``), or an argument's metavar (``QUERY``)."""
    if isinstance(param, click.Option):
        return "/".join(param.opts)
    return param.human_readable_name


def refuse_non_utf8(ctx: click.Context, opts: dict[str, Any]) -> None:
    """The one check that every text option and argument of a verb is UTF-8 (``utf8_text``), run for every verb
    by ``pass_opts`` before the verb starts; file names (``FileName``) are left as they are. A prompt among the
    MEDIA arguments is checked where it is told from the files (``prompt_and_media``), standard input where it
    is read (``stdin_text``)."""
    for param in ctx.command.params:
        if param.name is None or isinstance(param.type, FileName):
            continue
        for text in _strings(opts.get(param.name)):
            utf8_text(text, param_label(param))


def refuse_blank(ctx: click.Context, opts: dict[str, Any]) -> None:
    """The one rule for an option or argument given as "" or only spaces (``--session ""``, ``--model " "``,
    ``-o ""``, ``qwenvl ground photo.jpg ""``): a usage error (exit 2) naming it, never silently the default,
    nothing, or an input error. No text option of the CLI means
    anything when blank (a name, a path, a URL, a prompt, a stop sequence); ``--param KEY=`` is a value (JSON or
    text, "" included) and stays one. Run for every verb by ``pass_opts``; only what was given on the command
    line is checked."""
    for param in ctx.command.params:
        if isinstance(param, click.Argument) and param.name is not None:  # a blank argument: one rule, every verb
            if any(isinstance(v, str) and not v.strip() for v in _strings(opts.get(param.name))):
                takes_files = any(isinstance(p, click.Argument) and p.type is FILE_NAME for p in ctx.command.params)
                if takes_files and param.type is not FILE_NAME and param.nargs == 1:  # a text beside a file: a query
                    raise UsageError(f"the {param.name} is empty", hint=f"Give the {param.name} as words, in quotes.")
                raise empty_argument()
            continue
        if not isinstance(param, click.Option) or param.name is None or param.is_flag or param.name == "extra":
            continue
        if ctx.get_parameter_source(param.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        if any(isinstance(v, str) and not v.strip() for v in _strings(opts.get(param.name))):
            if param.name == "prompt":
                raise UsageError(
                    "the prompt is empty", hint='Give the question as words, e.g. "What is in this picture?".'
                )
            raise _blank_option(ctx, param)


_DEFAULT_IN_HELP = re.compile(r"\(default:? ([^),;]+)")  # "(default 512)", "(default: all)"


def _blank_option(ctx: click.Context, param: click.Option) -> UsageError:
    """The blank-value error for ``param`` with a hint true for it (``errors.blank_error``): a required option
    (click's ``required``, or one its verb needs: ``Verb.needs``) is to be given; an output file left out is not
    written (or the result goes to stdout); another option left out takes its default, named when its help or
    its click default says it (nothing said when it has none)."""
    flag = max(param.opts, key=len)
    what = "a file" if param.type is FILE_NAME else "a value"
    needs = getattr(ctx.command, "needs", ())
    if param.required or param.name in needs:
        return blank_error(param_label(param), flag, required=True, what=what)
    text = param.help or ""
    if "instead of stdout" in text:
        left_out = "to print the result on stdout"
    elif param.type is FILE_NAME and text.startswith(("Write", "Also write")):
        left_out = "to not write one"
    elif (m := _DEFAULT_IN_HELP.search(text)) is not None:
        left_out = f"for the default ({m[1].strip()})"
    elif (default := param.to_info_dict()["default"]) not in (None, ()) and not callable(default):
        left_out = f"for the default ({default})"
    else:  # no default: left out, it is not given (no system prompt, no session)
        left_out = ""
    return blank_error(param_label(param), flag, what=what, left_out=left_out)


class Verb(click.Command):
    """Every verb's command class: an option that takes one value given twice (``-p hi -p again``,
    ``--thinking --no-thinking``) is a usage error (exit 2) naming it, where click would keep the last one
    silently. Repeatable options (``--stop``, ``--param``) and plain flags said twice (``--json --json``, which
    mean the same) are not refused."""

    def __init__(self, *args: Any, needs: Collection[str] = (), **kwargs: Any) -> None:
        """``needs``: the names of options the verb requires though click does not (a shared option such as
        ``--schema``, which ``extract`` alone requires): a blank one is then said to be required."""
        super().__init__(*args, **kwargs)
        self.needs = frozenset(needs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not ctx.resilient_parsing:
            _, _, order = self.make_parser(ctx).parse_args(args=list(args))  # click's own errors: raised as click's
            seen: set[str] = set()
            for param in order:
                if not isinstance(param, click.Option) or param.multiple or param.count or param.name is None:
                    continue
                if param.is_flag and not param.secondary_opts:
                    continue
                if param.name in seen:
                    self.given_twice(ctx, "/".join([*param.opts, *param.secondary_opts]))
                seen.add(param.name)
        given = list(args)  # click's parser consumes the list it is given
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if "unexpected extra argument" in exc.message:
                self._refuse_extra_files(ctx, given)
            raise

    def given_twice(self, ctx: click.Context, label: str) -> None:
        """An option that takes one value (``label``: its flags) given twice: a usage error (exit 2) naming it, never
        one value picked silently. A verb that must take the last one (a drop-in for an argparse script) overrides
        this."""
        twice = HintedUsageError(f"{label} is given twice: it takes one value", ctx)
        twice.hint = f"Give {label} once (no value is picked silently)."
        raise twice

    def invoke(self, ctx: click.Context) -> Any:
        """Run the verb, each use of standard input (``-``) it was given recorded first (``take_stdin``, in the
        order: MEDIA arguments, then options as declared), so that two uses are refused before either is read,
        whatever order the verb reads them in."""
        if not ctx.resilient_parsing:
            params = sorted(self.params, key=lambda p: not isinstance(p, click.Argument))
            for param in params:
                value = ctx.params.get(param.name or "")
                values = value if isinstance(value, (tuple, list)) else (value,)
                if STDIN not in values:
                    continue
                if isinstance(param, click.Argument) and param.type is FILE_NAME:
                    take_stdin("a file (-)")
                elif param.name in STDIN_OPTIONS:
                    take_stdin(STDIN_OPTIONS[param.name])
        return super().invoke(ctx)

    def _refuse_extra_files(self, ctx: click.Context, args: list[str]) -> None:
        """More files than a verb of fixed arguments takes (``qwenvl ocr a.png b.jpg c.png``, ``qwenvl ground a.png
        b.jpg "red"``): said as the glob case says it (how many, the first names), not as click's "unexpected extra
        arguments", which also took a file for the query. Returns when the extra words are not files."""
        values, extra, _ = self.make_parser(ctx).parse_args(args=list(args))
        arguments = [p for p in self.params if isinstance(p, click.Argument) and p.name is not None]
        given = [str(values[p.name]) for p in arguments if isinstance(values.get(p.name), str)] + extra
        files = [word for word in given if is_reference(word) or looks_like_file(word)]
        takes = sum(1 for p in arguments if p.type is FILE_NAME and p.nargs == 1)
        if takes and len(files) > takes:
            name = ctx.info_name or self.name
            error = HintedUsageError(
                f"{len(files)} files given ({first_names(files)}), and `qwenvl {name}` takes one", ctx
            )
            error.hint = f"Run it once per file (e.g. a shell loop), or see `qwenvl {name} --help`."
            raise error
        words = [word for word in given if word not in files]
        if takes and len(words) > 1 and any(p.type is not FILE_NAME for p in arguments):  # a query, unquoted
            error = HintedUsageError(f"{len(words)} words given where `qwenvl {ctx.info_name}` takes one query", ctx)
            error.hint = f'Quote it as one argument: "{" ".join(words)}".'
            raise error


def option_group(*decorators: Callable) -> Callable:
    """One decorator applying ``decorators`` (click options) in the order given: the first is listed first."""

    def wrap(fn: Callable) -> Callable:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return wrap


retry_backoff_option = click.option(
    "--retry-backoff-s",
    type=FiniteFloat(min=0),
    help=f"Exponential backoff base in seconds (default {DEFAULT_RETRY_BACKOFF_S:g}; 0: retry at once).",
)
model_option = click.option(
    "-m", "--model", metavar="NAME", help="Model name or snapshot (default qwen3-vl-plus, or $QWENVL_MODEL)."
)
region_option = click.option(
    "--region",
    metavar="REGION",
    help=f"Service region: {', '.join(REGIONS)} (default cn = Beijing, or $QWENVL_REGION).",
)

# --model --protocol --region --base-url and network settings: every verb that talks to a model.
service_options = option_group(
    model_option,
    click.option(
        "--protocol",
        type=click.Choice(PROTOCOLS, case_sensitive=False),
        help="Wire protocol: compat (DashScope's OpenAI-compatible mode, default, or $QWENVL_PROTOCOL), native "
        "(DashScope's own) or openai (plain OpenAI for other servers; implies --backend openai).",
    ),
    region_option,
    click.option(
        "--base-url",
        metavar="URL",
        help="Endpoint, e.g. http://127.0.0.1:8100 (a qwenvl serve) or https://…/compatible-mode/v1 (wins over "
        "--region for the endpoint; the region still sets prices and currency).",
    ),
    click.option(
        "--timeout",
        "timeout_s",
        type=Seconds(),
        metavar="SECONDS",
        help=f"Seconds per attempt (default {DEFAULT_TIMEOUT_S:g}): the whole reply must arrive within it, "
        "however slowly it trickles. A stream must send its first token within it and never pause longer, and "
        f"ends after {STREAM_CAP_FACTOR:g} times as long (at least {STREAM_CAP_MIN_S / 60:g} min). Also bounds "
        "each --fetch-urls download, and each upload to temporary storage "
        f"(plus 1 s per {MIN_TRANSFER_RATE // 1000} kB). At most {MAX_DURATION_S:g} (a day).",
    ),
    click.option(
        "--max-retries",
        type=click.IntRange(min=0),
        help="Retries on 429/5xx/time-outs, also when a stream opens with one "
        f"(default {DEFAULT_MAX_RETRIES}; 0: none); each wait is at most {MAX_RETRY_DELAY_S:g} s (batch: a 429 "
        "slows the batch down instead, see its help).",
    ),
    retry_backoff_option,
    # where the model runs: DashScope, an OpenAI-compatible server, or this process (qwenvl.backends)
    click.option(
        "--backend",
        type=click.Choice(BACKENDS, case_sensitive=False),
        help="dashscope (default, or $QWENVL_BACKEND), openai (vLLM, SGLang, llama.cpp, Ollama... at "
        "--base-url, default http://127.0.0.1:8000/v1) or transformers (in process; --model is a "
        "hub id or folder).",
    ),
    click.option(
        "--engine",
        type=click.Choice(ENGINES, case_sensitive=False),
        help="--backend openai: the server's engine (default auto: detected).",
    ),
    click.option(
        "--family",
        type=click.Choice(FAMILIES, case_sensitive=False),
        help="A local model's family when its name does not say (pixel rule, budget, boxes).",
    ),
    click.option(
        "--device",
        type=click.Choice(DEVICES),
        help="--backend transformers: where the model runs (default auto).",
    ),
    click.option(
        "--dtype", help=f"--backend transformers: the weights' precision: {', '.join(DTYPES)} (default auto)."
    ),
    click.option("--attn-implementation", help="--backend transformers: sdpa, eager, flash_attention_2..."),
)

BACKEND_OPTIONS = ("backend", "engine", "family", "device", "dtype", "attn_implementation")


_PYTHON_WORDS = {"true": True, "false": False}  # --param enable_search=False: the bool, not the string "False"


def param_value(raw: str) -> Any:
    """A ``--param`` VALUE: JSON when it parses (``1`` an int, ``0.5`` a float, ``false`` a bool, ``["a"]`` a list,
    ``{...}`` an object, ``null`` None), ``True``/``False`` in any case as the bools, else the text as given (``""``
    included). Raises DuplicateKeyError (a ValueError) for a JSON object that gives a key twice."""
    try:
        return qloads(raw)
    except json.JSONDecodeError:
        return _PYTHON_WORDS.get(raw.strip().lower(), raw)


def _finite(value: Any) -> bool:
    """Whether no float in ``value`` (nested in lists and dicts) is NaN or infinite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


class HintedUsageError(click.UsageError):
    """click.UsageError (exit 2) with the ``hint:`` line to show for it (``main._say_click_error``)."""

    hint = ""


class HintedBadParameter(click.BadParameter):
    """click.BadParameter (exit 2) with the ``hint:`` line to show for it (``main._say_click_error``)."""

    def __init__(self, message: str, hint: str, ctx: click.Context | None, param: click.Parameter | None) -> None:
        super().__init__(message, ctx=ctx, param=param)
        self.hint = hint


def _param(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """``--param KEY=VALUE``s as a dict (values: ``param_value``). HintedBadParameter (exit 2) for an item that
    is not KEY=VALUE, a key given twice, a JSON value that gives a key twice (never the last one silently), a
    value holding NaN or Infinity (no JSON request can carry them), or
    a key that is a request field or a wire key qwenvl builds (``types.reserved_extra``: the hint names the
    verb's own option for it)."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            hint = "Give it as --param KEY=VALUE, e.g. --param enable_search=true (VALUE is JSON or text)."
            raise HintedBadParameter(f"{item!r} is not KEY=VALUE", hint, ctx, param)
        if key in out:
            hint = f"Keep one --param {key}=...; the value of each is sent as given, so two would be ambiguous."
            raise HintedBadParameter(f"'{key}' is given twice: give each parameter once", hint, ctx, param)
        if reserved_extra(key, Request.model_fields) is not None:
            hint = fit_hint(reserved_extra_hint([key]), ctx.command) or help_hint()
            raise HintedBadParameter(f"'{key}' cannot be given with --param", hint, ctx, param)
        try:
            out[key] = param_value(raw)
        except DuplicateKeyError as exc:
            hint = "Give each key of a JSON object once."
            raise HintedBadParameter(f"{key}: {exc}", hint, ctx, param) from None
        if not _finite(out[key]):  # Python's JSON reads NaN and Infinity; no JSON request can carry them
            hint = f"Give a number, e.g. --param {key}=0.5 (JSON has no NaN or Infinity)."
            raise HintedBadParameter(f"{key}: {raw!r} is not a finite number", hint, ctx, param)
    return out


# The flags that set a media option only some media read (``qwenvl.media.sources.OPTION_MEDIA``), by Request field
_MEDIA_OPTION_FLAGS = {
    "pages": ("--pages",),
    "fps": ("--fps",),
    "video_as": ("--video-as",),
    "detail": ("--detail",),
    "vl_high_resolution_images": ("--high-res", "--no-high-res"),
    "prepare": ("--no-resize",),
}


def media_flag_names() -> dict[str, str]:
    """The media options only some media read (``qwenvl.media.sources.OPTION_MEDIA``) that the user gave to the
    verb at hand, by Request field, each as the flag given (``{"vl_high_resolution_images": "--no-high-res"}``).
    A flag given with the value that does nothing (``--detail auto``) is not given: ``media.sources.option_given``,
    the library's rule too. Raises nothing."""
    from qwenvl.media.sources import option_given

    given = given_flags()
    ctx = click.get_current_context(silent=True)
    params = {**(ctx.params if ctx is not None else {}), "prepare": not (ctx and ctx.params.get("no_resize"))}
    named: dict[str, str] = {}
    for name, flags in _MEDIA_OPTION_FLAGS.items():
        flag = next((f for f in flags if f in given), None)
        if flag is not None and option_given(name, params.get(name, flag)):
            named[name] = flag
    return named


def check_pages_apply(
    opts: dict[str, Any], refs: list[str] | tuple[str, ...], option: str = "--pages", *, frames: bool = False
) -> None:
    """An option given that does not apply to MEDIA is refused (exit 2) naming it, never ignored
    (``qwenvl.media.sources.check_options_apply``, the one rule, and ``OPTION_MEDIA``): ``--pages`` (ground's
    ``--page``) where no MEDIA is a PDF, or might be one; ``--fps`` or ``--video-as`` where none is a video;
    ``--detail``, ``--high-res`` / ``--no-high-res`` where none is an image or PDF (video frames have a budget of
    their own); ``--no-resize`` where none is an image file (a PDF page is rendered, a video sampled).
    ``frames``: several MEDIA are one frame list (``events``), which takes ``--fps`` but not ``--video-as``.
    The one call every verb makes."""
    from qwenvl.media.sources import check_options_apply, ref_kinds

    named = media_flag_names()
    named.pop("pages", None)
    if opts.get(option.lstrip("-")):
        named["pages"] = option
    if named and refs:
        check_options_apply(named, ref_kinds(refs, frames=frames))
    elif named:  # no MEDIA at all: a PDF's or a video's options apply to nothing (those of images are left)
        check_options_apply({k: v for k, v in named.items() if k in ("pages", "fps", "video_as")}, frozenset())


def check_pages(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--pages`` checked while parsing, whatever the files (``qwenvl.media.pdf.check_page_spec``: bad syntax,
    page 0, a reversed range such as ``3-1``): HintedBadParameter (exit 2). "" is left to ``refuse_blank``."""
    if value is not None and value.strip():
        from qwenvl.media.pdf import check_page_spec  # pypdfium2 loads only when --pages is given

        try:
            check_page_spec(value)
        except UsageError as exc:
            raise HintedBadParameter(written(exc), exc.raw_hint or "", ctx, param) from None
    return value


def generation_options_for(*, max_tokens: str | None = None, leave_out: Collection[str] = ()) -> Callable:
    """The options of what the model is asked and how, as one verb takes them: ``max_tokens`` is the default its
    ``--max-tokens`` help shows (what the verb sends when it is not given; default: ``Request``'s, 512), and
    ``leave_out`` names the options (by their long flag, e.g. ``"--fps"``) the verb does not take, hidden from its
    ``--help`` so that it lists only what it reads (``ocr`` and ``ground`` take no video, ``events`` no PDF and no
    image budget, the task verbs their own answer format); still parsed, so that giving one is refused in the
    verb's words. Raises nothing."""
    defaults = request_field_defaults()
    max_tokens = max_tokens or str(defaults["max_tokens"])
    options = [
        click.option("--system", help="System prompt."),
        click.option(
            "--max-tokens", type=click.IntRange(min=1), help=f"Longest answer in tokens (default {max_tokens})."
        ),
        click.option(
            "-t",
            "--temperature",
            type=FiniteFloat(0, 2, max_open=True),
            help=f"Sampling temperature (default {defaults['temperature']:g}).",
        ),
        click.option("--top-p", type=FiniteFloat(0, 1, min_open=True), help="Nucleus sampling, in (0, 1]."),
        click.option("--top-k", type=click.IntRange(min=0), help="Sample among the k likeliest tokens (0 or more)."),
        click.option(
            "--seed", type=click.IntRange(0, 2**31 - 1), help="Random seed in [0, 2^31-1], for repeatable answers."
        ),
        click.option("--stop", multiple=True, help="Stop sequence (repeatable)."),
        click.option(
            "--detail",
            type=click.Choice(["auto", "low", "high"]),
            help="Image detail: auto = the model's default budget, low = smaller budget, high = "
            "vl_high_resolution_images.",
        ),
        click.option(
            "--high-res/--no-high-res",
            "vl_high_resolution_images",
            default=None,
            help="vl_high_resolution_images: up to 16384 tokens per image.",
        ),
        click.option("--min-pixels", type=click.IntRange(min=1), help="Smallest pixel count an image is resized to."),
        click.option(
            "--max-pixels", type=click.IntRange(min=1), help="Largest pixel count an image is resized to (its budget)."
        ),
        click.option("--fps", type=FiniteFloat(min=0, min_open=True), help="Video sampling rate (default 2)."),
        click.option("--pages", callback=check_pages, help='PDF pages to send, e.g. "1-3,5" (default: all).'),
        click.option("--no-resize", "no_resize", is_flag=True, help="Send files as they are (still checked)."),
        click.option(
            "--fetch-urls",
            is_flag=True,
            help="Download remote images and PDFs and prepare them here (large or "
            "private ones); time-out, size cap and redirects limited.",
        ),
        click.option(
            "--video-as",
            type=click.Choice(["frames", "file"]),
            help="A local video: sampled here into frames (default), or sent whole for the service to "
            "sample (uploaded; native protocol).",
        ),
        click.option(
            "--upload",
            type=click.Choice(["auto", "inline", "oss"]),
            help="Local files via DashScope's temporary storage (native protocol): auto uploads what "
            "does not fit inline (default), oss always, inline never.",
        ),
        click.option("--json-mode", is_flag=True, help="Ask for a JSON answer and parse it."),
        click.option(
            "--schema",
            "schema_file",
            type=FILE_NAME,
            metavar="FILE",
            help="JSON Schema file: the answer is validated against it ('-' reads it from stdin).",
        ),
        click.option(
            "--thinking/--no-thinking",
            "enable_thinking",
            default=None,
            help="enable_thinking (Qwen3-VL): reason before answering.",
        ),
        click.option(
            "--thinking-budget",
            type=click.IntRange(min=1),
            help="Most tokens spent thinking; needs --thinking (or a model that always thinks).",
        ),
        click.option(
            "--param",
            "extra",
            multiple=True,
            callback=_param,
            metavar="KEY=VALUE",
            help="Any other service parameter (VALUE read as JSON when it can be, True/False as bools, else as "
            "text); not one qwenvl sets itself (model, messages, temperature...: use their options). A misspelt "
            "name or a key given twice is refused; a name qwenvl does not know is sent with a warning.",
        ),
    ]
    return option_group(*(_hidden(o) if set(_long_flags(o)) & set(leave_out) else o for o in options))


def _hidden(decorator: Callable) -> Callable:
    """``decorator`` (a click option) with its option hidden from ``--help``: still parsed, so that giving it is
    refused in the verb's own words (``check_pages_apply``, ``refuse_structured``), not as an unknown option."""

    def wrap(fn: Callable) -> Callable:
        fn = decorator(fn)
        fn.__click_params__[-1].hidden = True  # type: ignore[attr-defined]  # click appends the option last
        return fn

    return wrap


def _long_flags(decorator: Callable) -> list[str]:
    """The long flags of a click option decorator (``--high-res``, ``--no-high-res``), read by applying it to a
    throwaway function. Raises nothing."""

    def probe() -> None: ...

    params = getattr(decorator(probe), "__click_params__", [])
    return [f for p in params for f in (*p.opts, *p.secondary_opts) if f.startswith("--")]


# What the model is asked and how: ask, chat and batch (the task verbs: ``generation_options_for``).
generation_options = generation_options_for()
# The options of a video only, of a PDF only, of the image budget, and of the answer's format: left out of the
# verbs that take no such media or ask for their own format.
VIDEO_FLAGS = ("--fps", "--video-as")
IMAGE_BUDGET_FLAGS = ("--detail", "--high-res")
ANSWER_FORMAT_FLAGS = ("--json-mode", "--schema")
# Thinking: left out of the verb whose answer is always JSON (``events``), which Qwen-VL gives only without it.
THINKING_FLAGS = ("--thinking", "--thinking-budget")

_REQUEST_FROM_OPTIONS = (
    "model",
    "timeout_s",
    "max_retries",
    "retry_backoff_s",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "detail",
    "vl_high_resolution_images",
    "min_pixels",
    "max_pixels",
    "fps",
    "json_mode",
    "enable_thinking",
    "thinking_budget",
    "upload",
    "fetch_urls",
    "video_as",
    "pages",
)
# On/off flags (is_flag): False is only their default, never something the user said.
_PLAIN_FLAGS = frozenset({"json_mode", "fetch_urls"})


def request_fields(opts: dict[str, Any]) -> dict[str, Any]:
    """Request fields from the options that were given: only None means 'not given'.

    A value of 0 or False is a value (``--temperature 0``, ``--seed 0``, ``--top-k 0``, ``--max-retries 0``,
    ``--retry-backoff-s 0``, ``--no-thinking``, ``--no-high-res``) and reaches the Request as given; the
    options' ranges and the Request decide what is valid (``--timeout 0`` is a usage error, exit 2)."""
    fields = {}
    for key in _REQUEST_FROM_OPTIONS:
        value = opts.get(key)
        if value is None or (key in _PLAIN_FLAGS and value is False):
            continue
        fields[key] = value
    if opts.get("stop"):
        fields["stop"] = list(opts["stop"])
    if opts.get("schema_file"):
        fields["schema"] = schema_option(opts["schema_file"])
    if opts.get("no_resize"):
        fields["prepare"] = False
    if opts.get("extra"):
        fields["extra"] = dict(opts["extra"])
    return fields


def backend_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The --backend group's values that were given, plus the model for a local backend, or when given (the
    client's model: what a server in front of a local model says of it, ``Client.served_model``, is of that one)."""
    backend = {k: opts[k] for k in BACKEND_OPTIONS if opts.get(k)}
    if backend.get("backend", "").lower() not in ("", "dashscope") or qenv.backend() or opts.get("model"):
        backend["model"] = opts.get("model")
    return backend


def make_client(opts: dict[str, Any], *, will_send: bool | None = None) -> Client:
    """The Client the options ask for (the model goes with the request, except for a local backend, where it
    also tells the backend which model to load or use). Inside a click command it is closed when the command
    ends, whatever way (its connections, and a local engine's probe, are not left open).

    ``will_send`` (default: unless ``opts["dry_run"]``): the verb is going to send, so a missing DashScope key
    is raised here (MissingAPIKeyError, exit 4), before any slow or interactive work (planning, sampling a
    video, the chat's banner); local backends need no key (``Client.check_key``)."""
    on_retry = show_retry if err_console().is_terminal else None
    client = Client(
        protocol=opts.get("protocol"),
        region=opts.get("region"),
        base_url=opts.get("base_url"),
        on_retry=on_retry,
        **backend_options(opts),
    )
    ctx = click.get_current_context(silent=True)
    if ctx is not None:  # closed when the verb ends, however it ends (a dry run, an error while planning)
        ctx.call_on_close(client.close)
    if will_send if will_send is not None else not opts.get("dry_run"):
        client.check_key()
    return client


def show_retry(notice: RetryNotice) -> None:
    """A retry's wait, on a terminal: "rate limited, retrying in 4 s (2/3)"."""
    err_console().print(f"[dim]{escape(shown(notice.describe(), sys.stderr))}[/]", highlight=False)


STDIN = "-"  # as a MEDIA argument: the file comes on standard input


def _is_reference(arg: str) -> bool:
    """A file that exists, a URL, a data: URL (``media.sources.is_reference``) or ``-``: never the prompt."""
    return arg == STDIN or is_reference(arg)


def _not_found(arg: str, *, prompt_hint: bool) -> MediaError:
    """A MEDIA argument that names nothing: the path hint on every verb (``path_hint``), and, only where the verb
    needs a prompt and has none (``ask``), that the argument may be the prompt (``-p``)."""
    hint = path_hint(Path(arg).expanduser())
    if prompt_hint:
        hint += ' If it is the prompt, give it with -p "...".'
    return MediaError(f"file not found: {arg}", source=arg, hint=hint)


def expand_media(args: tuple[str, ...] | list[str], *, folders: bool = False, single: bool = False) -> list[str]:
    """MEDIA arguments with quoted globs expanded: ``qwenvl.batch.inputs.expand_globs``, the one rule of every verb
    and of chat's ``/image`` (see it for ``folders`` and ``single``), the verb at hand named in its messages."""
    from qwenvl.batch.inputs import expand_globs

    command = current_command()
    return expand_globs(args, folders=folders, single=single, verb=command.name if command is not None else None)


def media_args(args: tuple[str, ...] | list[str], *, single: bool = False) -> list[str]:
    """MEDIA arguments that must all be files, URLs or data: URLs (``-``: a file on standard input); quoted
    globs expanded (``expand_media``; ``single``: the verb takes one file).

    Raises MediaError (exit 3) for the first one that is none of them, before anything is sent."""
    args = expand_media(args, single=single)
    for arg in args:
        if not _is_reference(arg):
            raise _not_found(arg, prompt_hint=False)
    return _checked(with_stdin(list(args)))


def prompt_and_media(
    args: tuple[str, ...] | list[str],
    prompt: str | None,
    *,
    required: bool = True,
    has_prompt_option: bool = True,
    folders: bool = False,
    single: bool = False,
) -> tuple[str | None, list[str]]:
    """(prompt, media) from ``VERB MEDIA... [-p PROMPT]``, where the prompt may also be one of the arguments.

    Without ``-p``, the prompt is the one argument that is not a file, a URL or a data: URL, first, last or
    anywhere (``ask photo.jpg "What is this?"``, ``ask "What is this?" photo.jpg``). An argument that looks like
    a file (an image, video or PDF name, a path with a separator) and does not exist is never the prompt: it
    is an input error (MediaError, exit 3). Several candidates, or one beside ``-p``, are a usage error (exit 2);
    the hint names ``-p`` only when the verb has it (``has_prompt_option``). ``-p -`` reads the
    prompt from standard input, ``-`` as MEDIA the file; both at once is a usage error. Quoted globs (and, with
    ``folders``, folders) are expanded first, and ``single`` refuses a glob matching several files
    (``expand_media``). Nothing is sent here.
    """
    args = expand_media(args, folders=folders, single=single)
    refs: list[str] = []
    words: list[str] = []
    for arg in args:
        if _is_reference(arg):
            refs.append(arg)
        elif looks_like_file(arg):
            # "is this the prompt?" only when no other argument can be: else the hint is about the path
            others = [a for a in args if a != arg and not _is_reference(a) and not looks_like_file(a)]
            needs_prompt = prompt is None and required and has_prompt_option and not others
            raise _not_found(arg, prompt_hint=needs_prompt)
        else:
            words.append(arg)
    shown = ", ".join(repr(w) for w in words[:4]) + (", ..." if len(words) > 4 else "")
    if prompt is not None and words:  # -p gave the prompt: an argument that is not a path is a second one
        raise UsageError(
            f"-p gave the prompt, and {len(words)} other argument{'s are' if len(words) > 1 else ' is'} neither a "
            f"file nor a URL: {shown}",
            hint="Give the prompt once (-p, or as the one argument that is not a file), and check the file names.",
        )
    if prompt is None and len(words) == 1:
        prompt = utf8_text(words[0], "the prompt" if has_prompt_option else "the query")
    elif len(words) > 1:
        how = (
            'Quote the prompt as one argument (or give it with -p "...")'
            if has_prompt_option
            else ("Quote the query as one argument")
        )
        raise UsageError(
            f"{len(words)} arguments are neither files nor URLs: {shown}", hint=f"{how}, and check the file names."
        )
    if prompt == STDIN:
        if STDIN in refs:
            raise UsageError(
                "standard input can hold the prompt (-p -) or a file (-), not both",
                hint='Give the prompt as an argument or with -p "...", and the file through -.',
            )
        prompt = stdin_text("the prompt")
    if prompt is None:
        if required:
            raise UsageError(
                'no prompt: give one with -p "..." (or as an argument)',
                hint='For example: qwenvl ask photo.jpg "What is in this picture?"',
            )
        return None, _checked(with_stdin(refs))
    if not prompt.strip():
        raise UsageError("the prompt is empty", hint='Give the question as words, e.g. "What is in this picture?".')
    return prompt, _checked(with_stdin(refs))


def awaiting_stdin(what: str) -> None:
    """On a terminal, say what standard input is awaited for (else the verb seems to hang). Raises nothing."""
    if sys.stdin.isatty():
        err_console().print(f"[dim]reading {what} from standard input: type it, then Ctrl-D on a line of its own[/]")


_STDIN_USE_KEY = "qwenvl.stdin_use"  # ctx.meta: what standard input was given to (``take_stdin``)


# the options that read standard input when given "-", to what ``take_stdin`` calls that use (their readers say
# the same: ``stdin_text``, ``option_text``)
STDIN_OPTIONS = {
    "prompt": "the prompt",
    "schema_file": "the schema (--schema -)",
    "request_file": "the request (--file -)",
    "requests_file": "the requests (--requests -)",
}


def take_stdin(what: str) -> None:
    """Standard input given to ``what`` ("the prompt (-p -)", "a file (-)", "the schema (--schema -)"...): it can
    be read once, so a second, different use in one command is a UsageError (exit 2) naming both, before either
    is read. The one record of who reads standard input; a no-op outside click."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    before = ctx.meta.get(_STDIN_USE_KEY)
    if before is not None and before != what:
        raise UsageError(
            f"standard input can give {before} or {what}, not both",
            hint="Give one of them from a file (or as text), and pipe the other through -.",
        )
    ctx.meta[_STDIN_USE_KEY] = what


def force_option(fn: Callable) -> Callable:
    """``--force``: an output file may replace an existing file qwenvl did not write (``qwenvl.outputs.
    check_outputs``; never an input of the command, a database, or media under a text output)."""
    return click.option(
        "--force",
        is_flag=True,
        help="Replace an existing output file that qwenvl did not write (never one of the command's inputs).",
    )(fn)


def not_dash(hint: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback for an option whose value is a file to write or a folder, where ``-`` (standard input or
    output) can mean nothing: HintedBadParameter (exit 2) naming the option, with ``hint``, rather than a file
    or folder named "-" in the current folder."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        values = value if isinstance(value, (tuple, list)) else (value,)
        if any(v == STDIN for v in values):
            what = "a folder" if param.metavar == "DIR" else "a file name"
            raise HintedBadParameter(
                f"'-' is not {what} here (standard input and output are not files)", hint, ctx, param
            )
        return value

    return callback


def option_text(value: str, option: str, what: str) -> tuple[str, str]:
    """(text, origin) of a file named by ``option`` that is read whole (``analyze --file``), ``-`` being standard
    input (``take_stdin``, ``stdin_text``); ``what`` names the file in messages ("request file"). Raises as
    ``stdin_text`` and ``media.sources.read_regular_text`` (MediaError, exit 3: missing, a folder, too large)."""
    from qwenvl.media.sources import read_regular_text

    if value == STDIN:
        said = f"the {what.removesuffix(' file')} ({option} -)"
        return stdin_text(said), f"standard input ({option} -)"
    return read_regular_text(Path(value).expanduser(), error=UsageError, what=what), value


def schema_option(value: str, option: str = "--schema") -> dict[str, Any]:
    """The JSON Schema named by ``--schema FILE``, ``-`` reading it from standard input (``option_text``).
    Raises as ``structured.load_schema``: MediaError (exit 3) for a file that cannot be read, SchemaDefinitionError
    (exit 2) for text that is not JSON or not a valid JSON Schema."""
    if value != STDIN:
        return load_schema(value)
    from qwenvl.errors import SchemaDefinitionError

    text, origin = option_text(value, option, "schema file")
    try:
        schema = qloads(text)
    except (json.JSONDecodeError, DuplicateKeyError) as exc:
        raise SchemaDefinitionError(f"{origin} is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise SchemaDefinitionError(
            f"{origin} holds no JSON Schema: a schema is an object, not {type(schema).__name__}"
        )
    return load_schema(schema)


def stdin_text(what: str) -> str:
    """Standard input's text (``-p -``), less one trailing newline (``echo`` adds it); on a terminal, what is
    awaited is said first (``awaiting_stdin``). UsageError (exit 2) when it is not UTF-8 (``utf8_text``), or
    when standard input was given to something else too (``take_stdin``); MediaError (exit 3) when it is longer
    than ``MAX_TEXT_FILE_BYTES`` (no more than that is read)."""
    take_stdin(what)
    awaiting_stdin(what)
    data = sys.stdin.buffer.read(MAX_TEXT_FILE_BYTES + 1)
    if len(data) > MAX_TEXT_FILE_BYTES:
        raise MediaError(
            f"standard input ({what}) is longer than {MAX_TEXT_FILE_BYTES:,} bytes: it is no {what.split()[-1]}",
            source="-",
            hint="Pipe the text alone; give files as arguments.",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        utf8_text(data.decode("utf-8", "surrogateescape"), f"standard input ({what})")
        raise  # (utf8_text raised)
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


def _checked(refs: list[str]) -> list[str]:
    """Every reference classified now (a folder, an unreadable file, a bad URL: MediaError, exit 3)."""
    for ref in refs:
        classify(ref)
    return refs


STDIN_CHUNK_BYTES = 1 << 20  # standard input is spooled to its temporary file 1 MiB at a time


def with_stdin(refs: list[str]) -> list[str]:
    """``-`` replaced by a temporary file holding standard input's bytes (removed when the command ends), copied
    in chunks (never whole in memory); the file is then checked and read like any other (its size first)."""
    if STDIN not in refs:
        return refs
    if refs.count(STDIN) > 1:
        raise UsageError(
            "'-' (standard input) can be given only once", hint="Pipe one file through -, and give the others by name."
        )
    take_stdin("a file (-)")
    if sys.stdin.isatty():
        command = current_command()
        verb = command.name if command is not None and command.name else "ask"
        raise UsageError(
            "'-' reads a file from standard input, but standard input is a terminal",
            hint=f"Pipe the file in: cat photo.jpg | qwenvl {verb} -" + (' -p "..."' if verb == "ask" else ""),
        )
    folder = Path(tempfile.mkdtemp(prefix="qwenvl-stdin-"))
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(lambda: shutil.rmtree(folder, ignore_errors=True))
    path = folder / "stdin"
    with path.open("wb") as out:  # copied in chunks: a large file never sits in memory
        shutil.copyfileobj(sys.stdin.buffer, out, STDIN_CHUNK_BYTES)
        empty = out.tell() == 0
    if empty:
        command = current_command()
        verb = command.name if command is not None and command.name else "ask"
        raise MediaError(
            "standard input is empty: no file came through '-'",
            source=STDIN,
            hint=f"Pipe the file in: cat photo.jpg | qwenvl {verb} -",
        )
    if ctx is not None:
        ctx.meta[_STDIN_KEY] = str(path)
    return [str(path) if ref == STDIN else ref for ref in refs]


_STDIN_KEY = "qwenvl.stdin_file"  # ctx.meta: the temporary file that stands for '-' (``with_stdin``, ``report``)

_Shown = TypeVar("_Shown")


def as_given(value: _Shown) -> _Shown:
    """``value`` (a string, or JSON-like dicts and lists of them, at any depth) with the temporary copy of
    standard input (``with_stdin``) named ``-``, as the user gave it: what a verb prints or writes names the
    file the user named, never a temporary path deleted when the command ends. Returns ``value`` itself when
    standard input was not spooled. Raises nothing."""
    ctx = click.get_current_context(silent=True)
    stdin_file = ctx.meta.get(_STDIN_KEY) if ctx is not None else None
    return value if not stdin_file else _named_as_given(value, stdin_file)


def _named_as_given(value: Any, stdin_file: str) -> Any:
    if isinstance(value, str):
        return value.replace(stdin_file, STDIN)
    if isinstance(value, dict):
        return {_named_as_given(k, stdin_file): _named_as_given(v, stdin_file) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_named_as_given(v, stdin_file) for v in value)
    return value


def usage_line(response: Response, region: str | None = None) -> str:
    """model · tokens · ≈cost (in the region's currency, at the request's tier; ``cost: local`` for a local
    model's answer, which has no price; ``cost unknown (no price)`` for a model the table has no price for) ·
    request id."""
    u = response.usage
    parts = [response.model]
    if u.input_tokens is not None:
        parts.append(f"{u.input_tokens:,} in / {u.output_tokens or 0:,} out tokens")
    if u.image_tokens:
        parts.append(f"{u.image_tokens:,} image tokens")
    if response.cached:
        parts.append("from the cache: not paid")
    elif not answer_paid(response):  # a local model: no price, never "¥0"
        parts.append("cost: " + format_cost(None, None, local=True))
    elif u.input_tokens is not None:
        cost = answer_cost(response, region=region)
        # a model with no known price: its cost is unknown, never left out as if nothing was paid
        parts.append("≈" + format_cost(cost, currency_of(region)) if cost is not None else "cost unknown (no price)")
    if response.request_id:
        parts.append(f"request {response.request_id}")
    return shown(" · ".join(parts), sys.stderr)  # the model and the request id come from the service


def print_usage_line(response: Response, region: str | None = None, console: Console | None = None) -> None:
    """``usage_line`` dimmed on stderr (or ``console``), escaped (a model name is the service's text, never
    markup) and soft-wrapped: never broken by rich at the terminal's width, so the request id stays whole when
    copied from an 80-column terminal."""
    (console or err_console()).print(f"[dim]{escape(usage_line(response, region))}[/]", highlight=False, soft_wrap=True)


def paid_line(exc: StructuredOutputError) -> str:
    """What a call that failed on its structured answer paid (a local model's: used): ``usage_line`` of its last
    response (whose usage counts every request), priced in the verb's region, and the requests' ids when a repair
    request was sent."""
    ctx = click.get_current_context(silent=True)
    region = effective_region(ctx.meta.get(_REGION_KEY) if ctx is not None else None)
    if exc.response is None:  # an error made without one (the library's always carry it)
        return ""
    line = usage_line(exc.response, region)
    if exc.requests > 1:
        line = line.removesuffix(f" · request {exc.response.request_id}")  # the last id: listed below with the first
        ids = f": {', '.join(exc.request_ids)}" if exc.request_ids else ""
        line += f" · {exc.requests} requests (the repair included){ids}"
    return line


def print_json(obj: Any, *, ascii_only: bool = False, indent: int | None = 2) -> None:
    """``obj`` as JSON on stdout (``indent`` 2, or one line with None), a file read from standard input named
    ``-`` (``as_given``), and the verb's JSON recorded as given (``json_said``)."""
    click.echo(json.dumps(as_given(obj), ensure_ascii=ascii_only, indent=indent))  # '-' named as given
    json_said()


_JSON_ASKED_KEY = "qwenvl.json_asked"  # ctx.meta: stdout was promised JSON (--json, ocr --format json)
_JSON_SAID_KEY = "qwenvl.json_said"  # ctx.meta: the verb has printed its JSON


def json_asked() -> None:
    """The verb's stdout is to hold JSON (``--json``: set for every verb by ``pass_opts``; ``ocr --format json``
    without ``-o``): a failure before the verb has printed any then prints its ``error_record`` there
    (``json_failure``). A no-op outside click."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_JSON_ASKED_KEY] = True


def json_said() -> None:
    """The verb has printed its JSON on stdout (``print_json`` says so; a verb that writes JSON itself calls it):
    a later failure adds no second document. A no-op outside click."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_JSON_SAID_KEY] = True


def error_record(exc: BaseException) -> dict[str, Any]:
    """A failure as JSON, the one shape of every verb's: ``{"type", "message", "hint", "status", "request_id",
    "exit_code"}`` (``status`` and ``request_id`` null where there are none), and for an answer that was paid for
    but not valid JSON (for the schema; ``StructuredOutputError``) what it left (``paid_record``: ``raw_text``,
    ``errors``, ``usage``, ``cost``, ``currency``, ``local``, ``cached``, ``requests``, ``request_ids``); Ctrl-C
    and the signals handled as it (``qwenvl.cli.signals``) are ``{"type": "interrupted", "message": "interrupted"
    (or "terminated (SIGTERM)"), ..., "exit_code": 130 (143, 129)}``. Raises nothing."""
    code: int | None
    if isinstance(exc, KeyboardInterrupt):
        from qwenvl.cli.signals import Terminated, exit_code

        said = f"terminated ({exc.name})" if isinstance(exc, Terminated) else "interrupted"
        kind, hint, code = "interrupted", None, exit_code(exc)
    else:
        said, kind, hint, code = (
            fit_line(written(exc)),  # in the verb's words, as on stderr (``report``)
            type(exc).__name__,
            getattr(exc, "raw_hint", None),
            getattr(exc, "exit_code", None),
        )
        if hint:  # in the verb's words, as on stderr (``report``): never a flag the verb does not take
            hint = fit_hint(hint, current_command())
    out = {
        "type": kind,
        "message": said,
        "hint": hint or None,
        "status": getattr(exc, "status", None) or None,
        "request_id": getattr(exc, "request_id", None) or None,
        "exit_code": code,
    }
    if isinstance(exc, StructuredOutputError):
        out |= paid_record(exc)
    return out


def paid_record(exc: StructuredOutputError) -> dict[str, Any]:
    """What a failed structured answer leaves, as JSON gives it (``error_record``; the ``paid:`` line's facts):
    ``raw_text`` (the answer, paid for), ``errors`` (what is wrong with it), and ``models.spent_fields`` of its
    response (``usage`` summed over its requests, ``cost``, ``currency``, ``local``, ``cached``) with ``requests``
    and ``request_ids`` the error's own (the repair request included) and ``request_id`` the last of them; priced
    in the verb's region. Raises nothing."""
    ctx = click.get_current_context(silent=True)
    try:
        region = effective_region(ctx.meta.get(_REGION_KEY) if ctx is not None else None)
        spent = spent_fields([exc.response], region=region) if isinstance(exc.response, Response) else {}
    except QwenVLError:  # a region the verb has refused already: the answer is kept, unpriced
        spent = {}
    ids = list(exc.request_ids)
    return {
        "raw_text": exc.raw_text,
        "errors": list(exc.errors),
        **spent,
        "requests": exc.requests,
        "request_ids": ids,
        "request_id": ids[-1] if ids else spent.get("request_id"),
    }


def json_failure(exc: BaseException) -> None:
    """When the verb promised JSON on stdout (``json_asked``) and has printed none (``json_said``), the failure
    that ends it as one JSON line there, ``{"error": error_record(exc)}``: with ``--json`` stdout always holds
    JSON (its error line on stderr and its exit code are as ever). Called where errors are reported
    (``qwenvl.cli.main``). Raises nothing beyond what writing stdout raises."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or not ctx.meta.get(_JSON_ASKED_KEY) or ctx.meta.get(_JSON_SAID_KEY):
        return
    print_json({"error": error_record(exc)}, indent=None)


def pass_opts(fn: Callable) -> Callable:
    """Hand the verb all its options as one dict (keeps verb signatures short)."""

    @functools.wraps(fn)
    def wrapper(**opts: Any) -> Any:
        ctx = click.get_current_context(silent=True)
        if ctx is not None:  # the verb, for fitting error hints to it (``report``)
            ctx.meta[_COMMAND_KEY] = ctx.command
            ctx.meta[_PATH_KEY] = ctx.command_path
            _record_given(ctx)
            ctx.meta[_REGION_KEY] = opts.get("region")
            if opts.get("as_json"):
                json_asked()
            refuse_non_utf8(ctx, opts)
            refuse_blank(ctx, opts)
        return fn(opts)

    return wrapper
