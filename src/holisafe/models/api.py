"""What the API backends (openai, anthropic, google) share.

Each backend sends one HTTP request per Request through its provider's official SDK, up to
`concurrency` at once on a thread pool, and leaves retries with backoff (rate limits, 5xx,
timeouts, refused connections) to the SDK. What is left after the retries is sorted here:

- a fault of one request (rate limited, server error, timeout, a rejected or malformed reply)
  becomes that Response's `error`, and a rerun asks again;
- a reply without text (none, empty or blank) is the model's answer, the empty string: asking
  again would get the same, so retrying it would keep the run from ever finishing;
- a fault that dooms every request (a rejected key, an unknown model, an endpoint that cannot
  be reached) raises ModelError from `answers` (and so from `generate`).
"""

from __future__ import annotations

import base64
import copy
import io
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from types import ModuleType
from typing import ClassVar

from PIL import Image

from holisafe.core.records import GenerationSettings, ModelBase, ModelError, Request, Response
from holisafe.core.text import replace_surrogates
from holisafe.models.endpoints import Endpoint, EndpointFault, EndpointPool, endpoints_of

log = logging.getLogger(__name__)

# The stop reasons of OpenAI, Anthropic and Gemini for an answer cut at the token limit.
LENGTH_STOP_REASONS = ("length", "max_tokens", "MAX_TOKENS")
MB = 1024 * 1024
# The leading bytes of the image formats the providers take, and their media types.
SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass(frozen=True)
class ImageLimits:
    """What a provider takes as an image: its media types, and the most bytes of one image
    (counted as sent, in base64)."""

    media_types: tuple[str, ...]
    max_bytes: int


# From the providers' documentation. OpenAI: PNG, JPEG, WEBP, non-animated GIF, 20 MB an image.
# Anthropic: JPEG, PNG, GIF, WEBP, 5 MB an image. Gemini: PNG, JPEG, WEBP (HEIC, HEIF), inline
# data up to 20 MB for the whole request, of which the image may take 19 here.
OPENAI_IMAGES = ImageLimits(("image/jpeg", "image/png", "image/gif", "image/webp"), 20 * MB)
ANTHROPIC_IMAGES = ImageLimits(("image/jpeg", "image/png", "image/gif", "image/webp"), 5 * MB)
GEMINI_IMAGES = ImageLimits(("image/jpeg", "image/png", "image/webp"), 19 * MB)


class RequestFailed(Exception):
    """A fault of one request: it becomes that Response's error and the run goes on.
    `endpoint_fault`: the endpoint's fault (a timeout, a server error), which another
    endpoint may not have."""

    def __init__(self, message: str, *, endpoint_fault: bool = False):
        super().__init__(message)
        self.endpoint_fault = endpoint_fault


class EndpointUnreachable(ModelError):
    """The endpoint cannot be reached after the SDK's retries; fatal for a lone endpoint."""


@dataclass(frozen=True)
class Reply:
    """What a provider answered: its text (None when it gave none), the tokens (prompt +
    completion) it reports having used, and why it stopped."""

    text: str | None
    tokens: int | None = None
    stop_reason: str | None = None


@dataclass(frozen=True)
class EncodedImage:
    media_type: str
    data: bytes

    @property
    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    @property
    def data_url(self) -> str:
        return f"data:{self.media_type};base64,{self.base64}"


def encode_image(image: Image.Image) -> EncodedImage:
    """The image as PNG: lossless, and keeps an alpha channel (the pictograms have one)."""
    if image.mode not in ("RGB", "RGBA", "L"):
        transparent = "A" in image.mode or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return EncodedImage("image/png", buffer.getvalue())


def image_to_send(request: Request, limits: ImageLimits) -> tuple[EncodedImage, str | None]:
    """The request's image as a provider with `limits` takes it, and why it was re-encoded
    (None: it goes as its own file's bytes).

    Its own file goes as it is where the provider takes the format and size. Otherwise it is
    re-encoded: as PNG, or as JPEG (quality 90) where the PNG is over the size limit.
    """
    file = request.image_file
    if file is None:
        reason = "no file"
    elif (media_type := media_type_of(file.data)) not in limits.media_types:
        reason = f"format {media_type or _format_name(file.data)}"
    elif _sent_size(file.data) > limits.max_bytes:
        reason = f"over {limits.max_bytes / MB:g} MB"
    else:
        return EncodedImage(media_type, file.data), None
    png = encode_image(request.image)
    if _sent_size(png.data) <= limits.max_bytes:
        return png, reason
    buffer = io.BytesIO()
    request.image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return EncodedImage("image/jpeg", buffer.getvalue()), reason


