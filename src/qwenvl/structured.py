"""JSON mode and JSON Schema output: instruct the model, parse its answer robustly, validate, repair.

The service's ``response_format: {"type": "json_object"}`` requires the word "json" in the messages, so
every instruction here contains it. A schema is sent inside the instruction (with ``json_object``), the
form every Qwen-VL model accepts; ``json_schema`` response formats are not documented for Qwen-VL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from qwenvl.errors import SchemaDefinitionError
from qwenvl.media.sources import read_regular_text

JSON_INSTRUCTION = "Return ONLY valid JSON."
SCHEMA_INSTRUCTION = (
    "Return ONLY JSON that matches the provided schema. Do not include markdown or extra commentary.\n"
    "JSON Schema:\n{schema}"
)
REPAIR_INSTRUCTION = (
    "Your previous answer was not valid JSON for the schema:\n{errors}\n"
    "Answer again with ONLY the corrected JSON object, no markdown and no commentary."
)
MAX_REPORTED_ERRORS = 5


def load_schema(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema from a dict, a file path, or JSON text; checked against the meta-schema."""
    if isinstance(source, dict):
        schema = source
    else:
        text = str(source)
        if text.lstrip().startswith("{"):
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
    if not isinstance(schema, dict):
        raise SchemaDefinitionError(f"a JSON Schema must be an object, not {type(schema).__name__}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise SchemaDefinitionError(f"not a valid JSON Schema at {where}: {exc.message}") from None


def instruction(*, json_mode: bool, schema: dict[str, Any] | None) -> str | None:
    """The text appended to the user's prompt, or None when no structured output is asked for."""
    if schema is not None:
        return SCHEMA_INSTRUCTION.format(schema=json.dumps(schema, ensure_ascii=False))
    if json_mode:
        return JSON_INSTRUCTION
    return None


def response_format(*, json_mode: bool, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is not None or json_mode:
        return {"type": "json_object"}
    return None


class NoJSONFound(ValueError):
    pass


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: bare, in a ```json fence, or with prose around it."""
    stripped = text.strip()
    if not stripped:
        raise NoJSONFound("the answer is empty")
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    for block in _fenced_blocks(stripped):
        try:
            return json.loads(block)
        except json.JSONDecodeError:
            continue
    decoder = json.JSONDecoder()
    best: Any = None
    best_len = -1
    for i, ch in enumerate(stripped):
        if ch in "{[":
            try:
                value, end = decoder.raw_decode(stripped, i)
            except json.JSONDecodeError:
                continue
            if end - i > best_len:
                best, best_len = value, end - i
    if best_len >= 0:
        return best
    raise NoJSONFound("no JSON value found in the answer")


def _fenced_blocks(text: str) -> list[str]:
    blocks = []
    parts = text.split("```")
    for i in range(1, len(parts), 2):
        block = parts[i]
        first, _, rest = block.partition("\n")
        if first.strip().isalpha() or not first.strip():  # a language tag such as json
            block = rest
        blocks.append(block.strip())
    return blocks


def validate(value: Any, schema: dict[str, Any] | None) -> list[str]:
    """Validation errors as short lines (empty when valid)."""
    if schema is None:
        return []
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    lines = []
    for err in errors[:MAX_REPORTED_ERRORS]:
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        lines.append(f"at {where}: {err.message}")
    if len(errors) > MAX_REPORTED_ERRORS:
        lines.append(f"... and {len(errors) - MAX_REPORTED_ERRORS} more")
    return lines


def parse_answer(text: str, schema: dict[str, Any] | None) -> tuple[Any, list[str]]:
    """(value, errors): the parsed JSON and what is wrong with it; value is None when nothing parsed."""
    try:
        value = extract_json(text)
    except NoJSONFound as exc:
        return None, [str(exc)]
    return value, validate(value, schema)


def repair_prompt(errors: list[str]) -> str:
    return REPAIR_INSTRUCTION.format(errors="\n".join(f"- {e}" for e in errors))
