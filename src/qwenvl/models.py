"""The model table: one home for every per-model fact (family, pixels per token, budgets, limits, prices).

Update this file when Model Studio changes a model; nothing else in the package hard-codes these numbers.
Every value names its source in a comment. The sources, by short name:

- [issue10]   Model Studio's vision, token-billing, model-pricing, OCR, regions, temporary-storage and batch
              pages and the official SDK, "Model Studio pricing page, checked 2026-11 (issue 10)".
- [vision]    help.aliyun.com/zh/model-studio/vision, updated 2025-11-18 (reference/seeds/000).
- [billing]   the "计算图像与视频的Token" section of the billing page (official copy; reference/dashscope-api.md
              §4.1-4.2), and its video example code (copy of the official `token_calculate`, code corpus:
              "FPS_MAX_FRAMES: 512 for qwen2.5-vl").
- [card]      official model cards (Maas-Model-platform parsed_json/<model>.json copies, pages corpus;
              reference/dashscope-api.md §4.3).
- [tempstore] alibabacloud.com/help/en/model-studio/get-temporary-file-url, updated 2026-03-23.

Prices are per 1M tokens in the region's currency: CNY in Beijing (``cn``), USD in Singapore (``intl``) and
Virginia (``us``). A request is billed **entirely** at the tier of its input length [issue10]: 40K input
tokens on qwen3-vl-plus cost 1.5 / 15 CNY per 1M for every input and output token, not 1 / 10 for the first 32K.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from qwenvl.errors import UsageError
    from qwenvl.types import Response

log = logging.getLogger("qwenvl")

# --- rules shared by every model (service-wide, from the billing page's token rules) ---------------------
MIN_IMAGE_TOKENS = 4  # an image is never scaled below 4 tokens [billing]; qwen-vl-ocr: 3 (see the table)
HIGH_RES_IMAGE_TOKENS = 16384  # per-image cap with vl_high_resolution_images=true (max_pixels ignored) [billing]
VISION_MARKER_TOKENS = 2  # <vision_bos> and <vision_eos> around every image or video [billing]
MIN_IMAGE_SIDE = 11  # each side must be more than 10 px [vision, 2025-11-18]
MAX_ASPECT_RATIO = 200  # long side / short side [vision, 2025-11-18]
MAX_IMAGE_BYTES = 10_000_000  # one image file, as sent (seed doc 002: "单个图像文件的大小不超过10 MB")
MAX_INLINE_REQUEST_BYTES = 20 * 1024 * 1024  # whole request body with inline media (UNVERIFIED, 3rd-party)
# A video passed as a local file (uploaded to temporary storage) must be under 100 MB [issue10, checked 2026-11];
# the "1 GB" of temporary storage in older 3rd-party summaries does not exist.
MAX_VIDEO_FILE_BYTES = 100 * 1024 * 1024
GB = 1024 * 1024 * 1024
# The most an image may weigh before preparation (ours): a local file or data: URL is refused from its size before
# it is read (``prepare.read_image``), a remote one fetched with --fetch-urls is cut off there. Room for a 150 MP
# JPEG or a large uncompressed scan; what is sent is at most MAX_IMAGE_BYTES whatever the source weighed.
MAX_IMAGE_FILE_BYTES = 64 * 1024 * 1024
MAX_FETCH_BYTES = MAX_IMAGE_FILE_BYTES  # --fetch-urls: a fetched image is an image file like any other
# A video or PDF given as a data: URL sits in memory whole (a file is read from disk as its reader needs): refused
# from the length of its base64 text, before it is decoded, over the size of the largest video file the service
# takes (ours; an image data: URL has MAX_IMAGE_FILE_BYTES, as an image file).
MAX_DATA_URL_BYTES = MAX_VIDEO_FILE_BYTES
MAX_IMAGE_PIXELS = 150_000_000  # decompression-bomb guard: larger images are refused from the header (ours)
VIDEO_FPS = 2.0  # default sampling rate [billing]
VIDEO_MIN_FRAMES = 4  # [billing]
VIDEO_FRAME_FACTOR = 2  # 2 frames form one temporal token group [billing]
VIDEO_MIN_FRAME_TOKENS = 4  # [billing]

# Temporary storage (oss:// uploads) exists in the Beijing region only [tempstore, 2026-03-23].
TEMP_STORAGE_REGIONS = frozenset({"cn"})

Currency = Literal["CNY", "USD"]
# intl (Singapore) and us (Virginia) bill in USD, cn (Beijing) in CNY [issue10, checked 2026-11].
REGION_CURRENCY: dict[str, Currency] = {"cn": "CNY", "intl": "USD", "us": "USD"}
CURRENCY_SYMBOL: dict[str, str] = {"CNY": "¥", "USD": "$"}
PRICE_UNIT_TOKENS = 1_000_000  # prices are per 1M tokens


@dataclass(frozen=True)
class PriceTier:
    """One input-length tier: the per-1M-token prices of a request whose input is at most ``up_to`` tokens."""

    up_to: int | None  # input tokens, inclusive; None = no upper bound (the last tier)
    input: float  # per 1M input tokens
    output: float  # per 1M output tokens

    def label(self, low: int) -> str:
        """The tier's range in K tokens (1K = 1024): ``"≤32K"``, ``"32K-128K"``, ``">128K"``, or ``"any"`` for a
        flat price; ``low`` is the previous tier's bound (0 for the first). Raises nothing."""

        def k(n: int) -> str:
            return f"{n // 1024}K"

        if self.up_to is None:
            return f">{k(low)}" if low else "any"
        return f"≤{k(self.up_to)}" if not low else f"{k(low)}-{k(self.up_to)}"


@dataclass(frozen=True)
class Prices:
    """A model's price list: tiers per currency (empty = unknown in that currency)."""

    cny: tuple[PriceTier, ...] = ()
    usd: tuple[PriceTier, ...] = ()

    def tiers(self, currency: str) -> tuple[PriceTier, ...]:
        """The tiers in ``currency`` (``"CNY"``; anything else means USD), lowest first. Raises nothing."""
        return self.cny if currency == "CNY" else self.usd


def _flat(cny: tuple[float, float] | None, usd: tuple[float, float] | None = None) -> Prices:
    return Prices(cny=(PriceTier(None, *cny),) if cny else (), usd=(PriceTier(None, *usd),) if usd else ())


