"""Where two copies of one rule disagreed (issue 11 section 5), the one home's behaviour, shown."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx

from conftest import write_image
from dashscope_server import DashScopeServer
from qwenvl.estimate import estimate_files
from qwenvl.models import price_for
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
