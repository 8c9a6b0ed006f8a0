"""The response cache: opt-in for the library, keyed by the prepared wire body (media content included)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import qwenvl
from conftest import API_KEY, make_client, write_image
from dashscope_server import Reply
from qwenvl.errors import MissingAPIKeyError
from qwenvl.store import ResponseCache, default_cache_dir
from qwenvl.store.cache import cache_key


def model_calls(server) -> int:
    return sum(r.path.endswith(("/chat/completions", "/generation")) for r in server.requests)


def test_off_by_default(server):
    with make_client(server) as c:
        assert c.cache is None
        c.ask("hello")
        c.ask("hello")
    assert model_calls(server) == 2


def test_identical_request_is_answered_from_the_cache(server, protocol, png):
    with make_client(server, protocol, cache=True) as c:
        first = c.ask("What colour?", str(png))
        second = c.ask("What colour?", str(png))
    assert model_calls(server) == 1
    assert not first.cached and second.cached
    assert second.text == first.text and second.request_id == first.request_id
    assert second.usage.input_tokens == first.usage.input_tokens
    assert second.messages[-1].role == "assistant" and second.messages[0].role == "user"
    assert (Path(os.environ["QWENVL_CACHE_DIR"]) / "responses.db").exists()
    assert default_cache_dir() == Path(os.environ["QWENVL_CACHE_DIR"])


def test_key_follows_media_content_not_names(server, isolated_env):
    a = write_image(isolated_env / "a.png", color=(10, 200, 10))
    copy = isolated_env / "copy-of-a.png"
    copy.write_bytes(a.read_bytes())
    other = write_image(isolated_env / "b.png", color=(10, 10, 200))
    with make_client(server, cache=True) as c:
        c.ask("describe", str(a))
        assert c.ask("describe", str(copy)).cached  # same bytes, another name
        assert not c.ask("describe", str(other)).cached  # other pixels
        write_image(a, color=(250, 0, 0))  # the file is edited in place
        assert not c.ask("describe", str(a)).cached
    assert model_calls(server) == 3


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 99},
        {"temperature": 0.7},
        {"model": "qwen3-vl-flash"},
        {"system": "be brief"},
        {"json_mode": True},
    ],
)
def test_any_parameter_change_misses(server, change):
    server.enqueue(Reply(text='{"ok": true}', times=2))
    with make_client(server, cache=True) as c:
        c.complete(prompt="same words")
        assert not c.complete(prompt="same words", **change).cached
    assert model_calls(server) == 2


def test_network_settings_do_not_change_the_key(server):
    with make_client(server, cache=True) as c:
        c.complete(prompt="x", timeout_s=30, max_retries=0)
        assert c.complete(prompt="x", timeout_s=99, max_retries=5).cached


def test_endpoint_is_part_of_the_key(server):
    key = cache_key("compat", "http://a/compatible-mode/v1", {"model": "m", "messages": []})
    assert key != cache_key("compat", "http://b/compatible-mode/v1", {"model": "m", "messages": []})
    assert key != cache_key("native", "http://a/compatible-mode/v1", {"model": "m", "messages": []})
    assert key == cache_key("compat", "http://a/compatible-mode/v1", {"messages": [], "model": "m"})


def test_errors_are_not_cached(server):
    server.enqueue(Reply(status=400, error_message="nope"))
    with make_client(server, cache=True) as c:
        with pytest.raises(qwenvl.BadRequestError):
            c.ask("x")
        assert not c.ask("x").cached
        assert c.ask("x").cached
    assert model_calls(server) == 2


def test_structured_output_is_validated_again_on_a_hit(server):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    server.enqueue(Reply(text='{"n": 3}'))
    with make_client(server, cache=True) as c:
        first = c.complete(prompt="count", schema=schema)
        second = c.complete(prompt="count", schema=schema)
    assert first.json == second.json == {"n": 3} and second.cached


def test_a_hit_is_the_accounts_own(server, monkeypatch):
    """The same key found another way (the environment) hits; no key is no account: nothing is answered for it
    from another account's answers (it needs a key, as any request)."""
    with make_client(server, cache=True) as c:
        c.ask("cached question")
    keyless = qwenvl.Client(base_url=server.url, cache=True)
    with pytest.raises(MissingAPIKeyError):
        keyless.ask("cached question")
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    assert qwenvl.Client(base_url=server.url, cache=True).ask("cached question").cached
    assert model_calls(server) == 1


def test_streams_bypass_the_cache(server):
    with make_client(server, cache=True) as c:
        c.ask("streamed")
        events = list(c.stream(prompt="streamed"))
    assert events[-1].response is not None and not events[-1].response.cached
    assert model_calls(server) == 2


def test_async_client(server):
    async def main() -> tuple[bool, bool]:
        async with qwenvl.AsyncClient(api_key=API_KEY, base_url=server.url, cache=True) as c:
            a = await c.ask("async")
            b = await c.ask("async")
            return a.cached, b.cached

    assert asyncio.run(main()) == (False, True)
    assert model_calls(server) == 1


def test_explicit_path_and_instance(server, tmp_path):
    path = tmp_path / "elsewhere" / "mine.db"
    with make_client(server, cache=str(path)) as c:
        c.ask("x")
    assert path.exists() and len(ResponseCache(path)) == 1
    shared = ResponseCache(path)
    with make_client(server, cache=shared) as c:
        assert c.cache is shared and c.ask("x").cached


def test_expired_entries_are_not_used(server, tmp_path):
    cache = ResponseCache(tmp_path / "c.db", max_age_s=0)
    with make_client(server, cache=cache) as c:
        c.ask("x")
        assert not c.ask("x").cached


def test_a_broken_cache_file_is_ignored(server, tmp_path):
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not a database" * 100)
    with make_client(server, cache=path) as c:
        assert c.ask("x").text.startswith("echo: x")
        assert not c.ask("x").cached
