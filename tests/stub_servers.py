"""Loopback HTTP servers that speak the OpenAI, Anthropic and Gemini wire protocols.

Each stub is a real HTTP server on 127.0.0.1 (a free port), so the official SDKs talk to it
exactly as they would to the real service. A stub answers with `reply` (a text, or a function
of the request's JSON body; `reshape` may then change the whole reply body), checks the API key
and the model name as the real service does, can add a latency (fixed, or a function of the
request's JSON body), and can be told to
misbehave for the next requests or for all of them (`fail`). It records every request it
received and the most requests it served at once.

    with openai_stub(reply="hello") as stub:
        client = OpenAI(base_url=stub.url, api_key=stub.api_key)

`openai_stub_process` runs one in a process of its own, which can die for real (its sockets
closed mid-request) and keeps a log of the queries it answered with a 200.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = str | Callable[[dict], str]

# What a stub can be told to do instead of answering.
# `empty`: a well-formed reply without text; `malformed`: a body declared JSON that is not;
# `html`: a web page, as a proxy in the way sends; `wrong_shape`: JSON without a reply's fields.
# The OpenAI dialect's success body with one part out of shape, as broken compatible servers send.
OPENAI_WRONG_SHAPES: dict[str, Callable[[dict], dict]] = {
    "no_choices": lambda body: body | {"choices": []},
    "choices_not_a_list": lambda body: body | {"choices": {"0": body["choices"][0]}},
    "choice_not_an_object": lambda body: body | {"choices": ["hello"]},
    "null_message": lambda body: body | {"choices": [body["choices"][0] | {"message": None}]},
    "content_not_text": lambda body: (
        body | {"choices": [{"index": 0, "message": {"role": "assistant", "content": 42}}]}
    ),
    "content_parts": lambda body: (
        body | {"choices": [{"message": {"content": [{"type": "text", "text": "hi"}]}}]}
    ),
}
FAULTS = (
    "server_error",
    "rate_limit",
    "stall",
    "empty",
    "malformed",
    "html",
    "wrong_shape",
    *OPENAI_WRONG_SHAPES,
)
# The error type (or status) each service names for an HTTP status.
OPENAI_ERROR_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 429: "requests"}
ANTHROPIC_ERROR_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
GEMINI_ROUTE = re.compile(r"/v1(beta|alpha)?/models/(?P<model>[^/:]+):generateContent")
GEMINI_STATUSES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED"}


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # a str is sent as it is, anything else as JSON
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class Dialect:
    """One provider's wire protocol: where requests go and what replies look like."""

    prefix = ""  # added to the server's root to give the SDK's base URL

    def handles(self, path: str) -> bool:
        raise NotImplementedError

    def api_key(self, headers: dict[str, str]) -> str | None:
        raise NotImplementedError

    def model(self, path: str, body: dict) -> str:
        raise NotImplementedError

    def success(self, model: str, text: str | None) -> dict:
        raise NotImplementedError

    def error(self, status: int, message: str) -> Answer:
        raise NotImplementedError

    def bad_key(self) -> Answer:
        return self.error(401, "Incorrect API key provided.")


class OpenAIDialect(Dialect):
    prefix = "/v1"

    def handles(self, path: str) -> bool:
        return path == "/v1/chat/completions"

    def api_key(self, headers: dict[str, str]) -> str | None:
        return headers.get("authorization", "").removeprefix("Bearer ") or None

    def model(self, path: str, body: dict) -> str:
        return body.get("model", "")

    def success(self, model: str, text: str | None) -> dict:
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def error(self, status: int, message: str) -> Answer:
        kind = OPENAI_ERROR_TYPES.get(status, "server_error")
        return Answer(status, {"error": {"message": message, "type": kind, "code": None}})


class AnthropicDialect(Dialect):
    def handles(self, path: str) -> bool:
        return path == "/v1/messages"

    def api_key(self, headers: dict[str, str]) -> str | None:
        # Older SDKs send `x-api-key`, newer ones a bearer token; the service takes either.
        bearer = headers.get("authorization", "").removeprefix("Bearer ") or None
        return headers.get("x-api-key") or bearer

    def model(self, path: str, body: dict) -> str:
        return body.get("model", "")

    def success(self, model: str, text: str | None) -> dict:
        content = [] if text is None else [{"type": "text", "text": text}]
        return {
            "id": "msg_stub",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }

    def error(self, status: int, message: str) -> Answer:
        kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return Answer(status, {"type": "error", "error": {"type": kind, "message": message}})

    def bad_key(self) -> Answer:
        return self.error(401, "invalid x-api-key")


