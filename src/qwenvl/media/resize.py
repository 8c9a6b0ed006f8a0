"""The service's resize rule, for both pixel factors (28 px per token side for Qwen2.5-VL and QVQ, 32 px for
Qwen3-VL and the qwen3.x series), and the pixel budget a request gives an image.

``smart_resize`` gives exactly what ``qwen_vl_utils.smart_resize`` (QwenLM's reference preprocessing,
0.0.14; patch size 14 -> factor 28, patch size 16 -> factor 32) gives for the same arguments. That includes
its floating-point arithmetic (the scale ``beta`` and the divisions happen in the same order), its
round-half-to-even rounding of each side, and its edge cases: a side can come out as 0 when the budget is
tiny and the aspect ratio extreme (callers that send images treat that as an error). The equality is checked
in CI against outputs recorded from qwen-vl-utils itself (``tests/data/smart_resize_reference.json``, made by
``bench/bench_resize.py``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from qwenvl.errors import UsageError
from qwenvl.models import HIGH_RES_IMAGE_TOKENS, MAX_ASPECT_RATIO, MIN_IMAGE_TOKENS
from qwenvl.sizes import HeightWidth, PixelRange

if TYPE_CHECKING:
    from qwenvl.media.prepare import MediaOptions


def round_by_factor(number: float, factor: int) -> int:
    """The multiple of ``factor`` nearest to ``number``; a tie goes to the even multiple (Python's round)."""
    return factor * round(number / factor)


def floor_by_factor(number: float, factor: int) -> int:
    """The largest multiple of ``factor`` not above ``number``."""
    return factor * math.floor(number / factor)


def ceil_by_factor(number: float, factor: int) -> int:
    """The smallest multiple of ``factor`` not below ``number``."""
    return factor * math.ceil(number / factor)


def smart_resize(
    height: int, width: int, factor: int, min_pixels: float | None = None, max_pixels: float | None = None
) -> HeightWidth:
    """The size ``(h_bar, w_bar)`` the model sees for a ``height`` x ``width`` image.

    Both sides become multiples of ``factor``, the area stays within ``[min_pixels, max_pixels]`` (defaults:
    4 tokens and 16384 tokens of ``factor``² pixels) and the aspect ratio is kept as well as the grid allows.
    Raises ValueError for a ratio above 200:1, a side that is not positive, or ``min_pixels > max_pixels``.
    """
    area_per_token = factor * factor
    lo = min_pixels if min_pixels is not None else MIN_IMAGE_TOKENS * area_per_token
    hi = max_pixels if max_pixels is not None else HIGH_RES_IMAGE_TOKENS * area_per_token
    if lo > hi:
        raise ValueError(f"min_pixels ({lo}) is larger than max_pixels ({hi})")
    if height <= 0 or width <= 0:
        raise ValueError(f"image sides must be positive, got {height}x{width}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio {ratio:g} is over {MAX_ASPECT_RATIO}:1")

    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > hi:  # too large: shrink by beta, then go down to the grid
        beta = math.sqrt((height * width) / hi)
        h_bar = floor_by_factor(height / beta, factor)
        w_bar = floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < lo:  # too small: grow by beta, then go up to the grid
        beta = math.sqrt(lo / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def service_budget(
    options: MediaOptions, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> PixelRange:
    """``(min_pixels, max_pixels)`` the service applies to an image sent with these options.

    ``min_pixels``/``max_pixels`` are the image part's own values (sent beside the image); they win over the
    request's. With ``vl_high_resolution_images`` the cap is 16384 tokens and any max_pixels is ignored, as the
    service does. ``detail`` plays no part here: "low" is a preparation choice (see ``image_budget``).
    """
    model = options.model
    lo = min_pixels or options.min_pixels or model.min_pixels
    if options.vl_high_resolution_images:
        hi = model.high_res_max_pixels
    else:
        hi = max_pixels or options.max_pixels or model.default_max_pixels
    if lo > hi:
        raise UsageError(
            f"min_pixels ({lo}) is larger than max_pixels ({hi})",
            hint=f"For {model.name} one token is {model.factor}x{model.factor} px; "
            f"the default budget is {model.default_max_pixels} px.",
        )
    return lo, hi


def image_budget(options: MediaOptions, *, min_pixels: int | None = None, max_pixels: int | None = None) -> PixelRange:
    """``(min_pixels, max_pixels)`` a local image is prepared to.

    ``detail="low"`` caps it at the model's low-detail budget (``low_detail_tokens``); otherwise it is the
    service's budget: ``vl_high_resolution_images`` -> 16384 tokens (max_pixels ignored), else the part's or
    the request's max_pixels, else the model's default (``image_tokens`` * factor²). The minimum is the given
    min_pixels or 4 tokens.
    """
    lo, hi = service_budget(options, min_pixels=min_pixels, max_pixels=max_pixels)
    if options.detail == "low":
        hi = max(lo, min(hi, options.model.low_detail_tokens * options.model.pixels_per_token))
    return lo, hi


def over_budget(height: int, width: int, factor: int, max_pixels: int) -> bool:
    """Whether ``smart_resize`` shrinks this image to fit ``max_pixels`` (rather than only rounding it)."""
    return max(factor, round_by_factor(height, factor)) * max(factor, round_by_factor(width, factor)) > max_pixels
