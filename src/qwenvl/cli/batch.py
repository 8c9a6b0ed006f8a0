"""`qwenvl batch`: one question over many files (or a requests file), resumable, cached, rate-adapted.

    qwenvl batch photos/ -p "Caption this photo" -o captions.jsonl
    qwenvl batch --requests requests.jsonl -o results.jsonl --csv results.csv
    qwenvl batch scans/*.png -p "Extract the fields" --schema invoice.schema.json -o invoices.jsonl
    qwenvl batch photos/ -p "Caption" -o captions.jsonl --mode batch-api     # half price, within 24 h
    qwenvl batch status BATCH_ID [BATCH_ID...] | qwenvl batch cancel BATCH_ID [BATCH_ID...]

The work is done by ``qwenvl.batch``; this module parses flags, asks about the cost and renders progress.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

from qwenvl._constants import BATCH_POLL_INTERVAL_S, DEFAULT_MAX_RETRIES
from qwenvl.batch.batchapi import BATCH_API_TIMEOUT_S, jobs_left, not_batchable
from qwenvl.batch.inputs import iter_inputs, iter_items_from_inputs, no_media_found, read_requests
from qwenvl.batch.journal import read_open_job_statuses
from qwenvl.batch.runner import (
    DEFAULT_CONCURRENCY,
    RATE_LIMIT_STALL_S,
    Batch,
    Estimate,
    Summary,
)
from qwenvl.cli.common import (
    FILE_NAME,
    FiniteFloat,
    Seconds,
    Verb,
    awaiting_stdin,
    backend_options,
    check_pages_apply,
    confirm_cost,
    err_console,
    error_record,
    fit_line,
    generation_options,
    max_cost_options,
    media_flag_names,
    not_dash,
    option_group,
    pass_opts,
    print_json,
    report,
    request_fields,
    retry_backoff_option,
    service_options,
    shown,
    stdin_text,
    take_stdin,
)
from qwenvl.errors import (
    APIError,
    AuthenticationError,
    OptionNotAppliedError,
    QwenVLError,
    UsageError,
    safe_line,
    written,
)
from qwenvl.models import format_cost, model_info
from qwenvl.outputs import check_outputs
from qwenvl.plan import check_extra, check_model_rules
from qwenvl.spelling import nearest


class BatchGroup(click.Group):
    """`qwenvl batch ARGS` runs a batch; `qwenvl batch status|cancel ID` are subcommands; `qwenvl batch` alone
    shows this group's help, as `qwenvl` alone does."""

    command_class = Verb

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands:
            first = args[0]
            if not first.startswith("-") and not any(c in first for c in "*?[") and not os.path.lexists(first):
                # `qwenvl batch stauts ID`: a typo'd subcommand, not an input file that is missing
                near = nearest(first, [c for c in self.commands if c != "run"])
                if near:
                    raise click.UsageError(
                        f"No such command or file '{first}'. Did you mean 'qwenvl batch {near}'?", ctx
                    )
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        """Shell completion of `qwenvl batch ...`: the subcommands, and, as the words may be `run`'s (the shortcut),
        `run`'s options and its INPUTS (file names)."""
        from qwenvl.cli.completion import file_items

        items = super().shell_complete(ctx, incomplete)
        run = self.commands["run"]
        with run.make_context("run", [], parent=ctx, resilient_parsing=True) as sub:
            items += run.shell_complete(sub, incomplete)
        if not incomplete.startswith("-"):
            items += file_items(incomplete)
        return items


@click.group(cls=BatchGroup)
def batch() -> None:
    """Ask one question about many files, or run a requests file: qwenvl batch photos/ -p "Caption" -o out.jsonl

    \b
    qwenvl batch INPUTS... -p PROMPT -o OUT.jsonl
        (short for `qwenvl batch run`: see its --help)
    qwenvl batch --requests requests.jsonl -o OUT.jsonl
    qwenvl batch status ID... | qwenvl batch cancel ID...   (Batch API jobs)
    """


