"""The library's hints and messages in its own words, by kind: a flag with its value (``-o another.jsonl``,
``--model Qwen/...``) becomes the keyword with it, a short flag as its long one, an empty prompt has a hint, a key the
caller gave that was refused is named as theirs, and ``repr()`` of an error says what ``str()`` says."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY
from dashscope_server import Reply
from qwenvl.batch import Batch, BatchItem
from qwenvl.wording import library_hint, library_message

SRC = Path(__file__).resolve().parents[1] / "src" / "qwenvl"
_CLI_WORD = re.compile(r"(?<![\w-])(?:--[a-z][a-z-]*|-[op] )")


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("Write to a new output (-o another.jsonl) to keep both.", "Write to a new output (output='another.jsonl')"),
        ('Give a prompt (-p "...", prompt="...").', 'Give a prompt (prompt="...").'),
        ("For example --model Qwen/Qwen2.5-VL-3B-Instruct", "For example model='Qwen/Qwen2.5-VL-3B-Instruct'"),
        ("Use --max-tokens 4096 or --timeout 30.", "Use max_tokens=4096 or timeout_s=30."),
        ("Give --concurrency 1 or more.", "Give concurrency=1 or more."),
        ("page 5 (from --pages 5-)", "page 5 (from pages='5-')"),
    ],
)
def test_a_flag_with_its_value_is_the_keyword_with_it(written: str, said: str) -> None:
    assert library_hint(written).startswith(said), library_hint(written)
    assert library_message(written).startswith(said)


def test_no_library_reachable_message_keeps_a_flag_the_library_has_a_name_for() -> None:
    """Every string literal outside the CLI, the server and the MCP server that names a flag (not a docstring):
    in the library's words, no flag is left but the CLI's own (--yes: only the CLI asks for it)."""
    cli_only = {"--yes", "--session", "--allow-private-urls", "--max-cost", "--no-resize"}
    left: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        if {"cli", "server"} & set(path.relative_to(SRC).parts) or path.name in ("wording.py", "mcp_server.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                said = re.sub(r"`[^`]*`", "", library_hint(node.value))
                flags = set(_CLI_WORD.findall(said)) - cli_only
                if flags:
                    left.append(f"{path.name}:{node.lineno}: {said[:100]!r}")
    assert not left, "\n".join(left)


def test_prompt_hints_and_a_refused_argument_key(server, isolated_env) -> None:
    with qwenvl.Client(api_key=API_KEY, base_url=server.url, usage_log=False, max_retries=0) as client:
        with pytest.raises(qwenvl.UsageError) as caught:
            client.ask(None)  # type: ignore[arg-type]
        assert caught.value.hint == 'Give a prompt (prompt="...").'
        with pytest.raises(qwenvl.UsageError) as caught:
            client.ask("")
        assert caught.value.hint and "prompt=" in caught.value.hint and "-p" not in caught.value.hint
        assert '--prompt "..."' in (caught.value.raw_hint or "")  # the CLI keeps its flag
    server.enqueue(Reply(status=401, text='{"error": {"code": "invalid_api_key", "message": "bad key"}}'))
    with (
        pytest.raises(qwenvl.AuthenticationError) as caught,
        qwenvl.Client(api_key="sk-wrong", base_url=server.url, usage_log=False, max_retries=0) as client,
    ):
        client.ask("hi")
    hint = caught.value.hint or ""
    assert "the key given as api_key" in hint and "refused" in hint and "Client(api_key=...)" not in hint, hint


def test_a_refused_argument_key_at_dashscope_says_where_keys_are_made() -> None:
    from qwenvl.errors import KEY_PAGE, key_refused_hint

    hint = library_hint(key_refused_hint("argument") or "")
    assert hint.startswith("Check the key given as api_key: it was refused.") and KEY_PAGE in hint, hint
    assert "region='cn'" in hint and "Client(api_key=...)" not in hint


def test_a_changed_batch_says_its_output_as_the_library_takes_it(server, isolated_env) -> None:
    out = isolated_env / "o.jsonl"
    server.enqueue(Reply(text="x"))
    Batch(
        [BatchItem(id="1", request={"prompt": "hi"})], out, api_key=API_KEY, base_url=server.url, usage_log=False
    ).run()
    again = Batch(
        [BatchItem(id="1", request={"prompt": "hi2"})], out, api_key=API_KEY, base_url=server.url, usage_log=False
    )
    with pytest.raises(qwenvl.UsageError) as caught:
        again.run()
    assert "(prompt changed)" in str(caught.value)
    hint = caught.value.hint or ""
    assert "output='another.jsonl'" in hint and "fresh=True" in hint and not _CLI_WORD.search(hint), hint
    assert "-o another.jsonl" in (caught.value.raw_hint or "")


def test_repr_of_an_error_is_in_the_librarys_words(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # no torch: the import fails as it does where none is installed
    with pytest.raises(qwenvl.UsageError) as caught:
        qwenvl.Client(backend="transformers").ask("hi")
    assert "--" not in repr(caught.value) and "--" not in str(caught.value), repr(caught.value)
    assert "--backend transformers" in caught.value.as_written()


def test_a_schema_answer_cut_off_says_max_tokens_in_every_view(server, isolated_env) -> None:
    server.enqueue(Reply(text='{"a": "xx', finish_reason="length"))
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    with (
        qwenvl.Client(api_key=API_KEY, base_url=server.url, usage_log=False) as client,
        pytest.raises(qwenvl.StructuredOutputError) as caught,
    ):
        client.complete(prompt="hi", schema=schema, max_tokens=5)
    for view in (str(caught.value), repr(caught.value), caught.value.message, caught.value.hint or ""):
        assert "max_tokens" in view and "--" not in view, view
    assert "--max-tokens" in (caught.value.raw_hint or "")  # the CLI's words, kept for it
