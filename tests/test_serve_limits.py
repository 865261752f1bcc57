"""`holisafe serve` under hostile or careless clients: what it holds at once (requests, decoded
pixels, connections), slow and idle clients, the Host allow-list, JSON-only POSTs, the API key,
and property-based tests of its request parser. The model is a fake that answers at once (or
when a test lets it), so that these tests exercise the server alone."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from holisafe.cli import app as cli_app
from holisafe.core.records import Response, SafetyPrediction
from holisafe.serve import (
    ApiError,
    ServeError,
    ServeLimits,
    ServeSettings,
    create_app,
    running_server,
)
from holisafe.serve.limits import decode_encoded, read_image_url
from holisafe.serve.protocol import ChatCall, parse_chat
from holisafe.synthetic.tiny import build_tiny_model
from tests.modelfixtures import no_network

NAME = "fake"
WAIT_S = 30  # the most any condition below is waited for; reaching it fails the test
SMALL = ServeLimits(
    max_request_bytes=64 * 1024,
    max_image_bytes=32 * 1024,
    max_image_pixels=5_000,
    max_decoded_pixels=5_000,
    max_tokens=16,
    max_text_bytes=500,
    max_guard_images=4,
    max_pending=2,
)


class FakeSafeVlm:
    """Answers with the query and a fixed safety verdict; with a gate, only once it is open."""

    spec = f"fake/{NAME}"
    batch_size = 4
    is_safe_vlm = True
    verdict = SafetyPrediction("safe", 0.9, {"safe": 0.9, "self_harm": 0.1})

    def __init__(self, gated: bool = False):
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.image_sizes: list[tuple[int, int] | None] = []

    def generate(self, requests, settings):
        self.gate.wait(WAIT_S)
        self.image_sizes += [r.image.size if r.image else None for r in requests]
        return [Response(text=r.query, safety=self.verdict if r.image else None) for r in requests]

    def classify(self, images):
        self.gate.wait(WAIT_S)
        return [self.verdict for _ in images]


@contextmanager
def serving(model=None, limits: ServeLimits = SMALL, **options) -> Iterator[str]:
    app = create_app(model or FakeSafeVlm(), ServeSettings(limits=limits, **options))
    with running_server(app) as root:
        yield root


def png_url(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(text: str = "What is this?", image_url: str | None = None, **fields) -> dict:
    content: list[dict] = [{"type": "text", "text": text}]
    if image_url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image_url}})
    return {"model": NAME, "messages": [{"role": "user", "content": content}], **fields}


def post(root: str, body: dict, path: str = "/v1/chat/completions", **kwargs) -> httpx.Response:
    return httpx.post(f"{root}{path}", json=body, timeout=WAIT_S, **kwargs)


def post_bytes(root: str, body: bytes, path: str = "/v1/chat/completions", headers=None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(f"{root}{path}", content=body, headers=headers, timeout=WAIT_S)


def error_of(reply: httpx.Response, status: int) -> dict:
    assert reply.status_code == status, reply.text
    return reply.json()["error"]


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "the server never reached the expected state"
        time.sleep(0.02)


def health(root: str) -> dict:
    return httpx.get(f"{root}/health", timeout=WAIT_S).json()


def in_background(function: Callable[[], httpx.Response]) -> Callable[[], httpx.Response]:
    """Start `function` on a thread; the returned call waits for its reply."""
    replies: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: replies.append(function()))
    thread.start()

    def reply() -> httpx.Response:
        thread.join(WAIT_S)
        return replies[0]

    return reply


# --- what the server holds at once ---------------------------------------------------------


def test_requests_past_max_pending_get_503_with_retry_after_and_health_answers():
    model = FakeSafeVlm(gated=True)
    with serving(model) as root:
        first = in_background(lambda: post(root, chat("one")))
        second = in_background(lambda: post(root, chat("two")))
        wait_until(lambda: health(root)["pending"] == 2)
        refused = post(root, chat("three"))
        error = error_of(refused, 503)
        assert error["code"] == "server_busy" and error["type"] == "server_error"
        assert "2 requests are in progress" in error["message"]
        assert refused.headers["retry-after"] == "1"
        assert health(root)["busy_refusals"] == 1
        model.gate.set()
        assert first().json()["choices"][0]["message"]["content"] == "one"
        assert second().json()["choices"][0]["message"]["content"] == "two"
        assert health(root)["pending"] == 0
        assert post(root, chat("four")).status_code == 200


def test_images_wait_for_the_pixel_budget_instead_of_all_being_decoded_at_once():
    model = FakeSafeVlm(gated=True)
    with serving(model) as root:  # a budget of 5,000 pixels: one 60x60 image at a time
        first = in_background(lambda: post(root, chat("a", png_url(60, 60))))
        wait_until(lambda: health(root)["decoded_pixels"] == 3_600)
        second = in_background(lambda: post(root, chat("b", png_url(60, 50))))
        wait_until(lambda: health(root)["pending"] == 2)
        assert health(root)["decoded_pixels"] == 3_600  # the second waits, undecoded
        model.gate.set()
        assert first().status_code == 200 and second().status_code == 200
        assert model.image_sizes == [(60, 60), (60, 50)]
        assert health(root)["decoded_pixels"] == 0


def test_a_request_whose_images_can_never_fit_the_pixel_budget_gets_413():
    with serving() as root:
        reply = post(root, {"images": [png_url(60, 60), png_url(60, 60)]}, "/v1/guard")
        error = error_of(reply, 413)
        assert "7,200 pixels" in error["message"] and "5,000 held at once" in error["message"]
        assert health(root)["decoded_pixels"] == 0 and health(root)["pending"] == 0


def test_limits_are_checked_and_summarised():
    with pytest.raises(ServeError, match="max_decoded_pixels"):
        ServeLimits(max_image_pixels=10, max_decoded_pixels=5)
    with pytest.raises(ServeError, match="header_timeout_s must be over 0"):
        ServeLimits(header_timeout_s=0)
    summary = SMALL.summary()
    figures = ("2 requests", "5,000 decoded pixels", "500 bytes", "10 s", "65,536 bytes", "4 slow")
    for figure in figures:
        assert figure in summary
    # two bodies (read, parsed) an admitted request, one a slow body; 16 B a pixel
    bound = (2 * 2 + 32) * 64 * 1024 + 16 * 5_000
    assert SMALL.memory_bound == bound


def test_a_long_query_is_bounded_in_bytes_not_characters():
    with serving() as root:
        emoji = "\U0001f4a5" * 200  # 200 characters, 800 bytes in UTF-8
        error = error_of(post(root, chat(emoji)), 400)
        assert "800 bytes" in error["message"] and "limit of 500" in error["message"]
        assert post(root, chat("x" * 400)).status_code == 200


# --- slow, idle and too many connections ----------------------------------------------------

QUICK = ServeLimits(header_timeout_s=0.5, body_timeout_s=0.5)


def connect(root: str) -> socket.socket:
    host, port = root.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """All the server sends until it closes the connection (a timeout here fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
    ids=["silent", "half-a-head"],
)
def test_a_client_that_does_not_finish_its_request_head_is_disconnected(sent):
    with serving(limits=QUICK) as root, connect(root) as sock:
        sock.sendall(sent)
        assert read_until_closed(sock) == b""


