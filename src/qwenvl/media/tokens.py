"""Token and cost estimates for images and videos, from the service's billing rules.

- An image the model sees at ``h_bar`` x ``w_bar`` (after ``smart_resize``) costs
  ``h_bar * w_bar / factor² + 2`` tokens (the 2 are ``<vision_bos>`` and ``<vision_eos>``).
- A video of ``nframes`` frames at ``h`` x ``w`` costs ``ceil(nframes / 2) * (h / factor) * (w / factor) + 2``
  tokens: two consecutive frames form one temporal group. The same rule covers a list of frame images.
- Cost is not computed here: ``qwenvl.models.estimate_cost`` is its one home (tiers, currencies).
"""

from __future__ import annotations

import math

from qwenvl.media.resize import smart_resize
from qwenvl.models import VIDEO_FRAME_FACTOR, VISION_MARKER_TOKENS


def image_tokens(height: int, width: int, factor: int) -> int:
    """Tokens for an image the model sees at exactly ``height`` x ``width`` (multiples of ``factor``)."""
    return (height * width) // (factor * factor) + VISION_MARKER_TOKENS


def estimate_image_tokens(
    height: int, width: int, factor: int, min_pixels: int | None = None, max_pixels: int | None = None
) -> int:
    """Tokens for a ``height`` x ``width`` image under a pixel budget (the service resizes it first)."""
    h_bar, w_bar = smart_resize(height, width, factor, min_pixels, max_pixels)
    return image_tokens(h_bar, w_bar, factor)


def video_tokens(nframes: int, height: int, width: int, factor: int) -> int:
    """Tokens for ``nframes`` frames, each seen at ``height`` x ``width`` (multiples of ``factor``)."""
    if nframes <= 0:
        return 0
    groups = math.ceil(nframes / VIDEO_FRAME_FACTOR)
    return groups * (height // factor) * (width // factor) + VISION_MARKER_TOKENS
