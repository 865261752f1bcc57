"""The openai, anthropic and google backends against loopback servers that speak their protocols."""

from __future__ import annotations

import base64
import io
import random
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from holisafe.core.records import GenerationSettings, ImageFile, ModelError, Request
from holisafe.core.sample import decode_image
from holisafe.models.anthropic_api import AnthropicModel
from holisafe.models.api import (
    ANTHROPIC_IMAGES,
    GEMINI_IMAGES,
    MB,
    OPENAI_IMAGES,
    ApiModel,
    ImageLimits,
    encode_image,
    image_to_send,
    media_type_of,
)
from holisafe.models.google_api import GoogleModel
from holisafe.models.openai_api import OpenAIModel
from tests.stub_servers import (
    OPENAI_WRONG_SHAPES,
    StubServer,
    anthropic_stub,
    closed_port_url,
    gemini_stub,
    openai_stub,
)

SETTINGS = GenerationSettings(max_new_tokens=37, temperature=0.25)
# Short enough that a stalled request fails fast, long enough for a loaded CI machine.
SHORT_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class Payload:
    """What a request carried, read back from the JSON body the stub received."""

    system: str | None
    query: str
    image: bytes | None
    max_tokens: int
    temperature: float | None
    media_type: str | None = None


def openai_payload(body: dict) -> Payload:
    messages = body["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    content = messages[-1]["content"]
    if isinstance(content, str):
        return Payload(system, content, None, body["max_tokens"], body["temperature"])
    (text,) = [part["text"] for part in content if part["type"] == "text"]
    (url,) = [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
    header, data = url.split(",", 1)
    media_type = header.removeprefix("data:").removesuffix(";base64")
    image = base64.b64decode(data)
    return Payload(system, text, image, body["max_tokens"], body["temperature"], media_type)


def anthropic_payload(body: dict) -> Payload:
    content = body["messages"][0]["content"]
    system = body.get("system")
    if isinstance(content, str):
        return Payload(system, content, None, body["max_tokens"], body.get("temperature"))
    (text,) = [block["text"] for block in content if block["type"] == "text"]
    (source,) = [block["source"] for block in content if block["type"] == "image"]
    assert source["type"] == "base64"
    image = base64.b64decode(source["data"])
    temperature = body.get("temperature")
    return Payload(system, text, image, body["max_tokens"], temperature, source["media_type"])


def gemini_payload(body: dict) -> Payload:
    parts = body["contents"][0]["parts"]
    instruction = body.get("systemInstruction")
    system = instruction["parts"][0]["text"] if instruction else None
    (text,) = [part["text"] for part in parts if "text" in part]
    inline = [part["inlineData"] for part in parts if "inlineData" in part]
    image = media_type = None
    if inline:
        # The SDK writes the field in snake case; the service takes either spelling.
        media_type = inline[0].get("mimeType", inline[0].get("mime_type"))
        # The SDK writes bytes in URL-safe base64; the service takes either alphabet.
        data = inline[0]["data"].replace("+", "-").replace("/", "_")
        image = base64.urlsafe_b64decode(data)
    config = body["generationConfig"]
    return Payload(
        system, text, image, config["maxOutputTokens"], config["temperature"], media_type
    )


@dataclass(frozen=True)
class Backend:
    name: str
    stub: Callable[..., AbstractContextManager[StubServer]]
    model_class: type[ApiModel]
    payload: Callable[[dict], Payload]
    key_variable: str

    def build(self, url: str, model: str = "stub-model", **options) -> ApiModel:
        options = {"api_key": "stub-key", "timeout_s": 5.0, "max_retries": 2} | options
        if self.model_class is GoogleModel:
            options.setdefault("retry_delay_s", 0.01)
        return self.model_class(model, base_url=url, **options)


BACKENDS = [
    Backend("openai", openai_stub, OpenAIModel, openai_payload, "OPENAI_API_KEY"),
    Backend("anthropic", anthropic_stub, AnthropicModel, anthropic_payload, "ANTHROPIC_API_KEY"),
    Backend("google", gemini_stub, GoogleModel, gemini_payload, "GOOGLE_API_KEY"),
]


@pytest.fixture(params=BACKENDS, ids=[backend.name for backend in BACKENDS])
def backend(request) -> Backend:
    return request.param


def picture() -> Image.Image:
    image = Image.new("RGB", (12, 8), (200, 30, 90))
    for x in range(12):
        image.putpixel((x, x * 8 // 12), (x * 20, 255 - x * 20, 7))
    return image


def ask(model: ApiModel, *queries: str, **request_fields) -> list:
    return model.generate([Request(query, **request_fields) for query in queries], SETTINGS)


def test_the_request_carries_query_image_system_prompt_and_settings(backend):
    image = picture()
    with backend.stub() as stub:
        (response,) = ask(backend.build(stub.url), "what is shown?", image=image, system="be safe")
    assert response.ok and response.text == "stub answer" and response.latency_s > 0
    sent = backend.payload(stub.requests[0].body)
    assert (sent.system, sent.query) == ("be safe", "what is shown?")
    # The Messages API refuses sampling parameters since version 2026-10-21.
    temperature = None if backend.name == "anthropic" else 0.25
    assert (sent.max_tokens, sent.temperature) == (37, temperature)
    assert sent.media_type == "image/png"  # an image without its file goes as PNG
    received = Image.open(io.BytesIO(sent.image))
    assert received.size == image.size and received.tobytes() == image.tobytes()


def test_a_text_only_request_has_no_image_and_no_system_prompt(backend):
    with backend.stub() as stub:
        (response,) = ask(backend.build(stub.url), "just text")
    assert response.ok
    sent = backend.payload(stub.requests[0].body)
    assert (sent.system, sent.query, sent.image) == (None, "just text", None)


def photo_file(name: str, image_format: str, size=(96, 64)) -> tuple[Image.Image, ImageFile]:
    """A noisy seeded picture saved in `image_format`, decoded back as a sample's image is."""
    rng = random.Random(7)
    image = Image.frombytes(
        "RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3))
    )
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    data = buffer.getvalue()
    return decode_image(data, name), ImageFile(name, data)


def test_a_jpeg_goes_as_its_own_file(backend):
    image, file = photo_file("photo.jpg", "JPEG")
    with backend.stub() as stub:
        model = backend.build(stub.url)
        (response,) = ask(model, "what is shown?", image=image, image_file=file)
    assert response.ok
    sent = backend.payload(stub.requests[0].body)
    assert (sent.media_type, sent.image) == ("image/jpeg", file.data)
    assert model.reencoded.as_dict() == {}


def test_a_format_the_provider_does_not_take_is_reencoded_and_counted(backend):
    image, file = photo_file("scan.bmp", "BMP")
    with backend.stub() as stub:
        model = backend.build(stub.url)
        ask(model, "a", "b", image=image, image_file=file)
    sent = backend.payload(stub.requests[0].body)
    assert sent.media_type == "image/png"
    assert Image.open(io.BytesIO(sent.image)).tobytes() == image.tobytes()
    assert model.reencoded.as_dict() == {"format BMP": {"count": 2, "examples": ["scan.bmp"]}}


def test_an_image_over_the_size_limit_is_reencoded_to_fit():
    image, file = photo_file("huge.png", "PNG", size=(400, 300))
    limits = ImageLimits(("image/png", "image/jpeg"), len(file.data))  # under its base64 size
    encoded, reason = image_to_send(Request("q", image, image_file=file), limits)
    assert reason == f"over {len(file.data) / MB:g} MB"
    assert encoded.media_type == "image/jpeg" and len(encoded.base64) <= limits.max_bytes


def test_the_providers_take_their_documented_formats():
    for limits in (OPENAI_IMAGES, ANTHROPIC_IMAGES, GEMINI_IMAGES):
        assert {"image/jpeg", "image/png", "image/webp"} <= set(limits.media_types)
    assert ANTHROPIC_IMAGES.max_bytes == 5 * MB
    for image_format, media_type in [("GIF", "image/gif"), ("WEBP", "image/webp")]:
        _, file = photo_file("x", image_format, size=(8, 8))
        assert media_type_of(file.data) == media_type


def test_an_image_without_rgb_mode_is_sent_as_png():
    palette = Image.new("P", (4, 4), 3)
    encoded = encode_image(palette)
    assert encoded.media_type == "image/png"
    assert Image.open(io.BytesIO(encoded.data)).mode == "RGB"
    assert encoded.data_url.startswith("data:image/png;base64,")


def test_responses_come_back_in_request_order(backend):
    queries = [f"q{i}" for i in range(6)]

    def answer_after_a_delay(body: dict) -> str:
        query = backend.payload(body).query
        # Early queries wait longest, so they finish last.
        threading.Event().wait(0.02 * (len(queries) - int(query[1:])))
        return f"answer to {query}"

    with backend.stub(reply=answer_after_a_delay) as stub:
        responses = ask(backend.build(stub.url, concurrency=6), *queries)
    assert [response.text for response in responses] == [f"answer to {q}" for q in queries]


def test_each_response_is_handed_back_as_it_arrives_while_others_are_in_flight(backend):
    first_done = threading.Event()

    def first_waits_for_the_second(body: dict) -> str:
        query = backend.payload(body).query
        if query == "first":
            first_done.wait(30)
        return f"answer to {query}"

    with backend.stub(reply=first_waits_for_the_second) as stub:
        model = backend.build(stub.url, concurrency=2, timeout_s=60)
        answers = model.answers([Request("first"), Request("second")], SETTINGS)
        index, response = next(answers)  # the first is held until the second is handed back
        assert (index, response.text) == (1, "answer to second")
        first_done.set()
        assert [(i, r.text) for i, r in answers] == [(0, "answer to first")]


def test_no_requests_send_nothing(backend):
    with backend.stub() as stub:
        assert backend.build(stub.url).generate([], SETTINGS) == []
    assert stub.requests == []


def test_concurrency_is_reached_and_never_exceeded(backend):
    concurrency = 3
    # Each reply waits until `concurrency` requests are being served together (with fewer in
    # flight the barrier breaks after its timeout and the request fails), and the added latency
    # leaves time for any request beyond the bound to arrive while they are held.
    together = threading.Barrier(concurrency, timeout=10)

    def answer_together(body: dict) -> str:
        together.wait()
        return "ok"

    with backend.stub(reply=answer_together, latency_s=0.05) as stub:
        model = backend.build(stub.url, concurrency=concurrency, timeout_s=20, max_retries=0)
        responses = ask(model, *[f"q{i}" for i in range(4 * concurrency)])
    assert all(response.text == "ok" for response in responses)
    assert stub.max_in_flight == concurrency


@pytest.mark.parametrize("fault", ["rate_limit", "server_error"])
def test_a_transient_error_is_retried_until_it_succeeds(backend, fault):
    with backend.stub() as stub:
        stub.fail(fault, times=2)
        (response,) = ask(backend.build(stub.url, max_retries=3), "q")
    assert response.ok
    assert len(stub.requests) == 3


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("rate_limit", "rate limited (429) after 2 retries"),
        ("server_error", "server error (500) after 2 retries: stub server error"),
    ],
)
def test_a_transient_error_that_outlasts_the_retries_fails_that_request(backend, fault, message):
    with backend.stub() as stub:
        stub.fail(fault)
        (response,) = ask(backend.build(stub.url, max_retries=2), "q")
    assert response.text is None and response.error == message
    assert len(stub.requests) == 3


def test_a_stalled_request_is_retried_after_the_timeout(backend):
    with backend.stub() as stub:
        stub.fail("stall", times=1)
        (response,) = ask(backend.build(stub.url, timeout_s=SHORT_TIMEOUT_S, max_retries=1), "q")
    assert response.ok
    assert len(stub.requests) == 2


def test_a_server_that_keeps_stalling_ends_in_a_timeout_error(backend):
    with backend.stub() as stub:
        stub.fail("stall")
        model = backend.build(stub.url, timeout_s=SHORT_TIMEOUT_S, max_retries=1)
        (response,) = ask(model, "q")
    assert response.error == f"timed out after {SHORT_TIMEOUT_S:g} s (1 retry)"


@pytest.mark.parametrize("fault", ["malformed", "html", "wrong_shape"])
def test_a_malformed_reply_fails_only_its_request(backend, fault):
    with backend.stub() as stub:
        stub.fail(fault, times=1)
        first, second = ask(backend.build(stub.url, concurrency=1), "q1", "q2")
    if fault == "wrong_shape" and backend.name == "google":
        # a Gemini reply without candidates is well formed: a reply without text, the empty answer
        assert first.ok and first.text == ""
    else:
        assert first.text is None and first.error.startswith("malformed reply")
    assert second.ok


@pytest.mark.parametrize("shape", list(OPENAI_WRONG_SHAPES))
def test_an_openai_reply_of_the_wrong_shape_fails_only_its_request(shape):
    """Valid JSON, wrong shape: the SDK does not validate it, so each field is checked."""
    with openai_stub() as stub:
        stub.fail(shape, times=1)
        first, second = ask(BACKENDS[0].build(stub.url, concurrency=1), "q1", "q2")
    assert first.text is None and first.error.startswith("malformed reply"), first
    assert second.ok


@pytest.mark.parametrize("reply", [None, "", "  \n"], ids=["none", "empty", "blank"])
def test_a_reply_without_text_is_the_empty_answer_not_a_failure(backend, reply):
    """Asked again, the model would answer the same: retrying would never end the run."""
    with backend.stub(reply=reply) as stub:
        (response,) = ask(backend.build(stub.url), "q")
    assert response.ok and response.text == ""


def test_a_rejected_key_stops_the_run(backend):
    with backend.stub() as stub:
        model = backend.build(stub.url, api_key="wrong-key", concurrency=2)
        with pytest.raises(ModelError, match=r"API key was rejected \((401|400)\)") as caught:
            ask(model, *[f"q{i}" for i in range(50)])
    assert backend.key_variable in str(caught.value) and stub.url in str(caught.value)
    assert len(stub.requests) < 50  # the requests not yet sent were dropped


def test_an_unknown_model_stops_the_run(backend):
    not_found = r"model 'no-such-model' not found \(404\)"
    with backend.stub() as stub, pytest.raises(ModelError, match=not_found):
        ask(backend.build(stub.url, model="no-such-model"), "q")


def test_an_unreachable_endpoint_stops_the_run(backend):
    model = backend.build(closed_port_url(), max_retries=1)
    with pytest.raises(ModelError, match=r"cannot reach .*: connection refused \(after 1 retry\)"):
        ask(model, "q")


def test_a_missing_key_is_reported_with_its_variable(backend, monkeypatch):
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ModelError, match=backend.key_variable):
        backend.model_class("some-model")


def test_the_key_is_read_from_the_environment(backend, monkeypatch):
    with backend.stub() as stub:
        monkeypatch.setenv(backend.key_variable, stub.api_key)
        (response,) = ask(backend.build(stub.url, api_key=None), "q")
    assert response.ok


def test_a_compatible_server_needs_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with openai_stub(api_key=None) as stub:
        (response,) = ask(OpenAIModel("stub-model", base_url=stub.url), "q")
    assert response.ok
    assert stub.requests[0].headers["authorization"] == "Bearer EMPTY"


@pytest.mark.parametrize(
    "options", [{"concurrency": 0}, {"timeout_s": 0}, {"max_retries": -1}, {"name": ""}]
)
def test_bad_options_are_refused(backend, options):
    options = {"name": "m", "api_key": "key"} | options
    with pytest.raises(ModelError, match=backend.name):
        backend.model_class(options.pop("name"), **options)


def test_the_spec_and_details_name_the_model_and_endpoint(backend):
    with backend.stub() as stub:
        model = backend.build(stub.url, concurrency=4)
    assert model.spec == f"{backend.name}/stub-model"
    assert model.details["endpoint"] == stub.url and model.details["concurrency"] == 4


@settings(max_examples=60, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=64),
        st.sampled_from(
            [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF0000WEBP"]
        ).flatmap(lambda head: st.binary(max_size=64).map(lambda tail: head + tail)),
    ),
    max_bytes=st.integers(min_value=1, max_value=200),
)
def test_a_file_goes_as_it_is_exactly_when_the_provider_takes_it(data, max_bytes):
    image = Image.new("RGB", (3, 2), (5, 6, 7))
    limits = ImageLimits(("image/jpeg", "image/png", "image/webp"), max_bytes)
    encoded, reason = image_to_send(Request("q", image, image_file=ImageFile("x", data)), limits)
    fits = media_type_of(data) in limits.media_types and -(-len(data) // 3) * 4 <= max_bytes
    assert (reason is None) == fits
    if fits:
        assert (encoded.data, encoded.media_type) == (data, media_type_of(data))
    else:
        assert Image.open(io.BytesIO(encoded.data)).size == (3, 2)
