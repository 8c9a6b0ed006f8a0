"""The fake DashScope cloud plus the OpenAI-compatible Batch API (reference/dashscope-api.md section 5).

    with BatchServer(api_key="sk-test") as srv:
        srv.compat_base                     # .../compatible-mode/v1: chat completions AND the batch endpoints
        srv.polls_to_complete = 3           # GETs of a job until it is completed (in_progress, finalizing, completed)
        srv.line_errors["item-3"] = (400, "invalid_parameter_error", "bad image")
        srv.hold = True                     # jobs stay in_progress until released (a run interrupted meanwhile)
        srv.final_status = "expired"        # jobs run out of time after srv.expire_after lines
        srv.fault("GET", "/batches/", status=500)      # the next matching request gets a 500
        srv.fault("GET", "/content", cut=True)         # ...or its reply is cut off half-way (connection dropped)
        srv.fault("POST", "/batches", lost=True)       # ...or the job is created and the reply lost
        srv.validation_error_file = True    # a job failing validation says why in an error file, not in ``errors``
        srv.list_ignores_filter = True      # GET /batches ignores input_file_ids (every job, page after page)
        srv.content_gate = threading.Event()  # file contents stop after their first line until it is set
        srv.batches["batch_..."]            # the job objects; srv.files: file id -> bytes

Endpoints (under /compatible-mode/v1; every one needs the key, else 401 in the compat envelope)
  POST /files                      multipart: purpose=batch, file -> a file object
  GET  /files/{id}                 the file object
  GET  /files/{id}/content         the file's bytes
  POST /batches                    {input_file_id, endpoint, completion_window, metadata?} -> a job ("validating")
  GET  /batches                    the jobs, newest first: limit, after, input_file_ids (comma list), status
  GET  /batches/{id}               the job; each GET moves it on (below)
  POST /batches/{id}/cancel        -> "cancelling"; the next GET: "cancelled", with what was done so far

Shapes and rules, with their sources:
- the job object, its statuses and ``request_counts``: the OpenAI Batch object (openai-python
  ``types/batch.py``), which DashScope's compatible API returns (Model Studio's batch page, [batch] in
  ``qwenvl.batch.batchapi``; its list endpoint, with the ``input_file_ids`` filter of at most 20 ids:
  platform.qianwenai.com/docs/api-reference/platform-api/batch/list-batches);
- input limits: UTF-8 JSONL, at most 50,000 lines, 500 MB per file and 6 MB per line, one model per file,
  ``custom_id`` unique (reference section 5): a file that breaks one fails validation as a whole (status
  "failed", ``errors.data`` naming the line);
- output and error file lines: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
  "error"}``; a line that failed has its error in the error file; requests not run when the job expired or was
  cancelled are in the error file with ``response: null`` and the codes ``batch_expired`` /
  ``batch_cancelled`` (OpenAI's BatchRequestOutput.error.code).

A job's life, one step per GET of it: "validating" (the file is checked at the first GET) -> "in_progress"
(``request_counts.completed`` grows) -> "finalizing" (every line answered) -> "completed" with
``output_file_id`` and ``error_file_id``; ``polls_to_complete`` GETs in all (at least 1). ``hold`` stops
a job where it is (a job stays "in_progress"). With ``final_status = "expired"`` a job answers
``expire_after`` lines (default: half) and then expires, keeping those answers. Each body is answered with
the chat endpoint's echo reply; lines named in ``line_errors`` get that error instead.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
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
MAX_FILE_BYTES = 500_000_000
WINDOWS = ("24h", "48h", "72h", "168h", "336h")
TERMINAL = ("completed", "failed", "expired", "cancelled")
NOT_RUN = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


@dataclass
class Fault:
    method: str
    path: str  # a substring of the path after /compatible-mode/v1
    status: int | None = None  # answer with this error status
    cut: bool = False  # send the headers and half the body, then close the connection
    lost: bool = False  # do the work, then close the connection without a reply
    times: int = 1


class BatchServer(DashScopeServer):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.files: dict[str, bytes] = {}  # file id -> content
        self.file_meta: dict[str, dict] = {}  # uploaded files only (not the output files)
        self.batches: dict[str, dict] = {}  # batch id -> job object (as last returned)
        self._results: dict[str, dict[str, Any]] = {}  # batch id -> processing state
        self.polls_to_complete = 3  # GETs after which a job is completed
        self.final_status = "completed"  # or "expired": how a job that runs to its end finishes
        self.expire_after: int | None = None  # lines answered before a job expires (None: half)
        self.hold = False  # jobs do not move on while set (a cancelled one stays cancelling)
        self.line_errors: dict[str, tuple[int, str, str]] = {}  # custom_id -> (status, code, message)
        self.fail_validation: str | None = None  # make the next jobs fail validation with this message
        self.faults: list[Fault] = []
        self.corrupt_results = False  # result files end with a line that is not JSON
        self.polled = threading.Event()  # set at every GET of a job
        self.poll_delay_s = 0.0  # a GET of a job answers this long after ``polled`` is set (a slow poll)
        self.validation_error_file = False  # a failed validation: an error file naming the lines, ``errors`` null
        self.list_ignores_filter = False  # the list endpoint returns every job whatever input_file_ids says
        self.content_gate: threading.Event | None = None  # set: contents pause after their first line until set
        self.content_gate_timeout = 30.0  # ...or until this many seconds have passed (then ``gate_gave_up``)
        self.gate_gave_up = False

    def start(self) -> BatchServer:
        super().start()
        assert self._httpd is not None
        self._httpd.RequestHandlerClass = _BatchHandler  # the parent's routes plus ours
        return self

    def fault(self, method: str, path: str, **kw: Any) -> None:
        """Break the next ``times`` requests whose method is ``method`` and whose path contains ``path``."""
        with self._lock:
            self.faults.append(Fault(method, path, **kw))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.method == method and f.path in path and f.times > 0:
                    f.times -= 1
                    return f
        return None

    def batch_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith((PREFIX + "/files", PREFIX + "/batches"))]

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def count(self, method: str, path: str) -> int:
        """Requests with this method whose path (after /compatible-mode/v1) is exactly ``path``."""
        return sum(r.method == method and r.path == PREFIX + path for r in self.requests)

    def created(self) -> int:
        """Jobs created (each one is paid for once it runs)."""
        return len(self.batches)


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
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": ans.usage(),
    }


def validate_file(data: bytes) -> tuple[list[dict], str | None, int | None]:
    """(the parsed lines, why the file fails validation or None, the 1-based line at fault)."""
    if len(data) > MAX_FILE_BYTES:
        return [], f"the file is larger than {MAX_FILE_BYTES // 1_000_000} MB", None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], "the file is not UTF-8", None
    raw_lines = [line for line in text.split("\n") if line.strip()]
    if not raw_lines:
        return [], "the file is empty", None
    if len(raw_lines) > MAX_LINES:
        return [], f"the file has {len(raw_lines)} lines, more than {MAX_LINES}", None
    lines: list[dict] = []
    seen: set[str] = set()
    models: set[str] = set()
    for n, raw in enumerate(raw_lines, 1):
        if len(raw.encode("utf-8")) > MAX_LINE_BYTES:
            return [], "the line is larger than 6 MB", n
        try:
            line = json.loads(raw)
        except ValueError:
            return [], "the line is not valid JSON", n
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str) or not line["custom_id"]:
            return [], "the line has no custom_id", n
        if line["custom_id"] in seen:
            return [], f"custom_id {line['custom_id']!r} is repeated", n
        seen.add(line["custom_id"])
        if line.get("method") != "POST":
            return [], "method must be POST", n
        if line.get("url") != LINE_URL:
            return [], f"url must be {LINE_URL}", n
        body = line.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return [], "the line has no body with a model", n
        models.add(body["model"])
        if len(models) > 1:
            return [], f"one model per file: found {', '.join(sorted(models))}", n
        lines.append(line)
    return lines, None, None


def _custom_ids(data: bytes) -> list[str]:
    """The custom_id of each line of an input file that has one (whatever else is wrong with the file)."""
    out = []
    for raw in data.decode("utf-8", "replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
            out.append(line["custom_id"])
    return out


class _BatchHandler(_Handler):
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall per answer
    cut = False  # this reply is sent half, then the connection closed
    lost = False  # this request is done, and no reply sent (the connection closed)

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
        query = dict(parse_qsl(urlsplit(self.path).query))
        self.req = RecordedRequest(
            self.command, path, query, Headers((k.lower(), v) for k, v in self.headers.items()), body, parsed
        )
        with self.srv._lock:
            self.srv._requests.append(self.req)
        sub = path[len(PREFIX) :]
        fault = self.srv._take_fault(self.command, sub)
        if fault is not None and fault.status:
            return self._bad("injected fault", fault.status, "internal_error" if fault.status >= 500 else None)
        self.cut = fault is not None and fault.cut
        self.lost = fault is not None and fault.lost
        if not self._authorized():
            return self._error("compat", 401, msg="Incorrect API key provided.")
        parts = sub.strip("/").split("/")
        try:
            if parts == ["files"] and self.command == "POST":
                return self._upload()
            if len(parts) == 2 and parts[0] == "files" and self.command == "GET":
                meta = self.srv.file_meta.get(parts[1])
                return self._send(200, meta) if meta else self._bad(f"file {parts[1]} not found", 404, "not_found")
            if len(parts) == 3 and parts[0] == "files" and parts[2] == "content" and self.command == "GET":
                return self._content(parts[1])
            if parts == ["batches"] and self.command == "POST":
                return self._create()
            if parts == ["batches"] and self.command == "GET":
                return self._list(query)
            if len(parts) == 2 and parts[0] == "batches" and self.command == "GET":
                return self._retrieve(parts[1])
            if len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel" and self.command == "POST":
                return self._cancel(parts[1])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return None
        return self._error("compat", 404, "not_found", f"{self.command} {path} not found")

    do_GET = do_POST = _dispatch

    def _send(
        self, status: int, body: bytes | dict, ctype: str = "application/json", extra: dict | None = None
    ) -> None:
        if self.lost:  # the work is done, the reply never arrives
            return self._abort()
        if not self.cut:
            return super()._send(status, body, ctype, extra)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        self._head(status, ctype, extra or {}, len(data))
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self._abort()

    def _bad(self, message: str, status: int = 400, code: str | None = "invalid_request_error") -> None:
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
        if not (filename or "").endswith(".jsonl"):
            return self._bad("the file must be a .jsonl file")
        file_id = f"file-batch-{uuid.uuid4().hex[:20]}"
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
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
        gate = self.srv.content_gate
        if gate is None or self.cut or self.lost or b"\n" not in data:
            return self._send(200, data, "application/octet-stream")
        first = data.index(b"\n") + 1  # the first line, then a pause (a slow download)
        self._head(200, "application/octet-stream", {}, len(data))
        self.wfile.write(data[:first])
        self.wfile.flush()
        if not gate.wait(self.srv.content_gate_timeout):
            self.srv.gate_gave_up = True
        try:
            self.wfile.write(data[first:])
            self.wfile.flush()
        except OSError:  # the client gave up meanwhile
            self.close_connection = True

    # --- jobs ------------------------------------------------------------------------------------
    def _create(self) -> None:
        body = self.req.json
        if not isinstance(body, dict):
            return self._bad("the body must be a JSON object")
        file_id = body.get("input_file_id")
        if file_id not in self.srv.file_meta:
            return self._bad(f"input_file_id {file_id!r} not found", 404, "not_found")
        if body.get("endpoint") != LINE_URL:
            return self._bad(f"endpoint must be {LINE_URL!r}")
        if body.get("completion_window") not in WINDOWS:
            return self._bad(f"completion_window must be one of {', '.join(WINDOWS)}")
        extra = set(body) - {"input_file_id", "endpoint", "completion_window", "metadata"}
        if extra:
            return self._bad(f"unknown fields: {', '.join(sorted(extra))}")
        meta = body.get("metadata")
        if meta is not None and (
            not isinstance(meta, dict) or len(meta) > 16 or not all(isinstance(v, str) for v in meta.values())
        ):
            return self._bad("metadata must be at most 16 string values")
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
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": meta,
        }
        with self.srv._lock:
            self.srv.batches[job["id"]] = job
            self.srv._results[job["id"]] = {"polls": 0, "ok": [], "errors": [], "lines": None, "done": 0}
        self._send(200, job)

    def _list(self, query: dict[str, str]) -> None:
        with self.srv._lock:
            jobs = sorted(self.srv.batches.values(), key=lambda j: j["created_at"], reverse=True)
            jobs = [dict(j) for j in jobs]
        if query.get("input_file_ids") and not self.srv.list_ignores_filter:
            wanted = set(query["input_file_ids"].split(","))
            if len(wanted) > 20:
                return self._bad("input_file_ids: at most 20")
            jobs = [j for j in jobs if j["input_file_id"] in wanted]
        if query.get("status"):
            jobs = [j for j in jobs if j["status"] in query["status"].split(",")]
        if query.get("after"):
            ids = [j["id"] for j in jobs]
            jobs = jobs[ids.index(query["after"]) + 1 :] if query["after"] in ids else []
        limit = int(query.get("limit") or 20)
        page = jobs[:limit]
        self._send(
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(jobs) > limit,
            },
        )

    def _retrieve(self, batch_id: str) -> None:
        with self.srv._lock:
            job = self.srv.batches.get(batch_id)
            if job is None:
                return self._bad(f"batch {batch_id} not found", 404, "not_found")
            if not self.srv.hold:
                self._advance(job)
            snapshot = json.loads(json.dumps(job))
        self.srv.polled.set()
        if self.srv.poll_delay_s:
            time.sleep(self.srv.poll_delay_s)
        self._send(200, snapshot)

    def _answer(self, state: dict[str, Any], upto: int) -> None:
        """Answer the job's lines up to ``upto`` (each one once)."""
        for line in state["lines"][state["done"] : upto]:
            cid, body, rid = line["custom_id"], line["body"], str(uuid.uuid4())
            problem = None
            msg = schema_error("compat", body)
            if msg:
                problem = (400, "invalid_parameter_error", msg)
            elif not model_exists(body["model"]):
                problem = (400, "model_not_found", f"The model `{body['model']}` does not exist.")
            elif body.get("stream"):
                problem = (400, "invalid_parameter_error", "stream is not supported in batch")
            elif cid in self.srv.line_errors:
                problem = self.srv.line_errors[cid]
            if problem is None:
                state["ok"].append(
                    {
                        "id": f"batch_req_{rid}",
                        "custom_id": cid,
                        "response": {"status_code": 200, "request_id": rid, "body": _completion(body, rid)},
                        "error": None,
                    }
                )
            else:
                status, code, message = problem
                state["errors"].append(
                    {
                        "id": f"batch_req_{rid}",
                        "custom_id": cid,
                        "response": {
                            "status_code": status,
                            "request_id": rid,
                            "body": error_body("compat", status, rid, code, message),
                        },
                        "error": {"code": code, "message": message},
                    }
                )
        state["done"] = max(state["done"], upto)

    def _advance(self, job: dict) -> None:
        """One GET: validating -> in_progress ... -> finalizing -> completed; or failed, expired, cancelled."""
        if job["status"] in TERMINAL:
            return
        now = int(time.time())
        state = self.srv._results[job["id"]]
        if job["status"] == "cancelling":
            if self.srv.hold:  # a service slow to cancel: cancelling until released
                return None
            return self._close(job, state, "cancelled", now)
        state["polls"] += 1
        if state["lines"] is None:  # validation, at the first look
            lines, failure, at = validate_file(self.srv.files[job["input_file_id"]])
            failure = failure or self.srv.fail_validation
            if failure is not None:
                error = {"code": "invalid_file", "message": failure, "param": None, "line": at}
                job.update(status="failed", failed_at=now, errors={"object": "list", "data": [error]})
                if self.srv.validation_error_file:  # the reason is in an error file, one line per input line
                    job["errors"] = None
                    job["error_file_id"] = self._store(
                        [
                            {
                                "id": f"batch_req_{uuid.uuid4()}",
                                "custom_id": cid,
                                "response": None,
                                "error": {"code": "invalid_file", "message": failure},
                            }
                            for cid in _custom_ids(self.srv.files[job["input_file_id"]])
                        ]
                    )
                return None
            state["lines"] = lines
            job["request_counts"]["total"] = len(lines)
        total = len(state["lines"])
        n = max(1, self.srv.polls_to_complete)
        k = state["polls"]
        if self.srv.final_status == "expired":
            limit = total // 2 if self.srv.expire_after is None else min(total, self.srv.expire_after)
            self._answer(state, limit if k >= n else min(limit, total * k // n))
            if k >= n:
                return self._close(job, state, "expired", now)
        elif k >= n:
            self._answer(state, total)
            return self._close(job, state, "completed", now)
        elif k == n - 1:
            self._answer(state, total)
            job.update(status="finalizing", in_progress_at=job["in_progress_at"] or now, finalizing_at=now)
        else:
            self._answer(state, total * k // max(1, n - 1))
            job.update(status="in_progress", in_progress_at=job["in_progress_at"] or now)
        self._count(job, state)
        return None

    def _count(self, job: dict, state: dict) -> None:
        job["request_counts"].update(completed=len(state["ok"]), failed=len(state["errors"]))

    def _close(self, job: dict, state: dict, status: str, now: int) -> None:
        """End the job: what was answered goes to the output and error files; lines not run (an expired or
        cancelled job) are in the error file with ``response: null``."""
        self._count(job, state)
        errors = list(state["errors"])
        if status in NOT_RUN and state["lines"] is not None:
            code, message = NOT_RUN[status]
            for line in state["lines"][state["done"] :]:
                errors.append(
                    {
                        "id": f"batch_req_{uuid.uuid4()}",
                        "custom_id": line["custom_id"],
                        "response": None,
                        "error": {"code": code, "message": message},
                    }
                )
        job.update(
            status=status,
            output_file_id=self._store(state["ok"]) if state["ok"] else None,
            error_file_id=self._store(errors) if errors else None,
            **{f"{status}_at": now},
        )
        if status == "completed":
            job["finalizing_at"] = job["finalizing_at"] or now

    def _store(self, lines: list[dict]) -> str:
        file_id = f"file-batch_output-{uuid.uuid4().hex[:16]}"
        data = b"".join(json.dumps(x, ensure_ascii=False).encode() + b"\n" for x in lines)
        self.srv.files[file_id] = data + (b'{"custom_id": "x", "respo\n' if self.srv.corrupt_results else b"")
        return file_id

    def _cancel(self, batch_id: str) -> None:
        with self.srv._lock:
            job = self.srv.batches.get(batch_id)
            if job is None:
                return self._bad(f"batch {batch_id} not found", 404, "not_found")
            if job["status"] in ("validating", "in_progress", "finalizing"):
                job.update(status="cancelling", cancelling_at=int(time.time()))
            snapshot = json.loads(json.dumps(job))
        self._send(200, snapshot)