def test_an_idle_kept_alive_connection_is_closed_after_its_answer():
    with serving(limits=QUICK) as root, connect(root) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200")


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes():
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    with serving(limits=QUICK) as root, connect(root) as sock:
        sock.sendall(head.encode())
        answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"did not arrive within 0.5 s" in answer
        assert health(root)["pending"] == 0


def body_head(length: int, path: str = "/v1/chat/completions") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_a_body_has_a_deadline_scaled_to_its_declared_length():
    limits = ServeLimits(body_timeout_s=0.5, min_body_rate=1000)
    body = json.dumps(chat("x" * 100)).encode()
    body += b" " * (2000 - len(body))  # 0.5 s + 2000 bytes at 1000 bytes/s: 2.5 s
    with serving(limits=limits) as root, connect(root) as sock:
        sock.sendall(body_head(len(body)) + body[:1000])
        time.sleep(1)  # past the base allowance, within the scaled deadline
        sock.sendall(body[1000:])
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_body_slower_than_its_scaled_deadline_gets_408_naming_it():
    limits = ServeLimits(body_timeout_s=0.5, min_body_rate=1000)
    with serving(limits=limits) as root, connect(root) as sock:
        sock.sendall(body_head(1000) + b"{")
        started = time.monotonic()
        answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"did not arrive within 1.5 s (0.5 s plus 1 s per 1,000 of its 1,000 bytes)" in (
            answer
        )
        assert time.monotonic() - started >= 1.4


def test_slow_bodies_from_one_address_do_not_stop_requests_from_another():
    limits = ServeLimits(max_pending=2, max_slow_bodies=3, max_slow_bodies_per_client=2)
    with serving(limits=limits) as root:
        slow = [connect(root) for _ in range(6)]
        for sock in slow:
            sock.sendall(body_head(1000) + b"{")
        refused = [read_until_closed(sock) for sock in slow[2:]]  # over 127.0.0.1's limit of 2
        assert all(answer.startswith(b"HTTP/1.1 429") for answer in refused)
        assert b"127.0.0.1 is already sending 2 request bodies slowly" in refused[0]
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        for _ in range(3):  # complete requests are answered, past max_pending, while slow ones wait
            assert other.post(f"{root}/v1/chat/completions", json=chat()).status_code == 200
        assert post(root, chat()).status_code == 200  # even from the slow clients' address
        assert health(root)["slow_bodies"] == 2
        for sock in slow:
            sock.close()