def _check_flags(job: Batch, fields: dict[str, Any], *, model_known: bool) -> None:
    """The flags apply to every item (they override a requests file's lines): one that no item can take is a usage
    error now (exit 2), not the same error recorded on every item with exit 0. UsageError: an invalid field or
    ``--param`` (a misspelt name too: ``plan.check_extra``; one a local backend cannot honour: its
    ``check_params``), options that contradict each other, and, when the model is the same for every item
    (``model_known``: not left to the lines of a requests file), its rules (``plan.check_model_rules``) and, with
    ``--mode batch-api``, whether the Batch API can run it (``batchapi.not_batchable``: a stream-only model
    cannot). When the model is left to the lines, the library's estimate refuses a rule that every pending item
    fails the same way (``Batch.estimate``)."""
    request = job.planner.request(fields)
    check_extra(request.extra, job.planner.protocol)  # a misspelt --param: refused now, not on every item
    local = job.planner.local_backend or job.planner.is_local
    if local:  # a --param the local backend cannot honour (transformers' table): refused now too
        check_params = getattr(job.planner.backend, "check_params", None)
        if check_params is not None:
            check_params(request)
    if model_known and not local:
        check_model_rules(request, job.planner.protocol)
        if job.mode == "batch-api":  # a model the Batch API cannot run (stream-only): refused, not every item's error
            refused = not_batchable(model_info(request.model), request.model)
            if refused is not None:
                raise UsageError(refused.message + ": nothing was sent or written", hint=refused.refused_hint)


def _estimate(job: Batch, opts: dict[str, Any]) -> Estimate:
    """``job.estimate()``; a flag that only some media read (``--pages``, ``--fps``, ``--high-res``...: they override
    a requests file's lines) that no pending item takes (each one's plan refuses it: ``plan.check_media_options``)
    is refused in the flag's words (exit 2), for a file of one line too, before anything is sent or written."""
    flags = media_flag_names()  # by the Request field they set (the refusal names the field: NotApplied.field)
    if opts.get("pages"):
        flags["pages"] = "--pages"

    def flagged(exc: BaseException) -> UsageError | None:  # the refusal as data (errors.OptionNotAppliedError)
        refusal = exc.refusal if isinstance(exc, OptionNotAppliedError) else None
        if refusal is None or refusal.field not in flags:
            return None
        flag = flags[refusal.field]
        return refusal.named(flag).error(
            f"{flag} applies to {refusal.media} only: no request takes it; nothing was sent or written",
            hint=f"Leave out {flag}, or give it only with requests it applies to.",
        )

    try:
        est = job.estimate()
    except UsageError as exc:
        refused = flagged(exc) if flags else None
        if refused is not None:
            raise refused from None
        raise
    if flags and est.pending and est.invalid == est.pending:
        fields = {getattr(getattr(e, "refusal", None), "field", None) for e in est.errors.values()}
        first = next(iter(est.errors.values()), None)
        refused = flagged(first) if len(fields) == 1 and first is not None else None
        if refused is not None:
            raise refused
    return est


