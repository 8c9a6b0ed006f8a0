"""The DashScope Batch API (OpenAI-compatible): half price, results within 24 hours.

Flow (``qwenvl batch ... --mode batch-api``):

1. every pending item is planned as for a realtime request (media checked and prepared to the model's
   budget) and becomes one JSONL line ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
   "body": <the OpenAI-compatible body>}``;
2. lines are grouped into files of one model and one thinking mode each, at most 50,000 lines and
   ``MAX_FILE_BYTES`` per file; a line over 6 MB is that item's error;
3. each file is uploaded (``POST {base}/files``, ``purpose=batch``) and a job created (``POST
   {base}/batches``, ``completion_window: 24h``); the job id is committed to the journal at once, so a run
   killed while waiting resumes polling the same job instead of paying twice;
4. the jobs are polled (``GET {base}/batches/{id}``) with progress from ``request_counts``;
5. the output and error files are downloaded (``GET {base}/files/{id}/content``) and merged into the same
   output lines as realtime results (``"mode": "batch-api"``, cost at half price).

A job that expires or is cancelled leaves its unanswered items pending: the next run submits them again. A
job that fails validation records its error for each of its items. VL batch exists in the Beijing region
only: any other region is refused before anything is sent.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from qwenvl._constants import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BACKOFF_S
from qwenvl.batch.inputs import BatchItem
from qwenvl.batch.journal import Journal
from qwenvl.client import check_structured, make_request
from qwenvl.config import REGIONS, normalize_region, require_api_key, resolve_base_url
from qwenvl.errors import (
    APIError,
    MalformedResponseError,
    MediaError,
    NotFoundError,
    QwenVLError,
    StructuredOutputError,
    UsageError,
)
from qwenvl.models import answer_cost, currency_of
from qwenvl.plan import ensure_sendable
from qwenvl.protocols import compat
from qwenvl.protocols.common import error_from_body
from qwenvl.store.usage import Entry
from qwenvl.transport import Policy, Transport
from qwenvl.types import Response

if TYPE_CHECKING:
    from qwenvl.batch.runner import Batch, Progress

# Sources: [batch] alibabacloud.com/help/en/model-studio/batch-interfaces-compatible-with-openai (Dec 2025) and
# help.aliyun.com/zh/model-studio/batch-inference (2025-11-06), reference/dashscope-api.md §5; checked against
# Model Studio's batch page 2026-11 (issue 10).
ENDPOINT = "/v1/chat/completions"  # [batch]
COMPLETION_WINDOW = "24h"  # [batch]
MAX_LINES = 50_000  # per input file [batch]
MAX_LINE_BYTES = 6_000_000  # per line: 6 MB [batch]
MAX_FILE_BYTES = 100_000_000  # per input file: ours (the service takes 500 MB), so that memory stays bounded
# Batch API calls cost half the realtime price (of the request's tier) [batch page, alibabacloud.com/help/en/
# model-studio/batch-interfaces-compatible-with-openai, Dec 2025; "Model Studio pricing page, checked 2026-11
# (issue 10)"].
PRICE_FACTOR = 0.5
# VL batch exists in Beijing only [same batch page; reference/dashscope-api.md §5]: its costs are in CNY.
BATCH_REGION = "cn"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
PLAN_CHUNK = 64  # items planned at a time (bounded memory for prepared media)
REGION_NAMES = {"cn": "Beijing", "intl": "Singapore", "us": "Virginia"}


class BatchJobError(APIError):
    """A Batch API job that failed, or a line it could not process."""

    default_hint = "See the job with `qwenvl batch status ID`."

    def __init__(
        self, message: str, *, code: str | None = None, request_id: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint, request_id=request_id)
        self.code = code


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


class BatchAPI:
    """The Batch API endpoints, synchronous, through ``qwenvl.transport``."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        region: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 300.0,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        http_client: Any = None,
    ) -> None:
        check_region(region, base_url)
        self.base = resolve_base_url("compat", region=region, base_url=base_url)
        self.transport = Transport(require_api_key(api_key).key, http_client=http_client)
        self.policy = Policy(timeout_s=timeout_s, max_retries=max_retries, backoff_s=retry_backoff_s)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> BatchAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _url(self, *parts: str) -> str:
        return self.base + "/" + "/".join(quote(p, safe="") for p in parts)

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        reply = self.transport.post_files(
            self._url("files"), {"purpose": "batch"}, {"file": (name, data, "application/jsonl")}, self.policy
        )
        return _object(reply, "id")

    def create(self, input_file_id: str) -> dict[str, Any]:
        body = {"input_file_id": input_file_id, "endpoint": ENDPOINT, "completion_window": COMPLETION_WINDOW}
        reply, _ = self.transport.post_json(self._url("batches"), body, self.policy)
        return _object(reply, "id")

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        with _unknown_batch(batch_id):
            return _object(self.transport.get_json(self._url("batches", batch_id), self.policy), "status")

    def cancel(self, batch_id: str) -> dict[str, Any]:
        with _unknown_batch(batch_id):
            reply, _ = self.transport.post_json(self._url("batches", batch_id, "cancel"), {}, self.policy)
        return _object(reply, "status")

    def content(self, file_id: str) -> bytes:
        return self.transport.get_bytes(self._url("files", file_id, "content"), self.policy)


def _object(reply: Any, key: str) -> dict[str, Any]:
    if not isinstance(reply, dict) or not reply.get(key):
        raise MalformedResponseError(f"the Batch API reply has no {key!r}: {str(reply)[:200]}")
    return reply


def counts_text(job: dict[str, Any]) -> str:
    c = job.get("request_counts") or {}
    text = str(job.get("status"))
    if c.get("total"):
        text += f" {c.get('completed', 0)}/{c['total']}"
        if c.get("failed"):
            text += f" ({c['failed']} failed)"
    return text