def test_slow_bodies_past_the_server_wide_limit_get_503():
    limits = ServeLimits(max_slow_bodies=1)
    with serving(limits=limits) as root, connect(root) as first, connect(root) as second:
        first.sendall(body_head(1000) + b"{")
        wait_until(lambda: health(root)["slow_bodies"] == 1)
        second.sendall(body_head(1000) + b"{")
        answer = read_until_closed(second)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer.title()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/guard"])
def test_a_body_nested_100_000_deep_gets_400_naming_the_depth(path):
    body = b"[" * 100_000 + b"]" * 100_000
    with serving(limits=ServeLimits()) as root:
        error = error_of(post_bytes(root, body, path), 400)
    assert error["message"] == "request body refused: JSON nested deeper than 64 levels"


def test_a_request_head_still_incomplete_past_16_kib_gets_400(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 20_000)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400")


def test_requests_past_max_connections_get_503():
    with serving(limits=ServeLimits(max_connections=3)) as root:
        idle = [connect(root) for _ in range(3)]
        wait_until(lambda: httpx.get(f"{root}/health").status_code == 503)
        for sock in idle:
            sock.close()
        wait_until(lambda: httpx.get(f"{root}/health").status_code == 200)


# --- whom the server answers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with serving(api_key="s3cret key") as root:
        yield root


KEY = {"Authorization": "Bearer s3cret key"}


@pytest.mark.parametrize("host", ["rebound.example.com", "evil.test:8000", "", "[::2]"])
def test_requests_for_another_host_are_refused(server, host):
    for path in ("/", "/health", "/v1/models"):
        reply = httpx.get(f"{server}{path}", headers={"Host": host, **KEY})
        error = error_of(reply, 400)
        assert error["code"] == "invalid_host" and "--allowed-host" in error["message"]


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "[::1]:80"])
def test_loopback_names_are_answered(server, host):
    assert httpx.get(f"{server}/health", headers={"Host": host}).status_code == 200


def test_the_allow_list_takes_more_hosts_or_any():
    with serving(allowed_hosts=("models.lab.internal",)) as root:
        ok = httpx.get(f"{root}/health", headers={"Host": "models.lab.internal:8000"})
        assert ok.status_code == 200
        assert httpx.get(f"{root}/health").status_code == 400  # loopback was not listed
    with serving(allowed_hosts=("*",)) as root:
        assert httpx.get(f"{root}/health", headers={"Host": "a.b"}).status_code == 200


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"],
)
def test_posts_that_are_not_json_are_refused(server, content_type):
    headers = KEY | ({"Content-Type": content_type} if content_type else {})
    for path in ("/v1/chat/completions", "/v1/guard"):
        reply = httpx.post(f"{server}{path}", content=json.dumps(chat()), headers=headers)
        error = error_of(reply, 415)
        assert "application/json" in error["message"]


def test_json_with_a_charset_is_json(server):
    headers = KEY | {"Content-Type": "Application/JSON; charset=utf-8"}
    reply = httpx.post(f"{server}/v1/chat/completions", content=json.dumps(chat()), headers=headers)
    assert reply.status_code == 200


def test_the_api_key_is_required_under_v1_only(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="s3cret key", max_retries=0)
    answer = client.chat.completions.create(model=NAME, messages=chat("hi")["messages"])
    assert answer.choices[0].message.content == "hi"
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="guess", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    missing = httpx.post(f"{server}/v1/chat/completions", json=chat())
    assert error_of(missing, 401)["code"] == "invalid_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server}/health").status_code == 200
    assert httpx.get(f"{server}/").status_code == 200


def test_an_empty_api_key_is_refused():
    with pytest.raises(ServeError, match="API key is empty"):
        ServeSettings(api_key=" ")


def test_serve_command_refuses_a_bad_timeout_before_loading_anything():
    result = CliRunner().invoke(
        cli_app, ["serve", "--model", "hf/nowhere", "--header-timeout", "0"]
    )
    assert isinstance(result.exception, ServeError)
    assert "header_timeout_s must be over 0 seconds" in str(result.exception)