def _show_estimate(est: Estimate, opts: dict[str, Any]) -> None:
    console = err_console()
    parts = [f"{est.items:,} items"]
    if est.finished:
        parts.append(f"{est.finished:,} already finished in {opts['output']}")
    if est.submitted:
        parts.append(f"{est.submitted:,} in Batch API jobs already (not sent again: collected once the jobs are over)")
    if est.invalid:
        parts.append(f"[yellow]{est.invalid:,} invalid (recorded as errors, not sent)[/]")
    if est.cached:
        parts.append(f"{est.cached:,} answered from the cache")
    console.print(" · ".join(parts))
    if not est.to_send:
        return
    half = " at the Batch API's half price" if est.price_factor != 1 else ""
    if est.local:  # a local model has no price (models.LOCAL): tokens only
        console.print(
            f"{est.to_send:,} requests to send ({escape(', '.join(est.models))}): ≈{est.input_tokens:,} input "
            f"tokens, cost: {format_cost(None, None, local=True)} (a local model has no price)",
            highlight=False,
        )
        return
    line = (
        f"{est.to_send:,} requests to send ({', '.join(est.models)}): ≈{est.input_tokens:,} input tokens, "
        f"≈{format_cost(est.cost_input, est.currency)} input, up to {format_cost(est.cost_max, est.currency)} "
        f"with every answer at max_tokens{half}"
    )
    console.print(line)
    if est.unknown_media:
        console.print(f"[dim]{est.unknown_media:,} remote media of unknown size are not counted[/]")
    if est.unpriced:
        names = escape(", ".join(est.unpriced_models))
        console.print(
            f"[yellow]{est.unpriced:,} requests use a model with no known price ({names}): their cost is unknown, "
            "not counted above[/]",
            highlight=False,
        )


def _confirm_fresh(est: Estimate, opts: dict[str, Any]) -> None:
    """--fresh over answered items deletes results that were paid for: said, then asked (on a terminal) or
    refused (elsewhere) unless --yes, as ``_confirm_cost`` does."""
    if not est.replaced:
        return
    if est.local:  # a local model's answers cost no money
        again = ", and asked again"
    elif opts["no_cache"]:
        again = ", and paid for again"
    else:  # the response cache still has the answers it gave: said as the estimate found it
        again = (
            f"; with the cache on, {est.cached:,} of this run's requests are answered from it at no cost "
            f"(unless --no-cache) and {est.to_send:,} are sent and paid for"
        )
    text = f"--fresh replaces the {est.replaced:,} answers in {opts['output']} (they are deleted{again})"
    if opts["yes"]:
        err_console().print(f"[yellow]{escape(safe_line(text))}[/]", highlight=False)
        return
    if sys.stdin.isatty() and err_console().is_terminal:
        if click.confirm(f"{text}. Go on?", default=False, err=True):
            return
        raise UsageError(
            "not confirmed: nothing was sent or deleted",
            hint="Run without --fresh to continue, or write to another output (-o another.jsonl).",
        )
    raise UsageError(
        f"{text}: nothing was sent or deleted",
        hint="Pass --yes to replace them, or write to another output (-o another.jsonl).",
    )


class _Bar:
    """A rich progress bar on stderr: done, failed, rate, ETA, tokens and cost so far."""

    def __init__(self, currency: str | None = "CNY", *, local: bool = False) -> None:
        self.currency, self.local = currency, local
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]}[/] failed"),
            TextColumn("{task.fields[rate]}/s"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[tokens]} tokens · {task.fields[cost]}"),
            TextColumn("[dim]{task.fields[extra]}[/]"),
            console=err_console(),
            transient=False,
        )
        self.task = self.progress.add_task(
            "batch",
            total=None,
            failed=0,
            rate="0.0",
            tokens="0",
            cost=format_cost(0.0, currency, local=local),
            extra="",
        )

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, p: Any) -> None:
        import time

        elapsed = max(time.monotonic() - p.started, 1e-6)
        extra = (
            p.detail
            if p.phase != "realtime"
            else f"concurrency {p.concurrency}" + (f", {p.rate_limited} × 429" if p.rate_limited else "")
        )
        self.progress.update(
            self.task,
            total=p.total or None,
            completed=p.done,
            failed=p.failed,
            rate=f"{p.done / elapsed:.1f}",
            tokens=f"{p.input_tokens + p.output_tokens:,}",
            cost=format_cost(p.cost_so_far(), self.currency, local=self.local)
            + (f" (+{p.unpriced:,} unpriced)" if p.unpriced and not self.local else ""),
            extra=escape(shown(extra, sys.stderr)),  # a Batch API job's status text comes from the service
            description="batch" if p.phase == "realtime" else p.phase,
        )


