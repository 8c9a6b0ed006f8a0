"""JSON mode and JSON Schema output: instruct the model, parse its answer robustly, validate, repair.

The service's ``response_format: {"type": "json_object"}`` requires the word "json" in the messages, so
every instruction here contains it. A schema is sent inside the instruction (with ``json_object`` when its root
is an object: ``json_object`` forces one, so an array-root or scalar-root schema goes without it, its
instruction and repair prompt naming the root's kind), the form every Qwen-VL model accepts; ``json_schema``
response formats are not documented for Qwen-VL.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenvl.errors import SchemaDefinitionError
from qwenvl.media.sources import read_regular_text

if TYPE_CHECKING:  # jsonschema and referencing load when a schema is first checked or applied, not per command
    from referencing import Resource

JSON_INSTRUCTION = "Return ONLY valid JSON."
SCHEMA_INSTRUCTION = (
    "Return ONLY JSON that matches the provided schema. Do not include markdown or extra commentary.\n"
    "JSON Schema:\n{schema}"
)
REPAIR_INSTRUCTION = (
    "Your previous answer was not valid JSON for the schema:\n{errors}\n"
    "Answer again with ONLY the corrected JSON {kind}, no markdown and no commentary."
)
ROOT_INSTRUCTION = "The answer is a JSON {kind}."  # said for a root that is not an object (json_object is not sent)
MAX_REPORTED_ERRORS = 5


def load_schema(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema from a dict, a file path, or JSON text (a string starting with ``{`` or ``[``); checked against the
    meta-schema (draft 2020-12).

    Raises MediaError (CLI exit code 3) for a schema file that is missing, a folder, not a regular file or
    unreadable (``qwenvl.media.sources.read_regular_text``); SchemaDefinitionError (exit 2) for content that is
    not UTF-8, not JSON, or not a valid JSON Schema."""
    if isinstance(source, dict):
        schema = source
    else:
        text = str(source)
        if text.lstrip().startswith(("{", "[")):  # JSON text (a list: to say it is not an object)
            origin, raw = "schema", text
        else:
            path = Path(text).expanduser()
            origin = str(path)
            raw = read_regular_text(path, error=SchemaDefinitionError, what="schema file")
        try:
            schema = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SchemaDefinitionError(f"{origin} is not valid JSON: {exc}") from None
    check_schema(schema)
    return schema


def check_schema(schema: Any) -> None:
    """Raise SchemaDefinitionError (one line) unless ``schema`` is a JSON Schema the validator can use: an object,
    valid for the draft 2020-12 meta-schema (types, keywords, and ``pattern``/``patternProperties`` that compile
    as regexes: ``jsonschema``'s format check), every ``$ref`` resolvable within the schema or to a published
    meta-schema (nothing is fetched), and usable on sample values. Called wherever a schema enters (``Request``,
    ``load_schema``), so a bad one stops before anything is sent or uploaded."""
    if not isinstance(schema, dict):
        raise SchemaDefinitionError(f"a JSON Schema must be an object, not {type(schema).__name__}")
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError, RecursionError):  # not JSON data (e.g. a set inside): checked below, not kept
        key = None
    if key is not None and key in _CHECKED:  # a batch's items share one schema: checked once (it takes ms)
        return
    _check_schema(schema)
    if key is not None:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED.add(key)


_CHECKED: set[str] = set()  # schemas that passed ``check_schema``, as canonical JSON
_CHECKED_MAX = 256


