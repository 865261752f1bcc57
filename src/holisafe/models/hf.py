"""The `hf` backend: any transformers image-text-to-text model, run locally.

The model answers through its own processor and chat template (`AutoProcessor`,
`AutoModelForImageTextToText`, SDPA attention), in batches padded on the left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    GenerationConfig,
    PreTrainedModel,
    ProcessorMixin,
)

from holisafe.hub import local_or_hub
from holisafe.models.base import (
    GenerationSettings,
    ModelError,
    Request,
    Response,
    SafetyPrediction,
)
from holisafe.models.chat import text_message, user_message
from holisafe.vgm import is_safe_vlm, load_safe_vlm, safety_predictions

GUARD_QUERY = "Describe the image."
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")
T = TypeVar("T")


class HFModel:
    """A local transformers model that answers image + query requests.

    `spec_or_path` is `hf/<Hub id or folder>` or the id or folder alone. `dtype` is `auto`
    (bfloat16 on a GPU that has it, else float16 there; float32 on the CPU), `float32`,
    `bfloat16` or `float16`; `device` is `auto`, `cpu`, `cuda` or `cuda:N`.

    Each Response's latency is the wall time of its batch divided by the batch size.
    """

    def __init__(
        self,
        spec_or_path: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
    ):
        if batch_size < 1:
            raise ModelError(f"batch size must be at least 1, got {batch_size}")
        name = spec_or_path.removeprefix("hf/")
        self.spec = f"hf/{name}"
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.processor = _load_processor(name)
        self.model = _load_model(name, self.dtype).to(self.device)
        self._system_role = _supports_system_role(self.processor, name)

    @property
    def details(self) -> dict[str, object]:
        """How the model runs, to record beside the generation settings."""
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "batch_size": self.batch_size,
            "attention": self.model.config._attn_implementation,
            "model_class": type(self.model).__name__,
        }

    def generate(self, requests: list[Request], settings: GenerationSettings) -> list[Response]:
        """One Response per Request, in order; requests with and without an image batch apart."""
        if settings.max_new_tokens < 1 or settings.temperature < 0:
            raise ModelError(
                "generation needs max_new_tokens >= 1 and temperature >= 0, got "
                f"{settings.max_new_tokens} and {settings.temperature}"
            )
        responses: list[Response | None] = [None] * len(requests)
        for batch in _batches(requests, self.batch_size):
            answers = self._answer([requests[i] for i in batch], settings)
            for index, answer in zip(batch, answers, strict=True):
                responses[index] = answer
        return responses

    @property
    def is_safe_vlm(self) -> bool:
        """Whether the model carries the visual guard module (a safety head)."""
        return hasattr(self.model, "vgm")

    def _answer(self, batch: list[Request], settings: GenerationSettings) -> list[Response]:
        start = time.perf_counter()
        try:
            texts, cut, safety = self._generate_texts(batch, settings)
        except Exception as exc:  # a fault of one request: retry its batch-mates on their own
            if len(batch) > 1:
                return [response for r in batch for response in self._answer([r], settings)]
            return [Response(text=None, error=_why(exc))]
        latency = (time.perf_counter() - start) / len(batch)
        return [_response(*answer, latency) for answer in zip(texts, cut, safety, strict=True)]

    def _generate_texts(
        self, batch: list[Request], settings: GenerationSettings
    ) -> tuple[list[str], list[bool], list[SafetyPrediction | None]]:
        """The answers, whether each was cut at the token limit and, for a Safe-VLM, the safety
        predictions of the same prefill."""
        inputs = self._inputs(batch)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, generation_config=_generation_config(settings, self.processor)
            )
        new_tokens = output.sequences[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        cut = self._cut(new_tokens, settings.max_new_tokens)
        return texts, cut, self._predictions(output.get("img_safety_probs"), len(batch))

    def _cut(self, new_tokens: torch.Tensor, max_new_tokens: int) -> list[bool]:
        """Whether each answer ran to `max_new_tokens` without a stop token (finished rows are
        padded after their stop token, so only the last column needs looking at)."""
        if new_tokens.shape[1] < max_new_tokens:
            return [False] * len(new_tokens)
        stops = self.model.generation_config.eos_token_id
        stops = {*(stops if isinstance(stops, list) else [stops])}
        stops |= {self.processor.tokenizer.eos_token_id, self.processor.tokenizer.pad_token_id}
        return [int(last) not in stops for last in new_tokens[:, -1]]

    def classify(self, images: list[Image.Image]) -> list[SafetyPrediction]:
        """The safety head's verdict on each image, from one forward pass per batch.

        The head reads states that, under causal attention, see only the prompt up to the
        image (and its meta token), so the fixed query that follows does not change them.
        """
        if not self.is_safe_vlm:
            raise ModelError(f"{self.spec} has no safety head; use a Safe-VLM for the guard")
        predictions: list[SafetyPrediction] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            inputs = self._inputs([Request(query=GUARD_QUERY, image=i) for i in chunk])
            with torch.inference_mode():
                probs = self.model(**inputs, logits_to_keep=1).img_safety_probs
            predictions += self._predictions(probs, len(chunk))
        return predictions

    def _inputs(self, batch: list[Request]):
        inputs = self.processor.apply_chat_template(
            [_conversation(request, self._system_role) for request in batch],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        )
        if self.is_safe_vlm:
            inputs = self.model.prepare_inputs(inputs, self.processor.tokenizer)
        return BatchFeature(inputs).to(self.device, dtype=self.dtype)

    def _predictions(self, probs, count: int) -> list[SafetyPrediction | None]:
        if probs is None:
            return [None] * count
        return safety_predictions(probs, self.model.vgm.categories)


def resolve_device(device: str) -> torch.device:
    """`auto` is the GPU when torch sees one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.split(":")[0] not in DEVICES:
        raise ModelError(f"unknown device {device!r}; expected one of: {', '.join(DEVICES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for, but torch sees no CUDA GPU")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or auto") from None


