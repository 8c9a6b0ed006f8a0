"""Where two copies of one rule disagreed (issue 11 section 5), the one home's behaviour, shown."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, field_validator

from conftest import API_KEY, write_image
from dashscope_server import DashScopeServer
from qwenvl.batch import BatchItem, batchapi
from qwenvl.cli.main import cli
from qwenvl.errors import StructuredOutputError
from qwenvl.estimate import estimate_files
from qwenvl.models import price_for
from qwenvl.types import Response
from test_serve import SERVE_KEY, gateway

SIZES = [(400, 300), (333, 217), (640, 480)]


def test_playground_estimate_costs_are_the_tokens_verbs(server: DashScopeServer, isolated_env: Path) -> None:
    """The playground priced its items inline, unrounded (0.00012320000000000002); `qwenvl tokens` (and the
    MCP estimate) rounded to 10 significant digits. Both now come from ``models.media_costs``: the same
    numbers, rounded."""
    files = [str(write_image(isolated_env / f"p{i}.png", size=s)) for i, s in enumerate(SIZES)]
    urls = ["data:image/png;base64," + base64.b64encode(Path(f).read_bytes()).decode() for f in files]
    with gateway(server) as site:
        got = httpx.post(
            site.url + "/qwenvl/v1/estimate",
            json={"model": "qwen-vl-max", "images": urls},
            headers={"Authorization": f"Bearer {SERVE_KEY}"},
            timeout=60,
        ).json()
    want = estimate_files(files, model="qwen-vl-max", region="cn")
    assert [i["tokens"] for i in got["items"]] == [r["tokens"] for r in want["items"]]
    assert [i["cost"] for i in got["items"]] == [r["cost"] for r in want["items"]]
    assert got["cost"] == want["total"]["cost"]
    price = price_for("qwen-vl-max", got["total_tokens"], region="cn")
    assert price is not None
    raw = [price.cost(i["tokens"]) for i in got["items"]] + [price.cost(got["total_tokens"])]
    assert any(len(repr(r)) > 14 for r in raw)  # the sizes give float noise: the test can fail
    assert all(len(repr(c).lstrip("0.")) <= 11 for c in [*(i["cost"] for i in got["items"]), got["cost"]])


# --- the MCP server's usage object is Usage's token counts, its output schema unchanged ---------------------

_COUNT = {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
USAGE_OUT_SCHEMA = {  # as the hand-written copy of Usage's fields gave it (descriptions aside)
    "properties": {
        name: {**_COUNT, "title": name.replace("_", " ").title()}
        for name in (
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "image_tokens",
            "video_tokens",
            "reasoning_tokens",
        )
    },
    "title": "UsageOut",
    "type": "object",
}


def _no_descriptions(value: Any) -> Any:
    """The schema without "description" keys (Usage's fields may gain descriptions: that is not a change)."""
    if isinstance(value, dict):
        return {k: _no_descriptions(v) for k, v in value.items() if k != "description"}
    if isinstance(value, list):
        return [_no_descriptions(v) for v in value]
    return value


def test_mcp_usage_is_usages_token_counts_with_the_same_schema(env: dict[str, str], isolated_env: Path) -> None:
    pytest.importorskip("mcp")
    from qwenvl.mcp_server import Billed, UsageOut, billed
    from qwenvl.types import Response, Usage
    from test_mcp import stdio_session

    counts = [name for name in Usage.model_fields if name != "raw"]
    assert list(UsageOut.model_json_schema()["properties"]) == counts  # derived: a new count appears in both
    assert _no_descriptions(UsageOut.model_json_schema()) == USAGE_OUT_SCHEMA

    async def main() -> dict[str, Any]:
        async with stdio_session(env, "--allow-dir", str(isolated_env)) as c:
            return {tool.name: tool.output_schema for tool in (await c.list_tools()).tools}

    schemas = anyio.run(main)
    for name in ("ask", "ground", "ocr", "extract", "events"):
        assert _no_descriptions(schemas[name]["$defs"]["UsageOut"]) == USAGE_OUT_SCHEMA, name

    usage = Usage(input_tokens=10, output_tokens=2, raw={"input_tokens": 10, "secret_shape": 1})
    out = billed(Response(text="x", model="qwen3-vl-plus", usage=usage), Response(text="y", model="qwen3-vl-plus"))
    sent = Billed(**out).model_dump(mode="json")["usage"]
    assert sent == {name: {"input_tokens": 10, "output_tokens": 2}.get(name) for name in counts}  # no "raw"


# --- one check of a structured answer, realtime and Batch API ------------------------------------------------


class Count(BaseModel):
    n: int

    @field_validator("n")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("n must not be negative")
        return value


def _line(text: str) -> dict[str, Any]:
    body = {
        "id": "chatcmpl-1",
        "model": "qwen3-vl-plus",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }
    return {"custom_id": "s", "response": {"status_code": 200, "request_id": "r1", "body": body}}


def test_batch_api_answers_are_checked_by_the_pydantic_model_too() -> None:
    """The Batch API's copy of the check validated against the JSON Schema only: {"n": -3} passed there and
    failed in realtime. Both now run ``client.check_structured``."""
    item = BatchItem(id="s", request={"prompt": "count", "schema": Count})
    bad = batchapi._outcome(_line('{"n": -3}'), item)
    assert isinstance(bad, StructuredOutputError)
    assert "n must not be negative" in str(bad) and "no repair in batch mode" in str(bad)
    good = batchapi._outcome(_line('```json\n{"n": 3}\n```'), item)
    assert isinstance(good, Response) and good.json == {"n": 3} and good.parsed == Count(n=3)


def test_batch_api_json_mode_error_does_not_name_a_schema() -> None:
    item = BatchItem(id="j", request={"prompt": "count", "json_mode": True})
    bad = batchapi._outcome(_line("no JSON here"), item)
    assert isinstance(bad, StructuredOutputError)
    assert str(bad).startswith("the answer is not valid JSON (no repair in batch mode)")


# --- one rule for a reference's media kind (media.sources.media_kind) -------------------------------------


@pytest.fixture
def media(isolated_env: Path) -> dict[str, str]:
    from test_backend_openai import make_video
    from test_media_pdf import THREE_PAGES, make_pdf

    clip = make_video(isolated_env / "clip.mp4", frames=12)
    (isolated_env / "movie.png").write_bytes(clip.read_bytes())  # a video named like an image
    (isolated_env / "scan.jpg").write_bytes(make_pdf(THREE_PAGES))  # a PDF named like an image
    write_image(isolated_env / "photo.png")
    video_b64 = base64.b64encode(clip.read_bytes()).decode()
    pdf_b64 = base64.b64encode(make_pdf(THREE_PAGES)).decode()
    return {
        "clip": str(clip),
        "movie": str(isolated_env / "movie.png"),
        "scan": str(isolated_env / "scan.jpg"),
        "photo": str(isolated_env / "photo.png"),
        "data_video": "data:video/mp4;base64," + video_b64,
        "data_video_untyped": "data:application/octet-stream;base64," + video_b64,
        "data_pdf": "data:application/octet-stream;base64," + pdf_b64,
        "data_pdf_declared": "data:application/pdf;base64," + base64.b64encode(b"not really").decode(),
    }


def test_media_kind_by_bytes_then_declared_type_then_url_suffix(media: dict[str, str], isolated_env: Path) -> None:
    from qwenvl.media.sources import media_kind

    kinds = {name: media_kind(ref) for name, ref in media.items()}
    assert kinds == {
        "clip": "video",
        "movie": "video",
        "scan": "pdf",
        "photo": "image",
        "data_video": "video",
        "data_video_untyped": "video",
        "data_pdf": "pdf",
        "data_pdf_declared": "pdf",
    }
    assert media_kind("https://example.com/v/clip.MP4?sig=1#t=3") == "video"
    assert media_kind("oss://bucket/clip.webm") == "video"
    assert media_kind("https://example.com/scan.pdf?x=1") == "pdf"  # by its path, as a video's (bytes not fetched)
    assert media_kind("https://example.com/scan") == "image"  # remote bytes are not fetched
    assert media_kind(str(isolated_env / "missing.mp4")) == "image"  # preparing it names what is wrong
    if hasattr(os, "mkfifo"):
        os.mkfifo(isolated_env / "pipe.mp4")
        assert media_kind(str(isolated_env / "pipe.mp4")) == "image"  # never read (it would block)


def test_a_data_url_video_is_a_video_everywhere(media: dict[str, str], server: DashScopeServer) -> None:
    """`ask`/`chat`/MCP split media with batch's is_video, which took a data: URL for an image (then refused
    as "a video, not an image"); the estimate read its bytes and took a video. Now both: a video."""
    from qwenvl.media.sources import split_media

    assert split_media([media["photo"], media["data_video"]]) == ([media["photo"]], media["data_video"])
    env = {"DASHSCOPE_API_KEY": API_KEY, "DASHSCOPE_COMPATIBLE_BASE_URL": server.compat_base}
    result = CliRunner().invoke(cli, ["ask", media["data_video"], "-p", "what happens?", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert [m["kind"] for m in json.loads(result.output)["media"]] == ["video"]
    assert not server.requests  # a dry run sends nothing
    [row] = estimate_files([media["data_video"]], region="cn")["items"]
    assert row["kind"] == "video" and row["frames"]


def test_a_remote_video_url_is_a_video_in_the_estimate_too(isolated_env: Path) -> None:
    """`ask` sent https://.../clip.mp4 as a video (by its suffix); `qwenvl tokens` and the MCP estimate
    counted it as an image. Now the estimate says video too (tokens unknown: the service samples it)."""
    from qwenvl.batch.inputs import items_from_inputs

    url = "https://example.com/v/clip.mp4?sig=1"
    [row] = estimate_files([url], region="cn")["items"]
    assert row["kind"] == "video" and row["tokens"] is None
    [item] = items_from_inputs([url], {"prompt": "x"})
    assert item.request == {"prompt": "x", "video": url}


# --- one fence reader and one safe JSON parse for model answers ------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's JSON parser can go


def test_json_nested_too_deep_is_no_json_not_a_crash() -> None:
    """The box reader (tasks.parsing) caught RecursionError; structured output's finder did not, so such an
    answer to --json-mode ended in a traceback. Both use ``structured.load_json`` now."""
    from qwenvl import structured
    from qwenvl.tasks import parse_answer as read_boxes

    with pytest.raises(structured.NoJSONFound):
        structured.extract_json(DEEP)
    assert structured.parse_answer("prose " + DEEP, None)[1] == ["the JSON in the answer is nested too deeply to read"]
    assert read_boxes(DEEP).items == []


def test_a_deep_answer_to_json_mode_is_a_structured_output_error(server: DashScopeServer) -> None:
    from conftest import make_client
    from dashscope_server import Reply

    server.enqueue(Reply(text=DEEP, times=2))
    with make_client(server) as client, pytest.raises(StructuredOutputError, match="even after one retry"):
        client.ask("give me JSON", json_mode=True)


@pytest.mark.parametrize(
    "answer",
    [
        'Here you are:\n```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "dog"}]\n```\nDone.',
        '```JSON\n[{"bbox_2d": [1, 2, 30, 40], "label": "dog"}]',  # cut off inside the fence
        '```json5\n[{"bbox_2d": [1, 2, 30, 40], "label": "dog"}]\n```',
    ],
)
def test_both_readers_see_the_same_fenced_json(answer: str) -> None:
    from qwenvl import structured
    from qwenvl.tasks import parse_answer as read_boxes

    assert structured.extract_json(answer) == [{"bbox_2d": [1, 2, 30, 40], "label": "dog"}]
    [box] = read_boxes(answer).boxes
    assert (box.coords, box.label) == ([1, 2, 30, 40], "dog")


# --- the cost of one answer: one rule (models.answer_cost) for the usage log, batch, the CLI and MCP ----------


def _answer(protocol: str, *, cached: bool = False) -> Response:
    from qwenvl.types import Usage

    return Response(
        text="x",
        model="qwen3-vl-plus",
        protocol=protocol,
        usage=Usage(input_tokens=1000, output_tokens=100),
        cached=cached,
    )


def test_an_answer_costs_its_tokens_unless_cached_or_local() -> None:
    from qwenvl.models import answer_cost, estimate_cost

    paid = estimate_cost("qwen3-vl-plus", 1000, 100, region="cn")
    assert paid and answer_cost(_answer("compat"), region="cn") == paid
    assert answer_cost(_answer("native"), region="cn", factor=0.5) == paid * 0.5
    assert answer_cost(_answer("compat", cached=True), region="cn") == 0.0
    # a local model has no price: None (shown as "local"), never 0.0 in a currency (models.LOCAL)
    assert answer_cost(_answer("openai"), region="cn") is None
    assert answer_cost(_answer("transformers"), region="cn") is None
    assert answer_cost(_answer("openai", cached=True), region="cn") is None
    assert answer_cost(_answer("compat"), region="cn", local=True) is None


def test_mcp_and_the_usage_line_charge_nothing_for_cached_or_local_answers() -> None:
    from qwenvl.cli.common import usage_line
    from qwenvl.mcp_server import billed

    assert billed(_answer("compat", cached=True), region="cn")["cost"] == 0.0  # was priced as if paid
    local = billed(_answer("openai"), region="cn")  # a local model's answer: was priced, then 0.0 in CNY
    assert (local["cost"], local["currency"], local["local"]) == (None, None, True)
    assert (
        billed(_answer("compat"), _answer("compat", cached=True), region="cn")["cost"]
        == billed(_answer("compat"), region="cn")["cost"]
    )
    assert "not paid" in usage_line(_answer("compat", cached=True), "cn")
    assert "≈" in usage_line(_answer("compat"), "cn") and "≈" not in usage_line(_answer("openai"), "cn")
