"""Backends: where a planned Call is answered (DashScope, an OpenAI-compatible server, a local model)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

from qwenvl.errors import UsageError

if TYPE_CHECKING:
    import httpx

    from qwenvl.backends.base import AsyncBackend, Backend
    from qwenvl.models import ModelInfo
    from qwenvl.retry import RetryHook
    from qwenvl.types import Request


@overload
def make_backend(
    name: str,
    *,
    asynchronous: Literal[False] = False,
    http_client: httpx.Client | None = None,
    on_retry: RetryHook | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    engine: str | None = None,
    family: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    attn_implementation: str | None = None,
) -> Backend: ...


@overload
def make_backend(
    name: str,
    *,
    asynchronous: Literal[True],
    http_client: httpx.AsyncClient | None = None,
    on_retry: RetryHook | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    engine: str | None = None,
    family: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    attn_implementation: str | None = None,
) -> AsyncBackend: ...


def make_backend(
    name: str,
    *,
    asynchronous: bool = False,
    http_client: httpx.Client | httpx.AsyncClient | None = None,
    on_retry: RetryHook | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    engine: str | None = None,
    family: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    attn_implementation: str | None = None,
) -> Backend | AsyncBackend:
    """A local backend by name (``openai`` or ``transformers``); the DashScope backend is built by the client.
    Options that do not apply to the backend raise UsageError (``qwenvl.config.check_backend_options``: a --device
    for a server, an --engine in process).
    ``on_retry``: told before each retry's wait (``qwenvl.retry.RetryNotice``), as the DashScope backend does."""
    from qwenvl.config import check_backend_options

    given = dict(
        base_url=base_url,
        engine=engine,
        family=family,
        device=device,
        dtype=dtype,
        attn_implementation=attn_implementation,
    )
    check_backend_options(name, given)  # an option this backend does not take: UsageError (qwenvl.config)
    if name == "openai":
        from qwenvl.backends.openai import AsyncOpenAIBackend, OpenAIBackend

        kw: dict[str, Any] = dict(  # an http_client of the other kind: the transport's UsageError
            base_url=base_url,
            api_key=api_key,
            engine=engine,
            family=family,
            model=model,
            on_retry=on_retry,
            http_client=http_client,
        )
        if asynchronous:
            return AsyncOpenAIBackend(**kw)
        return OpenAIBackend(**kw)
    if name == "transformers":
        from qwenvl.backends.transformers import AsyncTransformersBackend, TransformersBackend

        kw = dict(model=model, family=family, device=device, dtype=dtype, attn_implementation=attn_implementation)
        if asynchronous:
            return AsyncTransformersBackend(**kw)
        return TransformersBackend(**kw)
    from qwenvl.config import BACKENDS
    from qwenvl.spelling import meant

    raise UsageError(
        f"unknown backend {name!r}: use dashscope, openai or transformers{meant(name, BACKENDS)}",
        hint="Leave out --backend for DashScope.",
    )


if TYPE_CHECKING:  # mypy checks here that every shipped backend satisfies its interface (qwenvl.backends.base)
    from qwenvl.backends.dashscope import AsyncDashScopeBackend, DashScopeBackend
    from qwenvl.backends.openai import AsyncOpenAIBackend, OpenAIBackend
    from qwenvl.backends.transformers import AsyncTransformersBackend, TransformersBackend

    _SYNC: tuple[type[Backend], ...] = (DashScopeBackend, OpenAIBackend, TransformersBackend)
    _ASYNC: tuple[type[AsyncBackend], ...] = (AsyncDashScopeBackend, AsyncOpenAIBackend, AsyncTransformersBackend)


