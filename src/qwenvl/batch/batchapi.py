"""The DashScope Batch API (OpenAI-compatible): half price, results within 24 hours.

Flow (``qwenvl batch ... --mode batch-api``):

1. every pending item is planned as for a realtime request (media checked and prepared to the model's
   budget) and becomes one JSONL line ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
   "body": <the OpenAI-compatible body>}``;
2. lines are grouped into files of one model and one thinking mode each, at most 50,000 lines and
   ``MAX_FILE_BYTES`` per file; a line over 6 MB is that item's error. Each file is written to a temporary
   file (``$TMPDIR``) and streamed from it to the upload; which file each item's line is in is kept in the
   batch's spool, so memory does not grow with the items (``bench/bench_batch.py --case text:batch-api``);
3. each file is uploaded (``POST {base}/files``, ``purpose=batch``) and recorded in the journal, then a job is
   created for it (``POST {base}/batches``, ``completion_window: 24h``) and its id committed to the journal
   at once. A run stopped between the two (or a create whose reply was lost) finds the job by its input file
   (``GET {base}/batches?input_file_ids=...``, page after page, bounded) before it creates one: a job is never
   created, nor paid for, twice. An input file or a job the service refuses (``REFUSED``) makes its items
   errors (``BatchJobFailedError``), so that a rerun does not upload them again unasked;
4. the jobs are polled (``GET {base}/batches/{id}``) every ``poll_interval_s`` with progress from
   ``request_counts``, until each is over or past its ``expires_at`` by ``OVERDUE_GRACE_S`` (then the run
   stops with an error; the job stays in the journal);
5. the output and error files are streamed (``GET {base}/files/{id}/content``, line by line) and merged into
   the same output lines as realtime results (plus ``"mode": "batch-api"`` and ``"batch_id"``; cost at half
   price).

A job that expires or is cancelled keeps what it answered; the lines it did not run (``batch_expired`` /
``batch_cancelled`` in its error file, or in neither file) are left pending and the next run submits them
again. A job that fails (validation included) records its error for each of its items (``BatchJobFailedError``).
Either way the job is in ``Summary.job_failures`` with the service's reason, and the CLI exits 5
(``Summary.service_failure``). A failed line (its error in the error file) is that item's error. Ctrl-C, a
kill, a 401 or a failed poll leave the jobs running on the service: the same command collects them. VL batch
exists in the Beijing region only: any other region is refused before anything is sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import re
import shlex
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from qwenvl._constants import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BACKOFF_S
from qwenvl.batch.inputs import BatchItem, in_line_words
from qwenvl.batch.journal import UPLOAD_PREFIX, Journal
from qwenvl.batch.spool import temporary_error
from qwenvl.client import check_structured, make_request
from qwenvl.config import REGIONS, normalize_region, require_api_key, resolve_base_url
from qwenvl.errors import (
    EXIT_INPUT,
    APIError,
    APIStatusError,
    MalformedResponseError,
    MediaError,
    NotFoundError,
    QwenVLError,
    StructuredOutputError,
    UsageError,
    detached,
    safe_line,
    written,
)
from qwenvl.models import ModelInfo, answer_cost, currency_of
from qwenvl.plan import ensure_sendable
from qwenvl.protocols import compat
from qwenvl.protocols.common import error_from_body
from qwenvl.retry import retry_delay, should_retry
from qwenvl.store.exchange import may_be_billed
from qwenvl.store.usage import Entry
from qwenvl.transport import Policy, Transport
from qwenvl.types import MAX_RETRIES, Response, count, seconds

if TYPE_CHECKING:
    import httpx

    from qwenvl.batch.runner import Batch, Progress

# Sources: [batch] alibabacloud.com/help/en/model-studio/batch-interfaces-compatible-with-openai (Dec 2025) and
# help.aliyun.com/zh/model-studio/batch-inference (2025-11-06), reference/dashscope-api.md §5; checked against
# Model Studio's batch page 2026-11 (issue 10). [list]: the list endpoint and its input_file_ids filter,
# platform.qianwenai.com/docs/api-reference/platform-api/batch/list-batches.
ENDPOINT = "/v1/chat/completions"  # [batch]
COMPLETION_WINDOW = "24h"  # [batch]
MAX_LINES = 50_000  # per input file [batch]
MAX_LINE_BYTES = 6_000_000  # per line: 6 MB [batch]
MAX_FILE_BYTES = 100_000_000  # per input file: ours (the service takes 500 MB): sooner uploaded, and retried
# Batch API calls cost half the realtime price (of the request's tier) [batch page, alibabacloud.com/help/en/
# model-studio/batch-interfaces-compatible-with-openai, Dec 2025; "Model Studio pricing page, checked 2026-11
# (issue 10)"]; the model cards' batch prices are exactly half their realtime ones (reference/dashscope-api.md
# section 4.3: qwen-vl-max 0.0008 / 0.002 against 0.0016 / 0.004 CNY per 1K tokens). Applied by
# models.answer_cost(factor=...), the one pricing rule.
PRICE_FACTOR = 0.5
# VL batch exists in Beijing only [same batch page; reference/dashscope-api.md §5]: its costs are in CNY.
BATCH_REGION = "cn"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# The codes of lines a job did not run (OpenAI's BatchRequestOutput.error.code, which the compatible API keeps):
# not the item's error, the item is pending again.
NOT_RUN = frozenset({"batch_expired", "batch_cancelled"})
# Seconds past a job's expires_at (created_at + 24 h when it gives none) after which the run stops waiting for a
# job the service still calls running (ours: the service expires a job at the end of its window [batch]).
OVERDUE_GRACE_S = 3600.0
WINDOW_S = 24 * 3600.0  # COMPLETION_WINDOW in seconds
# Statuses by which the service refuses an input file or a job for what it is (not the key, the rate or a missing
# file): its items are errors (BatchJobFailedError), recorded, so that a rerun does not upload them again.
REFUSED = frozenset({400, 413, 415, 422})
# Finding a job by its input file (GET /batches?input_file_ids=..., [list]): pages of LIST_PAGE jobs, newest
# first, followed by ``after`` while ``has_more``; at most LIST_PAGES pages and LIST_DEADLINE_S seconds (ours).
LIST_PAGE = 100  # the most the list endpoint returns at once [list]
LIST_PAGES = 100
LIST_DEADLINE_S = 600.0
LAST_LOOK_S = 5.0  # after Ctrl-C, the one look at each job's status (ours: short, the user is leaving)
PLAN_CHUNK = 64  # items planned at a time (bounded memory for prepared media)
REGION_NAMES = {"cn": "Beijing", "intl": "Singapore", "us": "Virginia"}


class BatchJobError(APIError):
    """A line a Batch API job could not process, or a job the run stopped waiting for."""

    default_hint = "See the job with `qwenvl batch status` and its id (the record's batch_id)."

    def __init__(
        self, message: str, *, code: str | None = None, request_id: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint, request_id=request_id)
        self.code = code


class BatchJobOverdueError(BatchJobError):
    """A job the service still calls running ``OVERDUE_GRACE_S`` past its window: the run stops waiting (the job
    stays in the journal); its hint says how to end it."""


class BatchJobFailedError(BatchJobError):
    """The error of each item of a Batch API job that failed as a whole (status ``failed``, validation
    included: the job's ``errors`` or its error file say why), or whose input file or job the service refused
    (HTTP 400, 413, 415, 422). The service's failure, not the item's: counted by ``runner.SERVICE_ERROR_TYPES``
    (the CLI exits 5); ``--retry-errors`` submits the items again."""


def check_region(region: str | None, base_url: str | None = None) -> None:
    """VL models have batch inference in Beijing only."""
    host = (urlsplit(base_url).hostname or "") if base_url else ""
    named = normalize_region(region)
    foreign = [r for r, url in REGIONS.items() if r != "cn" and urlsplit(url).hostname == host]
    if named != "cn" or foreign:
        where = foreign[0] if foreign else named
        raise UsageError(
            f"the Batch API for Qwen-VL models exists only in the Beijing region, not in "
            f"{REGION_NAMES.get(where, where)} (--region {where})",
            hint="Use --region cn with a Beijing key, or run the batch in realtime (drop --mode).",
        )


# A job being cancelled (asked by `qwenvl batch cancel` or the console): it is not "running" any more, and to cancel
# it again is no advice (OpenAI's Batch statuses, which DashScope keeps [batch]).
CANCELLING = frozenset({"cancelling", "cancelled"})


def jobs_named(ids: Sequence[str]) -> str:
    """ "the Batch API job X" or "the Batch API jobs X, Y": the words for a list of job ids. Raises nothing."""
    return f"the Batch API job{'' if len(ids) == 1 else 's'} {', '.join(ids)}"


def batch_command(verb: str, ids: Sequence[str], *, region: str | None = None, base_url: str | None = None) -> str:
    """The shell command ``qwenvl batch VERB ID...`` that reaches the same service as the run: with ``--base-url``
    when the run was given one, else ``--region`` when it was given one (what comes from the environment is there
    for the command too). Raises nothing."""
    where = f" --base-url {shlex.quote(base_url)}" if base_url else f" --region {shlex.quote(region)}" if region else ""
    return f"qwenvl batch {verb} {' '.join(shlex.quote(i) for i in ids)}{where}"


def jobs_left(
    jobs: Mapping[str, str | None], *, region: str | None = None, base_url: str | None = None, kept: str = ""
) -> str:
    """What jobs not collected yet are doing and what to do about them, one sentence: "the Batch API job X keeps
    running on the service (its answers are billed): run the same command again to collect it, or cancel it with
    `qwenvl batch cancel X`." A job whose last known status is ``CANCELLING`` is said to be being cancelled, and no
    cancel is suggested for it. ``jobs``: id -> status (``journal.read_open_job_statuses``); ``kept``: where they
    are kept (" are kept in out.jsonl.journal and"), put after the ids. Raises nothing."""
    running = [i for i, status in jobs.items() if status not in CANCELLING]
    stopping = [i for i, status in jobs.items() if status in CANCELLING]
    said = []
    if running:
        one = len(running) == 1
        said.append(
            f"{jobs_named(running)}{kept} {'keeps' if one else 'keep'} running on the service (answers are billed)"
        )
    if stopping:
        one = len(stopping) == 1
        said.append(
            f"{jobs_named(stopping)} {'is' if one else 'are'} being cancelled (the answers given before the cancel are "
            "billed)"
        )
    them = "it" if len(jobs) == 1 else "them"
    text = "; ".join(said) + f": run the same command again to collect {them} (nothing is submitted twice)"
    if running:
        text += f", or cancel {'it' if len(running) == 1 else 'them'} with " + (
            f"`{batch_command('cancel', running, region=region, base_url=base_url)}`"
        )
    return text + "."


BATCH_API_TIMEOUT_S = 300.0  # seconds per attempt of a Batch API call (file transfers get more: transport)


class BatchAPI:
    """The Batch API endpoints, synchronous, through ``qwenvl.transport``."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        region: str | None = None,
        base_url: str | None = None,
        timeout_s: float = BATCH_API_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        http_client: httpx.Client | None = None,
    ) -> None:
        timeout_s = seconds(timeout_s, "timeout_s")
        retry_backoff_s = seconds(retry_backoff_s, "retry_backoff_s", zero=True)
        max_retries = count(max_retries, "max_retries", maximum=MAX_RETRIES)
        check_region(region, base_url)
        self.region, self.base_url = region, base_url  # as given: what a suggested command must repeat
        self.base = resolve_base_url("compat", region=region, base_url=base_url)
        found = require_api_key(api_key, endpoint=self.base)
        self.transport = Transport(found.key, key_source=found.source, http_client=http_client)
        self.policy = Policy(timeout_s=timeout_s, max_retries=max_retries, backoff_s=retry_backoff_s)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> BatchAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, verb: str, ids: Sequence[str]) -> str:
        """``batch_command`` for this endpoint: ``qwenvl batch VERB ID... [--base-url URL | --region R]``."""
        return batch_command(verb, ids, region=self.region, base_url=self.base_url)

    def _url(self, *parts: str) -> str:
        return self.base + "/" + "/".join(quote(p, safe="") for p in parts)

    def upload(self, name: str, data: bytes | IO[bytes]) -> dict[str, Any]:
        """Upload a Batch API input file (``POST /files``, ``purpose=batch``): ``data`` as bytes, or a binary file
        open for reading, streamed from its start (read again from the start by a retry). Returns the file
        object; raises what the transport raises."""
        reply = self.transport.post_files(
            self._url("files"), {"purpose": "batch"}, {"file": (name, data, "application/jsonl")}, self.policy
        )
        return _object(reply, "id")

    def create(self, input_file_id: str) -> dict[str, Any]:
        """Create the job for an uploaded file, never twice: the create is sent without the transport's
        retries, and before it is sent again (a 5xx, a time-out, a lost reply) the job is looked up by its
        input file, since the service may have created it. Raises what the last attempt raised."""
        body = {"input_file_id": input_file_id, "endpoint": ENDPOINT, "completion_window": COMPLETION_WINDOW}
        once = dataclasses.replace(self.policy, max_retries=0)
        attempt = 0
        while True:
            try:
                reply, _ = self.transport.post_json(self._url("batches"), body, once)
                return _object(reply, "id")
            except APIError as exc:
                if attempt >= self.policy.max_retries or not should_retry(exc):
                    raise
                time.sleep(retry_delay(attempt, self.policy.backoff_s, getattr(exc, "retry_after", None)))
                attempt += 1
            found = self.find(input_file_id)
            if found is not None:
                return found

    def find(self, input_file_id: str) -> dict[str, Any] | None:
        """The newest job whose input is this file, or None when the service has none.

        ``GET /batches?input_file_ids=...&limit=LIST_PAGE`` ([list]: newest first), then the next page (``after``
        = the page's ``last_id``) while ``has_more``, until a page holds one (a service that ignores the filter
        is read through too). Raises BatchJobError when ``LIST_PAGES`` pages or ``LIST_DEADLINE_S`` seconds were
        not enough (the run cannot tell whether the job exists, so it creates none: nothing is paid twice),
        MalformedResponseError for a page without ``data`` or one that says ``has_more`` without a next page,
        and what the transport raises."""
        deadline = time.monotonic() + LIST_DEADLINE_S
        params = {"input_file_ids": input_file_id, "limit": str(LIST_PAGE)}
        seen = 0
        for _ in range(LIST_PAGES):
            reply = self.transport.get_json(self._url("batches"), self.policy, params=params)
            data = reply.get("data") if isinstance(reply, dict) else None
            if not isinstance(data, list):
                raise MalformedResponseError(f"the Batch API's list of jobs has no 'data': {str(reply)[:200]}")
            seen += len(data)
            jobs = [j for j in data if isinstance(j, dict) and j.get("input_file_id") == input_file_id and j.get("id")]
            if jobs:
                return max(jobs, key=lambda j: j.get("created_at") or 0)
            if not reply.get("has_more"):
                return None
            last = reply.get("last_id") or (data[-1].get("id") if data and isinstance(data[-1], dict) else None)
            if not isinstance(last, str) or not last or last == params.get("after"):
                raise MalformedResponseError(
                    f"the Batch API's list of jobs says has_more but gives no next page (last_id {last!r})"
                )
            params["after"] = last
            if time.monotonic() > deadline:
                break
        raise BatchJobError(
            f"looked through {seen:,} Batch API jobs for the job of the input file {input_file_id} without finding "
            f"it (stopped after {LIST_PAGES} pages or {LIST_DEADLINE_S:g} s): no job was created for it, so that "
            "none is paid for twice",
            hint=f"Run the same command again to look again. If Model Studio's console shows no job with input file "
            f"{input_file_id}, pass --fresh to start over (it deletes this output's answers).",
        )

    def retrieve(self, batch_id: str, *, policy: Policy | None = None) -> dict[str, Any]:
        """The job (``GET /batches/{id}``), with this API's network settings unless ``policy`` is given."""
        with _unknown_batch(batch_id):
            return _object(self.transport.get_json(self._url("batches", batch_id), policy or self.policy), "status")

    def cancel(self, batch_id: str) -> dict[str, Any]:
        with _unknown_batch(batch_id):
            reply, _ = self.transport.post_json(self._url("batches", batch_id, "cancel"), {}, self.policy)
        return _object(reply, "status")

    def content(self, file_id: str) -> bytes:
        """A file's content, whole (``GET /files/{id}/content``). A result file is better read with
        ``content_lines``."""
        return self.transport.get_bytes(self._url("files", file_id, "content"), self.policy)

    def content_lines(self, file_id: str) -> Iterator[str]:
        """A file's lines (without their line ends), streamed: one line in memory at a time, however large the
        file (a result file has up to ``MAX_LINES`` lines). Each download has the transport's deadline for a
        file transfer (``--timeout`` plus a second per ``MIN_TRANSFER_RATE`` bytes). A download cut off or
        failing for the service's reasons (``should_retry``) is opened again, up to ``max_retries`` times, and
        goes on after the lines already given (a result file does not change). Raises what the last attempt
        raised."""
        url = self._url("files", file_id, "content")
        given = attempt = 0
        while True:
            lines = self.transport.open_lines(url, self.policy)  # a failure before the 2xx is retried there
            try:
                for n, line in enumerate(lines):
                    if n < given:
                        continue
                    given += 1
                    yield line
                return
            except APIError as exc:
                if attempt >= self.policy.max_retries or not should_retry(exc):
                    raise
            finally:
                lines.close()
            time.sleep(retry_delay(attempt, self.policy.backoff_s, None))
            attempt += 1


