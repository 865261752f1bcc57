"""Export a Safe-VLM as a plain checkpoint of its base architecture, for standard evaluation
suites (lmms-eval, VLMEvalKit) that load stock transformers classes with no toolkit import.

The export drops the safety head and the safety config fields and keeps every other weight, so
the stock class (`LlavaForConditionalGeneration`, ...) answers exactly as the Safe-VLM does:

- the `image_mean` and `projector_mean` head inputs (SafeQwen2.5-VL, SafeGem): the head only
  reads states, so nothing else changes.
- the `meta_token` head input (SafeLLaVA), LLaVA only: the language model was trained with the meta
  token right after the image's tokens, so the export keeps the token and its embedding and
  writes it into the chat template right after the image placeholder; the stock processor then
  expands the placeholder into the image tokens and the meta token follows them, where the
  toolkit places it. The generation config suppresses it as an output. Other families place it
  after an end-of-image marker that their processors insert themselves, out of a template's
  reach, so their meta-token models are refused, as are models with the vision-side meta token
  (it changes the vision encoder, which a stock class cannot do).
"""

from __future__ import annotations

from pathlib import Path

import transformers

from holisafe.vgm.config import META_TOKEN, VGMError, VGMSettings
from holisafe.vgm.model import load_safe_vlm

HEAD_PREFIX = "img_safety_head."
_IMAGE_PLACEHOLDER = "<image>"


def export_plain(source: str | Path, out: str | Path) -> Path:
    """Write the Safe-VLM at `source` to `out` as a plain checkpoint of its base class."""
    model = load_safe_vlm(str(source))
    processor = transformers.AutoProcessor.from_pretrained(str(source), trust_remote_code=False)
    settings: VGMSettings = model.vgm
    if settings.meta_token_placement == "vision":
        raise VGMError(
            f"{source}: the vision-side meta token enters the vision encoder, which a stock "
            "class cannot reproduce; only Safe-VLMs with the llm placement export as plain"
        )
    if settings.uses_meta_token:
        processor.chat_template = _template_with_meta_token(processor, model.config.model_type)
    config = model.config.__class__.from_dict(model.config.to_dict())
    for name in settings.config_fields():
        if hasattr(config, name):
            delattr(config, name)
    base_class = type(model).__bases__[-1]  # the family's transformers class
    plain = base_class(config)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIX)}
    plain.load_state_dict(weights, strict=True)
    plain.generation_config = model.generation_config
    if settings.meta_token_id is not None:
        suppressed = plain.generation_config.suppress_tokens or []
        plain.generation_config.suppress_tokens = [*suppressed, settings.meta_token_id]
    out = Path(out)
    plain.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _template_with_meta_token(processor, model_type: str) -> str:
    template = processor.chat_template
    if model_type != "llava":
        raise VGMError(
            f"a {model_type} Safe-VLM with the meta_token head input cannot be exported as a "
            "plain checkpoint: its meta token follows an end-of-image marker the processor "
            "inserts, which a chat template cannot reach (other head inputs and LLaVA export)"
        )
    if not isinstance(template, str) or _IMAGE_PLACEHOLDER not in template:
        raise VGMError(
            f"the processor's chat template has no {_IMAGE_PLACEHOLDER} placeholder to put the "
            "safety meta token after"
        )
    return template.replace(_IMAGE_PLACEHOLDER, _IMAGE_PLACEHOLDER + META_TOKEN)
