"""Tool calls as Qwen-VL models write them in their answer (pure functions, no I/O).

Qwen2.5-VL and Qwen3-VL are trained on the Hermes format: their chat templates list the functions inside
``<tools></tools>`` and ask for each call as ``<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}
\\n</tool_call>`` (the ``tools`` section of Qwen/Qwen3-VL-8B-Instruct's chat template, and of the Qwen2.5 template in
Qwen/Qwen2.5-VL-7B-Instruct's tokenizer_config.json). ``<tool_call>`` and ``</tool_call>`` are added tokens that are
not special, so they survive ``decode(skip_special_tokens=True)``.

The reading follows vLLM's ``hermes`` tool parser (vllm/entrypoints/openai/tool_parsers/hermes_tool_parser.py,
``extract_tool_calls``), the parser vLLM documents for Qwen models:

- a block runs from ``<tool_call>`` to ``</tool_call>``, or to the end of the answer when it is never closed;
- its body is JSON with a string ``name`` and an ``arguments`` value; the call's ``arguments`` are that value as a
  JSON string (``json.dumps(..., ensure_ascii=False)``), as OpenAI's tool calls carry them;
- when any block is not such JSON, no call is made and the whole answer stays text (vLLM logs the error and
  returns the model's output as content; a model's malformed call is its answer, not a reply we cannot read);
- ``content`` is the text outside the blocks (vLLM keeps only the text before the first block; qwenvl keeps the
  text between and after them too), without the white space that separates it from a block; "" when none.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

START = "<tool_call>"
END = "</tool_call>"


@dataclass
class Parsed:
    """An answer split into its text (``content``) and its calls (None: the model called nothing)."""

    content: str
    tool_calls: list[dict[str, Any]] | None


def new_call_id() -> str:
    """A fresh tool-call id, ``call_`` and 24 hex digits (ids only need to be unique within a conversation)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(body: str) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or "arguments" not in data:
        return None
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": data["name"], "arguments": json.dumps(data["arguments"], ensure_ascii=False)},
    }


def parse(text: str) -> Parsed:
    """``text`` (a whole answer) as content and tool calls (see the module doc). Raises nothing."""
    if START not in text:
        return Parsed(text, None)
    pieces: list[str] = []
    calls: list[dict[str, Any]] = []
    pos = 0
    while True:
        at = text.find(START, pos)
        if at < 0:
            pieces.append(text[pos:])
            break
        pieces.append(text[pos:at])
        body_at = at + len(START)
        end = text.find(END, body_at)
        call = _call(text[body_at:] if end < 0 else text[body_at:end])
        if call is None:
            return Parsed(text, None)
        calls.append(call)
        if end < 0:
            pieces.append("")
            break
        pos = end + len(END)
    last = len(pieces) - 1
    kept = [
        p.rstrip() if i == 0 else p.lstrip() if i == last else p.strip()
        for i, p in enumerate(pieces)  # every piece but the first follows a block, every one but the last precedes one
    ]
    return Parsed("\n".join(p for p in kept if p), calls)


def _partial_start(text: str) -> int:
    """The length of the longest end of ``text`` that begins ``<tool_call>`` (0 when none)."""
    for n in range(min(len(START) - 1, len(text)), 0, -1):
        if text.endswith(START[:n]):
            return n
    return 0


class StreamSplitter:
    """The text deltas of a streamed answer that may hold tool calls.

    ``feed(piece)`` returns what can be shown now: the answer up to the first ``<tool_call>``, holding back white
    space at its end and what may be the beginning of ``<tool_call>``; nothing once a block has begun (calls are
    whole only at the end, and a malformed one turns the whole answer into text). ``rest(content)`` returns the
    rest of the final content (``parse(answer).content``). Whatever the answer and however it is cut into
    pieces, the deltas joined equal that content. Raises nothing."""

    def __init__(self) -> None:
        self.buffer = ""
        self.shown = ""
        self.blocked = False

    def feed(self, piece: str) -> str:
        self.buffer += piece
        if self.blocked:
            return ""
        at = self.buffer.find(START, max(0, len(self.shown) - len(START)))
        if at >= 0:
            self.blocked = True
            end = len(self.buffer[:at].rstrip())
        else:
            end = len(self.buffer[: len(self.buffer) - _partial_start(self.buffer)].rstrip())
        out = self.buffer[len(self.shown) : end] if end > len(self.shown) else ""
        self.shown += out
        return out

    def rest(self, content: str) -> str:
        return content[len(self.shown) :] if content.startswith(self.shown) else ""


__all__ = ["END", "START", "Parsed", "StreamSplitter", "new_call_id", "parse"]
