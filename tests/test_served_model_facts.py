"""A client in front of a local model served by `qwenvl serve` (or by vLLM directly) knows what it talks to: serve's
`/v1/models` lists per model what vLLM lists (`max_model_len`, `root`, `owned_by`) plus the model's family and that
it is local (no price); the client learns them once (the openai backend from its listing; DashScope's protocols at a
server that is not DashScope's own from one `GET .../models`), so task defaults fit the engine's context, cost caps
treat the model as free and estimates use the family's rule. Real loopback servers: a vLLM double
(tests/engine_server.py) behind a real `qwenvl serve` app in a thread, and the DashScope double for the cloud path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

import qwenvl
from conftest import make_client, run_cli, write_image
from engine_server import EngineServer
from qwenvl.server.app import ServeSettings, create_app
from test_serve import SERVE_KEY, Served, engine_gateway

SERVED = "tiny"  # a served name that says no family: the family comes from the listing (vLLM's root, serve's family)
ROOT = "/srv/models/Qwen2.5-VL-3B-Instruct"  # where the engine loaded it from: a path on the server
WINDOW = 4096


@pytest.fixture
def engine() -> Iterator[EngineServer]:
    with EngineServer(engine="vllm", served=SERVED, root=ROOT, max_model_len=WINDOW) as srv:
        yield srv


@pytest.fixture
def serve(engine: EngineServer) -> Iterator[Served]:
    with engine_gateway(engine) as s:
        yield s


def listing(url: str) -> list[dict]:
    reply = httpx.get(url, headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def pdf(path: Path, pages: int = 2) -> Path:
    images = [Image.new("RGB", (320, 240), c) for c in ("white", "gray", "black")[:pages]]
    images[0].save(path, save_all=True, append_images=images[1:])
    return path


# --- 1. what serve lists ------------------------------------------------------------------------------------------


def test_serve_lists_vllms_fields_the_family_and_that_the_model_is_local(serve: Served) -> None:
    for path in ("/v1/models", "/compatible-mode/v1/models"):
        (entry,) = listing(serve.url + path)
        assert entry["id"] == SERVED and entry["owned_by"] == "qwenvl" and entry["object"] == "model"
        assert entry["max_model_len"] == WINDOW  # the engine's own context, not the family's 128K
        assert entry["family"] == "qwen2.5-vl"  # told by the engine's root, which the client never sees
        assert entry["local"] is True and entry["root"] == SERVED
        assert "/srv/" not in json.dumps(entry)  # no server path


def test_a_gateway_lists_the_cloud_models_as_priced(server) -> None:
    client = qwenvl.AsyncClient(api_key="sk-test", base_url=server.url)
    with Served(create_app(client, ServeSettings(api_key=SERVE_KEY))) as s:
        entries = {e["id"]: e for e in listing(s.url + "/v1/models")}
    plus = entries["qwen3-vl-plus"]
    assert plus["local"] is False and plus["family"] == "qwen3-vl" and plus["max_model_len"] == 262_144


# --- 2. the client learns them: library ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_a_dashscope_protocol_client_of_serve_knows_the_model_is_local(serve: Served, protocol: str) -> None:
    with qwenvl.Client(api_key=SERVE_KEY, base_url=serve.url, protocol=protocol, model=SERVED) as c:
        assert c.is_local
        info = c.resolve_model()
        assert (info.family, info.factor, info.context_tokens, info.has_price) == ("qwen2.5-vl", 28, WINDOW, False)
        r = c.ask("hi", max_tokens=3)
        assert r.text


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_a_served_local_models_answer_costs_nothing_anywhere(serve: Served, protocol: str, isolated_env: Path) -> None:
    """The answer came over a paid protocol, from a local model: no price in the footer, the usage log or the
    answer's cost (never "cost unknown" as for an unpriced cloud model)."""
    from qwenvl.cli.common import usage_line
    from qwenvl.models import answer_cost
    from qwenvl.store import UsageLog

    with qwenvl.Client(api_key=SERVE_KEY, base_url=serve.url, protocol=protocol, model=SERVED) as c:
        response = c.ask("hi", max_tokens=3)
    assert response.local and answer_cost(response) is None
    line = usage_line(response)
    assert "cost: local" in line and "unknown" not in line, line
    rows = [r for r in UsageLog().summarize() if r["requests"]]
    assert rows and all(r["local"] and r["cost"] is None and r["currency"] is None for r in rows), rows


