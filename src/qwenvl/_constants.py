"""Numeric defaults used in more than one module: one home each (unit in the name, source in the comment).

``qwenvl.transport`` and ``qwenvl.retry`` explain how they are applied; ``Request``, the transport's
``Policy``, the CLI's option help, the Batch API and the batch limiter read them from here. Timeout, retries
and backoff are those of the skill this project grew from (cinience/alicloud-skills
``scripts/analyze_image.py``: ``DEFAULT_TIMEOUT_S = 120; DEFAULT_MAX_RETRIES = 2; DEFAULT_RETRY_BACKOFF_S =
1.5``, reference/dashscope-api.md §1.3).
"""

# --- one attempt: deadlines (qwenvl.transport) --------------------------------------------------------------
DEFAULT_TIMEOUT_S = 120.0  # seconds per attempt; a stream: to its first data event, then between two (skill)
CONNECT_TIMEOUT_S = 10.0  # seconds for TCP and TLS, within the attempt's budget (ours: a dead host fails fast)
STREAM_CAP_FACTOR = 10.0  # a whole stream may last this many times the time-out... (ours)
STREAM_CAP_MIN_S = 600.0  # ...and at least this many seconds (ours: a long video description streams for minutes)
MIN_TRANSFER_RATE = 100_000  # bytes/s: a file transfer may take 1 s more per this many bytes of its body (ours)
FETCH_TIMEOUT_S = 30.0  # seconds for one media URL download (--fetch-urls, the server's downloads) (ours)
FETCH_TIMEOUT_MAX_S = 60.0  # seconds: a request's own time-out, when shorter, bounds its downloads; never more (ours)
MAX_DURATION_S = 86_400.0  # seconds (a day): the longest any time-out, interval or wait may be set to, library and
# CLI alike (ours: past it a deadline is no deadline, and a clock's time_t overflows near 1e11 s; qwenvl.types.seconds)

# --- retries (qwenvl.retry) ---------------------------------------------------------------------------------
DEFAULT_MAX_RETRIES = 2  # retries after the first attempt (skill; openai-python's default is also 2)
DEFAULT_RETRY_BACKOFF_S = 1.5  # seconds: retry n (0-based) waits backoff * 2**n: 1.5 s, 3 s, 6 s... (skill)
JITTER = 0.25  # a retry's wait (and the batch limiter's pause) is shortened by up to this fraction (ours)
MAX_RETRY_DELAY_S = 20.0  # seconds: the longest wait between two attempts, backoff and Retry-After alike. Ours:
# openai-python caps at 8 s; DashScope counts rate limits per minute, so 20 s lets three retries span a window.

# --- batches (qwenvl.batch.runner, `qwenvl batch`) -----------------------------------------------------------
BATCH_POLL_INTERVAL_S = 30.0  # seconds between two status checks of a Batch API job (ours: jobs take hours)
# In the region's currency (CNY or USD): above this estimate a verb that sends many requests (`qwenvl batch`,
# `qwenvl ocr` over a PDF's pages: --max-cost) asks (on a terminal) or refuses (elsewhere) unless --yes (ours).
DEFAULT_MAX_COST = 20.0

# --- `qwenvl serve` (qwenvl.server.app.ServeSettings and the command's options) ------------------------------
# `qwenvl serve`'s default port: not 8000, which is vLLM's (the openai backend's default upstream,
# config.DEFAULT_OPENAI_BASE_URL), nor llama.cpp's 8080, SGLang's 30000 or Ollama's 11434.
SERVE_PORT = 8100
SERVE_MAX_BODY_BYTES = 32 * 1024 * 1024  # bytes of one request body (32 MiB: a few large base64 images)
SERVE_MAX_MEDIA_ITEMS = 64  # images and videos in one request
SERVE_MAX_CONCURRENT_PER_KEY = 16  # requests in flight per client key; beyond: 429 with Retry-After
# seconds `qwenvl serve` gives, on SIGTERM, to the requests it holds (uvicorn's timeout_graceful_shutdown) and to
# the Batch API lines in flight; what is unfinished then is cut (a batch line: run again after a restart)
SERVE_GRACE_S = 5
# the last seconds of that budget, for what the shutdown cut: each cut request's 503, a cut batch line's kept answer
SERVE_CUT_S = 1.0
SERVE_REQUEST_TIMEOUT_S = 600.0  # seconds one served request may take, streaming included (= STREAM_CAP_MIN_S)
# seconds a stream's status line waits for the backend's first event (a refusal before it is an HTTP error); past it
# the stream starts with an SSE comment, and a failure is the stream's error event
SERVE_STREAM_START_S = 5.0
SERVE_READY_TIMEOUT_S = 5.0  # seconds one /ready check may take (the backend's probe); past it: not ready
# seconds a client gives a server that is not DashScope's own (a `qwenvl serve`) to list its models, once per client
# (``backends.dashscope.served_models``); past it, or on any failure, the model table's rules stand (ours)
LISTING_TIMEOUT_S = 5.0
SERVE_READY_CACHE_S = 3.0  # seconds a /ready answer is reused (a probe per load balancer poll would load the upstream)

# --- files qwenvl reads whole on a user's behalf (qwenvl.media.sources.read_regular_text) --------------------
MAX_TEXT_FILE_BYTES = 64 * 1024 * 1024  # bytes of a schema, session, request or configuration file, and of one
# line of a requests file (ours: thousands of times any real one; a session keeps data: URLs as given, so it gets
# room for a few). A larger one is refused unread: a file named by mistake (a video, a disk image) is not loaded.

# --- a client's close (qwenvl.client) -------------------------------------------------------------------------
CLOSE_WAIT_S = 30.0  # seconds close()/aclose() waits for the whole-answer calls in flight (complete, ask, send) to
# end before closing the connections; those still going then end as ClientClosedError, logged "cancelled" (ours)
