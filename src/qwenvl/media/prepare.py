"""The one seam between a request's media references and what goes on the wire.

``prepare_messages`` turns every image and video reference in a message list into what the service can
take (an http(s) URL, an ``oss://`` reference or a ``data:`` URL) and reports what it did per item. It runs
before any request is sent, so a bad file fails here and costs nothing.

**Estimate-only** (``MediaOptions.estimate_only``): the same checks and the same sizes and tokens, from the
headers alone (image header, video container and packets, PDF page sizes): nothing is decoded, resized,
encoded, sampled or rendered. Each item's ``sent`` is a placeholder (``estimate://...``), ``bytes_sent`` is 0
and ``estimate`` is True; such a call can never be sent (``qwenvl.plan.ensure_sendable``). Every size comes
from the same function as in the full path (``_sent_image_size``, ``video.frame_plan``, ``pdf.page_sizes``), so
width, height and tokens are equal, with two limits: a file whose header is sound but whose pixel data is
damaged passes here and fails when prepared; and an image the full path must shrink further to fit
``MAX_IMAGE_BYTES`` (``_fit_bytes``: rare, huge PNG-like content only) is estimated at its budget size, so its
tokens are overestimated. ``mime`` is exact for JPEG sources and ``prepare=False``; otherwise it is the likely
one, as the choice needs the pixels (``images.encode_image``): a photograph-like non-JPEG image may in fact go as
JPEG, a PDF page as JPEG rather than PNG, a video frame of a screen recording as PNG rather than JPEG.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from qwenvl._constants import FETCH_TIMEOUT_S
from qwenvl.errors import MediaError, UsageError
from qwenvl.media import images, resize, tokens
from qwenvl.media.sources import (
    HEAD_BYTES,
    PERMISSION_HINT,
    VIDEO_SUFFIXES,
    Source,
    check_size,
    classify,
    head_bytes,
    local_content,
    media_kind,
    open_regular,
    open_source,
    read_bytes,
    source_size,
    to_data_url,
)
from qwenvl.models import (
    MAX_DATA_URL_BYTES,
    MAX_FETCH_BYTES,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_FILE_BYTES,
    MAX_VIDEO_FILE_BYTES,
    MIN_IMAGE_TOKENS,
    ModelInfo,
)
from qwenvl.types import ImagePart, Message, TextPart, VideoPart

if TYPE_CHECKING:
    from qwenvl.media import video


@dataclass(frozen=True)
class MediaOptions:
    model: ModelInfo
    protocol: str = "compat"
    oss_references: bool = False  # the protocol takes oss:// references (``WireProtocol.oss_references``)
    detail: Literal["auto", "low", "high"] = "auto"
    vl_high_resolution_images: bool | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    prepare: bool = True
    fps: float | None = None
    pages: str | None = None  # PDF pages to send, e.g. "1-3,5" (all when None)
    fetch_urls: bool = False  # download remote images and prepare them like local files
    video_as: Literal["frames", "file"] = "frames"  # a local video: sampled here, or sent whole (upload)
    fetch_timeout_s: float = FETCH_TIMEOUT_S
    # sizes and tokens from headers only; nothing decoded, encoded or rendered; the result cannot be sent
    estimate_only: bool = False
    # an in-process model: local images and sampled video frames are decoded and resized but not encoded;
    # ``PreparedItem.pixels`` holds them and ``sent`` is a ``memory://sha256:...`` reference per image or frame
    # (set by qwenvl.plan for media_form="memory")
    keep_pixels: bool = False
    # refuse a PDF whose selected pages cannot fit the model's context in one request, before rendering them; False
    # where files are counted rather than sent as one request (``qwenvl.estimate.estimate_files``: `qwenvl tokens`)
    context_check: bool = True


ESTIMATE_SCHEME = "estimate://"  # the placeholder ``sent`` of an estimate-only item
ESTIMATE_NOTE = "estimate only: size and tokens from the header; not decoded, resized or encoded"
VIDEO_ESTIMATE_NOTE = "estimate only: frame count and size from the container; no frame decoded"
# the notes that say an item was estimated only (``PreparedItem.estimate``): a table of many says it once instead
ESTIMATE_NOTES = (ESTIMATE_NOTE, VIDEO_ESTIMATE_NOTE)


@dataclass
class PreparedItem:
    """One image or video as it will be sent."""

    source: str  # the reference the user gave
    kind: Literal["image", "video"]
    sent: str | list[str]  # URL(s) on the wire
    mime: str | None = None  # a frame list's: ``frames_mime`` (several, comma-separated, when frames differ)
    bytes_sent: int = 0  # size of inline data (0 for URLs)
    width: int | None = None  # as sent (None when unknown, e.g. a remote URL)
    height: int | None = None
    tokens: int | None = None  # estimated input tokens (None when unknown)
    notes: list[str] = field(default_factory=list)
    frame_times: list[float] | None = None  # a video's frames: seconds from its start, as the model sees them
    fps: float | None = None  # a sampled video's actual frame rate, sent beside the frame list
    estimate: bool = False  # made by estimate-only preparation: ``sent`` is a placeholder, bytes_sent is 0
    # ``tokens`` is the billing rule's count of what is sent; False where the service decides (a video sent
    # whole: it samples the frames itself, so the count is about that many)
    tokens_exact: bool = True
    pixels: Any = None  # keep_pixels: the RGB PIL image as the model will see it (a frame list: one per frame)
    # the file's own bytes are sent (nothing decoded or encoded): cheap to check again, so a batch's
    # ``PreparedCache`` does not keep it (items naming distinct small images would fill it for nothing)
    as_given: bool = False
    # a PDF page: its 1-based number in the document, and the document's reference as the user gave it (``source``
    # is then the rendered page's data: URL, which the grounding tasks read); None for any other item
    page: int | None = None
    document: str | None = None

    @property
    def label(self) -> str:
        """How a person knows the item: the user's reference, and a PDF page's number (``doc.pdf page 2``)."""
        return f"{self.document} page {self.page}" if self.document is not None else self.source


@dataclass
class PreparedMessages:
    messages: list[Message]
    items: list[PreparedItem]

    @property
    def estimated_media_tokens(self) -> int | None:
        known = [i.tokens for i in self.items if i.tokens is not None]
        return sum(known) if len(known) == len(self.items) else None


# A local image as ``expand_documents`` found it: its source, and its whole content (a small file, read once)
Looked = tuple[Source, bytes]


PREPARED_CACHE_BYTES = 32_000_000  # what one client keeps of media it prepared (``PreparedCache``), in bytes
PREPARED_WAIT_S = 120.0  # the longest a thread waits for another preparing the same media (``PreparedCache``)
# what one client keeps of the files ``fetch_urls`` downloaded (``PreparedCache.downloads``), in bytes: any one
# download (at most MAX_FETCH_BYTES) fits, so a file is downloaded once per client (a CLI run), not per use
FETCHED_CACHE_BYTES = 2 * MAX_FETCH_BYTES


class PreparedCache:
    """Media prepared before, by content, so that what is sent again is not prepared again: the images and
    videos of a conversation's earlier turns (each turn sends the whole history), an image that every item of
    a batch shares, a PDF asked about twice; and the images ``fetch_urls`` downloads, by URL (``fetched``). A
    ``Client`` keeps one; ``prepare_messages`` takes it.

    The key is the SHA-256 of the bytes (a file is read, or hashed, every time: a file changed since is a new
    key and is prepared anew) with everything that shapes the result (``MediaOptions``, the part's budget), so a
    hit is what preparing again would give, checks included; a file that fails them is never stored. Nothing
    estimate-only or kept decoded is stored. At most ``max_bytes`` of prepared data (data: URLs) is kept, the
    least recently used dropped first; one entry larger than half of it (a long video's frames) is not kept.
    Thread-safe (an ``AsyncClient`` prepares in worker threads, a batch in several), and one preparation per
    key at a time (``get_or_make``): threads that ask for what another is preparing wait for it (at most
    ``PREPARED_WAIT_S``, then prepare it themselves), so the 64 workers of a batch whose items share an image
    prepare it once, not 64 times at once."""

    def __init__(
        self, max_bytes: int = PREPARED_CACHE_BYTES, *, keep_as_given: bool = True, downloads: bool = True
    ) -> None:
        self.max_bytes = max_bytes
        # the bytes ``fetched`` downloaded, by URL, apart from the prepared media (a store of the same kind, sized
        # so that any one download is kept: ``FETCHED_CACHE_BYTES``); None in that store itself
        self.downloads: PreparedCache | None = (
            PreparedCache(FETCHED_CACHE_BYTES, downloads=False) if downloads else None
        )
        # keep_as_given=False: an image sent as it is (``PreparedItem.as_given``) is not kept: a batch's cache, where
        # items that name distinct small images would fill it for nothing (a conversation's keeps them)
        self.keep_as_given = keep_as_given
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._making: dict[Hashable, threading.Event] = {}

    def get_or_make(
        self, key: Hashable, make: Callable[[], Any], size: Callable[[Any], int | None]
    ) -> tuple[Any, bool]:
        """(value, True) stored under ``key``, else (``make()``, False), kept with ``size(value)`` bytes (not kept
        when that is None: a value not worth keeping). While
        one thread makes a key's value, the others wait for it (up to ``PREPARED_WAIT_S``) instead of making it
        too; when it was not stored (``make`` raised, or the value was too large to keep) each makes its own.
        Raises what ``make`` raises."""
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    return entry[0], True
                making = self._making.get(key)
                if making is None:
                    making = self._making[key] = threading.Event()
                    break
            if not making.wait(PREPARED_WAIT_S):
                return make(), False  # the other is slow: do not wait for ever
            with self._lock:
                if key not in self._entries:  # it failed or was too large: each makes its own
                    break
        try:
            value = make()
            nbytes = size(value)
            if nbytes is not None and (self.keep_as_given or not getattr(value, "as_given", False)):
                self.put(key, value, nbytes)
            return value, False
        finally:
            with self._lock:
                if self._making.get(key) is making:
                    del self._making[key]
            making.set()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any:
        """The value stored under ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Keep ``value`` (``size`` bytes) under ``key``, dropping the least recently used to stay in bounds."""
        if size > self.max_bytes // 2:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
        if self.downloads is not None:
            self.downloads.clear()


class _Key(tuple):  # type: ignore[type-arg]
    """A ``PreparedCache`` key whose hash is computed once: it holds a ``MediaOptions`` (a ``ModelInfo`` inside),
    whose generated ``__hash__`` hashes every field anew, and one lookup and store hash the key about seven times
    (``get_or_make``). Equal to the plain tuple of the same parts."""

    _hash: int

    def __new__(cls, *parts: Hashable) -> _Key:
        key = super().__new__(cls, parts)
        key._hash = tuple.__hash__(key)
        return key

    def __hash__(self) -> int:
        return self._hash


def _digest(src: bytes | Path) -> bytes:
    """SHA-256 of bytes, or of a file's content (read in blocks; a video is not held in memory for this)."""
    if isinstance(src, bytes):
        return hashlib.sha256(src).digest()
    digest = hashlib.sha256()
    with open_regular(src) as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.digest()


def _item_size(item: PreparedItem) -> int:
    """What keeping ``item`` costs in bytes (its data URLs, and a little for the rest)."""
    sent = [item.sent] if isinstance(item.sent, str) else item.sent
    return sum(len(url) for url in sent) + 512


def _copy(item: PreparedItem, **changes: Any) -> PreparedItem:
    """A copy of ``item`` whose lists are its own (a caller may change what it was given)."""
    lists: dict[str, Any] = {"notes": list(item.notes)}
    if isinstance(item.sent, list):
        lists["sent"] = list(item.sent)
    if item.frame_times is not None:
        lists["frame_times"] = list(item.frame_times)
    return replace(item, **lists, **changes)


def _cached_item(
    cache: PreparedCache | None, key: tuple[Hashable, ...] | None, ref: str, make: Callable[[], PreparedItem]
) -> PreparedItem:
    """``make()``, or a copy of what it gave before for ``key`` (with ``ref`` as its source)."""
    if cache is None or key is None:
        return make()
    item, hit = cache.get_or_make(key, make, _item_size)
    return _copy(item, source=ref) if hit else _copy(item)


def part_options(part: ImagePart | VideoPart, options: MediaOptions) -> MediaOptions:
    """``options`` with the part's own media options over the request's: ``pages`` (an image part's),
    ``prepare`` and ``video_as`` (a video part's), where the part sets them (a history's parts keep their own
    turn's, ``qwenvl.plan.build_messages``). Raises nothing."""
    own: dict[str, Any] = {}
    if isinstance(part, ImagePart) and part.pages is not None:
        own["pages"] = part.pages
    if isinstance(part, VideoPart) and part.video_as is not None:
        own["video_as"] = part.video_as
    if part.prepare is not None:
        own["prepare"] = part.prepare
    return replace(options, **own) if own and any(getattr(options, k) != v for k, v in own.items()) else options


def prepare_messages(
    messages: list[Message], options: MediaOptions, cache: PreparedCache | None = None
) -> PreparedMessages:
    """Every image and video of ``messages`` prepared (``prepare_image``, ``prepare_video``; a local PDF first
    rendered to page images, ``expand_documents``). ``cache``: media prepared before are taken from it
    (``PreparedCache``), and what is prepared now is kept in it. Raises MediaError, UsageError (as those)."""
    # the rendered PDF pages in order, (data URL, the PDF's reference, page number): their items say which page
    # of which document they are, and their notes that they were rendered (not "sent as given")
    rendered: list[tuple[str, str, int]] = []
    looked: dict[str, Looked] = {}  # each small local image as expand_documents classified and read it
    if not options.estimate_only:
        messages = expand_documents(messages, options, cache, rendered, looked)
    pending = deque(rendered)
    out: list[Message] = []
    items: list[PreparedItem] = []
    for message in messages:
        if isinstance(message.content, str) or not message.media():
            out.append(message)
            continue
        parts: list[TextPart | ImagePart | VideoPart] = []
        for part in message.content:
            if isinstance(part, ImagePart):
                own = part_options(part, options)
                document = _pdf_source(part.image) if options.estimate_only else None
                pages = _estimate_document(part, document, own, cache) if document is not None else None
                if pages is None:
                    pages = [prepare_image(part, own, cache, looked=looked.get(part.image))]
                for item in pages:
                    if pending and part.image == pending[0][0]:  # pages keep their order: the next one is this
                        _, item.document, item.page = pending.popleft()
                        if SENT_AS_GIVEN in item.notes:
                            page = "rendered from the PDF and encoded (PNG or JPEG by the images' rule)"
                            item.notes = [page if note == SENT_AS_GIVEN else note for note in item.notes]
                    items.append(item)
                    parts.append(part.model_copy(update={"image": item.sent, "pages": None}))
            elif isinstance(part, VideoPart):
                item = prepare_video(part, part_options(part, options), cache)
                items.append(item)
                update: dict[str, Any] = {"video": item.sent}
                if item.fps is not None:  # the rate the frames really have (clamping changes it)
                    update["fps"] = round(item.fps, 4)
                parts.append(part.model_copy(update=update))
            else:
                parts.append(part)
        out.append(message.model_copy(update={"content": parts}))
    return PreparedMessages(out, items)


def prepare_image(
    part: ImagePart,
    options: MediaOptions,
    cache: PreparedCache | None = None,
    *,
    video_expected: bool = False,
    looked: Looked | None = None,
) -> PreparedItem:
    """Check one image and make it what the service will see (the rules are in ``qwenvl.media.images``).

    A remote URL passes through (its size and tokens stay unknown). A local file or data: URL is identified by
    its content and checked first: format, sides, aspect ratio, decompression bomb, animation. With
    ``options.prepare``, an image over its pixel budget (``resize.image_budget``) is decoded at full scale and
    resized to exactly the size ``smart_resize`` gives (bicubic, as QwenLM's reference), so the service sees the
    same pixels and counts the same tokens. It is also made upright and 8-bit, and re-encoded no less faithfully
    than qwen-vl-utils' quality-90 JPEG and no larger (``images.encode_photo``; graphics as PNG or visually
    lossless JPEG, ``images.encode_graphic``). An image within its budget passes through from its header when
    ``images.passes_through`` says so (JPEG/PNG/WebP, RGB/L/palette, upright, opaque, compact): its bytes are
    only checked for integrity, never decoded whole. Otherwise it is sent as the smaller of the original and a
    re-encoding, unless its pixels need converting (rotation, CMYK, 16-bit, transparency, a format the service
    does not take). What
    is sent always fits ``MAX_IMAGE_BYTES``: JPEG for a PNG, then a lower JPEG quality, then a smaller size,
    with a note (``_fit_bytes``).
    With ``prepare=False`` the original bytes are sent after the same checks, plus an integrity check and
    the size limit.

    With ``options.estimate_only`` the same checks run on the header and the size as sent and the tokens are
    computed by the same rule, but nothing is decoded or encoded: ``sent`` is ``estimate://<source>`` and
    ``bytes_sent`` 0. Not checked then: damaged pixel data (the integrity check and the decode find it), and
    the ``MAX_IMAGE_BYTES`` fitting, which can shrink a huge PNG-like image below its budget (the estimate
    then counts the budget's tokens, an overestimate).

    ``cache``: an image with the same bytes, options and budget prepared before is taken from it, not checked,
    decoded or verified again (``PreparedCache``; not for estimate-only or kept pixels). ``looked``: the part's
    source as ``expand_documents`` classified it, and the small file's whole content it read (``_read_small``), so
    that neither is done twice.
    """
    source = looked[0] if looked is not None else classify(part.image)
    _check_remote(source, options)
    if source.kind == "url" and options.fetch_urls:
        data = fetched(source.url or part.image, options, cache)
        label = source.ref
        info = images.identify(data, label)
    elif source.is_remote:
        return PreparedItem(
            part.image,
            "image",
            source.url or part.image,
            notes=["remote image: size and tokens unknown (the service fetches it)"],
        )
    else:
        label = source.label
        try:
            data, info = read_image(source, options, looked[1] if looked is not None else None)
        except MediaError as exc:
            video_expected = video_expected or (
                source.path is not None and source.path.suffix.lower() in VIDEO_SUFFIXES
            )
            if video_expected:
                raise _not_media(_what_it_holds(exc, source, label), label) from None
            if source.path is not None and source.path.suffix.lower() == ".pdf":
                raise _not_a_pdf(_what_it_holds(exc, source, label), label) from None
            raise exc from None
    if options.estimate_only or (options.keep_pixels and options.prepare):
        return _check_image(part, data, info, label, options)
    key = _Key("image", _digest(data), options, part.min_pixels, part.max_pixels) if cache is not None else None
    return _cached_item(cache, key, part.image, lambda: _check_image(part, data, info, label, options))


def fetched(url: str, options: MediaOptions, cache: PreparedCache | None = None) -> bytes:
    """A remote file's bytes for ``fetch_urls`` (an image, or a PDF: ``pdf_content``; ``qwenvl.transport.fetch_url``:
    at most ``MAX_FETCH_BYTES``, within ``options.fetch_timeout_s``), downloaded once per ``cache``: a URL is taken to
    give the same content for the life of the client that keeps the cache (a CLI run; a conversation's earlier turns
    send their URLs again each turn; an OCR's page count, estimate and pages read one PDF), and its bytes are kept
    under the URL itself in the cache's ``downloads`` (at most ``FETCHED_CACHE_BYTES``, the least recently used
    dropped first; any one download fits). The one home of fetched bytes. A failed download is not kept. Raises
    MediaError (as ``fetch_url``)."""
    from qwenvl.transport import fetch_url  # network code stays out of the import graph of media

    def download() -> bytes:
        return fetch_url(url, max_bytes=MAX_FETCH_BYTES, timeout_s=options.fetch_timeout_s)[0]

    store = cache.downloads if cache is not None and cache.downloads is not None else cache
    if store is None:
        return download()
    data, _ = store.get_or_make(("fetched", url), download, len)
    return data


def _check_image(
    part: ImagePart, data: bytes, info: images.ImageInfo, label: str, options: MediaOptions
) -> PreparedItem:
    """``prepare_image`` once the image is read and identified: check, then estimate, keep or prepare it."""
    images.check(info, label)
    service = resize.service_budget(options, min_pixels=part.min_pixels, max_pixels=part.max_pixels)
    if options.estimate_only:
        return _estimate_image(part, data, info, label, service, options)
    if options.keep_pixels and options.prepare:
        return _keep_image(part, data, info, label, service, options)
    if options.prepare:
        encoded, mime, (width, height), notes = _prepare_local_image(data, info, label, part, options)
    else:
        notes = _check_original(data, info, label, options)
        encoded, mime, (width, height) = data, info.mime, (info.width, info.height)
    h_bar, w_bar = _model_size(height, width, options.model.factor, service, label)
    # Always the canonical form of what was checked: a data: URL given with wrapped base64, parameters such as
    # ;charset=utf-8 or another MIME type is re-emitted as data:<mime>;base64,<one line> (the service refuses
    # the others with a 400 after the upload).
    sent = to_data_url(encoded, mime)
    return PreparedItem(
        part.image,
        "image",
        sent,
        mime=mime,
        bytes_sent=len(sent),
        width=width,
        height=height,
        tokens=tokens.image_tokens(h_bar, w_bar, options.model.factor),
        notes=notes,
        as_given=encoded is data and (not options.prepare or SENT_AS_GIVEN in notes),  # checked, nothing decoded
    )


SENT_AS_GIVEN = "sent as given (within budget, nothing to convert)"  # the note of an image passed through
SMALL_IMAGE_BYTES = 1 << 20  # a file this small is read whole at once and identified once (``read_image``)


def read_image(source: Source, options: MediaOptions, content: bytes | None = None) -> tuple[bytes, images.ImageInfo]:
    """(bytes, header) of a local image or data: URL, reading no more than needed: refused from its size before
    anything is read when over what an image may weigh (``MAX_IMAGE_FILE_BYTES`` before preparation;
    ``MAX_IMAGE_BYTES`` with ``prepare=False``, sent as it is), identified from its header (a file that is no
    image fails having read only its first bytes), then read whole, except estimate-only with ``prepare=True``,
    which needs only the header (``b""`` returned). A file of at most ``SMALL_IMAGE_BYTES`` is read whole in one
    read and identified once (the per-request cost of a small image). ``content``: the whole file, read once already
    (``_read_small``): checked and identified as a read would be, not read again. Raises MediaError (exit 3)."""
    size = len(content) if content is not None else source_size(source)
    if options.prepare:
        hint = images.downscale_hint(source.label) if size is not None and size > MAX_IMAGE_FILE_BYTES else None
        check_size(source, MAX_IMAGE_FILE_BYTES, size=size, what="an image file", hint=hint)
    else:  # preparing would help only a file that preparation takes at all
        hint = _PREPARE_IT if size is None or size <= MAX_IMAGE_FILE_BYTES else images.downscale_hint(source.label)
        check_size(source, MAX_IMAGE_BYTES, size=size, what="one image sent as it is", hint=hint)
    if source.kind == "data":  # in memory already: decoded once
        data = read_bytes(source)
        return data, images.identify(data, source.label)
    header_only = options.estimate_only and options.prepare
    if content is not None and not header_only:
        return content, images.identify(content, source.label)
    with open_source(source) as fh:
        # no more than the file holds: a read buffer is allocated at the size asked, so asking SMALL_IMAGE_BYTES
        # for every 2 kB image costs a 1 MB allocation per image (bench/RESULTS.md, "Batch memory")
        want = HEAD_BYTES if header_only else min(os.fstat(fh.fileno()).st_size, SMALL_IMAGE_BYTES) + 1
        try:  # a file that cannot be read says so (not "not an image")
            head = fh.read(want)
        except OSError as exc:
            raise MediaError(
                f"cannot read {source.label}: {exc.strerror or exc}", source=source.ref, hint=PERMISSION_HINT
            ) from None
        if not header_only and len(head) < want:  # all of it (the end came first): one read, one identify
            return head, images.identify(head, source.label)
        fh.seek(0)
        info = images.identify(fh, source.label)
    if header_only:
        return b"", info
    data = read_bytes(source)
    return data, images.identify(data, source.label)


def _not_an_image(exc: MediaError) -> bool:
    return exc.not_an_image is not None  # images._not_an_image: text, or an unknown format


def _what_it_holds(exc: MediaError, source: Source, label: str) -> MediaError:
    """For a reference meant as a video that is no video, refused as an image before its content was looked at
    (too large for an image file: ``read_image`` checks the size first): the error of its first bytes when they
    are no image either (a huge file named .mp4 is then "neither a video nor an image", not an image too large),
    else ``exc``. Reads at most ``SMALL_IMAGE_BYTES``."""
    if _not_an_image(exc):
        return exc
    try:
        images.identify(head_bytes(source, SMALL_IMAGE_BYTES), label)
    except MediaError as first:
        return first if _not_an_image(first) else exc
    return exc


def _not_media(exc: MediaError, label: str) -> MediaError:
    """``exc`` in the words of a reference meant as a video (named like one, or given alone where a video is
    taken) whose content is neither a video (``media_kind`` said so) nor an image Pillow reads: what was given,
    and every kind that is taken. Other errors (too large, a damaged header, a bomb) are ``exc`` itself."""
    if not _not_an_image(exc):
        return exc
    from qwenvl.media.video import SUPPORTED  # PyAV loads here only on this error path

    what = "it holds text, whatever its name says" if exc.not_an_image == "text" else "unknown format"
    return MediaError(
        f"{label} is neither a video nor an image qwenvl can read ({what})",
        source=exc.source or label,
        not_an_image=exc.not_an_image,
        hint=f"Supported videos: {SUPPORTED}; images: {', '.join(sorted(images.SERVICE_FORMATS))} (or frame images "
        "in order).",
    )


def _not_a_pdf(exc: MediaError, label: str) -> MediaError:
    """``exc`` in the words of a local file named ``.pdf`` whose content is neither a PDF (``media_kind`` said
    so: it does not start with ``%PDF-``) nor an image Pillow reads: not a PDF, and what is read instead. Other
    errors (too large, a damaged image header, a bomb) are ``exc`` itself."""
    if not _not_an_image(exc):
        return exc
    what = "it holds text" if exc.not_an_image == "text" else "unknown format"
    return MediaError(
        f"{label} is not a PDF ({what}, whatever its name says)",
        source=exc.source or label,
        not_an_image=exc.not_an_image,
        hint="A PDF document starts with %PDF-: export or download it again. Images are read too: "
        f"{', '.join(sorted(images.SERVICE_FORMATS))}.",
    )


_PREPARE_IT = "Let qwenvl prepare it (drop --no-resize / prepare=False): it is downscaled and re-encoded to fit."


MEMORY_SCHEME = "memory://"  # the ``sent`` of an image kept decoded for an in-process model


def _keep_image(
    part: ImagePart, data: bytes, info: images.ImageInfo, label: str, service: tuple[int, int], options: MediaOptions
) -> PreparedItem:
    """An image prepared like any other (upright, 8-bit, resized to its budget) but kept decoded: no encoding,
    no base64. ``sent`` names its pixels by hash (so cache keys follow the content)."""
    target, _, notes = _sent_image_size(info, label, part, options)
    decoded = images.decode(data, info, label, size=target)
    notes.extend(decoded.notes)
    img = decoded.image if decoded.image.mode == "RGB" else decoded.image.convert("RGB")
    h_bar, w_bar = _model_size(img.height, img.width, options.model.factor, service, label)
    return PreparedItem(
        part.image,
        "image",
        _memory_ref(img),
        mime="image/x-raw-rgb",
        width=img.width,
        height=img.height,
        tokens=tokens.image_tokens(h_bar, w_bar, options.model.factor),
        notes=[*notes, "kept in memory for the local model (not encoded)"],
        pixels=img,
    )


def _memory_ref(img: Image.Image) -> str:
    """``memory://sha256:<32 hex>`` naming an image kept decoded by its pixels (so cache keys follow content)."""
    import hashlib

    return f"{MEMORY_SCHEME}sha256:{hashlib.sha256(img.tobytes()).hexdigest()[:32]}"


def _estimate_image(
    part: ImagePart, data: bytes, info: images.ImageInfo, label: str, service: tuple[int, int], options: MediaOptions
) -> PreparedItem:
    """An image's size as sent and its tokens from its header (already checked): the full path's rules."""
    if options.prepare:
        _, (width, height), notes = _sent_image_size(info, label, part, options)
        mime = images.likely_mime(info)  # the encoding rule's guess without the pixels
    else:
        notes = _check_original(data, info, label, options, verify=False)
        mime, (width, height) = info.mime, (info.width, info.height)
    h_bar, w_bar = _model_size(height, width, options.model.factor, service, label)
    return PreparedItem(
        part.image,
        "image",
        ESTIMATE_SCHEME + label,
        mime=mime,
        bytes_sent=0,
        width=width,
        height=height,
        tokens=tokens.image_tokens(h_bar, w_bar, options.model.factor),
        notes=[*notes, ESTIMATE_NOTE],
        estimate=True,
    )


def _sent_image_size(
    info: images.ImageInfo, label: str, part: ImagePart, options: MediaOptions
) -> tuple[tuple[int, int] | None, tuple[int, int], list[str]]:
    """(resize target or None, (width, height) as sent, notes) of a local image prepared to its budget.

    The one size rule of preparation: upright, then ``smart_resize`` when over the budget, else as it is.
    Only ``_fit_bytes`` can make it smaller still (an image that would not fit ``MAX_IMAGE_BYTES``).
    """
    factor = options.model.factor
    lo, hi = resize.image_budget(options, min_pixels=part.min_pixels, max_pixels=part.max_pixels)
    width, height = info.upright_size
    h_bar, w_bar = _model_size(height, width, factor, (lo, hi), label)
    if not resize.over_budget(height, width, factor, hi):
        return None, (width, height), []
    return (
        (w_bar, h_bar),
        (w_bar, h_bar),
        [
            f"resized {width}x{height} -> {w_bar}x{h_bar} ({_budget_name(options, part)} budget, "
            f"{hi // (factor * factor)} tokens)"
        ],
    )


def _prepare_local_image(
    data: bytes, info: images.ImageInfo, label: str, part: ImagePart, options: MediaOptions
) -> tuple[bytes, str, tuple[int, int], list[str]]:
    """(bytes, mime, (width, height) as sent, notes) for a local image, prepared to its budget."""
    factor = options.model.factor
    target, _, notes = _sent_image_size(info, label, part, options)
    if target is None and images.passes_through(info, len(data)):
        images.verify(data, info, label)  # the pixel data is complete (PNG: chunk CRCs; JPEG: a 1/8 decode)
        notes.append(SENT_AS_GIVEN)
        return data, info.mime, (info.width, info.height), notes
    decoded = images.decode(data, info, label, size=target)  # upright, exactly the target size when given
    notes.extend(decoded.notes)
    img = decoded.image
    from_jpeg = info.format in ("JPEG", "MPO")  # a JPEG stays a JPEG (images.py, "Encoding")
    photo = from_jpeg or not images.looks_like_graphic(img)
    if target is None and decoded.must_convert and not from_jpeg:  # same size, other pixels: PNG when smaller
        encoded, mime = images.encode_converted(img, photo=photo)
    else:
        encoded, mime = (images.encode_photo(img), "image/jpeg") if photo else images.encode_graphic(img)
    if (
        target is None
        and not decoded.must_convert
        and info.accepted
        and info.frames == 1
        and len(data) <= MAX_IMAGE_BYTES
        and len(data) <= len(encoded)
    ):
        notes.append("kept as given (a re-encoding would not be smaller)")
        return data, info.mime, (info.width, info.height), notes
    if not info.accepted:
        notes.append(f"{info.format} converted to {mime.split('/')[1].upper()}")
    encoded, mime, img = _fit_bytes(img, encoded, mime, factor, notes)
    inline = 4 * -(-len(encoded) // 3)  # base64, as a data: URL carries it (the size `tokens` shows as inline)
    notes.append(
        f"encoded {mime.split('/')[1].upper()}: {format_bytes(len(data))} -> {format_bytes(len(encoded))} file bytes "
        f"({format_bytes(inline)} inline as base64)"
    )
    return encoded, mime, img.size, notes


def _fit_bytes(
    img: Image.Image, encoded: bytes, mime: str, factor: int, notes: list[str]
) -> tuple[bytes, str, Image.Image]:
    """Make ``encoded`` fit MAX_IMAGE_BYTES: JPEG instead of PNG (``images.encode_photo``: the fidelity of a plain
    quality-90 JPEG in fewer bytes), then lower qualities, then smaller sizes, every JPEG with optimised Huffman
    tables (the same pixels in 3-10% fewer bytes, so a higher quality fits)."""
    if len(encoded) <= MAX_IMAGE_BYTES:
        return encoded, mime, img
    if mime == "image/png":
        notes.append(
            f"PNG would be {format_bytes(len(encoded))}, over the {format_bytes(MAX_IMAGE_BYTES)} limit: sent as JPEG"
        )
        encoded, mime = images.encode_photo(img), "image/jpeg"
    quality = images.JPEG_QUALITY
    for quality in images.JPEG_FALLBACK_QUALITIES:
        if len(encoded) <= MAX_IMAGE_BYTES:
            return encoded, mime, img
        encoded = images.encode_jpeg(img, quality, optimize=True)
        notes.append(f"JPEG quality lowered to {quality} to fit {format_bytes(MAX_IMAGE_BYTES)}")
    while len(encoded) > MAX_IMAGE_BYTES:
        area = img.width * img.height // 2
        h_bar, w_bar = resize.smart_resize(
            img.height, img.width, factor, min(area, MIN_IMAGE_TOKENS * factor * factor), area
        )
        img = images.resize(img, (w_bar, h_bar))
        encoded = images.encode_jpeg(img, quality, optimize=True)
        notes.append(
            f"downscaled to {w_bar}x{h_bar} to fit {format_bytes(MAX_IMAGE_BYTES)} (fewer tokens than the budget)"
        )
    return encoded, mime, img


def _check_original(
    data: bytes, info: images.ImageInfo, label: str, options: MediaOptions, *, verify: bool = True
) -> list[str]:
    """The extra rules for an image sent as it is (prepare=False), and notes on what the service may misread.
    ``verify=False`` (estimate-only) skips the integrity check, which reads the pixel data."""
    if not info.accepted:
        raise MediaError(
            f"{label} is a {info.format} image; the service takes {', '.join(sorted(images.SERVICE_FORMATS))}",
            source=label,
            hint="Let qwenvl convert it (drop --no-resize / prepare=False), or convert it to PNG.",
        )
    if len(data) > MAX_IMAGE_BYTES:
        raise MediaError(
            f"{label} is {format_bytes(len(data))}; one image may be at most {format_bytes(MAX_IMAGE_BYTES)}",
            source=label,
            hint=_PREPARE_IT,
        )
    if verify:
        images.verify(data, info, label)
    notes = ["original sent as is (prepare=False)"]
    if info.orientation != 1:
        notes.append(f"EXIF orientation {info.orientation} not applied: the model may see the image rotated")
    if info.mode == "CMYK":
        notes.append("CMYK sent as is: the service may misread its colours")
    if info.high_bit_depth:
        notes.append(f"{info.mode} sent as is: the service may misread a 16-bit image")
    if info.transparency:
        notes.append("transparency sent as is: transparent areas may show as black or white")
    if options.detail == "low":
        notes.append("detail=low has no effect on an image that is not prepared (set max_pixels instead)")
    return notes


def _model_size(height: int, width: int, factor: int, budget: tuple[float, float], label: str) -> tuple[int, int]:
    """``smart_resize`` under ``budget``, as a MediaError when the image cannot be sent at that budget."""
    lo, hi = budget
    try:
        h_bar, w_bar = resize.smart_resize(height, width, factor, lo, hi)
    except ValueError as exc:
        raise MediaError(
            f"{label} ({width}x{height} px): {exc}",
            source=label,
            hint="Check the image: open it in a viewer, or save it again as PNG or JPEG.",
        ) from None
    if h_bar == 0 or w_bar == 0:
        raise MediaError(
            f"{label} is {width}x{height} px: at a budget of {hi} px the model's resize rule would make one side 0 px",
            source=label,
            hint="Raise max_pixels (or use detail auto/high), or crop it to a less extreme shape.",
        )
    return h_bar, w_bar


def _budget_name(options: MediaOptions, part: ImagePart) -> str:
    if options.detail == "low":
        return "detail=low"
    if options.vl_high_resolution_images:
        return "high-resolution"
    if part.max_pixels or options.max_pixels:
        return "max_pixels"
    return f"{options.model.name} default"


def format_bytes(size: int) -> str:
    """A byte count for people (decimal units, as the service's limits are given): MB from 1 MB up
    (``10.5 MB``), kB below (``136 kB``; one decimal under 10 kB: ``1.5 kB``), so that two sizes side by side
    never round to the same words when they differ by more than a few percent. Raises nothing."""
    if size >= 1_000_000:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e3:.1f} kB" if size < 10_000 else f"{size / 1e3:.0f} kB"


def prepare_video(part: VideoPart, options: MediaOptions, cache: PreparedCache | None = None) -> PreparedItem:
    """Make one video what the service will see (the rules are in ``qwenvl.media.video``).

    A remote URL passes through for the service to fetch and sample. A local file (identified by content) is
    sampled at ``fps`` (the part's, the request's, else 2) by the service's rule, converting only the
    sampled frames, each resized to the per-frame budget and encoded by the images' rule (JPEG; a screen frame
    PNG or full-chroma JPEG: ``images.encode_image``) in a frame list, or kept as exact pixels for an
    in-process model (``options.keep_pixels``: ``PreparedItem.pixels``, ``memory://`` references); ``frame_times``
    says when each frame was taken. A list of frame images is checked and prepared image by image to the
    per-frame budget, padded to at least 4 frames and an even count by repeating the last one.

    ``cache``: a sampled video (or a frame image) with the same content, options and budget prepared before is
    taken from it, not decoded again (``PreparedCache``).
    """
    if isinstance(part.video, list):
        return _prepare_frame_list(part, options, cache)
    source = classify(part.video)
    _check_remote(source, options)
    if source.is_remote:
        return PreparedItem(
            part.video,
            "video",
            source.url or part.video,
            notes=["remote video: frames and tokens unknown (the service fetches and samples it)"],
        )
    from qwenvl.media import video  # PyAV loads only when a local video is given

    if options.video_as == "file":
        return _whole_video(part, source, options)
    src = video_content(source)
    if options.estimate_only:
        info, rate, plan = _video_plan(part, src, source.label, options)
        return PreparedItem(
            part.video,
            "video",
            [f"{ESTIMATE_SCHEME}{source.label}#frame={i}" for i in range(plan.nframes)],
            mime="image/jpeg",
            bytes_sent=0,
            width=plan.width,
            height=plan.height,
            tokens=tokens.video_tokens(plan.nframes, plan.height, plan.width, options.model.factor),
            notes=[
                *video.sampling_notes(info.frames, info.fps, info.duration, plan.nframes, rate, options.model),
                VIDEO_ESTIMATE_NOTE,
            ],
            fps=plan.nframes / info.frames * info.fps,
            estimate=True,
        )
    key = None
    if cache is not None and not options.keep_pixels:  # frames kept decoded are not cached (their size is pixels)
        key = _Key("video", _digest(src), options, part.fps, part.min_pixels, part.max_pixels)
    ref = str(part.video)  # a file or data: URL here (a frame list went above)
    return _cached_item(cache, key, ref, lambda: _sample(part, ref, src, source.label, options))


def _sample(part: VideoPart, ref: str, src: Path | bytes, label: str, options: MediaOptions) -> PreparedItem:
    """A local video sampled into a list of JPEG frames (``prepare_video``)."""
    from qwenvl.media import video

    fps = part.fps if part.fps is not None else options.fps
    sampled = video.sample_video(
        src,
        options.model,
        fps=fps,
        min_pixels=part.min_pixels,
        max_pixels=part.max_pixels,
        label=label,
        output="array" if options.keep_pixels else "encoded",
    )
    pixels = None
    if options.keep_pixels:  # an in-process model: the exact frames, not encoded (as ``_keep_image``)
        pixels = [Image.fromarray(frame) for frame in sampled.frames]
        sent = [_memory_ref(frame) for frame in pixels]
        mime = "image/x-raw-rgb"
    else:
        sent = [to_data_url(frame, mime) for frame, mime in zip(sampled.frames, sampled.mimes, strict=True)]
        mime = frames_mime(sampled.mimes)
    return PreparedItem(
        ref,
        "video",
        sent,
        mime=mime,
        bytes_sent=0 if options.keep_pixels else sum(len(url) for url in sent),
        width=sampled.width,
        height=sampled.height,
        tokens=tokens.video_tokens(sampled.nframes, sampled.height, sampled.width, options.model.factor),
        notes=[
            *sampled.notes,
            f"decoded with {'a seek per sample' if sampled.strategy == 'seek' else 'one pass'}",
            *(["kept in memory for the local model (not encoded)"] if options.keep_pixels else []),
        ],
        frame_times=sampled.times,
        fps=sampled.sample_fps,
        pixels=pixels,
    )


def frames_mime(mimes: list[str]) -> str:
    """A frame list's ``PreparedItem.mime``: the frames' Content-Type when they share one (``image/jpeg``), else
    each that occurs, in order of first use, joined by ", " (``image/jpeg, image/png``)."""
    return ", ".join(dict.fromkeys(mimes))


def _whole_video(part: VideoPart, source: Source, options: MediaOptions) -> PreparedItem:
    """A local video sent whole, for the service to sample at ``fps``: checked and estimated here, then
    uploaded to temporary storage by the backend (``file://`` marks it; it never travels inline)."""
    from qwenvl.media import video

    if source.kind != "file" or source.path is None:
        raise MediaError(
            "only a local video file can be sent whole",
            source=source.ref,
            hint="Download it first, or send it as sampled frames (--video-as frames).",
        )
    size = source.path.stat().st_size
    if size >= MAX_VIDEO_FILE_BYTES:
        raise MediaError(
            f"{source.label} is {size / 2**20:.1f} MB; a video sent as a local file must be under "
            f"{MAX_VIDEO_FILE_BYTES // 2**20} MB",
            source=source.ref,
            hint="Send it as sampled frames instead (--video-as frames), or give a public URL.",
        )
    mime = video.check_video_content(source.path, source.label)
    info, rate, plan = _video_plan(part, source.path, source.label, options, service_sampled=True)
    count, h_bar, w_bar = plan.nframes, plan.height, plan.width
    # Nothing is read here beyond the container, so estimate-only gives the same item (never sent anyway).
    assert isinstance(part.video, str)  # a whole file, not a frame list
    return PreparedItem(
        part.video,
        "video",
        source.path.resolve().as_uri(),
        mime=mime,
        width=w_bar,
        height=h_bar,
        tokens=tokens.video_tokens(count, h_bar, w_bar, options.model.factor),
        tokens_exact=False,  # the service samples it: about ``count`` frames
        fps=rate,
        notes=[
            f"sent whole ({format_bytes(size)}, {info.duration:.1f} s) for the service to sample about {count} frames "
            f"at {rate:g} fps; uploaded to temporary storage (native protocol)"
        ],
        frame_times=[i / rate for i in range(count)],
    )


def _video_plan(
    part: VideoPart, src: Path | bytes, label: str, options: MediaOptions, *, service_sampled: bool = False
) -> tuple[video.VideoInfo, float, video.FramePlan]:
    """(probe, sampling rate, frame count and size as the service samples it) of a local video, from its
    container and packets (only the first frame is decoded): ``video.frame_plan``, as ``sample_video`` uses."""
    from qwenvl.media import video

    rate = part.fps if part.fps is not None else options.fps if options.fps is not None else video.VIDEO_FPS
    if not rate > 0:
        raise MediaError(f"fps must be positive, got {rate}", source=label, hint="Give a positive --fps, e.g. --fps 2.")
    info = video.probe_video(src, label)
    plan = video.frame_plan(
        options.model,
        info.frames,
        info.fps,
        rate,
        info.width,
        info.height,
        min_pixels=part.min_pixels,
        max_pixels=part.max_pixels,
        label=label,
        service_sampled=service_sampled,
    )
    return info, rate, plan


def _prepare_frame_list(part: VideoPart, options: MediaOptions, cache: PreparedCache | None = None) -> PreparedItem:
    from qwenvl.media import video

    refs = list(part.video)
    count = video.frame_list_count(len(refs), options.model)
    lo, hi = video.frame_budget(options.model, count, min_pixels=part.min_pixels, max_pixels=part.max_pixels)
    # Frames follow the video budget, not the image one: no high-resolution mode and no detail=low for them.
    frame_options = replace(options, vl_high_resolution_images=None, detail="auto", min_pixels=None, max_pixels=None)
    frames = [  # estimate-only carries over: each frame from its header; one frame alone was meant as a video
        prepare_image(
            ImagePart(image=ref, min_pixels=lo, max_pixels=int(hi)),
            frame_options,
            cache,
            video_expected=len(refs) == 1,
        )
        for ref in refs
    ]
    notes = [f"{len(refs)} frame images"]
    if count > len(refs):
        notes.append(
            f"padded to {count} frames by repeating the last (the service needs at least "
            f"{video.VIDEO_MIN_FRAMES} and an even count)"
        )
        frames.extend([frames[-1]] * (count - len(refs)))
    first = frames[0]
    estimate = None
    if first.width and first.height:
        h_bar, w_bar = _model_size(first.height, first.width, options.model.factor, (lo, hi), first.source)
        estimate = tokens.video_tokens(count, h_bar, w_bar, options.model.factor)
        if any((f.width, f.height) != (first.width, first.height) for f in frames):
            notes.append("frames differ in size: the estimate uses the first frame's")
    rate = part.fps if part.fps is not None else options.fps if options.fps is not None else video.VIDEO_FPS
    sent = [str(f.sent) for f in frames]
    return PreparedItem(
        f"{len(refs)} frames",
        "video",
        sent,
        mime=frames_mime([f.mime for f in frames if f.mime]) or None,
        bytes_sent=sum(f.bytes_sent for f in frames),
        width=first.width,
        height=first.height,
        tokens=estimate,
        notes=notes,
        frame_times=[i / rate for i in range(count)],
        estimate=any(f.estimate for f in frames),
        pixels=[f.pixels for f in frames] if options.keep_pixels else None,
    )


def expand_documents(
    messages: list[Message],
    options: MediaOptions,
    cache: PreparedCache | None = None,
    rendered: list[tuple[str, str, int]] | None = None,
    looked: dict[str, Looked] | None = None,
) -> list[Message]:
    """Replace every image part that is a PDF (a local one by content, a URL by its ``.pdf`` path: downloaded with
    ``fetch_urls``, else refused, ``pdf_content``) with one image part per rendered page.

    The models cannot read PDF files, so each selected page (the part's ``pages``, else ``options.pages``) is
    rendered to the image budget (``resize.image_budget``) and sent as a data URL, in page order (see
    ``qwenvl.media.pdf``).
    ``cache``: a PDF with the same content, pages and budget rendered before is not rendered again. ``rendered``
    gets each page sent, in order: (its data URL, the PDF's reference, its page number). ``looked`` gets each small
    local file that is no PDF, by its reference: its source and whole content (``_read_small``: one read, which the
    PDF test's first bytes come from), for ``prepare_image``.
    """
    out: list[Message] = []
    for message in messages:
        if isinstance(message.content, str) or not any(isinstance(p, ImagePart) for p in message.content):
            out.append(message)
            continue
        parts: list[TextPart | ImagePart | VideoPart] = []
        changed = False
        for part in message.content:
            document = _pdf_source(part.image, looked) if isinstance(part, ImagePart) else None
            if document is None:
                parts.append(part)
                continue
            from qwenvl.media import pdf  # pypdfium2 loads only when a PDF is given

            assert isinstance(part, ImagePart)
            own = part_options(part, options)
            lo, hi = resize.image_budget(own, min_pixels=part.min_pixels, max_pixels=part.max_pixels)
            src = pdf_content(document, own, cache)
            key = None
            if cache is not None:
                context = options.model.context_tokens if options.context_check else None
                key = ("pdf", _digest(src), options.model.factor, lo, hi, own.pages, context)
            urls = cache.get(key) if cache is not None else None
            if urls is None:
                pages = pdf.render_pdf(
                    src,
                    factor=options.model.factor,
                    min_pixels=lo,
                    max_pixels=hi,
                    pages=own.pages,
                    context_tokens=options.model.context_tokens if options.context_check else None,
                    label=document.label,
                )
                urls = [(page.number, page.data_url) for page in pages]
                if cache is not None:
                    cache.put(key, urls, sum(len(url) for _, url in urls))
            parts.extend(part.model_copy(update={"image": url, "pages": None}) for _, url in urls)
            if rendered is not None:
                rendered.extend((url, part.image, number) for number, url in urls)
            changed = True
        out.append(message.model_copy(update={"content": parts}) if changed else message)
    return out


def _estimate_document(
    part: ImagePart, document: Source, options: MediaOptions, cache: PreparedCache | None = None
) -> list[PreparedItem]:
    """Estimate-only ``expand_documents`` + ``prepare_image`` of each page: the page sizes ``render_pdf`` would
    render at (``pdf.page_sizes``, the same function), and their tokens, without rendering anything."""
    from qwenvl.media import pdf

    lo, hi = resize.image_budget(options, min_pixels=part.min_pixels, max_pixels=part.max_pixels)
    service = resize.service_budget(options, min_pixels=part.min_pixels, max_pixels=part.max_pixels)
    src = pdf_content(document, options, cache)  # a URL's bytes: the download kept in ``cache`` (``fetched``)
    factor = options.model.factor
    sizes = pdf.page_sizes(
        src,
        factor=factor,
        min_pixels=lo,
        max_pixels=hi,
        pages=options.pages,
        context_tokens=options.model.context_tokens if options.context_check else None,
        label=document.label,
    )
    items = []
    for number, (height, width) in sizes.items():
        ref = f"{ESTIMATE_SCHEME}{document.label}#page={number}"
        h_bar, w_bar = _model_size(height, width, factor, service, ref)
        items.append(
            PreparedItem(
                ref,
                "image",
                ref,
                mime=images.likely_mime(),  # a rendered page's likely encoding (nothing is rendered)
                bytes_sent=0,
                width=width,
                height=height,
                tokens=tokens.image_tokens(h_bar, w_bar, factor),
                notes=[f"PDF page {number} of {document.label}, not rendered (estimate only)"],
                estimate=True,
                page=number,
                document=part.image,
            )
        )
    return items


def video_content(source: Source) -> Path | bytes:
    """A local video for its reader: the file's path, or a data: URL's bytes, refused before decoding over
    ``MAX_DATA_URL_BYTES`` (``sources.local_content``). Raises MediaError (exit 3)."""
    return local_content(source, MAX_DATA_URL_BYTES, "a video given as a data: URL")


def pdf_content(
    source: Source, options: MediaOptions | None = None, cache: PreparedCache | None = None
) -> Path | bytes:
    """A PDF for its reader: a local file's path, or a data: URL's bytes, refused before decoding over
    ``MAX_DATA_URL_BYTES`` (``sources.local_content``); a remote one's bytes, downloaded (``fetched``) when
    ``options.fetch_urls`` is on. Raises MediaError (exit 3); UsageError for a remote PDF without ``fetch_urls``
    (``remote_pdf_error``)."""
    if source.is_remote:
        if options is None or not options.fetch_urls or source.kind != "url":
            raise remote_pdf_error(source)
        return fetched(source.url or source.ref, options, cache)
    return local_content(source, MAX_DATA_URL_BYTES, "a PDF given as a data: URL")


def remote_pdf_error(source: Source) -> UsageError:
    """The refusal of a PDF given as a URL without ``fetch_urls``: the service reads images, not PDF files, so
    qwenvl must download it to render its pages (exit 2, nothing sent). Raises nothing."""
    return UsageError(
        f"{source.label} is a PDF: the service cannot read a PDF file, and qwenvl renders its pages only from a "
        "file it has",
        hint="Add --fetch-urls / fetch_urls=True to download it and send its pages as images, or download it and "
        "give the file.",
    )


def _pdf_source(ref: str, looked: dict[str, Looked] | None = None) -> Source | None:
    """The source of ``ref`` when it holds a PDF (``media_kind``: a local file or data: URL by its bytes, a remote
    URL by its path's ``.pdf``). ``looked``: a small local file that is no PDF is kept there (its source and whole
    content, ``_read_small``), so that preparing it neither classifies nor reads it again."""
    source = classify(ref)
    content = _read_small(source) if looked is not None else None
    if content is None:
        return source if media_kind(source) == "pdf" else None
    if media_kind(source, content) == "pdf":
        return source
    assert looked is not None
    looked[ref] = (source, content)
    return None


def _read_small(source: Source) -> bytes | None:
    """The whole content of a local file of at most ``SMALL_IMAGE_BYTES`` (``open_regular``), in one read, as
    ``read_image`` reads one; None for a larger file, any other source, and a file that cannot be read (its reader
    then says why). Raises nothing."""
    if source.kind != "file" or source.path is None:
        return None
    try:
        with open_regular(source.path, source.ref) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > SMALL_IMAGE_BYTES:
                return None
            content = fh.read(size + 1)
    except (OSError, MediaError):
        return None
    return content if len(content) <= size else None  # longer than its size said: it grew, read it again whole


def _check_remote(source: Source, options: MediaOptions) -> None:
    if source.kind == "oss" and not options.oss_references:
        raise UsageError(
            f"{source.ref}: oss:// references work only with the native protocol", hint="Add --protocol native."
        )