@pytest.mark.slow
def test_serve_command_prints_its_limits_hosts_and_key_at_start_up(tmp_path):
    with no_network():
        folder = build_tiny_model(tmp_path / "tiny", "llava", seed=1)
    command = [sys.executable, "-m", "holisafe", "serve", "--model", f"hf/{folder}"]
    command += ["--port", "0", "--device", "cpu", "--max-pending", "7"]
    command += ["--allowed-host", "lab.internal"]
    env = os.environ | {"HOLISAFE_API_KEY": "k", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(120, server.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        while not any("answering for hosts" in line for line in lines):
            line = server.stderr.readline()
            assert line, "".join(lines)  # the server exited before it was ready
            lines.append(line)
    finally:
        watchdog.cancel()
        server.terminate()
        server.wait()
    printed = "".join(lines)
    assert "limits: at most 7 requests in progress" in printed
    assert "32,000,000 decoded pixels" in printed and "10 s to send a request head" in printed
    assert "127.0.0.1, localhost, ::1, lab.internal" in printed
    assert "/v1/ needs an API key" in printed


# --- property-based: any request gets a clear 4xx or an answer, never a 500 -----------------

LENIENT = ServeLimits(
    max_request_bytes=64 * 1024,
    max_image_bytes=32 * 1024,
    max_image_pixels=5_000,
    max_decoded_pixels=5_000,
    max_tokens=16,
    max_text_bytes=500,
)


def json_bytes(value: object) -> bytes:
    return json.dumps(value).encode()


ROLES = ["system", "developer", "user", "assistant", "tool", "wizard"]
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
# Any text, and text with lone UTF-16 surrogates (valid in JSON as \ud800, not in UTF-8).
UNICODE = st.text(max_size=20) | st.lists(st.characters() | SURROGATES, max_size=20).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | UNICODE,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(UNICODE, inner, max_size=4),
    max_leaves=12,
)
image_urls = st.one_of(
    st.binary(max_size=300).map(lambda b: "data:image/png;base64," + base64.b64encode(b).decode()),
    st.sampled_from([png_url(8, 8), png_url(70, 70), png_url(1, 1)]),
    UNICODE,
    json_values,
)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": UNICODE | json_values}),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": image_urls})}
    ),
    st.dictionaries(st.sampled_from(["type", "text", "image_url"]), json_values, max_size=3),
)
messages = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES) | json_values},
    optional={"content": UNICODE | st.lists(parts, max_size=3) | json_values},
)
chat_bodies = st.fixed_dictionaries(
    {"model": st.just(NAME) | UNICODE, "messages": st.lists(messages, max_size=3)},
    optional={
        "max_tokens": st.integers(-2, 40) | json_values,
        "temperature": st.floats(-1, 3) | json_values,
        "stream": st.booleans() | json_values,
        "n": st.integers(0, 3),
    },
)
guard_bodies = st.fixed_dictionaries(
    {"images": st.lists(image_urls, min_size=1, max_size=5) | json_values},
    optional={"model": UNICODE},
)
raw_bodies = st.binary(max_size=200) | json_values.map(json_bytes)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def lenient_server():
    with serving(limits=LENIENT) as root, httpx.Client(base_url=root, timeout=WAIT_S) as http:
        yield http


def assert_answer_or_clear_4xx(http: httpx.Client, path: str, body: bytes) -> None:
    reply = http.post(path, content=body, headers={"Content-Type": "application/json"})
    answer = reply.json()
    if reply.status_code == 200:
        assert "choices" in answer or "results" in answer
    else:
        assert 400 <= reply.status_code < 500, answer
        assert answer["error"]["message"]
        assert answer["error"]["type"] == "invalid_request_error"


@PROPERTY
@given(body=raw_bodies | chat_bodies.map(json_bytes))
def test_any_chat_request_gets_an_answer_or_a_clear_4xx(lenient_server, body):
    assert_answer_or_clear_4xx(lenient_server, "/v1/chat/completions", body)


@PROPERTY
@given(body=raw_bodies | guard_bodies.map(json_bytes))
def test_any_guard_request_gets_an_answer_or_a_clear_4xx(lenient_server, body):
    assert_answer_or_clear_4xx(lenient_server, "/v1/guard", body)


@PROPERTY
@given(body=json_values | chat_bodies)
def test_the_chat_parser_returns_a_call_or_refuses_with_a_4xx(body):
    try:
        call = parse_chat(body, LENIENT)
    except ApiError as error:
        assert 400 <= error.status < 500 and error.message
    else:
        assert isinstance(call, ChatCall) and isinstance(call.query, str)
        assert len((call.query + (call.system or "")).encode()) <= LENIENT.max_text_bytes


@PROPERTY
@given(data=st.binary(max_size=2_000) | st.sampled_from([b"\x89PNG\r\n\x1a\n", b"GIF89a"]))
def test_any_bytes_as_an_image_decode_or_refuse_with_a_4xx(data):
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    try:
        image = decode_encoded(read_image_url(url, "#1", LENIENT), LENIENT)
    except ApiError as error:
        assert error.status in (400, 413) and "#1" in error.message
    else:
        assert image.mode == "RGB" and image.width * image.height <= LENIENT.max_image_pixels
