"""What a client learns about the server it talks to, and what a model name means there: a `qwenvl serve` that
forwards to DashScope says so (`"local": false` in its /v1/models), and every client in front of it counts the money
(the openai backend, whose answers were once taken for a free local model's, with cost caps skipped); the openai
backend tells a qwenvl serve from its listing with that one probe; a name in other case is a DashScope name only when
the model table has it in lower case (no "did you mean" naming a model DashScope does not have). Real loopback
servers: the DashScope double (tests/dashscope_server.py) behind a real `qwenvl serve` app in a thread, and the vLLM
double (tests/engine_server.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from PIL import Image

import qwenvl
from conftest import run_cli, write_image
from dashscope_server import DashScopeServer
from qwenvl.server.app import ServeSettings, create_app
from test_serve import SERVE_KEY, Served, gateway

KEYS = {"DASHSCOPE_API_KEY": SERVE_KEY, "QWENVL_OPENAI_API_KEY": SERVE_KEY}
PAID = "qwen3-vl-plus"


@pytest.fixture
def cloud(server: DashScopeServer) -> Iterator[Served]:
    """A qwenvl serve forwarding to (the double of) DashScope: every model it lists is paid for."""
    with gateway(server) as s:
        yield s


def model_posts(server: DashScopeServer) -> list:
    return [r for r in server.requests if r.method == "POST"]


def openai_at(s: Served) -> list[str]:
    return ["--backend", "openai", "--base-url", s.url + "/v1", "-m", PAID]


def pdf(path: Path, pages: int = 2) -> Path:
    images = [Image.new("RGB", (320, 240), c) for c in ("white", "gray", "black")[:pages]]
    images[0].save(path, save_all=True, append_images=images[1:])
    return path


# --- 1. money: the openai backend at a serve that forwards to DashScope ------------------------------------------


def test_the_openai_backend_at_a_cloud_gateway_counts_the_money(cloud: Served, isolated_env: Path) -> None:
    from qwenvl.models import answer_cost
    from qwenvl.store import UsageLog

    with qwenvl.Client(backend="openai", base_url=cloud.url + "/v1", api_key=SERVE_KEY, model=PAID) as c:
        assert not c.is_local
        info = c.resolve_model()
        assert info.has_price and info.known and not info.local_family
        r = c.ask("hi", max_tokens=3)
    assert not r.local and r.protocol == "compat"
    cost = answer_cost(r)
    assert cost is not None and cost > 0
    rows = [row for row in UsageLog().summarize() if row["requests"]]
    assert rows and all(not row["local"] and row["cost"] and row["currency"] == "CNY" for row in rows), rows


def test_the_async_openai_backend_at_a_cloud_gateway_counts_the_money(cloud: Served) -> None:
    from qwenvl.models import answer_cost

    async def go() -> qwenvl.Response:
        async with qwenvl.AsyncClient(backend="openai", base_url=cloud.url + "/v1", api_key=SERVE_KEY) as c:
            assert not c.is_local
            return await c.ask("hi", model=PAID, max_tokens=3)

    r = asyncio.run(go())
    assert not r.local and (answer_cost(r) or 0) > 0


def test_a_cost_cap_is_checked_through_the_openai_backend(
    cloud: Served, server: DashScopeServer, isolated_env: Path
) -> None:
    doc = pdf(isolated_env / "doc.pdf")
    p = run_cli("ocr", str(doc), *openai_at(cloud), "--max-cost", "0", env=KEYS)
    assert p.returncode == 2, p.stderr
    assert "estimated cost" in p.stderr and "does not apply" not in p.stderr, p.stderr
    assert model_posts(server) == []  # nothing was sent, nothing paid
    dry = json.loads(run_cli("ocr", str(doc), *openai_at(cloud), "--dry-run", env=KEYS).stdout)
    est = dry["estimate"]
    assert est["local"] is False and est["currency"] == "CNY" and est["cost_max"] > 0, est
    assert model_posts(server) == []


def test_ask_and_tokens_through_the_openai_backend_say_the_cost(
    cloud: Served, server: DashScopeServer, isolated_env: Path
) -> None:
    photo = write_image(isolated_env / "photo.png", (320, 240))
    p = run_cli("ask", "hi", str(photo), *openai_at(cloud), "--max-tokens", "3", "--json", env=KEYS)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["local"] is False and data["currency"] == "CNY" and data["cost"] > 0, data
    p = run_cli("tokens", str(photo), *openai_at(cloud), "--json", env=KEYS)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["local"] is False and data["currency"] == "CNY" and data["total"]["cost"] > 0, data
    dry = json.loads(run_cli("ask", "hi", str(photo), *openai_at(cloud), "--dry-run", env=KEYS).stdout)
    assert dry["estimate"]["local"] is False and dry["estimate"]["cost_max"] > 0, dry["estimate"]
    assert len(model_posts(server)) == 1  # the one ask


def test_a_serve_in_front_of_a_cloud_gateway_says_it_is_paid(cloud: Served) -> None:
    """Serve (openai backend) in front of a serve that forwards to DashScope: its own listing says `local: false`
    truthfully, and a DashScope-protocol client of it prices the model."""
    client = qwenvl.AsyncClient(backend="openai", base_url=cloud.url + "/v1", api_key=SERVE_KEY)
    with Served(create_app(client, ServeSettings(api_key=SERVE_KEY, model_map={PAID: None}))) as front:
        reply = httpx.get(front.url + "/v1/models", headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=30)
        (entry,) = reply.json()["data"]
        assert entry["id"] == PAID and entry["local"] is False, entry
        with qwenvl.Client(api_key=SERVE_KEY, base_url=front.url, model=PAID) as c:
            assert not c.is_local and c.resolve_model().has_price


# --- 4. a qwenvl serve is told by its listing, with one probe ----------------------------------------------------


def test_the_openai_backend_tells_a_qwenvl_serve_from_one_probe(cloud: Served) -> None:
    from qwenvl.backends.openai import OpenAIBackend

    asked: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: asked.append(r.url.path)]}) as http:
        backend = OpenAIBackend(base_url=cloud.url + "/v1", api_key=SERVE_KEY, http_client=http)
        info = backend.server()
        assert info.engine == "qwenvl" and backend.engine == "qwenvl"
        assert backend.serves_paid(PAID) and backend.model_info(PAID).has_price
    assert asked == ["/v1/models"]


# --- 5. a name in other case suggests only a model DashScope has -------------------------------------------------


def test_a_name_in_other_case_suggests_only_a_model_the_table_has(monkeypatch) -> None:
    from qwenvl.models import near_model, typo_error
    from qwenvl.transport import Transport

    def asked(*a, **kw):
        raise AssertionError("DashScope's own host was asked for a listing")

    monkeypatch.setattr(Transport, "get_json", asked)
    assert near_model("Qwen3-VL-Tiny") is None and near_model("QWEN3-VL-PLUS") == PAID
    refused = typo_error("Qwen3-VL-Tiny")
    assert refused is not None and "lower case and exact" in refused.message
    assert "qwen3-vl-tiny?" not in str(refused) and "did you mean" not in str(refused)
    for name, meant in (("Qwen3-VL-Tiny", None), ("QWEN3-VL-PLUS", PAID)):
        with qwenvl.Client(api_key="sk-x", model=name) as c, pytest.raises(qwenvl.UsageError) as caught:
            c.plan(prompt="hi")
        said = str(caught.value) + (caught.value.hint or "")
        if meant is None:
            assert "did you mean" not in said and "qwen3-vl-tiny?" not in said, said
        else:
            assert f"did you mean {meant}?" in said, said


def test_the_cli_names_no_model_dashscope_does_not_have(server: DashScopeServer, env, isolated_env: Path) -> None:
    write_image(isolated_env / "x.png", (64, 64))
    tiny = "Qwen3-VL-Tiny"
    for args in (["ask", "hi", "-m", tiny], ["models", tiny], ["tokens", "x.png", "-m", tiny]):
        p = run_cli(*args, env=env)
        assert p.returncode == 2, (args, p.stderr)
        assert "qwen3-vl-tiny" not in p.stderr.replace("Qwen3-VL-Tiny", ""), (args, p.stderr)
        assert "None" not in p.stderr and "did you mean" not in p.stderr, (args, p.stderr)
    assert model_posts(server) == []


def test_the_openai_backend_at_a_local_engine_stays_free(isolated_env: Path) -> None:
    """vLLM says nothing of money: its model stays local (no price)."""
    from engine_server import EngineServer
    from qwenvl.models import answer_cost, answer_paid

    with EngineServer(engine="vllm", served="qwen2.5-vl-tiny") as e:
        with qwenvl.Client(backend="openai", base_url=e.base_url) as c:
            assert c.is_local and not c.serves_paid()
            r = c.ask("hi", max_tokens=3)
        assert not answer_paid(r) and answer_cost(r) is None
        assert c.backend.engine == "vllm"


# --- 3. a name serve accepts but does not list (a model folder's path) -------------------------------------------

HIDDEN = "/srv/models/Qwen2.5-VL-3B-Instruct"  # the folder a local serve was started with: accepted, never listed


@pytest.fixture
def folder_named() -> Iterator[tuple[object, Served]]:
    from engine_server import EngineServer
    from test_serve import engine_gateway

    with (
        EngineServer(engine="vllm", served="tiny", root=HIDDEN) as e,
        engine_gateway(e, model_map={"tiny": None, HIDDEN: None}, unlisted_models=[HIDDEN]) as s,
    ):
        yield e, s


def test_serve_answers_for_a_name_it_accepts_but_does_not_list(folder_named: tuple[object, Served]) -> None:
    _, serve = folder_named
    auth = {"Authorization": f"Bearer {SERVE_KEY}"}
    listed = httpx.get(serve.url + "/v1/models", headers=auth, timeout=30).json()["data"]
    assert [e["id"] for e in listed] == ["tiny"]  # the folder stays out of the listing
    reply = httpx.get(serve.url + "/v1/models/" + quote(HIDDEN, safe=""), headers=auth, timeout=30)
    assert reply.status_code == 200 and reply.json()["id"] == HIDDEN and reply.json()["local"] is True, reply.text
    missing = httpx.get(serve.url + "/compatible-mode/v1/models/other", headers=auth, timeout=30)
    assert missing.status_code == 404 and "this server serves tiny" in missing.text, missing.text


@pytest.mark.parametrize("how", ["openai", "compat", "native"])
def test_every_client_accepts_what_serve_accepts(folder_named: tuple[object, Served], how: str) -> None:
    engine, serve = folder_named
    if how == "openai":
        c = qwenvl.Client(backend="openai", base_url=serve.url + "/v1", api_key=SERVE_KEY)
    else:
        c = qwenvl.Client(base_url=serve.url, api_key=SERVE_KEY, protocol=how)
    with c:
        r = c.ask("hi", model=HIDDEN, max_tokens=3)
        assert r.text and c.resolve_model(HIDDEN).family == "qwen2.5-vl"
        with pytest.raises(qwenvl.UsageError) as caught:  # a name serve does not accept: still refused, nothing sent
            c.ask("hi", model="/srv/models/other", max_tokens=3)
        assert "tiny" in str(caught.value), caught.value
    assert len(engine.chats()) == 1  # type: ignore[attr-defined]


def test_the_cli_takes_a_folder_name_serve_accepts(folder_named: tuple[object, Served], isolated_env: Path) -> None:
    engine, serve = folder_named
    photo = write_image(isolated_env / "photo.png", (320, 240))
    for where in (["--backend", "openai", "--base-url", serve.url + "/v1"], ["--base-url", serve.url]):
        p = run_cli("ask", "hi", str(photo), *where, "-m", HIDDEN, "--max-tokens", "3", env=KEYS)
        assert p.returncode == 0, p.stderr
        p = run_cli("tokens", str(photo), *where, "-m", HIDDEN, "--json", env=KEYS)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["factor"] == 28
    assert len(engine.chats()) == 2  # type: ignore[attr-defined]


def test_mcp_tools_through_the_openai_backend_count_the_money(
    cloud: Served, server: DashScopeServer, isolated_env: Path
) -> None:
    """`qwenvl mcp --backend openai` at a serve that forwards to DashScope: the ask tool's cost and the estimate
    tool's are DashScope's, never "local"."""
    pytest.importorskip("mcp")
    from test_mcp import run, stdio_session, text_of

    photo = write_image(isolated_env / "photo.png", (320, 240))
    where = ["--backend", "openai", "--base-url", cloud.url + "/v1", "--allow-dir", str(isolated_env)]

    async def main() -> tuple[dict, dict]:
        async with stdio_session({**KEYS, "QWENVL_MODEL": PAID}, *where) as c:
            asked = await c.call_tool("ask", {"prompt": "hi", "media": [photo.name], "options": {"max_tokens": 3}})
            assert not asked.is_error, text_of(asked)
            est = await c.call_tool("estimate", {"files": [photo.name]})
            assert not est.is_error, text_of(est)
            return asked.structured_content, est.structured_content

    asked, est = run(main)
    assert asked["local"] is False and asked["currency"] == "CNY" and asked["cost"] > 0, asked
    assert est["local"] is False and est["currency"] == "CNY" and est["total"]["cost"] > 0, est
    assert len(model_posts(server)) == 1
