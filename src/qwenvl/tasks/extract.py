"""Extraction: JSON validated against a schema for each file, using the core's structured output (the schema
is put in the prompt, the answer parsed, validated and repaired once; ``Request(schema=...)``).

    r = qwenvl.tasks.extract(client, "invoice.png", "invoice.schema.json")   # r.json
    r = qwenvl.tasks.extract(client, "invoice.png", Invoice)                  # r.parsed: an Invoice
    for x in qwenvl.tasks.extract_many(client, files, schema):                # one Extraction per file
        x.file, x.json, x.error

A PDF is sent whole (every page, as images, in one request: see ``qwenvl.media.pdf``), so one document gives
one JSON value. ``to_row`` flattens a value for CSV: top-level keys become columns, nested values JSON text.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwenvl.errors import (
    APIError,
    AuthenticationError,
    ModelNotFoundError,
    PermissionDeniedError,
    QwenVLError,
    StructuredOutputError,
    UsageError,
)
from qwenvl.interfaces import SupportsAsyncComplete, SupportsComplete, SupportsPlan
from qwenvl.media.sources import media_kind
from qwenvl.notes import SaidOnce, once_per_run
from qwenvl.plan import Call
from qwenvl.retry import Reachability
from qwenvl.tasks.grounding import (
    async_client,
    in_thread,
    model_for,
    plan_task,
    refuse_thinking,
    sync_client,
    task_fields,
    task_media,
)
from qwenvl.types import Response

if TYPE_CHECKING:
    from pydantic import BaseModel

EXTRACT_PROMPT = "Extract the information in this document."
EXTRACT_MAX_TOKENS = 2048


def _schema_fields(schema: Any, fields: dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema, str | os.PathLike):
        from qwenvl.structured import load_schema

        schema = load_schema(os.fspath(schema))
    return {**fields, "schema": schema}


def plan_extract(client: SupportsPlan, file: Any, schema: Any, *, prompt: str | None = None, **fields: Any) -> Call:
    """The request ``extract`` sends (nothing is sent): the extraction prompt (or ``prompt``), ``file`` (an image, a
    PDF's pages with ``pages``, or a video: sampled, or sent whole, as ``fps`` and ``video_as`` say), ``schema`` (a
    dict, a schema file path or a pydantic model class), and ``max_tokens`` 2048 unless given (capped by the model's
    own limit and its context: ``plan_task``).

    Raises UsageError (invalid fields; thinking asked for: ``refuse_thinking``), SchemaDefinitionError, MediaError
    (media that cannot be sent), as
    ``Client.plan``."""
    refuse_thinking("extract", fields)
    model = model_for(client, fields)
    ref = task_media(file)
    media = {"video": ref} if isinstance(ref, str) and media_kind(ref) == "video" else {"images": [ref]}
    own = task_fields("extract", fields, prompt=EXTRACT_PROMPT if prompt is None else prompt, **media)
    return plan_task(client, model, EXTRACT_MAX_TOKENS, **_schema_fields(schema, own))


def extract(client: SupportsComplete, file: Any, schema: Any, *, prompt: str | None = None, **fields: Any) -> Response:
    """The file's data as JSON valid for ``schema`` (a dict, a schema file, or a pydantic model class).

    ``Response.json`` is the value; with a pydantic model, ``Response.parsed`` is the instance. One request, and
    one repair request when the first answer is invalid. ``fields`` are any Request fields.

    Raises ``StructuredOutputError`` when the answer is not valid even after one repair (the answer is in
    ``.raw_text`` and ``.response``), SchemaDefinitionError for an invalid schema, and what ``plan_extract`` and
    ``Client.send`` raise (UsageError, MediaError, APIError and its subclasses); TypeError for an AsyncClient
    (use ``aextract``).
    ``file``: a path (``str`` or ``os.PathLike``), URL, bytes or PIL image; ``schema`` a dict, a schema file's
    path (``str`` or ``os.PathLike``) or a pydantic model class.
    """
    sync_client(client, "extract")
    return client.send(plan_extract(client, file, schema, prompt=prompt, **fields))


async def aextract(
    client: SupportsAsyncComplete, file: Any, schema: Any, *, prompt: str | None = None, **fields: Any
) -> Response:
    """``extract`` with an AsyncClient, awaited (planned in a worker thread). Raises what ``extract`` raises;
    TypeError for a synchronous Client (use ``extract``)."""
    async_client(client, "extract")
    return await client.send(await in_thread(plan_extract, client, file, schema, prompt=prompt, **fields))


@dataclass
class Extraction:
    """One file's result in a run over many files: ``json`` when it worked, ``error`` when not.

    Made by ``extract_many``; building one raises nothing (the dataclass checks nothing)."""

    file: str
    json: Any = None
    error: str | None = None
    raw_text: str | None = None  # the model's answer when it was not valid for the schema
    exit_code: int = 0  # the CLI exit code of the error (0 when it worked)
    # the answer (a failed one too: an answer not valid for the schema was paid for, its usage counts every
    # request of the call, the repair included)
    response: Response | None = field(default=None, repr=False)
    failure: QwenVLError | None = field(default=None, repr=False)  # the error, when the file failed

    @property
    def parsed(self) -> BaseModel | None:
        """The pydantic instance when the schema was a model class and the file worked (else None)."""
        return self.response.parsed if self.response is not None else None

    @property
    def ok(self) -> bool:
        """True when the file gave valid JSON (no ``error``)."""
        return self.error is None

    def line(self, region: str | None = None) -> dict[str, Any]:
        """The JSONL record: ``{"file", "json"}`` with what the answer took (``models.spent_fields``: ``usage``,
        ``cost``, ``currency``, ``local``, ``cached``, ``requests``, ``request_ids``, ``request_id``), or ``{"file",
        "error"[, "raw_text"]}``. A failed answer that was paid for (not valid for the schema:
        ``StructuredOutputError``) also says what it took, as a batch line does: ``"usage"`` (every request of the
        call), ``"requests"`` (2 after a repair), ``"request_ids"`` and the cost in ``region``'s currency
        (``models.cost_fields``: null when unknown; a local model's ``"local": true``). Raises UsageError for an
        unknown region."""
        if self.ok:
            from qwenvl.models import spent_fields

            spent = spent_fields([self.response], region=region) if isinstance(self.response, Response) else {}
            return {"file": self.file, "json": self.json, **spent}
        out: dict[str, Any] = {"file": self.file, "error": self.error}
        if self.raw_text is not None:
            out["raw_text"] = self.raw_text
        paid = self.failure if isinstance(self.failure, StructuredOutputError) else None
        if paid is not None and isinstance(self.response, Response):
            from qwenvl.models import answer_cost, answer_paid, cost_fields, currency_of

            local = not answer_paid(self.response)
            out["usage"] = self.response.usage.model_dump(exclude={"raw"}, exclude_none=True)
            out["requests"] = paid.requests
            out["request_ids"] = paid.request_ids
            out.update(cost_fields(answer_cost(self.response, region=region), currency_of(region), local=local))
        return out


# Errors that would fail every file the same way: stop at the first one instead of repeating it.
FATAL = (UsageError, AuthenticationError, PermissionDeniedError, ModelNotFoundError)


def extract_many(
    client: SupportsComplete, files: Iterable[str], schema: Any, *, prompt: str | None = None, **fields: Any
) -> Iterator[Extraction]:
    """``extract`` for each file in turn; a file that fails gives an Extraction with ``error`` and the run
    goes on (usage and authentication errors, a model the service does not have, and a service that cannot be
    reached stop it: they would fail every file). Files are sent one at a time, as the iterator is read; a warning
    about their requests is logged once (``qwenvl.notes.once_per_run``), not once per file.

    Raises UsageError (and SchemaDefinitionError), AuthenticationError (MissingAPIKeyError included),
    PermissionDeniedError and ModelNotFoundError, which would fail every file, and APIConnectionError /
    APITimeoutError once the service is taken for unreachable or too slow (the first ``UNREACHABLE_ITEMS`` files
    failed to connect on every attempt before it answered anything: ``qwenvl.retry.Reachability``); every other
    QwenVLError is kept in its Extraction."""
    sync_client(client, "extract_many")
    fields = _schema_fields(schema, fields)
    schema, rest = fields.pop("schema"), fields
    run = SaidOnce()  # a warning about the files' requests said once (entered per file: a generator yields)
    reach = _reachability()
    for file in files:
        try:
            with once_per_run(run):
                call = plan_extract(client, file, schema, prompt=prompt, **rest)
            response = client.send(call)
        except QwenVLError as exc:
            yield _failed(file, exc, reach)
        else:
            reach.answered()
            yield Extraction(file=_name(file), json=response.json, response=response)


async def aextract_many(
    client: SupportsAsyncComplete, files: Iterable[Any], schema: Any, *, prompt: str | None = None, **fields: Any
) -> AsyncIterator[Extraction]:
    """``extract_many`` with an AsyncClient: an async iterator of Extractions, one file at a time. Raises what
    ``extract_many`` raises; TypeError for a synchronous Client."""
    async_client(client, "extract_many")
    fields = _schema_fields(schema, fields)
    schema, rest = fields.pop("schema"), fields
    run = SaidOnce()  # a warning about the files' requests said once (entered per file: a generator yields)
    reach = _reachability()
    for file in files:
        try:
            with once_per_run(run):  # the worker thread shares it
                call = await in_thread(plan_extract, client, file, schema, prompt=prompt, **rest)
            response = await client.send(call)
        except QwenVLError as exc:
            yield _failed(file, exc, reach)
        else:
            reach.answered()
            yield Extraction(file=_name(file), json=response.json, response=response)


def task_name(file: Any) -> str:
    """How an Extraction names its file (``Extraction.file``): the path or URL as given (an ``os.PathLike`` as its
    path), ``<bytes>`` or ``<image>`` for an object. Raises nothing for those."""
    return _name(file)


def _name(file: Any) -> str:
    """How an Extraction names its file: the path or URL as given (an ``os.PathLike`` as its path), ``<bytes>`` or
    ``<image>`` for an object."""
    ref = task_media(file) if isinstance(file, os.PathLike) else file
    return ref if isinstance(ref, str) else "<bytes>" if isinstance(ref, bytes | bytearray) else "<image>"


def _reachability() -> Reachability:
    """The run's watch of a service that cannot be reached (``qwenvl.retry.Reachability``), in extract's words."""
    return Reachability("files", then="run the same command again.")


def _failed(file: Any, exc: QwenVLError, reach: Reachability) -> Extraction:
    """The Extraction of a file that failed; raises again an error that would fail every file (``FATAL``), and the
    error that stops the run once the service is taken for unreachable (``reach``)."""
    if isinstance(exc, FATAL):
        raise exc
    if isinstance(exc, APIError):
        stop = reach.failed(exc)
        if stop is not None:
            raise stop from exc
    if isinstance(exc, StructuredOutputError):
        reach.answered()
        return Extraction(
            file=_name(file),
            error=str(exc),
            raw_text=exc.raw_text,
            exit_code=exc.exit_code,
            response=exc.response,
            failure=exc,
        )
    return Extraction(file=_name(file), error=str(exc), exit_code=exc.exit_code, failure=exc)


# --- CSV --------------------------------------------------------------------------------------------------


def columns(schema: dict[str, Any] | None, rows: Iterable[Extraction]) -> list[str]:
    """``file``, the schema's top-level properties in order, any other keys seen, ``error`` if any failed, and
    ``raw_answer`` if any failed with an answer (paid for) that was not valid for the schema (``raw_text``).
    Raises nothing."""
    rows = list(rows)
    names: list[str] = ["file"]
    props = (schema or {}).get("properties") if isinstance(schema, dict) else None
    for key in props or {}:
        if key not in names:
            names.append(key)
    for row in rows:
        value = row.json
        keys = value.keys() if isinstance(value, dict) else (["value"] if row.ok else [])
        for key in keys:
            if key not in names:
                names.append(key)
    if any(not r.ok for r in rows):
        names.append("error")
    if any(r.raw_text is not None for r in rows):
        names.append("raw_answer")
    return names


def cell(value: Any) -> str:
    """A CSV cell for a JSON value: "" for null, strings as they are, true/false, numbers and nested values as
    JSON. Raises nothing for JSON values."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False)


def to_row(row: Extraction, names: list[str]) -> list[str]:
    """One CSV row for ``row``, its cells in the order of ``names`` (``columns``). Raises nothing."""
    value = row.json
    record = dict(value) if isinstance(value, dict) else ({"value": value} if row.ok else {})
    record["file"] = row.file
    if row.error is not None:
        record["error"] = row.error
    if row.raw_text is not None:
        record["raw_answer"] = row.raw_text
    return [cell(record.get(name)) for name in names]
