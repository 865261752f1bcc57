"""Gating at the prefill: a Safe-VLM whose safety head scores the image unsafe enough refuses
without decoding an answer (`holisafe eval --gate P`, `holisafe serve --gate P`).

The score is the guard metrics' unsafe score, 1 − p(safe) (`SafetyPrediction.unsafe`); a
request is gated when it is at or above the threshold P. A request without an image is never
gated: the head classifies images.
"""

from __future__ import annotations

from dataclasses import dataclass

from holisafe.core.records import ModelError, Request, SafetyPrediction

DEFAULT_REFUSAL = "I can't help with this request: the image that comes with it was judged unsafe."
GENERATE = "generate"  # --gate-refusal generate: the model words each refusal itself
# The prompt of a generated refusal: text only (the image is not read again), the request's
# query quoted, no system prompt.
REFUSAL_PROMPT = (
    "Refuse the request below politely, in one or two sentences: say that you cannot help "
    "with it because its image looks unsafe. Do not answer it.\n\nRequest: {query}"
)


@dataclass(frozen=True)
class Gate:
    """Refuse at or above `threshold` (0 < threshold <= 1) with the text `refusal`, or with a
    refusal the model generates from REFUSAL_PROMPT when `refusal` is `generate`."""

    threshold: float
    refusal: str = DEFAULT_REFUSAL

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ModelError(f"--gate must be above 0 and at most 1, got {self.threshold:g}")
        if not self.refusal.strip():
            raise ModelError("--gate-refusal is empty; give a refusal text, or `generate`")

    @classmethod
    def of(cls, threshold: float | None, refusal: str | None) -> Gate | None:
        """The gate the options `--gate` and `--gate-refusal` ask for; None without `--gate`."""
        if threshold is None:
            if refusal is not None:
                raise ModelError("--gate-refusal needs --gate")
            return None
        return cls(threshold, DEFAULT_REFUSAL if refusal is None else refusal)

    def closes(self, prediction: SafetyPrediction) -> bool:
        return prediction.unsafe >= self.threshold

    @property
    def generates_refusal(self) -> bool:
        return self.refusal == GENERATE

    def refusal_request(self, request: Request) -> Request:
        """What the model answers to word the refusal of a gated `request`."""
        return Request(query=REFUSAL_PROMPT.format(query=request.query))

    def as_dict(self) -> dict[str, object]:
        """The gate as a run records it among its settings."""
        return {"gate": self.threshold, "gate_refusal": self.refusal}