def _object(reply: Any, key: str) -> dict[str, Any]:
    if not isinstance(reply, dict) or not reply.get(key):
        raise MalformedResponseError(f"the Batch API reply has no {key!r}: {str(reply)[:200]}")
    return reply


def counts_text(job: dict[str, Any]) -> str:
    """A job's status and what its ``request_counts`` count: "in_progress (2 of 4 requests answered, 1 failed)"
    (``completed`` counts the lines answered, ``failed`` those that failed: OpenAI's BatchRequestCounts)."""
    counts = job.get("request_counts")
    c: dict[str, Any] = counts if isinstance(counts, dict) else {}
    text = str(job.get("status"))
    if c.get("total"):
        text += f" ({c.get('completed') or 0:,} of {c['total']:,} requests answered"
        text += f", {c['failed']:,} failed)" if c.get("failed") else ")"
    return text


# A job's times, in the order they happen (OpenAI's Batch object, which DashScope keeps [batch]): Unix seconds.
JOB_TIMES = (
    "created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "cancelling_at",
    "cancelled_at",
    "failed_at",
    "expired_at",
    "expires_at",
)


def job_times(job: dict[str, Any]) -> list[tuple[str, str]]:
    """The times a job gives (``JOB_TIMES``), each as ISO-8601 UTC to the second ("2026-11-30T15:20:00Z"); a value
    that is not a number of seconds is given as it is. Raises nothing."""
    out = []
    for key in JOB_TIMES:
        value = job.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                stamp = datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            except (OverflowError, OSError, ValueError):
                stamp = str(value)
            out.append((key, stamp))
        else:
            out.append((key, str(value)))
    return out


