"""`qwenvl analyze`: a drop-in replacement for the skill's `analyze_image.py`.

Same flags (--request JSON | --file req.json, --json-mode, --schema FILE, --output FILE, --max-retries,
--retry-backoff-s, --print-response), same request keys and the same result object
``{text, model, usage[, json]}``. As in the skill, an answer that is not valid JSON in JSON mode gives a
result without ``json`` (with a warning on stderr) rather than a failure, after ONE request (no repair
request); with a schema, an invalid answer is sent back once to be corrected, and one still invalid fails as
``ask --schema`` does (StructuredOutputError, exit 5: the skill says nothing of this case).

Accepted as the skill accepts it: keys it does not know are ignored (a warning names them), an option given twice
takes the last one (a warning names it), and with both --request and --file, --request is used. Where it differs on
purpose (README, "qwenvl analyze"): qwenvl's exit codes (2 usage, 3 input, 4 key, 5 service; the skill exits 1),
the result printed when neither --output nor --print-response is given, a request's max_retries / retry_backoff_s
honoured unless the flag is given, a request without an image accepted, a local image that is missing refused
before anything is sent, and a schema sent as JSON mode with the schema in the prompt (the skill's json_schema
response_format is documented for some qwen-plus text models only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from qwenvl.cli.common import (
    FILE_NAME,
    HintedUsageError,
    Verb,
    force_option,
    from_request,
    make_client,
    not_dash,
    option_text,
    pass_opts,
    print_json,
    schema_option,
    service_options,
    take_stdin,
)
from qwenvl.cli.render import warn_answer
from qwenvl.cli.tasks_common import warn
from qwenvl.client import near_field, unrepaired
from qwenvl.errors import StructuredOutputError, UsageError
from qwenvl.outputs import check_outputs, record_output, write_failure_hint
from qwenvl.types import DuplicateKeyError, Request, loads


def load_request(request_json: str | None, request_file: str | None) -> dict[str, Any]:
    """The request object of ``--request`` or ``--file``. As the skill does, ``--request`` wins when both are
    given (``--file`` is then not read; a warning says so). Unknown keys are dropped with a warning
    (``drop_unknown_keys``). Raises UsageError (exit 2) for neither, JSON that is not an object with a
    ``prompt``, or a key given twice; MediaError (exit 3) for a request file that cannot be read."""
    if not request_json and not request_file:
        raise UsageError(
            "give one of --request JSON or --file req.json",
            hint='Use --request \'{"prompt": "..."}\' or --file req.json.',
        )
    if request_json and request_file:  # the skill reads --request and never looks at --file
        warn([f"--request and --file both given: --request is used, {request_file} is not read"])
        request_file = None
    if request_file:
        text, origin = option_text(request_file, "--file", "request file")  # "-": standard input
    else:
        text, origin = request_json or "", "--request"
    try:
        data = loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{origin} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            hint='For example --request \'{"prompt":"describe","image":"photo.png"}\'',
        ) from None
    except DuplicateKeyError as exc:  # {"extra": {"seed": 1, "seed": 2}}: never the last one silently
        raise UsageError(f"{origin}: {exc}", hint="Give each key once.") from None
    if not isinstance(data, dict):
        raise UsageError(
            f"{origin} must be a JSON object with at least a prompt",
            hint='For example {"prompt": "What is this?", "image": "photo.jpg"}.',
        )
    if "prompt" not in data:
        raise UsageError(f'{origin} has no "prompt"', hint='For example {"prompt":"describe","image":"a.png"}')
    return drop_unknown_keys(data, origin)


def drop_unknown_keys(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """``data`` without the keys that are no ``Request`` field, each named in one warning line on stderr (with
    the field it was likely meant to be: ``max_token (did you mean max_tokens?)``). The skill's
    ``analyze_image.py`` reads the keys it knows and ignores the rest, so a drop-in must not refuse them."""
    unknown = [key for key in data if key not in Request.model_fields]
    if unknown:
        names = []
        for key in unknown:
            near = near_field(key)
            names.append(f"{key} (did you mean {near}?)" if near else key)
        warn([f"{origin}: ignored unknown key{'s' if len(unknown) > 1 else ''} {', '.join(names)}"])
    return {key: value for key, value in data.items() if key in Request.model_fields}


class AbbreviatingVerb(Verb):
    """``analyze``'s command class: as a drop-in for the skill's ``analyze_image.py`` (argparse, whose
    ``allow_abbrev`` is on), a long option may be given by a unique prefix of its name (``--req`` for
    ``--request``, ``--print`` for ``--print-response``, ``--out=FILE``); a prefix of several is a usage error
    (exit 2) naming them, as argparse's "ambiguous option". Only analyze does this: the other verbs are
    qwenvl's own, where a prefix stays an unknown option (with a did-you-mean)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self._expanded(ctx, args))

    def given_twice(self, ctx: click.Context, label: str) -> None:
        """An option given twice (``--request a --request b``): the last one is used, as the skill's argparse takes
        it (what the skill accepts is accepted), with a warning on stderr naming it; never refused."""
        if not ctx.resilient_parsing:
            warn([f"{label} is given twice: the last one is used (as analyze_image.py takes it)"])

    def _expanded(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value: dict[str, bool] = {}
        for param in self.params:
            if isinstance(param, click.Option):
                for opt in [*param.opts, *param.secondary_opts]:
                    if opt.startswith("--"):
                        takes_value[opt] = not (param.is_flag or param.count)
        takes_value["--help"] = False
        out: list[str] = []
        value_next = False
        for i, arg in enumerate(args):
            if value_next:  # the value of the option before it, whatever it looks like
                out.append(arg)
                value_next = False
                continue
            if arg == "--":
                return out + args[i:]
            if not arg.startswith("--") or len(arg) < 3:
                out.append(arg)
                continue
            name, eq, value = arg.partition("=")
            if name not in takes_value:
                found = sorted(o for o in takes_value if o.startswith(name))
                if len(found) > 1:
                    if ctx.resilient_parsing:  # completion: let click list them
                        out.append(arg)
                        continue
                    ambiguous = HintedUsageError(f"ambiguous option: {name} could match {', '.join(found)}", ctx)
                    ambiguous.hint = "Give more of the option's name (`qwenvl analyze --help` lists them)."
                    raise ambiguous
                if found:
                    name = found[0]
                elif not ctx.resilient_parsing:
                    given = value if eq else args[i + 1] if i + 1 < len(args) else None
                    _refuse_request_key(ctx, name, given, takes_value)
            out.append(name + eq + value)
            value_next = takes_value.get(name, False) and not eq
        return out


def _refuse_request_key(ctx: click.Context, name: str, given: str | None, options: dict[str, bool]) -> None:
    """For an unknown long option ``name`` of analyze that is near a request key and is no option of analyze
    (``--max-tok 5``: ``max_tokens``, a unique prefix of a key or ``near_field``'s): a usage error (exit 2) whose
    hint says to put the key in the request JSON, with ``given`` (the option's value, if any) as its value.
    Nothing for other names: click's "No such option" with its did-you-mean follows."""
    key = name[2:].replace("-", "_")
    fields = [f for f in Request.model_fields if f.startswith(key)] if key else []
    field = fields[0] if len(fields) == 1 else near_field(key) if key else None
    if field is None or "--" + field.replace("_", "-") in options:
        return
    shown_value = "..."
    if given is not None and not given.startswith("--"):
        try:
            shown_value = json.dumps(json.loads(given), ensure_ascii=False)
        except ValueError:
            shown_value = json.dumps(given, ensure_ascii=False)
    error = HintedUsageError(f"No such option '{name}'.", ctx)
    error.hint = (
        f'{field} is a request key for analyze: put "{field}": {shown_value} in the request JSON (--request or --file).'
    )
    raise error


def _refs(value: Any) -> list[str]:
    """The file names in a request field (``image``, ``images``, ``video``: a name or a list; ``schema``: a file
    name or the schema itself): what the request reads, which ``--output`` must not replace."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


@click.command(cls=AbbreviatingVerb)
@click.option("--request", "request_json", metavar="JSON", help="The request as JSON (prompt, image, model, ...).")
@click.option(
    "--file", "request_file", type=FILE_NAME, metavar="FILE", help="The request as a JSON file ('-' reads stdin)."
)
@click.option("--json-mode", is_flag=True, help='Ask for JSON and parse it into "json".')
@click.option(
    "--schema",
    "schema_file",
    type=FILE_NAME,
    metavar="FILE",
    help="JSON Schema file for structured extraction ('-' reads stdin).",
)
@click.option(
    "--output",
    type=FILE_NAME,
    metavar="FILE",
    callback=not_dash("Leave --output out (or add --print-response) to print the result on standard output."),
    help="Write the result JSON here (folders are created).",
)
@force_option
@click.option("--print-response", is_flag=True, help="Print the result as one line of JSON.")
@click.option("--dry-run", is_flag=True, help="Print the request that would be sent, with estimates; send nothing.")
@service_options
@pass_opts
def analyze(opts: dict[str, Any]) -> None:
    """Analyze an image with a JSON request (the analyze_image.py skill interface)."""
    if opts["request_file"] == "-" and not opts["request_json"]:  # claimed before either is read
        take_stdin("the request (--file -)")
    if opts["schema_file"] == "-":
        take_stdin("the schema (--schema -)")
    data = load_request(opts["request_json"], opts["request_file"])
    from_request(data)  # a hint names what the user wrote there (timeout_s), not the flag (--timeout)
    if opts["json_mode"]:
        data["json_mode"] = True
    if opts["schema_file"]:
        data["schema"] = schema_option(opts["schema_file"])
    for key in ("model", "timeout_s", "max_retries", "retry_backoff_s", "base_url"):
        if opts.get(key) is not None:
            data[key] = opts[key]  # flags override the request, as in the skill (0 included)
    if data.get("schema") is None:
        data.setdefault("repair", False)  # JSON mode as in the skill: one request, never a paid second one
    read: dict[str, Any] = {"--file": opts["request_file"], "--schema": opts["schema_file"]}
    read.update({f'the request\'s "{key}"': _refs(data.get(key)) for key in ("image", "images", "video", "schema")})
    output = check_outputs({"--output": opts["output"]}, inputs=read, force=opts["force"]).get("--output")
    client = make_client(opts)
    call = client.plan(data)
    if opts["dry_run"]:
        print_json(client.preview(call))
        return
    try:
        response = client.send(call)
        result = response.result_object()
        warn_answer(response, call.request.max_tokens)
    except StructuredOutputError as exc:
        if call.schema is not None:  # as `ask --schema`: exit 5, the raw answer and what was paid shown; the
            _write(output, _unvalidated(exc))  # paid answer (no "json") is in --output too
            raise
        warn([f'{exc}; the result has no "json"'])
        result = _unvalidated(exc)
    except KeyboardInterrupt as exc:  # during a schema repair: the first, paid answer is kept in --output
        kept = unrepaired(exc)
        if kept is not None:
            _write(output, _unvalidated(kept))
        raise
    finally:
        client.close()
    _write(output, result)
    if opts["print_response"] or output is None:
        print_json(result, ascii_only=True, indent=None)


def _unvalidated(exc: StructuredOutputError) -> dict[str, Any]:
    """The result object of an answer not valid for its schema or JSON mode: ``{text, model, usage}``, no
    ``json``."""
    return exc.response.result_object() if exc.response is not None else {"text": exc.raw_text}


def _write(output: Path | None, result: dict[str, Any]) -> None:
    """The result object in ``output`` (--output; nothing when None). UsageError when it cannot be written."""
    if output is None:
        return
    try:
        output.write_text(json.dumps(result, ensure_ascii=True, indent=2), encoding="utf-8")
        record_output(output)
    except OSError as exc:
        raise UsageError(
            f"cannot write {output}: {exc.strerror or exc}",
            hint=write_failure_hint(exc, "give another file with --output"),
        ) from None
