"""Tiny, randomly initialised models of the real LLaVA-1.5, Qwen2.5-VL and Gemma 3 classes.

`build_tiny_model` writes a model folder (safetensors weights, config, processor, tokenizer,
chat template) that loads with `AutoModelForImageTextToText` / `AutoProcessor` and nothing
else, so tests and users' CI can run the `hf` backend without downloading anything. A forward
pass takes milliseconds on a CPU; the answers are noise until the model is trained.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedModel

from holisafe.core.records import ModelError
from holisafe.synthetic.tiny_guards import GUARD_FAMILIES
from holisafe.synthetic.tiny_vlms import VLM_FAMILIES, TinyFamily
from holisafe.synthetic.tokenizer import build_tokenizer


def build_tiny_model(out: str | Path, family: str, *, seed: int = 0) -> Path:
    """Write a randomly initialised tiny `family` model with its processor to the folder `out`.

    The same seed gives the same weights. The folder loads as `hf/<out>`.
    """
    spec = _family(family)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelError(f"cannot write a tiny model to {out}: it is a file, not a folder")
    tokenizer = build_tokenizer(spec.tokenizer or family)
    processor = spec.processor(tokenizer, chat_template(family))
    with torch.random.fork_rng(devices=[]):  # leaves the caller's random state alone
        torch.manual_seed(seed)
        model = spec.model_class(spec.config(tokenizer))
        _randomise_zero_matrices(model)
    stop_ids = tokenizer.convert_tokens_to_ids(list(spec.stop_tokens))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop_ids if len(stop_ids) > 1 else stop_ids[0],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def chat_template(family: str) -> str:
    """The family's chat template (jinja), written in the style of the real model's."""
    name = _family(family).template or family
    return files("holisafe.resources").joinpath("tiny").joinpath(f"{name}.jinja").read_text()


def _randomise_zero_matrices(model: PreTrainedModel) -> None:
    """Draw at random the weight matrices that transformers starts at zero.

    Gemma 3 starts its image projection at zero, which would hide every image from the model.
    """
    std = model.config.get_text_config().initializer_range
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() >= 2 and not weight.any():
                weight.normal_(0.0, std)


def _family(family: str) -> TinyFamily:
    families = {**VLM_FAMILIES, **GUARD_FAMILIES}
    try:
        return families[family]
    except KeyError:
        raise ModelError(
            f"unknown tiny model family {family!r}; expected one of: {', '.join(families)}"
        ) from None
