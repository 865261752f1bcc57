"""A loopback server for OpenAI's Batch API (file upload, batch create and retrieve, file
content), Anthropic's Message Batches (create, retrieve, results) and Gemini's batch mode
(resumable file upload, batchGenerateContent, batch get, file download).

A batch stays in progress for its first `polls_before_done` retrievals, then ends: each request
is answered by `reply(body)` (body: the chat completion's body, the message's params, or the
GenerateContentRequest), or fails when `reply` returns None. It records the batches created;
each creation takes `create_latency_s`, and is refused (400) while `refuse_batches` is set.

    with batch_stub(reply=lambda body: "VERDICT: FOLLOWED") as stub:
        client = OpenAI(base_url=stub.url, api_key="k")
"""

from __future__ import annotations

import contextlib
import email
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The Gemini API's paths, under any API version: /[upload/]<version>/<rest>
GEMINI_PATH = re.compile(r"/(?P<upload>upload/)?v1(?:beta|alpha)?/(?P<rest>.+)")


class BatchStub:
    def __init__(
        self,
        reply: Callable[[dict], str | None],
        polls_before_done: int = 1,
        create_latency_s: float = 0.0,
        rewrite_line: Callable[[str], str] = str,
    ):
        self.reply = reply
        self.rewrite_line = rewrite_line  # what a results line becomes, as sent
        self.polls_before_done = polls_before_done
        self.create_latency_s = create_latency_s
        self.refuse_batches = False
        self._uploads: dict[str, bytes] = {}  # Gemini's resumable uploads under way
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self._polls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def upload(self, data: bytes) -> dict:
        with self._lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": 0,
                "filename": "input.jsonl", "purpose": "batch", "status": "processed"}  # fmt: skip

    def create(self, body: dict) -> dict:
        with self._lock:
            batch_id = f"batch-{len(self.batches) + 1}"
            self.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body["endpoint"],
                "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"],
                "status": "in_progress",
                "created_at": int(time.time()),
            }
            self._polls[batch_id] = 0
            return dict(self.batches[batch_id])

    def retrieve(self, batch_id: str) -> dict | None:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return None
            self._polls[batch_id] += 1
            if batch["status"] == "in_progress" and self._polls[batch_id] > self.polls_before_done:
                self._complete(batch)
            return dict(batch)

    def create_messages(self, body: dict) -> dict:
        """An Anthropic message batch, answered at once but reported in progress at first."""
        with self._lock:
            batch_id = f"msgbatch_{len(self.batches) + 1}"
            results = [self._message_result(r) for r in body["requests"]]
            lines = (self.rewrite_line(json.dumps(r)) + "\n" for r in results)
            self.files[batch_id] = "".join(lines).encode()
            self.batches[batch_id] = {
                "id": batch_id,
                "type": "message_batch",
                "processing_status": "in_progress",
                "request_counts": {
                    "processing": len(results),
                    "succeeded": 0,
                    "errored": 0,
                    "canceled": 0,
                    "expired": 0,
                },
                "created_at": "2026-01-01T00:00:00Z",
                "expires_at": "2026-01-02T00:00:00Z",
                "ended_at": None,
                "cancel_initiated_at": None,
                "archived_at": None,
                "results_url": None,
            }
            self._polls[batch_id] = 0
            return dict(self.batches[batch_id])

    def retrieve_messages(self, batch_id: str) -> dict | None:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return None
            self._polls[batch_id] += 1
            if self._polls[batch_id] > self.polls_before_done:
                batch["processing_status"] = "ended"
                batch["ended_at"] = "2026-01-01T00:01:00Z"
                batch["results_url"] = f"{self.url}/messages/batches/{batch_id}/results"
            return dict(batch)

    def _message_result(self, request: dict) -> dict:
        text = self.reply(request["params"])
        if text is None:
            error = {"type": "invalid_request_error", "message": "stub refused this request"}
            result = {"type": "errored", "error": {"type": "error", "error": error}}
        else:
            message = {"id": "msg_stub", "type": "message", "role": "assistant",
                       "model": request["params"]["model"],
                       "content": [{"type": "text", "text": text}],
                       "stop_reason": "end_turn", "stop_sequence": None,
                       "usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip
            result = {"type": "succeeded", "message": message}
        return {"custom_id": request["custom_id"], "result": result}

    def start_gemini_upload(self, path: str) -> str:
        with self._lock:
            upload_id = f"u{len(self._uploads) + 1}"
            self._uploads[upload_id] = b""
        return f"{self.url.removesuffix('/v1')}{path}?upload_id={upload_id}"

    def continue_gemini_upload(self, upload_id: str, data: bytes, final: bool) -> dict | None:
        with self._lock:
            self._uploads[upload_id] += data
            if not final:
                return None
            name = f"files/in{len(self.files) + 1}"
            self.files[name] = self._uploads.pop(upload_id)
        return {"file": {"name": name, "mimeType": "jsonl", "sizeBytes": str(len(self.files[name])),
                         "state": "ACTIVE", "source": "UPLOADED"}}  # fmt: skip

    def create_gemini(self, model: str, body: dict) -> dict:
        with self._lock:
            name = f"batches/g{len(self.batches) + 1}"
            self.batches[name] = {
                "name": name,
                "model": f"models/{model}",
                "inputConfig": body["batch"]["inputConfig"],
                "state": "BATCH_STATE_PENDING",
                "createTime": "2026-01-01T00:00:00Z",
            }
            self._polls[name] = 0
            return self._gemini_operation(name)

    def get_gemini(self, name: str) -> dict | None:
        with self._lock:
            batch = self.batches.get(name)
            if batch is None:
                return None
            self._polls[name] += 1
            pending = batch["state"] == "BATCH_STATE_PENDING"
            if pending and self._polls[name] > self.polls_before_done:
                self._complete_gemini(batch)
            return self._gemini_operation(name)

    def _gemini_operation(self, name: str) -> dict:
        metadata = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                    "GenerateContentBatch", **self.batches[name]}  # fmt: skip
        return {"name": name, "metadata": metadata, "done": "output" in metadata}

    def _complete_gemini(self, batch: dict) -> None:
        lines = []
        for line in self.files[batch["inputConfig"]["fileName"]].decode().splitlines():
            task = json.loads(line)
            text = self.reply(task["request"])
            if text is None:
                error = {"code": 400, "message": "stub refused this request",
                         "status": "INVALID_ARGUMENT"}  # fmt: skip
                lines.append({"key": task["key"], "error": error})
                continue
            candidate = {"content": {"role": "model", "parts": [{"text": text}]},
                         "finishReason": "STOP", "index": 0}  # fmt: skip
            lines.append({"key": task["key"], "response": {"candidates": [candidate]}})
        name = f"files/out{len(self.files) + 1}"
        self.files[name] = "".join(json.dumps(line) + "\n" for line in lines).encode()
        batch["output"] = {"responsesFile": name}
        batch["state"] = "BATCH_STATE_SUCCEEDED"

    def _complete(self, batch: dict) -> None:
        answers, errors = [], []
        for line in self.files[batch["input_file_id"]].decode().splitlines():
            task = json.loads(line)
            text = self.reply(task["body"])
            if text is None:
                error = {"code": "invalid_request", "message": "stub refused this request"}
                errors.append({"custom_id": task["custom_id"], "response": None, "error": error})
                continue
            body = {"choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}]}  # fmt: skip
            answers.append({"custom_id": task["custom_id"], "error": None,
                            "response": {"status_code": 200, "body": body}})  # fmt: skip
        for key, lines in (("output_file_id", answers), ("error_file_id", errors)):
            if lines:
                data = "".join(self.rewrite_line(json.dumps(item)) + "\n" for item in lines)
                data = data.encode()
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = data
                batch[key] = file_id
        batch["status"] = "completed"


def _handler_for(stub: BatchStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            path, _, query = self.path.partition("?")
            creating = path in ("/v1/batches", "/v1/messages/batches")
            if creating or path.endswith(":batchGenerateContent"):
                if stub.refuse_batches:
                    self._send(400, {"error": {"code": 400, "message": "stub refuses batches"}})
                    return
                if stub.create_latency_s:
                    time.sleep(stub.create_latency_s)
            gemini = GEMINI_PATH.fullmatch(path)
            if gemini and gemini["upload"] and query.startswith("upload_id="):
                command = self.headers.get("x-goog-upload-command", "")
                answer = stub.continue_gemini_upload(query[10:], raw, "finalize" in command)
                status = "active" if answer is None else "final"
                self._send(200, answer or {}, {"x-goog-upload-status": status})
            elif gemini and gemini["upload"] and gemini["rest"] == "files":
                self._send(200, {}, {"x-goog-upload-url": stub.start_gemini_upload(path)})
            elif gemini and gemini["rest"].endswith(":batchGenerateContent"):
                model = gemini["rest"].removeprefix("models/").removesuffix(":batchGenerateContent")
                self._send(200, stub.create_gemini(model, json.loads(raw)))
            elif self.path == "/v1/files":
                self._send(200, stub.upload(_uploaded_file(self.headers["content-type"], raw)))
            elif self.path == "/v1/batches":
                self._send(200, stub.create(json.loads(raw)))
            elif self.path == "/v1/messages/batches":
                self._send(200, stub.create_messages(json.loads(raw)))
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            parts = path.strip("/").split("/")
            gemini = GEMINI_PATH.fullmatch(path)
            if gemini and gemini["rest"] in stub.batches:  # OpenAI's ids are not batches/…
                operation = stub.get_gemini(gemini["rest"])
                self._send(200 if operation else 404, operation or {"error": {"code": 404}})
            elif gemini and gemini["rest"].endswith(":download"):
                name = gemini["rest"].removesuffix(":download")
                self._send_bytes(200, stub.files[name], "application/octet-stream")
            elif parts[:3] == ["v1", "messages", "batches"] and len(parts) == 4:
                batch = stub.retrieve_messages(parts[3])
                self._send(200 if batch else 404, batch or {"error": {"message": "no batch"}})
            elif parts[:3] == ["v1", "messages", "batches"] and parts[4:] == ["results"]:
                self._send_bytes(200, stub.files[parts[3]], "application/binary")
            elif parts[:2] == ["v1", "batches"] and len(parts) == 3:
                batch = stub.retrieve(parts[2])
                self._send(200 if batch else 404, batch or {"error": {"message": "no batch"}})
            elif parts[:2] == ["v1", "files"] and parts[3:] == ["content"]:
                self._send_bytes(200, stub.files[parts[2]], "application/octet-stream")
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
            self._send_bytes(status, json.dumps(body).encode(), "application/json", headers)

        def _send_bytes(
            self, status: int, data: bytes, content_type: str, headers: dict | None = None
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _uploaded_file(content_type: str, raw: bytes) -> bytes:
    """The `file` part of a multipart/form-data body."""
    message = email.message_from_bytes(f"content-type: {content_type}\r\n\r\n".encode() + raw)
    for part in message.walk():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_payload(decode=True)
    raise ValueError("no file part in the upload")


@contextlib.contextmanager
def batch_stub(**options: Any) -> Iterator[BatchStub]:
    stub = BatchStub(**options)
    threading.Thread(target=stub._server.serve_forever, kwargs={"poll_interval": 0.02},
                     daemon=True).start()  # fmt: skip
    try:
        yield stub
    finally:
        stub._server.shutdown()
        stub._server.server_close()
