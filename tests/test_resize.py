"""The resize rule against qwen-vl-utils' own answers (recorded by bench/bench_resize.py), and the budgets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from qwenvl.errors import UsageError
from qwenvl.media.prepare import MediaOptions
from qwenvl.media.resize import (
    ceil_by_factor,
    floor_by_factor,
    image_budget,
    over_budget,
    round_by_factor,
    service_budget,
    smart_resize,
)
from qwenvl.models import model_info

REFERENCE = json.loads((Path(__file__).parent / "data" / "smart_resize_reference.json").read_text())
CASES = REFERENCE["cases"]


def test_reference_covers_both_factors() -> None:
    counts = Counter(c["factor"] for c in CASES)
    assert counts[28] >= 1000 and counts[32] >= 1000
    assert "qwen-vl-utils" in REFERENCE["source"]


@pytest.mark.parametrize("factor", [28, 32])
def test_equal_to_qwen_vl_utils(factor: int) -> None:
    mismatches = []
    for case in (c for c in CASES if c["factor"] == factor):
        args = (case["height"], case["width"], factor, case["min_pixels"], case["max_pixels"])
        try:
            got: list[int] | str = list(smart_resize(*args))
        except ValueError:
            got = "error"
        if got != case["expected"]:
            mismatches.append((args, got, case["expected"]))
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:3]}"


def test_rounding_ties_go_to_even() -> None:
    # 42/28 = 1.5 -> 2; 70/28 = 2.5 -> 2 (Python's round, as qwen-vl-utils uses)
    assert round_by_factor(42, 28) == 56
    assert round_by_factor(70, 28) == 56
    assert round_by_factor(48, 32) == 64 and round_by_factor(80, 32) == 64
    assert floor_by_factor(63.9, 32) == 32 and ceil_by_factor(32.1, 32) == 64


def test_seed_doc_examples() -> None:
    # seed doc 002: qwen-vl-max (28 px, 1280 tokens): 512x512 -> 504x504, 1280x1280 -> 980x980;
    # with vl_high_resolution_images 1280x1280 -> 1288x1288.
    assert smart_resize(512, 512, 28, 4 * 784, 1280 * 784) == (504, 504)
    assert smart_resize(1280, 1280, 28, 4 * 784, 1280 * 784) == (980, 980)
    assert smart_resize(1280, 1280, 28, 4 * 784, 16384 * 784) == (1288, 1288)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2010, 32)
    with pytest.raises(ValueError, match="min_pixels"):
        smart_resize(100, 100, 32, 5000, 4000)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 100, 32)


def test_over_budget_is_the_shrinking_branch() -> None:
    assert over_budget(3000, 4000, 32, 2560 * 1024)
    assert not over_budget(700, 1000, 32, 2560 * 1024)  # only rounded by the service


QWEN3 = model_info("qwen3-vl-plus")
QWEN25 = model_info("qwen2.5-vl-7b-instruct")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (MediaOptions(model=QWEN3), (4 * 1024, 2560 * 1024)),
        (MediaOptions(model=QWEN25), (4 * 784, 1280 * 784)),
        (MediaOptions(model=QWEN3, detail="low"), (4 * 1024, 640 * 1024)),
        (MediaOptions(model=QWEN3, detail="high", vl_high_resolution_images=True), (4 * 1024, 16384 * 1024)),
        (MediaOptions(model=QWEN3, vl_high_resolution_images=True, max_pixels=1000), (4 * 1024, 16384 * 1024)),
        (MediaOptions(model=QWEN3, max_pixels=1_000_000, min_pixels=50_000), (50_000, 1_000_000)),
        (MediaOptions(model=QWEN3, detail="low", max_pixels=100_000), (4 * 1024, 100_000)),
    ],
)
def test_image_budget(options: MediaOptions, expected: tuple[int, int]) -> None:
    assert image_budget(options) == expected


def test_part_values_win_and_service_ignores_detail() -> None:
    options = MediaOptions(model=QWEN3, detail="low", max_pixels=2_000_000)
    assert image_budget(options, max_pixels=300_000) == (4096, 300_000)
    assert service_budget(options) == (4096, 2_000_000)  # detail=low is ours, not the service's


def test_min_above_max_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="min_pixels"):
        image_budget(MediaOptions(model=QWEN3, min_pixels=5_000_000))