K32, K128, K256 = 32 * 1024, 128 * 1024, 256 * 1024


@dataclass(frozen=True)
class Price:
    """The price one request pays: its tier, in its region's currency."""

    currency: Currency
    input: float  # per 1M input tokens
    output: float  # per 1M output tokens
    tier: int  # 0 = the lowest tier
    tier_label: str  # "≤32K", "32K-128K", ... ("any" for a flat price)
    tiers: int = 1  # how many tiers the model has in this currency

    def cost(self, input_tokens: int, output_tokens: int = 0) -> float:
        """The cost of that many tokens at this tier, in ``currency`` (prices are per 1M tokens). Raises nothing."""
        return (input_tokens * self.input + output_tokens * self.output) / PRICE_UNIT_TOKENS


@dataclass(frozen=True)
class ModelInfo:
    """What qwenvl needs to know about one model: one row of the table below (sources in the comments there and
    in this module's docstring), from ``model_info(name)``.

    Units: ``factor`` is pixels per token side (32 or 28: one token per factor × factor pixels, [billing]);
    ``image_tokens``, ``low_detail_tokens``, ``min_image_tokens``, ``context_tokens``, ``max_output_tokens``,
    ``video_frame_tokens`` and ``video_total_tokens`` are tokens; ``video_url_max_bytes`` is bytes; prices are
    per 1M tokens (``prices``). ``known`` is False for a name the table does not list (its rules are guessed
    from the name). Frozen; building one by hand raises nothing (the dataclass checks nothing)."""

    name: str
    family: str  # "qwen3-vl" | "qwen2.5-vl" | "qvq" | "qwen-vl-ocr"
    factor: int  # pixels per token side: 32 (Qwen3-VL class) or 28 (Qwen2.5-VL class, QVQ)
    image_tokens: int  # default per-image token budget (vl_high_resolution_images=false, no max_pixels)
    low_detail_tokens: int  # budget used for detail="low" (ours: a quarter of the default)
    context_tokens: int
    max_output_tokens: int
    prices: Prices = field(default_factory=Prices)
    thinking: bool = False  # supports enable_thinking
    thinking_only: bool = False  # always thinks (QVQ)
    stream_only: bool = False  # refuses stream=false ("This model only support stream mode"): QVQ
    tools: bool = False
    structured_output: bool = True  # response_format json_object is accepted (Qwen3-VL: non-thinking mode only)
    high_res: bool = True  # vl_high_resolution_images is supported
    video: bool = True  # takes video (a file, a URL or a frame list)
    video_frame_tokens: int = 768  # per-frame token cap for sampled video
    video_total_tokens: int = 65536  # token cap over all frames of one video
    video_max_frames: int = 2000
    video_url_max_bytes: int = GB  # a remote video URL (2 GB for Qwen3-VL and qwen-vl-max, 1 GB others)
    min_image_tokens: int = MIN_IMAGE_TOKENS
    grounding: str = "relative-1000"  # "relative-1000" (Qwen3-VL) | "absolute" (Qwen2.5-VL pixels)
    known: bool = True  # False when inferred from the name only
    local_family: bool = False  # a local model's rules, from its known family (qwenvl.backends.family)
    entry: str = ""  # the table entry the name resolved to ("" = itself)
    resolution: str = "in the table"  # how the name resolved, for `qwenvl models NAME`

    @property
    def pixels_per_token(self) -> int:
        """Pixels one image token covers: ``factor`` squared (1024 for 32 px, 784 for 28 px) [billing]."""
        return self.factor * self.factor

    @property
    def default_max_pixels(self) -> int:
        """The default per-image pixel budget (``image_tokens`` × ``pixels_per_token``), e.g. 2,621,440 for
        Qwen3-VL (2560 tokens × 32 × 32)."""
        return self.image_tokens * self.pixels_per_token

    @property
    def min_pixels(self) -> int:
        """The fewest pixels an image is scaled to (``min_image_tokens`` tokens, 4 for most models) [billing]."""
        return self.min_image_tokens * self.pixels_per_token

    @property
    def high_res_max_pixels(self) -> int:
        """The per-image pixel cap with ``vl_high_resolution_images``: 16384 tokens' worth [billing]."""
        return HIGH_RES_IMAGE_TOKENS * self.pixels_per_token

    @property
    def thinking_default(self) -> bool:
        """Whether the model thinks when a request does not send ``enable_thinking``: the thinking-only models
        (QVQ) always do; the hybrid Qwen3-VL plus and flash models do not ("false: default for qwen3-vl-plus,
        qwen3-vl-flash series", alibabacloud.com/help/en/model-studio/visual-reasoning); the others cannot."""
        return self.thinking_only

    @property
    def reads_ocr_options(self) -> bool:
        """Whether the model reads ``ocr_options`` (a built-in OCR task: ``table_parsing``...): the qwen-vl-ocr
        family only. The official Qwen-OCR page documents the parameter for those models alone
        (alibabacloud.com/help/en/model-studio/qwen-vl-ocr, updated 2026-02-04); the Qwen-VL (qwen3-vl, qwen2.5-vl)
        and QVQ pages list no such parameter, so a general model sent it would read the page as if none were given.
        """
        return self.family == "qwen-vl-ocr"

    @property
    def has_price(self) -> bool:
        """True when the table has a price for the model in at least one currency."""
        return bool(self.prices.cny or self.prices.usd)


def _qwen3vl(name: str, **kw) -> ModelInfo:
    # Qwen3-VL: 32 px per token [billing]; 2560-token default (max_pixels 2,621,440) [issue10, checked 2026-11];
    # context 256K, max output 32K [card qwen3-vl-plus/flash]; thinking, tools [vision, 2025-11-18];
    # remote video URL up to 2 GB [issue10, checked 2026-11].
    base: dict[str, Any] = dict(
        family="qwen3-vl",
        factor=32,
        image_tokens=2560,
        low_detail_tokens=640,
        context_tokens=262_144,
        max_output_tokens=32_768,
        thinking=True,
        tools=True,
        video_frame_tokens=768,
        video_total_tokens=65536,
        video_url_max_bytes=2 * GB,
        grounding="relative-1000",
    )
    base.update(kw)
    return ModelInfo(name=name, **base)