# --- the run -------------------------------------------------------------------------------------------


def run_batch_api(
    batch: Batch,
    journal: Journal,
    pending: Iterable[BatchItem],
    prog: Progress,
    progress: Callable[[Progress], None] | None,
) -> list[str]:
    """Submit the pending items (unless already in a job), then wait for every job and merge it; with
    ``batch.wait`` False, look at each job once and merge those that are over. Returns the job ids.
    ``pending`` is read as it is planned (``PLAN_CHUNK`` items at a time); merged answers find their item in
    the batch's spool by id.

    Raises what the service raises (a 401 at once; a 5xx or a connection error once the transport's retries
    are spent) and BatchJobError for a job still running ``OVERDUE_GRACE_S`` past its expiry; each with a hint
    that the jobs are kept (in the journal, and running on the service) and the same call collects them."""
    report = (lambda: progress(prog)) if progress else (lambda: None)
    opts, defaults = batch.client_options, batch.planner.defaults
    network = {k: defaults[k] for k in ("timeout_s", "max_retries", "retry_backoff_s") if k in defaults}
    with BatchAPI(opts["api_key"], region=opts["region"], base_url=opts["base_url"], **network) as api:
        try:
            _adopt_uploads(batch, api, journal, prog)
            fresh = (item for item in pending if not journal.in_open_batch(item.id))  # not in a job already
            prog.phase = "upload"
            report()
            _submit(batch, api, journal, fresh, prog, report)
            ids = [job["id"] for job in journal.open_batches()]
            _wait(batch, api, journal, ids, prog, report)
            running = {job["id"]: job["status"] for job in journal.open_batches()}
            if running:  # --no-wait
                said = jobs_left(running, region=opts["region"], base_url=opts["base_url"])
                prog.notes.append(said[:1].upper() + said[1:])
        except BatchJobOverdueError:
            raise  # its hint says what works (running again would stop at the same job)
        except APIError as exc:
            kept = journal.open_batches()
            jobs = {job["id"]: job["status"] for job in kept if not job["id"].startswith(UPLOAD_PREFIX)}
            said = exc.raw_hint + " " if exc.raw_hint else ""
            if jobs:
                where = f" ({'it is' if len(jobs) == 1 else 'they are'} kept in {journal.path.name})"
                left = jobs_left(jobs, region=opts["region"], base_url=opts["base_url"], kept=where)
                exc.hint = said + left[:1].upper() + left[1:]
            elif kept:
                exc.hint = (
                    f"{said}The uploaded input files are kept in {journal.path.name}: run the same command again "
                    "(their jobs are looked up before any is created, so nothing is submitted twice)."
                )
            raise
        return ids