def _check_schema(schema: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from jsonschema_specifications import REGISTRY as META_SCHEMAS
    from referencing.jsonschema import DRAFT202012

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise SchemaDefinitionError(f"not a valid JSON Schema at {where}: {exc.message}") from None
    except RecursionError:
        raise SchemaDefinitionError("not a valid JSON Schema: it is nested too deeply to check") from None
    root = DRAFT202012.create_resource(schema)
    _check_refs(META_SCHEMAS.with_resource("", root).resolver(), root)
    samples: tuple[Any, ...] = (None, {}, [], "", 0)
    for sample in samples:  # what the validator compiles lazily (a keyword's code) fails here
        validate(sample, schema)


def _check_refs(resolver: Any, resource: Resource[Any]) -> None:
    from referencing.exceptions import Unresolvable

    ref = resource.contents.get("$ref") if isinstance(resource.contents, dict) else None
    if isinstance(ref, str):
        try:
            resolver.lookup(ref)
        except Unresolvable:
            raise SchemaDefinitionError(
                f"not a valid JSON Schema: $ref {ref!r} does not resolve",
                hint="Point $ref at a definition inside the schema (#/$defs/name); remote schemas are not fetched.",
            ) from None
    for sub in resource.subresources():
        _check_refs(resolver.in_subresource(sub), sub)


def root_type(schema: dict[str, Any] | None) -> str | None:
    """The JSON type a schema's root must have: its ``type`` (one type, or the one of a list besides "null"),
    else ``"object"`` for ``properties``/``required``/``additionalProperties`` and ``"array"`` for
    ``items``/``prefixItems``, following a root ``$ref`` into the schema's own ``$defs``/``definitions``; None
    when the schema does not say (``{}``, ``anyOf`` of several types). Raises nothing."""
    root, seen = schema, 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 8:  # $ref loops end here
        ref, seen = schema["$ref"], seen + 1
        node: Any = root if ref.startswith("#/") else None
        for part in ref.removeprefix("#/").split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            break
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if isinstance(kind, str):
        return kind
    if any(k in schema for k in ("properties", "required", "additionalProperties", "patternProperties")):
        return "object"
    if any(k in schema for k in ("items", "prefixItems")):
        return "array"
    return None


def _kind(schema: dict[str, Any] | None) -> str:
    """How the prompts name the answer: "object", "array", "string"... or "value" when the root type is unknown;
    "object" in JSON mode without a schema (``json_object``)."""
    if schema is None:
        return "object"
    root = root_type(schema)
    return "value" if root is None else "number" if root == "integer" else root


def instruction(*, json_mode: bool, schema: dict[str, Any] | None) -> str | None:
    """The text appended to the user's prompt, or None when no structured output is asked for. A schema whose
    root is not an object adds what its root is (``ROOT_INSTRUCTION``)."""
    if schema is not None:
        text = SCHEMA_INSTRUCTION.format(schema=json.dumps(schema, ensure_ascii=False))
        kind = _kind(schema)
        return text if kind == "object" else text + "\n" + ROOT_INSTRUCTION.format(kind=kind)
    if json_mode:
        return JSON_INSTRUCTION
    return None


def response_format(*, json_mode: bool, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"type": "json_object"}`` for JSON mode and for a schema whose root is an object (``root_type``); None
    otherwise: ``json_object`` makes the model answer an object, which an array-root, scalar-root or
    unknown-root schema would refuse (the instruction still asks for JSON). Raises nothing."""
    if schema is None:
        return {"type": "json_object"} if json_mode else None
    return {"type": "json_object"} if root_type(schema) == "object" else None


class NoJSONFound(ValueError):
    pass


# --- finding JSON in a model's answer: the one home of the fence reader and the safe parse ---------------------

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?")


def fenced_blocks(text: str) -> tuple[list[str], str]:
    """``(blocks, before)``: the insides of the ``` fences in ``text`` (a language tag such as ``json`` left
    out; an opening fence that never closes runs to the end, as in an answer cut off by ``max_tokens``) and
    the prose before the first fence. ``([], text)`` when there is no fence. Used by ``extract_json`` and by
    the box and point reader (``qwenvl.tasks.parsing``)."""
    marks = list(_FENCE.finditer(text))
    if not marks:
        return [], text
    blocks: list[str] = []
    for i in range(0, len(marks), 2):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        blocks.append(text[marks[i].end() : end])
    return blocks, text[: marks[0].start()]


def load_json(text: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``text`` is one JSON value, else ``(False, None)``: also for JSON nested too deep
    for Python's parser (a RecursionError is never raised)."""
    try:
        return True, json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False, None


def extract_json(text: str, schema: dict[str, Any] | None = None) -> Any:
    """The JSON value in a model's answer: bare, in a ```json fence, or with prose around it.

    Without ``schema``: the whole answer, else the first fenced block that parses, else the longest value in the
    prose. With ``schema`` the answer's own JSON is preferred over what it quotes: a value identical to the
    schema (an answer that quotes the prompt, its schema included) is never taken when the schema has any
    keyword; then the whole answer, else the last fenced block valid for the schema, else the last value in the
    prose valid for it, else (to report what is wrong) the last fenced block or the longest value. Raises
    NoJSONFound when there is none (nesting too deep to read counts as none; so does only the schema quoted)."""
    stripped = text.strip()
    if not stripped:
        raise NoJSONFound("the answer is empty")

    def quoted(value: Any) -> bool:  # the schema it was sent, quoted back
        return bool(schema) and value == schema

    ok, value = load_json(stripped)
    if ok and not quoted(value):
        return value
    fenced = [v for ok, v in (load_json(b.strip()) for b in fenced_blocks(stripped)[0]) if ok]
    prose = _prose_values(stripped)
    own_fenced = [v for v in fenced if not quoted(v)]
    own_prose = [(v, n) for v, n in prose if not quoted(v)]
    if schema is not None:
        for found in (own_fenced, [v for v, _ in own_prose]):
            valid = [v for v in found if not validate(v, schema)]
            if valid:
                return valid[-1]
        if own_fenced:
            return own_fenced[-1]
    elif own_fenced:
        return own_fenced[0]
    if own_prose:
        return max(own_prose, key=lambda item: item[1])[0]
    if fenced or prose or ok:
        raise NoJSONFound("the answer holds no JSON of its own, only the schema it was sent, quoted back")
    raise NoJSONFound("no JSON value found in the answer")


def _prose_values(text: str) -> list[tuple[Any, int]]:
    """``(value, length)`` of each JSON object or array in ``text`` at the top level (a value inside another is
    part of it), in order. Raises NoJSONFound for a value nested too deeply to read."""
    decoder = json.JSONDecoder()
    found: list[tuple[Any, int]] = []
    i = 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                i += 1
                continue
            except RecursionError:  # not a part of it either: its insides are as deep
                raise NoJSONFound("the JSON in the answer is nested too deeply to read") from None
            found.append((value, end - i))
            i = end
            continue
        i += 1
    return found


def validate(value: Any, schema: dict[str, Any] | None) -> list[str]:
    """Validation errors as short lines (empty when valid). Raises SchemaDefinitionError (one line) when the
    validator cannot apply ``schema`` (any ``jsonschema``/``referencing`` failure: an unknown type, a ``$ref``
    that does not resolve, a bad regex), never the library's own exception; ``check_schema`` finds these before
    anything is sent."""
    if schema is None:
        return []
    import jsonschema.exceptions
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        validator = Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    except (jsonschema.exceptions.ValidationError, SchemaError) as exc:  # raised, not yielded: the schema's fault
        raise SchemaDefinitionError(f"the schema cannot be used: {exc.message}") from None
    except (re.error, RecursionError) as exc:
        raise SchemaDefinitionError(f"the schema cannot be used: {exc}") from None
    except Exception as exc:  # UnknownType, an unresolvable $ref (jsonschema wraps referencing's errors)...
        if not type(exc).__module__.startswith(("jsonschema", "referencing")):
            raise
        message = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SchemaDefinitionError(f"the schema cannot be used: {type(exc).__name__}: {message[:200]}") from None
    lines = []
    for err in errors[:MAX_REPORTED_ERRORS]:
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        lines.append(f"at {where}: {err.message}")
    if len(errors) > MAX_REPORTED_ERRORS:
        lines.append(f"... and {len(errors) - MAX_REPORTED_ERRORS} more")
    return lines


_WHOLE_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n(.*?)\n?[ \t]*```", re.S | re.I)


def answer_json(text: str, schema: dict[str, Any] | None = None, *, json_object: bool = False) -> Any:
    """The JSON value a structured-output answer (JSON mode, a schema) IS: the whole answer, whitespace around it
    allowed, or the inside of one ```json (or bare ```) fence that is the whole answer: chat-tuned models wrap
    JSON in a fence even when told not to, and the fence says where the JSON starts and ends. Prose around the
    JSON, or a value found inside prose, is never taken: that is what ``extract_json`` does for readers of free
    answers (boxes, events), not an answer that was asked to be JSON. ``json_object`` (JSON mode without a
    schema: ``response_format`` ``json_object``) also requires an object at the root.

    Raises NoJSONFound (its message one short line) for an empty answer, text around the JSON, no JSON at all,
    JSON nested too deeply to read, only the schema quoted back (a schema with any keyword), or a root that is not
    an object when ``json_object``."""
    stripped = text.strip()
    if not stripped:
        raise NoJSONFound("the answer is empty")
    fence = _WHOLE_FENCE.fullmatch(stripped)
    ok, value = load_json(fence[1].strip() if fence else stripped)
    if not ok:
        extract_json(stripped, schema)  # raises its reason when there is no JSON at all
        raise NoJSONFound("the answer has text around its JSON: it must be the JSON alone")
    if schema and value == schema:
        raise NoJSONFound("the answer holds no JSON of its own, only the schema it was sent, quoted back")
    if json_object and not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        raise NoJSONFound(f"the answer is {kind}, not a JSON object (JSON mode asks for an object)")
    return value


def parse_answer(text: str, schema: dict[str, Any] | None, *, json_object: bool = False) -> tuple[Any, list[str]]:
    """(value, errors): the answer's JSON (``answer_json``: the whole answer, or one fence that is the whole
    answer; an object when ``json_object``) and what is wrong with it; value is None when it is not such JSON.
    Raises SchemaDefinitionError only as ``validate`` does."""
    try:
        value = answer_json(text, schema, json_object=json_object)
    except NoJSONFound as exc:
        return None, [str(exc)]
    return value, validate(value, schema)


def repair_prompt(errors: list[str], schema: dict[str, Any] | None = None) -> str:
    """The repair request's text: the errors, and to answer again with the corrected JSON object, array... as
    the schema's root says (``root_type``; "value" when it does not say). Raises nothing."""
    return REPAIR_INSTRUCTION.format(errors="\n".join(f"- {e}" for e in errors), kind=_kind(schema))