def gpu_half_dtype() -> torch.dtype:
    """The half precision a CUDA GPU computes in: bfloat16 where it has it, else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is the GPU's half precision (`gpu_half_dtype`) on a GPU, float32 on the CPU."""
    if dtype == "auto":
        return gpu_half_dtype() if device.type == "cuda" else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelError(
            f"unknown dtype {dtype!r}; expected one of: auto, {', '.join(DTYPES)}"
        ) from None


def _load(name: str, loader: Callable[[str], T]) -> T:
    source = local_or_hub(name, "hf model", error=ModelError)
    try:
        return loader(source)
    except Exception as exc:
        where = "" if Path(source).is_dir() else " (no such local folder; looked up on the Hub)"
        raise ModelError(f"cannot load hf model {name!r}{where}: {_why(exc)}") from exc


def _load_processor(name: str) -> ProcessorMixin:
    processor = _load(name, AutoProcessor.from_pretrained)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise ModelError(f"hf model {name!r} has no tokenizer in its processor")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def _load_model(name: str, dtype: torch.dtype) -> PreTrainedModel:
    """The model; a folder whose config carries safety fields loads as a Safe-VLM."""

    def load(source: str) -> PreTrainedModel:
        if is_safe_vlm(AutoConfig.from_pretrained(source)):
            return load_safe_vlm(source, dtype=dtype, attn_implementation="sdpa")
        return AutoModelForImageTextToText.from_pretrained(
            source, dtype=dtype, attn_implementation="sdpa"
        )

    return _load(name, load)


def _supports_system_role(processor: ProcessorMixin, name: str) -> bool:
    """Whether the chat template takes a system message; fails if it renders nothing at all."""
    user, system = user_message("hi"), text_message("system", "be brief")
    try:
        processor.apply_chat_template([user], add_generation_prompt=True)
    except Exception as exc:
        raise ModelError(f"hf model {name!r} has no usable chat template: {_why(exc)}") from exc
    try:
        processor.apply_chat_template([system, user], add_generation_prompt=True)
    except Exception:
        return False
    return True


def _conversation(request: Request, system_role: bool) -> list[dict]:
    """The request as chat messages; without a system role, a system prompt leads the query."""
    if request.system and system_role:
        return [text_message("system", request.system), user_message(request.query, request.image)]
    query = f"{request.system}\n\n{request.query}" if request.system else request.query
    return [user_message(query, request.image)]


def _generation_config(settings: GenerationSettings, processor: ProcessorMixin) -> GenerationConfig:
    """Exactly the recorded settings: greedy at temperature 0, else plain temperature sampling.

    Whatever the model's own generation config says about beams, penalties, top-k or top-p is
    overridden; its stop tokens are kept.
    """
    sampling = settings.temperature > 0
    sampling_options = {"temperature": settings.temperature, "top_k": 0, "top_p": 1.0}
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=sampling,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        pad_token_id=processor.tokenizer.pad_token_id,
        return_dict_in_generate=True,
        **(sampling_options if sampling else {}),
    )


def _batches(requests: list[Request], size: int) -> list[list[int]]:
    """Indices of the requests, in batches of at most `size`; images and text-only apart."""
    with_image = [i for i, r in enumerate(requests) if r.image is not None]
    text_only = [i for i, r in enumerate(requests) if r.image is None]
    return [
        group[start : start + size]
        for group in (with_image, text_only)
        for start in range(0, len(group), size)
    ]


def _response(
    text: str, truncated: bool, safety: SafetyPrediction | None, latency_s: float
) -> Response:
    text = text.strip()
    error = None if text else "empty reply"
    return Response(text, error, latency_s, safety, truncated=truncated)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"