def preflight(backend: str, options: dict[str, Any]) -> tuple[str | None, str | None]:
    """What ``qwenvl serve`` and ``qwenvl mcp`` check before they serve (the same checks, the same exit codes):
    (the model name a local backend serves, a warning or None). The name: the engine's served name (``openai``);
    for ``transformers`` the model's ``served_name`` (a hub id as it is, a folder by its own name).

    ``transformers``: ``qwenvl.backends.transformers.check_local``: torch and transformers import, and
    ``options["model"]`` is a Qwen-VL model folder (with its weights) or a hub id whose config can be had, the
    device is there, the dtype and attention implementation are known (UsageError, exit 2: not installed, not a
    folder, no weights, not an owner/name id, not a Qwen-VL model, no CUDA, an unknown dtype; MediaError, exit 3:
    a damaged file; APIConnectionError, exit 5: a hub id neither cached nor downloadable). The weights are loaded
    by the server once it listens (``/ready`` is 503 until then; a load that fails then is each request's 503,
    never the client's fault). ``openai``: the engine is asked once which models it serves; a model it does not
    serve, or none given when it serves several, is a UsageError. An engine that does not answer is not an error
    when ``model`` is given (it may start after the server: the warning says so, and ``/ready`` is 503 until it
    answers); without ``model`` the served name cannot be known: the engine's APIConnectionError (exit 5, as for
    every verb: an engine that is down), with a hint to start it or give ``--model``. ``dashscope`` (None, None):
    its model (``options["model"]``, else ``$QWENVL_MODEL``) is checked as every request checks it
    (``plan.check_model_name``: a misspelling of a listed name, did you mean ...?, or a name of no Qwen-VL family is
    a UsageError, exit 2, at start rather than each request's 400), unless the server at ``options["base_url"]``
    lists it as its own (a ``qwenvl serve`` in front of a local model).
    ``options``: ``make_backend``'s keywords (``Client.local_options()`` of the client that
    will serve: the same backend, model and endpoint); a model left out is ``$QWENVL_MODEL``'s, as a client's."""
    from qwenvl import env as qenv
    from qwenvl.errors import APIConnectionError, APITimeoutError
    from qwenvl.types import Request

    if backend == "dashscope":
        _check_dashscope_model(options)
        return None, None
    if backend == "transformers":
        from qwenvl.backends.transformers import check_local

        check_local(  # what can be checked without loading: the model, its weights, device, dtype, attention
            options.get("model") or "",
            device=options.get("device") or "auto",
            dtype=options.get("dtype") or "auto",
            attn_implementation=options.get("attn_implementation"),
        )
    options = {k: v for k, v in options.items() if v is not None}
    model = options.get("model") or qenv.model()
    made = make_backend(backend, **options)
    try:
        fields: dict[str, Any] = {"model": model} if model else {}
        name = local_model(made, Request(prompt="?", max_retries=0, **fields)).name
        if backend == "transformers":
            from qwenvl.backends.transformers import served_name

            name = served_name(name)
        return name, None
    except (APIConnectionError, APITimeoutError) as exc:
        if backend != "openai":
            raise
        url = getattr(made, "base_url", None) or options.get("base_url")
        if not model:
            raise type(exc)(
                f"the engine at {url} does not answer, so the model it serves is unknown: {exc}",
                hint="Start the engine first, or give its served name with --model.",
            ) from None
        return model, f"the engine at {url} does not answer yet ({exc}); /ready is 503 until it does"
    finally:
        made.close()


def _check_dashscope_model(options: dict[str, Any]) -> None:
    """``preflight``'s check of a DashScope client's model (see there). Raises UsageError."""
    from qwenvl import env as qenv
    from qwenvl.backends.dashscope import served_models
    from qwenvl.config import effective_protocol
    from qwenvl.models import listed_name
    from qwenvl.plan import check_model_name

    model = options.get("model") or qenv.model()
    if not model or listed_name(model):
        return
    if model in served_models(options.get("base_url"), options.get("api_key"), region=options.get("region")):
        return  # the server's own name (``Client.served_name``'s rule)
    check_model_name(model, effective_protocol(options.get("protocol")))


def local_model(backend: object, request: Request) -> ModelInfo:
    """The rules of the model ``request`` would use on ``backend`` (a local one): the backend's ``adapt`` first (the
    model a server serves when none is named), then its ``model_info`` (else the table's, ``qwenvl.models``). The one
    answer of ``Client.resolve_model`` and ``preflight``. Raises what those hooks raise (APIError: the server cannot be
    asked; UsageError: a model it does not serve, or none named when it serves several)."""
    from qwenvl.models import model_info

    adapt = getattr(backend, "adapt", None)
    if adapt is not None:
        request = adapt(request)
    info = getattr(backend, "model_info", None)
    return info(request.model) if info is not None else model_info(request.model)