RATE_LIMIT_NOTICE_S = 30.0  # off a terminal, a run waiting on 429s says so on stderr at most this often


def _say_off_terminal() -> Callable[[Any], None]:
    """The progress callback off a terminal (no bar), on stderr: once, that an interrupted run waits for its
    requests in flight (``Progress.phase`` "stopping", the words in ``detail``); and while the service answers 429,
    a line at the first and then at most every ``RATE_LIMIT_NOTICE_S`` (a bar shows both on a terminal)."""
    said = False
    seen, last = 0, -math.inf

    def progress(p: Any) -> None:
        nonlocal said, seen, last
        if p.phase == "stopping" and not said:
            said = True
            click.echo(safe_line(p.detail), err=True)
        now = time.monotonic()
        if p.rate_limited > seen and now - last >= RATE_LIMIT_NOTICE_S:
            seen, last = p.rate_limited, now
            click.echo(
                f"rate limited: {p.rate_limited:,} × 429 so far, {p.done:,} of {p.total:,} items done, concurrency "
                f"{p.concurrency}; the batch slows down and waits (it stops after {RATE_LIMIT_STALL_S / 60:g} min "
                "with no item finished)",
                err=True,
            )

    return progress


def _show_notes(notes: list[str]) -> None:
    """What the user must know about the run (``Summary.notes``: answers set aside, jobs still running...), one line
    each on stderr in every output mode: on a terminal in yellow, elsewhere as ``note: ...`` (beside the JSON
    summary, which has them too, a reader of stderr sees them)."""
    console = err_console()
    for note in notes:
        note = fit_line(note)  # in the verb's words (batch run, batch status...)
        if console.is_terminal:
            console.print(f"[yellow]{escape(safe_line(note))}[/]", highlight=False)
        else:
            click.echo(f"note: {safe_line(note)}", err=True)


def _show_summary(s: Summary, opts: dict[str, Any]) -> None:
    console = err_console()
    if opts["as_json"]:
        print_json(s.to_dict(), indent=None)
    if not console.is_terminal:
        if not opts["as_json"]:
            import json

            click.echo(json.dumps(s.to_dict(), ensure_ascii=False), err=True)
        _show_notes(s.notes)
        return
    status = "[green]done[/]" if not s.pending else f"[yellow]{s.pending:,} pending[/]"
    if s.interrupted:
        status = f"[yellow]interrupted[/] ({s.pending:,} pending: the same command resumes)"
    output = escape(safe_line(s.output))  # the user's file name
    console.print(f"{status}: {s.ok:,} ok, {s.error:,} failed of {s.total:,} → {output}", highlight=False)
    cost = (
        f"cost: {format_cost(None, None, local=True)} (a local model has no price)"
        if s.local
        else "≈" + format_cost(s.cost, s.currency)
    )
    if not s.cost_complete and s.cost is not None:  # a sum that leaves requests out is not the whole cost
        cost += " + ?"
    if s.unpriced and not s.local:
        cost += f" (leaving out {s.unpriced:,} answers of a model with no known price)"
    line = (
        f"this run: {s.this_run:,} finished, {s.sent:,} requests"
        + (f" ({s.abandoned:,} given up in flight: possibly paid)" if s.abandoned else "")
        + f", {s.cached:,} from the cache, "
        f"{s.input_tokens:,} in / {s.output_tokens:,} out tokens, {cost}, {s.elapsed_s:.1f} s"
    )
    if s.rate_limited:
        line += f", {s.rate_limited} × 429"
    console.print(f"[dim]{line}[/]")
    _show_notes(s.notes)
    for failure in s.job_failures[1:]:  # the service's words; the first is the exit-5 error's line
        console.print(f"[red]{escape(safe_line(failure['message']))}[/]", highlight=False)
    if s.error:  # --retry-errors only for what may answer when sent again; an input error is to fix first
        own = s.error - s.service_errors
        said = [f'failed items have "status": "error" in {output}']
        if s.service_errors:
            said.append(f"{s.service_errors:,} failed for the service's reasons: --retry-errors sends them again")
        if own:
            said.append(
                f"{own:,} failed for their input: their error says what to fix (the file or the request), then "
                "--retry-errors sends them again"
            )
        console.print(f"[dim]{escape('; '.join(said))}[/]")


