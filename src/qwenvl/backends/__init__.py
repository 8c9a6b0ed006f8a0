"""Backends: where a planned Call is answered (DashScope, an OpenAI-compatible server, a local model)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

from qwenvl.errors import UsageError

if TYPE_CHECKING:
    import httpx

    from qwenvl.backends.base import AsyncBackend, Backend
    from qwenvl.retry import RetryHook


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
