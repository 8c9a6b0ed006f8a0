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
from qwenvl.cli.tasks_common import dry_run, note, show_usage, verbose_option, warn
from qwenvl.errors import MediaError, QwenVLError, StructuredOutputError, UsageError, safe_line
from qwenvl.outputs import check_outputs, record_output, write_atomic
from qwenvl.tasks.extract import (
    EXTRACT_MAX_TOKENS,
    Extraction,
    columns,
    extract_many,
    plan_extract,
    task_name,
    to_row,
)

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
@click.option(
    "--resume",
    is_flag=True,
    help="With --csv: keep the rows its file holds (an earlier run's, paid for) and send only the other files.",
)
@force_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the first file's request, with the count and estimated cost of every file's request; send nothing.",
)
@max_cost_options
@verbose_option
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
    then that of the first failure. A --csv file of a run that stopped (a 401, Ctrl-C, a kill) or left files
    unanswered (a service error) keeps its rows, paid for: a later run replaces it only with --force, and
    --resume goes on from it, sending only the files it has no answer for (a run that ends with every row
    answered leaves a complete file, which the same command writes again).
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
    if opts["resume"] and not opts["csv_file"]:
        raise UsageError(
            "--resume goes on from a --csv file: give the file with --csv",
            hint="For example: qwenvl extract scans/ --schema s.json --csv out.csv --resume",
        )
    if opts["resume"] and opts["force"]:
        raise UsageError(
            "--resume keeps the rows of the --csv file and --force replaces them: give one of them",
            hint="Leave out --force to go on from the file, or --resume to start over.",
        )
    csv_path = check_outputs(
        {"--csv": opts["csv_file"]},
        inputs={"FILES": files, "--schema": opts["schema_file"]},
        force=opts["force"],
        resumed={"--csv"} if opts["resume"] else (),
    ).get("--csv")
    kept = KeptRows.read(csv_path) if csv_path is not None and opts["resume"] else KeptRows()
    names = [task_name(f) for f in files]
    if kept.rows:
        files = [f for f, name in zip(files, names, strict=True) if not kept.has(name)]
        note(
            f"{len(kept.rows)} row{'s' if len(kept.rows) != 1 else ''} kept in {csv_path}: "
            + (f"{len(files)} file{'s' if len(files) != 1 else ''} to read" if files else "nothing left to read")
        )
    client = make_client(opts)
    from qwenvl.batch.runner import SpendCap, estimate_calls  # loaded when a run is priced, not with the CLI

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
        if not files:  # --resume: every file has its row
            print_json({"requests": 0, "total": None})
            return
        dry_run(client, plan_extract(client, files[0], schema, prompt=prompt, **dict(fields)), est)
        return
    cap = None
    if est.to_send > 1:  # one request is capped by nothing, as `ask`'s is not
        cap = confirm_cost(est, opts, f"Extracting from these {est.to_send:,} files")
    spend = SpendCap(cap, est.currency, client.region)
    rows: list[Extraction] = []
    out = CsvRows(csv_path, schema, kept=kept, order=names, advice=RESUME_ADVICE) if csv_path is not None else None
    stopped: BaseException | None = None
    try:
        with client:
            if len(files) == 1 and not opts["jsonl"] and csv_path is None:
                response = client.send(plan_extract(client, files[0], schema, prompt=prompt, **fields))
                print_json(response.json)  # an answer still invalid after the repair raised: exit 5, raw answer shown
                show_usage(response, region=opts["region"])
                return
            # one run: its files sent in turn as it is read (each checked against the cap first); it stops at
            # an error that would fail every file (a 401, a service that cannot be reached)
            reading = extract_many(client, files, schema, prompt=prompt, **fields)
            for f, call in zip(files, planned, strict=True):
                if call is not None:
                    spend.check(estimate_calls([call], region=client.region).cost_max, safe_line(str(f)))
                row = next(reading)
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
    except (QwenVLError, KeyboardInterrupt) as exc:
        stopped = exc  # the rows read are said (and the file's state recorded) first, then the error is raised
    finally:
        if out is not None:
            out.close()
            if out.written or (kept.rows and stopped is None):  # complete: every file has its answered row; else
                out.finish(complete=stopped is None and out.complete)  # kept as partial (``RESUME_ADVICE``)
                err_console().print(
                    f"[dim]wrote {escape(safe_line(csv_path))} ({out.count} row{'s' if out.count != 1 else ''})[/]"
                )
    # a failed answer was paid too: its paid line is said beside its error, above
    show_usage(
        *(r.response for r in rows if r.ok),
        region=opts["region"],
        verbose=opts["verbose"],
        also=[r.response for r in rows if not r.ok and isinstance(r.failure, StructuredOutputError)],
    )
    if stopped is not None:
        _say_stopped(stopped, rows, files, csv_path, out)
        raise stopped
    failed = [r for r in rows if not r.ok]
    if failed:
        err_console().print(f"[bold red]{len(failed)} of {len(rows)} files failed[/]")
        if out is not None and not out.complete:
            note(f"to send again the files that got no answer, run it again with --resume ({csv_path} is kept)")
        click.get_current_context().exit(failed[0].exit_code)