@batch.command("run")
@click.argument("inputs", type=FILE_NAME, nargs=-1)
@click.option("-p", "--prompt", help="The question, asked about every input ('-' reads it from stdin).")
@click.option(
    "--requests",
    "requests_file",
    type=FILE_NAME,
    metavar="FILE",
    help='A JSONL file: one request per line, {"id": ..., "prompt": ..., "image": ...} (\'-\' reads stdin).',
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=FILE_NAME,
    metavar="FILE.jsonl",
    callback=not_dash("Give a file: it is also the key for resuming (run the same command again to continue)."),
    help="Results, one JSON line per input (also the key for resuming: run again to continue).",
)
@click.option(
    "--csv",
    "csv_file",
    type=FILE_NAME,
    metavar="FILE",
    callback=not_dash("Give a file name for the CSV, e.g. --csv results.csv."),
    help="Also write the results as CSV.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="realtime: most requests in flight (lowered on 429, then recovered).",
)
@click.option("--rpm", type=FiniteFloat(min=0, min_open=True), help="realtime: ceiling in requests per minute.")
@click.option(
    "--tpm",
    type=FiniteFloat(min=0, min_open=True),
    help="realtime: ceiling in tokens per minute (estimated input, corrected by the answers).",
)
@max_cost_options
@click.option("--no-cache", is_flag=True, help="Send every request, even one answered before.")
@click.option("--retry-errors", is_flag=True, help="Send again the items that ended in an error last time.")
@click.option(
    "--fresh",
    is_flag=True,
    help="Start over: delete this output and its journal (refused while another run writes them). Answers "
    "already paid for are deleted only when confirmed: asked on a terminal, else only with --yes.",
)
@click.option(
    "--mode",
    type=click.Choice(["realtime", "batch-api"]),
    default="realtime",
    show_default=True,
    help="batch-api: DashScope's Batch API, half price, results within 24 h (Beijing only).",
)
@click.option(
    "--poll-interval",
    type=Seconds(),
    default=BATCH_POLL_INTERVAL_S,
    show_default=True,
    help="batch-api: seconds between status checks.",
)
@click.option("--no-wait", is_flag=True, help="batch-api: submit and exit; run the same command later to collect.")
@click.option("--dry-run", is_flag=True, help="Print the estimate as JSON and send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON on stdout.")
@generation_options
@service_options
@pass_opts
def run(opts: dict[str, Any]) -> None:
    """Ask PROMPT about every input: qwenvl batch photos/ "*.jpg" -p "Caption this" -o captions.jsonl

    INPUTS are files, folders (walked for images, videos and PDFs) and globs; each is one item, with its path
    as id. Or --requests FILE.jsonl: one request per line with an "id" and the fields of qwenvl.Request
    (prompt, image/images, video, model, max_tokens, schema, ...); flags override them.

    \b
    Killed or interrupted? Run the same command again: only unfinished items
    are sent.
    Rate limited (429)? The batch slows down and waits (each wait at most
    20 s, said on stderr): a 429 does not count against --max-retries. A
    Retry-After over 20 s, or 5 min with only 429s, stops it (exit 5): the
    same command resumes.
    Each output line: {"id", "input", "status": "ok"|"error",
                       "result"|"error", "usage", "cost", ...}.
    Batch API jobs: qwenvl batch status ID [ID...]
                    qwenvl batch cancel ID [ID...]
    `qwenvl batch ARGS` is short for `qwenvl batch run ARGS` (this command).
    """
    fields = request_fields(opts)
    prompt = opts["prompt"]
    outputs = {"-o/--output": opts["output"], "--csv": opts["csv_file"]}
    read = {"--requests": opts["requests_file"], "--schema": opts["schema_file"], "INPUTS": opts["inputs"]}
    # before standard input is read or anything sent (the runner checks again); --fresh starts over, so it may
    # replace a --csv file qwenvl did not write (never advised for it: it also deletes the batch's answers)
    check_outputs(outputs, inputs=read, resumed={"-o/--output"}, force=opts["fresh"], force_flag=None)
    if prompt == "-" and opts["requests_file"] == "-":
        raise UsageError(
            "standard input can give the prompt (-p -) or the requests (--requests -), not both",
            hint='Give the prompt with -p "..." and the requests from a file, or put the prompt in each request.',
        )
    if prompt == "-":
        prompt = stdin_text("the prompt")
    if opts["requests_file"] == "-":
        take_stdin("the requests (--requests -)")
        awaiting_stdin("the requests (JSONL)")
    if prompt is not None and not prompt.strip():
        raise UsageError("the prompt is empty", hint='Give the question as words, e.g. -p "Describe the picture".')
    if opts["requests_file"]:
        if opts["inputs"]:
            raise UsageError(
                "give either INPUTS with -p, or --requests FILE, not both",
                hint="Leave out the files (put each file in its request), or leave out --requests.",
            )
        items = read_requests(opts["requests_file"], {**fields, **({"prompt": prompt} if prompt else {})})
    else:
        if not opts["inputs"]:
            raise UsageError(
                "nothing to do: give files, folders or globs (with -p PROMPT), or --requests FILE",
                hint='For example: qwenvl batch run photos/ -p "Describe" -o out.jsonl',
            )
        if prompt is None:
            raise UsageError(
                'no prompt: give one with -p "..."',
                hint='For example: qwenvl batch run photos/ -p "Describe" -o out.jsonl',
            )
        if opts["pages"] or media_flag_names():  # no input they apply to: refused, not ignored
            check_pages_apply(opts, list(iter_inputs(opts["inputs"])))  # each stops at the first PDF or video
        refs = iter_inputs(opts["inputs"])  # walked as Batch takes them: no list of paths
        first = next(refs, None)
        if first is None:
            raise no_media_found(opts["inputs"])
        items = iter_items_from_inputs(itertools.chain((first,), refs), {"prompt": prompt, **fields})
    job = Batch(
        items,
        opts["output"],
        csv=opts["csv_file"],
        concurrency=opts["concurrency"],
        rpm=opts["rpm"],
        tpm=opts["tpm"],
        cache=not opts["no_cache"],
        retry_errors=opts["retry_errors"],
        fresh=opts["fresh"],
        mode=opts["mode"],
        protocol=opts["protocol"],
        region=opts["region"],
        base_url=opts["base_url"],
        poll_interval_s=opts["poll_interval"],
        wait=not opts["no_wait"],
        # the Batch API's own calls (upload, create, poll, download) take the network settings from here
        **{k: opts[k] for k in ("timeout_s", "max_retries", "retry_backoff_s") if opts.get(k) is not None},
        key_first=not opts["dry_run"],  # no key, nothing finished or cached: said before the input is read
        option_names={"output": "-o/--output", "csv": "--csv", "max_cost": "--max-cost"},  # its errors name the flags
        **backend_options(opts),
    )
    click.get_current_context().call_on_close(job.close)  # however the verb ends (a dry run, a refusal, Ctrl-C)
    _check_flags(job, {"prompt": prompt or "?", **fields}, model_known=not opts["requests_file"] or "model" in fields)
    est = _estimate(job, opts)
    if opts["dry_run"]:
        print_json({"event": "estimate", **est.to_dict()}, indent=None)
        return
    terminal = err_console().is_terminal
    if terminal:
        _show_estimate(est, opts)
    if est.to_send or job.mode == "batch-api":
        job.check_key()
    _confirm_fresh(est, opts)
    # the cap in force, checked again by the run against what it really pays (repairs included) before each request
    cap = confirm_cost(est, opts, "This batch")
    try:
        if terminal:
            with _Bar(est.currency, local=est.local) as bar:
                summary = job.run(progress=bar, max_cost=cap)
        else:
            summary = job.run(progress=_say_off_terminal(), max_cost=cap)
    except KeyboardInterrupt:
        if job.summary is not None:  # what the run left, as a run that ended shows it (the JSON line included)
            _show_summary(job.summary, opts)
        jobs = read_open_job_statuses(job.output) if job.mode == "batch-api" else {}
        if jobs:
            said = jobs_left(jobs, region=opts["region"], base_url=opts["base_url"])
            err_console().print(f"[dim]stopped waiting: {escape(safe_line(said))}[/]", highlight=False)
        else:
            err_console().print(
                f"[dim]finished items are kept in {escape(safe_line(job.output))}: "
                "run the same command again to resume[/]"
            )
        raise
    _show_summary(summary, opts)
    failure = summary.service_failure()
    if failure is not None:  # the items are not at fault: the run did not succeed (exit 5)
        raise failure


