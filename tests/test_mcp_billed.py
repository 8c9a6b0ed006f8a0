"""The MCP tools' ``billed`` sums what answers took by the one rule every verb's JSON uses
(``models.spent_fields``), not a sum of its own."""

from __future__ import annotations

import pytest

pytest.importorskip("mcp")

from qwenvl.mcp_server import billed
from qwenvl.models import spent_fields
from qwenvl.types import Response, Usage


def _answer(protocol: str, rid: str, cached: bool = False, input_tokens: int | None = 1000) -> Response:
    usage = Usage(input_tokens=input_tokens, output_tokens=200, total_tokens=None, image_tokens=300)
    return Response(text="x", model="qwen-vl-max", request_id=rid, protocol=protocol, usage=usage, cached=cached)


PAID, LOCAL = _answer("compat", "a"), _answer("openai", "b")
CACHED, UNCOUNTED = _answer("native", "c", cached=True, input_tokens=None), _answer("compat", "d", input_tokens=None)


@pytest.mark.parametrize(
    "answers",
    [
        (PAID,),
        (PAID, PAID),
        (LOCAL,),
        (PAID, LOCAL),
        (LOCAL, PAID),
        (CACHED,),
        (PAID, CACHED),
        (UNCOUNTED,),
        (),
        (None,),
    ],
    ids=[
        "paid",
        "paid twice",
        "local",
        "paid then local",
        "local then paid",
        "cached",
        "paid and cached",
        "tokens unknown",
        "none",
        "None",
    ],
)
@pytest.mark.parametrize("region", [None, "singapore"])
def test_billed_is_spent_fields(answers, region):
    out, spent = billed(*answers, region=region), spent_fields(answers, region=region)
    assert out["usage"].model_dump(exclude={"raw"}, exclude_none=True) == spent["usage"]
    assert {k: out[k] for k in ("cost", "currency", "local", "request_id")} == {
        k: spent[k] for k in ("cost", "currency", "local", "request_id")
    }
    assert out["model"] == ("qwen-vl-max" if any(answers) else None)


def test_a_paid_answer_beside_a_local_one_is_never_said_local():
    out = billed(PAID, LOCAL)
    assert out["local"] is False and out["currency"] == "CNY"  # was local: money paid said to be none


def test_an_answer_from_the_cache_cost_nothing_even_with_no_token_counts():
    assert billed(CACHED)["cost"] == 0.0  # was None (unknown): it was never paid
