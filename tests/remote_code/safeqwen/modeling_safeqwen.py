"""Test fixture: remote code in the calling convention of the released SafeQwen2.5-VL.

The stock Qwen2.5-VL class plus the released safety head (`img_safety_head.mlp.0/3`), run by
`do_safety=True`: it reads the mean final-layer state over the image tokens and adds
`img_safety_logits` and `img_safety_probs` to the output.
"""

import functools

from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration


class SafetyMLP(nn.Module):
    def __init__(self, width: int, classes: int, scale: float):
        super().__init__()
        inner = int(width * scale)
        self.mlp = nn.Sequential(
            nn.Linear(width, inner), nn.GELU(), nn.Dropout(0.1), nn.Linear(inner, classes)
        )

    def forward(self, pooled):
        return self.mlp(pooled)


class SafeQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    def __init__(self, config):
        super().__init__(config)
        self.img_safety_head = SafetyMLP(
            config.text_config.hidden_size,
            config.num_safety_categories,
            config.safety_head_hidden_scale,
        )
        self.post_init()

    # generate() routes arguments by the stock signature; do_safety is for direct calls
    @functools.wraps(Qwen2_5_VLForConditionalGeneration.forward)
    def forward(self, input_ids=None, pixel_values=None, do_safety=False, **kwargs):
        if not (do_safety and pixel_values is not None):
            return super().forward(input_ids=input_ids, pixel_values=pixel_values, **kwargs)
        kwargs["output_hidden_states"] = True
        out = super().forward(input_ids=input_ids, pixel_values=pixel_values, **kwargs)
        hidden = out.hidden_states[-1]
        mask = (input_ids == self.config.image_token_id).unsqueeze(-1).to(hidden.dtype)
        logits = self.img_safety_head((hidden * mask).sum(1) / mask.sum(1))
        out["img_safety_logits"] = logits
        out["img_safety_probs"] = logits.float().softmax(-1)
        return out