def _qwen25vl(name: str, **kw) -> ModelInfo:
    # Qwen2.5-VL class: 28 px per token, 1280-token default [billing; seed 004]; at most 512 frames per video
    # [issue10, checked 2026-11; billing example code "qwen2.5-vl: FPS_MAX_FRAMES 512"]; no
    # vl_high_resolution_images for the 28-px models [issue10, checked 2026-11]; remote video URL up to 1 GB.
    base: dict[str, Any] = dict(
        family="qwen2.5-vl",
        factor=28,
        image_tokens=1280,
        low_detail_tokens=320,
        context_tokens=131_072,
        max_output_tokens=8_192,
        structured_output=False,
        high_res=False,
        video_frame_tokens=768,
        video_total_tokens=65536,
        video_max_frames=512,
        grounding="absolute",
    )
    base.update(kw)
    return ModelInfo(name=name, **base)


def _vl_current(name: str, **kw) -> ModelInfo:
    # The current qwen-vl-max / qwen-vl-plus (aliases, -latest and the 2025-07/08 snapshots): 32 px per token and
    # a 2560-token default (max_pixels 2,621,440), high resolution supported [issue10, checked 2026-11];
    # structured output in the stable and latest versions [vision, 2025-11-18]; context 128K, output 8K [card].
    base = dict(factor=32, image_tokens=2560, low_detail_tokens=640, high_res=True, structured_output=True)
    base.update(kw)
    return _qwen25vl(name, **base)


def _vl_old(name: str, alias: str, **kw) -> ModelInfo:
    # Older qwen-vl-max / qwen-vl-plus snapshots: 28 px, 1280 tokens [issue10, checked 2026-11]; no structured
    # output (only the stable and latest versions have it) [vision, 2025-11-18]. Price as the alias (UNVERIFIED
    # for the dated snapshot).
    return _qwen25vl(
        name,
        prices=_BY_NAME[alias].prices,
        video_url_max_bytes=_BY_NAME[alias].video_url_max_bytes,
        resolution=f"older snapshot of {alias}: its own 28-px rules",
        **kw,
    )


_BY_NAME: dict[str, ModelInfo] = {}


def _add(*models: ModelInfo) -> None:
    for m in models:
        _BY_NAME[m.name] = m


# --- prices -----------------------------------------------------------------------------------------------
# CNY tiers of qwen3-vl-plus and qwen3-vl-flash [issue10, checked 2026-11; card qwen3-vl-plus agrees];
# USD lowest tiers [issue10, checked 2026-11]. USD upper tiers: our reading of the international pricing page,
# in the same 1 : 1.5 : 3 (plus) and 1 : 1.5 : 2.4 (flash) steps; UNVERIFIED against a stored copy.
_QWEN3_VL_PLUS = Prices(
    cny=(PriceTier(K32, 1.0, 10.0), PriceTier(K128, 1.5, 15.0), PriceTier(K256, 3.0, 30.0)),
    usd=(PriceTier(K32, 0.20, 1.60), PriceTier(K128, 0.30, 2.40), PriceTier(K256, 0.60, 4.80)),
)
_QWEN3_VL_FLASH = Prices(
    cny=(PriceTier(K32, 0.15, 1.5), PriceTier(K128, 0.3, 3.0), PriceTier(K256, 0.6, 6.0)),
    usd=(PriceTier(K32, 0.05, 0.40), PriceTier(K128, 0.075, 0.60), PriceTier(K256, 0.12, 0.96)),
)

_add(
    _qwen3vl("qwen3-vl-plus", prices=_QWEN3_VL_PLUS, video_frame_tokens=640, video_total_tokens=131072),
    _qwen3vl("qwen3-vl-flash", prices=_QWEN3_VL_FLASH),
    # qwen-vl-max: 1.6 / 4 CNY [card qwen-vl-max]; $0.80 / $3.20 [issue10, checked 2026-11]; URLs up to 2 GB.
    _vl_current("qwen-vl-max", prices=_flat((1.6, 4.0), (0.80, 3.20)), video_url_max_bytes=2 * GB),
    # qwen-vl-plus: 0.8 / 2 CNY [card qwen-vl-plus]; $0.21 / $0.63 [issue10, checked 2026-11].
    _vl_current("qwen-vl-plus", prices=_flat((0.8, 2.0), (0.21, 0.63))),
    # Open Qwen2.5-VL models: CNY prices as before (model list); no USD price in our sources (shown "unknown").
    # No response_format [issue10, checked 2026-11]: JSON mode goes through the prompt and validation.
    _qwen25vl("qwen2.5-vl-72b-instruct", prices=_flat((16.0, 48.0))),
    _qwen25vl("qwen2.5-vl-32b-instruct", prices=_flat((8.0, 24.0))),
    _qwen25vl("qwen2.5-vl-7b-instruct", prices=_flat((2.0, 5.0))),
    _qwen25vl("qwen2.5-vl-3b-instruct", prices=_flat((1.2, 3.6))),
    # QVQ: 28 px, always thinks, streams only, no structured output, no high resolution [issue10, 2026-11];
    # qvq-max $1.20 / $4.80 [issue10, checked 2026-11].
    _qwen25vl(
        "qvq-max",
        family="qvq",
        thinking=True,
        thinking_only=True,
        stream_only=True,
        prices=_flat((8.0, 32.0), (1.20, 4.80)),
    ),
    _qwen25vl("qvq-plus", family="qvq", thinking=True, thinking_only=True, stream_only=True, prices=_flat((2.0, 5.0))),
    # qwen-vl-ocr (current, Qwen3-VL based): 32 px, context 38,192, max output 8,192, min 3 tokens (3,072 px)
    # [issue10, checked 2026-11]; default budget 8192 tokens (max_pixels 8,388,608); 0.3 / 0.5 CNY (model list),
    # $0.07 / $0.16 [issue10, checked 2026-11]; images only, no video (OCR page; UNVERIFIED copy).
    _qwen25vl(
        "qwen-vl-ocr",
        family="qwen-vl-ocr",
        factor=32,
        image_tokens=8192,
        low_detail_tokens=1280,
        context_tokens=38_192,
        max_output_tokens=8_192,
        min_image_tokens=3,
        structured_output=True,
        high_res=True,
        video=False,
        prices=_flat((0.3, 0.5), (0.07, 0.16)),
    ),
)
_add(
    # Qwen3-VL snapshots: qwen3-vl-plus "functionally equals qwen3-vl-plus-2025-12-19" [card qwen3-vl-plus];
    # qwen3-vl-plus-2025-09-23 and qwen3-vl-flash-2025-10-15 from the model list (UNVERIFIED copy).
    *(
        replace(_BY_NAME[alias], name=snap, resolution=f"snapshot of {alias}: same rules")
        for alias, snap in (
            ("qwen3-vl-plus", "qwen3-vl-plus-2025-12-19"),
            ("qwen3-vl-plus", "qwen3-vl-plus-2025-09-23"),
            ("qwen3-vl-flash", "qwen3-vl-flash-2025-10-15"),
        )
    ),
    # Current snapshots of the 32-px aliases [issue10, checked 2026-11].
    *(
        replace(_BY_NAME[alias], name=snap, resolution=f"current snapshot of {alias}: same 32-px rules")
        for alias, snap in (
            ("qwen-vl-max", "qwen-vl-max-2025-08-13"),
            ("qwen-vl-plus", "qwen-vl-plus-2025-08-15"),
            ("qwen-vl-plus", "qwen-vl-plus-2025-07-10"),
        )
    ),
    # Older snapshots: their own 28-px family [issue10, checked 2026-11].
    *(
        _vl_old(snap, alias)
        for alias, snap in (
            ("qwen-vl-max", "qwen-vl-max-2025-04-08"),
            ("qwen-vl-max", "qwen-vl-max-2025-04-02"),
            ("qwen-vl-max", "qwen-vl-max-2025-01-25"),
            ("qwen-vl-plus", "qwen-vl-plus-2025-05-07"),
            ("qwen-vl-plus", "qwen-vl-plus-2025-01-25"),
        )
    ),
    # Older OCR snapshots: 28 px, 5 / 5 CNY per 1M [issue10, checked 2026-11]; context as the older OCR
    # model (34,096 / 4,096, model list before 2025-10).
    *(
        _qwen25vl(
            snap,
            family="qwen-vl-ocr",
            image_tokens=8192,
            low_detail_tokens=1280,
            context_tokens=34_096,
            max_output_tokens=4_096,
            structured_output=True,
            video=False,
            prices=_flat((5.0, 5.0)),
            resolution="older snapshot of qwen-vl-ocr: its own 28-px rules and price",
        )
        for snap in ("qwen-vl-ocr-2025-08-28", "qwen-vl-ocr-2025-04-13", "qwen-vl-ocr-2024-10-28")
    ),
)

