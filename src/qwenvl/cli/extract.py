"""`qwenvl extract FILE... --schema S.json`: JSON valid for the schema from each file (JSONL or CSV for many)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
from rich.markup import escape

from qwenvl.cli.common import (
    FILE_NAME,
    THINKING_FLAGS,
    SpendCap,
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
    pass_opts,
    print_json,
    prompt_and_media,
    request_fields,
    service_options,
    show_paid,
)
from qwenvl.cli.tasks_common import dry_run, show_usage, warn
from qwenvl.errors import MediaError, StructuredOutputError, UsageError, safe_line
from qwenvl.outputs import check_outputs, record_output, write_atomic
from qwenvl.tasks.extract import EXTRACT_MAX_TOKENS, Extraction, columns, extract_many, plan_extract, to_row

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
    leave_out=("--json-mode", *THINKING_FLAGS),
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

    # one request per file, priced before any is sent; a file that cannot be sent fails on its turn, the others go
    # on. A repair of an invalid answer is not in the estimate (it may add one more): the running spend, checked
    # before each file is sent (``SpendCap``), counts it.
    planned: list[Call | None] = []
    for f in files:
        try:
            planned.append(plan_extract(client, f, schema, prompt=prompt, estimate_only=True, **dict(fields)))
        except MediaError:
            planned.append(None)
    est = estimate_calls((c for c in planned if c is not None), region=client.region, local=client.is_local)
    if opts["dry_run"]:
        dry_run(client, plan_extract(client, files[0], schema, prompt=prompt, **dict(fields)), est)
        return
    cap = None
    if est.to_send > 1:  # one request is capped by nothing, as `ask`'s is not
        cap = confirm_cost(est, opts, f"Extracting from these {est.to_send:,} files")
    spend = SpendCap(cap, est.currency, client.region)
    rows: list[Extraction] = []
    out = CsvRows(csv_path, schema) if csv_path is not None else None
    try:
        with client:
            if len(files) == 1 and not opts["jsonl"] and csv_path is None:
                response = client.send(plan_extract(client, files[0], schema, prompt=prompt, **fields))
                print_json(response.json)  # an answer still invalid after the repair raised: exit 5, raw answer shown
                show_usage(response, region=opts["region"])
                return
            for f, call in zip(files, planned, strict=True):
                if call is not None:
                    spend.check(estimate_calls([call], region=client.region).cost_max, safe_line(str(f)))
                row = next(extract_many(client, [f], schema, prompt=prompt, **fields))
                spend.paid(row.response)
                rows.append(row)
                if out is not None:  # on disk as it arrives (flushed): whatever stops the run, no paid row is lost
                    out.add(row)
                else:
                    click.echo(json.dumps(as_given(row.line(opts["region"])), ensure_ascii=False))
                if not row.ok:
                    warn([f"{row.file}: {row.error}"], prefix="error")
                    if isinstance(row.failure, StructuredOutputError):
                        show_paid(row.failure)  # its raw answer and what it took, as one file's failure (``report``)
    finally:
        if out is not None:
            out.close()
            if rows:
                err_console().print(
                    f"[dim]wrote {escape(safe_line(csv_path))} ({len(rows)} row{'s' if len(rows) != 1 else ''})[/]"
                )
    # a failed answer was paid too: its paid line is said beside its error, above
    show_usage(*(r.response for r in rows if r.ok), region=opts["region"])
    failed = [r for r in rows if not r.ok]
    if failed:
        err_console().print(f"[bold red]{len(failed)} of {len(rows)} files failed[/]")
        click.get_current_context().exit(failed[0].exit_code)


class CsvRows:
    """``--csv``, written as the answers arrive: each row appended and flushed, so an answer paid for is on disk at
    once whatever stops the run after it (Ctrl-C, a 401, a crash). The header is ``columns`` of the rows so far;
    when a row brings a new column (a key beyond the schema's, the first error, the first raw answer) the file is
    written again whole (``write_atomic``: complete or as it was), so the finished file is the same as one written
    at the end."""

    def __init__(self, path: Path, schema: Any) -> None:
        self.path, self.schema = path, schema
        self.rows: list[Extraction] = []
        self.names: list[str] | None = None
        self._fh: IO[str] | None = None

    def add(self, row: Extraction) -> None:
        self.rows.append(row)
        names = columns(self.schema, self.rows)
        if names != self.names or self._fh is None:
            self.close()
            self.names = names
            write_atomic(self.path, [_csv_line(names), *(_csv_line(to_row(r, names)) for r in self.rows)])
            record_output(self.path)  # qwenvl's own after each write: a later run (a re-run) may write it again
            self._fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115  # closed by close()
            return
        self._fh.write(_csv_line(to_row(row, names)))
        self._fh.flush()
        record_output(self.path)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _csv_line(cells: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(as_given(cells))
    return buf.getvalue()
