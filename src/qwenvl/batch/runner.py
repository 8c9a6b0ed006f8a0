"""The batch runner: many requests, fast, within the account's limits, resumable, never paid for twice.

    batch = Batch(items, "out.jsonl", concurrency=16, rpm=600)
    est = batch.estimate()          # checks every pending item: tokens, cost, invalid files; sends nothing
    summary = batch.run(progress=print)     # blocks; from asyncio code: await asyncio.to_thread(batch.run)

**Concurrency model: threads**, one per slot (``concurrency`` of them), each with a synchronous ``Client``
and taking the next item when its request is done; the adaptive limiter (a condition variable) decides
when a slot may send. Chosen over asyncio by measurement (``bench/bench_batch.py``, 2,000 requests at
concurrency 64 against a 100 ms server): httpx's synchronous pool costs about 0.6 ms of CPU per request
where ``AsyncClient`` (through anyio) costs about 0.8, and with the GIL that difference is the batch's
throughput: threads finish in 1.11x the ideal time, the same loop on asyncio in 1.2-1.4x. Threads also run
media preparation (decode, resize, encode; Pillow releases the GIL) where the request is, with no hand-off,
and the library's synchronous cache and usage log need no second implementation. The costs are a thread
stack per slot (a few hundred kB of address space, mostly untouched) and that a 401 cannot cancel requests
already in flight: it stops every new one, and the others end within their time-out (at once, in practice,
with the same 401). Clients are sharded, ``CONNECTIONS_PER_POOL`` threads per client, because httpcore's
pool bookkeeping grows with the square of its connections.

A finished item is handed to the journal's writer thread (group commit, see ``journal``) and its worker waits
until it is committed before releasing the request's slot: an answer that was paid for is on disk before the
next request goes out, so neither a kill nor a full disk loses one. Counters and the progress callback are
updated under one lock.

**Retries belong to the batch.** Every item is sent with ``max_retries=0`` at the transport, so the limiter
sees each 429 as it happens: it lowers concurrency and pauses new requests (see ``limiter``; each pause at
most ``MAX_RETRY_DELAY_S``, 20 s), and the item waits for a slot again. Slowing down under 429 is the point
of a batch, so a 429 does not count against ``max_retries``; the bounds are the run's instead: a Retry-After
beyond ``MAX_RETRY_DELAY_S`` stops the run at once (``RateLimitError`` with when to try again), and so does a
run in which no item finishes for ``RATE_LIMIT_STALL_S`` (5 min) while the service answers 429; the item is left to
send, and the same command resumes. 5xx, time-outs and connection errors are
retried ``max_retries`` times (the item's own setting, default 2) after ``retry_backoff_s * 2**n`` seconds.
A 401 or 403 stops the batch at once (the key is wrong for every item), and so does an answer that the model
does not exist (``ModelNotFoundError``: a misspelt model would fail every item the same way); the refused item
and those not sent stay to send (the same command resumes). Any other error is recorded as that item's error and
the batch goes on.

**Each item goes through ``Client.plan`` then ``Client.send``**, exactly as a single request: media are
checked and prepared to the model's budget, structured output is validated (and repaired once), the cache
and the usage log apply. ``plan`` errors (a missing or invalid file, a bad field) become item errors before
anything is sent.

**The estimate prepares nothing**: it plans every item with ``estimate_only=True`` (media checked and sized
from their headers: the same sizes and tokens, without decoding, resizing, encoding, sampling or rendering),
so the CPU work of preparation is done once, by the run. Two consequences: a file whose header is sound but
whose data is damaged is found by the run (that item's error) rather than by the estimate; and cache hits for
items with local media are found through the cache's index by file identity (``cache.source_key``: path,
size, modification time), which every answered item records; a file copied or touched since counts as to
send (an upper bound), and the run still looks it up by content once prepared (a hit takes no slot).

**Memory does not grow with the batch.** The items (a list or any iterable) are taken once by the constructor
into a temporary SQLite file (``spool``); the estimate, the journal's registration and the workers read
them back in chunks, and what is found per item (its fingerprint, a plan error, a cache hit, whether it is
still to do) is kept there or in the journal, not in Python objects. Queues are bounded: the workers take
items as they need them, a worker waits for its answer's commit, the usage log's writer makes producers wait
when far behind. What stays per item in memory: items that cannot be pickled (see ``spool``); an estimate
keeps the first ``ERRORS_KEPT`` plan errors and counts the others. Measured: ``bench/bench_batch.py --memory``.

Resume and output: see ``journal``. Cache: see ``cache``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import qwenvl.backends.dashscope  # noqa: F401 - loaded with the runner, not by the first request of a run
from qwenvl._constants import BATCH_POLL_INTERVAL_S, DEFAULT_MAX_RETRIES
from qwenvl.backends.base import Backend
from qwenvl.batch.batchapi import BatchJobFailedError, batch_command, jobs_named
from qwenvl.batch.heap import steady_mmap_threshold
from qwenvl.batch.inputs import BatchItem, in_line_words
from qwenvl.batch.journal import (
    UPLOAD_PREFIX,
    Journal,
    changed_options,
    check_free,
    count_answered,
    fingerprint,
    journal_path,
    legacy_fingerprints,
    legacy_question,
    question,
    read_finished,
    read_meta,
    read_open_jobs,
)
from qwenvl.batch.limiter import AdaptiveLimiter
from qwenvl.batch.spool import CHUNK, Spool
from qwenvl.client import Client
from qwenvl.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    InternalServerError,
    MalformedResponseError,
    MediaError,
    MissingAPIKeyError,
    ModelNotFoundError,
    OptionNotAppliedError,
    PermissionDeniedError,
    QwenVLError,
    RateLimitError,
    StreamInterruptedError,
    StructuredOutputError,
    UsageError,
    detached,
)
from qwenvl.media.prepare import PreparedCache
from qwenvl.models import (
    DEFAULT_MODEL,
    answer_cost,
    cost_fields,
    currency_of,
    estimate_cost,
    format_cost,
    round_cost,
)
from qwenvl.notes import answer_notes
from qwenvl.outputs import OutputFiles, check_outputs
from qwenvl.plan import Call, check_model_name
from qwenvl.preview import estimate_text_tokens
from qwenvl.retry import MAX_RETRY_AFTER_S, Reachability, give_up_hint, retry_delay, should_retry
from qwenvl.retry import UNREACHABLE_ITEMS as UNREACHABLE_ITEMS  # the rule's count (``Reachability``), as before
from qwenvl.store import CacheArg, UsageLogArg, open_cache, open_usage_log
from qwenvl.store.exchange import key_for, source_key_for
from qwenvl.types import Response, count, dumps, seconds

DEFAULT_CONCURRENCY = 8
# A run in which no item finishes for this long while the service answers 429 stops (RateLimitError, exit 5,
# resumable)
RATE_LIMIT_STALL_S = 300.0
FLUSH_INTERVAL_S = 2.0  # the output is rewritten at most this often (more rarely when it is large)
PLAN_THREADS = 4
CONNECTIONS_PER_POOL = 8
INTERRUPT_GRACE_S = 10.0  # after Ctrl-C, how long the answers already in flight are awaited (and recorded)
# Errors of the service or the network, not of the item's input: a batch with such failed items exits 5 (CLI).
SERVICE_ERROR_TYPES = tuple(
    cls.__name__
    for cls in (
        APIConnectionError,
        APITimeoutError,
        InternalServerError,
        RateLimitError,
        StreamInterruptedError,
        MalformedResponseError,
        BatchJobFailedError,  # a Batch API job that failed as a whole, or its input the service refused
    )
)
ERRORS_KEPT = 20  # plan errors an Estimate holds (``Estimate.errors``): the rest are counted, not kept in memory
COMMIT_TIMEOUT_S = 120.0  # the longest a worker waits for its answer's commit (SQLite's busy timeout is 10 s)


@dataclass
class Estimate:
    """What a run would send, from the plans of its pending items (nothing is sent to compute it)."""

    items: int = 0  # current items
    finished: int = 0  # finished by an earlier run with the same output (skipped)
    submitted: int = 0  # in Batch API jobs of an earlier run: collected by this one, not sent again nor counted
    pending: int = 0  # to do in this run
    replaced: int = 0  # fresh=True: the answered items of the output (its journal) that this run deletes
    invalid: int = 0  # pending items whose plan failed (recorded as errors, not sent)
    cached: int = 0  # pending items the cache will answer (free)
    to_send: int = 0  # requests to the service
    input_tokens: int = 0  # estimated, over the requests to send
    max_output_tokens: int = 0  # the sum of their max_tokens
    unknown_media: int = 0  # media with no token estimate (remote URLs), not counted above
    # the costs sum the requests whose model has a price; None (unknown, never 0.0) when none has one
    cost_input: float | None = 0.0  # in ``currency``, estimated input cost (each request at its own tier)
    cost_max: float | None = 0.0  # input + every answer at max_tokens (the ceiling compared to max_cost)
    unpriced: int = 0  # requests whose model has no known price (not counted in the costs)
    unpriced_models: list[str] = field(default_factory=list)  # those models, in the order met
    models: list[str] = field(default_factory=list)
    price_factor: float = 1.0  # batchapi.PRICE_FACTOR (0.5) for the Batch API
    currency: str | None = "CNY"  # of the costs: the region's (CNY in Beijing, USD in Singapore and Virginia)
    # a local model (the openai or transformers backend): no price, so the costs and the currency are None
    # (qwenvl.models.LOCAL) and ``max_cost`` cannot be exceeded
    local: bool = False
    # plan errors by item id: the first ERRORS_KEPT invalid items' (``invalid`` counts them all; each one's error is
    # kept in the spool, and recorded in the output by the run; which items the cache answers is in the spool too)
    errors: dict[str, QwenVLError] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The estimate as JSON shows it: costs rounded (``models.round_cost``), ``errors`` as a count."""
        out = asdict(self)
        out["errors"] = len(self.errors)
        for key in ("cost_input", "cost_max"):
            if out[key] is not None:
                out[key] = round_cost(out[key])
        return out