MODELS: dict[str, ModelInfo] = dict(_BY_NAME)
ALIASES = (
    "qwen3-vl-plus",
    "qwen3-vl-flash",
    "qwen-vl-max",
    "qwen-vl-plus",
    "qwen2.5-vl-72b-instruct",
    "qwen2.5-vl-32b-instruct",
    "qwen2.5-vl-7b-instruct",
    "qwen2.5-vl-3b-instruct",
    "qvq-max",
    "qvq-plus",
    "qwen-vl-ocr",
)  # the entries that take "-latest" and unlisted dated snapshots
DEFAULT_MODEL = "qwen3-vl-plus"

_LATEST = "-latest"
_DATED = re.compile(r"^-(\d{4}-\d{2}-\d{2}|\d{4}|\d+)$")  # "-2025-12-19", "-1201"
_DAY = re.compile(r"^-(\d{4}-\d{2}-\d{2})$")  # a snapshot's date, NAME-YYYY-MM-DD
SNAPSHOT_RULE = (
    "a dated snapshot NAME-YYYY-MM-DD the table does not list takes the facts of NAME when it is newer than every "
    "listed snapshot of NAME, else of the newest listed one before it"
)  # qwenvl's rule (the service names snapshots so: reference/dashscope-api.md §1.1, qwen3-vl-flash-2026-01-22)


def dated_snapshot(base: str, key: str, name: str) -> ModelInfo | None:
    """The entry an unlisted ``<base>-YYYY-MM-DD`` (``key``, lower case) inherits (``SNAPSHOT_RULE``): ``base``
    itself when the date is after every snapshot of it the table lists, else the newest listed one before it
    (rules change between snapshots: the older qwen-vl-max ones are 28 px); known either way. A date before every
    listed snapshot stays unknown (``known=False``: the rules then are not in the table).
    None when ``key`` is not such a name. Raises nothing."""
    match = _DAY.match(key[len(base) :])
    if match is None:
        return None
    day = match.group(1)
    listed = sorted(k[len(base) + 1 :] for k in MODELS if k.startswith(base + "-") and _DAY.match(k[len(base) :]))
    before = [d for d in listed if d <= day]
    if listed and not before:
        return replace(
            MODELS[base], name=name, entry=base, known=False, resolution=f"snapshot older than every listed {base}"
        )
    if before and before[-1] != listed[-1]:
        entry, why = f"{base}-{before[-1]}", "the newest listed snapshot before it"
    else:
        entry, why = base, "newer than every listed snapshot"
    return replace(
        MODELS[entry], name=name, entry=entry, known=True, resolution=f"dated snapshot of {base}, {why}: its facts"
    )


def model_info(name: str) -> ModelInfo:
    """The table entry for a model name, a listed snapshot, an alias (``-latest``), or a guess.

    Resolution, in order: the name itself (listed snapshots have their own entries: qwen-vl-max-2025-01-25 is
    28 px while qwen-vl-max is 32 px); ``<alias>-latest`` is the alias; an unlisted dated snapshot
    ``<alias>-YYYY-MM-DD`` (``qwen3-vl-flash-2026-01-22``) inherits its facts by ``SNAPSHOT_RULE``
    (``dated_snapshot``: known, unless older than every listed snapshot); another numbered suffix
    (``-1201``) takes the alias's rules but counts as unknown; another listed name followed by ``-something``
    (``qwen3-vl-plus-preview``) takes the rules of the longest such listed name, with no price, and counts as
    unknown; anything else is classified
    from the name (the family decides the pixel rule) with no price. Unknown names are returned with
    ``known=False`` and logged once per name on the ``qwenvl`` logger (the CLI prints it as a one-line
    warning; see ``guess_warning``). ``Qwen/...`` Hugging Face ids of the open models are looked up without the
    prefix; any other name that differs from its lower case only in case or surrounding whitespace
    (``QWEN3-VL-PLUS``, ``" qwen3-vl-plus"``) is not a DashScope name (the service refuses it): unknown, unpriced,
    with the lower-case name's rules (``near_model`` names it; ``typo_error`` refuses to send it). Raises nothing:
    every name gets rules.
    """
    return _lookup(name, warn=True)