def _adopt_uploads(batch: Batch, api: BatchAPI, journal: Journal, prog: Progress) -> None:
    """Jobs of files uploaded by a run that stopped before it knew the job: found by their input file, or
    created now (an input file that is gone leaves its items pending)."""
    for job in journal.open_batches():
        if not job["id"].startswith(UPLOAD_PREFIX):
            continue
        found = api.find(job["input_file_id"])
        if found is not None:
            journal.attach_job(job["id"], found["id"])
            continue
        try:
            _create(batch, api, journal, job["id"], job["input_file_id"], prog)
        except NotFoundError:  # the file is gone: its items are sent again
            gone = journal.release_batch(job["id"])
            journal.set_batch_status(job["id"], "gone", merged=True)
            prog.notes.append(
                f"the input file {job['input_file_id']} of an earlier run is gone from the service, with no job: its "
                f"{gone:,} items were uploaded again in a new file"
            )


def _create(
    batch: Batch, api: BatchAPI, journal: Journal, placeholder: str, file_id: str, prog: Progress
) -> dict[str, Any] | None:
    """Create the job of a journaled upload and journal it. A job the service refuses for what it is
    (``REFUSED``: e.g. a model without batch inference) is the error of each of its items (``_refuse``); the key's
    and the service's errors are raised (the upload stays journaled: the next run looks its job up, then creates
    it)."""
    try:
        job = api.create(file_id)
    except APIStatusError as exc:
        if exc.status not in REFUSED:
            raise
        count, ids = journal.count_batch_items(placeholder), journal.batch_item_ids(placeholder)
        _refuse(batch, journal, count, ids, exc, f"the job of the input file {file_id}", prog)
        journal.set_batch_status(placeholder, "refused", merged=True)
        return None
    journal.attach_job(placeholder, job["id"])
    return job