# --- the run -------------------------------------------------------------------------------------------


def run_batch_api(
    batch: Batch,
    journal: Journal,
    pending: Iterable[BatchItem],
    prog: Progress,
    progress: Callable[[Progress], None] | None,
) -> list[str]:
    """Submit the pending items (unless already in a job), wait for every job, merge. Returns the job ids.
    ``pending`` is read as it is planned (``PLAN_CHUNK`` items at a time); merged answers find their item in
    the batch's spool by id."""
    report = (lambda: progress(prog)) if progress else (lambda: None)
    opts = batch.client_options
    with BatchAPI(opts["api_key"], region=opts["region"], base_url=opts["base_url"]) as api:
        submitted = {i for job in journal.open_batches() for i in journal.batch_items(job["id"])}
        fresh = (item for item in pending if item.id not in submitted)
        prog.phase = "upload"
        report()
        _submit(batch, api, journal, fresh, prog, report)
        jobs = journal.open_batches()
        ids = [job["id"] for job in jobs]
        if not batch.wait:
            return ids
        prog.phase = "poll"
        open_ids = list(ids)
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
            prog.detail = "; ".join(details)
            report()
            if open_ids:
                time.sleep(batch.poll_interval_s)
        return ids


@contextlib.contextmanager
def _unknown_batch(batch_id: str) -> Iterator[None]:
    """A 404 for a batch id means the job is unknown (not the model, as NotFoundError's default hint says)."""
    try:
        yield
    except NotFoundError as exc:
        exc.hint = (
            f"No Batch API job {batch_id!r} is visible to this key: check the id (a batch run prints its job ids)."
        )
        raise


def _plan_line(batch: Batch, item: BatchItem) -> tuple[BatchItem, bytes | QwenVLError, tuple[str, bool]]:
    try:
        call = batch.planner.plan(item.request)
    except (MediaError, UsageError) as exc:
        return item, exc, ("", False)
    ensure_sendable(call)
    if call.model.stream_only:  # Batch API lines are never streamed
        return (
            item,
            UsageError(
                f"{call.request.model} answers only in stream mode, which the Batch API does not offer",
                hint="Run it with --mode realtime (the default).",
            ),
            ("", False),
        )
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
    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.ids: list[str] = []
        self.size = 0

    def fits(self, line: bytes) -> bool:
        return len(self.lines) < MAX_LINES and self.size + len(line) <= MAX_FILE_BYTES


def _submit(
    batch: Batch,
    api: BatchAPI,
    journal: Journal,
    items: Iterable[BatchItem],
    prog: Progress,
    report: Callable[[], None],
) -> None:
    files: dict[tuple[str, bool], _File] = {}

    def send(group: tuple[str, bool], f: _File) -> None:
        name = f"qwenvl-batch-{uuid.uuid4().hex[:12]}.jsonl"
        uploaded = api.upload(name, b"".join(f.lines))
        job = api.create(uploaded["id"])
        journal.add_batch(job["id"], uploaded["id"], group[0], f.ids)
        prog.sent += len(f.ids)
        prog.detail = f"submitted {len(f.ids)} requests"
        report()

    items = iter(items)
    with ThreadPoolExecutor(batch.plan_threads) as pool:
        while chunk := list(itertools.islice(items, PLAN_CHUNK)):
            for item, res, group in pool.map(lambda i: _plan_line(batch, i), chunk):
                if isinstance(res, QwenVLError):
                    batch._record_error(journal, item, res, prog, attempts=0)
                    continue
                f = files.setdefault(group, _File())
                if not f.fits(res):
                    send(group, f)
                    f = files[group] = _File()
                f.lines.append(res)
                f.ids.append(item.id)
                f.size += len(res)
            report()
    for group, f in files.items():
        if f.lines:
            send(group, f)


def _lines(data: bytes) -> list[dict[str, Any]]:
    out = []
    for raw in data.decode("utf-8", "replace").splitlines():
        if raw.strip():
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def _merge(batch: Batch, api: BatchAPI, journal: Journal, job: dict[str, Any], prog: Progress) -> None:
    job_id = job["id"]
    waiting = journal.batch_items(job_id)
    results: list[dict[str, Any]] = []
    for key in ("output_file_id", "error_file_id"):
        if job.get(key):
            results += _lines(api.content(job[key]))
    extra = {"mode": "batch-api", "batch_id": job_id}
    for rec in results:
        item_id = str(rec.get("custom_id"))
        if item_id not in waiting:
            continue
        item = batch.spool.get(item_id)
        if item is None:
            continue
        waiting.discard(item_id)
        outcome = _outcome(rec, item)
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
        else:
            batch._record_error(journal, item, outcome, prog, attempts=1)
            log_usage(
                batch,
                Entry(
                    model=batch.model_of(item),
                    protocol="batch-api",
                    outcome=type(outcome).__name__,
                    request_id=getattr(outcome, "request_id", None),
                    status=getattr(outcome, "status", None),
                    code=getattr(outcome, "code", None),
                ),
            )
    if not waiting:
        return
    if job["status"] == "failed":
        errors = (job.get("errors") or {}).get("data") or [{}]
        first = errors[0] if isinstance(errors[0], dict) else {}
        exc = BatchJobError(
            f"the Batch API job {job_id} failed: {first.get('message') or 'no reason given'}", code=first.get("code")
        )
        for item_id in waiting:
            item = batch.spool.get(item_id)
            if item is not None:
                batch._record_error(journal, item, exc, prog, attempts=1)
    else:  # expired, cancelled, or completed without an answer for some lines: send them again next time
        journal.conn.executemany(
            "UPDATE items SET status = NULL, batch_id = NULL WHERE id = ?", ((i,) for i in waiting)
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
