"""The web playground's page (``/``) and the few JSON endpoints it needs beyond the DashScope API.

    GET  /                         the page (static/index.html, app.js, app.css: no CDN, no build step)
    POST /qwenvl/v1/estimate       {model, images: [ref], video?, detail?, vl_high_resolution_images?}
                                   -> per item the size it will be sent at, tokens, cost; the total
    POST /qwenvl/v1/ground         {model, image, query, points?} -> boxes/points in original pixels
    POST /qwenvl/v1/ocr            {model?, image} -> {text}
    POST /qwenvl/v1/extract        {model, image, schema} -> {json, text}

Answers (ask) go through the compatible-mode endpoint like any client's. The task endpoints use the
library's tasks (the same prompts and parsing as ``qwenvl ground``, ``ocr`` and ``extract``); media
references follow the server's rules (no local paths, private URLs refused).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from qwenvl.errors import UsageError
from qwenvl.interfaces import SupportsAsyncComplete
from qwenvl.models import cost_fields, currency_of, media_costs
from qwenvl.notes import answer_notes
from qwenvl.protocols.inbound import json_type
from qwenvl.wording import api_surface, fit_message

STATIC = Path(__file__).parent / "static"

Work = Callable[[dict[str, Any]], Awaitable[JSONResponse]]  # a JSON body -> the answer, or raises
# auth and the JSON body, then the work while the client is connected; its errors in the compat shape
Run = Callable[[HTTPRequest, Work], Awaitable[Any]]
Resolve = Callable[[str, str], Awaitable[str]]  # a media reference under the server's rules
_TAKES = {str: "a string", dict: "an object", bool: "true or false", list: "a list"}  # a field's kind in JSON's words


def add_routes(
    app: FastAPI,
    client: SupportsAsyncComplete,
    *,
    run: Run,
    resolve: Resolve,
    model_for: Callable[[str], str | None],
) -> None:
    if (STATIC / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        async def page() -> FileResponse:
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

        app.add_api_route("/", page, methods=["GET"], include_in_schema=False)

    def field(body: dict[str, Any], name: str, kind: type = str, required: bool = True) -> Any:
        """``body[name]`` when it is a ``kind`` (a bool only for ``bool``; a string not blank); else UsageError
        naming the field and what it takes in JSON's words (``schema must be an object, not a string``)."""
        value = body.get(name)
        if value is None and not required:
            return None
        wrong = isinstance(value, bool) != (kind is bool) or not isinstance(value, kind)
        if wrong or (isinstance(value, str) and not value.strip()):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise UsageError(f"{name} is required")
            raise UsageError(f"{name} must be {_TAKES[kind]}, not {json_type(value)}")
        return value

    def options(body: dict[str, Any]) -> dict[str, Any]:
        target = model_for(field(body, "model"))  # None: a local backend's own model
        out: dict[str, Any] = {"model": target} if target else {}
        if body.get("detail") in ("auto", "low", "high"):
            out["detail"] = body["detail"]
        high = field(body, "vl_high_resolution_images", bool, required=False)
        if high is not None:
            out["vl_high_resolution_images"] = high
        return out

    async def estimate(body: dict[str, Any]) -> JSONResponse:
        opts = options(body)
        refs = body.get("images") or []
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise UsageError("images must be a list of data: URLs or https:// URLs")
        images = [await resolve(r, opts.get("model", "")) for r in refs]
        video = body.get("video")
        if isinstance(video, str):
            video = await resolve(video, opts.get("model", ""))
        elif isinstance(video, list):
            video = [await resolve(v, opts.get("model", "")) for v in video]
        call = await asyncio.to_thread(
            client.plan, prompt="estimate", images=images, video=video, estimate_only=True, **opts
        )
        known = [m.tokens for m in call.media if m.tokens is not None]
        total = sum(known)
        _, costs, total_cost = media_costs(call.model, [m.tokens for m in call.media], region=client.region)
        local = bool(getattr(client, "is_local", False))  # a local model has no price (qwenvl.models.LOCAL)
        if local:
            costs, total_cost = [None] * len(costs), None
        items = [
            {
                "kind": m.kind,
                "width": m.width,
                "height": m.height,
                "frames": len(m.sent) if isinstance(m.sent, list) else None,
                "tokens": m.tokens,
                "cost": cost,
                "notes": in_api_words(m.notes),
            }
            for m, cost in zip(call.media, costs, strict=True)
        ]
        return JSONResponse(
            {
                "model": field(body, "model"),  # the name the client knows (``/v1/models``), never a server path
                "factor": call.model.factor,
                "items": items,
                "total_tokens": total,
                "unknown": len(items) - len(known),
                **cost_fields(total_cost, currency_of(client.region), local=local),
            }
        )

    async def ground(body: dict[str, Any]) -> JSONResponse:
        from qwenvl.tasks.grounding import plan_ground, read_grounding

        opts = options(body)
        image = await resolve(field(body, "image"), opts.get("model", ""))
        call = await asyncio.to_thread(
            plan_ground, client, image, field(body, "query"), points=bool(field(body, "points", bool, False)), **opts
        )
        response = await client.send(call)
        result = read_grounding(call, response)
        out = result.to_json()
        out.update(image=None, text=response.text, usage=response.usage.model_dump(exclude={"raw"}))
        out["warnings"] = in_api_words(result.warnings)
        out["model"] = field(body, "model")  # the name the client knows, never a server path
        return JSONResponse(out)

    async def ocr(body: dict[str, Any]) -> JSONResponse:
        from qwenvl.tasks.ocr import clean_text, plan_ocr

        opts = options(body)
        image = await resolve(field(body, "image"), opts.get("model", ""))
        call = await asyncio.to_thread(plan_ocr, client, image, **opts)
        response = await client.send(call)
        return JSONResponse(
            {
                "text": clean_text(response.text),
                "usage": response.usage.model_dump(exclude={"raw"}),
                "warnings": in_api_words(answer_notes(response, call.request.max_tokens, items_shown=True)),
            }
        )

    async def extract(body: dict[str, Any]) -> JSONResponse:
        from qwenvl.tasks.extract import plan_extract

        opts = options(body)
        image = await resolve(field(body, "image"), opts.get("model", ""))
        schema = field(body, "schema", dict)
        call = await asyncio.to_thread(plan_extract, client, image, schema, **opts)
        response = await client.send(call)
        return JSONResponse(
            {
                "json": response.json,
                "text": response.text,
                "usage": response.usage.model_dump(exclude={"raw"}),
                "warnings": in_api_words(answer_notes(response, call.request.max_tokens, items_shown=True)),
            }
        )

    def in_api_words(notes: list[str]) -> list[str]:
        """The library's notes (written for the CLI: ``raise --max-tokens``) in the words of a request's fields
        (``wording.api_surface``), as every answer of this server is; one note a sentence each."""
        surface = api_surface("compat")
        return [fit_message(note, surface) for note in notes]

    def route(work: Work) -> Callable[[HTTPRequest], Awaitable[Any]]:
        async def answer(request: HTTPRequest) -> Any:
            return await run(request, work)

        return answer

    for path, work in (("estimate", estimate), ("ground", ground), ("ocr", ocr), ("extract", extract)):
        app.add_api_route(f"/qwenvl/v1/{path}", route(work), methods=["POST"])
