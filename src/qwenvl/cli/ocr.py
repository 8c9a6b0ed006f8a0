"""`qwenvl ocr IMAGE|PDF`: the text, as plain text, Markdown, or JSON lines with their boxes."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
from rich.markup import escape

from qwenvl.cli.common import (
    ANSWER_FORMAT_FLAGS,
    FILE_NAME,
    VIDEO_FLAGS,
    Verb,
    as_given,
    check_pages_apply,
    confirm_cost,
    err_console,
    error_record,
    force_option,
    generation_options_for,
    json_asked,
    json_said,
    make_client,
    max_cost_options,
    media_args,
    not_dash,
    pass_opts,
    request_fields,
    service_options,
    shown,
)
from qwenvl.cli.streams import OutputClosed, stop_if_reader_left
from qwenvl.cli.tasks_common import dry_run, note, refuse_structured, show_usage, verbose_option, warn
from qwenvl.errors import QwenVLError, UsageError, safe_line
from qwenvl.media.sources import classify, media_kind
from qwenvl.models import spent_fields
from qwenvl.notes import answer_notes, once_per_run
from qwenvl.outputs import check_outputs, record_output, write_atomic
from qwenvl.tasks.grounding import model_for
from qwenvl.tasks.ocr import (
    FORMATS,
    NO_TEXT,
    OCR_MAX_TOKENS,
    OCR_TASKS,
    PAGE_BREAK,
    OCRPage,
    OCRResult,
    by_page,
    capped_pages,
    estimate_ocr,
    mark_stopped,
    model_ocr_options,
    pages_left,
    plan_pages,
    send_pages,
)
from qwenvl.types import DuplicateKeyError, loads

if TYPE_CHECKING:
    from qwenvl.batch.runner import Estimate
    from qwenvl.plan import Call


def parse_options(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--ocr-options is not valid JSON: {exc.msg} (column {exc.colno})",
            hint='For example --ocr-options \'{"task": "table_parsing"}\'',
        ) from None
    except DuplicateKeyError as exc:
        raise UsageError(f"--ocr-options: {exc}", hint="Give each key once.") from None
    if not isinstance(value, dict):
        raise UsageError(
            '--ocr-options must be a JSON object, e.g. \'{"task": "table_parsing"}\'',
            hint='Quote the object for the shell: --ocr-options \'{"task": "table_parsing"}\'',
        )
    return value


@click.command(cls=Verb)
@click.argument("file", type=FILE_NAME)
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text, markdown, or json (lines with their boxes in original pixels).",
)
@click.option("--task", help=f"ocr_options.task for the qwen-vl-ocr models ({', '.join(OCR_TASKS)}).")
@click.option(
    "--ocr-options",
    "ocr_options_json",
    metavar="JSON",
    help="The ocr_options parameter as JSON, passed through (e.g. with a result_schema).",
)
@click.option(
    "-o",
    "--output",
    type=FILE_NAME,
    metavar="FILE",
    callback=not_dash("Leave -o out to print the result on standard output."),
    help="Write the result here instead of stdout.",
)
@force_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the first page's request, with the count and estimated cost of every page's request; send nothing.",
)
@max_cost_options
@verbose_option
@generation_options_for(
    max_tokens=f"{OCR_MAX_TOKENS}, or the model's limit if lower", leave_out=(*VIDEO_FLAGS, *ANSWER_FORMAT_FLAGS)
)
@service_options
@pass_opts
def ocr(opts: dict[str, Any]) -> None:
    """Read the text in an image or a PDF: qwenvl ocr scan.png [--format markdown|json]

    The model is the usual default (qwen3-vl-plus) unless --model: the qwen-vl-ocr models work too, and take
    --task / --ocr-options (sent as ocr_options). A PDF is read one request per page, each page written (text,
    markdown) as soon as it is read; json waits for the last page (one document), except in an -o file, which
    holds every page read so far. A PDF's pages are told apart:
    text ends each page with a form feed (\\f, as pdftotext does; split on it), markdown begins each with a
    "<!-- page N -->" line, json lists "pages" (its "text" as text's). A run resumed with --pages N- appended to
    the first gives what one run gives. An -o file of a reading that stopped keeps its pages: a later run
    replaces it only with --force (resume text and markdown with --pages N- >> FILE in place of -o FILE; json
    into another file), as the note after the stop says. Several pages are priced before any is sent: above
    --max-cost, asked (terminal) or refused unless --yes. When no text is found the output holds no text (a
    PDF's page ends only), a note says so on stderr, and the exit status is still 0.
    """
    with once_per_run():  # every page estimated, then planned: a warning about the requests said once
        _read(opts)


def _read(opts: dict[str, Any]) -> None:
    """``qwenvl ocr``'s work, in a run (``once_per_run``)."""
    if opts["fmt"] == "json" and not opts["output"]:
        json_asked()  # stdout holds JSON whatever happens, as with every verb's --json (cli.common.json_failure)
    refuse_structured(opts, "ocr")
    source = media_args([opts["file"]], single=True)[0]
    fmt = opts["fmt"]
    options = parse_options(opts["ocr_options_json"])
    output = check_outputs({"-o/--output": opts["output"]}, inputs={"FILE": source}, force=opts["force"]).get(
        "-o/--output"
    )
    fields = request_fields(opts)
    fields.pop("pages", None)  # OCR sends one request per page: the selection goes to plan_pages
    client = make_client(opts)
    model = model_for(client, fields)
    check_pages_apply(opts, [source])
    pdf = media_kind(classify(source)) == "pdf"
    task, pages = opts["task"], opts["pages"]
    plans = plan_pages(client, source, format=fmt, task=task, options=options, pages=pages, **fields)
    model_ocr_options(model, task, options)  # an unknown task, or one the model does not read: before anything

    # every page's request, priced before any is sent (estimate-only: nothing rendered)
    def estimate() -> Estimate:
        return estimate_ocr(client, source, format=fmt, task=task, options=options, pages=pages, **fields)

    if opts["dry_run"]:
        dry_run(client, next(iter(plans))[1], estimate())
        return
    result = OCRResult(source=source, format=fmt, model=model.name)  # the model asked, until one answers
    streamed = fmt != "json" and output is None  # each page written as it is read; one JSON document waits
    stopped: BaseException | None = None
    kept = _PageFile(result, output) if output is not None else None  # -o: each page on disk as it is read
    try:
        est = estimate()
        if est.to_send > 1:  # one request is capped by nothing, as `ask`'s is not
            from qwenvl.batch.runner import SpendCap  # loaded when a run is priced, not with the CLI

            cap = confirm_cost(est, opts, f"Reading these {est.to_send:,} pages")
            plans = capped_pages(plans, result, SpendCap(cap, est.currency, client.region), client)
        with client:
            if streamed:  # each page written as it comes: a reader that left stops the reading before the next is paid
                plans = _while_read(plans)
            send_pages(client, source, plans, format=fmt, result=result, on_page=_writer(result) if streamed else kept)
    except (QwenVLError, KeyboardInterrupt) as exc:
        if not result.stopped:  # refused before the first request (a plan, the cost cap): nothing read
            mark_stopped(result, None, source, exc)
        if isinstance(exc, OutputClosed) or not (result.pages or (fmt == "json" and output is None)):
            raise  # nothing read: nothing to write (a file given with -o is left as it was)
        stopped = exc  # the pages already read (and paid for) are written first, then the error is reported
    finally:
        if kept is not None:
            kept.close()
    record = result.to_json() | spent_fields(result.responses, region=opts["region"])  # every page's, paid
    record |= {"error": error_record(stopped)} if stopped is not None else {}
    text = json.dumps(as_given(record), ensure_ascii=False, indent=2) if fmt == "json" else result.text
    rest = None
    if stopped is not None and pdf and result.stopped_at:
        try:  # reads the document's page count again: a failure (a URL not fetched again) leaves no note
            rest = pages_left(source, pages, result.stopped_at)
        except QwenVLError:
            rest = None
    if output is not None:  # the whole result (its error too), over the pages kept; a PDF's text ends with its
        # last page's own end (``OCRResult.page_text``)
        output.write_text(text if pdf and fmt != "json" else text + "\n", encoding="utf-8")
        # qwenvl's own: a re-run may write it again, unless it holds the pages of a reading that stopped (paid
        # for): then only with --force, the refusal saying how to keep them (``keep_pages``)
        record_output(output, partial=keep_pages(fmt, output, rest) if stopped is not None else None)
        err_console().print(f"[dim]wrote {escape(safe_line(output))}[/]", highlight=False)
    elif streamed:
        pass  # written page by page (``_writer``)
    elif text:
        click.echo(shown(text))
        json_said()
    warn([w for w in result.warnings if w != NO_TEXT])
    if result.empty and stopped is None:  # a reading that failed found nothing: it did not look
        note(f"no text found in {source}")
    elif pdf:
        blank = [str(p.page) for p in result.pages if not p.text.strip() and not p.lines]
        if blank:
            note(f"no text found on page{'s' if len(blank) > 1 else ''} {', '.join(blank)}")
    notes = (
        (p.page, n)
        for p, r in zip(result.pages, result.responses, strict=True)
        for n in answer_notes(r, include_cut_off=False)
    )
    warn(by_page(notes))  # each answer's notes, once each with the pages that have it (cut-offs: the pages' own)
    show_usage(*result.responses, notes=False, region=opts["region"], footer=fmt != "json", verbose=opts["verbose"])
    if stopped is not None:
        read = ", ".join(str(p.page) for p in result.pages)
        why = "interrupted" if isinstance(stopped, KeyboardInterrupt) else "failed"
        if result.pages:
            where = f"kept in {output}" if output is not None else "shown"
            note(f"page {result.stopped_at} {why}: only page{'s' if len(result.pages) > 1 else ''} {read} {where}")
            if rest and output is None:
                note(f"to read the rest, run it again with --pages {rest}")
            elif rest and output is not None:
                note(f"to read the rest, run it again with {resume_args(fmt, output, rest)}")
        raise stopped  # the error that stopped the reading, never one of the note's


def resume_args(fmt: str, output: Path, rest: str) -> str:
    """The arguments that read the rest (``rest``: a ``--pages`` selection, e.g. ``"3-"``) of a reading stopped
    with ``-o output`` without replacing the pages kept there: text and Markdown appended to it (``>>``: each page
    carries its own break, so the file is then what one run writes), JSON into another file (one document each).
    Raises nothing."""
    if fmt == "json":
        other = output.with_name(f"{output.stem}-{rest.rstrip('-').replace(',', '_')}{output.suffix or '.json'}")
        return f"--pages {rest} -o {shlex.quote(str(other))} in place of -o {shlex.quote(str(output))}"
    return f"--pages {rest} >> {shlex.quote(str(output))} in place of -o {shlex.quote(str(output))}"


def keep_pages(fmt: str, output: Path, rest: str | None) -> str:
    """The advice recorded with the -o file of a reading that stopped (``record_output(partial=...)``), said when a
    later run would replace it: how to read the rest and keep the pages (``resume_args``). Raises nothing."""
    if rest:
        return f"to keep its pages, read the rest with {resume_args(fmt, output, rest)}"
    return "to keep its pages, read the rest into another file (-o NEW), or append it (>> FILE, text and markdown)"


def _while_read(plans: Iterable[tuple[int | None, Call]]) -> Iterator[tuple[int | None, Call]]:
    """``plans``, each page's after the first handed on only while stdout's reader is there
    (``stop_if_reader_left``: ``OutputClosed`` otherwise), checked once the page is ready to be sent."""
    for i, plan in enumerate(plans):
        if i:
            stop_if_reader_left()
        yield plan


class _PageFile:
    """``-o``: each page on disk as it is read (paid for), so that whatever stops the reading (a crash, a kill)
    keeps the pages before it: text and Markdown appended and flushed (the file opened at the first page with
    text: until then a file there is left as it was), JSON written whole again (``write_atomic``: the document so
    far, valid JSON). The run's end writes the whole result over it (``close`` first)."""

    def __init__(self, result: OCRResult, output: Path) -> None:
        self.result, self.output = result, output
        self._fh: IO[str] | None = None

    def __call__(self, page: OCRPage) -> None:
        # recorded partial until the run's end: a run killed now leaves pages a re-run must not replace unasked
        partial = keep_pages(self.result.format, self.output, None)
        if self.result.format == "json":
            document = json.dumps(as_given(self.result.to_json()), ensure_ascii=False, indent=2)
            write_atomic(self.output, [document + "\n"])
            record_output(self.output, partial=partial)
            return
        block = self.result.page_text(page)  # as the run's end writes it: a PDF page with its own break
        if not block:
            return
        if self._fh is None:
            self._fh = self.output.open("w", encoding="utf-8")
        self._fh.write(block)
        self._fh.flush()
        record_output(self.output, partial=partial)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _writer(result: OCRResult) -> Callable[[OCRPage], None]:
    """Write each page to stdout as it is read, as ``OCRResult.text`` holds it (``page_text``: a PDF page with its
    form feed or ``<!-- page N -->`` line, a blank page too; an image's text with a newline), flushed: a reader sees
    every page at once, and one that left stops the reading at the next write (``OutputClosed``, exit 141) before
    another page is paid for. On a terminal the model's text is shown safe (``shown``); the form feed is written as it
    is (a terminal moves down a line)."""

    def write(page: OCRPage) -> None:
        if page.page is None:  # an image: its text, and the line ended
            if page.text:
                click.echo(shown(page.text))
            return
        block = result.page_text(page)
        click.echo(PAGE_BREAK.join(shown(part) for part in block.split(PAGE_BREAK)), nl=False)  # click flushes

    return write
