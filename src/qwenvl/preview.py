"""A dry run: the request that would be sent (key redacted, inline data shortened) with token and cost
estimates. Needs no key and sends nothing."""

from __future__ import annotations

from typing import Any

from qwenvl.config import resolve_base_url
from qwenvl.models import currency_of, estimate_cost, price_for
from qwenvl.plan import Call, estimate_text_tokens
from qwenvl.protocols import get

SHORTEN_OVER = 80  # data: URLs longer than this are shown as their head and length


def shorten(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("data:") and len(value) > SHORTEN_OVER:
        head = value[:48]
        return f"{head}…({len(value):,} chars)"
    if isinstance(value, list):
        return [shorten(v) for v in value]
    if isinstance(value, dict):
        return {k: shorten(v) for k, v in value.items()}
    return value


def preview(
    call: Call,
    *,
    protocol: str,
    base_url: str | None = None,
    region: str | None = None,
    stream: bool = False,
    backend: Any = None,
    paid: bool = False,
) -> dict[str, Any]:
    """``backend``: a local backend with ``preview_body(call, stream) -> (url, body)`` (openai, transformers); its
    model has no price, so the estimate's ``cost_input``, ``cost_max`` and ``currency`` are None and ``local``
    True, as for a model its server says is local (``ModelInfo.local_family``: ``Client.served_model``), unless
    ``paid``: the backend's server says the model is paid for (``Client.serves_paid``: a ``qwenvl serve``
    forwarding to DashScope), priced then as DashScope's."""
    stream = stream or call.model.stream_only  # what the backend will send (see DashScopeBackend.complete)
    local = (backend is not None and not paid) or call.model.local_family
    headers = {"Authorization": "Bearer ***", "Content-Type": "application/json"}
    if backend is not None and hasattr(backend, "preview_body"):
        url, body = backend.preview_body(call, stream)
        headers = {"Content-Type": "application/json"}
    else:
        proto = get(protocol)
        base = resolve_base_url(protocol, base_url=call.request.base_url or base_url, region=region)  # type: ignore[arg-type]
        headers.update(proto.headers(call, stream=stream))
        url, body = base + proto.endpoint, proto.build_body(call, stream=stream)
    media_tokens = [item.tokens for item in call.media]
    known_media = sum(t for t in media_tokens if t is not None)
    media_exact = all(item.tokens is not None and item.tokens_exact for item in call.media)  # a whole video: about
    text_tokens = estimate_text_tokens(call)
    input_tokens = known_media + text_tokens
    max_out = call.request.max_tokens
    items = []
    for item in call.media:
        items.append(
            {
                "source": item.document if item.document is not None else item.source,
                **({"page": item.page} if item.page is not None else {}),
                "kind": item.kind,
                "sent": shorten(item.sent) if isinstance(item.sent, str) else f"{len(item.sent)} frames",
                "bytes_sent": item.bytes_sent,
                "width": item.width,
                "height": item.height,
                "tokens": item.tokens,
                "notes": item.notes,
            }
        )
    return {
        "url": url,
        "method": "POST",
        "headers": headers,
        "body": shorten(body),
        "media": items,
        "estimate": {
            "model": call.model.name,
            "input_tokens": input_tokens,
            # exact only when every part is: the media's counts are (billing rules), the text's never is (approx)
            "input_tokens_exact": media_exact and not text_tokens,
            "media_tokens_exact": media_exact,
            "media_tokens": known_media,
            "text_tokens_approx": text_tokens,
            "max_output_tokens": max_out,
            # a local model (a backend given) has no price: costs and currency None, "local" True (models.LOCAL)
            "cost_input": None if local else estimate_cost(call.model, input_tokens, 0, region=region),
            "cost_max": None if local else estimate_cost(call.model, input_tokens, max_out, region=region),
            "currency": None if local else currency_of(region),
            "local": local,
            "price_tier": None
            if local
            else tier.tier_label
            if (tier := price_for(call.model, input_tokens, region=region))
            else None,
        },
    }
