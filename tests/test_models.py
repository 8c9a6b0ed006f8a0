"""The model table as Model Studio states it (issue 10): prices by tier and region, budgets, snapshots, limits,
and the rules that follow from them (high resolution, response_format, temporary storage), plus `qwenvl models`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pypdfium2 as pdfium
import pytest

import media_corpus as corpus
from conftest import make_client, run_cli, run_cli_process
from qwenvl import Client
from qwenvl.errors import MediaError, UsageError
from qwenvl.media.video import billed_frame_count, frame_plan, sample_count
from qwenvl.models import (
    MAX_VIDEO_FILE_BYTES,
    MODELS,
    currency_of,
    estimate_cost,
    format_cost,
    model_info,
    price_for,
)
from qwenvl.preview import preview
from qwenvl.store import UsageLog

GB = 1024**3


# --- the values, table-driven: (model, region, input tokens) -> price per 1M, currency, budget, factor ----------
@pytest.mark.parametrize(
    ("model", "region", "tokens", "price", "currency", "budget", "factor"),
    [
        ("qwen3-vl-plus", "cn", 1_000, (1.0, 10.0), "CNY", 2560, 32),
        ("qwen3-vl-plus", "cn", 32_768, (1.0, 10.0), "CNY", 2560, 32),  # 32K is still the first tier
        ("qwen3-vl-plus", "cn", 32_769, (1.5, 15.0), "CNY", 2560, 32),
        ("qwen3-vl-plus", "cn", 200_000, (3.0, 30.0), "CNY", 2560, 32),
        ("qwen3-vl-flash", "cn", 1_000, (0.15, 1.5), "CNY", 2560, 32),
        ("qwen3-vl-flash", "cn", 40_000, (0.3, 3.0), "CNY", 2560, 32),
        ("qwen3-vl-flash", "cn", 150_000, (0.6, 6.0), "CNY", 2560, 32),
        ("qwen3-vl-plus", "intl", 1_000, (0.20, 1.60), "USD", 2560, 32),
        ("qwen3-vl-plus", "intl", 40_000, (0.30, 2.40), "USD", 2560, 32),
        ("qwen3-vl-flash", "us", 1_000, (0.05, 0.40), "USD", 2560, 32),
        ("qwen-vl-max", "cn", 1_000, (1.6, 4.0), "CNY", 2560, 32),
        ("qwen-vl-max", "intl", 1_000, (0.80, 3.20), "USD", 2560, 32),
        ("qwen-vl-plus", "intl", 50_000, (0.21, 0.63), "USD", 2560, 32),  # flat: no tiers
        ("qwen-vl-max-latest", "cn", 1_000, (1.6, 4.0), "CNY", 2560, 32),
        ("qwen-vl-max-2025-08-13", "cn", 1_000, (1.6, 4.0), "CNY", 2560, 32),
        ("qwen-vl-plus-2025-08-15", "cn", 1_000, (0.8, 2.0), "CNY", 2560, 32),
        ("qwen-vl-plus-2025-07-10", "cn", 1_000, (0.8, 2.0), "CNY", 2560, 32),
        ("qwen-vl-max-2025-04-08", "cn", 1_000, (1.6, 4.0), "CNY", 1280, 28),
        ("qwen-vl-max-2025-04-02", "cn", 1_000, (1.6, 4.0), "CNY", 1280, 28),
        ("qwen-vl-max-2025-01-25", "cn", 1_000, (1.6, 4.0), "CNY", 1280, 28),
        ("qwen-vl-plus-2025-05-07", "cn", 1_000, (0.8, 2.0), "CNY", 1280, 28),
        ("qwen-vl-plus-2025-01-25", "cn", 1_000, (0.8, 2.0), "CNY", 1280, 28),
        ("qvq-max", "cn", 1_000, (8.0, 32.0), "CNY", 1280, 28),
        ("qvq-max", "intl", 1_000, (1.20, 4.80), "USD", 1280, 28),
        ("qwen-vl-ocr", "cn", 1_000, (0.3, 0.5), "CNY", 8192, 32),
        ("qwen-vl-ocr", "intl", 1_000, (0.07, 0.16), "USD", 8192, 32),
        ("qwen-vl-ocr-2025-08-28", "cn", 1_000, (5.0, 5.0), "CNY", 8192, 28),
        ("qwen-vl-ocr-2025-04-13", "cn", 1_000, (5.0, 5.0), "CNY", 8192, 28),
        ("qwen-vl-ocr-2024-10-28", "cn", 1_000, (5.0, 5.0), "CNY", 8192, 28),
    ],
)
def test_model_table(
    model: str, region: str, tokens: int, price: tuple[float, float], currency: str, budget: int, factor: int
) -> None:
    info = model_info(model)
    assert info.known
    p = price_for(info, tokens, region=region)
    assert p is not None and (p.input, p.output) == pytest.approx(price) and p.currency == currency
    assert (info.image_tokens, info.factor) == (budget, factor)
    # the whole request at its tier, input and output alike
    assert estimate_cost(info, tokens, 100, region=region) == pytest.approx((tokens * price[0] + 100 * price[1]) / 1e6)


def test_current_qwen_vl_max_budget_is_2560_tokens_at_32_px() -> None:
    assert model_info("qwen-vl-max").default_max_pixels == 2_621_440
    assert model_info("qwen-vl-plus-latest").default_max_pixels == 2_621_440


def test_ocr_limits() -> None:
    ocr = model_info("qwen-vl-ocr")
    assert (ocr.context_tokens, ocr.max_output_tokens, ocr.min_image_tokens, ocr.min_pixels) == (38_192, 8_192, 3, 3072)


@pytest.mark.parametrize(
    ("model", "frames"),
    [
        ("qwen-vl-max", 512),
        ("qwen-vl-plus", 512),
        ("qwen2.5-vl-7b-instruct", 512),
        ("qvq-max", 512),
        ("qvq-plus", 512),
        ("qwen3-vl-plus", 2000),
        ("qwen3-vl-flash", 2000),
    ],
)
def test_frame_limits(model: str, frames: int) -> None:
    assert model_info(model).video_max_frames == frames


@pytest.mark.parametrize(
    ("model", "url_limit"),
    [
        ("qwen3-vl-plus", 2 * GB),
        ("qwen3-vl-flash", 2 * GB),
        ("qwen-vl-max", 2 * GB),
        ("qwen-vl-plus", GB),
        ("qvq-max", GB),
        ("qwen2.5-vl-72b-instruct", GB),
    ],
)
def test_video_url_limits(model: str, url_limit: int) -> None:
    assert model_info(model).video_url_max_bytes == url_limit
    assert MAX_VIDEO_FILE_BYTES == 100 * 1024 * 1024


def test_currency_by_region(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (currency_of("cn"), currency_of("intl"), currency_of("us"), currency_of("singapore")) == (
        "CNY",
        "USD",
        "USD",
        "USD",
    )
    assert currency_of(None) == "CNY"
    monkeypatch.setenv("QWENVL_REGION", "intl")
    assert currency_of(None) == "USD"
    assert format_cost(0.0018, "CNY") == "¥0.0018" and format_cost(0.0003, "USD") == "$0.0003"
    assert format_cost(None, "USD") == "unknown"


def test_no_usd_price_is_unknown_not_cny() -> None:
    assert price_for("qwen2.5-vl-7b-instruct", 1000, region="intl") is None
    assert estimate_cost("qwen2.5-vl-7b-instruct", 1000, region="intl") is None
    assert estimate_cost("qwen2.5-vl-7b-instruct", 1000, region="cn") == pytest.approx(2.0 / 1000)


# --- snapshot resolution ---------------------------------------------------------------------------------------
def test_a_2025_01_25_snapshot_resolves_to_28_px() -> None:
    for name in ("qwen-vl-max-2025-01-25", "qwen-vl-plus-2025-01-25"):
        info = model_info(name)
        assert info.factor == 28 and info.image_tokens == 1280 and info.known
        assert "28-px" in info.resolution
    assert model_info("qwen-vl-max").factor == 32  # the alias is not what its old snapshots are


def test_latest_and_unlisted_snapshots(caplog: pytest.LogCaptureFixture) -> None:  # dated ones: test_library_faults
    latest = model_info("qwen-vl-plus-latest")
    assert latest.known and latest.factor == 32 and latest.entry == "qwen-vl-plus"
    with caplog.at_level(logging.WARNING, logger="qwenvl"):
        odd = model_info("qwen3-vl-plus-0101")
    assert not odd.known and odd.factor == 32 and odd.entry == "qwen3-vl-plus"
    assert [r.getMessage() for r in caplog.records] == [
        "qwen3-vl-plus-0101 is not in qwenvl's model table: estimates use a guessed family "
        "(qwen3-vl, 32 px per token); see `qwenvl models`"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qwenvl"):
        model_info("qwen3-vl-plus-0101")
    assert not caplog.records  # once per name


def test_every_value_has_a_source_comment() -> None:
    source = (Path(__file__).parents[1] / "src" / "qwenvl" / "models.py").read_text()
    for marker in ("[issue10", "[billing", "[card", "[tempstore", "[vision"):
        assert marker in source
    assert "stream_only" in source and model_info("qvq-max").stream_only and not model_info("qwen-vl-max").stream_only


# --- estimates use the request's tier, in the region's currency ----------------------------------------------
def nine_pages(tmp_path: Path) -> Path:
    pdf = pdfium.PdfDocument.new()
    for _ in range(9):
        pdf.new_page(595, 842)
    path = tmp_path / "nine.pdf"
    pdf.save(path)
    pdf.close()
    return path


def test_nine_page_request_over_32k_is_priced_at_the_second_tier(tmp_path: Path) -> None:
    doc = nine_pages(tmp_path)
    # about 4096 tokens a page: 9 pages are over 32K input tokens
    p = run_cli("tokens", str(doc), "--max-pixels", str(4096 * 1024), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    total = data["total"]["tokens"]
    assert len(data["items"]) == 9 and 32_768 < total < 128 * 1024
    assert data["price_tier"] == "32K-128K" and data["currency"] == "CNY"
    assert data["total"]["cost"] == pytest.approx(total * 1.5 / 1e6)
    assert sum(i["cost"] for i in data["items"]) == pytest.approx(total * 1.5 / 1e6)  # every page at that tier
    # the dry run of the request itself (library): the same tier, prompt included
    call = Client(api_key="sk-x").plan(
        prompt="summarize", images=[str(doc)], max_pixels=4096 * 1024, estimate_only=True
    )
    est = preview(call, protocol="compat", region="cn")["estimate"]
    assert est["price_tier"] == "32K-128K"
    assert est["cost_input"] == pytest.approx(est["input_tokens"] * 1.5 / 1e6)
    assert est["cost_max"] == pytest.approx((est["input_tokens"] * 1.5 + 512 * 15) / 1e6)


def test_region_intl_prices_in_usd(tmp_path: Path) -> None:
    photo = corpus.photo_jpeg(tmp_path, size=(4000, 3000))
    p = run_cli("tokens", str(photo), "--region", "intl", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["currency"] == "USD" and data["total"]["cost"] == pytest.approx(2496 * 0.20 / 1e6)
    table = run_cli("tokens", str(photo), "--region", "intl")
    assert "$0.00050" in table.stdout and "¥" not in table.stdout and "cost (USD)" in table.stdout
    call = Client(api_key="sk-x", region="intl").plan(prompt="x", image=str(photo), estimate_only=True)
    assert preview(call, protocol="compat", region="intl")["estimate"]["currency"] == "USD"


def test_qwen_vl_max_on_a_4000x3000_photo_is_about_2500_tokens(tmp_path: Path) -> None:
    photo = corpus.photo_jpeg(tmp_path, size=(4000, 3000))
    p = run_cli("tokens", str(photo), "--model", "qwen-vl-max", "--json")
    data = json.loads(p.stdout)
    item = data["items"][0]
    assert (item["width"], item["height"], item["tokens"]) == (1856, 1376, 2496)
    old = json.loads(run_cli("tokens", str(photo), "--model", "qwen-vl-max-2025-01-25", "--json").stdout)
    assert old["factor"] == 28 and old["items"][0]["tokens"] <= 1282 and old["items"][0]["width"] % 28 == 0


def test_unknown_model_warns_once_on_one_line(tmp_path: Path) -> None:
    photo = corpus.screenshot_png(tmp_path)
    p = run_cli_process("tokens", str(photo), "--model", "qwen9-vl-future")  # once per process: a fresh one
    assert p.returncode == 0
    warnings = [line for line in p.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: qwen9-vl-future is not in qwenvl's model table: estimates use a guessed "
        "family (qwen3-vl, 32 px per token; cost unknown); see `qwenvl models`"
    ]
    assert run_cli("tokens", str(photo)).stderr.count("warning:") == 0


def test_dry_run_of_a_guessed_model_warns(tmp_path: Path) -> None:
    photo = corpus.screenshot_png(tmp_path)
    p = run_cli("ask", str(photo), "-p", "x", "--model", "qwen2.5-vl-99b-instruct", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("warning: qwen2.5-vl-99b-instruct is not in qwenvl's model table") == 1


# --- high resolution: refused for the 28-px models and QVQ ---------------------------------------------------
@pytest.mark.parametrize(
    "model", ["qvq-max", "qwen2.5-vl-7b-instruct", "qwen-vl-max-2025-01-25", "qwen-vl-ocr-2025-04-13"]
)
def test_high_res_is_refused_for_28_px_models(model: str, tmp_path: Path) -> None:
    photo = str(corpus.screenshot_png(tmp_path))
    client = Client(api_key="sk-x")
    with pytest.raises(UsageError, match="does not support high-resolution"):
        client.plan(prompt="x", image=photo, model=model, vl_high_resolution_images=True)
    with pytest.raises(UsageError, match="detail='high'"):
        client.plan(prompt="x", image=photo, model=model, detail="high", estimate_only=True)
    client.plan(prompt="x", image=photo, model=model, vl_high_resolution_images=False)  # explicit off is fine
    p = run_cli("tokens", photo, "--model", model, "--high-res")
    assert p.returncode == 2 and "does not support high-resolution" in p.stderr and "Traceback" not in p.stderr


def test_high_res_is_kept_for_32_px_models(tmp_path: Path) -> None:
    photo = str(corpus.screenshot_png(tmp_path))
    for model in ("qwen3-vl-plus", "qwen-vl-max", "qwen-vl-plus-2025-08-15", "qwen-vl-ocr"):
        call = Client(api_key="sk-x").plan(prompt="x", image=photo, model=model, vl_high_resolution_images=True)
        assert call.params["vl_high_resolution_images"] is True


# --- response_format only where the model takes it ------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "thinking", "sent"),
    [
        ("qwen3-vl-plus", None, True),
        ("qwen3-vl-plus", False, True),
        ("qwen-vl-max", None, True),
        ("qwen-vl-plus-latest", None, True),
        ("qwen2.5-vl-7b-instruct", None, False),
        ("qwen-vl-max-2025-01-25", None, False),
        ("qvq-max", None, False),
    ],
)
def test_response_format_only_where_supported(model: str, thinking: bool | None, sent: bool) -> None:
    call = Client(api_key="sk-x").plan(prompt="list the colours", model=model, json_mode=True, enable_thinking=thinking)
    assert ("response_format" in call.params) is sent
    assert "JSON" in call.messages[-1].text()  # the prompt asks for JSON either way


def test_json_mode_works_without_response_format(server, protocol) -> None:
    from dashscope_server import Reply

    server.enqueue(Reply(text='```json\n{"colours": ["red"]}\n```'))
    with make_client(server, protocol) as c:
        r = c.complete(prompt="list the colours", model="qwen2.5-vl-7b-instruct", json_mode=True)
    assert r.json == {"colours": ["red"]}
    body = server.requests[-1].json
    assert "response_format" not in body and "response_format" not in body.get("parameters", {})


# --- temporary storage: Beijing only --------------------------------------------------------------------------
def big_pngs(folder: Path) -> list[str]:
    import os

    from PIL import Image

    paths = []
    for i in range(3):
        side = 1600 + 10 * i
        path = folder / f"big{i}.png"
        Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(path, compress_level=0)
        paths.append(str(path))
    return paths  # ~7.7 MB each: together over the inline request limit


def test_no_upload_outside_beijing(server, isolated_env: Path, png) -> None:
    with make_client(server, "native", region="intl") as c:
        c.complete(prompt="x", image=str(png))  # small: inline, fine
        with pytest.raises(MediaError, match="only in the Beijing region"):
            c.complete(prompt="x", images=big_pngs(isolated_env), prepare=False)
        with pytest.raises(UsageError, match="only in the Beijing region"):
            c.complete(prompt="x", image=str(png), upload="oss")
    assert not server.uploads and not [q for q in server.requests if q.path.endswith("/uploads")]
    with make_client(server, "native", region="cn") as c:  # Beijing: the same request uploads what does not fit
        c.complete(prompt="x", images=big_pngs(isolated_env), prepare=False)
    assert len(server.uploads) == 1


def test_no_upload_outside_beijing_async(server, isolated_env: Path) -> None:
    import asyncio

    from conftest import API_KEY
    from qwenvl import AsyncClient

    async def main() -> None:
        async with AsyncClient(api_key=API_KEY, protocol="native", base_url=server.url, region="intl") as c:
            await c.complete(prompt="x", images=big_pngs(isolated_env), prepare=False)

    with pytest.raises(MediaError, match="only in the Beijing region"):
        asyncio.run(main())
    assert not server.uploads and not [q for q in server.requests if q.path.endswith("/uploads")]


def test_no_upload_outside_beijing_from_the_cli(server, env, png) -> None:
    p = run_cli(
        "ask",
        str(png),
        "-p",
        "x",
        "--protocol",
        "native",
        "--upload",
        "oss",
        "--region",
        "us",
        "--base-url",
        server.url,
        env=env,
    )
    assert p.returncode == 2 and "only in the Beijing region" in p.stderr and "hint:" in p.stderr
    assert not server.uploads


def test_local_video_file_must_be_under_100_mb(isolated_env: Path) -> None:
    big = isolated_env / "big.mp4"
    with big.open("wb") as fh:
        fh.truncate(MAX_VIDEO_FILE_BYTES)
    with pytest.raises(MediaError, match=r"is 100\.0 MB; a video sent as a local file must be under 100 MB"):
        Client(api_key="sk-x", protocol="native").plan(prompt="x", video=str(big), video_as="file")


# --- frame counts: the billing page's rule for videos the service samples ------------------------------------
def test_billed_frame_count_does_not_round_to_even() -> None:
    # 5.5 s at 30 fps sampled at 2 fps: 11 frames billed (6 temporal groups); qwen-vl-utils floors to 10
    assert billed_frame_count(165, 30.0, 2.0, max_frames=2000) == 11
    assert sample_count(165, 30.0, 2.0, max_frames=2000) == 10
    assert billed_frame_count(6000, 30.0, 2.0, max_frames=512) == 400
    assert billed_frame_count(60_000, 30.0, 2.0, max_frames=512) == 512
    plan = frame_plan(model_info("qwen3-vl-plus"), 165, 30.0, 2.0, 640, 360, service_sampled=True)
    assert plan.nframes == 11


# --- usage: costs per currency, never summed across -----------------------------------------------------------
def test_usage_sums_per_currency(server, isolated_env: Path) -> None:
    with make_client(server, region="cn") as c:
        c.complete(prompt="hello")
    with make_client(server, region="intl") as c:
        c.complete(prompt="hello")
    rows = UsageLog().summarize(days=1)  # the default file, written by both (closed) clients
    assert sorted(r["currency"] for r in rows) == ["CNY", "USD"]
    p = run_cli("usage", "--json")
    data = json.loads(p.stdout)
    assert set(data["total"]["cost"]) == {"CNY", "USD"}
    table = run_cli("usage").stdout
    assert "¥" in table and "$" in table and " + " in table


# --- the verb ---------------------------------------------------------------------------------------------------
def test_models_listing() -> None:
    p = run_cli("models")
    assert p.returncode == 0, p.stderr
    for name in ("qwen3-vl-plus", "qwen-vl-max-2025-01-25", "qvq-max", "qwen-vl-ocr"):
        assert name in p.stdout
    assert "¥1 / ¥10 ≤32K" in p.stdout and "¥1.5 / ¥15 32K-128K" in p.stdout and "stream-only" in p.stdout
    intl = run_cli("models", "--region", "intl")
    assert "$0.2 / $1.6 ≤32K" in intl.stdout and "¥" not in intl.stdout
    data = json.loads(run_cli("models", "--json").stdout)
    assert data["currency"] == "CNY" and len(data["models"]) == len(MODELS)
    plus = next(m for m in data["models"] if m["name"] == "qwen3-vl-plus")
    assert [t["tier"] for t in plus["prices_per_1m"]] == ["≤32K", "32K-128K", "128K-256K"]


def test_models_one_name_shows_how_it_resolves() -> None:
    p = run_cli("models", "qwen-vl-max-latest")
    assert p.returncode == 0 and "-latest alias of qwen-vl-max" in p.stdout and "32x32" in p.stdout
    old = json.loads(run_cli("models", "qwen-vl-plus-2025-01-25", "--json").stdout)
    assert old["px_per_token"] == 28 and old["image_tokens"]["high_res"] is None
    guessed = run_cli("models", "qwen9-vl-someday")  # a name no other test warned about (once per process)
    assert guessed.returncode == 0 and guessed.stderr.count("warning:") == 1 and "unknown" in guessed.stdout
    bad = run_cli("models", "--region", "mars")
    assert bad.returncode == 2 and "unknown region" in bad.stderr
