"""`qwenvl extract FILE... --schema S.json`: JSON valid for the schema from each file (JSONL or CSV for many)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape

from qwenvl.cli.common import (
    FILE_NAME,
    Verb,
    as_given,
    check_pages_apply,
    confirm_cost,
    err_console,
    force_option,
    generation_options_for,
    make_client,
    max_cost_options,
    not_dash,
    paid_line,
    pass_opts,
    print_json,
    prompt_and_media,
    request_fields,
    service_options,
)
from qwenvl.cli.tasks_common import dry_run, show_usage, warn
from qwenvl.errors import MediaError, StructuredOutputError, UsageError, safe_line
from qwenvl.models import spent_label
from qwenvl.outputs import check_outputs, record_output
from qwenvl.tasks.extract import EXTRACT_MAX_TOKENS, Extraction, columns, extract_many, plan_extract, to_row
from qwenvl.types import Response

if TYPE_CHECKING:
    from qwenvl.plan import Call


@click.command(cls=Verb, needs=("schema_file",))
@click.argument("files", type=FILE_NAME, nargs=-1, required=True)
@click.option("-p", "--prompt", help='What to extract (default: "Extract the information in this document.").')
@click.option("--jsonl", is_flag=True, help='One JSON line per file, {"file", "json"}, even for one file.')
@click.option(
    "--csv",
    "csv_file",
    type=FILE_NAME,
    metavar="FILE",
    callback=not_dash("Leave --csv out to print JSON lines on standard output."),
    help="Write a CSV instead: a column per top-level key.",
)
@force_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the first file's request, with the count and estimated cost of every file's request; send nothing.",
)
@max_cost_options
@generation_options_for(
    max_tokens=f"{EXTRACT_MAX_TOKENS}, or the model's limit if lower",
    leave_out=("--json-mode",),
)
@service_options
@pass_opts
def extract(opts: dict[str, Any]) -> None:
    """Extract structured data: qwenvl extract invoice*.png --schema invoice.schema.json [--csv out.csv]

    FILES are images, PDFs or videos (a folder is walked for all three). Each answer is validated against the
    schema (and repaired once). One file prints its JSON; several print
    one line per file, {"file": ..., "json": ...} (or {"file": ..., "error": ...}); --csv writes a table
    instead (nested values as JSON text). A file that fails does not stop the others; the exit status is
    then that of the first failure.
    """
    if not opts["schema_file"]:
        raise UsageError(
            "extract needs --schema FILE (a JSON Schema)",
            hint='For example {"type": "object", "properties": {"title": {"type": "string"}}}',
        )
    fields = request_fields(opts)  # loads and checks the schema: a bad one stops here (exit 2)
    schema = fields.pop("schema")
    prompt, files = prompt_and_media(
        opts["files"], opts["prompt"], required=False, folders=True
    )  # every file is found here
    if not files:
        raise UsageError(
            "extract needs at least one file",
            hint="For example: qwenvl extract invoice.png --schema invoice.schema.json",
        )
    check_pages_apply(opts, files)
    csv_path = check_outputs(
        {"--csv": opts["csv_file"]}, inputs={"FILES": files, "--schema": opts["schema_file"]}, force=opts["force"]
    ).get("--csv")
    client = make_client(opts)
    from qwenvl.batch.runner import estimate_calls  # loaded when a run is priced, not with the CLI

    def calls() -> Iterator[Call]:  # one request per file, priced before any is sent (a repair of an invalid
        # answer is not: it may add one more); a file that cannot be sent fails on its turn, the others go on
        for f in files:
            try:
                yield plan_extract(client, f, schema, prompt=prompt, estimate_only=True, **dict(fields))
            except MediaError:
                continue

    est = estimate_calls(calls(), region=client.region, local=client.is_local)
    if opts["dry_run"]:
        dry_run(client, plan_extract(client, files[0], schema, prompt=prompt, **dict(fields)), est)
        return
    if est.to_send > 1:  # one request is capped by nothing, as `ask`'s is not
        confirm_cost(est, opts, f"Extracting from these {est.to_send:,} files")
    rows: list[Extraction] = []
    with client:
        if len(files) == 1 and not opts["jsonl"] and csv_path is None:
            response = client.send(plan_extract(client, files[0], schema, prompt=prompt, **fields))
            print_json(response.json)  # an answer still invalid after the repair raised: exit 5, raw answer shown
            show_usage(response, region=opts["region"])
            return
        for row in extract_many(client, files, schema, prompt=prompt, **fields):
            rows.append(row)
            if csv_path is None:
                click.echo(json.dumps(as_given(row.line(opts["region"])), ensure_ascii=False))
            if not row.ok:
                warn([f"{row.file}: {row.error}"], prefix="error")
                if isinstance(row.failure, StructuredOutputError) and isinstance(row.response, Response):
                    # what the failed answer took, as one file's failure says it (``report``)
                    label = spent_label(row.response.protocol)
                    err_console().print(f"[dim]{label}: {escape(paid_line(row.failure))}[/]", highlight=False)
    if csv_path is not None:
        write_csv(csv_path, schema, rows)
        err_console().print(
            f"[dim]wrote {escape(safe_line(csv_path))} ({len(rows)} row{'s' if len(rows) != 1 else ''})[/]"
        )
    # a failed answer was paid too: its paid line is said beside its error, above
    show_usage(*(r.response for r in rows if r.ok), region=opts["region"])
    failed = [r for r in rows if not r.ok]
    if failed:
        err_console().print(f"[bold red]{len(failed)} of {len(rows)} files failed[/]")
        click.get_current_context().exit(failed[0].exit_code)


def write_csv(path: Any, schema: Any, rows: list[Extraction]) -> None:
    names = columns(schema, rows)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in rows:
            writer.writerow(as_given(to_row(row, names)))
    record_output(path)