def listed_name(name: str) -> bool:
    """Whether the table knows ``name`` (``model_info(name).known``: a DashScope model with its own rules), without
    logging a guess for a name it does not. Raises nothing."""
    return _lookup(name, warn=False).known


def _lookup(name: str, *, warn: bool) -> ModelInfo:
    """``model_info``'s resolution; ``warn``: whether an unknown name is logged (``_warned``), False for a name
    looked up for another's sake (the name meant by one in other case: ``_miscased``). Raises nothing."""
    key = name.strip().lower()
    if key.startswith("qwen/"):  # Hugging Face ids of the open models, e.g. Qwen/Qwen2.5-VL-7B-Instruct
        key = key[len("qwen/") :]
    elif key and key != name:  # QWEN3-VL-PLUS, " qwen3-vl-plus": a name DashScope refuses (its names are exact)
        return _miscased(name, key, warn=warn)
    if key in MODELS:
        info = MODELS[key]
        return info if info.name == name else replace(info, name=name, entry=key)
    for base in sorted(ALIASES, key=len, reverse=True):
        if key.startswith(base):
            rest = key[len(base) :]
            if rest == _LATEST:
                return replace(MODELS[base], name=name, entry=base, resolution=f"-latest alias of {base}")
            snapshot = dated_snapshot(base, key, name)
            if snapshot is not None:
                return snapshot if snapshot.known else _warned(snapshot, warn)
            if _DATED.match(rest):
                return _warned(
                    replace(
                        MODELS[base],
                        name=name,
                        entry=base,
                        known=False,
                        resolution=f"unlisted snapshot: rules of {base}",
                    ),
                    warn,
                )
    listed = _listed_prefix(key)
    if listed is not None:  # qwen3-vl-plus-preview: a variant of qwen3-vl-plus, whose price is not known
        return _warned(
            replace(
                MODELS[listed],
                name=name,
                prices=Prices(),
                known=False,
                entry=listed,
                resolution=f"not in the table: a variant of {listed}, with its rules and no price",
            ),
            warn,
        )
    return _guess(name, key, warn=warn)


def _miscased(name: str, key: str, *, warn: bool) -> ModelInfo:
    """A name that differs from ``key`` (its lower case, stripped) only in case or surrounding whitespace: not a
    name DashScope serves (its model names are lower case and exact: reference/dashscope-api.md), so unknown and
    unpriced, with the rules of ``key`` (plan refuses to send it: ``typo_error``)."""
    from qwenvl import env as qenv

    meant = near_model(name)  # a model the table knows, else None: never a name DashScope does not have
    base = _lookup(meant or key, warn=False)  # the rules of the name meant, without a warning naming it: not used
    info = replace(
        base,
        name=name,
        entry=base.entry or base.name,
        prices=Prices(),
        known=False,
        resolution="not a model name (DashScope's are lower case and exact); "
        + (f"did you mean {meant}? Its rules assumed, no price" if meant else f"the rules of {key} assumed, no price"),
    )
    # warned unless it would be refused as the listed name in other case (the refusal says it); a name the table
    # does not know in any case (a model a server answered with) is warned of as any unknown name is
    return _warned(info, warn) if typo_error(name, allowed=qenv.unlisted_models()) is None or not base.known else info


def _listed_prefix(key: str) -> str | None:
    """The longest listed name that ``key`` (lower case) continues with a dash (``qwen3-vl-plus`` for
    ``qwen3-vl-plus-preview``), or None. Raises nothing."""
    found = [m for m in MODELS if key.startswith(m + "-")]
    return max(found, key=len) if found else None


# Words of model names besides those of the listed ones: a name made only of such words (and numbers) may be a
# model newer than the table (qwen3-vl-max, qwen3.5-vl-plus), never taken for a misspelling.
_NAME_WORDS = frozenset(
    {"preview", "latest", "instruct", "thinking", "turbo", "mini", "lite", "pro", "omni", "chat", "coder", "vl"}
)
_TYPO_RATIO = 0.85  # difflib ratio at or above which a name with an unknown word is taken for a listed one's


def _words(name: str) -> set[str]:
    return set(re.findall(r"[a-z]{2,}", name))  # letters only: "qwen3.5" is qwen, "a3b" nothing


def near_model(name: str) -> str | None:
    """The listed model ``name`` is most likely a misspelling of (``qwen3-vl-plus`` for ``qwen3-vl-plsu``), or
    None. Only for a name the table does not resolve (``model_info(name).known`` False, and not a listed name
    followed by ``-something``: ``qwen3-vl-plus-preview`` is a variant, not a typo) that holds a word no listed
    name has (``plsu``) and is within ``_TYPO_RATIO`` of a listed name (``qwenvl.spelling.closest``); a name of
    known words (``qwen3-vl-max``, ``qwen3.5-vl-plus``) may be a newer model and is None. A name that differs from
    a lower-case one only in case or surrounding whitespace (``QWEN3-VL-PLUS``; not a ``Qwen/...`` Hugging Face id)
    is not a DashScope name: the lower-case one when the table knows it (else the listed one it misspells, else None:
    ``Qwen3-VL-Tiny`` suggests no ``qwen3-vl-tiny``, which DashScope does not have). Raises nothing."""
    from qwenvl.spelling import closest

    key = name.strip().lower()
    if key and key != name and not key.startswith("qwen/"):  # QWEN3-VL-PLUS: the lower-case name (or its typo's)
        return near_model(key) or (key if _lookup(key, warn=False).known else None)
    key = key.removeprefix("qwen/")
    if not key or key in MODELS or _listed_prefix(key) is not None:
        return None
    known_words = _NAME_WORDS.union(*(_words(m) for m in MODELS))
    if not _words(key) - known_words:
        return None
    near = closest(key, sorted(MODELS, key=len), cutoff=_TYPO_RATIO)
    return near[0] if near else None


# The words of a name that say it is of a Qwen-VL family (``names_a_family``): vision-language (``qwen3.5-vl-plus``),
# QVQ, Omni (which reads images) and OCR. A Qwen text model (qwen-max, qwen3-max, qwen2.5-72b-instruct) has none.
_FAMILY_WORDS = frozenset({"vl", "qvq", "omni", "ocr"})