@dataclass
class Progress:
    """Counters of the running batch, handed to the progress callback."""

    total: int = 0  # items to do in this run
    done: int = 0  # finished in this run (ok or error)
    failed: int = 0
    failed_service: int = 0  # of ``failed``: for the service's reasons (SERVICE_ERROR_TYPES), worth sending again
    cached: int = 0
    sent: int = 0  # HTTP requests made (retries included), counted as each goes out
    abandoned: int = 0  # of ``sent``: requests in flight the run stopped without (a second Ctrl-C): possibly paid
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0  # of the answers with a known cost
    priced: int = 0  # answers paid for whose cost is known (in ``cost``)
    unpriced: int = 0  # answers paid for whose model has no known price (not in ``cost``)
    concurrency: int = 0
    in_flight: int = 0
    rate_limited: int = 0
    started: float = field(default_factory=time.monotonic)
    first_sent: float | None = None  # when the first request of this run went out
    last_done: float | None = None  # when the last item finished
    phase: str = "realtime"  # realtime | upload | poll | merge
    detail: str = ""  # e.g. the Batch API job's status
    notes: list[str] = field(default_factory=list)  # what the user must know (e.g. Batch API jobs still running)
    # Batch API jobs (or input files) this run found ended without answering items: failed, refused, expired or
    # cancelled; each {"batch_id", "status", "message", "hint"}, the message naming the job and the service's reason
    job_failures: list[dict[str, Any]] = field(default_factory=list)

    def paid(self, cost: float | None, *, local: bool) -> None:
        """Count one answer paid for (not cached) that cost ``cost`` (None: unknown, ``unpriced``; a local model's
        answers cost no money and count in neither). Raises nothing."""
        if local:
            return
        if cost is None:
            self.unpriced += 1
        else:
            self.priced += 1
            self.cost += cost

    def cost_so_far(self) -> float | None:
        """The cost of this run's answers: the sum of the known costs, None (unknown, not 0.0) when every answer
        paid for had an unknown one, or none was priced and requests were given up in flight (``abandoned``: the
        service may bill them, at a cost nobody knows). Raises nothing."""
        return None if (self.unpriced or self.abandoned) and not self.priced else self.cost


@dataclass(frozen=True)
class Paid:
    """What one item's answer was paid this run: the one home of an item's paid status and cost, read by the
    output line, the journal and the run's counters (``Batch._paid``, ``Batch._count_paid``).

    ``requests``: requests paid (the first and a structured-output repair; one answered from the response cache
    is not); ``cached``: nothing was paid (every request answered from the cache); ``cost``: what they cost
    (``models.answer_cost``: each request at its own tier, a part from the cache at 0; None when unknown or a
    local model's); ``input_tokens``/``output_tokens``: of the paid requests (a cached answer's: what it had
    taken, not counted in the run's tokens)."""

    requests: int
    cached: bool
    cost: float | None
    input_tokens: int | None
    output_tokens: int | None


@dataclass
class Summary:
    output: str
    total: int  # items in the output's batch
    ok: int
    error: int
    pending: int  # not finished (a stopped or unfinished Batch API run)
    this_run: int  # finished by this run
    cached: int
    sent: int  # HTTP requests this run, those given up in flight included (``abandoned``)
    input_tokens: int
    output_tokens: int
    cost: float | None  # this run, in ``currency``: the answers of known cost; None when none had one
    elapsed_s: float
    rate_limited: int = 0
    # of ``sent``: requests in flight when the run stopped without them (a second Ctrl-C, or past the grace
    # period): the service has them and may bill them; their answers are not recorded (a rerun sends them again)
    abandoned: int = 0
    unpriced: int = 0  # answers of this run whose model has no known price: not in ``cost``
    service_errors: int = 0  # items of ``error`` that failed for the service's reasons (SERVICE_ERROR_TYPES)
    first_service_error: str | None = None  # the message of the first of them (in input order)
    send_s: float | None = None  # from the first request sent to the last item finished (realtime runs)
    batch_ids: list[str] = field(default_factory=list)
    currency: str | None = "CNY"  # None for a local model
    local: bool = False  # a local model answered: it has no price (``cost`` is None in ``to_dict``)
    notes: list[str] = field(default_factory=list)  # e.g. Batch API jobs still running (--no-wait)
    # Batch API jobs (or input files) this run found ended without answering items (``Progress.job_failures``)
    job_failures: list[dict[str, Any]] = field(default_factory=list)
    # the run was stopped by Ctrl-C (or SIGTERM/SIGHUP): ``Batch.summary`` holds this, the interrupt is raised
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON shows it (``"event": "summary"``), its cost rounded (``models.round_cost``); a local
        model's run has ``"cost": null, "currency": null, "local": true`` (``models.cost_fields``)."""
        return {
            "event": "summary",
            **asdict(self),
            **cost_fields(self.cost, self.currency, local=self.local),
            "cost_complete": self.cost_complete,
        }

    @property
    def cost_complete(self) -> bool:
        """Whether ``cost`` is this run's whole cost: False when it leaves out answers of a model with no known
        price (``unpriced``) or requests given up in flight that may be billed (``abandoned``); True for a local
        model (nothing is paid)."""
        return self.local or not (self.unpriced or self.abandoned)

    def service_failure(self) -> APIError | None:
        """The one rule, in both modes, for a run that did not succeed for the service's reasons (the CLI exits 5
        with this error; None: it did). Its one-line message names the first Batch API job this run found ended
        without answering items (failed, refused, expired, cancelled) with the service's reason, and how many
        more there are (``job_failures``); else how many items of the output ended in a service error
        (``SERVICE_ERROR_TYPES``: unreachable, time-outs, 5xx, rate limits, a failed job), quoting the first."""
        if self.job_failures:
            first, more = self.job_failures[0], len(self.job_failures) - 1
            also = f" (and {more} more Batch API failure{'s' if more > 1 else ''}: see the summary)" if more else ""
            return APIError(first["message"] + also, hint=first["hint"])
        if self.service_errors:
            return APIError(
                f"{self.service_errors:,} items of {self.output} failed for the service's reasons; the first: "
                f"{self.first_service_error or 'no message'}",
                hint="Run it again with --retry-errors to send them again.",
            )
        return None


class _Fatal(Exception):
    def __init__(self, error: QwenVLError) -> None:
        super().__init__(str(error))
        self.error = error