def test_an_openai_backend_client_of_serve_takes_the_family_and_context_from_its_listing(serve: Served) -> None:
    with qwenvl.Client(backend="openai", base_url=serve.url + "/v1", api_key=SERVE_KEY) as c:
        info = c.resolve_model()
    assert (info.name, info.family, info.context_tokens) == (SERVED, "qwen2.5-vl", WINDOW)


def test_the_library_task_defaults_fit_through_serve_sync_and_async(
    serve: Served, engine: EngineServer, isolated_env: Path
) -> None:
    from qwenvl.tasks import aocr, ocr

    photo = write_image(isolated_env / "photo.png", (320, 240))
    with qwenvl.Client(api_key=SERVE_KEY, base_url=serve.url, model=SERVED) as c:
        ocr(c, str(photo))

    async def go() -> None:
        async with qwenvl.AsyncClient(api_key=SERVE_KEY, base_url=serve.url, protocol="native") as c:
            await aocr(c, str(photo), model=SERVED)

    asyncio.run(go())
    sent = [chat.json["max_tokens"] for chat in engine.chats()]
    assert len(sent) == 2 and all(0 < n < 0.9 * WINDOW for n in sent), sent


def test_the_cloud_path_asks_nothing_more(server, png: Path) -> None:
    """A model the table lists is DashScope's: no listing is asked. A name it does not list, at a server that is not
    DashScope's own, is asked about once per client, whatever the number of calls; a server that lists nothing
    about it leaves today's rules (an unpriced cloud model)."""
    for protocol in ("compat", "native"):
        with make_client(server, protocol) as c:
            c.ask("hi", png)
            c.ask("again")
            assert not c.is_local
    assert not [r for r in server.requests if r.method == "GET"]
    with make_client(server, model="qwen3-vl-plus-ft") as c:  # not in the table: the server is asked, once
        for _ in range(3):
            assert not c.is_local and c.resolve_model().has_price is False
            c.ask("hi")
    assert [r.path for r in server.requests if r.method == "GET"] == ["/compatible-mode/v1/models"]


# --- 2. the client learns them: CLI -------------------------------------------------------------------------------


def through(serve: Served, how: str) -> list[str]:
    if how == "openai":
        return ["--backend", "openai", "--base-url", serve.url + "/v1"]
    return ["--base-url", serve.url, *(["--protocol", how] if how != "compat" else []), "-m", SERVED]


KEYS = {"DASHSCOPE_API_KEY": SERVE_KEY, "QWENVL_OPENAI_API_KEY": SERVE_KEY}


@pytest.mark.parametrize("how", ["compat", "native", "openai"])
def test_cli_ocr_through_serve_fits_the_engines_context(
    serve: Served, engine: EngineServer, isolated_env: Path, how: str
) -> None:
    photo = write_image(isolated_env / "photo.png", (320, 240))
    p = run_cli("ocr", str(photo), *through(serve, how), env=KEYS)
    assert p.returncode == 0, p.stderr
    assert "warning" not in p.stderr, p.stderr  # no guessed family, no "near the context" of our own default
    (chat,) = engine.chats()
    assert 0 < chat.json["max_tokens"] < 0.9 * WINDOW


