"""What happens around one backend call: the client's response cache and usage log (the client's only hook).

The one home of what is recorded about a request, in every path (sync and async, plain and streamed):

with exchange.begin(client, call, keep=valid) as ex:   # a hit is ready in ex.response (``await abegin``: async)
    if ex.response is None:
        backend = client.backend
        with ex.sending():                              # a failure, an interrupt, each retried attempt: logged
            ex.done(backend.complete(call))             # logs "ok"; cached if ``keep`` says it is valid

- An answer is cached only when it is whole (``cache.storable``) and ``keep(response)`` says it passed the
  caller's check (structured output), so an error is never replayed; a hit that fails ``keep`` (an entry
  stored by an earlier version) is ignored.
- While one cacheable request is in flight, an identical one (same cache key, same ``ResponseCache``) waits for
  it (at most its own ``wait_bound``) and gets its answer from the cache; if the first failed with an error of the
  service (an APIError, a StructuredOutputError: ``shareable``), every waiter raises that error at once (a copy,
  ``QwenVLError.shared`` True: nothing sent, nothing paid); if it was cancelled or cut (an interrupt, a closed
  client), the first waiter to claim the key sends it and the others wait for that one (``ResponseCache.claim``).
  A structured call's key stays claimed until its final outcome (``Held``): an answer that failed its check is
  repaired first, and its waiters get the repaired answer from the cache (or the call's error) instead of sending
  (and repairing) their own.
- Every attempt that reached the service is in the usage log: an answer as ``ok`` (``cached`` for a hit, cost
  0), an error as its type, an attempt the transport retried as its error's type (``retried``, through the
  client's ``on_retry`` hook), an interrupt (KeyboardInterrupt, a cancelled task, a closed stream) as
  ``cancelled``, and a request still in flight when the process exits (a worker thread given up) as
  ``cancelled`` too. Their tokens and cost are unknown (None, never 0).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from qwenvl.config import resolve_base_url
from qwenvl.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    QwenVLError,
    StructuredOutputError,
)
from qwenvl.interfaces import ClientEndpoint
from qwenvl.models import answer_cost, currency_of, is_paid, logged_protocol
from qwenvl.plan import Call, ensure_sendable
from qwenvl.protocols import get
from qwenvl.retry import RetryNotice, listening
from qwenvl.store.cache import ResponseCache, cache_key, for_account, source_key, storable
from qwenvl.store.usage import Entry, UsageLog
from qwenvl.types import Request, Response

CANCELLED = "cancelled"  # the outcome of an attempt its caller stopped (an interrupt, a cancelled task): tokens unknown

# the exchange whose request is being sent in this thread or task (``Exchange.sending``), told of retried attempts
# exchanges sent and not finished: logged as cancelled at exit (``_at_exit``)
_open: weakref.WeakSet[Exchange] = weakref.WeakSet()
_open_lock = threading.Lock()


def endpoint(client: ClientEndpoint, call: Call) -> str:
    """The URL the call goes to (part of the cache key: a loopback test server never answers for the cloud)."""
    if call.request.base_url:
        return resolve_base_url(client.protocol, base_url=call.request.base_url)
    backend = getattr(client, "_backend", None)
    if backend is not None:
        return str(getattr(backend, "base_url", None) or getattr(backend, "name", type(backend).__name__))
    return resolve_base_url(client.protocol, region=client.region, base_url=client.base_url)


def account_of(client: ClientEndpoint) -> str:
    """The client's account as the cache keys it (``Client.account``; ``""`` for an endpoint that has none)."""
    return str(getattr(client, "account", "") or "")


def key_for(client: ClientEndpoint, call: Call) -> str:
    """The cache key of ``call`` sent by ``client``: its account's (``cache.for_account``). Raises nothing."""
    backend = getattr(client, "_backend", None)
    if backend is not None and hasattr(backend, "cache_key"):  # a backend that keys its own calls
        key = backend.cache_key(call)
    else:
        key = cache_key(client.protocol, endpoint(client, call), get(client.protocol).build_body(call, stream=False))
    return for_account(key, account_of(client))


def source_key_for(client: ClientEndpoint, call: Call) -> str:
    return for_account(source_key(client.protocol, endpoint(client, call), call), account_of(client))


def wait_bound(request: Request) -> float:
    """Seconds a request may take in all (its attempts at ``timeout_s`` each and the back-off waits between
    them): the longest a caller waits for an identical request in flight. Raises nothing."""
    retries = request.max_retries
    return request.timeout_s * (retries + 1) + request.retry_backoff_s * (2**retries - 1)