def item_files(fields: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(field, references) of the files a request's fields name: ``image``, ``images``, ``video`` (a file or its
    frames), a ``schema`` given as a file name, and the images and videos of the earlier turns in ``messages``
    (``"messages[0] image"``: a part's ``image`` or ``video``, as ``types.ImagePart`` / ``VideoPart`` name them),
    read as they are yielded (nothing is copied). Raises nothing: what is not of a request's shape is skipped
    (the request's own check names it)."""
    for name in ("image", "images", "video"):
        if fields.get(name):
            yield name, fields[name]
    schema = fields.get("schema")
    if isinstance(schema, (str, os.PathLike)):
        yield "schema", schema
    messages = fields.get("messages")
    for n, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            for key in ("image", "video"):
                if isinstance(part, dict) and part.get(key):
                    yield f"messages[{n}] {key}", part[key]


def _has_media(fields: dict[str, Any]) -> bool:
    return bool(fields.get("image") or fields.get("images") or fields.get("video") or fields.get("messages"))


def input_tokens_of(call: Call) -> tuple[int, int]:
    """(estimated input tokens, media items without an estimate) of a planned call."""
    known = sum(item.tokens for item in call.media if item.tokens is not None)
    unknown = sum(item.tokens is None for item in call.media)
    return known + estimate_text_tokens(call), unknown


def error_record(exc: BaseException) -> dict[str, Any]:
    """An item's failure as its output line records it. The hint is as written (``raw_hint``, in the CLI's flags, as
    the message is): one wording in every output file, whoever ran the batch."""
    out: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": getattr(exc, "raw_message", str(exc)),
        "code": getattr(exc, "code", None),
        "status": getattr(exc, "status", None) or None,
        "request_id": getattr(exc, "request_id", None),
        "hint": getattr(exc, "raw_hint", None),
    }
    if isinstance(exc, StructuredOutputError):
        out["raw_text"] = exc.raw_text
    return out


def usage_record(response: Response) -> dict[str, Any]:
    return response.usage.model_dump(exclude={"raw"}, exclude_none=True)


class Batch:
    """One batch of items writing one output (JSONL, plus CSV when asked)."""

    def __init__(
        self,
        items: Iterable[BatchItem],
        output: str | Path,
        *,
        csv: str | Path | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        rpm: float | None = None,
        tpm: float | None = None,
        cache: CacheArg = True,
        usage_log: UsageLogArg = None,
        retry_errors: bool = False,
        fresh: bool = False,
        mode: str = "realtime",
        api_key: str | None = None,
        protocol: str | None = None,
        region: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        poll_interval_s: float = BATCH_POLL_INTERVAL_S,
        wait: bool = True,
        plan_threads: int = PLAN_THREADS,
        backend: str | Backend | None = None,
        client: Client | None = None,
        key_first: bool = False,
        option_names: Mapping[str, str] | None = None,
        **backend_options: Any,
    ) -> None:
        """``option_names``: what the batch's errors call its ``output`` and ``csv`` (default those keywords; the CLI
        gives its flags, ``-o/--output`` and ``--csv``). ``backend`` (dashscope|openai|transformers, or a backend
        instance: ``qwenvl.backends.base.Backend``, shared by the batch's clients) and ``backend_options`` (engine,
        family, device, dtype, attn_implementation) as for ``qwenvl.Client``; or ``client``: a ready Client (any
        backend, e.g. a custom one) that plans and sends every item, with its own cache and usage log (``cache``,
        ``usage_log`` and the service options then do not apply). ``cache`` and ``usage_log`` as for ``qwenvl.Client``,
        except that the cache is on by default; one of each is shared by every request of the batch.

        ``items``: a list or any iterable, a generator included (``read_requests`` reads a file lazily); it is
        taken once, here, and written to a temporary file (``spool``) that every pass reads back in chunks, so
        memory does not grow with the number of items. On Linux with glibc, the first Batch of a process also
        fixes malloc's mmap and trim thresholds at glibc's defaults for the whole process (``qwenvl.batch.heap``:
        otherwise items naming thousands of distinct files leave ~2 MB blocks in the threads' heaps; a
        ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` the user set is kept).
        ``key_first=True`` (the CLI, unless a dry run): raise
        MissingAPIKeyError before ``items`` is taken when DashScope's key is missing and certain to be needed
        (nothing finished in ``output``, nothing in the cache), so that a big batch without a key fails at once.
        Raises UsageError for invalid settings (service or backend options beside ``client``, a ``client`` that is
        not a ``qwenvl.Client``), for an item that
        is not a ``BatchItem`` and for an id given twice, and whatever iterating ``items`` raises.

        ``mode="batch-api"``: DashScope's Batch API (``qwenvl.batch.batchapi``: half price, within 24 h, Beijing
        only), checking each job every ``poll_interval_s`` seconds (default ``BATCH_POLL_INTERVAL_S``, 30);
        ``wait=False`` submits, looks at each job once and returns (the same call later collects). The Batch
        API's own calls take ``timeout_s``, ``max_retries`` and ``retry_backoff_s`` from the service options. An
        option of the other mode is refused, not ignored (OptionNotAppliedError): ``poll_interval_s`` and
        ``wait=False`` apply to ``batch-api`` only, ``concurrency``, ``rpm`` and ``tpm`` to ``realtime`` only."""
        steady_mmap_threshold()  # a long batch's heap does not grow with its files (glibc: see batch.heap)
        self.output = Path(output).expanduser()
        self.csv = Path(csv).expanduser() if csv else None
        concurrency = count(concurrency, "concurrency", minimum=1)
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value <= 0:
                raise UsageError(
                    f"{name} must be positive", hint="Give a positive value, or leave it out for the default."
                )
        if mode not in ("realtime", "batch-api"):
            raise UsageError(
                f"unknown mode {mode!r}: realtime or batch-api", hint="Use --mode realtime or --mode batch-api."
            )
        _check_mode_options(mode, concurrency=concurrency, rpm=rpm, tpm=tpm, poll_interval_s=poll_interval_s, wait=wait)
        self.concurrency, self.rpm, self.tpm = concurrency, rpm, tpm
        self._client = client
        if client is not None and (
            not all(callable(getattr(client, m, None)) for m in ("plan", "send"))
            or inspect.iscoroutinefunction(client.send)
        ):  # refused now, not as an AttributeError (or a coroutine never awaited) of the first item
            raise UsageError(
                f"Batch(client=...) takes a qwenvl.Client, not {type(client).__name__}",
                hint="Give client=qwenvl.Client(...) (the batch runs it in threads), or leave it out.",
            )
        if client is not None:
            service = dict(api_key=api_key, protocol=protocol, region=region, base_url=base_url, model=model)
            ignored = [k for k, v in {**service, "backend": backend, **backend_options}.items() if v is not None]
            if ignored:
                raise UsageError(
                    f"Batch(client=...) takes its settings from the client: {', '.join(ignored)} would be ignored",
                    hint="Give them to the Client, or to Batch without client=.",
                )
        if client is not None and mode == "batch-api":
            raise UsageError(
                "--mode batch-api is DashScope's Batch API: it takes its settings, not a client",
                hint="Leave out client= with mode='batch-api' (give region and key).",
            )
        self.cache = client.cache if client is not None else open_cache(cache)
        self.usage_log = client.usage_log if client is not None else open_usage_log(usage_log)
        self.retry_errors, self.fresh, self.mode = retry_errors, fresh, mode
        flush_interval_s = seconds(flush_interval_s, "flush_interval_s")
        poll_interval_s = seconds(poll_interval_s, "poll_interval_s")  # finite, above 0, at most a day
        self.flush_interval_s, self.poll_interval_s, self.wait = flush_interval_s, poll_interval_s, wait
        self.plan_threads = count(plan_threads, "plan_threads", minimum=1)
        if mode == "batch-api":
            protocol = "compat"  # the Batch API takes OpenAI-compatible bodies
        self.client_options = {
            "api_key": api_key,
            "protocol": protocol,
            "region": region,
            "base_url": base_url,
            "model": model,
            "backend": backend,
            **{k: v for k, v in backend_options.items() if v is not None},
        }
        # media prepared once per batch, whichever shard's client prepares it: one bounded cache for all of them
        # (a client each would keep up to PREPARED_CACHE_BYTES per shard: 8 shards at concurrency 64)
        self.prepared = client.prepared if client is not None else PreparedCache(keep_as_given=False)
        # plans only (sends nothing), unless a client was given: it does both
        self.planner = client if client is not None else self._new_client()
        self.currency = currency_of(self.planner.region)
        if mode == "batch-api" and self.planner.local_backend:  # a qwenvl serve's Batch API is one
            raise UsageError(
                "--mode batch-api is DashScope's Batch API; a local backend runs realtime only",
                hint="Use --mode realtime with a local backend.",
            )
        if key_first and client is None:
            self._check_key_first()
        # an output's journal written before this version may hold fingerprints of an earlier formula
        try:
            self._legacy = not fresh and journal_path(self.output).exists()
        except (ValueError, OSError):  # no file name ("."): ``check`` refuses such an output before anything is read
            self._legacy = False
        # what ``check``'s errors call the output and the csv: these keywords; the CLI sets its flags' names
        self.option_names = {"output": "output", "csv": "csv", **(option_names or {})}
        # each item's files are inputs (outputs.OutputFiles), checked as the items are taken: nothing is kept
        self.spool = Spool(self._guarded(items), self._fingerprints, lambda i: _has_media(i.request))
        self._estimate: Estimate | None = None
        self._closed = False
        # the last run's summary: what ``run`` returns, or, when an interrupt (KeyboardInterrupt) ended it, what it
        # left (``Summary.interrupted``); None before a run, or when the run stopped before its journal was open
        self.summary: Summary | None = None
        self._spend: SpendCap | None = None  # the running run's cost cap (``run``'s ``max_cost``)

    def _guarded(self, items: Iterable[BatchItem]) -> Iterator[BatchItem]:
        """``items`` as they come, each refused (UsageError, exit 2, before anything is sent or written) when a
        file it names (``item_files``) is the batch's output, csv or the output's journal."""
        try:
            names = self.option_names
            journal = journal_path(self.output)
            files = OutputFiles({names["output"]: self.output, names["csv"]: self.csv, "the output's journal": journal})
        except (ValueError, OSError):  # no file name ("."): ``check`` refuses such an output
            files = OutputFiles({})
        for item in items:
            if isinstance(item, BatchItem) and isinstance(item.request, dict):
                for field_name, refs in item_files(item.request):
                    where = f"{item.source} line {item.line}" if item.source and item.line else f"item {item.id!r}"
                    files.refuse(f"{where}: {field_name}", refs)
            yield item

    def close(self) -> None:
        """Close what the batch opened for planning: its own planning client (not a ``client`` given to it) and
        the spool of items. Use the batch as a context manager, or call this, when done with it (after ``run``,
        or after ``estimate`` alone). Raises nothing."""
        self._closed = True
        if self._client is None:
            self.planner.close()
        self.spool.close()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(
                "this Batch is closed: its items are gone",
                hint="Make a new Batch with the same items and output to run it again (finished items are kept).",
            )

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_client(self) -> Client:
        """A client with the batch's settings and its stores (shared: one response cache, one usage log and one
        cache of prepared media per batch)."""
        cache, usage_log = self.cache, self.usage_log
        client = Client(
            **self.client_options,
            cache=False if cache is None else cache,  # (an empty cache is falsy: it has a length)
            usage_log=False if usage_log is None else usage_log,
        )
        client.prepared = self.prepared
        return client

    # --- before anything is sent ----------------------------------------------------------------
    def check(self) -> None:
        """Refuse, before any request: an output that cannot be written (``outputs.check_outputs``: also a csv
        that is the output's or its journal's file, and an output or csv over a file of media), one that belongs
        to no journal, an
        output another run is writing (its lock is held), ``fresh`` while the output's journal has Batch API jobs
        not collected (their answers are billed); a ``model`` that looks misspelt (``plan.check_model_name``, the
        CLI's check of -m too); and (Batch API) a region without VL batch. The
        journal itself is checked by ``estimate`` (``journal.inspect_journal``) unless ``fresh``."""
        # one rule with the verbs' outputs (qwenvl.outputs): writable, no two outputs in one file (the csv over the
        # output or its journal), no output over a file of media (a photo named by mistake)
        check_outputs(
            {self.option_names["output"]: self.output, self.option_names["csv"]: self.csv},
            inputs={"the output's journal": journal_path(self.output)},
            resumed={self.option_names["output"]},  # resumed with its journal, else replaced only with fresh (below)
            force=self.fresh,  # starting over replaces the csv; never advised for it (it deletes the answers)
            force_flag=None,
        )
        check_free(self.output)
        if (
            not self.fresh
            and self.output.exists()
            and self.output.stat().st_size
            and not journal_path(self.output).exists()
        ):
            raise UsageError(
                f"{self.output} exists and is not the output of a qwenvl batch that can be resumed "
                f"(no {journal_path(self.output).name} beside it)",
                hint="Pass --fresh to overwrite it, or choose another output file.",
            )
        jobs = read_open_jobs(self.output) if self.fresh else []
        if jobs:  # their answers are (or will be) paid for: --fresh would drop them and send every item again
            them = "it" if len(jobs) == 1 else "them"
            raise UsageError(
                f"--fresh would drop {jobs_named(jobs)} of {self.output}, whose answers are billed: "
                "nothing was sent or deleted",
                hint=f"Collect {them} first: run the same command with --mode batch-api, without --fresh (to stop "
                f"{them} sooner: `{self._batch_command('cancel', jobs)}`, then collect {them} the same way).",
            )
        model = self.planner.defaults.get("model")
        # a misspelt model=: refused now, as the CLI's -m, not every item's (a server's own name: ``served_name``)
        if model and not (self.planner.local_backend or self.planner.is_local) and not self.planner.served_name(model):
            check_model_name(model, self.planner.protocol)
        if self.mode == "batch-api":
            from qwenvl.batch.batchapi import check_region

            check_region(self.planner.region, self.client_options["base_url"])

    def _batch_command(self, verb: str, ids: list[str]) -> str:
        """``qwenvl batch VERB ID...`` reaching this batch's service (``batchapi.batch_command``)."""
        return batch_command(verb, ids, region=self.client_options["region"], base_url=self.client_options["base_url"])

    def _question(self, item: BatchItem) -> dict[str, Any]:
        return question(item.request, self.planner.defaults, local=self.planner.is_local)

    def _fingerprints(self, item: BatchItem) -> tuple[str, str | None, str | None]:
        """The item's fingerprint, and those earlier versions gave it when its output's journal may hold them."""
        defaults = self.planner.defaults
        fp = fingerprint(item.request, defaults, local=self.planner.is_local)
        return (fp, *legacy_fingerprints(item.request, defaults)) if self._legacy else (fp, None, None)

    def _what_changed(self) -> str:
        """Which item's question changed since the last run and what of it, in the user's words ("item 'a.png':
        --schema / schema changed", ``journal.changed_options``), from the sample the last run recorded (``question``
        in the journal's meta). The first changed item is named; its fields are named when it is that sample (a
        run-wide option changed the sample too). When the sample did not change, the run's options did not: the
        changed item's own request (its line of a requests file) did, and is named as such."""
        sample = read_meta(self.output, "question")
        sample_id = sample.get("id") if isinstance(sample, dict) and isinstance(sample.get("id"), str) else None
        changed = self.spool.first_where("prev_status IN ('ok', 'submitted') AND prev_fingerprint IS NOT fingerprint")
        item = self.spool.get(sample_id) if sample_id is not None else None
        names: list[str] = []
        if item is not None and isinstance(sample, dict):  # a sample an earlier version recorded: its fields as then
            now = (
                self._question(item)
                if sample.get("version") == 2
                else legacy_question(item.request, self.planner.defaults)
            )
            names = changed_options(sample.get("fields") or {}, now)
        if names:
            held = "prev_status IN ('ok', 'submitted')"
            every = self.spool.count_where(f"{held} AND prev_fingerprint IS NOT fingerprint") == self.spool.count_where(
                held
            )
            # every answered item changed: the run's options did (no item to name); else the sample's own request
            where = "" if every or item is None else f"item {item.id!r}: "
            return f"{where}{', '.join(names)} changed"
        if changed is not None and item is not None:  # the sample asks the same: the run's options did not change
            return (
                f"item {changed.id!r} asks another question: its own request changed (its line's prompt, media, model "
                "or another key), not the run's options"
            )
        if changed is not None:
            return f"item {changed.id!r} asks another question: another prompt, media, model, schema or option"
        return "another prompt, model, schema or option"

    def model_of(self, item: BatchItem) -> str:
        return str(item.request.get("model") or self.planner.defaults.get("model") or DEFAULT_MODEL)

    def check_key(self) -> None:
        """Raises MissingAPIKeyError when requests go to DashScope and no key is found; local backends need none."""
        if not self.planner.local_backend:  # local backends need no DashScope key (a qwenvl serve's client does)
            self.planner.check_key()  # the planner has the batch's key and endpoint: the same words as every verb

    def _check_key_first(self) -> None:
        """``check_key`` when the key is certain to be needed before any item is read: nothing finished in the
        output and no cached answer that could serve an item (every valid item will be sent). Otherwise the
        estimate says whether anything is left to send."""
        finished = not self.fresh and self.output.exists() and self.output.stat().st_size > 0
        cached = self.mode == "realtime" and self.cache is not None and len(self.cache) > 0
        if not (finished or cached):
            self.check_key()

    def _mark_pending(self) -> int:
        """Mark, in the spool, the items this run has to do (not finished by an earlier run with the same
        output and the same question); returns how many. Reads the journal without taking it."""
        done: tuple[str, ...] = ("ok",) if self.retry_errors else ("ok", "error")
        if self.mode == "batch-api":  # in a job already: collected, not sent again (nor estimated)
            done += ("submitted",)
        in_job = self.spool.mark_pending(() if self.fresh else read_finished(self.output), done)
        if not self.fresh:
            # one question per output: answers asked otherwise are not silently thrown away (and paid again)
            changed = self.spool.count_where(
                "prev_status IN ('ok', 'submitted') AND prev_fingerprint IS NOT fingerprint"
            )
            if changed:
                answered = self.spool.count_where("prev_status = 'ok'")
                in_jobs = self.spool.count_where("prev_status = 'submitted'")
                held = f"{answered:,} answered items" + (
                    f" and {in_jobs:,} items in Batch API jobs not collected yet" if in_jobs else ""
                )
                jobs = read_open_jobs(self.output)
                again = "sent again" if self.planner.is_local else "paid for again"  # a local model costs nothing
                raise UsageError(
                    f"{self.output} holds answers to another question ({self._what_changed()}): {changed:,} of "
                    f"its {held} would be replaced and {again}: nothing was sent or deleted",
                    hint="Write to a new output (-o another.jsonl) to keep both, or pass --fresh to start over "
                    f"(every answer of this output is deleted, and {again})."
                    if not jobs
                    else "Write to a new output (-o another.jsonl) to keep both. To start over in this one, first "
                    f"collect {jobs_named(jobs)} with the command that submitted "
                    f"{'it' if len(jobs) == 1 else 'them'} (its prompt and options, --mode batch-api), then pass "
                    "--fresh (every answer is deleted, and paid for again).",  # Batch API jobs: DashScope's
                )
        if in_job and self.mode != "batch-api":
            jobs = read_open_jobs(self.output)
            named = f" ({', '.join(jobs)})" if jobs else ""
            raise UsageError(
                f"some items of {self.output} are in Batch API jobs that have not been collected{named}",
                hint="Run the same command with --mode batch-api to collect them first; then this command sends "
                "the rest in realtime"
                + (
                    f" (to stop {'it' if len(jobs) == 1 else 'them'} sooner: "
                    f"`{self._batch_command('cancel', jobs)}`, then collect {'it' if len(jobs) == 1 else 'them'})."
                    if jobs
                    else "."
                ),
            )
        return self.spool.count_where("pending = 1")

    def estimate(self) -> Estimate:
        """Plan every pending item, estimate-only (in threads when it has media): tokens, cost, cache hits,
        plan errors. Media are checked and sized from their headers, not prepared (see the module). Items are
        read back from the spool in chunks and at most ``4 * plan_threads`` are planned at once; what is found
        per item (an error, a cache hit) goes back to the spool. Raises UsageError once the batch is closed, for what
        ``check`` refuses, and, unless ``fresh``, when items the output holds answers for are asked another question
        (another prompt, model, schema or option: their fingerprint changed), naming the fields that changed;
        with ``fresh``, ``Estimate.replaced`` says how many answers the run deletes."""
        self._check_open()
        self.check()
        pending = self._mark_pending()
        submitted = self.spool.count_where("pending = 0 AND prev_status = 'submitted'")
        est = Estimate(
            items=self.spool.count,
            pending=pending,
            finished=self.spool.count - pending - submitted,
            submitted=submitted,
            replaced=count_answered(self.output) if self.fresh else 0,
            price_factor=batch_price_factor() if self.mode == "batch-api" else 1.0,
            currency=None if self.planner.is_local else self.currency,
            local=self.planner.is_local,
        )
        if est.local:
            est.cost_input = est.cost_max = None
        models: set[str] = set()
        errors: list[tuple[int, dict[str, Any]]] = []
        cached: list[int] = []
        first: list[QwenVLError] = []  # the first plan error, and whether every later one is the same (one rule)
        same = True

        def one(seq: int, item: BatchItem) -> tuple[int, str, Any]:
            try:
                call = self.planner.plan(item.request, estimate_only=True)
            except (MediaError, UsageError) as exc:
                return (
                    seq,
                    item.id,
                    detached(in_line_words(item, exc)),
                )  # kept as data (its future would hold its frames)
            if self.mode == "batch-api":
                from qwenvl.batch.batchapi import not_batchable

                refused = not_batchable(call.model, call.request.model)
                if refused is not None:
                    return seq, item.id, refused
            tokens, unknown = input_tokens_of(call)
            # Without placeholders the estimate's body is the real one; with them the key is unknown until the
            # run prepares the item (it looks the cache up then).
            hit = False
            if self.cache is not None and self.mode == "realtime":
                if any(m.estimate for m in call.media):  # local media: known by file identity (see cache)
                    hit = self.cache.has_source(source_key_for(self.planner, call))
                else:
                    hit = key_for(self.planner, call) in self.cache
            return seq, item.id, (call.model, call.request.max_tokens, tokens, unknown, hit)

        def fold(seq: int, item_id: str, res: Any) -> None:
            nonlocal same
            if isinstance(res, QwenVLError):
                est.invalid += 1
                if len(est.errors) < ERRORS_KEPT:
                    est.errors[item_id] = res
                if not first:
                    first.append(res)
                elif same:
                    same = type(res) is type(first[0]) and getattr(res, "message", None) == first[0].message
                errors.append((seq, error_record(res)))
            elif self._fold_estimate(est, models, res, self.planner.region):
                cached.append(seq)
            if len(errors) + len(cached) >= CHUNK:
                self.spool.set_estimates(errors, cached)
                errors.clear()
                cached.clear()

        # folded as they come, not kept per item; media items in threads, at most `window` of them in flight
        window = 4 * self.plan_threads
        with ThreadPoolExecutor(self.plan_threads) as pool:
            running: set[Future[tuple[int, str, Any]]] = set()
            for seq, item, media in self.spool.pending():
                if not media:
                    fold(*one(seq, item))
                    continue
                running.add(pool.submit(one, seq, item))
                if len(running) >= window:
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        fold(*f.result())
            for f in running:
                fold(*f.result())
        self.spool.set_estimates(errors, cached)
        est.models = sorted(models)
        if first and same:
            self._refuse_all_invalid(est, first[0])
        self._estimate = est
        return est

    @staticmethod
    def _refuse_all_invalid(est: Estimate, first: QwenVLError) -> None:
        """A rule that makes every pending item fail the same way (one UsageError message for all: the run's own
        settings, e.g. a stream-only model in batch-api mode, a field no model takes) refuses the run now, before
        anything is written or sent, rather than recording it as every item's error (exit 0 and nothing done). An
        item's own faults (a missing file, errors that differ, a batch of one item) are recorded as its error as
        before. Called when every plan error of ``est`` was of the type and message of ``first``."""
        # one item alone failing is its own fault as much as the run's: recorded, as any item's (its line in the
        # output); the CLI refuses its flags' rules itself (cli.batch._check_flags)
        if est.invalid < 2 or est.invalid != est.pending or not isinstance(first, UsageError):
            return
        from qwenvl.batch.batchapi import NotBatchableError

        every = f"every one of the {est.invalid:,} pending items"
        hint = NotBatchableError.refused_hint if isinstance(first, NotBatchableError) else first.raw_hint
        refused = type(first)(f"{first.raw_message} ({every}): nothing was sent or written", hint=hint)
        for name, value in vars(first).items():  # what it carries as data (OptionNotAppliedError.refusal) stays
            if name not in ("raw_message", "raw_hint"):
                setattr(refused, name, value)
        raise refused

    @staticmethod
    def _fold_estimate(est: Estimate, models: set[str], res: tuple[Any, ...], region: str | None) -> bool:
        """Add one planned item to the estimate; returns whether the cache answers it."""
        model, max_tokens, tokens, unknown, cached = res
        if cached:
            est.cached += 1
            return True
        est.to_send += 1
        models.add(model.name)
        est.input_tokens += tokens
        est.max_output_tokens += max_tokens
        est.unknown_media += unknown
        if est.local:  # no price: nothing to add, and not "unpriced" either
            return False
        c_in = estimate_cost(model, tokens, 0, region=region)
        c_max = estimate_cost(model, tokens, max_tokens, region=region)
        if c_in is None or c_max is None:
            est.unpriced += 1
            if model.name not in est.unpriced_models:
                est.unpriced_models.append(model.name)
            if est.unpriced == est.to_send:  # nothing priced so far: the cost is unknown, never 0.0
                est.cost_input = est.cost_max = None
        else:
            est.cost_input = (est.cost_input or 0) + c_in * est.price_factor
            est.cost_max = (est.cost_max or 0) + c_max * est.price_factor
        return False

    # --- running ----------------------------------------------------------------------------------
    def run(self, progress: Callable[[Progress], None] | None = None, *, max_cost: float | None = None) -> Summary:
        """Run to the end. ``max_cost`` (in the estimate's currency; None: no cap): the run's cost cap, checked
        against the estimate before anything is sent (UsageError when its most is above it, or when a model to send
        has no known price: ``within_budget``), then, in realtime mode, against what the run has really paid,
        structured-output repairs included, before each request (``SpendCap``: the requests in flight counted at
        their most): one that could take it above the cap is not sent, and the run stops (UsageError, after the
        outputs are written; the items not answered stay to send, and the same call resumes). In ``batch-api`` mode
        the jobs are submitted at once: the estimate's check only. A local model has no price: no cap applies.

        A 401/403 or a ``ModelNotFoundError`` stops it at once (raised, after the outputs are written; the items not
        answered stay to send), as does a service that cannot be reached (the first ``UNREACHABLE_ITEMS`` items fail
        to connect on every attempt before it answered anything: ``APIConnectionError``/``APITimeoutError``);
        ``Summary.service_errors`` counts the items that failed for the service's reasons (``SERVICE_ERROR_TYPES``),
        ``Summary.job_failures`` the Batch API jobs that ended without answering items;
        ``Summary.service_failure()`` is the error the CLI exits 5 with when either is not empty. Ctrl-C leaves a
        run that the same call resumes (the answers in flight are awaited up to ``INTERRUPT_GRACE_S`` and kept; the
        progress callback is told first, ``phase`` "stopping"; a second Ctrl-C gives them up, said in
        ``Summary.notes``): the KeyboardInterrupt is raised, and ``Batch.summary`` holds what the run left
        (``interrupted=True``).
        ``progress`` is called (from worker threads, one at a time) after every finished item. In
        ``batch-api`` mode Ctrl-C (or any error) stops the waiting only: the jobs keep running on the service and
        are in the journal, and the same call collects them; ``Summary.notes`` says what is left (jobs still
        running), ``Summary.job_failures`` which jobs failed, were refused, expired or were cancelled (the items
        they did not run are pending, submitted by the next run; those of a failed or refused job are errors).

        Raises UsageError before anything is sent when another run holds the output's lock (``--fresh``
        included), when the journal is damaged or foreign, when the output cannot be written, or when the
        output's answers were asked another question (see ``estimate``); and during
        the run when the journal cannot be written (a full disk: every answer received is kept, and the same
        call resumes once there is room), and once the batch is closed."""
        self._check_open()
        est = self._estimate or self.estimate()
        self._spend = self._spend_cap(est, max_cost)
        started = time.monotonic()
        prog = Progress(total=est.pending, phase=self.mode if self.mode == "realtime" else "upload")
        batch_ids: list[str] = []
        with Journal(self.output, fresh=self.fresh) as journal:  # takes the lock; fresh deletes under it
            # ids and fingerprints go from the spool to the journal, and the journal's pending seqs back: streamed
            journal.register(self.spool.entries())
            aside = journal.count_set_aside()
            if aside:  # a rerun on fewer inputs: their answers are not lost, but not in the output either
                prog.notes.append(
                    f"{aside:,} answers of earlier runs are for items not in this input: they are kept in the journal, "
                    f"not written to {self.output} (give those inputs again to have them back, nothing re-sent)"
                )
            first = next(self.spool.entries(), None)
            if first is not None:  # a sample of the question, to name what changed if a rerun asks another
                sample = self.spool.get(first[0])
                if sample is not None:
                    journal.set_meta("question", {"id": sample.id, "fields": self._question(sample), "version": 2})
            if self.retry_errors:
                journal.retry_errors()
            self.spool.mark_todo(journal.pending_seqs())
            for item, record in self.spool.todo_errors():  # plan errors found by the estimate: recorded, not sent
                self._record_error(journal, item, record, prog, attempts=0)
            prog.total = self.spool.count_where("todo = 1") + prog.done
            try:
                if self.mode == "batch-api":
                    from qwenvl.batch.batchapi import run_batch_api

                    pending = (item for item, _ in self.spool.todo())
                    batch_ids = run_batch_api(self, journal, pending, prog, progress)  # synchronous
                else:
                    self._realtime(journal, prog, progress)
            except BaseException as exc:
                with contextlib.suppress(UsageError):  # e.g. no room for it either: the journal has everything
                    journal.write_outputs(self.csv)
                if isinstance(exc, KeyboardInterrupt):  # what the run left, for the caller to show (the CLI does)
                    with contextlib.suppress(Exception):  # the interrupt is what the caller must get
                        if self.mode == "batch-api":
                            jobs = journal.open_batches()
                            batch_ids = [j["id"] for j in jobs if not j["id"].startswith(UPLOAD_PREFIX)]
                        self.summary = self._summary(journal, prog, started, batch_ids, interrupted=True)
                raise
            finally:  # the run's usage rows are in the log when it returns (a reader may look at once)
                if self.usage_log is not None:
                    self.usage_log.flush()
            journal.write_outputs(self.csv)
            self.summary = self._summary(journal, prog, started, batch_ids)
        return self.summary

    def _spend_cap(self, est: Estimate, max_cost: float | None) -> SpendCap | None:
        """The run's ``SpendCap`` for ``max_cost`` (None: none, or a local model's run), after the estimate's check:
        raises UsageError (nothing sent) when ``est`` is not known to stay within it."""
        if max_cost is None or math.isinf(max_cost) or est.local:
            return None
        name = self.option_names.get("max_cost", "max_cost")
        flag = name.startswith("-")
        if not within_budget(est, max_cost):
            refused = unpriced_error(est, f"{name} {max_cost:g}", "pass --yes" if flag else "give max_cost=None")
            raise refused or UsageError(
                f"the estimated cost is up to {format_cost(est.cost_max, est.currency)}, above {name} "
                f"{format_cost(max_cost, est.currency)}: nothing was sent",
                hint=f"Raise {name}{', or pass --yes' if flag else ' (None: no cap)'}.",
            )
        again = "the same command" if flag else "the same call"
        return SpendCap(
            max_cost,
            est.currency,
            self.planner.region,
            name=name,
            hint=f"What was answered is kept in {self.output}. Raise {name} and run {again} again: only the items "
            "not answered are sent.",
        )

    def _summary(
        self, journal: Journal, prog: Progress, started: float, batch_ids: list[str], *, interrupted: bool = False
    ) -> Summary:
        """The run's Summary, from the journal's counts and the run's ``prog``."""
        counts = journal.counts()
        service_errors = journal.count_errors(SERVICE_ERROR_TYPES)
        first_service_error = journal.first_error(SERVICE_ERROR_TYPES) if service_errors else None
        return Summary(
            output=str(self.output),
            total=counts["total"],
            ok=counts["ok"],
            error=counts["error"],
            pending=counts["pending"],
            this_run=prog.done,
            cached=prog.cached,
            sent=prog.sent,
            input_tokens=prog.input_tokens,
            output_tokens=prog.output_tokens,
            cost=None if (paid := prog.cost_so_far()) is None else round_cost(paid),
            unpriced=prog.unpriced,
            currency=None if self.planner.is_local else self.currency,
            local=self.planner.is_local,
            elapsed_s=round(time.monotonic() - started, 3),
            rate_limited=prog.rate_limited,
            abandoned=prog.abandoned,
            service_errors=service_errors,
            first_service_error=first_service_error,
            send_s=round(prog.last_done - prog.first_sent, 3) if prog.first_sent and prog.last_done else None,
            batch_ids=batch_ids,
            notes=prog.notes,
            job_failures=prog.job_failures,
            interrupted=interrupted,
        )

    def _realtime(self, journal: Journal, prog: Progress, progress: Callable[[Progress], None] | None) -> None:
        todo = prog.total - prog.done
        if not todo:
            return
        # Several small connection pools rather than one large one: httpcore's pool bookkeeping costs
        # O(connections^2) per request, which at 64 connections takes more CPU than the request itself.
        shards = math.ceil(self.concurrency / CONNECTIONS_PER_POOL)
        clients = [self._client] if self._client is not None else [self._new_client() for _ in range(shards)]
        limiter = AdaptiveLimiter(self.concurrency, rpm=self.rpm, tpm=self.tpm)
        runner = _Realtime(self, journal, clients, limiter, prog, progress)
        try:
            for client in clients:  # before the threads share them; a missing key fails here, before any request
                try:
                    client.backend  # noqa: B018
                except MissingAPIKeyError:
                    if self.spool.count_where("todo = 1 AND cached = 0"):
                        raise
                    break  # the cache answers every item: no request is made, no key is needed
            runner.run(self.spool.todo(), todo)
        finally:
            for client in clients:
                if client is not self._client:  # a client given to the batch stays its owner's
                    client.close(wait_s=0)  # the run waited for its requests in flight already (_drain)

    # --- recording --------------------------------------------------------------------------------
    def _record_error(
        self,
        journal: Journal,
        item: BatchItem,
        exc: BaseException | dict[str, Any],
        prog: Progress,
        attempts: int,
        price_factor: float = 1.0,
        extra: dict[str, Any] | None = None,
    ) -> Future[None]:
        """Record an item's error: an exception, or its ``error_record`` (an estimate's, kept in the spool), with
        ``extra`` fields in its line (a Batch API job's ``mode`` and ``batch_id``, as an answer's line has them). A
        StructuredOutputError's answers were paid: the record carries their ``usage``, ``cost`` (times
        ``price_factor``), ``currency`` and ``request_ids``, ``attempts`` counts the repair request, and the run's
        requests sent, tokens and cost include them."""
        error = exc if isinstance(exc, dict) else error_record(exc)
        rec = {
            "id": item.id,
            "input": item.input,
            "status": "error",
            "error": error,
            "attempts": attempts,
            **(extra or {}),
        }
        answer = exc.response if isinstance(exc, StructuredOutputError) else None
        paid = None
        if isinstance(exc, StructuredOutputError) and isinstance(answer, Response):
            paid = self._paid(answer, item, price_factor, requests=exc.requests)
            rec["attempts"] = attempts + max(paid.requests, 1) - 1
            rec["usage"] = usage_record(answer)
            rec["cost"] = None if paid.cost is None else round(paid.cost, 8)
            rec["currency"] = None if self.planner.is_local else self.currency
            rec["local"] = self.planner.is_local
            rec["cached"] = paid.cached
            rec["request_ids"] = exc.request_ids
            error["request_id"] = error["request_id"] or (exc.request_ids[-1] if exc.request_ids else None)
        done = journal.finish(
            item.id,
            "error",
            dumps(rec),
            input_tokens=paid.input_tokens if paid else None,
            output_tokens=paid.output_tokens if paid else None,
            cost=paid.cost if paid else None,
            cached=bool(paid and paid.cached),
        )
        prog.done += 1
        prog.failed += 1
        if error.get("type") in SERVICE_ERROR_TYPES:
            prog.failed_service += 1
        if paid is not None:
            self._count_paid(prog, paid)
        return done

    def _paid(self, response: Response, item: BatchItem, price_factor: float, *, requests: int | None = None) -> Paid:
        """What ``response`` (an item's answer, or the answer a StructuredOutputError carries: then ``requests`` is
        the error's count) was paid: see ``Paid``. Raises nothing."""
        n = response.requests if requests is None else requests
        u = response.usage
        return Paid(
            requests=n,
            cached=n == 0,
            cost=0.0 if n == 0 and not self.planner.is_local else self._cost(response, item, price_factor),
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
        )

    def _count_paid(self, prog: Progress, paid: Paid) -> None:
        """Count an item's ``paid`` in the run's counters: its requests beyond the first (a repair: the worker
        counted the first as it went out), a cached answer, or the paid tokens and cost. Raises nothing."""
        prog.sent += max(paid.requests - 1, 0)
        if paid.cached:
            prog.cached += 1
            return
        if self._spend is not None:  # what the cap counts: every request paid, a repair included
            self._spend.add(paid.cost)
        prog.input_tokens += paid.input_tokens or 0
        prog.output_tokens += paid.output_tokens or 0
        prog.paid(paid.cost, local=self.planner.is_local)

    def _cost(self, response: Response, item: BatchItem, price_factor: float) -> float | None:
        """What ``response`` cost (``models.answer_cost``, at the run's region and ``price_factor``), or None."""
        return answer_cost(
            response,
            region=self.planner.region,
            factor=price_factor,
            model=self.model_of(item),
            local=self.planner.is_local,
        )

    def _record_ok(
        self,
        journal: Journal,
        item: BatchItem,
        response: Response,
        prog: Progress,
        *,
        attempts: int,
        latency_s: float,
        extra: dict[str, Any] | None = None,
        price_factor: float = 1.0,
    ) -> Future[None]:
        paid = self._paid(response, item, price_factor)
        rec = {
            "id": item.id,
            "input": item.input,
            "status": "ok",
            "result": response.record(),
            "usage": usage_record(response),
            **cost_fields(paid.cost, self.currency, local=self.planner.is_local),
            "cached": paid.cached,
            "attempts": attempts + max(paid.requests, 1) - 1,  # a structured-output repair request included
            "latency_s": round(latency_s, 3),
            **(extra or {}),
        }
        if paid.requests > 1:
            rec["request_ids"] = response.request_ids
        notes = answer_notes(response)  # cut off at max_tokens, empty, items not shown: said in the record
        if notes:
            rec["warnings"] = notes
        done = journal.finish(
            item.id,
            "ok",
            dumps(rec),
            input_tokens=paid.input_tokens,
            output_tokens=paid.output_tokens,
            cost=paid.cost,
            cached=paid.cached,
        )
        prog.done += 1
        self._count_paid(prog, paid)
        return done


class _Realtime:
    """The threads of a realtime run: workers pulling items through the limiter, one journal writer."""

    def __init__(
        self,
        batch: Batch,
        journal: Journal,
        clients: list[Client],
        limiter: AdaptiveLimiter,
        prog: Progress,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        self.batch, self.journal, self.clients, self.limiter = batch, journal, clients, limiter
        self.prog, self.progress = prog, progress
        self.lock = threading.Lock()  # the item iterator, the counters, the journal hand-off, progress
        self.stop = threading.Event()
        self.accepting = True  # False once the run is over: late answers (after Ctrl-C) are dropped
        self.fatal: BaseException | None = None
        # requests the service refused for the key or the model (401/403, model not found): not recorded
        self.refused: list[BaseException] = []
        # stops the run when the service cannot be reached (or answers too slowly): the rule's one home
        self.reach = Reachability(
            "items", then="run the same command with --retry-errors to send the failed items again."
        )
        # the run's start, then when an item last finished (answered, cached or failed): 429s for RATE_LIMIT_STALL_S
        # after it stop the run
        self.last_answer = time.monotonic()

    def run(self, pending: Iterator[tuple[BatchItem, bool]], count: int) -> None:
        """Send the ``count`` items of ``pending`` ((item, the estimate found it cached), read from the spool as
        the workers take them)."""
        queue = pending
        n = min(self.batch.concurrency, count)
        # each worker's own "ended" event, never Thread.join/is_alive: a join cut by Ctrl-C (KeyboardInterrupt)
        # marks the thread it waited for as ended while it still runs (CPython's bpo-45274 handling), and its
        # answer, paid for, would be dropped
        ended = [threading.Event() for _ in range(n)]
        workers = [
            threading.Thread(
                target=self._worker,
                args=(queue, self.clients[i % len(self.clients)], ended[i]),
                name=f"qwenvl-batch-{i}",
                daemon=True,
            )
            for i in range(n)
        ]
        self.journal.start_writer(self.batch.csv, self.batch.flush_interval_s, slots=n)
        with self.lock:
            self._report()
        started = 0
        interrupted = False
        try:
            for w in workers:
                started += 1  # counted before: a start cut by Ctrl-C may have started the thread
                w.start()
            for done in ended:
                while not done.wait(0.25):  # in slices, so that Ctrl-C reaches this thread
                    pass
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self.stop.set()
            self.limiter.wake()
            self._drain(ended[:started], interrupted=interrupted)
            with self.lock:
                self.accepting = False
                self._report()
            self.journal.stop_writer()
        if self.fatal is not None:
            error = self.fatal
            if isinstance(error, QwenVLError) and not isinstance(error, UsageError):  # journal errors say it
                error.hint = f"{error.raw_hint + ' ' if error.raw_hint else ''}{self._stopped_hint()}"
            raise error

    def _stopped_hint(self) -> str:
        """What a run stopped at once left, in this run's items: answered (kept), failed for the service's reasons
        (recorded: sent again with --retry-errors), failed for their input (recorded: to fix first), not sent (a rerun
        sends them)."""
        prog = self.prog
        refused = len(self.refused)
        answered, failed, left = prog.done - prog.failed, prog.failed, prog.total - prog.done - refused
        parts = [f"{answered} answered (kept in {self.batch.output})"] if answered else []
        if prog.failed_service:
            parts.append(
                f"{prog.failed_service} failed for the service's reasons (recorded: --retry-errors sends them again)"
            )
        if failed - prog.failed_service:
            parts.append(
                f"{failed - prog.failed_service} failed for their input (recorded: their error says what to fix, a "
                "file or the request; sent again, they would fail the same)"
            )
        if refused:
            first = self.refused[0]
            why = (
                "the model does not exist or the key has no access to it"
                if isinstance(first, ModelNotFoundError)
                else "permission"
                if isinstance(first, PermissionDeniedError)
                else "rate limited"
                if isinstance(first, RateLimitError)
                else "authentication"
            )
            parts.append(
                f"{refused} sent and refused by the service ({why}: not answered nor billed, not recorded: a rerun "
                "sends them again)"
            )
        if left:
            parts.append(f"{left} not sent (a rerun sends them)")
        return f"The batch stopped at once, of this run's {prog.total} items: {', '.join(parts) or 'none done'}."

    def _stopping(self) -> None:
        """Ctrl-C (or SIGTERM/SIGHUP) came: said once, through the progress callback (``phase`` "stopping", the
        words in ``detail``), when requests are in flight and will be awaited."""
        with self.lock:
            n = self.limiter.in_flight
            if not n:
                return
            self.prog.phase = "stopping"
            why = (
                "to record their answers"
                if self.batch.planner.is_local
                else "whose answers are paid for, to record them"
            )
            self.prog.detail = (
                f"interrupted: waiting up to {INTERRUPT_GRACE_S:g} s for the {n} request{'s' if n > 1 else ''} in "
                f"flight, {why}; interrupt again to leave without them"
            )
            self._report()

    def _drain(self, ended: list[threading.Event], *, interrupted: bool = False) -> None:
        """After a stop (Ctrl-C included), wait up to ``INTERRUPT_GRACE_S`` for the workers' requests in flight
        (each worker sets its event when it ends): their answers are paid for, so they are recorded rather than
        dropped. A second Ctrl-C leaves at once; then, or past the grace period, the requests still in flight are
        said in ``Progress.notes`` (their answers are not recorded: a rerun sends them again).
        ``interrupted``: said first (``_stopping``), inside the wait, so that an interrupt while it is said counts as
        the second."""
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        why = f"after {INTERRUPT_GRACE_S:g} s"
        try:
            if interrupted:
                self._stopping()
            for done in ended:
                while not done.is_set() and (left := deadline - time.monotonic()) > 0:
                    done.wait(min(left, 0.1))
        except KeyboardInterrupt:
            why = "at a second interrupt"
        with self.lock:
            self.accepting = False  # what comes in now is not recorded: counted as given up
            n = self.limiter.in_flight
            self.prog.abandoned = n
        if n:
            self.prog.notes.append(
                f"{why}, the run stopped without the answers of {n} request{'s' if n > 1 else ''} in flight: "
                f"{'they are' if n > 1 else 'it is'} not recorded, and the same command sends "
                f"{'them' if n > 1 else 'it'} again"
                + ("" if self.batch.planner.is_local else " (paid for again unless the cache has the answer)")
            )

    def _worker(self, queue: Iterator[tuple[BatchItem, bool]], client: Client, ended: threading.Event) -> None:
        try:
            while not self.stop.is_set():
                with self.lock:
                    nxt = next(queue, None)
                if nxt is None:
                    return
                item, cached = nxt
                self._item(item, cached, client)
        except BaseException as exc:  # a 401/403, or a bug: stop every worker and report it
            with self.lock:
                if self.fatal is None:
                    self.fatal = exc.error if isinstance(exc, _Fatal) else exc
            self.stop.set()
            self.limiter.wake()
        finally:
            ended.set()

    def _report(self) -> None:
        self.prog.concurrency = self.limiter.concurrency
        self.prog.in_flight = self.limiter.in_flight
        self.prog.rate_limited = self.limiter.rate_limited
        if self.progress is not None:
            self.progress(self.prog)

    def _error(self, item: BatchItem, exc: BaseException, attempts: int) -> None:
        with self.lock:
            if not self.accepting:
                return
            done = self.batch._record_error(self.journal, item, exc, self.prog, attempts=attempts)
            self.prog.last_done = self.last_answer = time.monotonic()
            self._report()
        self._committed(done)

    def _ok(self, item: BatchItem, response: Response, attempts: int, latency_s: float) -> None:
        with self.lock:
            if not self.accepting:
                return
            done = self.batch._record_ok(
                self.journal, item, response, self.prog, attempts=attempts, latency_s=latency_s
            )
            self.prog.last_done = self.last_answer = time.monotonic()
            self._report()
        self._committed(done)

    def _committed(self, done: Future[None]) -> None:
        """Wait (outside the lock, so that commits group) until the item is in the journal; a journal that
        cannot be written (a full disk) stops the batch: no request is sent that could not be recorded."""
        try:
            done.result(COMMIT_TIMEOUT_S)
        except FutureTimeout:
            raise _Fatal(
                UsageError(
                    f"{self.journal.path} did not commit within {COMMIT_TIMEOUT_S:.0f} s",
                    hint="Is its disk very slow or hung? Run the same command again to resume.",
                )
            ) from None
        except QwenVLError as exc:
            raise _Fatal(exc) from exc
        if self.journal.write_error is not None:
            raise _Fatal(self.journal.write_error)

    def _unreachable(self, exc: APIConnectionError) -> None:
        """An item could not connect on any attempt: raises _Fatal (exit 5, the run stops, as for a 401) once the
        service is taken for unreachable, or too slow (``qwenvl.retry.Reachability``, the rule of every run of many
        requests): every other item would only wait for its time-outs and fail the same."""
        stop = self.reach.failed(exc)
        if stop is not None:
            raise _Fatal(stop)

    def _rate_limited(self, exc: RateLimitError) -> None:
        """A 429 met by an item (counted, said to the progress callback): raises _Fatal (the run stops, the item
        left to send) when the service asks to wait longer than ``MAX_RETRY_AFTER_S`` (when to try again said), or
        when no item of the run has finished for ``RATE_LIMIT_STALL_S``; else the item waits for the limiter again."""
        self.reach.answered()
        with self.lock:
            self._report()  # a run waiting on 429s is not silent: the CLI says so off a terminal
            stalled = time.monotonic() - self.last_answer
        if exc.retry_after is not None and exc.retry_after > MAX_RETRY_AFTER_S:
            with self.lock:
                self.refused.append(exc)
            exc.hint = give_up_hint(exc) or exc.raw_hint
            raise _Fatal(exc)
        if stalled >= RATE_LIMIT_STALL_S:
            with self.lock:
                self.refused.append(exc)
            raise _Fatal(
                RateLimitError(
                    f"the service answered only 429 (rate limited) for {stalled:.0f} s: the batch stopped "
                    f"({exc.message})",
                    hint="Run the same command later to resume; a lower --concurrency or an --rpm ceiling sends "
                    "more slowly.",
                    status=429,
                )
            )

    def _item(self, item: BatchItem, cached: bool, client: Client) -> None:
        fields = {**item.request, "max_retries": 0}  # the batch owns retries: the limiter must see every 429
        try:
            call = client.plan(fields)
        except (MediaError, UsageError) as exc:
            return self._error(item, in_line_words(item, exc), 0)
        retries = item.request.get("max_retries", client.defaults.get("max_retries", DEFAULT_MAX_RETRIES))
        backoff = item.request.get("retry_backoff_s", call.request.retry_backoff_s)
        tokens, _ = input_tokens_of(call)
        # answered locally: no slot, no rate budget (the estimate knows only items without local media)
        cached = cached or (client.cache is not None and key_for(client, call) in client.cache)
        held = 0.0
        spend = self.batch._spend
        if spend is not None and not cached:  # above the cap with what is paid and in flight: not sent, run stops
            most = estimate_calls([call], region=client.region, local=self.batch.planner.is_local).cost_max
            try:
                held = spend.reserve(most, item.id)
            except UsageError as exc:
                raise _Fatal(exc) from None
        try:
            self._send(item, call, cached, client, tokens, retries, backoff)
        finally:
            if spend is not None:
                spend.release(held)

    def _send(
        self, item: BatchItem, call: Call, cached: bool, client: Client, tokens: int, retries: int, backoff: float
    ) -> None:
        """``_item``'s sending: through the limiter, with the batch's retries; the answer or the error recorded."""
        attempt = attempts = 0
        while True:
            slot = None
            if not cached:
                slot = self.limiter.acquire(tokens, self.stop)
                if slot is None:  # stopping
                    return None
            started = time.monotonic()
            if self.prog.first_sent is None:
                self.prog.first_sent = started
            if slot is not None:  # counted as it goes out: one given up in flight was sent too
                with self.lock:
                    self.prog.sent += 1
            actual: int | None = None
            attempts += 1
            hit = False  # answered from the cache (an identical item in flight waited for): not sent, not paid
            try:
                response = client.send(call)
                u = response.usage
                hit = response.cached and response.requests == 0
                actual = 0 if hit else (u.total_tokens or (u.input_tokens or 0) + (u.output_tokens or 0)) or None
                if not response.cached:
                    self.reach.answered()
                    self.limiter.on_success()
                if client.cache is not None and call.media:  # the next estimate sees this answer unprepared
                    client.cache.link(source_key_for(client, call), key_for(client, call))
                # in the journal before the slot is released (raises _Fatal when it cannot be)
                return self._ok(item, response, attempts, time.monotonic() - started)
            except RateLimitError as exc:
                if slot is not None:
                    self.limiter.on_rate_limited(slot, exc.retry_after)
                self._rate_limited(exc)  # raises _Fatal when the run must stop
                continue
            except (AuthenticationError, PermissionDeniedError, ModelNotFoundError) as exc:
                # every other item would get the same answer: the run stops, this item left to send again
                if not isinstance(exc, MissingAPIKeyError):  # sent, and refused: not "not sent"
                    with self.lock:
                        self.refused.append(exc)
                if isinstance(exc, ModelNotFoundError) and call.request.model not in exc.raw_message:
                    exc.message = f"{call.request.model}: {exc.raw_message}"  # native says only "Model not exist."
                raise _Fatal(exc) from exc
            except APIError as exc:
                if isinstance(exc, APIStatusError):
                    self.reach.answered()
                if should_retry(exc) and attempt < retries:
                    if self.stop.wait(retry_delay(attempt, backoff, getattr(exc, "retry_after", None))):
                        return None
                    attempt += 1
                    continue
                self._error(item, exc, attempts)
                if isinstance(exc, APIConnectionError):
                    self._unreachable(exc)
                return None
            except QwenVLError as exc:  # StructuredOutputError, a MediaError met late...
                return self._error(item, exc, attempts)
            finally:
                if slot is not None:
                    self.limiter.release(slot, actual_tokens=actual)
                with self.lock:  # counted as it went out (slot taken); the cache may have answered after all, or not
                    if slot is not None and hit:  # an identical item in flight was waited for: not sent
                        self.prog.sent -= 1
                    elif slot is None and not hit:  # the estimate expected the cache, which did not answer: sent
                        self.prog.sent += 1
                if not hit:  # the cache did not answer: a retry goes through the limiter (its waits, 429s, stop)
                    cached = False


def _check_mode_options(mode: str, **given: Any) -> None:
    """Refuse an option of ``Batch`` that its ``mode`` does not read, rather than ignore it (the CLI's
    "applies to ... only", as ``qwenvl.media.sources.not_applied`` refuses an option no media reads):
    OptionNotAppliedError (a UsageError, exit 2) for ``poll_interval_s`` (other than its default) or
    ``wait=False`` in ``realtime`` (it sends every request itself: there is no job to poll or leave), and for
    ``concurrency`` (other than its default), ``rpm`` or ``tpm`` in ``batch-api`` (the service paces its jobs).
    Worded in the CLI's flags (the library says them as keywords: ``qwenvl.wording``). Raises nothing otherwise."""
    if mode == "realtime":
        other, why = "batch-api", "realtime sends every request itself: there is no job to check or leave running"
        flags = {
            "--poll-interval": given["poll_interval_s"] != BATCH_POLL_INTERVAL_S,
            "--no-wait": given["wait"] is False,
        }
    else:
        other, why = "realtime", "the Batch API paces its jobs itself"
        flags = {
            "--concurrency": given["concurrency"] != DEFAULT_CONCURRENCY,
            "--rpm": given["rpm"] is not None,
            "--tpm": given["tpm"] is not None,
        }
    for flag, set_ in flags.items():
        if set_:
            raise OptionNotAppliedError(
                f"{flag} applies to --mode {other} only ({why})",
                hint=f"Leave out {flag}, or give --mode {other}.",
            )


def batch_price_factor() -> float:
    """The Batch API's price factor (``batchapi.PRICE_FACTOR``, its one home)."""
    from qwenvl.batch.batchapi import PRICE_FACTOR

    return PRICE_FACTOR


def estimate_calls(calls: Iterable[Call], *, region: str | None = None, local: bool = False) -> Estimate:
    """What sending ``calls`` would take, one request each (planned ``estimate_only`` is enough: sizes and tokens
    from the headers): ``to_send``, input tokens (media by the billing rules, text approximate), the costs with
    each request priced at its own tier (as a batch is: ``Batch.estimate``), in ``region``'s currency; ``local``
    (a local model), or every call's model local (``ModelInfo.local_family``: a model a ``qwenvl serve`` in front
    of an engine serves): no price, costs and currency None. The one estimate of a verb that sends several requests
    (``qwenvl ocr`` over a PDF's pages); ``within_budget`` and ``unpriced_error`` check it against a cap.
    Raises what iterating ``calls`` raises."""
    est = Estimate(currency=None if local else currency_of(region), local=local)
    if local:
        est.cost_input = est.cost_max = None
    models: set[str] = set()
    served_local = True  # every call's model is a local one (``ModelInfo.local_family``: e.g. a qwenvl serve's)
    for call in calls:
        tokens, unknown = input_tokens_of(call)
        served_local = served_local and call.model.local_family
        Batch._fold_estimate(est, models, (call.model, call.request.max_tokens, tokens, unknown, False), region)
    if served_local and est.to_send and not local:  # no price: as a local backend's run
        est.local, est.currency, est.cost_input, est.cost_max = True, None, None, None
    est.items = est.pending = est.to_send
    est.models = sorted(models)
    return est


def within_budget(est: Estimate, max_cost: float | None) -> bool:
    """Whether ``est`` is known to stay within ``max_cost`` (None or infinite: no limit). Always True for a local
    model's run: it has no price, so no budget can be exceeded. False when a request to send uses a model with no
    known price (``est.unpriced``): a cap that cannot be checked is not met (``unpriced_error`` says why)."""
    if est.local or max_cost is None or math.isinf(max_cost):
        return True
    return not est.unpriced and (est.cost_max or 0.0) <= max_cost


def unpriced_error(est: Estimate, cap: str, uncapped: str = "pass --yes") -> UsageError | None:
    """The refusal of a run whose cost cap (``cap``, as the surface names it: ``--max-cost 20``) cannot be checked:
    a request to send uses a model with no known price (``est.unpriced_models``), so what it costs is unknown;
    ``uncapped``: how that surface runs with no cap (the CLI's ``--yes``; the library's ``max_cost=None``).
    None when every request is priced, or for a local model's run (it costs no money). The one wording for every
    cost cap. Raises nothing."""
    if est.local or not est.unpriced:
        return None
    names = ", ".join(est.unpriced_models[:3]) + (", ..." if len(est.unpriced_models) > 3 else "")
    they = "has" if len(est.unpriced_models) == 1 else "have"
    return UsageError(
        f"{cap} cannot be checked: {names} {they} no known price in {est.currency} ({est.unpriced:,} of the "
        f"{est.to_send:,} requests to send): nothing was sent",
        hint=f"Use a model with a price (`qwenvl models` lists them), or {uncapped} to run with no cost cap.",
    )


class SpendCap:
    """The running side of a cost cap, the one home for every capped run of many requests (``Batch.run``'s
    ``max_cost``; the CLI's ``batch``, ``extract`` and ``ocr``, whose ``--max-cost`` is ``cli.common.confirm_cost``'s
    up-front check): what the run has paid so far, structured-output repairs included (each answer as priced by its
    caller, e.g. ``models.answer_cost``; a failed structured answer was paid too), checked before each further
    request against that request's most (its ``Estimate.cost_max``). Requests sent at once (a batch's threads)
    ``reserve`` their most while in flight, so that the cap holds whatever order the answers come in, and
    ``release`` it when answered. Thread-safe.

    ``cap``: in ``currency`` (None: never stops); ``region``: the answers' pricing (``paid``); ``name``: the cap as
    the surface names it in the refusal (``--max-cost``, ``max_cost``); ``hint``: how to go on (default: raise the
    cap and run the rest again)."""

    def __init__(
        self,
        cap: float | None,
        currency: str | None,
        region: str | None = None,
        *,
        name: str = "--max-cost",
        hint: str = "What was answered is kept. Raise --max-cost (or pass --yes) and run the rest again.",
    ) -> None:
        self.cap = None if cap is None or math.isinf(cap) else float(cap)
        self.currency, self.region, self.name, self.hint = currency, region, name, hint
        self.spent = 0.0  # paid so far, in ``currency``: answers of unknown cost count 0 (the cap checked them first)
        self.reserved = 0.0  # the most of the requests in flight (``reserve``)
        self._lock = threading.Lock()

    def paid(self, response: Response | None) -> None:
        """Add what ``response`` cost (``models.answer_cost`` in ``region``: every request of it, a repair included;
        nothing for None, a cached answer or an unknown cost). Raises nothing."""
        self.add(answer_cost(response, region=self.region) if response is not None else None)

    def add(self, cost: float | None) -> None:
        """Add ``cost`` (None: unknown, counted 0) to what the run has paid. Raises nothing."""
        with self._lock:
            self.spent += cost or 0.0

    def check(self, most: float | None, what: str) -> None:
        """Raise UsageError (exit 2) when ``what`` (the next request, e.g. "b.png"), which may cost up to ``most``
        (None: unknown, not checked), would take the run's spend (with the requests in flight at their most) above
        the cap: nothing more is to be sent."""
        with self._lock:
            self._check(most, what)

    def reserve(self, most: float | None, what: str) -> float:
        """``check``, then count ``most`` as in flight until ``release``: returns the amount reserved (0 for an
        unknown ``most`` or no cap). Raises UsageError as ``check``."""
        with self._lock:
            self._check(most, what)
            held = (most or 0.0) if self.cap is not None else 0.0
            self.reserved += held
            return held

    def release(self, held: float) -> None:
        """The request ``reserve`` counted (``held``) is over (its answer, if paid, is ``add``-ed). Raises nothing."""
        with self._lock:
            self.reserved = max(self.reserved - held, 0.0)

    def _check(self, most: float | None, what: str) -> None:
        if self.cap is None or most is None or self.spent + self.reserved + most <= self.cap:
            return
        flight = f" with {format_cost(self.reserved, self.currency)} in flight" if self.reserved else ""
        raise UsageError(
            f"stopped before {what}: {format_cost(self.spent, self.currency)} spent so far (repair requests "
            f"included){flight} and it may cost up to {format_cost(most, self.currency)}, above {self.name} "
            f"{format_cost(self.cap, self.currency)}",
            hint=self.hint,
        )