@pytest.mark.parametrize("how", ["compat", "native"])
def test_cli_cost_cap_treats_a_served_local_model_as_free(
    serve: Served, engine: EngineServer, isolated_env: Path, how: str
) -> None:
    doc = pdf(isolated_env / "doc.pdf", pages=2)
    p = run_cli("ocr", str(doc), *through(serve, how), env=KEYS)  # no --yes
    assert p.returncode == 0, p.stderr
    assert len(engine.chats()) == 2
    dry = json.loads(run_cli("ocr", str(doc), *through(serve, how), "--dry-run", env=KEYS).stdout)
    assert dry["estimate"]["local"] is True and dry["estimate"]["currency"] is None, dry["estimate"]
    assert dry["total"]["local"] is True and dry["estimate"]["max_output_tokens"] < 0.9 * WINDOW


@pytest.mark.parametrize("how", ["compat", "openai"])
def test_cli_tokens_through_serve_uses_the_familys_rule(serve: Served, isolated_env: Path, how: str) -> None:
    photo = write_image(isolated_env / "photo.png", (224, 224))
    p = run_cli("tokens", str(photo), *through(serve, how), "--json", env=KEYS)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["factor"] == 28 and data["total"]["tokens"] == 64 + 2  # 16 x 16 at 28 px, and the two markers
    assert data["local"] is True and data["currency"] is None


# --- 4. a default we chose never warns; any warning is said once per run ------------------------------------------


def test_local_ocr_default_does_not_warn_and_a_real_warning_prints_once(isolated_env: Path) -> None:
    doc = pdf(isolated_env / "doc.pdf", pages=2)
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny", max_model_len=WINDOW) as e:
        p = run_cli("ocr", str(doc), "--backend", "openai", "--base-url", e.base_url)
        assert p.returncode == 0, p.stderr
        assert "warning" not in p.stderr, p.stderr
        assert all(0 < c.json["max_tokens"] < 0.9 * WINDOW for c in e.chats())
    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny", max_model_len=1500) as e:  # a page nearly fills it
        p = run_cli("ocr", str(doc), "--backend", "openai", "--base-url", e.base_url)
        assert p.returncode == 0, p.stderr
        assert p.stderr.count("near or over") == 1, p.stderr  # the estimate's and each page's: the same warning
        assert len(e.chats()) == 2


# --- 3. a serve refusal's own advice is the hint ------------------------------------------------------------------


@pytest.fixture
def mapped(engine: EngineServer) -> Iterator[Served]:
    """Serve in front of the engine under a cloud model's name: a client takes qwen-vl-max's rules from the table (a
    128K context), so a request the engine's 4K context cannot hold reaches the server, which refuses it."""
    with engine_gateway(engine, model_map={"qwen-vl-max": None}) as s:
        yield s


@pytest.mark.parametrize("protocol", ["compat", "native"])
@pytest.mark.parametrize("stream", [False, True])
def test_the_library_error_carries_the_servers_advice_as_its_hint(mapped: Served, protocol: str, stream: bool) -> None:
    field = "max_tokens" if protocol == "compat" else "parameters.max_tokens"
    c = qwenvl.Client(api_key=SERVE_KEY, base_url=mapped.url, protocol=protocol, max_retries=0)
    with c, pytest.raises(qwenvl.BadRequestError) as caught:
        if stream:
            list(c.stream(prompt="hi", model="qwen-vl-max", max_tokens=WINDOW))
        else:
            c.ask("hi", model="qwen-vl-max", max_tokens=WINDOW)
    exc = caught.value
    assert exc.hint is not None and exc.hint.startswith(f"Lower {field} (4,096) to at most about"), exc.hint
    assert "Lower" not in exc.message and "too long for" in exc.message  # said once: on the hint line


@pytest.mark.parametrize("how", ["compat", "native"])
def test_the_cli_hint_line_is_the_servers_advice(mapped: Served, isolated_env: Path, how: str) -> None:
    where = ["--base-url", mapped.url, "--protocol", how]
    p = run_cli("ask", "hi", "-m", "qwen-vl-max", "--max-tokens", str(WINDOW), *where, env=KEYS)
    assert p.returncode == 5, p.stderr
    hint = [line for line in p.stderr.splitlines() if line.startswith("hint:")]
    assert len(hint) == 1 and "Lower" in hint[0] and "(4,096)" in hint[0], p.stderr
    assert p.stderr.count("Lower") == 1, p.stderr