# The advice recorded with a --csv file that does not hold every file's answer (``record_output(partial=...)``),
# said when a later run would replace it.
RESUME_ADVICE = "to keep its rows, run the same command with --resume: only the files with no answer are sent"


def _say_stopped(
    stopped: BaseException, rows: list[Extraction], files: list[str], csv_path: Path | None, out: CsvRows | None
) -> None:
    """The note after a run stopped part-way (a 401, Ctrl-C, the cost cap): which file it stopped at, what was kept
    and how to go on without paying again for it. Raises nothing."""
    if len(rows) >= len(files):
        return
    at = files[len(rows)]
    why = "interrupted" if isinstance(stopped, KeyboardInterrupt) else "stopped"
    done = f"{len(rows)} of {len(files)} files read"
    if out is not None and out.written:
        note(f"{why} at {at}: {done}, kept in {csv_path}; to read the rest, run it again with --resume")
    elif out is not None:
        note(f"{why} at {at}: {done}; {csv_path} is left as it was")
    elif rows:
        note(f"{why} at {at}: {done} (their lines shown); the others were not sent")


class KeptRows:
    """The rows of a ``--csv`` file that ``--resume`` keeps: those of the files answered (paid for: a valid answer,
    or one not valid for the schema, kept with its ``raw_answer``); a row whose file failed with no answer (a
    service error, a file that could not be sent) is left out, so that its file is sent again. ``header``: the
    file's columns; ``rows``: each kept row by column."""

    def __init__(self, header: list[str] | None = None, rows: list[dict[str, str]] | None = None) -> None:
        self.header, self.rows = header or [], rows or []
        self._files = {r.get("file", "") for r in self.rows}

    def has(self, name: str) -> bool:
        """Whether the file ``name`` (as a row names it: ``Extraction.file``) has its row here."""
        return name in self._files

    @classmethod
    def read(cls, path: Path) -> KeptRows:
        """The kept rows of ``path`` (none when it is missing or empty). Raises UsageError (exit 2, nothing sent)
        when it is not qwenvl's own output as it left it (edited, copied, never written by qwenvl: its rows cannot
        be taken for answers) or is not such a CSV."""
        from qwenvl.outputs import written_by_qwenvl

        if not path.is_file() or path.stat().st_size == 0:
            return cls()
        if not written_by_qwenvl(path):
            raise UsageError(
                f"--resume: --csv {path} is not as qwenvl's extract left it (changed since, or not written by "
                "qwenvl): its rows cannot be taken for answers",
                hint=f"Give --csv a new file name, or pass --force without --resume to replace {path.name}.",
            )
        try:
            table = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise UsageError(f"--resume: cannot read --csv {path}: {exc}", hint="Give --csv a new file name.") from None
        if not table or not table[0] or table[0][0] != "file":
            raise UsageError(
                f"--resume: --csv {path} is not the CSV of qwenvl extract (its first column is not file)",
                hint="Give --csv a new file name.",
            )
        header = table[0]
        rows = [dict(zip(header, cells, strict=False)) for cells in table[1:]]
        return cls(header, [r for r in rows if not r.get("error") or r.get("raw_answer")])


