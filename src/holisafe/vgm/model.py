"""Safe-VLMs: the real transformers VLM classes with the visual guard module added.

Each Safe class is its family's transformers class plus a safety head. The forward pass takes
`do_safety` (default True) and `safety_labels` and, when the batch has images, adds
`img_safety_logits`, `img_safety_probs`, `safety_loss`, `lm_loss` and
`loss = LM loss + λ · safety loss` to the family's usual output. The head reads the final-layer
hidden state of the safety meta token (`meta_token` pooling) or the mean over the image tokens
(`mean` pooling), captured from the same pass, so generation classifies the image during its
own prefill at no extra pass.
"""

from __future__ import annotations

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

from holisafe.models.base import SafetyPrediction
from holisafe.vgm.config import META_TOKEN, VGMError, VGMSettings
from holisafe.vgm.families import family_of
from holisafe.vgm.head import SafetyHead
from holisafe.vgm.inputs import add_meta_tokens


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
        if settings.pooling == "meta_token" and settings.meta_token_id is None:
            raise VGMError("meta_token pooling needs safety_meta_token_id in the config")
        self.vgm = settings
        self.family = family_of(config)
        self.img_safety_head = SafetyHead(
            config.get_text_config().hidden_size,
            len(settings.categories),
            settings.hidden_scale,
            settings.num_hidden_layers,
        )
        self.last_safety_probs: torch.Tensor | None = None
        self.post_init()

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
        if not (do_safety and has_images and input_ids is not None):
            return super().forward(input_ids=input_ids, **kwargs)
        captured = []
        hook = self.model.language_model.register_forward_hook(
            lambda _module, _args, out: captured.append(out[0])
        )
        try:
            output = super().forward(input_ids=input_ids, **kwargs)
        finally:
            hook.remove()
        logits = self.img_safety_head(self._pool(captured[-1], input_ids))
        probs = logits.float().softmax(-1)
        output = safe_output_class(type(output))(
            **output, img_safety_logits=logits, img_safety_probs=probs
        )
        self.last_safety_probs = probs.detach()
        if safety_labels is not None:
            self._add_safety_loss(output, logits, safety_labels)
        return output

    def _pool(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        if self.vgm.pooling == "mean":
            mask = input_ids == self.family.image_token_id(self.config)
        else:
            mask = input_ids == self.vgm.meta_token_id
        counts = mask.sum(1, keepdim=True)
        if bool((counts == 0).any()):
            what = "image tokens" if self.vgm.pooling == "mean" else "safety meta token"
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
        if self.vgm.pooling != "meta_token":
            return dict(batch)
        return add_meta_tokens(
            batch,
            meta_token_id=self.vgm.meta_token_id,
            anchor_token_id=self.family.anchor_token_id(self.config),
            pad_token_id=tokenizer.pad_token_id,
            padding_side=tokenizer.padding_side,
        )

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


def safe_class(config) -> type:
    return SAFE_CLASSES[family_of(config).model_type]


def is_safe_vlm(config) -> bool:
    return VGMSettings.from_config(config) is not None


def load_safe_vlm(source: str, **load_kwargs):
    """Load a Safe-VLM saved by this project or in the released HoliSafe format.

    No remote code runs: the released format's config fields and `img_safety_head` weights are
    read by this project's own classes (`mean` pooling unless the config says otherwise).
    """
    config = transformers.AutoConfig.from_pretrained(source)
    if not is_safe_vlm(config):
        raise VGMError(f"{source} has no visual guard module (no safety_categories in its config)")
    return safe_class(config).from_pretrained(source, config=config, **load_kwargs)


def attach_visual_guard(source: str, settings: VGMSettings, processor, **load_kwargs):
    """Load a plain VLM with a new, untrained visual guard module; returns the model.

    For `meta_token` pooling the meta token is added to `processor.tokenizer` (in place) and
    its embedding starts as the mean of the existing embeddings.
    """
    config = transformers.AutoConfig.from_pretrained(source)
    family_of(config)
    if is_safe_vlm(config):
        raise VGMError(f"{source} already has a visual guard module")
    tokenizer = processor.tokenizer
    if settings.pooling == "meta_token":
        tokenizer.add_tokens([META_TOKEN], special_tokens=True)
        settings = VGMSettings(
            **{**settings.__dict__, "meta_token_id": tokenizer.convert_tokens_to_ids(META_TOKEN)}
        )
    for name, value in settings.config_fields().items():
        setattr(config, name, value)
    model = safe_class(config).from_pretrained(source, config=config, **load_kwargs)
    if settings.meta_token_id is not None:
        embeddings = model.get_input_embeddings()
        if settings.meta_token_id >= embeddings.num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            embeddings = model.get_input_embeddings()
        with torch.no_grad():
            mean = embeddings.weight[: len(tokenizer) - 1].mean(0)
            embeddings.weight[settings.meta_token_id] = mean
    return model


def convert_folder(source: str, out: str, settings: VGMSettings, *, seed: int = 0) -> None:
    """Write a Safe-VLM folder: the plain VLM at `source` with a new, seeded visual guard module."""
    processor = transformers.AutoProcessor.from_pretrained(source)
    torch.manual_seed(seed)
    model = attach_visual_guard(source, settings, processor)
    model.save_pretrained(out)
    processor.save_pretrained(out)
