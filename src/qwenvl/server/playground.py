"""The web playground's page (``/``) and the few JSON endpoints it needs beyond the DashScope API.

    GET  /                         the page (static/index.html, app.js, app.css: no CDN, no build step)
    POST /qwenvl/v1/estimate       {model, images: [ref], video?, detail?, vl_high_resolution_images?, each_page?}
                                   -> per item the size it will be sent at, tokens, cost; the total
                                   (each_page: one PDF as OCR and Find send it, one request per page)
    POST /qwenvl/v1/ground         {model, image, query, points?, page?, ...answer settings}
                                   -> boxes/points in original pixels
    POST /qwenvl/v1/ocr            {model, image, format?, page?, ...answer settings} -> one image's or one PDF
                                   page's text {page, page_count, next, text, marked, lines, warnings, usage, ...}
    POST /qwenvl/v1/extract        {model, image, schema, ...answer settings} -> {json, text, finish_reason, ...}

Every task endpoint takes the image settings (``detail``, ``vl_high_resolution_images``) and the answer's settings
a chat-completions body takes at its top level (``max_tokens``, ``temperature``, ``enable_thinking``, ...:
``qwenvl.types.GENERATION_FIELDS``), checked by the same rules (``Request``'s, then the model's and the task's
when the request is planned: a model's output limit, thinking on a model without it, thinking for Extract's JSON);
a setting left out is the task's default (``max_tokens``: the task's roomy one), never silently dropped.

Answers (ask) go through the compatible-mode endpoint like any client's. The task endpoints use the
library's tasks (the same prompts and parsing as ``qwenvl ground``, ``ocr`` and ``extract``); media
references follow the server's rules (no local paths, private URLs refused).

A PDF is read as ``qwenvl ocr`` reads it: one request per page. ``/ocr`` reads one page (``page``, 1-based; default
the first) and says which to read next (``next``: null after the last), so the page asks for each page in turn:
it shows every page as it is read, keeps the pages read when one fails, its Stop ends the reading after the
page under way (nothing is cut while paid for), and its Continue reads on from the page it stopped at (no page read,
nor paid, twice). ``marked`` is the page as the whole reading's text holds it
(``OCRResult.page_text``: a form feed after each page's text, ``<!-- page N -->`` before each page in Markdown),
so the pages' ``marked`` joined are what ``qwenvl ocr`` writes. ``/ground`` on a PDF reads one page too, as
``qwenvl ground --page N`` does (default the first), with the rendered page as ``picture`` to draw the boxes on.
Extract, and an answer (ask), send a PDF whole (every page in one request), as ``qwenvl extract`` and
``qwenvl ask`` do.
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
from pydantic import ValidationError

from qwenvl.errors import MediaError, UsageError
from qwenvl.interfaces import SupportsAsyncComplete
from qwenvl.models import cost_fields, currency_of, media_costs, spent_fields
from qwenvl.notes import answer_notes
from qwenvl.plan import Call
from qwenvl.protocols.inbound import json_type, wire_errors
from qwenvl.types import GENERATION_FIELDS, Request
from qwenvl.wording import api_surface, fit_message

STATIC = Path(__file__).parent / "static"

Work = Callable[[dict[str, Any]], Awaitable[JSONResponse]]  # a JSON body -> the answer, or raises
# auth and the JSON body, then the work while the client is connected; its errors in the compat shape
Run = Callable[[HTTPRequest, Work], Awaitable[Any]]
Resolve = Callable[[str, str], Awaitable[str]]  # a media reference under the server's rules
# a field's kind in JSON's words
_TAKES = {str: "a string", dict: "an object", bool: "true or false", list: "a list", int: "a whole number"}


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

    def settings(body: dict[str, Any]) -> dict[str, Any]:
        """``options(body)`` and the answer's settings ``body`` gives (``GENERATION_FIELDS``: ``max_tokens``,
        ``temperature``, ``enable_thinking``...; null or absent: left out, the task's or the model's default), each
        checked as the chat-completions endpoint checks it (``Request``'s rules, the error naming the field:
        ``max_tokens should be greater than or equal to 1``). Raises UsageError."""
        given = {name: body[name] for name in GENERATION_FIELDS if body.get(name) is not None}
        try:
            Request(prompt="the task's", **given)  # a prompt as the task has one: the settings' rules alone are asked
        except ValidationError as exc:
            raise UsageError(wire_errors(exc, "")) from None
        return {**options(body), **given}

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
        each_page = bool(field(body, "each_page", bool, required=False))
        if each_page and (video is not None or len(images) != 1):
            raise UsageError("each_page estimates one PDF (or one image): give images with one reference, no video")
        if each_page:  # one request per page, as OCR and Find read a PDF (``plan_pages``): each fits on its own
            from qwenvl.tasks.ocr import plan_pages

            def pages() -> list[Call]:
                return [c for _, c in plan_pages(client, images[0], estimate_only=True, **opts)]

            calls = await asyncio.to_thread(pages)
        else:
            calls = [
                await asyncio.to_thread(
                    client.plan, prompt="estimate", images=images, video=video, estimate_only=True, **opts
                )
            ]
        call = calls[0]
        media = [m for c in calls for m in c.media]
        known = [m.tokens for m in media if m.tokens is not None]
        total = sum(known)
        costs: list[float | None] = []
        total_cost: float | None = 0.0
        for c in calls:  # each request's media at that request's tier
            _, some, cost = media_costs(c.model, [m.tokens for m in c.media], region=client.region)
            costs += some
            total_cost = None if total_cost is None or cost is None else total_cost + cost
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
            for m, cost in zip(media, costs, strict=True)
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

    async def pdf_page(image: str, body: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
        """``(page, page_count, next)`` of a request that reads one page of ``image``: the 1-based ``page`` asked
        (default 1), the PDF's page count and the page after it (None after the last); ``(None, None, None)`` for
        an image. Raises UsageError (``page`` not a whole number of 1 or more, or given for an image), MediaError
        (a page the PDF does not have, an unreadable PDF), as ``pdf_pages``."""
        from qwenvl.media.sources import media_kind
        from qwenvl.tasks.ocr import pdf_pages

        page = field(body, "page", int, required=False)
        if page is not None and page < 1:
            raise UsageError(f"page must be 1 or more, not {page}", hint="Pages are numbered from 1.")
        if media_kind(image) != "pdf":
            if page is not None:
                raise UsageError("page applies to a PDF only", hint="Leave out page for an image.")
            return None, None, None
        count = len(await asyncio.to_thread(pdf_pages, image, None))
        number = page or 1
        if number > count:
            raise MediaError(
                f"the PDF has {count} page{'s' if count != 1 else ''}; page {number} is out of range",
                hint=f"Choose pages from 1 to {count}.",
            )
        return number, count, number + 1 if number < count else None

    async def ground(body: dict[str, Any]) -> JSONResponse:
        from qwenvl.tasks.grounding import plan_ground, planned_picture, read_grounding

        opts = settings(body)
        image = await resolve(field(body, "image"), opts.get("model", ""))
        query = field(body, "query")
        page, count, after = await pdf_page(image, body)
        if page is not None:
            opts["pages"] = str(page)  # one page, as ``qwenvl ground --page N`` reads
        call = await asyncio.to_thread(
            plan_ground, client, image, query, points=bool(field(body, "points", bool, False)), **opts
        )
        response = await client.send(call)
        result = read_grounding(call, response)
        out = result.to_json()
        out.update(image=None, text=response.text, **spent_fields([response], region=client.region))
        # a PDF page: the page as rendered and sent, which the boxes' pixels refer to, to draw them on
        out.update(page=page, page_count=count, next=after, picture=planned_picture(call) if page else None)
        out["warnings"] = in_api_words(result.warnings)
        out["model"] = field(body, "model")  # the name the client knows, never a server path
        return JSONResponse(out)

    async def ocr(body: dict[str, Any]) -> JSONResponse:
        from qwenvl.tasks.ocr import FORMATS, Format, OCRResult, plan_pages, read_page

        opts = settings(body)
        fmt: Format = field(body, "format", required=False) or "text"
        if fmt not in FORMATS:
            raise UsageError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        image = await resolve(field(body, "image"), opts.get("model", ""))
        page, count, after = await pdf_page(image, body)
        plans = plan_pages(client, image, format=fmt, pages=page, **opts)  # checked and planned as ``ocr`` does
        number, call = await asyncio.to_thread(next, plans)
        response = await client.send(call)
        read = read_page(call, response, format=fmt, page=number)
        reading = OCRResult(source=None, format=fmt)
        out = read.model_dump()
        out.update(
            page_count=count,
            next=after,
            marked=reading.page_text(read),  # as ``qwenvl ocr`` writes the page: with its page break or marker
            warnings=in_api_words(read.warnings),
            model=field(body, "model"),
            **spent_fields([response], region=client.region),
        )
        return JSONResponse(out)

    async def extract(body: dict[str, Any]) -> JSONResponse:
        from qwenvl.tasks.extract import plan_extract

        opts = settings(body)
        image = await resolve(field(body, "image"), opts.get("model", ""))
        schema = field(body, "schema", dict)
        call = await asyncio.to_thread(plan_extract, client, image, schema, **opts)
        response = await client.send(call)
        return JSONResponse(
            {
                "json": response.json,
                "text": response.text,
                "finish_reason": response.finish_reason,  # "length": cut off at max_tokens
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