def _api(opts: dict[str, Any]) -> Any:
    from qwenvl.batch.batchapi import BatchAPI

    network = {k: opts[k] for k in ("timeout_s", "max_retries", "retry_backoff_s") if opts.get(k) is not None}
    return BatchAPI(region=opts["region"], base_url=opts["base_url"], **network)


_with_api_options = option_group(
    click.option("--region", metavar="REGION", help="Service region (the Batch API for VL models: cn only)."),
    click.option("--base-url", metavar="URL", help="Endpoint, e.g. http://127.0.0.1:8100 (a qwenvl serve)."),
    click.option(
        "--timeout",
        "timeout_s",
        type=Seconds(),
        help=f"Seconds per attempt (default {BATCH_API_TIMEOUT_S:g}).",
    ),
    click.option(
        "--max-retries",
        type=click.IntRange(min=0),
        help=f"Retries on 429/5xx/time-outs (default {DEFAULT_MAX_RETRIES}; 0: none).",
    ),
    retry_backoff_option,
    click.option("--json", "as_json", is_flag=True, help="Print each job as JSON, one line per job."),
)


def _print_job(job: dict[str, Any]) -> None:
    from qwenvl.batch.batchapi import counts_text, job_times

    click.echo(shown(f"{job.get('id')}: {counts_text(job)}"))  # the job is the service's
    for key in ("input_file_id", "output_file_id", "error_file_id"):
        if job.get(key):
            click.echo(shown(f"  {key}: {job[key]}"))
    for key, value in job_times(job):  # ISO-8601 UTC; --json keeps the service's Unix seconds
        click.echo(shown(f"  {key}: {value}"))
    errors = job.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    for err in (data if isinstance(data, list) else [])[:5]:
        if isinstance(err, dict):
            click.echo(shown(f"  error: {err.get('code')}: {err.get('message')}"))


