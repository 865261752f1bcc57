"""What the server accepts and holds at once, and reading bodies and images within those limits.

Sizes are checked before any work that grows with them: the declared Content-Length before the
body is read, the base64 length before it is decoded, the pixel count in the image header
before the pixels are, and the aspect ratio with it (so a decompression bomb, or an image that
the processor's resize by its short side would blow up, is refused without being expanded).

Slow clients cannot crowd out the others: a body has a deadline scaled to its declared length
(`body_timeout_s` plus a second per `min_body_rate` bytes), and a body still arriving after
`QUICK_BODY_S` is a slow body, of which one client address may send at most
`max_slow_bodies_per_client` at once and all clients together `max_slow_bodies` (more get 429 or
503 at once). Only requests whose body has arrived are admitted to be answered, so the places
that answering needs are never held by uploads.

The memory model: at most `max_slow_bodies` slow bodies are read at once, each at most
`max_request_bytes`; at most `max_pending` requests with their bodies read are admitted at once
(one more gets 503 with Retry-After); each holds at most its body and that body parsed (about
2 x `max_request_bytes`); and the images of all admitted requests together hold at most
`max_decoded_pixels` decoded pixels (a request waits, admitted, until its pixels fit).
`ServeLimits.memory_bound` adds these up.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, fields

import anyio
from PIL import Image
from starlette.requests import Request as HttpRequest

from holisafe.core.safe_json import JSONLimitError, parse_json
from holisafe.core.sample import ImageError, check_image_size, decode_image
from holisafe.serve.errors import ApiError, ServeError

MiB = 2**20
DATA_URL = re.compile(r"data:(?P<media>[\w.+-]+/[\w.+-]+)?(;[^,;]*)*;base64,(?P<data>.*)", re.S)
RETRY_AFTER_S = 1
# A body not arrived this long after its head is slow: it needs one of the slow bodies' places.
# On loopback or a LAN a small body arrives with its head, well within this.
QUICK_BODY_S = 0.1
# An admitted request holds its body while reading it and the body parsed while it is answered.
BODY_COPIES = 2
# A decoded pixel is held until the answer: as RGB (3 bytes), with Pillow's decoding copy while
# it is decoded, and with the image processor's float copy while the model reads it. Measured
# with LLaVA's CLIP image processor: about 6 bytes a pixel decoded and 8.5 more in the model's
# hands (benchmarks/bench_server_memory.py); other processors may need more.
BYTES_PER_DECODED_PIXEL = 16


@dataclass(frozen=True)
class ServeLimits:
    """Per-request limits (a request over one gets a 4xx answer that names it), what the server
    holds at once, and how long it waits for a client."""

    max_request_bytes: int = 16 * MiB
    max_image_bytes: int = 8 * MiB  # one image, decoded from base64
    max_image_pixels: int = 16_000_000
    max_tokens: int = 1024  # the most max_tokens a request may ask for
    max_text_bytes: int = 8_000  # system prompt and question together, in UTF-8
    max_guard_images: int = 16  # images in one /v1/guard request
    max_pending: int = 64  # API requests admitted at once, bodies read: decoded, queued, answered
    max_slow_bodies: int = 32  # bodies still arriving after QUICK_BODY_S, all clients together
    max_slow_bodies_per_client: int = 4  # slow bodies from one client address at once
    max_decoded_pixels: int = 32_000_000  # decoded image pixels held by all requests together
    max_connections: int = 512  # open connections; a request on one more gets 503
    header_timeout_s: float = 10.0  # to send a request head, from connecting or the last answer
    body_timeout_s: float = 10.0  # to send a request body, from its head, plus the time below
    min_body_rate: int = 64 * 1024  # bytes a second: a body has a second more per this many bytes

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_s") and not value > 0:
                raise ServeError(f"{field.name} must be over 0 seconds, got {value:g}")
            if not field.name.endswith("_s") and value < 1:
                raise ServeError(f"{field.name} must be at least 1, got {value}")
        if self.max_decoded_pixels < self.max_image_pixels:
            raise ServeError(
                f"max_decoded_pixels ({self.max_decoded_pixels:,}) must hold at least one image "
                f"of max_image_pixels ({self.max_image_pixels:,})"
            )

    @property
    def memory_bound(self) -> int:
        """The most bytes that admitted requests and their images hold, beyond the model's own
        memory: their bodies, and their images until answered (the model's work on them
        included)."""
        admitted = self.max_pending * BODY_COPIES + self.max_slow_bodies
        bodies = admitted * self.max_request_bytes
        return bodies + self.max_decoded_pixels * BYTES_PER_DECODED_PIXEL

    def body_deadline_s(self, declared_bytes: int) -> float:
        """Seconds a body of `declared_bytes` has to arrive, from its head."""
        return self.body_timeout_s + declared_bytes / self.min_body_rate

    def summary(self) -> str:
        """The limits in one line, as the server prints them at start-up."""
        return (
            f"at most {self.max_pending} requests in progress (more get 503), "
            f"{self.max_decoded_pixels:,} decoded pixels held, {self.max_connections} "
            f"connections; bodies up to {self.max_request_bytes:,} bytes, images up to "
            f"{self.max_image_bytes:,} bytes and {self.max_image_pixels:,} pixels, "
            f"{self.max_guard_images} per guard call, text up to {self.max_text_bytes:,} bytes, "
            f"max_tokens up to {self.max_tokens}; a client has {self.header_timeout_s:g} s to "
            f"send a request head and {self.body_timeout_s:g} s plus 1 s per "
            f"{self.min_body_rate:,} bytes for its body, with at most "
            f"{self.max_slow_bodies_per_client} slow bodies at once ({self.max_slow_bodies} from "
            f"all clients); memory held for "
            f"requests at most {self.memory_bound / 2**30:.1f} GiB beyond the model"
        )


class Capacity:
    """What the server holds at run time: slow bodies, requests admitted and decoded pixels.

    Counted on the event loop's thread only, so plain counters suffice.
    """

    def __init__(self, limits: ServeLimits):
        self.limits = limits
        self.pending = 0
        self.slow_bodies: dict[str, int] = {}  # by client address
        self.decoded_pixels = 0
        self.busy_refusals = 0
        self._pixels_freed = asyncio.Condition()

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of the `max_pending` places for a request; 503 when all are taken."""
        if self.pending >= self.limits.max_pending:
            self.busy_refusals += 1
            raise ApiError(
                503,
                f"the server is busy: {self.pending} requests are in progress, its limit; "
                f"retry in {RETRY_AFTER_S} s",
                "server_busy",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    @contextmanager
    def slow_body(self, client: str) -> Iterator[None]:
        """Hold one of the slow bodies' places for `client`; 429 when it holds
        `max_slow_bodies_per_client`, 503 when all clients hold `max_slow_bodies`."""
        mine = self.slow_bodies.get(client, 0)
        if mine >= self.limits.max_slow_bodies_per_client:
            raise ApiError(
                429,
                f"{client} is already sending {mine} request bodies slowly, the limit per client "
                "address; finish those first",
                "too_many_slow_bodies",
                {"Connection": "close"},
            )
        if sum(self.slow_bodies.values()) >= self.limits.max_slow_bodies:
            raise ApiError(
                503,
                f"the server is busy: {self.limits.max_slow_bodies} request bodies are arriving "
                f"slowly, its limit; retry in {RETRY_AFTER_S} s",
                "server_busy",
                {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
            )
        self.slow_bodies[client] = mine + 1
        try:
            yield
        finally:
            self.slow_bodies[client] -= 1
            if not self.slow_bodies[client]:
                del self.slow_bodies[client]

    @asynccontextmanager
    async def hold_pixels(self, count: int):
        """Hold `count` decoded pixels, waiting while other requests hold too many; 413 when
        `count` alone is over the budget."""
        budget = self.limits.max_decoded_pixels
        if count > budget:
            raise too_large(
                f"the images of this request have {count:,} pixels, over the limit of "
                f"{budget:,} held at once"
            )
        async with self._pixels_freed:
            await self._pixels_freed.wait_for(lambda: self.decoded_pixels + count <= budget)
            self.decoded_pixels += count
        try:
            yield
        finally:
            async with self._pixels_freed:
                self.decoded_pixels -= count
                self._pixels_freed.notify_all()


def too_large(message: str) -> ApiError:
    return ApiError(413, message, "request_too_large")


async def read_json(request: HttpRequest, capacity: Capacity) -> object:
    """The request's JSON body: 413 past `max_request_bytes` (declared or sent), 429 or 503 when
    it arrives slowly and its client or all clients have too many such bodies, 408 when it takes
    longer than its deadline, 400 if it is not JSON or nests too deep."""
    limits = capacity.limits
    max_bytes = limits.max_request_bytes
    declared = request.headers.get("content-length", "")
    expected = int(declared) if declared.isdigit() else max_bytes
    if expected > max_bytes:
        raise too_large(f"request body of {expected:,} bytes is over the limit of {max_bytes:,}")
    deadline_s = limits.body_deadline_s(expected)
    body = bytearray()
    try:
        with anyio.fail_after(deadline_s):
            with anyio.move_on_after(QUICK_BODY_S):
                await _read_into(body, request, max_bytes)
                return _parsed(body, max_bytes)
            client = request.client.host if request.client else "unknown"
            with capacity.slow_body(client):
                await _read_into(body, request, max_bytes)
    except TimeoutError:
        raise ApiError(
            408,
            f"the request body did not arrive within {deadline_s:.1f} s "
            f"({limits.body_timeout_s:g} s plus 1 s per {limits.min_body_rate:,} of its "
            f"{expected:,} bytes)",
            "request_timeout",
            {"Connection": "close"},
        ) from None
    return _parsed(body, max_bytes)


async def _read_into(body: bytearray, request: HttpRequest, max_bytes: int) -> None:
    """Add the rest of the request's body to `body`. Reads ASGI messages rather than
    `request.stream()`, whose generator a cancelled wait would end: cancelled between messages,
    this loses nothing and can be called again."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            # no one is left to answer; this ends the request without logging a traceback
            raise ApiError(400, "the client left before sending its whole body", "disconnected")
        body += message.get("body", b"")
        if len(body) > max_bytes:
            raise too_large(f"request body is over the limit of {max_bytes:,} bytes")
        if not message.get("more_body", False):
            return


def _parsed(body: bytearray, max_bytes: int) -> object:
    try:
        return parse_json(bytes(body), max_chars=max_bytes)
    except JSONLimitError as exc:
        raise ApiError(400, f"request body refused: {exc}", "invalid_json") from None
    except ValueError as exc:  # bad UTF-8, bad JSON
        raise ApiError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None


@dataclass(frozen=True)
class EncodedImage:
    """An image's file bytes and the pixels its header declares (0 when it has no readable
    header: decoding then says what is wrong)."""

    data: bytes
    pixels: int
    where: str


def read_image_url(url: str, where: str, limits: ServeLimits) -> EncodedImage:
    """The image file in a base64 data URL (or bare base64), checked against the limits."""
    match = DATA_URL.fullmatch(url)
    if match is None and url.startswith(("http://", "https://", "data:")):
        raise ApiError(
            400,
            f"image {where}: only base64 data URLs (data:image/png;base64,...) are accepted; "
            "this server fetches nothing",
            "invalid_image_url",
        )
    text = match["data"] if match else url
    if len(text) * 3 // 4 > limits.max_image_bytes:
        raise too_large(f"image {where} is over the limit of {limits.max_image_bytes:,} bytes")
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"image {where}: broken base64 data", "invalid_image") from None
    return EncodedImage(data, _declared_pixels(data, where, limits.max_image_pixels), where)


def decode_encoded(image: EncodedImage, limits: ServeLimits) -> Image.Image:
    """The image in RGB; 400 naming what is wrong with it."""
    try:
        return decode_image(image.data, image.where, limits.max_image_pixels)
    except ImageError as exc:
        raise ApiError(400, str(exc), "invalid_image") from None


def _declared_pixels(data: bytes, where: str, max_pixels: int) -> int:
    """The pixel count in the image header; 413 over `max_pixels` or too long and narrow."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # PIL's own ceiling, far past ours
        raise too_large(
            f"image {where} has over {max_pixels:,} pixels (decompression bomb)"
        ) from None
    except (Image.UnidentifiedImageError, OSError):
        return 0
    try:
        check_image_size(where, width, height, max_pixels)
    except ImageError as exc:
        raise too_large(str(exc)) from None
    return width * height