def _wait(
    batch: Batch, api: BatchAPI, journal: Journal, ids: list[str], prog: Progress, report: Callable[[], None]
) -> None:
    prog.phase = "poll"
    open_ids = list(ids)
    try:
        while open_ids:
            details = []
            for job_id in list(open_ids):
                job = api.retrieve(job_id)
                details.append(counts_text(job))
                journal.set_batch_status(job_id, job["status"])
                if job["status"] in TERMINAL:
                    prog.phase = "merge"
                    prog.detail = counts_text(job)
                    report()
                    _merge(batch, api, journal, job, prog)
                    journal.set_batch_status(job_id, job["status"], merged=True)
                    journal.write_outputs(batch.csv)
                    open_ids.remove(job_id)
                    prog.phase = "poll"
                else:
                    _check_overdue(job, api)
            prog.detail = "; ".join(details)
            report()
            if open_ids and not batch.wait:
                return
            if open_ids:
                time.sleep(batch.poll_interval_s)
    except KeyboardInterrupt:  # the jobs' last word, so that what is said of them is true (a cancel meanwhile)
        _last_look(api, journal, open_ids)
        raise


def _last_look(api: BatchAPI, journal: Journal, ids: list[str]) -> None:
    """After Ctrl-C while the run waits on its jobs (between two polls, or during one: the interrupt may come
    while a poll's answer is read or journaled): each job's status looked at once more (one attempt of ``LAST_LOOK_S``
    seconds, no retries) and journaled, so that a job cancelled meanwhile (``batch cancel``) is said to be being
    cancelled, not running. A failure, or a second Ctrl-C, ends it at once; raises nothing but the interrupt."""
    quick = dataclasses.replace(api.policy, timeout_s=LAST_LOOK_S, max_retries=0)
    for job_id in ids:
        try:
            job = api.retrieve(job_id, policy=quick)
        except QwenVLError:
            return
        with contextlib.suppress(QwenVLError):
            journal.set_batch_status(job_id, job["status"])


def _check_overdue(job: dict[str, Any], api: BatchAPI) -> None:
    """A job the service still calls running ``OVERDUE_GRACE_S`` after its expiry: the wait ends here."""
    expires = job.get("expires_at") or ((job.get("created_at") or time.time()) + WINDOW_S)
    if isinstance(expires, int | float) and time.time() > expires + OVERDUE_GRACE_S:
        late = (time.time() - expires) / 3600
        raise BatchJobOverdueError(
            f"the Batch API job {job['id']} is still {job['status']} {late:.1f} h after its completion window "
            "ended: stopped waiting",
            hint=f"Cancel it with `{api.command('cancel', [job['id']])}`, then run the same command again: it "
            "collects what the job answered and submits the rest in a new job. See it with "
            f"`{api.command('status', [job['id']])}`.",
        )