def _failed_job(batch_id: str, exc: QwenVLError, verb: str, *, tried: bool = True) -> dict[str, Any]:
    """The JSON line of an id that could not be shown or cancelled (``--json``): ``{"id", "error": {...}}``."""
    said = f"not {verb}: {written(exc)}" if tried else f"not tried: {written(exc)}"
    return {"id": batch_id, "error": {**error_record(exc), "message": said}}  # every verb's shape of an error


def _each_job(
    opts: dict[str, Any], act: Callable[[Any, str], dict[str, Any]], show: Callable[[dict[str, Any]], None], verb: str
) -> None:
    """``act`` on each of ``opts["batch_ids"]`` (each once, in order): its job shown (``--json``: one JSON line per
    id on stdout, ``{"id", "error": {...}}`` for one that failed), or an error line on stderr naming the id ("ID: not
    VERB: ..."), and on to the next. An id that cannot be a job id is a usage error (exit 2) before any request
    (``batchapi.check_batch_id``); an unknown one an input error (exit 3, ``UnknownBatchError``). Exits with the
    worst result's code (0: every job went well); a key refused (exit 4) stops at once, naming the ids not tried
    (with ``--json``, each of them an error line too)."""
    from qwenvl.batch.batchapi import check_batch_id

    ids = list(dict.fromkeys(opts["batch_ids"]))
    for batch_id in ids:
        check_batch_id(batch_id)
    worst: QwenVLError | None = None
    with _api(opts) as api:
        for n, batch_id in enumerate(ids):
            try:
                job = act(api, batch_id)
            except AuthenticationError as exc:  # every id would meet the same key
                rest = ids[n + 1 :]
                if opts["as_json"]:
                    print_json(_failed_job(batch_id, exc, verb), indent=None)
                    for other in rest:
                        print_json(_failed_job(other, exc, verb, tried=False), indent=None)
                if rest:
                    exc.hint = f"{exc.raw_hint or ''} Not tried: {', '.join(rest)}.".strip()
                raise
            except APIError as exc:
                failed = APIError(f"{batch_id}: not {verb}: {written(exc)}", hint=exc.raw_hint)
                failed.exit_code = exc.exit_code
                report(failed)
                if opts["as_json"]:
                    print_json(_failed_job(batch_id, exc, verb), indent=None)
                if worst is None or failed.exit_code > worst.exit_code:
                    worst = failed
                continue
            if opts["as_json"]:
                print_json(job, indent=None)
            else:
                show(job)
    if worst is not None:
        click.get_current_context().exit(worst.exit_code)