def shareable(exc: BaseException | None) -> QwenVLError | None:
    """``exc`` when it is the service's answer to a request, which identical calls waiting for it raise too: an
    APIError (a status, the network, a time-out, after the retries) or a StructuredOutputError; else None (an
    interrupt, a closed client, anything else: a waiter sends the request itself). Raises nothing."""
    return exc if isinstance(exc, APIError | StructuredOutputError) else None


def shared_copy(exc: QwenVLError) -> QwenVLError:
    """The error an identical call in flight failed with, as a waiter raises it: the same type and fields (status,
    code, request id), ``shared`` True, the message saying whose it is, nothing paid (a StructuredOutputError's
    ``requests`` 0, its ``response`` a copy). Raises nothing."""
    copy = type(exc).__new__(type(exc), *exc.args)
    copy.__dict__.update(exc.__dict__)
    copy.shared = True
    copy.message = (
        f"{exc.raw_message} (the error of an identical request in flight, sent by another thread or task of this "
        "process: this call sent nothing)"
    )
    if isinstance(copy, StructuredOutputError):
        copy.requests = 0
        if copy.response is not None:
            copy.response = copy.response.model_copy(deep=True)
    return copy


class Held:
    """The claim on a call's key, held from its first answer until the call's final outcome (``Client.send``:
    ``with exchange.Held() as held``, given to the first answer's ``begin``): released when the block ends, after
    the repaired answer is stored (``remember``), so that identical calls waiting for it get that answer and never
    send their own; when the repair failed, the first of them to claim the key sends it. Raises nothing."""

    def __init__(self) -> None:
        self._cache: ResponseCache | None = None
        self._key: str | None = None

    def take(self, cache: ResponseCache, key: str) -> None:
        """Hold the claim on ``key`` (claimed by an exchange that answered) until ``release``."""
        self.release()
        self._cache, self._key = cache, key

    def release(self, error: BaseException | None = None) -> None:
        """Release the claim; its waiters raise ``error`` too when it is ``shareable`` (the call's outcome)."""
        cache, key, self._cache, self._key = self._cache, self._key, None, None
        if cache is not None and key is not None:
            cache.release(key, shareable(error))

    def __enter__(self) -> Held:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self.release(exc)


