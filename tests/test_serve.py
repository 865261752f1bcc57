"""`holisafe serve` on loopback with a tiny Safe-VLM: the official openai client, the guard API,
limits and malformed requests, concurrent clients and batching, and `holisafe eval` through it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import socket
import threading

import httpx
import openai
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from holisafe.cli import app as cli_app
from holisafe.core.records import GenerationSettings, Request, Response
from holisafe.models.hf import HFModel
from holisafe.serve import (
    DynamicBatcher,
    ServeError,
    ServeLimits,
    ServeSettings,
    create_app,
    default_model_name,
    running_server,
)
from holisafe.serve.protocol import completion
from holisafe.synthetic.mini import generate_mini
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.vgm import VGMSettings, convert_folder
from tests.modelfixtures import no_network, picture

NAME = "safe"  # the model folder's name: what the server calls its model
LIMITS = ServeLimits(
    max_request_bytes=256 * 1024,
    max_image_bytes=96 * 1024,
    max_image_pixels=100_000,
    max_tokens=32,
    max_text_bytes=2_000,
    max_pending=64,
    max_decoded_pixels=400_000,
    max_guard_images=4,
)
GREEDY = {"max_tokens": 6, "temperature": 0}
CLIENTS = 50


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    with no_network():
        build_tiny_model(root / "plain", "llava", seed=3)
        convert_folder(str(root / "plain"), str(root / NAME), VGMSettings())
        return HFModel(f"hf/{root / NAME}", device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def server(model):
    """The root URL of a server running on a free loopback port for the whole module."""
    with running_server(create_app(model, ServeSettings(limits=LIMITS))) as root:
        yield root


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


RED = picture(40, 30, (220, 20, 20))
BLUE = picture(24, 48, (20, 20, 220))


def user(text: str, image: Image.Image | None = None) -> dict:
    if image is None:
        return {"role": "user", "content": text}
    image_part = {"type": "image_url", "image_url": {"url": data_url(png(image))}}
    return {"role": "user", "content": [image_part, {"type": "text", "text": text}]}


def direct(model, request: Request):
    """What the model answers the same request with, called without the server."""
    return model.generate([request], GenerationSettings(max_new_tokens=6, temperature=0))[0]


def chat_body(**fields) -> dict:
    return {"model": NAME, "messages": [user("What is this?", RED)], **GREEDY, **fields}


def post(server: str, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server}{path}", timeout=60, **kwargs)


def assert_error(reply: httpx.Response, status: int, *words: str) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["type"] == "invalid_request_error"
    for word in words:
        assert word in error["message"]


def test_openai_client_answers_an_image_question_with_the_safety_prediction(client, model):
    completion = client.chat.completions.create(
        model=NAME, messages=[user("What is this?", RED)], **GREEDY
    )
    expected = direct(model, Request("What is this?", RED))
    assert completion.model == NAME
    assert completion.choices[0].message.content == expected.text
    assert completion.choices[0].finish_reason == ("length" if expected.truncated else "stop")
    safety = completion.safety
    assert set(safety) == {"label", "prob", "unsafe", "probs"}
    assert safety["label"] == expected.safety.label
    assert safety["probs"] == pytest.approx(expected.safety.probs, abs=1e-5)
    assert safety["prob"] == max(safety["probs"].values())
    assert safety["unsafe"] == pytest.approx(1 - safety["probs"]["safe"])


def test_openai_client_answers_without_an_image(client, model):
    completion = client.chat.completions.create(
        model=NAME, messages=[user("Hello, who are you?")], **GREEDY
    )
    assert (
        completion.choices[0].message.content == direct(model, Request("Hello, who are you?")).text
    )
    assert completion.safety is None


@pytest.mark.parametrize("image", [RED, None], ids=["image", "text"])
def test_streaming_sends_the_same_answer_and_safety_in_the_last_chunk(client, image):
    messages = [user("Describe it.", image)]
    whole = client.chat.completions.create(model=NAME, messages=messages, **GREEDY)
    chunks = list(
        client.chat.completions.create(model=NAME, messages=messages, stream=True, **GREEDY)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == (
        whole.choices[0].message.content
    )
    reasons = [c.choices[0].finish_reason for c in chunks]
    assert reasons[:-1] == [None] * (len(chunks) - 1)
    assert reasons[-1] == whole.choices[0].finish_reason
    assert (chunks[-1].model_extra or {}).get("safety") == whole.safety


def test_finish_reason_says_whether_max_tokens_cut_the_answer(client, model):
    assert direct(model, Request("What is this?", RED)).truncated  # random weights never stop
    reply = client.chat.completions.create(
        model=NAME, messages=[user("What is this?", RED)], **GREEDY
    )
    assert reply.choices[0].finish_reason == "length"
    assert completion(NAME, Response("Done."))["choices"][0]["finish_reason"] == "stop"
    # The rule: an answer is cut when it fills the limit and its last token is no stop token.
    stop = model.processor.tokenizer.eos_token_id
    ran_on, stopped = [5, 6, 7], [5, stop, stop]
    assert model._cut(torch.tensor([ran_on, stopped]), 3) == [True, False]
    assert model._cut(torch.tensor([ran_on[:2], stopped[:2]]), 3) == [False, False]


def test_a_conversation_is_answered_from_its_system_prompt_last_question_and_image(client, model):
    messages = [
        {"role": "system", "content": "Answer in one word."},
        user("What colour is this?", BLUE),
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": [{"type": "text", "text": "Is it safe?"}]},
    ]
    completion = client.chat.completions.create(model=NAME, messages=messages, **GREEDY)
    expected = direct(model, Request("Is it safe?", BLUE, system="Answer in one word."))
    assert completion.choices[0].message.content == expected.text
    assert completion.safety["label"] == expected.safety.label


def test_guard_classifies_a_batch_of_images(server, model):
    images = [RED, BLUE, picture(32, 32, (10, 200, 10))]
    urls = [data_url(png(images[0])), data_url(png(images[1]))]
    urls.append(base64.b64encode(png(images[2])).decode())  # bare base64 is accepted too
    reply = post(server, "/v1/guard", json={"model": NAME, "images": urls})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    expected = model.classify(images)
    assert [r["label"] for r in results] == [p.label for p in expected]
    for result, prediction in zip(results, expected, strict=True):
        assert result["probs"] == pytest.approx(prediction.probs, abs=1e-5)
        assert result["unsafe"] == pytest.approx(prediction.unsafe)


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("another-model")
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"] == NAME and health["safe_vlm"] is True
    assert health["max_batch"] == 8


def test_web_page_and_its_files_are_served(server):
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        assert httpx.get(f"{server}{asset}").status_code == 200


def test_another_model_name_gets_404_in_openai_shape(client, server):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[user("hi")], **GREEDY)
    assert caught.value.code == "model_not_found"
    reply = post(server, "/v1/chat/completions", json=chat_body(model="gpt-4o"))
    assert_error(reply, 404, "gpt-4o", NAME)
    assert_error(post(server, "/v1/guard", json={"model": "x", "images": ["AAAA"]}), 404, "`x`")
    assert_error(httpx.get(f"{server}/v1/nowhere"), 404)


@pytest.mark.parametrize(
    ("body", "status", "word"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe\x00garbage", 400, "not valid JSON"),
        (b"[" * 100_000, 400, "nested deeper than 64 levels"),
        (b"[1, 2]", 422, "body"),
        (b"{}", 422, "model"),
        (json.dumps({"model": NAME, "messages": []}).encode(), 422, "messages"),
        (json.dumps(chat_body(temperature=9)).encode(), 422, "temperature"),
        (json.dumps(chat_body(max_tokens="many")).encode(), 422, "max_tokens"),
        (json.dumps({"model": NAME, "messages": [{"role": "wizard"}]}).encode(), 422, "role"),
        (
            json.dumps(
                {"model": NAME, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}
            ).encode(),
            422,
            "audio",
        ),
    ],
)
def test_malformed_requests_get_400_or_422(server, body, status, word):
    reply = post(
        server, "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert_error(reply, status, word)


def decompression_bomb() -> bytes:
    """A ~50 kB PNG that claims 400 megapixels."""
    return png(Image.new("1", (20_000, 20_000)))


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (chat_body(max_tokens=33), 400, ["max_tokens=33", "limit of 32"]),
        (chat_body(max_completion_tokens=99), 400, ["max_tokens=99"]),
        (chat_body(messages=[user("x" * 2_001)]), 400, ["2,001 bytes"]),
        (chat_body(n=2), 400, ["n=2"]),
        (chat_body(messages=[{"role": "system", "content": "hi"}]), 400, ["no user message"]),
        (
            chat_body(messages=[user("a", RED), user("b", BLUE)]),
            400,
            ["2 images", "one image per request"],
        ),
        (
            chat_body(messages=[user("a", Image.new("L", (400, 400)))]),  # over 100,000
            413,
            ["400x400 = 160,000 pixels"],
        ),
    ],
    ids=["max_tokens", "max_completion_tokens", "text", "n", "no-user", "two-images", "pixels"],
)
def test_limits_get_clear_4xx_errors(server, body, status, words):
    assert_error(post(server, "/v1/chat/completions", json=body), status, *words)


def image_request(url: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
    return chat_body(messages=[{"role": "user", "content": content}])


@pytest.mark.parametrize(
    ("url", "status", "word"),
    [
        ("data:image/png;base64,@@not base64@@", 400, "broken base64"),
        (data_url(b"hello, not an image"), 400, "not a readable image"),
        (data_url(png(RED)[:60]), 400, "truncated"),
        ("https://example.com/cat.png", 400, "fetches nothing"),
        (data_url(decompression_bomb()), 413, "pixels"),
        (data_url(bytes(100 * 1024)), 413, "98,304 bytes"),
    ],
    ids=["base64", "not-image", "truncated", "http-url", "bomb", "image-bytes"],
)
def test_bad_images_are_refused_naming_the_problem(server, url, status, word):
    assert_error(post(server, "/v1/chat/completions", json=image_request(url)), status, word)


def test_oversized_bodies_are_refused_declared_or_streamed(server):
    body = json.dumps(chat_body(padding="x" * 300_000)).encode()
    headers = {"content-type": "application/json"}
    declared = post(server, "/v1/chat/completions", content=body, headers=headers)
    assert_error(declared, 413, "262,144")

    def chunked():  # no Content-Length: the limit is enforced while reading
        for start in range(0, len(body), 65_536):
            yield body[start : start + 65_536]

    streamed = post(server, "/v1/chat/completions", content=chunked(), headers=headers)
    assert_error(streamed, 413, "262,144")


def test_guard_limits(server):
    url = data_url(png(RED))
    assert_error(post(server, "/v1/guard", json={"images": [url] * 5}), 400, "limit of 4")
    assert_error(post(server, "/v1/guard", json={"images": []}), 422, "images")
    assert_error(post(server, "/v1/guard", json={"images": [url, "%%%"]}), 400, "image #2")


def garbage_bodies(rng: random.Random, count: int) -> list[bytes]:
    """Random bytes, random JSON, and chat requests with random values in their fields."""
    words = ["model", "messages", "role", "content", "user", "image_url", "url", "type", "text"]

    def value(depth: int):
        kind = rng.randrange(7 if depth < 3 else 4)
        if kind == 0:
            return rng.choice([None, True, -1, 0, 2**70, 1e308, "", "data:image/png;base64,"])
        if kind in (1, 2):
            return rng.choice(words) + rng.choice(["", "x", "\u0000", "\U0001f4a5"])
        if kind == 3:
            return rng.uniform(-1e9, 1e9)
        if kind in (4, 5):
            return {rng.choice(words): value(depth + 1) for _ in range(rng.randrange(4))}
        return [value(depth + 1) for _ in range(rng.randrange(4))]

    bodies = []
    for i in range(count):
        if i % 3 == 0:
            bodies.append(rng.randbytes(rng.randrange(200)))
        elif i % 3 == 1:
            bodies.append(json.dumps(value(0)).encode())
        else:
            message = {"role": value(2), "content": [{"type": "image_url", "image_url": value(2)}]}
            bodies.append(json.dumps({"model": NAME, "messages": [message]}).encode())
    return bodies


def test_random_garbage_never_takes_the_server_down(server):
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=server, timeout=60) as http:
        for body in garbage_bodies(random.Random(7), 300):
            for path in ("/v1/chat/completions", "/v1/guard"):
                reply = http.post(path, content=body, headers=headers)
                assert 400 <= reply.status_code < 500, (body[:80], reply.text)
                assert "message" in reply.json()["error"]
        assert http.get("/health").json()["status"] == "ok"


def test_fifty_concurrent_clients_all_succeed_and_are_batched(client, server):
    before = httpx.get(f"{server}/health").json()
    start = threading.Barrier(CLIENTS)
    answers: list[str | None] = [None] * CLIENTS
    failures: list[BaseException] = []

    def ask(i: int) -> None:
        image = picture(24 + i % 5 * 8, 32, (5 * i, 100, 255 - 5 * i))
        start.wait()
        try:
            completion = client.chat.completions.create(
                model=NAME, messages=[user(f"Question {i}?", image)], max_tokens=4, temperature=0
            )
            answers[i] = completion.choices[0].message.content
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert all(isinstance(answer, str) for answer in answers)
    after = httpx.get(f"{server}/health").json()
    assert after["requests"] - before["requests"] == CLIENTS
    assert after["batches"] - before["batches"] < CLIENTS  # some requests shared a model call
    assert 1 < after["largest_batch"] <= 8


def test_holisafe_eval_runs_the_mini_bench_through_the_server(server, tmp_path):
    mini = generate_mini(tmp_path / "mini", bench_pairs=95, train_pairs=95)
    with no_network():
        result = CliRunner().invoke(
            cli_app,
            [
                "eval",
                "--model",
                f"openai/{NAME}",
                "--base-url",
                f"{server}/v1",
                "--bench",
                str(mini.bench_dir),
                "--store",
                str(tmp_path / "store.db"),
                "--max-new-tokens",
                "8",
                "--max-retries",
                "0",
            ],
        )
    assert result.exit_code == 0, result.output
    assert f"run 1: {mini.bench_pairs} new responses" in result.output
    assert f"openai/{NAME}" in result.output


class GatedModel:
    """A fake model whose first call waits for a gate, so that later requests pile up."""

    spec = "fake/gated"
    batch_size = 4

    def __init__(self):
        self.gate = threading.Event()
        self.calls: list[list[str]] = []

    def generate(self, requests, settings):
        self.gate.wait(timeout=30)
        self.calls.append([r.query for r in requests])
        return [_echo(r, settings) for r in requests]


def _echo(request, settings):
    return Response(text=f"{request.query}@{settings.max_new_tokens}")


def test_batcher_groups_waiting_requests_by_settings_up_to_max_batch():
    model = GatedModel()

    async def scenario():
        batcher = DynamicBatcher(model, max_batch=4, wait_s=0)
        await batcher.start()
        first = asyncio.ensure_future(batcher.generate(Request("q0"), GenerationSettings(5)))
        while batcher.stats.batches == 0:  # until q0 is with the model
            await asyncio.sleep(0)
        later = [
            asyncio.ensure_future(batcher.generate(Request(f"q{i}"), GenerationSettings(5 + i % 2)))
            for i in range(1, 7)
        ]
        await asyncio.sleep(0)  # the six are queued behind the gated call
        model.gate.set()
        answers = [response.text for response in await asyncio.gather(first, *later)]
        await batcher.stop()
        return answers, batcher.stats

    answers, stats = asyncio.run(scenario())
    assert answers == ["q0@5", "q1@6", "q2@5", "q3@6", "q4@5", "q5@6", "q6@5"]
    # q1..q4 were taken as one batch of four, split by settings; q5 and q6 came next.
    assert model.calls == [["q0"], ["q1", "q3"], ["q2", "q4"], ["q5"], ["q6"]]
    assert stats.requests == 7 and stats.largest_batch == 2 and stats.batches == 5


class BrokenModel:
    """A plain (not Safe-VLM) model that fails every call, as a buggy backend would."""

    spec = "fake/broken"

    def generate(self, requests, settings):
        raise RuntimeError("CUDA out of memory")


def test_a_failing_model_gets_500_in_openai_shape_and_the_server_stays_up():
    with running_server(create_app(BrokenModel())) as root:
        reply = post(root, "/v1/chat/completions", json=chat_body(model="broken"))
        assert reply.status_code == 500
        assert reply.json()["error"] == {
            "message": "internal server error (RuntimeError)",
            "type": "server_error",
            "code": "internal_error",
        }
        guard = post(root, "/v1/guard", json={"images": [data_url(png(RED))]})
        assert_error(guard, 400, "no safety head")
        assert httpx.get(f"{root}/health").json()["safe_vlm"] is False


def test_a_port_in_use_is_one_clear_error():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        refused = pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}")
        with refused, running_server(create_app(BrokenModel()), port=port):
            pass


def test_serve_settings_are_checked():
    with pytest.raises(ServeError, match="max batch"):
        ServeSettings(max_batch=0)
    with pytest.raises(ServeError, match="batch wait"):
        ServeSettings(batch_wait_ms=-1)


def test_default_model_name(tmp_path):
    (tmp_path / "my-model").mkdir()
    assert default_model_name(f"hf/{tmp_path / 'my-model'}") == "my-model"
    assert default_model_name("hf/llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    assert default_model_name("openai/gpt-4o") == "gpt-4o"


def test_serve_command_refuses_a_bad_limit_before_loading_anything():
    result = CliRunner().invoke(cli_app, ["serve", "--model", "hf/nowhere", "--max-tokens", "0"])
    assert isinstance(result.exception, ServeError)
    assert "max_tokens must be at least 1" in str(result.exception)
