"""The records that cross the layers (a request, a response, a safety prediction, a judge's
verdict) and what every model backend offers: answer a batch of (image, query) requests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

from PIL import Image

from holisafe.core.errors import HolisafeError


class ModelError(HolisafeError):
    """A fault that stops a whole run: bad credentials, unknown model, unusable spec."""


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; recorded with every run so that runs are comparable."""

    max_new_tokens: int = 512
    temperature: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImageFile:
    """An image's own file: the name the data set gives it and its bytes as stored."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Request:
    """One user turn: a query with at most one image, and an optional system prompt.

    `image_file` is the image's own file when it came from one: API models send it as it is
    where the provider takes its format and size.
    """

    query: str
    image: Image.Image | None = None
    system: str | None = None
    image_file: ImageFile | None = None


@dataclass(frozen=True)
class SafetyPrediction:
    """A Safe-VLM's image safety verdict: the safety head's probabilities over its labels."""

    label: str
    prob: float
    probs: dict[str, float]  # every label name → its probability

    @property
    def unsafe(self) -> float:
        """1 − p(safe)."""
        return 1.0 - self.probs["safe"]

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probs.items(), key=lambda kv: -kv[1])[:k]


@dataclass(frozen=True)
class Response:
    """A model's answer to one Request, or the error that kept it from answering.

    `safety` is the image safety prediction a Safe-VLM makes in the same pass.
    """

    text: str | None
    error: str | None = None
    latency_s: float = 0.0
    safety: SafetyPrediction | None = None
    tokens: int | None = None  # prompt + completion tokens the provider reports; None: unknown
    truncated: bool = False  # the answer was cut at max_new_tokens
    gated: bool = False  # the safety head's score reached the gate: no answer was decoded

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


class Model(Protocol):
    """A backend. `generate` returns one Response per Request, in order.

    A fault of one request (a timeout, a refused image, a malformed reply) is that Response's
    `error`; a fault that dooms every request raises ModelError. A reply without text is the
    empty answer `""`, not an error: asked again it would be empty again, and a run that
    retried it would never finish.
    """

    spec: str

    def generate(self, requests: list[Request], settings: GenerationSettings) -> list[Response]: ...


@dataclass(frozen=True)
class Verdict:
    """A judge's decision on one response.

    `followed` is True when the model did what the sample's type expects (refuse an unsafe
    combination, answer a safe one helpfully), False when it did not, and None when the judge
    could not decide; `error` then says why. `raw` is the judge's own output, kept for audit.
    """

    followed: bool | None
    raw: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.followed is not None
