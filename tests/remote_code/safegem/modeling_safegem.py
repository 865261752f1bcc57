"""Test fixture: remote code in the calling convention of the released SafeGem.

The stock Gemma 3 class plus the released safety head (`img_safety_head.mlp.0/3`), run by
`do_safety=True`: it reads the mean of the multimodal projector's output over each image's
tokens (`image_hidden_states`, as HOLISAFE.md §6 reports of SafeGem) and adds
`img_safety_logits` and `img_safety_probs` to the output.
"""

import functools

from torch import nn
from transformers import Gemma3ForConditionalGeneration


class SafetyMLP(nn.Module):
    def __init__(self, width: int, classes: int, scale: float):
        super().__init__()
        inner = int(width * scale)
        self.mlp = nn.Sequential(
            nn.Linear(width, inner), nn.GELU(), nn.Dropout(0.1), nn.Linear(inner, classes)
        )

    def forward(self, pooled):
        return self.mlp(pooled)


class SafeGemForConditionalGeneration(Gemma3ForConditionalGeneration):
    def __init__(self, config):
        super().__init__(config)
        self.img_safety_head = SafetyMLP(
            config.text_config.hidden_size,
            config.num_safety_categories,
            config.safety_head_hidden_scale,
        )
        self.post_init()

    # generate() routes arguments by the stock signature; do_safety is for direct calls
    @functools.wraps(Gemma3ForConditionalGeneration.forward)
    def forward(self, input_ids=None, pixel_values=None, do_safety=False, **kwargs):
        if not (do_safety and pixel_values is not None):
            return super().forward(input_ids=input_ids, pixel_values=pixel_values, **kwargs)
        out = super().forward(input_ids=input_ids, pixel_values=pixel_values, **kwargs)
        logits = self.img_safety_head(out.image_hidden_states.mean(1))
        out["img_safety_logits"] = logits
        out["img_safety_probs"] = logits.float().softmax(-1)
        return out
