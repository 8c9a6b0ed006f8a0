"""OCR: the text of an image or a PDF, as plain text, Markdown, or lines with their boxes.

    r = qwenvl.tasks.ocr(client, "receipt.jpg")                              # r.text
    r = qwenvl.tasks.ocr(client, "paper.pdf", format="markdown", pages="1-2")  # one request per page
    r = qwenvl.tasks.ocr(client, "form.png", format="json")                  # r.pages[0].lines[i].x1 ...
    r = qwenvl.tasks.ocr(client, "table.png", model="qwen-vl-ocr-latest", task="table_parsing")

Decisions:

* The default model is the client's (qwen3-vl-plus unless set): the general models read text well and
  can give line boxes. The qwen-vl-ocr models work the same way; ``task`` / ``ocr_options`` are passed
  through as the ``ocr_options`` parameter (which those models use: with a ``task`` they apply their own
  built-in prompt; other models ignore it).
* ``format="json"`` asks for line-level boxes in the family's grounding form and reads them with the grounding
  parser (``text_content`` is the line's text); the boxes come back in the original image's (or the rendered
  page's) pixels.
* A PDF is read one page per request (the media step renders each page to the image budget), so every page
  has its own text, boxes and warnings.
* A PDF's joined text (``OCRResult.text``, what the CLI writes) tells its pages apart as the field does: in text
  (and JSON's ``text``) each page ends with a form feed, as ``pdftotext`` ends them; in Markdown each page begins
  with an ``<!-- page N -->`` comment (unseen when rendered). Each page carries its own end or start, so a reading
  resumed with ``pages="N-"`` appended to the first gives what one reading gives. An image's text has neither.
* An empty result is not an error: ``OCRResult.empty`` is True and a warning says so (the CLI exits 0
  with a note on stderr).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from qwenvl._constants import FETCH_TIMEOUT_MAX_S
from qwenvl.errors import QwenVLError, UsageError
from qwenvl.interfaces import SupportsAsyncComplete, SupportsComplete, SupportsPlan
from qwenvl.media.sources import classify, media_kind
from qwenvl.models import DEFAULT_MODEL, ModelInfo, model_info
from qwenvl.notes import once_per_run
from qwenvl.plan import Call, check_ocr_options
from qwenvl.spelling import did_you_mean
from qwenvl.tasks.grounding import (
    async_client,
    check_task_media,
    in_thread,
    library_worded,
    model_for,
    plan_task,
    read_grounding,
    shown_ref,
    sync_client,
    task_fields,
    task_media,
)
from qwenvl.tasks.parsing import parse_answer
from qwenvl.types import Response, not_blank, page_selection

if TYPE_CHECKING:
    from qwenvl.batch.runner import Estimate, SpendCap
    from qwenvl.media.prepare import PreparedCache

Format = Literal["text", "markdown", "json"]
NO_TEXT = "no text found"
# What ends each PDF page in the text of "text" and "json" readings: a form feed, as pdftotext (poppler) ends every page
PAGE_BREAK = "\f"
FORMATS: tuple[str, ...] = ("text", "markdown", "json")
OCR_VIDEO_HINT = (
    'To read the text shown in a video, ask about it (qwenvl ask {} "Read the text shown"), or give one '
    "frame of it as an image."
)
OCR_MAX_TOKENS = 4096  # default answer budget (a dense page is long); capped by the model's own limit
# Tasks the qwen-vl-ocr models know (ocr_options.task); any other is refused (``ocr_options``).
OCR_TASKS = (
    "text_recognition",
    "key_information_extraction",
    "document_parsing",
    "table_parsing",
    "formula_recognition",
    "multi_lan",
    "advanced_recognition",
)
PROMPTS: dict[str, str] = {
    "text": (
        "Read all the text in the image, in reading order, line by line. Output only the text itself, "
        "with no commentary and no formatting."
    ),
    "markdown": (
        "Convert the image's content to Markdown in reading order: keep headings, paragraphs, lists, "
        "tables (as Markdown tables) and emphasis. Output only the Markdown, with no commentary."
    ),
}


def page_marker(number: int) -> str:
    """The line that begins PDF page ``number`` (1-based) in a Markdown reading's text: ``<!-- page 3 -->``, an HTML
    comment (a page marker as Docling's ``<!-- page break -->``, unseen when the Markdown is rendered) that names the
    page, so a selection or a resumed reading still says which page each is. Raises nothing."""
    return f"<!-- page {number} -->"


class OCRLine(BaseModel):
    """One line of text and its box, ``x1, y1`` top-left and ``x2, y2`` bottom-right, in pixels of the image (or
    rendered PDF page) the page's ``width``/``height`` give. Raises pydantic.ValidationError for a wrong type."""

    text: str
    x1: int
    y1: int
    x2: int
    y2: int


class OCRPage(BaseModel):
    """The text of one image or PDF page: ``text``, ``lines`` with boxes (``format="json"`` only), ``width`` and
    ``height`` in pixels, ``truncated`` (cut off at max_tokens) and ``warnings``. Raises pydantic.ValidationError
    when built with a wrong type."""

    page: int | None = None  # 1-based page of a PDF; None for an image
    text: str = ""
    lines: list[OCRLine] = Field(default_factory=list)  # format="json" only
    width: int | None = None  # the image (or rendered page) the boxes refer to
    height: int | None = None
    truncated: bool = False
    warnings: list[str] = Field(default_factory=list)


class OCRResult(BaseModel):
    """What ``ocr`` returns: one ``OCRPage`` per image or PDF page, the answering ``model``, the ``warnings`` of
    every page (each said once, prefixed with the pages that have it: ``by_page``), and the ``responses`` (one per
    page). ``text``: the pages' text joined (``page_text``: a PDF's pages told apart). ``stopped``: True when the
    reading failed or was interrupted, when ``send_pages`` was given this result to fill and stopped (the pages
    before it are kept); ``stopped_at``: then the PDF page (1-based) whose request failed, None for an image (whose
    page is None) and when every page was read. ``model``: the model that answered, else the model asked (set before
    a request is sent; None when nothing was planned). Raises pydantic.ValidationError when built with a wrong
    type."""

    source: str | None  # the file or URL read; None for bytes or a PIL image (``shown_ref``)
    format: str
    model: str | None = None
    pages: list[OCRPage] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)  # every page's warnings, once, prefixed with its pages
    responses: list[Response] = Field(default_factory=list, exclude=True, repr=False)
    stopped: bool = False
    stopped_at: int | None = None

    def page_text(self, page: OCRPage) -> str:
        """``page`` as ``text`` holds it. An image (``page.page`` None): its text alone. A PDF page, so that pages can
        be told apart and a reading resumed with ``pages="N-"`` appends to the first one's output what one reading
        gives: ``"text"`` and ``"json"``: the text, its last line ended, then ``PAGE_BREAK`` (a form feed, as
        ``pdftotext`` ends each page; a page without text is the form feed alone); ``"markdown"``: ``page_marker``
        (an HTML comment naming the page, unseen when rendered), a blank line, the text and a blank line. A form feed
        inside a page's text becomes a newline here (``OCRPage.text`` keeps it), so the breaks are the pages'.
        Raises nothing."""
        if page.page is None:
            return page.text
        body = page.text.replace(PAGE_BREAK, "\n")
        if self.format == "markdown":
            return f"{page_marker(page.page)}\n\n" + (f"{body}\n\n" if body else "")
        return (f"{body}\n" if body else "") + PAGE_BREAK

    @property
    def text(self) -> str:
        """Every page's text, each as ``page_text`` gives it: an image's text as read; a PDF's pages each ended by a
        form feed (``"text"``, ``"json"``: ``text.split("\\f")[:-1]`` gives the pages) or each begun by its
        ``<!-- page N -->`` line (``"markdown"``). ``pages`` holds each page's own text."""
        return "".join(self.page_text(p) for p in self.pages)

    @property
    def empty(self) -> bool:
        """True when no page has any text or line."""
        return not any(p.text.strip() or p.lines for p in self.pages)

    def to_json(self) -> dict[str, Any]:
        """``{"source", "model", "text", "pages": [...], "warnings"}`` (the CLI's JSON), and ``"stopped"`` (true)
        and ``"stopped_at"`` (the page; null for an image) when the reading stopped before the last page. Raises
        nothing."""
        out: dict[str, Any] = {
            "source": self.source,
            "model": self.model,
            "text": self.text,
            "pages": [p.model_dump() for p in self.pages],
            "warnings": self.warnings,
        }
        if self.stopped:
            out["stopped"], out["stopped_at"] = True, self.stopped_at
        return out