@batch.command("status")
@click.argument("batch_ids", nargs=-1, required=True, metavar="BATCH_ID...")
@_with_api_options
@pass_opts
def status(opts: dict[str, Any]) -> None:
    """Show Batch API jobs: status, request counts, files, errors: qwenvl batch status BATCH_ID [BATCH_ID...]

    --json: each job as JSON, one line per id ({"id", "error": {...}} for one that cannot be shown). A job that
    cannot be shown is also an error line on stderr naming it; the exit code is the worst result's (3: an unknown
    id; 2: a string that is not a job id, refused before any request)."""
    _each_job(opts, lambda api, batch_id: api.retrieve(batch_id), _print_job, "shown")


# What a cancel did, by the status the service answered with (OpenAI's Batch object, which DashScope keeps).
_CANCEL_SAID = {
    "cancelling": "cancel requested (answers given so far are billed)",
    "cancelled": "cancelled",
    "completed": "already over: nothing to cancel",
    "failed": "already over: nothing to cancel",
    "expired": "already over: nothing to cancel",
}


def _print_cancel(job: dict[str, Any]) -> None:
    from qwenvl.batch.batchapi import counts_text

    said = _CANCEL_SAID.get(str(job.get("status")), "the service has not confirmed the cancel yet")
    click.echo(shown(f"{job.get('id')}: {counts_text(job)}: {said}"))  # the job is the service's


@batch.command("cancel")
@click.argument("batch_ids", nargs=-1, required=True, metavar="BATCH_ID...")
@_with_api_options
@pass_opts
def cancel(opts: dict[str, Any]) -> None:
    """Cancel Batch API jobs: qwenvl batch cancel BATCH_ID [BATCH_ID...] (answers already given are billed).

    Says for each job what happened (one line each on stdout; --json: the jobs as JSON, one line per id, {"id",
    "error": {...}} for one that could not be cancelled; such a job is also an error line on stderr naming it). The
    exit code is the worst result's: 0 when every job was cancelled or was already over, 3 for an unknown id, 2 for
    a string that is not a job id (refused before any request); a key refused (exit 4) stops at once."""
    _each_job(opts, lambda api, batch_id: api.cancel(batch_id), _print_cancel, "cancelled")
