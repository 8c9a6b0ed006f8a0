"""The model table: one home for every per-model fact (family, pixels per token, budgets, limits, prices).

Update this file when Model Studio changes a model; nothing else in the package hard-codes these numbers.
Sources are in ../shared/reference/dashscope-api.md (section 4). Values marked UNVERIFIED there are marked
here too: they are our best reading and easy to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

# --- rules shared by every model (service-wide, from the billing page's token rules) ---------------------
MIN_IMAGE_TOKENS = 4  # an image is never scaled below 4 tokens
HIGH_RES_IMAGE_TOKENS = 16384  # per-image cap with vl_high_resolution_images=true (max_pixels ignored)
VISION_MARKER_TOKENS = 2  # <vision_bos> and <vision_eos> around every image or video
MIN_IMAGE_SIDE = 11  # each side must be more than 10 px
MAX_ASPECT_RATIO = 200  # long side / short side
MAX_IMAGE_BYTES = 10_000_000  # one image file, as sent (seed doc 002: "单个图像文件的大小不超过10 MB")
MAX_INLINE_REQUEST_BYTES = 20 * 1024 * 1024  # whole request body with inline media (UNVERIFIED, 3rd-party)
MAX_UPLOAD_BYTES = 1024 * 1024 * 1024  # one file in DashScope's temporary storage (1 GB, 3rd-party summary)
MAX_FETCH_BYTES = 64 * 1024 * 1024  # --fetch-urls: the most a remote image may weigh before preparation
MAX_IMAGE_PIXELS = 150_000_000  # decompression-bomb guard: larger images are refused from the header
VIDEO_FPS = 2.0  # default sampling rate
VIDEO_MIN_FRAMES = 4
VIDEO_FRAME_FACTOR = 2  # frame counts are even: 2 frames form one temporal token group
VIDEO_MIN_FRAME_TOKENS = 4

PRICE_CURRENCY = "CNY"


@dataclass(frozen=True)
class ModelInfo:
    """What qwenvl needs to know about one model."""

    name: str
    family: str  # "qwen3-vl" | "qwen2.5-vl" | "qvq" | "qwen-vl-ocr" | "qwen3.x"
    factor: int  # pixels per token side: 32 (Qwen3-VL class) or 28 (Qwen2.5-VL class, QVQ)
    image_tokens: int  # default per-image token budget (vl_high_resolution_images=false, no max_pixels)
    low_detail_tokens: int  # budget used for detail="low"
    context_tokens: int
    max_output_tokens: int
    price_input: float | None  # CNY per 1K input tokens (lowest tier); None = unknown
    price_output: float | None  # CNY per 1K output tokens (lowest tier)
    thinking: bool = False  # supports enable_thinking
    thinking_only: bool = False  # always thinks (QVQ)
    stream_only: bool = False  # refuses stream=false ("This model only support stream mode"): QVQ
    tools: bool = False
    structured_output: bool = True  # response_format json_object (Qwen3-VL: non-thinking mode only)
    video_frame_tokens: int = 768  # per-frame token cap for sampled video
    video_total_tokens: int = 65536  # token cap over all frames of one video
    video_max_frames: int = 2000
    grounding: str = "relative-1000"  # "relative-1000" (Qwen3-VL) | "absolute" (Qwen2.5-VL pixels)
    known: bool = True  # False when inferred from the name only

    @property
    def pixels_per_token(self) -> int:
        return self.factor * self.factor

    @property
    def default_max_pixels(self) -> int:
        return self.image_tokens * self.pixels_per_token

    @property
    def min_pixels(self) -> int:
        return MIN_IMAGE_TOKENS * self.pixels_per_token

    @property
    def high_res_max_pixels(self) -> int:
        return HIGH_RES_IMAGE_TOKENS * self.pixels_per_token


def _qwen3vl(name: str, **kw) -> ModelInfo:
    base = dict(
        family="qwen3-vl", factor=32, image_tokens=2560, low_detail_tokens=640,
        context_tokens=262_144, max_output_tokens=32_768, price_input=None, price_output=None,
        thinking=True, tools=True, video_frame_tokens=768, video_total_tokens=65536,
        grounding="relative-1000",
    )
    base.update(kw)
    return ModelInfo(name=name, **base)


def _qwen25vl(name: str, **kw) -> ModelInfo:
    base = dict(
        family="qwen2.5-vl", factor=28, image_tokens=1280, low_detail_tokens=320,
        context_tokens=131_072, max_output_tokens=8_192, price_input=None, price_output=None,
        video_frame_tokens=768, video_total_tokens=65536, video_max_frames=768, grounding="absolute",
    )
    base.update(kw)
    return ModelInfo(name=name, **base)


# Prices: CNY per 1K tokens, Beijing region, lowest input tier. qwen3-vl-plus: UNVERIFIED (public price list
# read as 0.001 / 0.01); qwen3-vl-flash, qwen-vl-max and qwen-vl-plus from the official model cards.
_TABLE: tuple[ModelInfo, ...] = (
    _qwen3vl("qwen3-vl-plus", price_input=0.001, price_output=0.01,
             video_frame_tokens=640, video_total_tokens=131072),
    _qwen3vl("qwen3-vl-flash", price_input=0.00015, price_output=0.0015),
    # The current qwen-vl-max / qwen-vl-plus aliases use 32x32 px per token (billing page); their default
    # per-image budget is still documented as 1280 tokens (UNVERIFIED for the 32 px snapshots).
    _qwen25vl("qwen-vl-max", factor=32, low_detail_tokens=320, price_input=0.0016, price_output=0.004),
    _qwen25vl("qwen-vl-plus", factor=32, low_detail_tokens=320, price_input=0.0008, price_output=0.002),
    _qwen25vl("qwen2.5-vl-72b-instruct", price_input=0.016, price_output=0.048),
    _qwen25vl("qwen2.5-vl-32b-instruct", price_input=0.008, price_output=0.024),
    _qwen25vl("qwen2.5-vl-7b-instruct", price_input=0.002, price_output=0.005),
    _qwen25vl("qwen2.5-vl-3b-instruct", price_input=0.0012, price_output=0.0036),
    _qwen25vl("qvq-max", family="qvq", thinking=True, thinking_only=True, stream_only=True, structured_output=False,
              price_input=0.008, price_output=0.032),
    _qwen25vl("qvq-plus", family="qvq", thinking=True, thinking_only=True, stream_only=True, structured_output=False,
              price_input=0.002, price_output=0.005),
    # OCR models: 32 px for the current snapshots, default budget 8192 tokens (max_pixels 8388608).
    _qwen25vl("qwen-vl-ocr", family="qwen-vl-ocr", factor=32, image_tokens=8192, low_detail_tokens=1280,
              context_tokens=34_096, max_output_tokens=4_096, price_input=0.0003, price_output=0.0005),
)

MODELS: dict[str, ModelInfo] = {m.name: m for m in _TABLE}
DEFAULT_MODEL = "qwen3-vl-plus"

# Snapshot and alias suffixes: "-latest", "-2025-12-19", "-1201", ...
_SUFFIX = re.compile(r"^-(latest|\d{4}(-\d{2}-\d{2})?|\d{4}-\d{2}-\d{2}|\d+)$")


def model_info(name: str) -> ModelInfo:
    """The table entry for a model name, a snapshot (`qwen3-vl-plus-2025-12-19`) or an alias (`-latest`).

    Names the table does not know are classified from the name (the family decides the pixel rule) and
    returned with ``known=False`` and no price.
    """
    key = name.strip().lower()
    if key.startswith("qwen/"):  # Hugging Face ids of the open models, e.g. Qwen/Qwen2.5-VL-7B-Instruct
        key = key[len("qwen/"):]
    if key in MODELS:
        return MODELS[key]
    for base in sorted(MODELS, key=len, reverse=True):
        if key.startswith(base) and _SUFFIX.match(key[len(base):]):
            return replace(MODELS[base], name=name)
    return _guess(name, key)


def _guess(name: str, key: str) -> ModelInfo:
    if key.startswith("qvq"):
        proto = MODELS["qvq-max"]
    elif "qwen2.5-vl" in key or "qwen2-vl" in key:
        proto = MODELS["qwen2.5-vl-7b-instruct"]
    elif "ocr" in key:
        proto = MODELS["qwen-vl-ocr"]
    elif key.startswith("qwen-vl"):
        proto = MODELS["qwen-vl-plus"]
    else:  # qwen3-vl-*, qwen3.5/3.6/3.7 series, and anything newer: the 32 px rule
        proto = MODELS["qwen3-vl-flash"]
    return replace(proto, name=name, price_input=None, price_output=None, known=False)


def estimate_cost(model: ModelInfo, input_tokens: int, output_tokens: int = 0) -> float | None:
    """Estimated cost in CNY, or None when the model's price is unknown."""
    if model.price_input is None or model.price_output is None:
        return None
    return input_tokens / 1000 * model.price_input + output_tokens / 1000 * model.price_output