def names_a_family(name: str) -> bool:
    """Whether ``name`` says which Qwen-VL family it is of, as ``_guess`` reads it: a listed name or one continuing
    a listed name, or a name with a family word (``_FAMILY_WORDS``: ``qwen3.5-vl-plus``, ``qvq-plus``,
    ``Qwen/Qwen2.5-VL-7B-Instruct``, ``qwen3-omni-flash``). ``nonsense-model`` and the Qwen text models
    (``qwen-max``, ``qwen3-max``) do not: their rules would be a guess with nothing behind it (``plan`` refuses
    them on DashScope's protocols, ``qwenvl models`` calls them unknown). Raises nothing."""
    key = name.strip().lower().removeprefix("qwen/")
    return key in MODELS or _listed_prefix(key) is not None or bool(_words(key) & _FAMILY_WORDS)


def _guess(name: str, key: str, *, warn: bool) -> ModelInfo:
    from qwenvl import env as qenv

    near = near_model(name)
    if near is not None:  # a misspelling: the rules of the model meant (plan refuses to send it: typo_error)
        info = replace(
            MODELS[near],
            name=name,
            prices=Prices(),
            known=False,
            entry=near,
            resolution=f"not in the table; did you mean {near}? Its rules assumed, no price",
        )
        # warned only when it will be sent (named in $QWENVL_UNLISTED_MODELS); else the refusal says it
        return _warned(info, warn) if typo_error(name, allowed=qenv.unlisted_models()) is None else info
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
    if not names_a_family(key):  # qwen-max, nonsense-model: no family to guess; refused (plan.check_model_name),
        # never warned of as a guess (the 32-px rules are a placeholder no request is sent with)
        return replace(proto, name=name, prices=Prices(), known=False, entry="", resolution=f"unknown: {NO_FAMILY}")
    return _warned(
        replace(
            proto,
            name=name,
            prices=Prices(),
            known=False,
            entry=proto.name,
            resolution=f"not in the table: guessed from the name as {proto.family} (rules of {proto.name}, no price)",
        ),
        warn,
    )


NO_FAMILY = "nothing in the name says which Qwen-VL family it is of"  # (``names_a_family``)


def no_family_error(name: str) -> UsageError | None:
    """The error for a model name the table does not know that names no Qwen-VL family (``names_a_family``:
    ``qwen-max``, ``nonsense-model``): unknown (exit 2), with the listed names nearest to it, never the rules of a
    family guessed for it; ``$QWENVL_UNLISTED_MODELS`` does not change it (no rules to send it by). None for any
    other name. Raises nothing."""
    from qwenvl.errors import UsageError
    from qwenvl.spelling import closest

    if names_a_family(name):
        return None
    near = closest(name.strip().lower(), list(MODELS), cutoff=0.6)[:3]
    meant = f": did you mean {' or '.join(near)}?" if near else ""
    return UsageError(
        f"{name} is not a model qwenvl knows, and {NO_FAMILY}{meant}",
        hint="`qwenvl models` lists the Qwen-VL models (a text model such as qwen-max takes no images).",
    )


_WARNED: set[str] = set()


def guess_warning(info: ModelInfo) -> str | None:
    """The one-line warning for a model the table does not know (None for a known one). Raises nothing."""
    if info.known:
        return None
    priced = "" if info.has_price else "; cost unknown"
    near = near_model(info.name)
    meant = f" (did you mean {near}?)" if near else ""
    return (
        f"{info.name} is not in qwenvl's model table{meant}: estimates use a guessed family "
        f"({info.family}, {info.factor} px per token{priced}); see `qwenvl models`"
    )


def typo_error(name: str, *, allowed: Sequence[str] = ()) -> UsageError | None:
    """The error for sending a model name that looks like a misspelling of a listed one (``near_model``), before
    anything is sent: ``qwen3-vl-plsu is not a model qwenvl knows: did you mean qwen3-vl-plus?`` (exit 2), or a name
    in other case than a lower-case one (``Qwen3-VL-Tiny``: DashScope's names are exact), naming only a model the
    table knows (none for ``Qwen3-VL-Tiny``); its hint
    how to send the name anyway (``$QWENVL_UNLISTED_MODELS``) and how to give the right one where the wrong one came
    from (``$QWENVL_MODEL`` when it holds ``name``, else ``--model``). None for any other name, and for a name in
    ``allowed`` (that variable's names: the user insists). Raises nothing."""
    from qwenvl import env as qenv
    from qwenvl.errors import UsageError

    near = near_model(name)
    if name in {a.strip() for a in allowed}:
        return None
    key = name.strip().lower()
    if near is None and key and key != name and not key.startswith("qwen/"):  # Qwen3-VL-Tiny: DashScope's names are
        # lower case and exact, and the table knows no model of that name in any case: nothing to suggest
        return UsageError(
            f"'{name}' is not a model name (DashScope's are lower case and exact), and qwenvl knows no model "
            "of that name in any case",
            hint=("Set QWENVL_MODEL (it holds " + name + ")" if qenv.model() == name else "Give --model")
            + " a model DashScope serves (`qwenvl models` lists them); a server of your own (--base-url) that lists "
            "the name takes it as it is.",
        )
    if near is None:
        return None
    # the hint names where the name came from: $QWENVL_MODEL when it holds it, else --model (a verb that takes
    # requests says its "model" key: ``cli.common.fit_hint``; the library says model=)
    listed = "`qwenvl models` lists the models"
    give = (
        f"Set QWENVL_MODEL={near} (it holds {name}; {listed})"
        if qenv.model() == name
        else f"Give --model {near} ({listed})"
    )
    if name.strip().lower() == near and name != near:  # the service's names are exact: nothing to insist on
        return UsageError(
            f"'{name}' is not a model name (DashScope's are lower case and exact): did you mean {near}?",
            hint=f"{give}.",
        )
    return UsageError(
        f"{name} is not a model qwenvl knows: did you mean {near}?",
        hint=f"{give}; to send {name} as it is (a model newer than qwenvl's table), set QWENVL_UNLISTED_MODELS={name}."
        if names_a_family(name)
        else f"{give}.",  # a name of no family is refused however it is given (``no_family_error``)
    )


def _warned(info: ModelInfo, warn: bool = True) -> ModelInfo:
    """``info``, its ``guess_warning`` logged once per name (on the ``qwenvl`` logger) when ``warn``."""
    if warn and info.name not in _WARNED:
        _WARNED.add(info.name)
        log.warning("%s", guess_warning(info))
    return info


