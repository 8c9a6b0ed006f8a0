"""The fake DashScope cloud plus the OpenAI-compatible Batch API (reference section 5).

    with BatchServer(api_key="sk-test") as srv:
        srv.compat_base                     # .../compatible-mode/v1: chat completions AND the batch endpoints
        srv.polls_to_complete = 2           # GETs of a job before it completes
        srv.line_errors["item-3"] = (400, "invalid_parameter_error", "bad image")
        ...
        srv.batches["batch_..."]            # the job objects; srv.files: file id -> bytes

Endpoints (under /compatible-mode/v1; every one needs the key, else 401 in the compat envelope)
  POST /files                      multipart: purpose=batch, file -> a file object
  GET  /files/{id}/content         the file's bytes
  POST /batches                    {input_file_id, endpoint, completion_window} -> a job ("validating")
  GET  /batches/{id}               the job; each GET moves it on: in_progress ... completed
  POST /batches/{id}/cancel        -> "cancelling", then "cancelled" at the next GET

A job is processed when it is created: each input line is checked like a realtime request (JSON, method,
url, custom_id unique, body valid for the compat schema, a known model, 6 MB) and answered with the same
echo reply as the chat endpoint; lines named in ``line_errors`` get that error instead. A file with more than
one model, or with a repeated custom_id, fails validation (the job's status is "failed"). Everything else is
the parent server's (chat endpoints, uploads, scripted Replies, recorded requests).
"""

from __future__ import annotations

import json
import time
import uuid
from email import policy as email_policy
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from dashscope_server import (
    DashScopeServer,
    Headers,
    RecordedRequest,
    _Answer,
    _Handler,
    _last_user_text,
    _media,
    error_body,
    model_exists,
    schema_error,
)

PREFIX = "/compatible-mode/v1"
LINE_URL = "/v1/chat/completions"
MAX_LINE_BYTES = 6_000_000
MAX_LINES = 50_000
WINDOWS = ("24h", "48h", "72h", "168h", "336h")


class BatchServer(DashScopeServer):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.files: dict[str, bytes] = {}  # file id -> content
        self.file_meta: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}  # batch id -> job object (as last returned)
        self._results: dict[str, tuple[list[dict], list[dict], str | None]] = {}  # id -> (ok, errors, failure)
        self.polls_to_complete = 2  # GETs after which a job is completed
        self.final_status = "completed"  # or "expired": how a job that runs to its end finishes
        self.line_errors: dict[str, tuple[int, str, str]] = {}  # custom_id -> (status, code, message)
        self.fail_validation: str | None = None  # make the next jobs fail validation with this message

    def start(self) -> BatchServer:
        super().start()
        assert self._httpd is not None
        self._httpd.RequestHandlerClass = _BatchHandler  # the parent's routes plus ours
        return self

    def batch_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith((PREFIX + "/files", PREFIX + "/batches"))]

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]


def _completion(body: dict, rid: str) -> dict:
    media = _media("compat", body)
    n_images = sum(kind == "image" for kind, _ in media)
    n_videos = sum(kind == "video" for kind, _ in media)
    text = f"echo: {_last_user_text('compat', body)} [images={n_images} videos={n_videos}]"
    ans = _Answer("compat", body["model"], text, None, None, "stop", n_images, None)
    return {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "request_id": rid,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": ans.usage(),
    }