_FENCED = re.compile(r"^\s*```[ \t]*[\w+-]*[ \t]*\n(.*?)\n?```\s*$", re.S)


def clean_text(text: str) -> str:
    """The answer without a fence wrapped around all of it (models like ```markdown ... ```). Raises nothing."""
    match = _FENCED.match(text)
    return (match.group(1) if match else text).strip("\n")


def ocr_options(task: str | None = None, options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The qwen-vl-ocr ``ocr_options`` parameter: ``options`` with ``task`` added; None when both are empty.
    Raises UsageError for a blank ``task``, and for a task (``task``, or ``options["task"]``) that is not one of
    ``OCR_TASKS`` (the task list of the qwen-vl-ocr documentation): the models would read the page as if none
    were given while the request is paid; the hint names the closest (``spelling.did_you_mean``) and the list."""
    merged = dict(options or {})
    if task is not None:
        not_blank(task, "task")
        merged["task"] = task
    given = merged.get("task")
    if given is not None and given not in OCR_TASKS:
        near = did_you_mean(str(given), OCR_TASKS)
        raise UsageError(
            f"{given!r} is not an OCR task: nothing was sent",
            hint=f"{near + ' ' if near else ''}The tasks (--task / task): {', '.join(OCR_TASKS)}.",
        )
    return merged or None


def pdf_pages(
    ref: str,
    pages: str | None,
    *,
    fetch_urls: bool = False,
    timeout_s: float | None = None,
    cache: PreparedCache | None = None,
) -> list[int]:
    """The 1-based pages ``pages`` selects in the PDF ``ref`` (every page when None), in the order given; a PDF
    given as a URL is downloaded with ``fetch_urls`` (within ``timeout_s``, at most ``FETCH_TIMEOUT_MAX_S``), once
    per ``cache`` (a client's ``prepared``: its pages' requests then read the same download, ``prepare.fetched``).
    Raises UsageError (bad range syntax; a PDF URL without ``fetch_urls``), MediaError (a page out of range, an
    unreadable PDF, a failed download)."""
    from qwenvl.media import pdf
    from qwenvl.media.prepare import MediaOptions, pdf_content
    from qwenvl.media.sources import classify

    source = classify(ref)
    timeout = min(timeout_s or FETCH_TIMEOUT_MAX_S, FETCH_TIMEOUT_MAX_S)
    options = MediaOptions(model=model_info(DEFAULT_MODEL), fetch_urls=fetch_urls, fetch_timeout_s=timeout)
    src = pdf_content(source, options, cache)
    return pdf.parse_pages(pages, pdf.page_count(src, source.label), source.label)


def model_ocr_options(
    model: ModelInfo, task: str | None = None, options: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """``ocr_options(task, options)`` for ``model``: UsageError (exit 2, nothing sent) when a task or options are
    given to a model that does not read them (``ModelInfo.reads_ocr_options``: the qwen-vl-ocr models only), as an
    option that does not apply is refused, never sent to be ignored; else as ``ocr_options``."""
    opts = ocr_options(task, options)
    if opts is not None:
        given = " and ".join(n for n, v in (("--task / task", task), ("--ocr-options / options", options)) if v)
        check_ocr_options(model, f"{given} (the service's ocr_options)", plural=bool(task and options))
    return opts


def plan_ocr(
    client: SupportsPlan,
    source: str,
    *,
    format: Format = "text",
    task: str | None = None,
    options: dict[str, Any] | None = None,
    page: int | None = None,
    **fields: Any,
) -> Call:
    """The request for one image (or one PDF page, 1-based ``page``); nothing is sent.

    ``format``: ``"text"``, ``"markdown"`` or ``"json"`` (line boxes, asked in the family's grounding form);
    ``task``/``options`` become the qwen-vl-ocr models' ``ocr_options``; ``max_tokens`` is 4096 unless given
    (capped by the model's own limit and its context: ``plan_task``). Raises UsageError for an unknown format,
    ``task``/``options`` for a model that does not read them (``ModelInfo.reads_ocr_options``), ``ocr_options``
    both from ``task``/``options`` and in ``extra``, and what ``Client.plan`` raises (UsageError,
    SchemaDefinitionError, MediaError)."""
    if format not in FORMATS:
        raise UsageError(
            f"unknown OCR format {format!r}: use one of {', '.join(FORMATS)}",
            hint="Use --format with one of the formats listed.",
        )
    model = model_for(client, fields)
    opts = model_ocr_options(model, task, options)
    if opts is not None:
        if "ocr_options" in (fields.get("extra") or {}):  # never one of the two silently
            raise UsageError(
                "ocr_options is given twice: by task/options (--task, --ocr-options) and in extra (--param)",
                hint="Give it once: --ocr-options / options with the whole object, or --task / task alone.",
            )
        fields["extra"] = {**fields.get("extra", {}), "ocr_options": opts}
    if page is not None:
        fields["pages"] = str(page)
    if format == "json":
        from qwenvl.tasks.grounding import grounding_prompt

        prompt = grounding_prompt(model, "", "text")
    else:
        prompt = PROMPTS[format]
    return plan_task(client, model, OCR_MAX_TOKENS, **task_fields("ocr", fields, prompt=prompt, images=[source]))


def read_page(call: Call, response: Response, *, format: Format, page: int | None = None) -> OCRPage:
    """The OCRPage in an answer to ``call``: its text (a fence around all of it removed), and for
    ``format="json"`` its line boxes in original pixels (``read_grounding``). Raises nothing for an answer;
    MediaError only when the planned local image can no longer be read."""
    warnings: list[str] = []
    lines: list[OCRLine] = []
    width = height = None
    if format == "json":
        g = read_grounding(call, response)
        width, height = g.width, g.height
        lines = [OCRLine(text=b.label, x1=b.x1, y1=b.y1, x2=b.x2, y2=b.y2) for b in g.boxes]
        warnings = [w for w in g.warnings if "no label" not in w and "no boxes or points" not in w]
        unlabelled = sum(1 for b in g.boxes if not b.label)
        if unlabelled:
            warnings.append(f"{unlabelled} line box{'es have' if unlabelled != 1 else ' has'} no text (kept)")
        text = "\n".join(line.text for line in lines if line.text)
        if not lines and response.text.strip() and not parse_answer(response.text).found_structure:
            text = clean_text(response.text)
            warnings.append("the answer has no line boxes: kept its text without boxes")
        truncated = g.truncated
    else:
        text = clean_text(response.text)
        truncated = response.finish_reason == "length"
        if truncated:
            warnings.append(
                f"the answer was cut off at max_tokens ({call.request.max_tokens} tokens): the text is "
                "incomplete; raise --max-tokens"
            )
    if not text.strip() and not lines:
        warnings.append(NO_TEXT)
    return OCRPage(
        page=page, text=text, lines=lines, width=width, height=height, truncated=truncated, warnings=warnings
    )


def plan_pages(
    client: SupportsPlan,
    source: str,
    *,
    format: Format = "text",
    task: str | None = None,
    options: dict[str, Any] | None = None,
    pages: str | int | list[int | str] | None = None,
    **fields: Any,
) -> Iterator[tuple[int | None, Call]]:
    """``(page, call)`` for an image (page None) or each selected PDF page, planned one at a time.
    Raises UsageError (``pages`` for an image, bad syntax), MediaError (a page out of range, a missing file), and
    what ``plan_ocr`` raises."""
    selection = page_selection(pages)
    if selection is not None and not isinstance(selection, str):
        raise UsageError(
            f"pages is a page number, a list of them or a selection string, not {type(pages).__name__}",
            hint='For example pages=2, pages=[2, 3] or pages="1-3,5".',
        )
    pdf = media_kind(classify(source)) == "pdf"  # classify: a missing file is named as such
    check_task_media("ocr", source, ("image", "pdf"), OCR_VIDEO_HINT)
    if selection and not pdf:
        raise UsageError("pages apply to PDFs only", hint="Leave out --pages / pages for an image.")
    fetch, timeout_s = bool(fields.get("fetch_urls")), fields.get("timeout_s")
    numbers: list[int | None] = (
        list(
            pdf_pages(source, selection, fetch_urls=fetch, timeout_s=timeout_s, cache=getattr(client, "prepared", None))
        )
        if pdf
        else [None]
    )
    for number in numbers:
        yield number, plan_ocr(client, source, format=format, task=task, options=options, page=number, **dict(fields))


def estimate_ocr(
    client: SupportsPlan,
    source: Any,
    *,
    format: Format = "text",
    task: str | None = None,
    options: dict[str, Any] | None = None,
    pages: str | int | list[int | str] | None = None,
    **fields: Any,
) -> Estimate:
    """What reading ``source`` would take, nothing sent: one request per selected page (an image: one), each
    planned ``estimate_only`` (sizes from the PDF's page boxes, nothing rendered) and priced at its own tier
    (``qwenvl.batch.runner.estimate_calls``: ``to_send`` requests, ``input_tokens``, ``cost_input``, ``cost_max``
    with every answer at ``max_tokens``, in the client's region's currency; a local model: no price). Arguments as
    ``ocr``'s. Raises what ``plan_pages`` raises."""
    from qwenvl.batch.runner import estimate_calls

    source = task_media(source)
    fields = {**fields, "estimate_only": True}
    plans = plan_pages(client, source, format=format, task=task, options=options, pages=pages, **fields)
    local = bool(getattr(client, "is_local", False))
    with once_per_run():  # every page planned: a warning about the requests said once
        return estimate_calls((call for _, call in plans), region=getattr(client, "region", None), local=local)


def check_cost(est: Estimate, max_cost: float) -> None:
    """Refuse (UsageError, nothing sent) an estimate over ``max_cost`` (in its currency), or one whose cost is
    unknown (``unpriced_error``): the library's cost cap, as the CLI's ``--max-cost`` (``within_budget``). Raises
    nothing within the cap, nor for a local model."""
    from qwenvl.batch.runner import unpriced_error, within_budget
    from qwenvl.models import format_cost

    if within_budget(est, max_cost):
        return
    unpriced = unpriced_error(est, f"max_cost={max_cost:g}", uncapped="give max_cost=None")
    if unpriced is not None:
        raise unpriced
    raise UsageError(
        f"the estimated cost of {est.to_send:,} requests is up to {format_cost(est.cost_max, est.currency)}, above "
        f"max_cost {format_cost(max_cost, est.currency)}: nothing was sent",
        hint="Raise max_cost, choose fewer pages (pages=...), or lower max_tokens.",
    )


def send_pages(
    client: SupportsComplete,
    source: str,
    plans: Iterable[tuple[int | None, Call]],
    *,
    format: Format = "text",
    result: OCRResult | None = None,
    on_page: Callable[[OCRPage], None] | None = None,
) -> OCRResult:
    """Send each planned page in turn and read it (``read_page``): the OCRResult of ``source``.

    ``result``: an OCRResult to fill as the pages are read, so that a caller keeps the pages already paid for
    when a later page fails or Ctrl-C stops the reading (its ``stopped_at`` then names the page). ``on_page`` is
    called with each page as soon as it is read, in page order (the CLI writes it out then); what it raises stops
    the reading, before the next page is sent. Raises what ``plans``, ``client.send`` and ``on_page`` raise
    (UsageError, MediaError, APIError and its subclasses), and lets KeyboardInterrupt through; the exception's
    ``.partial`` is the OCRResult of the pages read before it (``partial``)."""
    if result is None:
        result = OCRResult(source=shown_ref(source), format=format)
    reading: int | None = None  # the page whose request is under way (0: an image)
    try:
        with once_per_run():  # the pages are planned as they are read: a warning about them said once
            for number, call in plans:
                reading = number if number is not None else 0
                result.model = result.model or call.request.model  # the model asked, until one answers
                page = _add_page(result, call, client.send(call), format=format, number=number)
                reading = None
                if on_page is not None:
                    on_page(page)
    except BaseException as exc:  # the pages read are kept in ``result``; Ctrl-C included
        mark_stopped(result, reading, source, exc)
        raise
    return _finished(result)


def _add_page(result: OCRResult, call: Call, response: Response, *, format: Format, number: int | None) -> OCRPage:
    """One page's answer read (``read_page``) into ``result``, the result's warnings those of every page read
    (``by_page``); returns the page."""
    page = read_page(call, response, format=format, page=number)
    result.pages.append(page)
    result.responses.append(response)
    result.model = response.model or call.request.model
    result.warnings = by_page((p.page, w) for p in result.pages for w in p.warnings if w != NO_TEXT)
    return page


def by_page(warnings: Iterable[tuple[int | None, str]]) -> list[str]:
    """``(page, warning)`` pairs as said once each, prefixed with the pages that have it, in the order first met:
    ``"page 3: ..."``, ``"pages 1, 2: ..."`` (a warning of ten pages is one line naming them, not ten); page None (an
    image): the warning alone. Raises nothing."""
    pages: dict[str, list[int | None]] = {}
    for number, warning in warnings:
        pages.setdefault(warning, []).append(number)
    out = []
    for warning, numbers in pages.items():
        named = [str(n) for n in dict.fromkeys(numbers) if n is not None]
        where = f"page{'s' if len(named) > 1 else ''} {', '.join(named)}: " if named else ""
        out.append(where + warning)
    return out


def partial(exc: BaseException) -> OCRResult | None:
    """The OCRResult of the pages read (and paid for) before ``exc`` stopped ``ocr``, ``aocr`` or ``send_pages``
    (``exc.partial``; its ``stopped_at`` names the page that failed, ``pages_left`` what is left to read), or None
    for an exception they did not raise. The same convention as ``StreamInterruptedError.partial_text`` and
    ``StructuredOutputError.response``: what was paid for travels with the error. Raises nothing."""
    found = getattr(exc, "partial", None)
    return found if isinstance(found, OCRResult) else None


def pages_left(source: str, pages: str | None, stopped_at: int) -> str:
    """The ``pages`` selection that reads what a reading of ``source``'s ``pages`` (None: every page) left when it
    stopped at page ``stopped_at``: that page and the selected ones after it, e.g. ``"3-"`` (to the end),
    ``"3-4,7"``. Raises UsageError, MediaError as ``pdf_pages`` does."""
    from qwenvl.media import pdf
    from qwenvl.media.prepare import pdf_content

    numbers = pdf_pages(source, pages)
    # ``stopped_at`` is the next page when planning one failed: the selection's first page from there on
    at = (
        numbers.index(stopped_at)
        if stopped_at in numbers
        else next((i for i, n in enumerate(numbers) if n > stopped_at), 0)
    )
    rest = numbers[at:]
    count = pdf.page_count(pdf_content(classify(source)), source)
    if rest and rest == list(range(rest[0], count + 1)):
        return f"{rest[0]}-"
    runs: list[list[int]] = []
    for n in rest:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def mark_stopped(result: OCRResult, reading: int | None, source: str, exc: BaseException) -> None:
    """Mark ``result`` stopped (``OCRResult.stopped``) where the reading stopped (``reading``: the page under way,
    0 for an image; None: planning the next page failed, or the reading was refused before it began): that page,
    else the next one; None for an image (``OCRResult.stopped_at``), also when planning it failed. ``exc``
    carries ``result`` as ``.partial``. Raises nothing."""
    with contextlib.suppress(AttributeError):  # an exception type with __slots__: nothing to carry it on
        exc.partial = result  # type: ignore[attr-defined]
    if reading is None:
        if result.pages:
            reading = (result.pages[-1].page or 0) + 1
        else:
            try:
                reading = 1 if media_kind(classify(source)) == "pdf" else 0
            except QwenVLError:  # the source itself is the fault (gone, unreadable): no page was reached
                reading = 0
    result.stopped, result.stopped_at = True, reading or None


def _finished(result: OCRResult) -> OCRResult:
    if result.empty:
        result.warnings.append(NO_TEXT)
    return result


def capped_pages(
    plans: Iterable[tuple[int | None, Call]], result: OCRResult, spend: SpendCap, client: Any
) -> Iterator[tuple[int | None, Call]]:
    """``plans``, each page's handed on only while what the pages read so far really cost (``result.responses``,
    counted by ``spend``, the one home of a run's cost cap) and that page's most (``estimate_calls``) keep within
    the cap: else ``SpendCap.check`` raises UsageError before it is sent (the pages read are kept in ``result``).
    The estimate priced the pages before the reading; this counts what they took."""
    from qwenvl.batch.runner import estimate_calls

    counted = 0
    for number, call in plans:
        for response in result.responses[counted:]:
            spend.paid(response)
        counted = len(result.responses)
        most = estimate_calls([call], region=client.region, local=bool(getattr(client, "is_local", False))).cost_max
        spend.check(most, f"page {number}" if number is not None else "the image")
        yield number, call


def _library_cap(est: Estimate, max_cost: float, client: Any) -> SpendCap:
    """The library's running cap of an OCR whose estimate ``check_cost`` passed."""
    from qwenvl.batch.runner import SpendCap

    return SpendCap(
        max_cost,
        est.currency,
        getattr(client, "region", None),
        name="max_cost",
        hint="The pages read are kept (exc.partial). Raise max_cost and read the rest (pages_left).",
    )


def ocr(
    client: SupportsComplete,
    source: Any,
    *,
    format: Format = "text",
    task: str | None = None,
    options: dict[str, Any] | None = None,
    pages: str | int | list[int | str] | None = None,
    max_cost: float | None = None,
    **fields: Any,
) -> OCRResult:
    """The text of an image or PDF (one request per page). ``task``/``options`` become ``ocr_options``.

    ``format``: ``"text"`` (default), ``"markdown"`` or ``"json"`` (lines with boxes in original pixels);
    ``pages``: PDF pages such as ``"1-3,5"``, ``2`` or ``[2, 3]`` (1-based; default every page); ``max_cost``:
    the most the pages may cost, in the region's currency (``estimate_ocr``: every answer at ``max_tokens``),
    checked before anything is sent (default None: no cap), then against what the pages read really cost before
    each page is sent (``capped_pages``); ``fields``: any Request fields.

    Raises UsageError (an unknown format, ``pages`` for an image, bad page syntax, an estimate over ``max_cost`` or
    one that cannot be priced, a page that could take what was paid above it: the pages read kept), MediaError (a
    page out of range, media that cannot be sent), and what ``Client.send`` raises (APIError and its subclasses);
    TypeError for an AsyncClient (use ``aocr``). An error after some pages were read carries them: ``exc.partial``
    (``partial(exc)``) is the OCRResult of the pages read, ``stopped`` True and ``stopped_at`` the PDF page that
    failed (None for an image). A page without text is not an error (a warning). ``source``: a path (``str`` or
    ``os.PathLike``), URL, bytes or PIL image."""
    sync_client(client, "ocr")
    source = task_media(source)
    with once_per_run():  # the pages estimated, then planned and read: a warning about them said once
        plans = plan_pages(client, source, format=format, task=task, options=options, pages=pages, **fields)
        result = OCRResult(source=shown_ref(source), format=format)
        if max_cost is not None:
            est = estimate_ocr(client, source, format=format, task=task, options=options, pages=pages, **fields)
            check_cost(est, max_cost)
            plans = capped_pages(plans, result, _library_cap(est, max_cost, client), client)
        try:
            return library_worded(send_pages(client, source, plans, format=format, result=result))
        except BaseException as exc:
            read = partial(exc)
            if read is not None:  # the pages read, in the library's words as a whole result is
                library_worded(read)
            raise


async def aocr(
    client: SupportsAsyncComplete,
    source: Any,
    *,
    format: Format = "text",
    task: str | None = None,
    options: dict[str, Any] | None = None,
    pages: str | int | list[int | str] | None = None,
    max_cost: float | None = None,
    **fields: Any,
) -> OCRResult:
    """``ocr`` with an AsyncClient, awaited: each page planned (rendered, prepared) in a worker thread, then sent,
    in turn; read as ``ocr`` reads. Raises what ``ocr`` raises (an error after some pages carries them as
    ``exc.partial``, Ctrl-C and cancellation too); TypeError for a synchronous Client."""
    async_client(client, "ocr")
    source = task_media(source)
    with once_per_run():  # the pages estimated, then planned (in worker threads, which share it) and read
        return await _aocr(client, source, format, task, options, pages, max_cost, fields)


async def _aocr(
    client: SupportsAsyncComplete,
    source: Any,
    format: Format,
    task: str | None,
    options: dict[str, Any] | None,
    pages: str | int | list[int | str] | None,
    max_cost: float | None,
    fields: dict[str, Any],
) -> OCRResult:
    plans = plan_pages(client, source, format=format, task=task, options=options, pages=pages, **fields)
    result = OCRResult(source=shown_ref(source), format=format)
    if max_cost is not None:
        est = await in_thread(
            estimate_ocr, client, source, format=format, task=task, options=options, pages=pages, **fields
        )
        check_cost(est, max_cost)
        plans = capped_pages(plans, result, _library_cap(est, max_cost, client), client)
    reading: int | None = None
    try:
        while (planned := await in_thread(next, plans, None)) is not None:
            number, call = planned
            reading = number if number is not None else 0
            result.model = result.model or call.request.model  # the model asked, until one answers
            _add_page(result, call, await client.send(call), format=format, number=number)
            reading = None
    except BaseException as exc:
        mark_stopped(result, reading, source, exc)
        library_worded(result)  # the pages read (``exc.partial``), in the library's words
        raise
    return library_worded(_finished(result))