class Exchange:
    def __init__(
        self,
        client: ClientEndpoint,
        call: Call,
        *,
        stream: bool = False,
        keep: Callable[[Response], bool] | None = None,
        held: Held | None = None,
    ) -> None:
        ensure_sendable(call)  # every send of a Client goes through here, whatever its backend
        # a local model costs no tokens: a local backend's, or one its server says is local (Client.served_model)
        self.local = bool(getattr(client, "is_local", False)) or call.model.local_family
        self.protocol: str = logged_protocol(client.protocol, local=self.local)
        self.model = call.request.model
        self.request_id = call.request_id  # a server's own id for the request (qwenvl serve), else the service's
        self.region: str | None = getattr(client, "region", None)
        self.started = time.monotonic()
        self.finished = False
        self.response: Response | None = None
        self.cache: ResponseCache | None = None if stream else getattr(client, "cache", None)
        self.log: UsageLog | None = getattr(client, "usage_log", None)
        self.keep = keep
        self.key: str | None = None
        self.claimed = False  # this exchange claimed its key: it must release it (``release``)
        self.held = held  # who holds the claim once answered (``Held``), else released then
        # a structured call's waiters wait for its repair too (two requests)
        self._bound = wait_bound(call.request) * (2 if keep is not None and call.request.repair else 1)
        if self.cache is not None:
            self.key = key_for(client, call)

    # --- the cache, and identical requests in flight ---------------------------------------------------------
    def _hit(self) -> Response | None:
        """The cached answer, if any that passes ``keep`` (logged ``cached``)."""
        assert self.cache is not None and self.key is not None
        hit = self.cache.get(self.key)
        if hit is None or (self.keep is not None and not self.keep(hit.model_copy(deep=True))):
            return None
        self.response = hit
        hit._local = self.local
        hit.protocol = self._answer_protocol(hit)
        self._log(hit, "cached")
        return hit

    def _look(self) -> Future[BaseException | None] | None:
        """A hit (in ``response``), or the key claimed (None returned): the caller sends; else the future of the
        identical request in flight to wait for."""
        assert self.cache is not None and self.key is not None
        if self._hit() is not None:
            return None
        waiting = self.cache.claim(self.key)
        if waiting is None:
            self.claimed, self.started = True, time.monotonic()  # its latency: from now, not from the wait
            if self._hit() is not None:  # answered between the look and the claim
                self.release()
        return waiting

    def _waited_too_long(self) -> APITimeoutError:
        error = APITimeoutError(
            f"gave up after waiting {self._bound:g} s (this call's time-out and retries) for the identical request in "
            "flight from another thread or task of this process, which has not answered yet: this call sent nothing",
            hint="Raise the time-out (--timeout), or retry later (the request in flight may answer meanwhile).",
        )
        error.shared = True
        return error

    @staticmethod
    def _told(error: BaseException | None) -> None:
        """Raise the error the identical request in flight failed with (``shared_copy``), if it did."""
        if isinstance(error, QwenVLError):
            raise shared_copy(error) from None

    def lookup(self) -> None:
        """Look in the cache; when the same request is in flight, wait for it (at most ``wait_bound``), then
        look again. Raises the error the request in flight failed with (``shared_copy``), APITimeoutError
        (``shared``) when the wait runs out (nothing was sent)."""
        if self.cache is None:
            return
        deadline = time.monotonic() + self._bound
        while (waiting := self._look()) is not None:
            try:
                error = waiting.result(max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                raise self._waited_too_long() from None
            self._told(error)

    async def alookup(self) -> None:
        """``lookup`` for a coroutine: the wait does not block the event loop."""
        if self.cache is None:
            return
        deadline = time.monotonic() + self._bound
        while (waiting := self._look()) is not None:
            try:  # shielded: a waiter cancelled never cancels the future other waiters share
                async with asyncio.timeout(
                    max(0.0, deadline - time.monotonic())
                ):  # not wait_for (3.11 drops a racing cancel)
                    error = await asyncio.shield(asyncio.wrap_future(waiting))
            except TimeoutError:
                raise self._waited_too_long() from None
            self._told(error)

    def release(self, error: BaseException | None = None) -> None:
        """Release the key this exchange claimed: its waiters wake and look again, or raise ``error`` too when it
        is ``shareable``. Raises nothing."""
        if self.claimed and self.cache is not None and self.key is not None:
            self.claimed = False
            self.cache.release(self.key, shareable(error))

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- sending -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def sending(self, cut: Callable[[BaseException], BaseException | None] | None = None) -> Iterator[None]:
        """Around the backend call (or the reading of its stream): a failure is logged as its type, an interrupt
        (KeyboardInterrupt, a cancelled task, a stream closed early) as ``cancelled``, each attempt the transport
        retries as its error's type (``retried``); a request still in flight at exit as ``cancelled``. The one
        home of these rows. Re-raises what it caught; ``cut(exc)`` may give the error to raise instead for a
        request its client cut (``close()`` under it: logged ``cancelled``)."""

        def retried(notice: RetryNotice) -> None:  # told by whichever transport retries (qwenvl.retry.tell)
            if cut is None or cut(notice.error) is None:  # one the close cut: logged once, as cancelled
                self.attempt_failed(notice.error)

        with _open_lock:
            _open.add(self)
        try:
            with listening(retried):
                yield
        except BaseException as exc:
            replaced = cut(exc) if cut is not None else None
            if replaced is not None:
                self.failed(outcome=CANCELLED)
                raise replaced from exc
            self.failed(exc)
            raise
        finally:
            with _open_lock:
                _open.discard(self)

    def done(self, response: Response) -> Response:
        """Log the answer ``ok``; cache it when it is whole and passes ``keep``; release the key (or hand it to
        ``held``, which releases it when the call's final outcome is known). Returns it."""
        try:
            if (
                self.cache is not None
                and self.key is not None
                and storable(response)
                and (self.keep is None or self.keep(response.model_copy(deep=True)))
            ):
                self.cache.put(self.key, response)
            self.response = response
            response._local = response._local or self.local  # no price, whatever the protocol (Response.local)
            response.protocol = self._answer_protocol(response)
            self._log(response, "ok")
            return response
        finally:
            if self.held is not None and self.claimed and self.cache is not None and self.key is not None:
                self.claimed = False
                self.held.take(self.cache, self.key)
            self.release()

    def _answer_protocol(self, response: Response) -> str | None:
        """The protocol ``response`` is priced by: its own, or the logged one (``models.logged_protocol``) when a
        paid model answered over a protocol that is not paid (the openai backend at a ``qwenvl serve`` forwarding
        to DashScope), so that every place that asks ``models.answer_paid`` prices it. Raises nothing."""
        return self.protocol if not self.local and not is_paid(response.protocol) else response.protocol

    def attempt_failed(self, exc: BaseException) -> None:
        """Log one failed attempt that is retried (the exchange goes on; its next attempt is timed afresh)."""
        self._record(exc, None)
        self.started = time.monotonic()

    def failed(self, exc: BaseException | None = None, *, outcome: str | None = None) -> None:
        """Log a call that gave no response: ``outcome``, else the error ``exc``'s type (an interrupt, i.e. a
        BaseException that is not an Exception: ``cancelled``). Once per exchange; releases the key (its waiters
        raise ``exc`` too when it is ``shareable``)."""
        self.release(exc)
        if self.finished:
            return
        self.finished = True
        self._record(exc, outcome)

    def _record(self, exc: BaseException | None, outcome: str | None) -> None:
        if self.log is None:
            return
        if outcome is None:
            outcome = type(exc).__name__ if isinstance(exc, Exception) else CANCELLED
        # what the attempt cost: unknown (None) when it may have been billed, 0.0 when it was not; a local model's
        # none (no money)
        maybe = may_be_billed(exc)  # the one rule, kept in the row: `qwenvl usage` reads it, never re-derives it
        cost = None if self.local or maybe else 0.0
        self.log.record(
            Entry(
                model=self.model,
                protocol=self.protocol,
                outcome=outcome,
                cost=cost,
                currency=None if self.local else currency_of(self.region),
                latency_s=time.monotonic() - self.started,
                request_id=self.request_id or getattr(exc, "request_id", None),
                status=getattr(exc, "status", None) or None,
                code=getattr(exc, "code", None),
                maybe_billed=maybe,
            )
        )

    def _log(self, response: Response, outcome: str) -> None:
        if self.finished:  # already logged (cancelled at exit, then answered): one row per request
            return
        self.finished = True
        if self.log is None:
            return
        u = response.usage
        # a local model's answer has no price (None, no currency: models.LOCAL), cached or not; a cached one from
        # DashScope was not paid (0.0)
        cost = (
            0.0
            if outcome == "cached" and not self.local
            else answer_cost(response, region=self.region, model=self.model, local=self.local)
        )
        self.log.record(
            Entry(
                model=self.model,
                protocol=self.protocol,
                outcome=outcome,
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                image_tokens=u.image_tokens,
                cost=cost,
                currency=currency_of(self.region) if cost is not None else None,
                latency_s=time.monotonic() - self.started,
                request_id=self.request_id or response.request_id,
            )
        )


def may_be_billed(exc: BaseException | None) -> bool:
    """Whether an attempt that gave no answer may still have been billed (DashScope bills the requests it
    answers successfully: /work/shared/reference/dashscope-api.md): one its caller stopped (``exc`` None or an
    interrupt) or that failed after it was delivered (a time-out waiting for the reply, a stream or body that broke
    off, an answer that could not be read) may have been; one refused with an HTTP status (4xx, 5xx) or never
    delivered (``APIConnectionError.delivered`` False: a connection never made) was not. Raises nothing."""
    if exc is None or not isinstance(exc, Exception):
        return True
    if isinstance(exc, APIStatusError):
        return False
    if isinstance(exc, APIConnectionError):
        return exc.delivered
    return isinstance(exc, APIError)  # StreamInterruptedError, MalformedResponseError; not a usage or media error


def begin(
    client: ClientEndpoint,
    call: Call,
    *,
    stream: bool = False,
    keep: Callable[[Response], bool] | None = None,
    held: Held | None = None,
) -> Exchange:
    """The exchange of one call, looked up in the cache (waiting for an identical request in flight: see
    ``Exchange.lookup``); ``held`` keeps its key claimed once answered (``Held``). Raises UsageError (an
    ``estimate_only`` call), APITimeoutError (that wait ran out)."""
    ex = Exchange(client, call, stream=stream, keep=keep, held=held)
    ex.lookup()
    return ex


async def abegin(
    client: ClientEndpoint,
    call: Call,
    *,
    stream: bool = False,
    keep: Callable[[Response], bool] | None = None,
    held: Held | None = None,
) -> Exchange:
    """``begin`` for a coroutine (the wait for a request in flight does not block the loop)."""
    ex = Exchange(client, call, stream=stream, keep=keep, held=held)
    await ex.alookup()
    return ex


def remember(client: ClientEndpoint, call: Call, response: Response) -> None:
    """Cache ``response``, the repaired answer to ``call`` (its first answer failed its check and was not
    cached), under ``call``'s own key: the same call is then answered from the cache, not sent and repaired
    again. ``response.messages`` without ``call.history`` (as a backend's answer is stored). Raises nothing."""
    cache: ResponseCache | None = getattr(client, "cache", None)
    if cache is None or call.request.stream or not storable(response):
        return
    raw = response.model_copy(update={"messages": response.messages[len(call.history) :]})
    cache.put(key_for(client, call), raw)


def _at_exit() -> None:
    """Requests still in flight when the process exits (a worker thread given up, a daemon thread): logged as
    ``cancelled``, before the usage log's rows are committed (``qwenvl.store.db``'s exit hook runs after this
    one: it was registered first)."""
    with _open_lock:
        left = list(_open)
    for ex in left:
        with contextlib.suppress(Exception):
            ex.failed(outcome=CANCELLED)


atexit.register(_at_exit)