def media_type_of(data: bytes) -> str | None:
    """The media type of a JPEG, PNG, GIF or WEBP file's bytes; None for another format."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((media for signature, media in SIGNATURES if data.startswith(signature)), None)


def _format_name(data: bytes) -> str:
    try:
        return Image.open(io.BytesIO(data)).format or "unknown"
    except (OSError, Image.UnidentifiedImageError):
        return "unknown"


def _sent_size(data: bytes) -> int:
    """The bytes of `data` in base64."""
    return -(-len(data) // 3) * 4


class Reencodings:
    """The images an API model re-encoded: a count per reason and a few example image names.
    Safe to add to from the request threads."""

    EXAMPLES = 3

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._examples: dict[str, list[str]] = {}

    def add(self, reason: str, name: str | None) -> None:
        with self._lock:
            self._counts[reason] += 1
            examples = self._examples.setdefault(reason, [])
            if name is not None and len(examples) < self.EXAMPLES and name not in examples:
                examples.append(name)

    def as_dict(self) -> dict[str, dict]:
        """{reason: {"count": n, "examples": [image names]}}, reasons in sorted order."""
        with self._lock:
            return {
                reason: {"count": count, "examples": list(self._examples[reason])}
                for reason, count in sorted(self._counts.items())
            }


def api_key_from(explicit: str | None, variables: tuple[str, ...]) -> str | None:
    """The explicit key, else the first of the environment variables that is set."""
    if explicit:
        return explicit
    return next((os.environ[name] for name in variables if os.environ.get(name)), None)


def answer_each(
    requests: list[Request], answer: Callable[[Request], Response], concurrency: int
) -> Iterator[tuple[int, Response]]:
    """`answer` applied to every request, `concurrency` at a time; each result with its
    request's index, as soon as it is made.

    When one call raises (a fatal ModelError), or the caller stops early, the requests not yet
    started are dropped, those under way finish, and the error propagates.
    """
    pool = ThreadPoolExecutor(max_workers=concurrency)
    futures = {pool.submit(answer, request): index for index, request in enumerate(requests)}
    try:
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def server_detail(body: object) -> str:
    """The message in a provider's JSON error body, or the body itself."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return str(body)


def malformed(reply: object, missing: str) -> RequestFailed:
    """The error for a reply without `missing`; a body that is not JSON reaches us as a str."""
    if isinstance(reply, str):
        return RequestFailed(f"malformed reply, not JSON: {reply[:80]!r}")
    return RequestFailed(f"malformed reply: no {missing}")


def _retries(count: int) -> str:
    return "1 retry" if count == 1 else f"{count} retries"