def test_the_openai_backend_hint_line_is_the_servers_advice(serve: Served, isolated_env: Path) -> None:
    """An image URL serve will not fetch (a private address): its refusal's advice is the hint line."""
    where = ["--backend", "openai", "--base-url", serve.url + "/v1"]
    p = run_cli("ask", "hi", "http://127.0.0.1:9/photo.png", *where, env=KEYS)
    assert p.returncode == 5, p.stderr
    hint = [line for line in p.stderr.splitlines() if line.startswith("hint:")]
    assert hint == ["hint: Send the file as a data: URL."], p.stderr
    assert p.stderr.count("data: URL") == 1, p.stderr


# --- 5. a served name the table does not know is the server's ---------------------------------------------------

TINY = "Qwen3-VL-Tiny"  # a local model folder's name, as serve lists it: not lower case, not in the table


@pytest.fixture
def tiny() -> Iterator[tuple[EngineServer, Served]]:
    with EngineServer(engine="vllm", served=TINY, max_model_len=WINDOW) as e, engine_gateway(e) as s:
        yield e, s


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_a_name_the_server_lists_is_accepted_with_its_facts(tiny: tuple[EngineServer, Served], protocol: str) -> None:
    """Found by a new user: serve listed `Qwen3-VL-Tiny`, and the client refused it as DashScope's misspelling
    ("did you mean qwen3-vl-tiny?", which the server then 404s); the listing is asked first, once per client."""
    engine, serve = tiny
    with qwenvl.Client(api_key=SERVE_KEY, base_url=serve.url, protocol=protocol, model=TINY) as c:
        assert c.resolve_model().family == "qwen3-vl" and c.is_local
        assert c.ask("hi", max_tokens=3).text
        with pytest.raises(qwenvl.UsageError) as caught:  # one it does not list: refused, naming what it serves
            c.ask("hi", model="Qwen3-VL-Huge", max_tokens=3)
    assert f"this server serves {TINY}" in caught.value.message and "did you mean" not in str(caught.value)
    assert len(engine.chats()) == 1


@pytest.mark.parametrize("verb", ["ask", "tokens", "ocr"])
def test_every_verb_takes_the_servers_name_and_refuses_one_it_does_not_serve(
    tiny: tuple[EngineServer, Served], isolated_env: Path, verb: str
) -> None:
    engine, serve = tiny
    photo = write_image(isolated_env / "photo.png", (320, 240))
    extra = ["hi", "--max-tokens", "3"] if verb == "ask" else []
    p = run_cli(verb, str(photo), *extra, "--base-url", serve.url, "-m", TINY, env=KEYS)
    assert p.returncode == 0, p.stderr
    assert "did you mean" not in p.stderr and "warning" not in p.stderr, p.stderr
    p = run_cli(verb, str(photo), *extra, "--base-url", serve.url, "-m", "qwen3-vl-tiny", env=KEYS)
    assert p.returncode == 2, p.stderr
    assert f"qwen3-vl-tiny is not a model the server at {serve.url} serves: this server serves {TINY}" in p.stderr
    assert len(engine.chats()) == (0 if verb == "tokens" else 1)


def test_dashscopes_own_host_is_not_asked_and_keeps_the_misspelling_check(monkeypatch) -> None:
    from qwenvl.transport import Transport

    def asked(*a, **kw):
        raise AssertionError("DashScope's own host was asked for a listing")

    monkeypatch.setattr(Transport, "get_json", asked)
    for url in (None, "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"):
        with qwenvl.Client(api_key="sk-x", base_url=url, model=TINY) as c, pytest.raises(qwenvl.UsageError) as caught:
            c.plan(prompt="hi")
        # refused as DashScope's names are exact, naming no model DashScope does not have (no qwen3-vl-tiny)
        assert "lower case and exact" in caught.value.message and "did you mean" not in caught.value.message
