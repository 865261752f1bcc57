"""The `hf` backend: any transformers image-text-to-text model, run locally.

The model answers through its own processor and chat template (`AutoProcessor`,
`AutoModelForImageTextToText`, SDPA attention), in batches padded on the left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    GenerationConfig,
    PreTrainedModel,
    ProcessorMixin,
)

from holisafe.core.checkpoint import inspect_checkpoint
from holisafe.core.errors import why
from holisafe.core.hub import folder_revision, local_or_hub
from holisafe.core.records import (
    GenerationSettings,
    ModelBase,
    ModelError,
    Request,
    Response,
    SafetyPrediction,
)
from holisafe.models.chat import text_message, user_message
from holisafe.models.gating import Gate
from holisafe.vgm import load_safe_vlm, safety_predictions

GUARD_QUERY = "Describe the image."
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "map")
# `map`: the weights spread over every visible GPU (accelerate's device map), for a model
# larger than one GPU; inputs go to the first GPU, where the embeddings are.
SPREAD = "map"
T = TypeVar("T")


class HFModel(ModelBase):
    """A local transformers model that answers image + query requests.

    `spec_or_path` is `hf/<Hub id or folder>` or the id or folder alone. `dtype` is `auto`
    (bfloat16 on a GPU that has it, else float16 there; float32 on the CPU), `float32`,
    `bfloat16` or `float16`; `device` is `auto`, `cpu`, `cuda`, `cuda:N` or `map` (spread
    over every visible GPU, for a model larger than one).

    Each Response's latency is the wall time of its batch divided by the batch size. With a
    `gate` (a Safe-VLM only), requests whose image the head scores at or above it are refused
    without decoding an answer (see `_gated_texts`).
    """

    def __init__(
        self,
        spec_or_path: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
        head_input: str | None = None,
        trust_remote_code: bool = False,
        gate: Gate | None = None,
    ):
        if batch_size < 1:
            raise ModelError(f"batch size must be at least 1, got {batch_size}")
        name = spec_or_path.removeprefix("hf/")
        self.spec = f"hf/{name}"
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.head_input = head_input
        self.trust_remote_code = trust_remote_code
        self.processor = _load_processor(name, trust_remote_code)
        placement = {"device_map": "auto"} if device == SPREAD else {}
        self.model = self._load_model(name, **placement)
        if not placement:
            self.model = self.model.to(self.device)
        self._system_role = _supports_system_role(self.processor, name)
        # the Hub commit the weights came from, or a fingerprint of a local folder
        hub_commit = getattr(self.model.config, "_commit_hash", None)
        self.revision = folder_revision(name) if Path(name).is_dir() else hub_commit
        if gate is not None and not self.is_safe_vlm:
            raise ModelError(f"--gate needs a Safe-VLM; {self.spec} has no safety head")
        self.gate = gate

    @property
    def details(self) -> dict[str, object]:
        """How the model runs, to record beside the generation settings."""
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": _devices(self.model, self.device),
            "revision": self.revision,
            "batch_size": self.batch_size,
            "attention": self.model.config._attn_implementation,
            "model_class": type(self.model).__name__,
            **({"gate": self.gate.as_dict()} if self.gate else {}),
        }

    def answers(
        self, requests: list[Request], settings: GenerationSettings
    ) -> Iterator[tuple[int, Response]]:
        """The Responses batch by batch; requests with and without an image batch apart."""
        if settings.max_new_tokens < 1 or settings.temperature < 0:
            raise ModelError(
                "generation needs max_new_tokens >= 1 and temperature >= 0, got "
                f"{settings.max_new_tokens} and {settings.temperature}"
            )
        for batch in _batches(requests, self.batch_size):
            yield from zip(batch, self._answer([requests[i] for i in batch], settings), strict=True)

    @property
    def is_safe_vlm(self) -> bool:
        """Whether the model carries the visual guard module (a safety head)."""
        return hasattr(self.model, "vgm")

    @property
    def safety_categories(self) -> tuple[str, ...]:
        return self.model.vgm.categories

    def _load_model(self, name: str, **placement: str) -> PreTrainedModel:
        return _load_model(name, self.dtype, self.head_input, self.trust_remote_code, **placement)

    def _answer(self, batch: list[Request], settings: GenerationSettings) -> list[Response]:
        start = time.perf_counter()
        try:
            texts, cut, safety, gated = self._generate_texts(batch, settings)
        except Exception as exc:  # a fault of one request: retry its batch-mates on their own
            if len(batch) > 1:
                return [response for r in batch for response in self._answer([r], settings)]
            return [Response(text=None, error=why(exc))]
        latency = (time.perf_counter() - start) / len(batch)
        answers = zip(texts, cut, safety, gated, strict=True)
        return [_response(*answer, latency) for answer in answers]

    def _generate_texts(
        self, batch: list[Request], settings: GenerationSettings
    ) -> tuple[list[str], list[bool], list[SafetyPrediction | None], list[bool]]:
        """The answers, whether each was cut at the token limit, for a Safe-VLM the safety
        predictions of the same prefill, and whether the gate refused each."""
        inputs = self._inputs(batch)
        if self.gate is not None and inputs.get("pixel_values") is not None:
            return self._gated_texts(batch, inputs, settings)
        with torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=self._config(settings))
            probs = self._answer_probs(inputs, output)
        texts, cut = self._decoded(output, inputs["input_ids"].shape[1], settings)
        return texts, cut, self._predictions(probs, len(batch)), [False] * len(batch)

    def _gated_texts(
        self, batch: list[Request], inputs, settings: GenerationSettings
    ) -> tuple[list[str], list[bool], list[SafetyPrediction | None], list[bool]]:
        """One prefill gives the head's verdicts and the cache. The rows the gate refuses get
        the refusal and no decoding at all; the others are decoded from that cache, in a
        batch of their own rows (so refused rows take no part in any decoding step)."""
        with torch.inference_mode():
            prefill = self.model.prefill(inputs)
        safety = self._predictions(prefill.img_safety_probs, len(batch))
        gated = [self.gate.closes(prediction) for prediction in safety]
        texts, cut = [self.gate.refusal] * len(batch), [False] * len(batch)
        kept = [i for i, refused in enumerate(gated) if not refused]
        if kept:
            rows = torch.tensor(kept)  # on the CPU: indexes tensors on any device
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=inputs["input_ids"][rows],
                    attention_mask=inputs["attention_mask"][rows],
                    cache=self.model.keep_rows(prefill.cache, rows),
                    generation_config=self._config(settings),
                )
            answers = self._decoded(output, inputs["input_ids"].shape[1], settings)
            for i, text, was_cut in zip(kept, *answers, strict=True):
                texts[i], cut[i] = text, was_cut
        del prefill
        refused = [i for i, closed in enumerate(gated) if closed]
        if refused and self.gate.generates_refusal:
            prompts = [self.gate.refusal_request(batch[i]) for i in refused]
            refusals, refusals_cut, _, _ = self._generate_texts(prompts, settings)
            for i, text, was_cut in zip(refused, refusals, refusals_cut, strict=True):
                texts[i], cut[i] = text, was_cut
        return texts, cut, safety, gated

    def _config(self, settings: GenerationSettings) -> GenerationConfig:
        return generation_config(settings, self.processor.tokenizer.pad_token_id)

    def _decoded(
        self, output, prompt_length: int, settings: GenerationSettings
    ) -> tuple[list[str], list[bool]]:
        """The generated texts and whether each was cut at the token limit."""
        new_tokens = output.sequences[:, prompt_length:]
        texts = self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return texts, self._cut(new_tokens, settings.max_new_tokens)

    def _cut(self, new_tokens: torch.Tensor, max_new_tokens: int) -> list[bool]:
        """Whether each answer ran to `max_new_tokens` without a stop token (finished rows are
        padded after their stop token, so only the last column needs looking at)."""
        if new_tokens.shape[1] < max_new_tokens:
            return [False] * len(new_tokens)
        stops = self.model.generation_config.eos_token_id
        stops = {*(stops if isinstance(stops, list) else [stops])}
        stops |= {self.processor.tokenizer.eos_token_id, self.processor.tokenizer.pad_token_id}
        return [int(last) not in stops for last in new_tokens[:, -1]]

    def _answer_probs(self, inputs, output) -> torch.Tensor | None:
        """The safety head's probabilities for a generated batch: from its own prefill."""
        return output.get("img_safety_probs")

    def _safety_probs(self, inputs) -> torch.Tensor:
        """The safety head's probabilities from one forward pass over `inputs`."""
        return self.model(**inputs, logits_to_keep=1).img_safety_probs

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
                probs = self._safety_probs(inputs)
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
        if hasattr(self.model, "vgm"):
            inputs = self.model.prepare_inputs(inputs, self.processor.tokenizer)
        return BatchFeature(inputs).to(self.device, dtype=self.dtype)

    def _predictions(self, probs, count: int) -> list[SafetyPrediction | None]:
        if probs is None:
            return [None] * count
        return safety_predictions(probs, self.safety_categories)


