"""Safe-VLMs: the real transformers VLM classes with the visual guard module added.

Each Safe class is its family's transformers class plus a safety head. The forward pass takes
`do_safety` (default True) and `safety_labels` and, when the batch has images, adds
`img_safety_logits`, `img_safety_probs`, `safety_loss`, `lm_loss` and
`loss = LM loss + λ · safety loss` to the family's usual output. The head reads what its
`head_input` names (see `holisafe.vgm.config`), captured from the same pass, so generation
classifies the image during its own prefill at no extra pass.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
from collections.abc import Mapping

import torch
import torch.nn.functional as F
import transformers
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.utils import ModelOutput

from holisafe.core.checkpoint import inspect_checkpoint
from holisafe.core.errors import why
from holisafe.core.records import SafetyPrediction
from holisafe.vgm.config import META_TOKEN, VGMError, VGMSettings
from holisafe.vgm.families import family_of
from holisafe.vgm.head import SafetyHead
from holisafe.vgm.inputs import PER_TOKEN_KEYS, add_meta_tokens
from holisafe.vgm.vision_token import (
    VisionMetaToken,
    require_vision_placement,
    start_as_class_token,
    vision_embeddings,
)


def safety_predictions(probs: torch.Tensor, categories: tuple[str, ...]) -> list[SafetyPrediction]:
    """One SafetyPrediction per row of a [batch, classes] probability tensor."""
    result = []
    for row in probs.detach().float().cpu().tolist():
        best = max(range(len(row)), key=row.__getitem__)
        probs_by_name = dict(zip(categories, row, strict=True))
        result.append(SafetyPrediction(categories[best], row[best], probs_by_name))
    return result


SAFETY_OUTPUTS = ("img_safety_logits", "img_safety_probs", "safety_loss", "lm_loss")


@functools.cache
def safe_output_class(output_class: type) -> type:
    """The family's output class with the safety fields added, so that the output can be rebuilt
    from its fields (as DistributedDataParallel does) without losing them."""
    fields = [
        (name, torch.Tensor | None, dataclasses.field(default=None)) for name in SAFETY_OUTPUTS
    ]
    return dataclasses.make_dataclass(f"Safe{output_class.__name__}", fields, bases=(output_class,))


class SafeVLMMixin:
    """The visual guard module, mixed in before a family's transformers model class."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        settings = VGMSettings.from_config(config)
        if settings is None:
            raise VGMError("the config has no safety fields; use attach_visual_guard() to add them")
        if settings.uses_meta_token and settings.meta_token_id is None:
            raise VGMError("the meta_token head input needs safety_meta_token_id in the config")
        self.vgm = settings
        self.family = family_of(config)
        self.img_safety_head = SafetyHead(
            config.get_text_config().hidden_size,
            len(settings.categories),
            settings.hidden_scale,
            settings.num_hidden_layers,
        )
        self.last_safety_probs: torch.Tensor | None = None
        self.vision_meta_token = None
        if settings.meta_token_placement == "vision":
            require_vision_placement(config)
            embeddings = vision_embeddings(self)
            self.vision_meta_token = VisionMetaToken(embeddings.embed_dim)
            embeddings.register_forward_hook(self._append_vision_meta_token)
        self.post_init()

    def _append_vision_meta_token(self, _module, _args, patch_embeddings):
        # a bound method, not a lambda, so that a deep copy of the model hooks its own token
        return self.vision_meta_token(patch_embeddings)

    def __init_subclass__(cls, **kwargs):
        """Give each Safe class a `forward` whose signature is its family's plus `do_safety`
        and `safety_labels`: generate() and Trainer read the signature to route arguments."""
        super().__init_subclass__(**kwargs)
        family_forward = super().forward
        params = list(inspect.signature(family_forward).parameters.values())
        extra = [
            inspect.Parameter("do_safety", inspect.Parameter.KEYWORD_ONLY, default=True),
            inspect.Parameter("safety_labels", inspect.Parameter.KEYWORD_ONLY, default=None),
        ]

        def forward(self, input_ids=None, **kwargs):
            return SafeVLMMixin.safe_forward(self, input_ids, **kwargs)

        forward.__signature__ = inspect.Signature(params[:-1] + extra + params[-1:])
        forward.__doc__ = SafeVLMMixin.safe_forward.__doc__
        cls.forward = forward

    def safe_forward(self, input_ids=None, *, do_safety: bool = True, safety_labels=None, **kwargs):
        """The family's forward, plus the safety head's outputs when the batch has images."""
        # generate() encodes the images before the prefill and passes them as mm_encoder_outputs
        # (an empty dict when there are none)
        has_images = kwargs.get("pixel_values") is not None or bool(
            kwargs.get("mm_encoder_outputs")
        )
        family_ids = self._family_input_ids(input_ids, kwargs)
        if not (do_safety and has_images and input_ids is not None):
            return super().forward(input_ids=family_ids, **kwargs)
        with self._head_states() as captured:
            output = super().forward(input_ids=family_ids, **kwargs)
        logits = self.img_safety_head(self._pool(captured[-1], input_ids))
        probs = logits.float().softmax(-1)
        output = safe_output_class(type(output))(
            **output, img_safety_logits=logits, img_safety_probs=probs
        )
        self.last_safety_probs = probs.detach()
        if safety_labels is not None:
            self._add_safety_loss(output, logits, safety_labels)
        return output

    def _family_input_ids(self, input_ids, kwargs: dict):
        """The ids the family's forward sees. Under the vision placement the meta token's
        position takes the image token, so the projected vision-side token fills it as the
        image's last feature."""
        if self.vision_meta_token is None or input_ids is None:
            return input_ids
        is_meta = input_ids == self.vgm.meta_token_id
        images = _image_count(kwargs)
        if images and int(is_meta.sum()) != images:
            raise VGMError(
                f"{images} image(s) but {int(is_meta.sum())} safety meta token(s) in input_ids; "
                "prepare meta-token inputs with holisafe.vgm.add_meta_tokens (or "
                "SafeVLM.prepare_inputs)"
            )
        return input_ids.masked_fill(is_meta, self.family.image_token_id(self.config))

    @contextlib.contextmanager
    def _head_states(self):
        """Collects, during a forward pass, the language-model states the head pools: its input
        embeddings (`projector_mean`, where the image tokens hold the projector's output) or its
        final hidden states."""
        captured: list[torch.Tensor] = []
        language_model = self.model.language_model
        if self.vgm.head_input == "projector_mean":
            hook = language_model.register_forward_pre_hook(
                lambda _module, _args, kwargs: captured.append(kwargs["inputs_embeds"]),
                with_kwargs=True,
            )
        else:
            hook = language_model.register_forward_hook(
                lambda _module, _args, out: captured.append(out[0])
            )
        try:
            yield captured
        finally:
            hook.remove()

    def _pool(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        if self.vgm.uses_meta_token:
            mask = input_ids == self.vgm.meta_token_id
        else:
            mask = input_ids == self.family.image_token_id(self.config)
        counts = mask.sum(1, keepdim=True)
        if bool((counts == 0).any()):
            what = "safety meta token" if self.vgm.uses_meta_token else "image tokens"
            raise VGMError(
                f"a sample with images has no {what} in its input_ids; prepare meta-token "
                "inputs with holisafe.vgm.add_meta_tokens (or SafeVLM.prepare_inputs)"
            )
        weights = mask.to(hidden.dtype) / counts.to(hidden.dtype)
        pooled = torch.einsum("bl,blh->bh", weights, hidden)
        return pooled.to(self.img_safety_head.mlp[0].weight.dtype)

    def _add_safety_loss(self, output: ModelOutput, logits: torch.Tensor, labels) -> None:
        labels = torch.as_tensor(labels, device=logits.device)
        if bool((labels != -100).any()):
            safety_loss = F.cross_entropy(logits.float(), labels, ignore_index=-100)
        else:  # keeps the head in the graph, so data-parallel training sees every parameter used
            safety_loss = logits.sum() * 0.0
        lm_loss = output.get("loss")
        output["safety_loss"] = safety_loss
        weighted = self.vgm.loss_lambda * safety_loss
        if lm_loss is not None:
            output["lm_loss"] = lm_loss
            output["loss"] = lm_loss + weighted
        else:
            output["loss"] = weighted

    def prepare_inputs(self, batch: Mapping, tokenizer) -> dict:
        """A processed batch made ready for this model: meta tokens placed where needed."""
        if not self.vgm.uses_meta_token:
            return dict(batch)
        return add_meta_tokens(
            batch,
            meta_token_id=self.vgm.meta_token_id,
            anchor_token_id=self.family.anchor_token_id(self.config),
            pad_token_id=tokenizer.pad_token_id,
            padding_side=tokenizer.padding_side,
        )

    def prefill(self, inputs: Mapping) -> ModelOutput:
        """The first forward generate() makes, with the positions it would give, over the prompt
        less its last token: the safety head's verdict and a cache to decode from, with
        `generate(input_ids=<the whole prompt>, cache=...)` feeding that last token. The head
        reads only states up to the image, which the generation prompt's last token follows."""
        prompt = {
            key: value[:, :-1] if key in PER_TOKEN_KEYS else value
            for key, value in inputs.items()
            if value is not None
        }
        position_ids = self._prepare_position_ids_for_generation(prompt["input_ids"], prompt)
        return self(**prompt, position_ids=position_ids, use_cache=True, logits_to_keep=1)

    def keep_rows(self, cache, rows: torch.Tensor):
        """The prefill's `cache` cut to the batch rows `rows`, with the family's own per-row
        state of generation (Qwen2.5-VL's multimodal position offsets) cut to match."""
        cache.batch_select_indices(rows)
        rope_deltas = getattr(self.model, "rope_deltas", None)
        if rope_deltas is not None:
            self.model.rope_deltas = rope_deltas[rows]
        return cache

    def generate(self, *args, **kwargs):
        """The family's generate; with `return_dict_in_generate=True` the output also holds
        `img_safety_probs` from the prefill. `last_safety_probs` holds them in any case."""
        if self.vgm.meta_token_id is not None:  # the meta token is an input, never an output
            config = kwargs.get("generation_config")
            # the model's own suppressed tokens (those a conversion added) stay suppressed
            kept = self.generation_config.suppress_tokens or []
            if config is not None:
                config = copy.deepcopy(config)
                config.suppress_tokens = [*(config.suppress_tokens or kept), self.vgm.meta_token_id]
                kwargs["generation_config"] = config
            else:
                suppressed = kwargs.get("suppress_tokens") or kept
                kwargs["suppress_tokens"] = [*suppressed, self.vgm.meta_token_id]
        self.last_safety_probs = None
        output = super().generate(*args, **kwargs)
        if isinstance(output, ModelOutput) and self.last_safety_probs is not None:
            output["img_safety_probs"] = self.last_safety_probs
        return output


class SafeLlavaForConditionalGeneration(SafeVLMMixin, transformers.LlavaForConditionalGeneration):
    """LLaVA with the visual guard module (SafeLLaVA)."""


class SafeQwen2_5_VLForConditionalGeneration(
    SafeVLMMixin, transformers.Qwen2_5_VLForConditionalGeneration
):
    """Qwen2.5-VL with the visual guard module (SafeQwen2.5-VL)."""


class SafeGemma3ForConditionalGeneration(SafeVLMMixin, transformers.Gemma3ForConditionalGeneration):
    """Gemma 3 with the visual guard module (SafeGem)."""


SAFE_CLASSES: dict[str, type] = {
    "llava": SafeLlavaForConditionalGeneration,
    "qwen2_5_vl": SafeQwen2_5_VLForConditionalGeneration,
    "gemma3": SafeGemma3ForConditionalGeneration,
}

# transformers renames checkpoint weights per class (legacy LLaVA names, for one); it skips
# classes defined outside the library unless registered, so each Safe class takes its family's.
for _model_type, _cls in SAFE_CLASSES.items():
    _family_cls = _cls.__bases__[-1]
    _mapping = get_checkpoint_conversion_mapping(_family_cls.__name__)
    _mapping = _mapping or get_checkpoint_conversion_mapping(_model_type)
    if _mapping is not None:
        register_checkpoint_conversion_mapping(_cls.__name__, _mapping, overwrite=True)


def _image_count(forward_kwargs: dict) -> int:
    """Images in a LLaVA forward's inputs: pixel values, or the features generate() encoded."""
    if forward_kwargs.get("pixel_values") is not None:
        return len(forward_kwargs["pixel_values"])
    encoded = (forward_kwargs.get("mm_encoder_outputs") or {}).get("image")
    return len(encoded.pooler_output) if encoded is not None else 0


def safe_class(config) -> type:
    return SAFE_CLASSES[family_of(config).model_type]


def is_safe_vlm(config) -> bool:
    return inspect_checkpoint(config).is_safe_vlm


def stock_config(source: str):
    """`source`'s config through transformers' own classes: code shipped with it never runs."""
    try:
        return transformers.AutoConfig.from_pretrained(source, trust_remote_code=False)
    except ValueError as exc:
        raise VGMError(f"cannot read the config of {source}: {why(exc)}") from None


def load_safe_vlm(source: str, *, head_input: str | None = None, **load_kwargs):
    """Load a Safe-VLM saved by this project or in the released HoliSafe format.

    No remote code runs: the released format's config fields and `img_safety_head` weights are
    read by this project's own classes. `head_input` says which states the head reads where the
    checkpoint does not record it (a released checkpoint: `image_mean` unless asked otherwise);
    asking for another input than a checkpoint records is an error.
    """
    config = stock_config(source)
    kind = inspect_checkpoint(config)
    if not kind.is_safe_vlm:
        raise VGMError(f"{source} has no visual guard module (no safety_categories in its config)")
    if head_input is not None:
        recorded = kind.recorded_head_input
        if recorded not in (None, head_input):
            raise VGMError(
                f"{source} records that its safety head reads {recorded!r}, "
                f"but {head_input!r} was asked"
            )
        config.safety_head_input = head_input
    return safe_class(config).from_pretrained(
        source, config=config, trust_remote_code=False, **load_kwargs
    )


def attach_visual_guard(source: str, settings: VGMSettings, processor, **load_kwargs):
    """Load a plain VLM with a new, untrained visual guard module; returns the model.

    For the `meta_token` head input the meta token is added to `processor.tokenizer` (in place)
    and its embedding starts as the mean of the existing embeddings; under the vision placement
    the vision-side token starts as a copy of the vision tower's class token.
    """
    config = stock_config(source)
    family_of(config)
    if is_safe_vlm(config):
        raise VGMError(f"{source} already has a visual guard module")
    if settings.meta_token_placement == "vision":
        require_vision_placement(config)
    tokenizer = processor.tokenizer
    if settings.uses_meta_token:
        tokenizer.add_tokens([META_TOKEN], special_tokens=True)
        settings = VGMSettings(
            **{**settings.__dict__, "meta_token_id": tokenizer.convert_tokens_to_ids(META_TOKEN)}
        )
    for name, value in settings.config_fields().items():
        setattr(config, name, value)
    model = safe_class(config).from_pretrained(
        source, config=config, trust_remote_code=False, **load_kwargs
    )
    if settings.meta_token_id is not None:
        embeddings = model.get_input_embeddings()
        if settings.meta_token_id >= embeddings.num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            embeddings = model.get_input_embeddings()
        with torch.no_grad():
            mean = embeddings.weight[: len(tokenizer) - 1].mean(0)
            embeddings.weight[settings.meta_token_id] = mean
    if model.vision_meta_token is not None:
        start_as_class_token(model.vision_meta_token, vision_embeddings(model))
    return model


def convert_folder(source: str, out: str, settings: VGMSettings, *, seed: int = 0) -> None:
    """Write a Safe-VLM folder: the plain VLM at `source` with a new, seeded visual guard module."""
    processor = transformers.AutoProcessor.from_pretrained(source, trust_remote_code=False)
    torch.manual_seed(seed)
    model = attach_visual_guard(source, settings, processor)
    model.save_pretrained(out)
    processor.save_pretrained(out)
