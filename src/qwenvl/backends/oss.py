"""DashScope's temporary storage for local files (native protocol only).

The flow the official SDK uses (reference §2.3): one upload policy per request
(``GET {native_base}/uploads?action=getPolicy&model=M``), a multipart POST of each file to the policy's
OSS host, then ``oss://<key>`` references in the request and the header
``X-DashScope-OssResourceResolve: enable``. Files are bound to the model named in the policy and expire
after 48 hours (``UPLOAD_VALID_S``).

A backend keeps the ``oss://`` reference of each item it uploaded (``Uploaded``: by content, model and endpoint)
and sends it again while it is valid, so a conversation, which sends its earlier turns' files every turn, uploads
each file once; a request whose items are all uploaded already asks for no policy.

Which items go through storage (``upload=``): ``inline`` never; ``oss`` every local item; ``auto`` (the
default) only what does not fit inline: items over the per-image limit, then the largest items until the
request fits the request size limit. Uploads happen after every check and preparation, so a file that
fails them is never uploaded.

Temporary storage exists in the Beijing region only (``qwenvl.models.TEMP_STORAGE_REGIONS``; get-temporary-
file-url page, updated 2026-03-23). In any other region ``auto`` inlines what fits and refuses the rest with a
clear message, ``oss`` and a whole video (``video_as=file``) are refused: no upload is ever tried there.

Deadlines: the policy request must be complete within the request's ``timeout_s``; each upload within
``timeout_s`` plus one second per ``qwenvl.transport.MIN_TRANSFER_RATE`` bytes of the file (a floor on the
upload speed), however slowly the storage host reads or answers. Each is retried like any request.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from qwenvl.errors import MalformedResponseError, MediaError, UsageError
from qwenvl.media.prepare import ESTIMATE_SCHEME
from qwenvl.media.sources import decode_data_url, open_regular, sniff
from qwenvl.models import MAX_IMAGE_BYTES, MAX_INLINE_REQUEST_BYTES, temp_storage_available
from qwenvl.plan import Call
from qwenvl.protocols import get
from qwenvl.transport import Policy, Transport
from qwenvl.types import ImagePart, Message, VideoPart

UPLOAD_MODES = ("auto", "inline", "oss")
UPLOAD_VALID_S = 48 * 3600  # a temporary file's life (reference §2.3: "expires after 48 h")
UPLOAD_REUSE_S = UPLOAD_VALID_S - 3600  # an upload is sent again until an hour before it expires
UPLOADED_MAX = 4096  # the references a backend keeps (``Uploaded``), the least recently used dropped first


class Uploaded:
    """The ``oss://`` references a backend uploaded, by (endpoint, model, content): a data: URL by the SHA-256 of
    its text, a whole video file (``file://``) by its path, size and modification time (as its object name). One
    is given again for ``UPLOAD_REUSE_S`` seconds after its upload (wall-clock time: a machine that slept counts
    the time it slept), then forgotten; at most ``max_items`` are kept. Thread-safe."""

    def __init__(self, max_items: int = UPLOADED_MAX, *, clock: Callable[[], float] = time.time) -> None:
        self.max_items = max_items
        self._clock = clock
        self._refs: OrderedDict[tuple[str, str, str], tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> str | None:
        """The reference uploaded for ``key`` while still valid, else None."""
        with self._lock:
            entry = self._refs.get(key)
            if entry is None:
                return None
            if self._clock() - entry[1] > UPLOAD_REUSE_S:
                del self._refs[key]
                return None
            self._refs.move_to_end(key)
            return entry[0]

    def put(self, key: tuple[str, str, str], ref: str, uploaded_at: float) -> None:
        with self._lock:
            self._refs[key] = (ref, uploaded_at)
            self._refs.move_to_end(key)
            while len(self._refs) > self.max_items:
                self._refs.popitem(last=False)

    def now(self) -> float:
        return self._clock()


def content_key(url: str) -> str:
    """What identifies an item's content for ``Uploaded``: a file's path, size and modification time (``file://``,
    a whole video), else the SHA-256 of the data: URL."""
    if url.startswith("file://"):
        path = Path(unquote(urlsplit(url).path))
        try:
            stat = path.stat()
        except OSError:
            return url  # the upload names the failure
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(url.encode()).hexdigest()


@dataclass(frozen=True)
class UploadPolicy:
    upload_host: str
    upload_dir: str
    oss_access_key_id: str
    signature: str
    policy: str
    x_oss_object_acl: str = "private"
    x_oss_forbid_overwrite: str = "true"

    @classmethod
    def from_reply(cls, reply: Any) -> UploadPolicy:
        """The policy from a getPolicy reply (under ``data``; the SDK calls it ``output``)."""
        data = (reply.get("data") or reply.get("output")) if isinstance(reply, dict) else None
        needed = ("upload_host", "upload_dir", "oss_access_key_id", "signature", "policy")
        if not isinstance(data, dict) or not all(data.get(k) for k in needed):
            raise MalformedResponseError("the upload policy reply lacks " + ", ".join(needed))
        return cls(
            **{k: str(data[k]) for k in needed},
            x_oss_object_acl=str(data.get("x_oss_object_acl", "private")),
            x_oss_forbid_overwrite=str(data.get("x_oss_forbid_overwrite", "true")),
        )


@dataclass
class _Slot:
    """One data: URL in the call's messages: where it is and how big it is."""

    message: int
    part: int
    frame: int | None
    url: str
    required: bool = False  # a whole video file (``file://``): it can only travel through storage


def _slots(messages: list[Message]) -> list[_Slot]:
    slots = []
    for mi, m in enumerate(messages):
        if isinstance(m.content, str):
            continue
        for pi, p in enumerate(m.content):
            if isinstance(p, ImagePart) and p.image.startswith("data:"):
                slots.append(_Slot(mi, pi, None, p.image))
            elif isinstance(p, VideoPart) and isinstance(p.video, list):
                slots += [_Slot(mi, pi, fi, u) for fi, u in enumerate(p.video) if u.startswith("data:")]
            elif isinstance(p, VideoPart) and isinstance(p.video, str) and p.video.startswith("file://"):
                slots.append(_Slot(mi, pi, None, p.video, required=True))
    return slots


def _no_storage(region: str, what: str, hint: str) -> UsageError:
    return UsageError(
        f"{what} needs DashScope's temporary storage, which exists only in the Beijing region (cn), not in {region}",
        hint=hint,
    )


def storage_refusal(
    mode: str, protocol: str, region: str | None, *, whole_video: bool, local_items: bool
) -> UsageError | None:
    """The refusal of a request whatever its sizes, or None: an upload ``mode`` that is not one of ``UPLOAD_MODES``;
    ``upload=oss`` where temporary storage does not exist (``region``: Beijing only; None: ``$QWENVL_REGION``, else
    cn) or, with ``local_items`` (local media, inline unless moved), over a protocol that sends no ``oss://``
    references; a ``whole_video`` (``video_as=file``, a local video: it can only travel through storage) where
    storage does not exist, over such a protocol, or with ``upload=inline``. The one home of these rules: ``choose``
    (sending), ``check_upload`` (``Client.plan``: dry runs, estimates, batch plans) and ``qwenvl tokens``
    (``estimate_files``). Raises UsageError for an unknown region."""
    if mode not in UPLOAD_MODES:
        return UsageError(
            f"upload must be one of {', '.join(UPLOAD_MODES)}, not {mode!r}", hint="Use --upload auto, inline or oss."
        )
    storage = temp_storage_available(region)
    if not storage and mode == "oss":
        return _no_storage(
            region or "this region",
            "--upload oss",
            "Use --upload auto (inline what fits), or --region cn with a Beijing key.",
        )
    if not storage and whole_video:
        return _no_storage(
            region or "this region",
            "a video sent whole (--video-as file)",
            "Send the video as frames (the default, --video-as frames), or use --region cn.",
        )
    takes_oss = get(protocol).oss_references
    if whole_video and (not takes_oss or mode == "inline"):  # the hint names what is missing, nothing given already
        needs = [
            *(["the native protocol"] if not takes_oss else []),
            *(["an upload mode other than inline"] if mode == "inline" else []),
        ]
        fixes = [
            *(["add --protocol native"] if not takes_oss else []),
            *(["use --upload auto (or oss)"] if mode == "inline" else []),
        ]
        return UsageError(
            "a video sent whole (--video-as file) must go through temporary storage, which needs "
            + " and ".join(needs),
            hint=" and ".join(fixes).capitalize() + ", or send the video as frames (the default).",
        )
    if mode == "oss" and local_items and not takes_oss:
        return UsageError("upload=oss works only with the native protocol", hint="Add --protocol native.")
    return None


def check_upload(call: Call, protocol: str, region: str | None = None) -> None:
    """Refuse now what ``choose`` would refuse whatever the sizes (``storage_refusal``), for a call planned to be
    sent, shown (a dry run) or estimated (``estimate_only``: its local images are placeholders, still local items):
    UsageError, before anything is uploaded or sent. ``region``: as ``choose``'s."""
    slots = _slots(call.messages)
    local = any(not s.required for s in slots) or any(
        ref.startswith(ESTIMATE_SCHEME)
        for m in call.messages
        for p in m.media()
        for ref in (p.video if isinstance(p, VideoPart) and isinstance(p.video, list) else [_ref(p)])
    )
    refusal = storage_refusal(
        call.request.upload, protocol, region, whole_video=any(s.required for s in slots), local_items=local
    )
    if refusal is not None:
        raise refusal


def _ref(part: ImagePart | VideoPart) -> str:
    return part.image if isinstance(part, ImagePart) else part.video if isinstance(part.video, str) else ""


def choose(call: Call, mode: str, protocol: str, region: str | None = None) -> list[_Slot]:
    """The inline items to move to temporary storage (pure: decides, uploads nothing).

    ``region`` (None: ``$QWENVL_REGION``, else cn) decides whether temporary storage exists (Beijing only);
    where it does not, anything that would need it is refused here, before any upload (``storage_refusal``, the
    rules that do not depend on sizes, then those that do)."""
    storage = temp_storage_available(region)
    slots = _slots(call.messages)
    required = [s for s in slots if s.required]
    refusal = storage_refusal(
        mode, protocol, region, whole_video=bool(required), local_items=len(slots) > len(required)
    )
    if refusal is not None:
        raise refusal
    takes_oss = get(protocol).oss_references
    slots = [s for s in slots if not s.required]
    total = sum(len(s.url) for s in slots)
    if mode == "inline" or not slots:
        chosen: list[_Slot] = list(required)
    elif mode == "oss":
        chosen = required + slots
    else:
        chosen = required + [s for s in slots if len(s.url) * 3 // 4 > MAX_IMAGE_BYTES]  # decoded size over it
        rest = sorted((s for s in slots if s not in chosen), key=lambda s: len(s.url), reverse=True)
        total -= sum(len(s.url) for s in chosen)
        for s in rest:
            if total <= MAX_INLINE_REQUEST_BYTES:
                break
            chosen.append(s)
            total -= len(s.url)
    if len(chosen) > len(required) and not storage:
        raise MediaError(
            f"{_too_large(chosen, slots)}, and temporary storage exists only in the Beijing region (cn), not in "
            f"{region}",
            hint="Send fewer or smaller files (or lower --max-pixels), give public URLs, or use "
            "--region cn with a Beijing key.",
        )
    if len(chosen) > len(required) and not takes_oss:  # upload=oss: refused above (storage_refusal)
        raise MediaError(
            f"{_too_large(chosen, slots)}; only the native protocol can upload to temporary storage",
            hint="Add --protocol native, or send fewer or smaller files.",
        )
    if mode == "inline" and total > MAX_INLINE_REQUEST_BYTES:
        raise MediaError(
            f"the request carries {total / 1e6:.1f} MB of inline media, over the "
            f"{MAX_INLINE_REQUEST_BYTES / 2**20:.0f} MiB request limit",
            hint="Use --upload auto with --protocol native, or send fewer files.",
        )
    return chosen


def _too_large(chosen: list[_Slot], slots: list[_Slot]) -> str:
    """Why ``chosen`` cannot go inline: an item over ``MAX_IMAGE_BYTES`` by itself, or the request's inline
    total over ``MAX_INLINE_REQUEST_BYTES`` (then the total is named, not the items that would have moved)."""
    alone = [s for s in chosen if len(s.url) * 3 // 4 > MAX_IMAGE_BYTES]
    if alone:
        size = max(len(s.url) * 3 // 4 for s in alone) / 1e6
        return f"{len(alone)} item(s) are over the {MAX_IMAGE_BYTES / 1e6:.0f} MB limit of one file ({size:.1f} MB)"
    total = sum(len(s.url) for s in slots) / 1e6
    return (
        f"the request's inline media take {total:.1f} MB as base64 ({len(slots)} items), over the "
        f"{MAX_INLINE_REQUEST_BYTES / 2**20:.0f} MiB limit of one request; {len(chosen)} of them would have to go "
        "through temporary storage"
    )


def object_name(data: bytes, mime: str) -> str:
    ext = mimetypes.guess_extension(mime) or ".bin"
    return hashlib.sha256(data).hexdigest()[:24] + ext


def _upload_one(url: str, pol: UploadPolicy, transport: Transport, policy: Policy) -> str:
    """Post one item (a data: URL, or a ``file://`` video streamed from disk) and return its oss:// URL."""
    if url.startswith("file://"):
        path = Path(unquote(urlsplit(url).path))
        with open_regular(path, url) as fh:
            mime = sniff(fh.read(4096)) or "application/octet-stream"
            fh.seek(0)
            stat = os.fstat(fh.fileno())
            name = object_name(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode(), mime)
            key = f"{pol.upload_dir}/{name}"
            transport.post_form(pol.upload_host, _form(pol, key, mime), {"file": (name, fh, mime)}, policy)
        return "oss://" + key
    mime = url[5 : url.index(";")] if ";" in url[:100] else "application/octet-stream"
    data = decode_data_url(url)
    key = f"{pol.upload_dir}/{object_name(data, mime)}"
    transport.post_form(pol.upload_host, _form(pol, key, mime), {"file": (key.rsplit("/", 1)[-1], data, mime)}, policy)
    return "oss://" + key


def _form(pol: UploadPolicy, key: str, mime: str) -> dict[str, str]:
    return {
        "OSSAccessKeyId": pol.oss_access_key_id,
        "Signature": pol.signature,
        "policy": pol.policy,
        "key": key,
        "x-oss-object-acl": pol.x_oss_object_acl,
        "x-oss-forbid-overwrite": pol.x_oss_forbid_overwrite,
        "success_action_status": "200",
        "x-oss-content-type": mime,
    }


def upload(
    call: Call, chosen: list[_Slot], transport: Transport, native_base: str, uploaded: Uploaded | None = None
) -> Call:
    """Upload the chosen items with one policy; the call with ``oss://`` references in their place. With
    ``uploaded``, an item uploaded before (and still valid) is not uploaded again, and no policy is asked for when
    none is left to upload."""
    if not chosen:
        return call
    r = call.request
    policy = Policy(timeout_s=r.timeout_s, max_retries=r.max_retries, backoff_s=r.retry_backoff_s)
    pol: UploadPolicy | None = None
    done: dict[str, str] = {}  # the same content is uploaded once
    messages = [m.model_copy(deep=True) for m in call.messages]
    for slot in chosen:
        if slot.url not in done:
            key = (native_base, r.model, content_key(slot.url))
            ref = uploaded.get(key) if uploaded is not None else None
            if ref is None:
                if pol is None:
                    pol = UploadPolicy.from_reply(
                        transport.get_json(
                            f"{native_base}/uploads", policy, params={"action": "getPolicy", "model": r.model}
                        )
                    )
                started = uploaded.now() if uploaded is not None else 0.0  # its life counts from before the upload
                ref = _upload_one(slot.url, pol, transport, policy)
                if uploaded is not None:
                    uploaded.put(key, ref, started)
            done[slot.url] = ref
        part = messages[slot.message].content[slot.part]  # type: ignore[index]
        if isinstance(part, ImagePart):
            part.image = done[slot.url]
        elif slot.frame is None:
            part.video = done[slot.url]  # type: ignore[union-attr]
        else:
            part.video[slot.frame] = done[slot.url]  # type: ignore[union-attr,index]
    return Call(
        request=call.request,
        model=call.model,
        messages=messages,
        history=call.history,
        params=call.params,
        media=call.media,
        schema=call.schema,
    )
