"""The model a run trains: the base VLM, its visual guard module, frozen parts, LoRA."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor

from holisafe.core.checkpoint import inspect_checkpoint
from holisafe.core.errors import why
from holisafe.core.hub import local_or_hub
from holisafe.models.hf import gpu_half_dtype
from holisafe.train.record import read_record
from holisafe.train.settings import TrainError, TrainSettings
from holisafe.vgm import VGMSettings, attach_visual_guard, load_safe_vlm

# The vision encoders of the supported families; Qwen2.5-VL's `visual.merger` is its projector.
_VISION_PREFIXES = ("model.vision_tower.", "model.visual.")
_PROJECTOR_PREFIXES = ("model.visual.merger.",)
# LoRA goes on the language model's attention and MLP projections, never the vision encoder's.
LORA_TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
SAFETY_HEAD = "img_safety_head"
VISION_META_TOKEN = "vision_meta_token"


def source_of(settings: TrainSettings) -> str:
    """The base as a local folder (absolute) or a Hub id."""
    return local_or_hub(settings.base_name, "base model", error=TrainError)


def load_processor(source: str):
    try:
        return AutoProcessor.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot load the processor of {source}: {why(exc)}") from exc


def training_dtype(settings: TrainSettings) -> torch.dtype:
    """LoRA on a bfloat16 GPU keeps the frozen base in bfloat16; anything trained is float32."""
    on_bf16_gpu = torch.cuda.is_available() and gpu_half_dtype() == torch.bfloat16
    return torch.bfloat16 if settings.lora and on_bf16_gpu else torch.float32


def base_model(settings: TrainSettings, source: str, processor):
    """The base with the visual guard module asked for (a new one, seeded, unless it has one).

    For the `meta_token` head input the meta token is added to `processor.tokenizer` in place.
    """
    transformers.set_seed(settings.seed)
    dtype = training_dtype(settings)
    try:
        if inspect_checkpoint(source).is_safe_vlm:
            return _existing_safe_vlm(settings, source, dtype)
        if settings.vgm == "none":
            return AutoModelForImageTextToText.from_pretrained(
                source, dtype=dtype, trust_remote_code=False
            )
        return attach_visual_guard(source, vgm_settings(settings), processor, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot load the base model {source}: {why(exc)}") from exc


def vgm_settings(settings: TrainSettings) -> VGMSettings:
    """The visual guard module a run asks for."""
    return VGMSettings(
        head_input=settings.vgm,
        meta_token_placement=settings.meta_token_placement,
        loss_lambda=settings.safety_lambda,
    )


def _existing_safe_vlm(settings: TrainSettings, source: str, dtype: torch.dtype):
    model = load_safe_vlm(source, dtype=dtype)
    has = model.vgm
    if settings.vgm == "none" or vgm_settings(settings).describe() != has.describe():
        options = f"--vgm {has.head_input}"
        if has.uses_meta_token:
            options += f" --meta-token-placement {has.meta_token_placement}"
        raise TrainError(
            f"{source} already has a visual guard module reading {has.describe()}; "
            f"train it with {options}"
        )
    model.vgm = dataclasses.replace(model.vgm, loss_lambda=settings.safety_lambda)
    model.config.safety_loss_lambda = settings.safety_lambda
    return model


def trainable_model(settings: TrainSettings, source: str, processor):
    """The model as it will be trained: vision encoder frozen if asked, LoRA applied if asked."""
    model = base_model(settings, source, processor)
    if settings.lora:
        return with_lora(model, settings)
    if settings.freeze_vision:
        for name, parameter in model.named_parameters():
            if name.startswith(_VISION_PREFIXES) and not name.startswith(_PROJECTOR_PREFIXES):
                parameter.requires_grad_(False)
    return model


def with_lora(model, settings: TrainSettings):
    """LoRA on the language model; the safety head and the meta token (its embedding row, or
    the vision-side token) train fully."""
    vgm = getattr(model, "vgm", None)
    trained_in_full = [SAFETY_HEAD] if vgm else None
    meta_token_rows = None
    if getattr(model, "vision_meta_token", None) is not None:
        trained_in_full.append(VISION_META_TOKEN)
    elif vgm and vgm.meta_token_id is not None:
        meta_token_rows = [vgm.meta_token_id]
    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=0.05,
        target_modules=LORA_TARGETS,
        modules_to_save=trained_in_full,
        trainable_token_indices=meta_token_rows,
    )
    peft_model = get_peft_model(model, config)
    for parameter in peft_model.parameters():  # optimizer state in float32 under a bf16 base
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return peft_model


def merge_lora(adapter_dir: str | Path, out: str | Path) -> Path:
    """Write the base with the LoRA adapter of `adapter_dir` (a `--lora` run's output) merged in.

    The base and module settings come from the run's record in `adapter_dir`. The folder `out`
    loads as `hf/<out>`: a Safe-VLM, or a plain model for `--vgm none`.
    """
    settings = read_record(adapter_dir).settings
    processor = load_processor(str(adapter_dir))
    plain = dataclasses.replace(settings, lora=False, merge=False)
    model = base_model(plain, source_of(settings), processor)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)
    processor.save_pretrained(out)
    return Path(out)