class UnknownBatchError(NotFoundError):
    """A well-formed Batch API job id the service does not know (HTTP 404 for ``/batches/{id}``): the user's input,
    not the service's failure (CLI exit code 3). ``.batch_id`` is the id."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, *, batch_id: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.batch_id = batch_id


# A Batch API job id as the service gives them ("batch_" + a UUID): letters, digits, "_" and "-" (ours: anything
# else, a "/" or "..", would change the URL's path rather than name a job).
_BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")


def check_batch_id(batch_id: str) -> None:
    """UsageError (nothing sent) for a string that cannot be a Batch API job id (``_BATCH_ID``), naming it."""
    if not _BATCH_ID.fullmatch(batch_id):
        raise UsageError(
            f"{safe_line(batch_id)!r} is not a Batch API job id (letters, digits, '_' and '-', like batch_0a1b...)",
            hint="A batch run prints its job ids (the summary's batch_ids); `qwenvl batch status` takes them.",
        )


@contextlib.contextmanager
def _unknown_batch(batch_id: str) -> Iterator[None]:
    """A 404 for a batch id means the job is unknown (not the model, as NotFoundError's default hint says): raised
    as UnknownBatchError naming the id. A malformed id is refused before any request (``check_batch_id``)."""
    check_batch_id(batch_id)
    try:
        yield
    except NotFoundError as exc:
        raise UnknownBatchError(
            f"no Batch API job {batch_id} is visible to this key ({exc.message})",
            batch_id=batch_id,
            status=exc.status,
            code=exc.code,
            request_id=exc.request_id,
            hint=f"Check the id {batch_id} (a batch run prints its job ids), and that the key is the one that "
            "created the job.",
        ) from exc


class NotBatchableError(UsageError):
    """An item the Batch API cannot run (its model answers only in stream mode, which Batch API lines never are):
    recorded as that item's error, or, when it is every pending item's (the run's own flags), the run is refused
    before anything is written or sent (``Batch.estimate``)."""

    # the item is recorded as an error: --retry-errors sends it again, in realtime once the jobs are collected
    default_hint = (
        "Those items are recorded as errors: once this output's Batch API jobs are collected, run the same command "
        "with --mode realtime --retry-errors to send them in realtime."
    )
    # nothing was recorded (the whole run was refused): the same command in realtime sends them
    refused_hint = "Run it with --mode realtime (the default)."


def not_batchable(model: ModelInfo, name: str) -> NotBatchableError | None:
    """Why a request for ``model`` (named ``name`` as the request names it) cannot be a Batch API line (None: it
    can): the model is stream-only
    (``ModelInfo.stream_only``, QVQ), and the Batch API does not stream ([batch]). The one home of the rule: the
    run's lines, the estimate and the CLI's check of its flags use it. Raises nothing."""
    if model.stream_only:
        return NotBatchableError(f"{name} answers only in stream mode, which the Batch API does not offer")
    return None


def _plan_line(batch: Batch, item: BatchItem) -> tuple[BatchItem, bytes | QwenVLError, tuple[str, bool]]:
    try:
        call = batch.planner.plan(item.request)
    except (MediaError, UsageError) as exc:
        return item, detached(in_line_words(item, exc)), ("", False)  # kept as data (its future would hold its frames)
    ensure_sendable(call)
    refused = not_batchable(call.model, call.request.model)
    if refused is not None:
        return item, refused, ("", False)
    body = compat.build_body(call, stream=False)
    line = (
        json.dumps(
            {"custom_id": item.id, "method": "POST", "url": ENDPOINT, "body": body},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
        + b"\n"
    )
    if len(line) > MAX_LINE_BYTES:
        return (
            item,
            UsageError(
                f"the request is {len(line) / 1e6:.1f} MB, over the Batch API's {MAX_LINE_BYTES / 1e6:.0f} MB per line",
                hint="Send fewer or smaller images (--detail low, --max-pixels), or run it in realtime mode.",
            ),
            ("", False),
        )
    return item, line, (call.request.model, bool(call.request.enable_thinking))


class _File:
    """One input file being written: its lines go to a temporary file (``tempfile``: the temporary folder, deleted
    once closed, by the system if the run is killed), its items' ids to the spool (``Spool.set_upload``), so that
    nothing is kept in memory per line."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.fh: IO[bytes] = tempfile.TemporaryFile(prefix="qwenvl-batch-")  # noqa: SIM115 - _submit closes it
        self.lines = 0
        self.size = 0
        self.ids: list[str] = []  # the ids of lines written since the last ``flush_ids`` (at most PLAN_CHUNK)

    def fits(self, line: bytes) -> bool:
        return self.lines < MAX_LINES and self.size + len(line) <= MAX_FILE_BYTES

    def write(self, item_id: str, line: bytes) -> None:
        self.fh.write(line)
        self.ids.append(item_id)
        self.lines += 1
        self.size += len(line)

    def flush_ids(self, batch: Batch) -> None:
        batch.spool.set_upload(self.ids, self.number)
        self.ids.clear()


def _submit(
    batch: Batch,
    api: BatchAPI,
    journal: Journal,
    items: Iterable[BatchItem],
    prog: Progress,
    report: Callable[[], None],
) -> None:
    files: dict[tuple[str, bool], _File] = {}
    numbers = itertools.count()

    def send(group: tuple[str, bool], f: _File) -> None:
        name = f"qwenvl-batch-{uuid.uuid4().hex[:12]}.jsonl"
        f.flush_ids(batch)
        try:
            with contextlib.closing(f.fh):
                try:
                    f.fh.flush()
                except OSError as exc:
                    raise temporary_error(exc) from None
                uploaded = api.upload(name, f.fh)
        except APIStatusError as exc:
            if exc.status not in REFUSED:
                raise
            # not uploaded again by a rerun
            _refuse(batch, journal, f.lines, batch.spool.upload_ids(f.number), exc, f"the input file {name}", prog)
            return
        # before the job exists: see _adopt_uploads
        placeholder = journal.add_upload(uploaded["id"], group[0], batch.spool.upload_ids(f.number))
        job = _create(batch, api, journal, placeholder, uploaded["id"], prog)
        if job is None:
            return
        prog.sent += f.lines
        prog.detail = f"submitted {f.lines} requests"
        report()

    items = iter(items)
    try:
        with ThreadPoolExecutor(batch.plan_threads) as pool:
            while chunk := list(itertools.islice(items, PLAN_CHUNK)):
                for item, res, group in pool.map(lambda i: _plan_line(batch, i), chunk):
                    if isinstance(res, QwenVLError):
                        batch._record_error(journal, item, res, prog, attempts=0)
                        continue
                    f = files.get(group)
                    if f is None or not f.fits(res):
                        if f is not None:
                            send(group, f)
                        try:
                            f = files[group] = _File(next(numbers))
                        except OSError as exc:
                            raise temporary_error(exc) from None
                    try:
                        f.write(item.id, res)
                    except OSError as exc:
                        raise temporary_error(exc) from None
                for f in files.values():
                    f.flush_ids(batch)
                report()
        for group, f in files.items():
            if f.lines:
                send(group, f)
    finally:
        for f in files.values():
            f.fh.close()  # (a file sent is closed already)


def _records(api: BatchAPI, file_id: str, job_id: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a result file, streamed line by line (``BatchAPI.content_lines``). A line that is not a
    JSON object is the service's fault: MalformedResponseError when it is reached (what came before it is recorded;
    the job stays unmerged, so the next run reads the file again and records the rest: nothing is paid twice)."""
    for n, raw in enumerate(api.content_lines(file_id), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise MalformedResponseError(
                f"line {n} of the Batch API result file {file_id} (job {job_id}) is not a JSON object: {raw[:120]!r}",
                hint=f"Run the same command again to read it again; if it persists, see the job with "
                f"`{api.command('status', [job_id])}`.",
            )
        yield obj


def _job_reason(job: dict[str, Any], said: str | None) -> tuple[str, str | None]:
    """(the service's reason for a job that ended without answering items, its code): the first of the job's
    ``errors`` (with its line), else what its error file said first (``said``)."""
    errors = job.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    if first.get("message"):
        where = f" (line {first['line']})" if first.get("line") else ""
        return f"{first['message']}{where}", first.get("code")
    return said or "the service gave no reason", None


def _merge(batch: Batch, api: BatchAPI, journal: Journal, job: dict[str, Any], prog: Progress) -> None:
    """Record what a job that is over answered: its output file, then its error file, read line by line, each
    line's item looked up in the journal and the spool (nothing is kept per item). A job that failed (validation
    included) makes each of its items a BatchJobFailedError; lines a job did not run (``NOT_RUN``, or in neither
    file) leave their items pending. Either way the job is in ``prog.job_failures`` with the service's reason (the
    CLI exits 5)."""
    job_id, status = job["id"], job["status"]
    total = journal.count_batch_items(job_id)
    extra = {"mode": "batch-api", "batch_id": job_id}
    not_run: list[str] = []  # released PLAN_CHUNK at a time
    released = 0
    said: str | None = None  # the error file's first word on the job's failure
    for key in ("output_file_id", "error_file_id"):
        if not job.get(key):
            continue
        for rec in _records(api, job[key], job_id):
            item_id = str(rec.get("custom_id"))
            item = batch.spool.get(item_id) if journal.in_batch(item_id, job_id) else None
            if item is None:
                continue
            err: dict[str, Any] = rec["error"] if isinstance(rec.get("error"), dict) else {}
            if rec.get("response") is None and err.get("code") in NOT_RUN:
                said = said or err.get("message")
                if status != "failed":  # pending again (a failed job's items are all its errors, below)
                    not_run.append(item_id)
                    if len(not_run) >= PLAN_CHUNK:
                        journal.release_items(not_run)
                        released += len(not_run)
                        not_run.clear()
                continue
            outcome = _outcome(rec, item)
            if status == "failed" and not isinstance(outcome, Response):  # e.g. a validation error file
                said = said or outcome.message
                outcome = BatchJobFailedError(
                    f"the Batch API job {job_id} failed: {outcome.message}",
                    code=getattr(outcome, "code", None),
                    request_id=getattr(outcome, "request_id", None),
                    hint=_failed_hint(job_id, api),
                )
            _record(batch, journal, item, outcome, prog, extra)
    reason, code = _job_reason(job, said)
    if status == "failed":
        message = f"the Batch API job {job_id} failed: {reason}"
        exc = BatchJobFailedError(message, code=code, hint=_failed_hint(job_id, api))
        for item_id in journal.batch_item_ids(job_id):  # what its files did not answer
            item = batch.spool.get(item_id)
            if item is not None:
                batch._record_error(journal, item, exc, prog, attempts=1, extra=extra)
        prog.job_failures.append({"batch_id": job_id, "status": status, "message": message, "hint": exc.raw_hint})
        return
    # not run (expired, cancelled: released above), or in neither file: pending again, submitted by the next run
    journal.release_items(not_run)
    released += len(not_run)
    unanswered = released + journal.release_batch(job_id)
    if unanswered:
        how = {"expired": "expired", "cancelled": "was cancelled"}.get(status, f"ended ({status})")
        if reason == "the service gave no reason" and not released:
            reason = "its result files have no line for them"
        prog.job_failures.append(
            {
                "batch_id": job_id,
                "status": status,
                "message": f"the Batch API job {job_id} {how} without answering {unanswered:,} of its "
                f"{total:,} items: {reason}",
                "hint": "Those items are pending (not billed): run the same command again to submit them in a new job.",
            }
        )


def _failed_hint(job_id: str, api: BatchAPI) -> str:
    return (
        f"A failed job is not billed: see why with `{api.command('status', [job_id])}`; run the same command with "
        "--retry-errors to submit its items again in a new job."
    )


def _refuse(
    batch: Batch,
    journal: Journal,
    count: int,
    item_ids: Iterable[str],
    exc: APIStatusError,
    what: str,
    prog: Progress,
) -> None:
    """The service refused an input file or a job for what it is (``REFUSED``): each of its items is a
    BatchJobFailedError, recorded (nothing was run or billed), so that the next run does not send them again
    unless their question changed or ``--retry-errors`` is given; said in ``prog.job_failures`` (the CLI
    exits 5). ``item_ids`` (``count`` of them) are read as they are recorded."""
    message = f"the Batch API refused {what} ({count:,} requests): {written(exc)}"
    error = BatchJobFailedError(
        message,
        code=exc.code,
        request_id=exc.request_id,
        hint=f"Nothing was run or billed, and a rerun does not send them again: change what was refused (a "
        f"changed prompt, model or option is sent again), or run the same command with --retry-errors to "
        f"send them as they are. The items are errors in {batch.output}.",
    )
    for item_id in item_ids:
        item = batch.spool.get(item_id)
        if item is not None:
            batch._record_error(journal, item, error, prog, attempts=1)
    prog.job_failures.append({"batch_id": None, "status": "refused", "message": message, "hint": error.raw_hint})


def _record(
    batch: Batch, journal: Journal, item: BatchItem, outcome: Response | QwenVLError, prog: Progress, extra: dict
) -> None:
    """One merged result line: the item's answer or error, in the journal and the usage log."""
    if isinstance(outcome, Response):
        batch._record_ok(
            journal, item, outcome, prog, attempts=1, latency_s=0.0, extra=extra, price_factor=PRICE_FACTOR
        )
        u = outcome.usage
        log_usage(
            batch,
            Entry(
                model=batch.model_of(item),
                protocol="batch-api",
                outcome="ok",
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                image_tokens=u.image_tokens,
                cost=answer_cost(
                    outcome, region=BATCH_REGION, factor=PRICE_FACTOR, model=batch.model_of(item), local=False
                ),
                currency=currency_of(BATCH_REGION),
                request_id=outcome.request_id,
            ),
        )
        return
    batch._record_error(journal, item, outcome, prog, attempts=1, price_factor=PRICE_FACTOR, extra=extra)
    # an answer not valid for the schema was still answered and paid (the exchange itself was ok)
    paid = outcome.response if isinstance(outcome, StructuredOutputError) else None
    log_usage(
        batch,
        Entry(
            model=batch.model_of(item),
            protocol="batch-api",
            outcome="ok" if paid else type(outcome).__name__,  # an answer, logged as realtime logs it
            input_tokens=paid.usage.input_tokens if paid else None,
            output_tokens=paid.usage.output_tokens if paid else None,
            image_tokens=paid.usage.image_tokens if paid else None,
            cost=answer_cost(paid, region=BATCH_REGION, factor=PRICE_FACTOR, model=batch.model_of(item), local=False)
            if paid
            else None,
            currency=currency_of(BATCH_REGION) if paid else None,
            request_id=paid.request_id if paid else getattr(outcome, "request_id", None),
            status=getattr(outcome, "status", None),
            code=getattr(outcome, "code", None),
            maybe_billed=not paid and may_be_billed(outcome),  # the one rule (store.exchange)
        ),
    )


def log_usage(batch: Batch, entry: Entry) -> None:
    """One merged result in the batch's usage log (when it has one)."""
    if batch.usage_log is not None:
        batch.usage_log.record(entry)


def _outcome(rec: dict[str, Any], item: BatchItem) -> Response | QwenVLError:
    """The Response (checked for structured output) or the error of one result line."""
    response = rec.get("response") or {}
    status = response.get("status_code")
    body = response.get("body")
    request_id = response.get("request_id")
    if status == 200 and isinstance(body, dict) and body.get("choices"):
        try:
            r = compat.parse_response(body, model=str(body.get("model") or ""), request_id=request_id)
        except QwenVLError as exc:
            return exc
        return _structured(r, item)
    if isinstance(body, dict) and body.get("error"):
        return error_from_body(status if isinstance(status, int) else None, body, request_id=request_id)
    err = rec.get("error") or {}
    return BatchJobError(
        str(err.get("message") or f"line failed (status {status})"), code=err.get("code"), request_id=request_id
    )


def _structured(response: Response, item: BatchItem) -> Response | QwenVLError:
    request = make_request(None, item.request)
    if not (request.json_mode or request.schema is not None):
        return response
    errors = check_structured(response, request, request.schema)
    if errors:
        return StructuredOutputError(
            "the answer is not valid JSON"
            + (" for the schema" if request.schema is not None else "")
            + " (no repair in batch mode): "
            + "; ".join(errors[:3]),
            raw_text=response.text,
            errors=errors,
            response=response,
        )
    return response
