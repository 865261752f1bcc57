"""The image guard: a Safe-VLM's safety head classifying image files, and its scores on a
benchmark's labelled images (`holisafe.scoring.guard_metrics`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from holisafe.core.errors import HolisafeError
from holisafe.core.records import SafetyPrediction
from holisafe.core.sample import ImageError, ImageRef
from holisafe.data import first, load_samples
from holisafe.models import ModelOptions, load_model
from holisafe.scoring.guard_metrics import GuardMetrics, guard_metrics

CHUNK = 64


class GuardError(HolisafeError):
    """A guard that cannot run as asked (no safety head, no images)."""


@dataclass(frozen=True)
class GuardResult:
    """The verdict on one image file, or why there is none."""

    image: Path
    prediction: SafetyPrediction | None
    error: str | None = None


def load_guard(spec: str, options: ModelOptions = ModelOptions()):
    """A loaded Safe-VLM ready to classify images."""
    model = load_model(spec, options)
    if not getattr(model, "is_safe_vlm", False):
        raise GuardError(
            f"{spec} has no safety head: the guard needs a Safe-VLM (an hf/ folder trained or "
            "converted with the visual guard module, or a released HoliSafe checkpoint)"
        )
    return model


def guard_files(model, files: Sequence[Path]) -> list[GuardResult]:
    """Classify image files; an unreadable file gets an error result, the rest go on."""
    results: dict[Path, GuardResult] = {}
    readable = {}
    for path in files:
        try:
            readable[path] = ImageRef(name=str(path), path=path).load()  # a named pipe too
        except ImageError as exc:
            results[path] = GuardResult(path, None, str(exc))
    predictions = model.classify(list(readable.values())) if readable else []
    for path, prediction in zip(readable, predictions, strict=True):
        results[path] = GuardResult(path, prediction)
    return [results[path] for path in files]


def evaluate_guard(
    model, bench: str | Path, *, limit: int | None = None, skip_invalid: bool = False
) -> GuardMetrics:
    """Score a Safe-VLM's head on a benchmark's distinct images against `image_safety_label`."""
    chosen = labelled_images(bench, limit=limit, skip_invalid=skip_invalid)
    predicted: list[SafetyPrediction] = []
    for start in range(0, len(chosen), CHUNK):  # decoded images are held one chunk at a time
        images = [image.load() for image, _ in chosen[start : start + CHUNK]]
        predicted += model.classify(images)
    return guard_metrics([label for _, label in chosen], predicted)


def labelled_images(
    bench: str | Path, *, limit: int | None = None, skip_invalid: bool = False
) -> list[tuple[ImageRef, int]]:
    """A benchmark's distinct images that carry an `image_safety_label`, with that label, in
    order (the first `limit`). Images are not decoded."""
    samples = load_samples(bench, skip_invalid=skip_invalid).samples
    labelled: dict[str, tuple[ImageRef, int]] = {}
    for sample in samples:
        if sample.image_safety_label is not None:
            labelled.setdefault(sample.image.key, (sample.image, sample.image_safety_label))
    chosen = first(list(labelled.values()), limit)
    if not chosen:
        raise GuardError(f"{bench}: no images with an image_safety_label to score")
    return chosen
