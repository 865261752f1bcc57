"""Released Safe-VLM checkpoints run through their own (remote) code.

A checkpoint whose config maps a class to code shipped in its repository (`auto_map`) and
carries the released safety fields (`safety_categories`, ...) runs through that code, and only
when the user trusts it (`trust_remote_code`). Two calling conventions are published:

- the stock processor's one (SafeQwen2.5-VL, SafeGem): the family's own processor and chat
  template, the model class from `auto_map`, `do_safety=True` for `img_safety_probs`; batched;
- the original LLaVA code base's one (SafeLLaVA; its config names `mm_vision_tower`): the
  `safellava` package shipped beside the weights gives the `llava_v1` conversation template,
  `tokenizer_image_token` (the image as the index `IMAGE_TOKEN_INDEX`) and `process_images`;
  the CLIP vision tower is loaded on its own, images go in as `images=`; one request at a time,
  as that code base splices each image into its own row.

Either way the image prediction comes from a forward pass with `do_safety=True` over the same
prompt as the answer.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedModel
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from holisafe.core.checkpoint import AUTO_CLASSES, CheckpointKind, inspect_checkpoint
from holisafe.core.records import GenerationSettings, ModelBase, ModelError, Request, Response
from holisafe.models.hf import (
    GUARD_QUERY,
    HFModel,
    generation_config,
    load_from,
    resolve_device,
    resolve_dtype,
    source_of,
    why,
)
from holisafe.vgm import safety_predictions

LLAVA_PACKAGE = "safellava"
LLAVA_TEMPLATE = "llava_v1"
# Where each helper of the LLaVA code base lives in its package.
LLAVA_HELPERS = {
    "IMAGE_TOKEN_INDEX": "constants",
    "DEFAULT_IMAGE_TOKEN": "constants",
    "conv_templates": "conversation",
    "tokenizer_image_token": "mm_utils",
    "process_images": "mm_utils",
}
log = logging.getLogger(__name__)


def remote_code_of(name: str) -> CheckpointKind | None:
    """The checkpoint `name` when it is a released Safe-VLM that runs through its own code;
    None for any other checkpoint."""
    kind = load_from(name, inspect_checkpoint)
    if not kind.runs_remote_code:
        return None
    if kind.remote_class is None:
        raise ModelError(
            f"hf model {name!r} maps no model class to remote code (auto_map has "
            f"{', '.join(kind.auto_map)}; expected one of {', '.join(AUTO_CLASSES)})"
        )
    return kind


def trusted(loader):
    """`loader` with the checkpoint's own code allowed to run."""
    return lambda source: loader(source, trust_remote_code=True)


def load_remote_class(name: str, class_ref: str) -> type[PreTrainedModel]:
    # only called once the user trusts the checkpoint: this runs its code, and never asks
    return load_from(name, lambda source: get_class_from_dynamic_module(class_ref, source))


def local_folder(name: str) -> Path:
    """The checkpoint as a local folder: the folder itself, or a Hub repository's snapshot."""
    source = source_of(name)
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(load_from(name, snapshot_download))


@contextlib.contextmanager
def llava_codebase(folder: Path) -> Iterator[SimpleNamespace]:
    """The helpers of the LLaVA code base package shipped in `folder`, importable (with the
    folder on `sys.path`) while the context lasts, as the checkpoint's own code needs."""
    for module in [m for m in sys.modules if m.split(".")[0] == LLAVA_PACKAGE]:
        del sys.modules[module]  # another checkpoint's copy of the package
    sys.path.insert(0, str(folder))
    try:
        helpers = {}
        for helper, module in LLAVA_HELPERS.items():
            try:
                helpers[helper] = getattr(
                    importlib.import_module(f"{LLAVA_PACKAGE}.{module}"), helper
                )
            except (ImportError, AttributeError) as exc:
                raise ModelError(
                    f"{folder}: a LLaVA-code-base checkpoint ships `{LLAVA_PACKAGE}.{module}."
                    f"{helper}`, this one does not ({why(exc)})"
                ) from None
        if LLAVA_TEMPLATE not in helpers["conv_templates"]:
            raise ModelError(f"{folder}: its conversation templates lack {LLAVA_TEMPLATE!r}")
        yield SimpleNamespace(**helpers)
    finally:
        sys.path.remove(str(folder))


class RemoteSafeVLM(HFModel):
    """A released Safe-VLM in the stock processor's convention, run through its own code.

    Answers come from the model's own generate; each image's prediction from a forward pass
    with `do_safety=True` over the same batch.
    """

    @property
    def is_safe_vlm(self) -> bool:
        return True

    @property
    def safety_categories(self) -> tuple[str, ...]:
        return tuple(self.model.config.safety_categories)

    def _load_model(self, name: str, **placement: str) -> PreTrainedModel:
        model_class = load_remote_class(name, remote_code_of(name).remote_class)
        return load_from(
            name,
            lambda source: model_class.from_pretrained(
                source, dtype=self.dtype, trust_remote_code=True, **placement
            ),
        )

    def _answer_probs(self, inputs, output) -> torch.Tensor | None:
        return self._safety_probs(inputs) if "pixel_values" in inputs else None

    def _safety_probs(self, inputs) -> torch.Tensor:
        return self.model(**inputs, do_safety=True).img_safety_probs


