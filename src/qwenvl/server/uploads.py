"""The temporary storage the ``dashscope`` SDK uses for local files, served by ``qwenvl serve``.

The SDK's flow (reference §2.3, ``dashscope/utils/oss_utils.py``): ``GET /api/v1/uploads?action=getPolicy
&model=M`` answers a policy under ``data`` (``upload_host``, ``upload_dir``, ``policy``, ``signature``,
``oss_access_key_id``, ``x_oss_object_acl``, ``x_oss_forbid_overwrite``, ``expire_in_seconds``,
``max_file_size_mb``, ``capacity_limit_mb``); the SDK posts the file as a multipart form to
``upload_host`` with those fields and ``key = upload_dir + "/" + basename``, then names it
``oss://<key>`` in the request with ``X-DashScope-OssResourceResolve: enable``.

The SDK asks for one policy per call (since dashscope 1.25.2, ``feat(oss): reuse upload certificate``; before,
one per file) and names each object by its base name alone, so one call's files share one folder: the same file
twice (a frame repeated in a list), or two copies of it under one name, post one key twice. The same bytes again
are accepted (nothing changes: the key still names those bytes). Other bytes under a key already uploaded are
refused (409 ``FileAlreadyExists``, OSS's answer to ``x-oss-forbid-overwrite``): two files named ``0001.png`` in
one call become one ``oss://`` reference, and no answer could tell which bytes each place meant.

Here the policy is an HMAC of (upload dir, expiry, model) with a per-process secret, so only a policy this
server issued (to a caller holding its API key) can upload. Files live in a private folder, bounded in
size per file and in total, bound to the model named in the policy, and deleted when they expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from qwenvl.errors import MediaError, UsageError

UPLOAD_PATH = "/api/v1/uploads"
FORM_PATH = "/api/v1/uploads/oss"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class StoredFile:
    path: Path
    model: str
    expires: float


class UploadConflict(UsageError):
    """Other bytes posted under a key that already names an upload (``UploadStore.save``): answered 409
    ``FileAlreadyExists``, as OSS answers an overwrite that ``x-oss-forbid-overwrite`` forbids."""


class UploadStore:
    """Uploaded files by OSS key. Thread-safe; expired files are removed on every access."""

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        *,
        ttl_s: float = 48 * 3600,
        max_file_bytes: int = 100 * 1024 * 1024,
        capacity_bytes: int = 2 * 1024**3,
    ) -> None:
        self._own = folder is None
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="qwenvl-serve-uploads-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self.ttl_s = ttl_s
        self.max_file_bytes = max_file_bytes
        self.capacity_bytes = capacity_bytes
        self._secret = secrets.token_bytes(32)
        self._files: dict[str, StoredFile] = {}
        self._lock = threading.Lock()

    # --- policy ------------------------------------------------------------------------------------
    def _sign(self, text: str) -> str:
        return base64.b64encode(hmac.new(self._secret, text.encode(), hashlib.sha256).digest()).decode()

    def policy(self, model: str, upload_host: str) -> dict[str, object]:
        expires = int(time.time() + 3600)  # the policy itself: an hour to upload
        upload_dir = f"qwenvl-serve/{uuid.uuid4().hex}"
        policy = base64.b64encode(
            json.dumps({"dir": upload_dir, "expires": expires, "model": model}, separators=(",", ":")).encode()
        ).decode()
        return {
            "policy": policy,
            "signature": self._sign(policy),
            "upload_dir": upload_dir,
            "upload_host": upload_host,
            "expire_in_seconds": int(self.ttl_s),
            "max_file_size_mb": self.max_file_bytes // (1024 * 1024),
            "capacity_limit_mb": self.capacity_bytes // (1024 * 1024),
            "oss_access_key_id": "qwenvl-serve",
            "x_oss_object_acl": "private",
            "x_oss_forbid_overwrite": "true",
        }

    def _check_policy(self, policy: str, signature: str, key: str) -> str:
        if not hmac.compare_digest(self._sign(policy), signature or ""):
            raise UsageError("the upload policy signature does not match")
        try:
            data = json.loads(base64.b64decode(policy))
        except ValueError:
            raise UsageError("the upload policy is not readable") from None
        if data.get("expires", 0) < time.time():
            raise UsageError("the upload policy has expired: ask for a new one")
        if not key.startswith(data["dir"] + "/") or ".." in key or len(key) > 512:
            raise UsageError("the object key is outside the policy's upload folder")
        return str(data["model"])

    # --- files -------------------------------------------------------------------------------------
    def save(self, *, policy: str, signature: str, key: str, data: bytes) -> None:
        model = self._check_policy(policy, signature, key)
        if len(data) > self.max_file_bytes:
            raise MediaError(
                f"the file is {len(data) / 1e6:.1f} MB, over this server's "
                f"{self.max_file_bytes / 1e6:.0f} MB upload limit",
                source=key,
            )
        with self._lock:
            self._expire()
            stored = self._files.get(key)
            if stored is not None:
                if stored.model == model and _same_bytes(stored.path, data):
                    return  # the same file again (the SDK reuses one policy per call): the key still names it
                name = key.rpartition("/")[2]
                raise UploadConflict(
                    f"another file named {name} was already uploaded with this upload policy, with other content: "
                    "the dashscope SDK names an upload by its base name and uses one policy for all the files of a "
                    f"call, so both would be the one reference oss://{key}; rename one of the files (or send it "
                    "inline, base64 or a data: URL) so that no two files of one call share a base name"
                )
            used = sum(f.path.stat().st_size for f in self._files.values() if f.path.exists())
            if used + len(data) > self.capacity_bytes:
                raise MediaError("this server's temporary storage is full; try again later", source=key)
            name = _SAFE_NAME.sub("_", key.rpartition("/")[2])[-100:] or "file"
            path = self.folder / f"{uuid.uuid4().hex}-{name}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self._files[key] = StoredFile(path, model, time.time() + self.ttl_s)

    def resolve(self, ref: str, model: str) -> Path:
        """The local file of ``oss://KEY`` uploaded here for ``model``; MediaError when there is none."""
        key = ref.removeprefix("oss://")
        with self._lock:
            self._expire()
            stored = self._files.get(key)
        if stored is None:
            raise MediaError(f"{ref} does not exist on this server (not uploaded here, or expired)", source=ref)
        if stored.model != model:
            raise MediaError(f"{ref} was uploaded for model {stored.model}, not {model}", source=ref)
        return stored.path

    def _expire(self) -> None:
        now = time.time()
        for key in [k for k, f in self._files.items() if f.expires < now]:
            self._files.pop(key).path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.path.unlink(missing_ok=True)
            self._files.clear()
        if self._own:
            shutil.rmtree(self.folder, ignore_errors=True)


def _same_bytes(path: Path, data: bytes) -> bool:
    """Whether the file at ``path`` holds exactly ``data`` (False when it is gone)."""
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False