class _BatchHandler(_Handler):
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall per answer

    @property
    def srv(self) -> BatchServer:
        return self.server.fake  # type: ignore[attr-defined]

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        if not path.startswith((PREFIX + "/files", PREFIX + "/batches")):
            return super()._dispatch()
        self.rid = str(uuid.uuid4())
        body = self._read_body()
        try:
            parsed = json.loads(body) if body and b"{" in body[:1] else None
        except ValueError:
            parsed = None
        self.req = RecordedRequest(
            self.command,
            path,
            dict(parse_qsl(urlsplit(self.path).query)),
            Headers((k.lower(), v) for k, v in self.headers.items()),
            body,
            parsed,
        )
        with self.srv._lock:
            self.srv._requests.append(self.req)
        if not self._authorized():
            return self._error("compat", 401, msg="Incorrect API key provided.")
        parts = path[len(PREFIX) :].strip("/").split("/")
        try:
            if parts == ["files"] and self.command == "POST":
                return self._upload()
            if len(parts) == 3 and parts[0] == "files" and parts[2] == "content" and self.command == "GET":
                return self._content(parts[1])
            if parts == ["batches"] and self.command == "POST":
                return self._create()
            if len(parts) == 2 and parts[0] == "batches" and self.command == "GET":
                return self._retrieve(parts[1])
            if len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel" and self.command == "POST":
                return self._cancel(parts[1])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return None
        return self._error("compat", 404, "not_found", f"{self.command} {path} not found")

    do_GET = do_POST = _dispatch

    def _bad(self, message: str, status: int = 400, code: str = "invalid_request_error") -> None:
        self._send(status, error_body("compat", status, self.rid, code, message))

    # --- files -----------------------------------------------------------------------------------
    def _upload(self) -> None:
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            return self._bad("files must be uploaded as multipart/form-data")
        msg = BytesParser(policy=email_policy.default).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + self.req.body
        )
        form: dict[str, str] = {}
        content, filename = None, None
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if name == "file":
                content, filename = payload, part.get_filename()
            elif name:
                form[name] = payload.decode("utf-8")
        if content is None:
            return self._bad("the form has no 'file' field")
        if form.get("purpose") != "batch":
            return self._bad(f"purpose must be 'batch', got {form.get('purpose')!r}")
        file_id = f"file-batch-{uuid.uuid4().hex[:20]}"
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename or "upload.jsonl",
            "purpose": "batch",
            "status": "processed",
        }
        with self.srv._lock:
            self.srv.files[file_id] = content
            self.srv.file_meta[file_id] = meta
        self._send(200, meta)

    def _content(self, file_id: str) -> None:
        data = self.srv.files.get(file_id)
        if data is None:
            return self._bad(f"file {file_id} not found", 404, "not_found")
        self._send(200, data, "application/octet-stream")

    # --- jobs ------------------------------------------------------------------------------------
    def _create(self) -> None:
        body = self.req.json
        if not isinstance(body, dict):
            return self._bad("the body must be a JSON object")
        file_id = body.get("input_file_id")
        if file_id not in self.srv.files:
            return self._bad(f"input_file_id {file_id!r} not found", 404, "not_found")
        if body.get("endpoint") != LINE_URL:
            return self._bad(f"endpoint must be {LINE_URL!r}")
        if body.get("completion_window") not in WINDOWS:
            return self._bad(f"completion_window must be one of {', '.join(WINDOWS)}")
        extra = set(body) - {"input_file_id", "endpoint", "completion_window", "metadata"}
        if extra:
            return self._bad(f"unknown fields: {', '.join(sorted(extra))}")
        ok, errors, failure, total = self._process(self.srv.files[file_id])
        failure = failure or self.srv.fail_validation
        now = int(time.time())
        job = {
            "id": f"batch_{uuid.uuid4()}",
            "object": "batch",
            "endpoint": LINE_URL,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": body["completion_window"],
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": total, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "_polls": 0,
        }
        with self.srv._lock:
            self.srv.batches[job["id"]] = job
            self.srv._results[job["id"]] = (ok, errors, failure)
        self._send(200, _public(job))

    def _process(self, data: bytes) -> tuple[list[dict], list[dict], str | None, int]:
        """(output lines, error lines, validation failure, line count) for an input file."""
        ok: list[dict] = []
        errors: list[dict] = []
        lines = [line for line in data.split(b"\n") if line.strip()]
        if len(lines) > MAX_LINES:
            return [], [], f"the file has {len(lines)} lines, more than {MAX_LINES}", len(lines)
        seen: set[str] = set()
        models: set[str] = set()
        for raw in lines:
            try:
                line = json.loads(raw)
            except ValueError:
                return [], [], "a line is not valid JSON", len(lines)
            cid = str(line.get("custom_id"))
            if cid in seen:
                return [], [], f"custom_id {cid!r} is repeated", len(lines)
            seen.add(cid)
            model = (line.get("body") or {}).get("model") if isinstance(line.get("body"), dict) else None
            models.add(str(model))
        if len(models) > 1:
            return [], [], f"one model per file: found {', '.join(sorted(models))}", len(lines)
        for raw in lines:
            line = json.loads(raw)
            cid = str(line["custom_id"])
            rid = str(uuid.uuid4())
            body = line.get("body")
            problem = None
            if len(raw) > MAX_LINE_BYTES:
                problem = (400, "invalid_parameter_error", "the line is larger than 6 MB")
            elif line.get("method") != "POST" or line.get("url") != LINE_URL:
                problem = (400, "invalid_parameter_error", f"method must be POST and url {LINE_URL}")
            elif not isinstance(body, dict) or (msg := schema_error("compat", body)):
                problem = (400, "invalid_parameter_error", msg if isinstance(body, dict) else "no body")
            elif not model_exists(body["model"]):
                problem = (400, "model_not_found", f"The model `{body['model']}` does not exist.")
            elif body.get("stream"):
                problem = (400, "invalid_parameter_error", "stream is not supported in batch")
            elif cid in self.srv.line_errors:
                problem = self.srv.line_errors[cid]
            if problem is None:
                ok.append(
                    {
                        "id": f"batch_req_{rid}",
                        "custom_id": cid,
                        "error": None,
                        "response": {"status_code": 200, "request_id": rid, "body": _completion(body, rid)},
                    }
                )
            else:
                status, code, message = problem
                errors.append(
                    {
                        "id": f"batch_req_{rid}",
                        "custom_id": cid,
                        "error": {"code": code, "message": message},
                        "response": {
                            "status_code": status,
                            "request_id": rid,
                            "body": error_body("compat", status, rid, code, message),
                        },
                    }
                )
        return ok, errors, None, len(lines)

    def _retrieve(self, batch_id: str) -> None:
        with self.srv._lock:
            job = self.srv.batches.get(batch_id)
            if job is None:
                return self._bad(f"batch {batch_id} not found", 404, "not_found")
            self._advance(job)
            snapshot = _public(job)
        self._send(200, snapshot)

    def _advance(self, job: dict) -> None:
        """One poll: validating -> in_progress (half done) ... -> completed / failed / expired / cancelled."""
        if job["status"] in ("completed", "failed", "expired", "cancelled"):
            return
        now = int(time.time())
        ok, errors, failure = self.srv._results[job["id"]]
        if failure is not None:
            job.update(
                status="failed",
                failed_at=now,
                errors={"object": "list", "data": [{"code": "invalid_file", "message": failure, "line": None}]},
            )
            return
        if job["status"] == "cancelling":
            job.update(status="cancelled", cancelled_at=now)
            return
        job["_polls"] += 1
        total = job["request_counts"]["total"]
        if job["_polls"] < self.srv.polls_to_complete:
            job.update(status="in_progress", in_progress_at=job["in_progress_at"] or now)
            job["request_counts"]["completed"] = total * job["_polls"] // self.srv.polls_to_complete
            return
        if self.srv.final_status == "expired":
            job.update(status="expired", expired_at=now)
            return
        out_id = self._store(ok) if ok else None
        err_id = self._store(errors) if errors else None
        job.update(
            status="completed",
            finalizing_at=now,
            completed_at=now,
            output_file_id=out_id,
            error_file_id=err_id,
            request_counts={"total": total, "completed": len(ok), "failed": len(errors)},
        )

    def _store(self, lines: list[dict]) -> str:
        file_id = f"file-batch_output-{uuid.uuid4().hex[:16]}"
        self.srv.files[file_id] = b"".join(json.dumps(x, ensure_ascii=False).encode() + b"\n" for x in lines)
        return file_id

    def _cancel(self, batch_id: str) -> None:
        with self.srv._lock:
            job = self.srv.batches.get(batch_id)
            if job is None:
                return self._bad(f"batch {batch_id} not found", 404, "not_found")
            if job["status"] in ("validating", "in_progress", "finalizing"):
                job.update(status="cancelling", cancelling_at=int(time.time()))
            snapshot = _public(job)
        self._send(200, snapshot)


def _public(job: dict) -> dict:
    return {k: v for k, v in job.items() if not k.startswith("_")}