class LlavaCodebaseModel(ModelBase):
    """A released Safe-VLM in the original LLaVA code base's layout (SafeLLaVA), run through
    its own code, one request at a time."""

    def __init__(self, spec_or_path: str, *, dtype: str = "auto", device: str = "auto"):
        name = spec_or_path.removeprefix("hf/")
        self.spec = f"hf/{name}"
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        folder = local_folder(name)
        with llava_codebase(folder) as self.code:
            self.tokenizer = load_from(str(folder), trusted(AutoTokenizer.from_pretrained))
            model_class = load_remote_class(str(folder), remote_code_of(name).remote_class)
            self.model = load_from(str(folder), trusted(model_class.from_pretrained))
            tower = self.model.get_vision_tower()
            if not tower.is_loaded:
                tower.load_model()
        self.image_processor = tower.image_processor
        self.model.to(self.device, dtype=self.dtype).eval()
        self.safety_categories = tuple(self.model.config.safety_categories)
        log.warning("%s runs through the LLaVA code base: one request at a time", self.spec)

    is_safe_vlm = True
    batch_size = 1

    @property
    def details(self) -> dict[str, object]:
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "batch_size": self.batch_size,
            "model_class": type(self.model).__name__,
            "remote_code": True,
        }

    def answers(
        self, requests: list[Request], settings: GenerationSettings
    ) -> Iterator[tuple[int, Response]]:
        for index, request in enumerate(requests):
            yield index, self._answer(request, settings)

    def classify(self, images: list[Image.Image]):
        predictions = []
        for image in images:
            ids, image_inputs = self.prompt(Request(query=GUARD_QUERY, image=image))
            with torch.inference_mode():
                probs = self.model(input_ids=ids, do_safety=True, **image_inputs).img_safety_probs
            predictions += safety_predictions(probs, self.safety_categories)
        return predictions

    def prompt(self, request: Request) -> tuple[torch.Tensor, dict]:
        """The request's token ids (the image as IMAGE_TOKEN_INDEX) and image keywords, as the
        code base builds them; a system prompt leads the query, as the template has its own."""
        query = f"{request.system}\n\n{request.query}" if request.system else request.query
        image_inputs = {}
        if request.image is not None:
            query = f"{self.code.DEFAULT_IMAGE_TOKEN}\n{query}"
            image = request.image.convert("RGB")
            pixels = self.code.process_images([image], self.image_processor, self.model.config)
            pixels = pixels.to(self.device, self.dtype)
            image_inputs = {"images": pixels, "image_sizes": [image.size]}
        conversation = self.code.conv_templates[LLAVA_TEMPLATE].copy()
        conversation.append_message(conversation.roles[0], query)
        conversation.append_message(conversation.roles[1], None)
        ids = self.code.tokenizer_image_token(
            conversation.get_prompt(), self.tokenizer, self.code.IMAGE_TOKEN_INDEX, "pt"
        )
        return ids.unsqueeze(0).to(self.device), image_inputs

    def _answer(self, request: Request, settings: GenerationSettings) -> Response:
        start = time.perf_counter()
        try:
            ids, image_inputs = self.prompt(request)
            config = generation_config(settings, self.tokenizer.pad_token_id)
            with torch.inference_mode():
                # the code base generates from input embeddings: the output is the new tokens
                output = self.model.generate(ids, generation_config=config, **image_inputs)
                safety = None
                if image_inputs:
                    probs = self.model(input_ids=ids, do_safety=True, **image_inputs)
                    (safety,) = safety_predictions(probs.img_safety_probs, self.safety_categories)
        except Exception as exc:
            return Response(text=None, error=why(exc))
        text = self.tokenizer.decode(output.sequences[0], skip_special_tokens=True).strip()
        latency = time.perf_counter() - start
        cut = len(output.sequences[0]) >= settings.max_new_tokens
        # an empty answer is still the answer (see the Model protocol)
        return Response(text, None, latency, safety, truncated=cut)


def load_released(
    name: str,
    *,
    dtype: str,
    device: str,
    batch_size: int,
    trust_remote_code: bool,
    head_input: str | None,
) -> RemoteSafeVLM | LlavaCodebaseModel:
    """A released Safe-VLM through its own code, when the user trusts it (that code decides
    what its head reads, so `head_input` applies to the toolkit's classes only)."""
    code = remote_code_of(name)
    if not trust_remote_code:
        raise ModelError(
            f"hf model {name!r} runs through code shipped with it ({code.remote_class}); pass "
            "--trust-remote-code to run that code, or convert the checkpoint to the toolkit's "
            "own classes with `holisafe model convert`"
        )
    if head_input is not None:
        raise ModelError(
            f"hf model {name!r} runs its own code, which decides what its head reads; "
            "--head-input applies to the toolkit's classes (`holisafe model convert` first)"
        )
    if code.llava_layout:
        return LlavaCodebaseModel(name, dtype=dtype, device=device)
    return RemoteSafeVLM(
        name, dtype=dtype, device=device, batch_size=batch_size, trust_remote_code=True
    )