# --- prices and costs: the one home ----------------------------------------------------------------------


def currency_of(region: str | None) -> Currency:
    """The billing currency of a region (None: ``$QWENVL_REGION``, else ``cn``): CNY in Beijing, USD elsewhere
    [issue10]. Raises UsageError for an unknown region."""
    from qwenvl.config import effective_region

    return REGION_CURRENCY[effective_region(region)]


def price_for(model: ModelInfo | str, input_tokens: int, *, region: str | None = None) -> Price | None:
    """The price a request with ``input_tokens`` input tokens pays in ``region``: the tier its input length
    falls in (the whole request is billed at that tier). An input longer than the last tier's bound gets the
    last tier. None when the table has no price in that region's currency. Raises UsageError for an unknown
    region."""
    info = model_info(model) if isinstance(model, str) else model
    currency = currency_of(region)
    tiers = info.prices.tiers(currency)
    if not tiers:
        return None
    low = 0
    for i, tier in enumerate(tiers):
        if tier.up_to is None or input_tokens <= tier.up_to or i == len(tiers) - 1:
            return Price(currency, tier.input, tier.output, i, tier.label(low), len(tiers))
        low = tier.up_to
    raise AssertionError("unreachable")


def estimate_cost(
    model: ModelInfo | str | None,
    input_tokens: int | None,
    output_tokens: int | None = 0,
    *,
    region: str | None = None,
    factor: float = 1.0,
) -> float | None:
    """Estimated cost of one request, in ``currency_of(region)`` (CNY when no region is given).

    The request's input length picks the tier (``price_for``). ``factor`` scales it (0.5 for the Batch API).
    None when the model, the input tokens or the price in that currency is unknown. Raises UsageError for an
    unknown region."""
    if model is None or input_tokens is None:
        return None
    price = price_for(model, input_tokens, region=region)
    if price is None:
        return None
    return price.cost(input_tokens, output_tokens or 0) * factor


# The protocols whose answers are paid for (DashScope's two, and its Batch API, as the usage log names it); an
# answer over any other (a local model behind the openai or transformers backend) costs no money.
PAID_PROTOCOLS = ("compat", "native", "batch-api")

# A local model (the openai and transformers backends, and `qwenvl serve` in front of them) has no price: its cost
# is never 0 in a currency. In text it reads LOCAL; in JSON it is ``cost_fields(..., local=True)``:
# ``{"cost": null, "currency": null, "local": true}``. The one rule for every place a cost is computed, shown or
# stored (tokens, --dry-run, ask/chat, batch, --max-cost, usage, serve's usage log, the playground, MCP).
LOCAL = "local"


LOCAL_SUFFIX = "-local"  # a paid protocol's name in the usage log for a local model's answers (``logged_protocol``)


# What a paid model's answers over the plain openai protocol count as: the openai backend at a ``qwenvl serve`` that
# forwards to DashScope (its listing says ``"local": false``: ``Client.is_local``) speaks DashScope's compat protocol
# there (serve's /v1/chat/completions), and DashScope bills it as such.
PAID_OPENAI = "compat"


def logged_protocol(protocol: str, *, local: bool) -> str:
    """The protocol as the usage log records it (and a paid answer's ``Response.protocol``): ``protocol``; for a
    local model's answer over a paid protocol (a ``qwenvl serve`` in front of a local engine: ``Client.served_model``)
    ``protocol + LOCAL_SUFFIX`` (``compat-local``), which is not one of ``PAID_PROTOCOLS``: no price, never counted
    as paid; for a paid model's answer over a protocol that is not (the openai backend at a ``qwenvl serve``
    forwarding to DashScope) ``PAID_OPENAI``: priced and counted as DashScope's. Raises nothing."""
    if local and is_paid(protocol):
        return protocol + LOCAL_SUFFIX
    return PAID_OPENAI if not local and not is_paid(protocol) else protocol


def answer_paid(response: Response) -> bool:
    """Whether ``response`` was paid for: over a paid protocol (``is_paid``) and not a local model's
    (``Response.local``: a ``qwenvl serve`` in front of one answers over DashScope's protocols). Raises nothing."""
    return is_paid(response.protocol) and not response.local


def is_paid(protocol: str | None) -> bool:
    """Whether answers over ``protocol`` are paid for (``PAID_PROTOCOLS``); False for a local model's. Raises
    nothing."""
    return protocol in PAID_PROTOCOLS


def spent_label(protocol: str | None) -> str:
    """The word a line uses for what a call took: ``"paid"`` for an answer over a paid protocol (``is_paid``),
    ``"used"`` for a local model's, which costs no money and is never said to be paid. Raises nothing."""
    return "paid" if is_paid(protocol) else "used"


def cost_fields(cost: float | None, currency: str | None, *, local: bool) -> dict[str, Any]:
    """A cost as JSON gives it: ``{"cost", "currency", "local"}``. For a local model ``{"cost": None, "currency":
    None, "local": True}`` (no price, not 0.0); else the cost rounded (``round_cost``; None when unknown) in
    ``currency`` and ``"local": False``. Raises nothing."""
    if local:
        return {"cost": None, "currency": None, "local": True}
    return {"cost": None if cost is None else round_cost(cost), "currency": currency, "local": False}


def answer_cost(
    response: Response,
    *,
    region: str | None = None,
    factor: float = 1.0,
    model: ModelInfo | str | None = None,
    local: bool | None = None,
) -> float | None:
    """What one answer cost, in ``currency_of(region)``: None for a local model (``local``, by default judged by
    ``answer_paid``: its protocol not one of ``PAID_PROTOCOLS``, or ``Response.local``; no price, shown as
    ``LOCAL``), 0.0 when nothing was paid (it came from the response cache), the sum of its ``parts`` after a
    structured-output repair (the first request and the repair, each at its own tier, a part from the cache at 0),
    else ``estimate_cost`` of its tokens for ``model`` (default ``response.model``) at the request's tier, times
    ``factor`` (0.5 for the Batch API). None when its tokens or the price are unknown. The one rule for the usage
    log, batch records, the CLI's usage line and the MCP tools. Raises UsageError for an unknown region."""
    if local is None:
        local = not answer_paid(response)
    if local:
        return None
    if response.cached:
        return 0.0
    parts = response.parts
    if len(parts) > 1:  # a structured-output repair: each request at its own tier, one from the cache at 0
        costs = [answer_cost(p, region=region, factor=factor, model=model, local=False) for p in parts]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)
    u = response.usage
    return estimate_cost(model or response.model, u.input_tokens, u.output_tokens or 0, region=region, factor=factor)