def root_cause(error: BaseException) -> str:
    """The innermost cause of a transport error, e.g. 'connection refused'."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


class ApiModel(ModelBase):
    """Base of the API backends: validation, concurrency, timing and failure messages.

    Requests go through an EndpointPool (`holisafe.models.endpoints`) over the endpoints that
    `base_url` names, each reached by a copy of the model connected to it; the model itself
    is connected to the first (for the batch APIs).

    A subclass sets `provider`, `key_variables` and `image_limits`, implements `_connect`
    (create its SDK client, honouring `timeout_s` and `max_retries`, and set `endpoint` to the
    URL it talks to) and `_send`, which returns a Reply or raises RequestFailed / ModelError.
    """

    provider: ClassVar[str]
    key_variables: ClassVar[tuple[str, ...]]
    image_limits: ClassVar[ImageLimits]

    def __init__(
        self,
        name: str,
        *,
        base_url: str | Sequence[str | Endpoint] | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 5,
    ):
        if not name:
            raise ModelError(f"{self.provider}: no model name given; use {self.provider}/<model>")
        if concurrency < 1:
            raise ModelError(f"{self.provider}: concurrency must be at least 1, got {concurrency}")
        if timeout_s <= 0:
            raise ModelError(f"{self.provider}: timeout must be positive, got {timeout_s} s")
        if max_retries < 0:
            raise ModelError(f"{self.provider}: max retries must be 0 or more, got {max_retries}")
        self.name = name
        self.spec = f"{self.provider}/{name}"
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.endpoint = ""
        self.reencoded = Reencodings()  # shared with the copies
        key = api_key_from(api_key, self.key_variables)
        members = []
        for endpoint in endpoints_of(base_url):
            sender = copy.copy(self) if members else self
            sender._connect(key, endpoint.url)
            members.append((sender.endpoint, sender, endpoint.concurrency or concurrency))
        self.pool = EndpointPool(members)
        self.concurrency = self.pool.concurrency

    def _connect(self, key: str | None, base_url: str | None) -> None:
        raise NotImplementedError

    @property
    def details(self) -> dict[str, object]:
        """How the model is reached, to record beside the generation settings."""
        return {
            "endpoint": ", ".join(self.pool.urls),
            "concurrency": self.concurrency,
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
        }

    def answers(
        self, requests: list[Request], settings: GenerationSettings
    ) -> Iterator[tuple[int, Response]]:
        """Each request's Response as its reply arrives, up to `concurrency` requests in flight."""
        return answer_each(
            requests, lambda request: self._respond(request, settings), self.concurrency
        )

    def _send(self, request: Request, settings: GenerationSettings) -> Reply:
        raise NotImplementedError

    def image(self, request: Request) -> EncodedImage:
        """The request's image as this provider takes it (see `image_to_send`); a re-encoding
        is counted in `reencoded`."""
        encoded, reason = image_to_send(request, self.image_limits)
        if reason is not None:
            self.reencoded.add(reason, request.image_file and request.image_file.name)
        return encoded

    def _respond(self, request: Request, settings: GenerationSettings) -> Response:
        start = time.perf_counter()
        try:
            reply = self.pool.send(lambda sender: sender._reply(request, settings))
        except (RequestFailed, EndpointFault) as failure:
            return Response(None, error=str(failure), latency_s=time.perf_counter() - start)
        except RecursionError:  # the SDK's JSON parser, on a reply nested without end
            error = "malformed reply: JSON nested too deeply"
            return Response(None, error=error, latency_s=time.perf_counter() - start)
        latency_s = time.perf_counter() - start
        reply = replace(reply, tokens=self._sane_tokens(reply.tokens))
        if reply.text is not None and not isinstance(reply.text, str):
            error = f"malformed reply: its text is {type(reply.text).__name__}, not a string"
            return Response(None, error=error, latency_s=latency_s)
        if reply.text is None or not reply.text.strip():
            return Response("", latency_s=latency_s, tokens=reply.tokens)
        # a lone surrogate (a JSON "\ud800" escape) could be neither stored nor sent on to a judge
        text = replace_surrogates(reply.text)
        truncated = reply.stop_reason in LENGTH_STOP_REASONS
        return Response(text, latency_s=latency_s, tokens=reply.tokens, truncated=truncated)

    def _reply(self, request: Request, settings: GenerationSettings) -> Reply:
        """This endpoint's reply; a fault another endpoint may not have is an EndpointFault."""
        try:
            return self._send(request, settings)
        except EndpointUnreachable as error:
            raise EndpointFault(error, down=True) from error
        except RequestFailed as failure:
            if failure.endpoint_fault:
                raise EndpointFault(failure, down=False) from failure
            raise

    def _sane_tokens(self, tokens: object) -> int | None:
        """The token count a reply reports, when it is a count; anything else (a string, a
        negative number) is ignored with a note, so that budgets count only sane values."""
        if tokens is None or (type(tokens) is int and tokens >= 0):
            return tokens
        log.warning("%s reported %r tokens used; ignored, not counted", self.spec, tokens)
        return None

    def missing_key(self) -> ModelError:
        names = " or ".join(self.key_variables)
        return ModelError(f"{self.provider}: no API key; set {names} or pass api_key")

    def status_failure(self, status: int, detail: str) -> Exception:
        """The error for an HTTP error status that survived the SDK's retries."""
        detail = detail.rstrip(". ")
        if status in (401, 403):
            return self.key_rejected(status, detail)
        if status == 404:
            return ModelError(
                f"{self.provider}: model {self.name!r} not found (404) at {self.endpoint}: "
                f"{detail}; check the model name and the base URL"
            )
        if status == 429:
            return RequestFailed(f"rate limited (429) after {_retries(self.max_retries)}")
        if status >= 500:
            retries = _retries(self.max_retries)
            return RequestFailed(
                f"server error ({status}) after {retries}: {detail}", endpoint_fault=True
            )
        return RequestFailed(f"request rejected ({status}): {detail}")

    def key_rejected(self, status: int, detail: str) -> ModelError:
        detail = detail.rstrip(". ")
        keys = " or ".join(self.key_variables)
        return ModelError(
            f"{self.provider}: the API key was rejected ({status}) by {self.endpoint}: {detail}; "
            f"set {keys} to a key that may use {self.name}"
        )

    def timed_out(self) -> RequestFailed:
        message = f"timed out after {self.timeout_s:g} s ({_retries(self.max_retries)})"
        return RequestFailed(message, endpoint_fault=True)

    def unreachable(self, error: BaseException) -> EndpointUnreachable:
        # Fatal: the SDK has already retried with backoff, so an endpoint that still cannot be
        # reached would fail every remaining request the same way. Stopping says so once, and
        # a rerun resumes from the store when the server is back.
        return EndpointUnreachable(
            f"{self.provider}: cannot reach {self.endpoint}: {root_cause(error)} "
            f"(after {_retries(self.max_retries)})"
        )

    def provider_errors(self) -> AbstractContextManager[None]:
        """A context that sorts the SDK's exceptions into ModelError (fatal) and
        RequestFailed (this request's fault)."""
        raise NotImplementedError

    @contextmanager
    def stainless_errors(self, sdk: ModuleType) -> Iterator[None]:
        """Sorts the exceptions of the openai and anthropic SDKs, which share one design."""
        try:
            yield
        except sdk.APIStatusError as error:
            raise self.status_failure(error.status_code, server_detail(error.body)) from error
        except sdk.APITimeoutError as error:
            raise self.timed_out() from error
        except sdk.APIConnectionError as error:
            raise self.unreachable(error) from error
        except ValueError as error:  # a body declared JSON that does not parse
            raise RequestFailed(f"malformed reply, bad JSON: {error}") from error