class CsvRows:
    """``--csv``, written as the answers arrive: each row appended and flushed, so an answer paid for is on disk at
    once whatever stops the run after it (Ctrl-C, a 401, a crash). The header is ``columns`` of the rows so far (and
    of the ``kept`` rows an earlier run wrote: ``--resume``); when a row brings a new column (a key beyond the
    schema's, the first error, the first raw answer) or comes before a kept one in ``order`` (the files' names in
    the command's order) the file is written again whole (``write_atomic``: complete or as it was), so the finished
    file is the same as one written at the end of one run. While the run goes on the file is recorded partial
    (``record_output``, with ``advice``): a run killed leaves rows a later run must not replace unasked; ``finish``
    records the end."""

    def __init__(
        self,
        path: Path,
        schema: Any,
        *,
        kept: KeptRows | None = None,
        order: list[str] | None = None,
        advice: str | None = None,
    ) -> None:
        self.path, self.schema, self.advice = path, schema, advice
        self.kept = kept or KeptRows()
        self._order: dict[str, list[int]] = {}  # each name's places in the command's order (a file given twice: two)
        for i, name in enumerate(order or []):
            self._order.setdefault(name, []).append(i)
        self._last = len(order or [])
        # every row, kept or new, by its place: (file's place in ``order``, or after them; then as met)
        self._entries: list[tuple[tuple[int, int], Extraction | dict[str, str]]] = [
            (self._place(r.get("file", ""), n), r) for n, r in enumerate(self.kept.rows)
        ]
        self._entries.sort(key=lambda e: e[0])
        self.rows: list[Extraction] = []
        self.names: list[str] | None = None
        self.written = False  # this run wrote the file
        self._fh: IO[str] | None = None

    def _place(self, name: str, n: int, *, new: bool = False) -> tuple[int, int]:
        """Where a row goes: its file's place in the command's order (a new row takes the next of its name's), or
        after them (a kept row of a file this command does not name); then ``n``, the order met."""
        places = self._order.get(name)
        if not places:
            return self._last, n
        return (places.pop(0) if new and len(places) > 1 else places[0]), n

    @property
    def count(self) -> int:
        """The rows in the file (kept and new)."""
        return len(self._entries)

    @property
    def complete(self) -> bool:
        """Whether every row holds an answer (none failed without one: a service error, a file not sent)."""
        return all(r.raw_text is not None or r.ok for r in self.rows)

    def _names(self) -> list[str]:
        """``columns`` of the new rows, with the kept rows' columns in one run's order: file, the schema's, other
        keys, then ``error`` and ``raw_answer`` when a row has one."""
        last = ("error", "raw_answer")
        new = columns(self.schema, self.rows)
        names = [n for n in columns(self.schema, []) if n not in last]
        for n in [*self.kept.header, *new]:
            if n not in names and n not in last:
                names.append(n)
        for n in last:
            if n in new or any(r.get(n) for r in self.kept.rows):
                names.append(n)
        return names

    def add(self, row: Extraction) -> None:
        self.rows.append(row)
        place = self._place(row.file, len(self.kept.rows) + len(self.rows), new=True)
        at_end = not self._entries or self._entries[-1][0] < place
        self._entries.append((place, row))
        self._entries.sort(key=lambda e: e[0])
        names = self._names()
        if names != self.names or self._fh is None or not at_end:
            self.close()
            self.names = names
            write_atomic(self.path, [_csv_line(names), *(_csv_line(self._cells(e, names)) for _, e in self._entries)])
            self.written = True
            record_output(self.path, partial=self.advice)  # partial until ``finish``: a run killed keeps its rows
            self._fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115  # closed by close()
            return
        self._fh.write(_csv_line(to_row(row, names)))
        self._fh.flush()
        record_output(self.path, partial=self.advice)

    @staticmethod
    def _cells(entry: Extraction | dict[str, str], names: list[str]) -> list[str]:
        return to_row(entry, names) if isinstance(entry, Extraction) else [entry.get(n, "") for n in names]

    def finish(self, *, complete: bool) -> None:
        """Record the file as the run left it: qwenvl's own complete output (a re-run writes it again), or, when
        ``complete`` is False (the run stopped, or a file got no answer), partial with ``advice``; a file this run
        had no row to add to (``--resume`` with every file answered) is written whole first, its kept rows only.
        Raises OSError when that write fails."""
        self.close()
        if not self.written:
            names = self._names()
            write_atomic(self.path, [_csv_line(names), *(_csv_line(self._cells(e, names)) for _, e in self._entries)])
            self.written = True
        record_output(self.path, partial=None if complete else self.advice)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _csv_line(cells: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(as_given(cells))
    return buf.getvalue()