# The token counts of ``Usage`` summed over several answers (``spent_fields``)
USAGE_COUNTS = ("input_tokens", "output_tokens", "total_tokens", "image_tokens", "video_tokens", "reasoning_tokens")


def spent_fields(responses: Sequence[Response | None], *, region: str | None = None) -> dict[str, Any]:
    """What ``responses`` (one command's answers; None left out) took, as every verb's JSON gives it:
    ``{"usage": {count: sum}, "cost", "currency", "local", "cached", "requests", "request_ids", "request_id"}``.
    ``usage`` sums each of ``USAGE_COUNTS`` the service reported (a count no answer reported left out); the cost is
    ``answer_cost`` summed, in ``currency_of(region)`` (``cost_fields``: None when one answer's is unknown; a local
    model's ``{"cost": None, "currency": None, "local": True}``); ``cached`` is whether every answer came from the
    response cache; ``requests`` is how many requests were paid (``Response.requests``: 2 after a schema repair, 0
    from the cache); ``request_ids`` the service's ids of them in order, ``request_id`` the last one (None when
    none). Raises UsageError for an unknown region."""
    given = [r for r in responses if r is not None]
    usage: dict[str, int] = {}
    cost: float | None = 0.0
    local = bool(given) and all(not answer_paid(r) for r in given)
    for r in given:
        for key in USAGE_COUNTS:
            value = getattr(r.usage, key)
            if value is not None:
                usage[key] = usage.get(key, 0) + value
        one = answer_cost(r, region=region)
        cost = None if cost is None or one is None else cost + one
    ids = [rid for r in given for rid in r.request_ids]
    return {
        "usage": usage,
        **cost_fields(cost if given else None, currency_of(region), local=local),
        "cached": bool(given) and all(r.cached for r in given),
        "requests": sum(r.requests for r in given),
        "request_ids": ids,
        "request_id": ids[-1] if ids else None,
    }


def media_costs(
    model: ModelInfo | str, tokens: Sequence[int | None], *, region: str | None = None
) -> tuple[Price | None, list[float | None], float | None]:
    """The input cost of media that one request carries: ``(price, per-item costs, total cost)``, every item at
    the tier of the known tokens' sum (the request carrying them all; ``price_for``), in ``currency_of(region)``,
    each amount rounded for JSON (``round_cost``). An item with unknown tokens (None: a remote URL) costs None;
    every cost is None when the model has no price in that currency."""
    total = sum(t for t in tokens if t is not None)
    price = price_for(model, total, region=region)
    if price is None:
        return None, [None] * len(tokens), None
    costs = [None if t is None else round_cost(price.cost(t)) for t in tokens]
    return price, costs, round_cost(price.cost(total))


def round_cost(amount: float) -> float:
    """A cost as JSON shows it: 10 significant digits at most (0.0004992, not 0.0004992000000000001)."""
    return float(f"{amount:.10g}")


def format_cost(amount: float | None, currency: str | None, digits: int = 4, *, local: bool = False) -> str:
    """``¥0.0018`` / ``$0.0003`` ("unknown" for None; ``LOCAL`` for a local model's, whatever the amount); amounts
    of 1 or more get 2 decimals, amounts too small for ``digits`` decimals two significant digits (``$0.000031``,
    never a misleading ``$0.0000``). Raises nothing."""
    if local:
        return LOCAL
    if amount is None or currency is None:
        return "unknown"
    symbol = CURRENCY_SYMBOL.get(currency, currency + " ")
    if amount >= 1:
        return f"{symbol}{amount:,.2f}"
    if 0 < amount < 10**-digits:
        digits = 1 - math.floor(math.log10(amount))
    return f"{symbol}{amount:.{digits}f}"


def format_price(value: float, currency: str) -> str:
    """A per-1M price: ``¥1.5``, ``$0.075``. Raises nothing."""
    return f"{CURRENCY_SYMBOL.get(currency, currency + ' ')}{value:g}"


def describe(info: ModelInfo, region: str | None = None) -> dict:
    """Everything the table says about one model, as plain data (``qwenvl models --json``).

    Prices are per 1M tokens in ``currency_of(region)``, one entry per input tier (``input_up_to`` None = no
    bound); an empty list means no known price in that currency. Raises UsageError for an unknown region."""
    currency = currency_of(region)
    tiers = []
    low = 0
    for t in info.prices.tiers(currency):
        tiers.append({"tier": t.label(low), "input_up_to": t.up_to, "input": t.input, "output": t.output})
        low = t.up_to or low
    return {
        "name": info.name,
        "family": info.family,
        "known": info.known,
        "resolves_to": info.entry or info.name,
        "resolution": info.resolution,
        "px_per_token": info.factor,
        "image_tokens": {
            "default": info.image_tokens,
            "high_res": HIGH_RES_IMAGE_TOKENS if info.high_res else None,
            "low_detail": info.low_detail_tokens,
            "min": info.min_image_tokens,
        },
        "default_max_pixels": info.default_max_pixels,
        "context_tokens": info.context_tokens,
        "max_output_tokens": info.max_output_tokens,
        "abilities": {
            "thinking": "always" if info.thinking_only else info.thinking,
            "tools": info.tools,
            "structured_output": info.structured_output,
            "high_res": info.high_res,
            "video": info.video,
            "stream_only": info.stream_only,
        },
        "video": {
            "max_frames": info.video_max_frames,
            "frame_tokens": info.video_frame_tokens,
            "total_tokens": info.video_total_tokens,
            "url_max_bytes": info.video_url_max_bytes,
            "file_max_bytes": MAX_VIDEO_FILE_BYTES,
        }
        if info.video
        else None,
        "grounding": info.grounding,
        "currency": currency,
        "prices_per_1m": tiers,
    }


def temp_storage_available(region: str | None) -> bool:
    """Whether DashScope's temporary storage (oss:// uploads) exists in ``region`` (Beijing only [tempstore]).
    Raises UsageError for an unknown region."""
    from qwenvl.config import effective_region

    return effective_region(region) in TEMP_STORAGE_REGIONS
