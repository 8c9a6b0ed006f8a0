"""Names for the two-number tuples whose order is easy to get wrong. Each says its order; import nothing heavy.

Pillow (``Image.size``) and the CLI speak ``(width, height)``; the service's resize rule (``smart_resize``,
QwenLM's ``qwen_vl_utils``) and the PDF renderer speak ``(height, width)``; a pixel budget is ``(min, max)``.
"""

from __future__ import annotations

Size = tuple[int, int]
"""An image size in pixels, ``(width, height)``: the order of Pillow's ``Image.size``."""

HeightWidth = tuple[int, int]
"""An image size in pixels, ``(height, width)``: the order of ``smart_resize`` (qwen_vl_utils) and numpy arrays."""

PixelRange = tuple[int, int]
"""A pixel budget, ``(min_pixels, max_pixels)``: the fewest and the most pixels (width × height) of an image."""