class GeminiDialect(Dialect):
    def handles(self, path: str) -> bool:
        return GEMINI_ROUTE.fullmatch(path) is not None

    def api_key(self, headers: dict[str, str]) -> str | None:
        return headers.get("x-goog-api-key")

    def model(self, path: str, body: dict) -> str:
        return GEMINI_ROUTE.fullmatch(path)["model"]

    def success(self, model: str, text: str | None) -> dict:
        parts = [] if text is None else [{"text": text}]
        return {
            "candidates": [
                {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1},
            "modelVersion": model,
        }

    def error(self, status: int, message: str) -> Answer:
        code = GEMINI_STATUSES.get(status, "UNKNOWN")
        return Answer(status, {"error": {"code": status, "message": message, "status": code}})

    def bad_key(self) -> Answer:
        # The Gemini API reports a bad key as a 400 with reason API_KEY_INVALID, not a 401.
        answer = self.error(400, "API key not valid. Please pass a valid API key.")
        answer.body["error"]["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
        ]
        return answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the default backlog (5) drops connections under concurrency


class StubServer:
    """A loopback server for one dialect. Use through `openai_stub` and its siblings."""

    def __init__(
        self,
        dialect: Dialect,
        *,
        reply: Reply = "stub answer",
        api_key: str | None = "stub-key",
        model: str = "stub-model",
        latency_s: float | Callable[[dict], float] = 0.0,
        retry_after_s: float = 0.01,
        stall_s: float = 30.0,
        reshape: Callable[[dict], Any] | None = None,
        port: int = 0,
        served_log: str | None = None,
        die_after: int | None = None,
    ):
        self.dialect = dialect
        self.reply = reply
        self.api_key = api_key  # None: any key (or none) is accepted, as vLLM does by default
        self.model = model
        self.latency_s = latency_s
        self.retry_after_s = retry_after_s
        self.stall_s = stall_s
        self.reshape = reshape
        self.served_log = served_log  # a file: one line a query answered with a 200
        self.die_after = die_after  # requests; the next one kills the process (SIGKILL)
        self.served_lock = threading.Lock()  # a reply and its log line, or the death
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._faults: deque[str] = deque()
        self._lasting_fault: str | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", port), _handler_for(self))  # 0: a free one

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        """The base URL to give the provider's SDK."""
        return self.root + self.dialect.prefix

    def fail(self, fault: str, times: int | None = None) -> None:
        """Answer the next `times` requests with `fault` (every request when `times` is None)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; pick one of {FAULTS}")
        with self._lock:
            if times is None:
                self._lasting_fault = fault
            else:
                self._faults.extend([fault] * times)

    def recover(self) -> None:
        """Stop misbehaving: answer every request from now on."""
        with self._lock:
            self._faults.clear()
            self._lasting_fault = None

    def start(self) -> None:
        serve = self._server.serve_forever
        # A short poll interval makes `stop` quick.
        threading.Thread(target=serve, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled handlers
        self._server.shutdown()
        self._server.server_close()

    def answer(self, path: str, headers: dict[str, str], body: dict) -> Answer:
        with self._lock:
            if self.die_after is not None and len(self.requests) >= self.die_after:
                with self.served_lock:  # no reply is half sent, or sent and not logged
                    os.kill(os.getpid(), signal.SIGKILL)
            self.requests.append(RecordedRequest(path, headers, body))
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            latency_s = self.latency_s(body) if callable(self.latency_s) else self.latency_s
            self._stopping.wait(latency_s)
            return self._answer(path, headers, body)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, path: str, headers: dict[str, str], body: dict) -> Answer:
        dialect = self.dialect
        if not dialect.handles(path):
            return dialect.error(404, f"no route {path}")
        if self.api_key is not None and dialect.api_key(headers) != self.api_key:
            return dialect.bad_key()
        model = dialect.model(path, body)
        if model != self.model:
            return dialect.error(404, f"The model `{model}` does not exist.")
        fault = self._next_fault()
        if fault == "stall":
            self._stopping.wait(self.stall_s)  # then answers, long after the client gave up
        elif fault is not None:
            return self._misbehave(fault, model)
        text = self.reply(body) if callable(self.reply) else self.reply
        success = self.dialect.success(model, text)
        return Answer(200, self.reshape(success) if self.reshape else success)

    def _misbehave(self, fault: str, model: str) -> Answer:
        if fault in ("server_error", "rate_limit"):
            status = 500 if fault == "server_error" else 429
            answer = self.dialect.error(status, f"stub {fault.replace('_', ' ')}")
            # The openai and anthropic SDKs wait as told, which keeps retries in tests short.
            retry_after = (
                ("retry-after-ms", f"{self.retry_after_s * 1000:g}"),
                ("retry-after", f"{self.retry_after_s:g}"),
            )
            return Answer(answer.status, answer.body, headers=retry_after)
        if fault == "empty":
            return Answer(200, self.dialect.success(model, None))
        if fault == "malformed":
            return Answer(200, '{"choices": [')
        if fault == "html":
            return Answer(200, "<html>sign in to the proxy</html>", "text/html")
        if fault in OPENAI_WRONG_SHAPES:
            return Answer(200, OPENAI_WRONG_SHAPES[fault](self.dialect.success(model, "x")))
        return Answer(200, {"status": "ok"})  # wrong_shape

    def _next_fault(self) -> str | None:
        with self._lock:
            return self._faults.popleft() if self._faults else self._lasting_fault


def _handler_for(stub: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle's algorithm on, the second waits
        # for the client's delayed ACK, adding ~40 ms to every reply on a kept-alive connection.
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            if len(raw) < length:
                # The client went away mid-body (a killed worker): no request was made.
                self.close_connection = True
                return
            body = json.loads(raw) if raw else {}
            headers = {name.lower(): value for name, value in self.headers.items()}
            path = self.path.split("?", 1)[0]
            answer = stub.answer(path, headers, body)
            with stub.served_lock:
                self._send(answer)
                if stub.served_log is not None and self.answered == 200:
                    with open(stub.served_log, "a", encoding="utf-8") as log:
                        log.write(json.dumps(query_of(body)) + "\n")

        def _send(self, answer: Answer) -> None:
            payload = answer.body if isinstance(answer.body, str) else json.dumps(answer.body)
            data = payload.encode()
            self.answered = None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(answer.status)
                self.send_header("content-type", answer.content_type)
                self.send_header("content-length", str(len(data)))
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                self.answered = answer.status

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler


@contextlib.contextmanager
def _running(dialect: Dialect, **options: Any) -> Iterator[StubServer]:
    stub = StubServer(dialect, **options)
    stub.start()
    try:
        yield stub
    finally:
        stub.stop()


def openai_stub(**options: Any) -> contextlib.AbstractContextManager[StubServer]:
    """An OpenAI-compatible chat completions server (`/v1/chat/completions`)."""
    return _running(OpenAIDialect(), **options)


def anthropic_stub(**options: Any) -> contextlib.AbstractContextManager[StubServer]:
    """An Anthropic messages server (`/v1/messages`)."""
    return _running(AnthropicDialect(), **options)


def gemini_stub(**options: Any) -> contextlib.AbstractContextManager[StubServer]:
    """A Gemini API server (`/<version>/models/<model>:generateContent`)."""
    return _running(GeminiDialect(), **options)


def query_of(body: dict) -> str:
    """The text of a chat completions request's last message (beside its image, if any)."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return next(part["text"] for part in content if part.get("type") == "text")


class StubProcess:
    """An OpenAI-compatible stub in a child process (see `openai_stub_process`)."""

    def __init__(self, process: subprocess.Popen, url: str, served_log: str):
        self.process = process
        self.url = url
        self.served_log = served_log

    def served(self) -> list[str]:
        """The queries it answered with a 200, from its own log."""
        with contextlib.suppress(FileNotFoundError), open(self.served_log) as log:
            return [json.loads(line) for line in log]
        return []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@contextlib.contextmanager
def openai_stub_process(
    served_log: str | os.PathLike, *, latency_s: float = 0.0, die_after: int | None = None
) -> Iterator[StubProcess]:
    """An OpenAI-compatible stub (any key accepted, model `stub-model`, replying "stub
    answer") in a child process, logging each query it answers with a 200 to `served_log`;
    with `die_after`, the request after that many kills the process (SIGKILL): its sockets
    close, its requests in flight get no reply."""
    command = [sys.executable, "-m", "tests.stub_servers", "--served-log", str(served_log)]
    command += ["--latency-s", str(latency_s)]
    if die_after is not None:
        command += ["--die-after", str(die_after)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=root)
    stub = StubProcess(process, process.stdout.readline().strip(), str(served_log))
    try:
        yield stub
    finally:
        stub.stop()


def _serve_in_this_process() -> None:
    parser = argparse.ArgumentParser(description="An OpenAI-compatible stub server.")
    parser.add_argument("--served-log", required=True)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--port", type=int, default=0, help="0: a free one")
    args = parser.parse_args()
    stub = StubServer(
        OpenAIDialect(),
        api_key=None,
        latency_s=args.latency_s,
        served_log=args.served_log,
        die_after=args.die_after,
        port=args.port,
    )
    print(stub.url, flush=True)
    stub._server.serve_forever(poll_interval=0.02)


def closed_port_url() -> str:
    """A loopback URL on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


if __name__ == "__main__":
    _serve_in_this_process()