def resolve_device(device: str) -> torch.device:
    """`auto` is the GPU when torch sees one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.split(":")[0] not in DEVICES:
        raise ModelError(f"unknown device {device!r}; expected one of: {', '.join(DEVICES)}")
    if device == SPREAD:
        if not torch.cuda.is_available():
            raise ModelError("device 'map' spreads a model over GPUs, but torch sees no CUDA GPU")
        return torch.device("cuda:0")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for, but torch sees no CUDA GPU")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or auto") from None


def _devices(model: PreTrainedModel, device: torch.device) -> str:
    """The device, or the devices a device map spread the model over."""
    mapped = getattr(model, "hf_device_map", None)
    if not mapped:
        return str(device)
    names = {f"cuda:{d}" if isinstance(d, int) else str(d) for d in mapped.values()}
    return ",".join(sorted(names))


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


def source_of(name: str) -> str:
    """The local folder `name` names, or a Hub id (or its cached copy) to load it from."""
    return local_or_hub(name, "hf model", error=ModelError)


def load_from(name: str, loader: Callable[[str], T]) -> T:
    """`loader` applied to the folder or Hub id `name` names; its failure as a ModelError."""
    source = source_of(name)
    try:
        return loader(source)
    except Exception as exc:
        where = "" if Path(source).is_dir() else " (no such local folder; looked up on the Hub)"
        raise ModelError(f"cannot load hf model {name!r}{where}: {why(exc)}") from exc


def _load_processor(name: str, trust_remote_code: bool) -> ProcessorMixin:
    def load(source: str) -> ProcessorMixin:
        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)

    processor = load_from(name, load)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise ModelError(f"hf model {name!r} has no tokenizer in its processor")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def _load_model(
    name: str,
    dtype: torch.dtype,
    head_input: str | None,
    trust_remote_code: bool,
    **placement: str,
) -> PreTrainedModel:
    """The model; a folder whose config carries safety fields loads as a Safe-VLM, its head
    reading `head_input` where the checkpoint does not record what it reads. `placement` is
    `device_map=...` or nothing (the caller moves the model)."""

    def load(source: str) -> PreTrainedModel:
        if inspect_checkpoint(source).is_safe_vlm:
            return load_safe_vlm(
                source, head_input=head_input, dtype=dtype, attn_implementation="sdpa", **placement
            )
        if head_input is not None:
            raise ModelError(f"--head-input applies to Safe-VLMs; {name} has no safety head")
        return AutoModelForImageTextToText.from_pretrained(
            source,
            dtype=dtype,
            attn_implementation="sdpa",
            trust_remote_code=trust_remote_code,
            **placement,
        )

    return load_from(name, load)


def _supports_system_role(processor: ProcessorMixin, name: str) -> bool:
    """Whether the chat template takes a system message; fails if it renders nothing at all."""
    user, system = user_message("hi"), text_message("system", "be brief")
    try:
        processor.apply_chat_template([user], add_generation_prompt=True)
    except Exception as exc:
        raise ModelError(f"hf model {name!r} has no usable chat template: {why(exc)}") from exc
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


def generation_config(settings: GenerationSettings, pad_token_id: int | None) -> GenerationConfig:
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
        pad_token_id=pad_token_id,
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
    text: str, truncated: bool, safety: SafetyPrediction | None, gated: bool, latency_s: float
) -> Response:
    # an empty answer is still the answer (see the Model protocol)
    return Response(text.strip(), None, latency_s, safety, truncated=truncated, gated=gated)
