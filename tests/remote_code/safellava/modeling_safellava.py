"""Test fixture: remote code in the calling convention of the released SafeLLaVA.

The original LLaVA code base's layout: a LLaMA causal LM whose inner model holds `mm_projector`
and a CLIP `vision_tower` loaded separately from `config.mm_vision_tower`. Prompts carry the
image as the index -200 (`safellava.mm_utils.tokenizer_image_token`); `images=` are spliced in
there, followed by the learnable safety meta token, whose final-layer state the safety head
reads when `do_safety=True`.
"""

import torch
from safellava.constants import IMAGE_TOKEN_INDEX
from torch import nn
from transformers import (
    CLIPImageProcessor,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
)


class SafeLlavaConfig(LlamaConfig):
    model_type = "safe_llava_llama"


class CLIPVisionTower(nn.Module):
    def __init__(self, name: str, select_layer: int, select_feature: str):
        super().__init__()
        self.name, self.select_layer, self.select_feature = name, select_layer, select_feature
        self.is_loaded = False

    def load_model(self):
        self.image_processor = CLIPImageProcessor.from_pretrained(self.name)
        self.vision_tower = CLIPVisionModel.from_pretrained(self.name)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def forward(self, images):
        states = self.vision_tower(images, output_hidden_states=True).hidden_states
        features = states[self.select_layer]
        return features[:, 1:] if self.select_feature == "patch" else features


class SafetyMLP(nn.Module):
    def __init__(self, width: int, classes: int, scale: float):
        super().__init__()
        inner = int(width * scale)
        self.mlp = nn.Sequential(
            nn.Linear(width, inner), nn.GELU(), nn.Dropout(0.1), nn.Linear(inner, classes)
        )

    def forward(self, pooled):
        return self.mlp(pooled)


class SafeLlavaLlamaModel(LlamaModel):
    config_class = SafeLlavaConfig

    def __init__(self, config):
        super().__init__(config)
        self.vision_tower = CLIPVisionTower(
            config.mm_vision_tower, config.mm_vision_select_layer, config.mm_vision_select_feature
        )
        self.mm_projector = nn.Sequential(
            nn.Linear(config.mm_hidden_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )
        self.safety_meta_token = nn.Parameter(torch.zeros(1, config.hidden_size))


class SafeLlavaLlamaForCausalLM(LlamaForCausalLM):
    config_class = SafeLlavaConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = SafeLlavaLlamaModel(config)
        self.img_safety_head = SafetyMLP(
            config.hidden_size, config.num_safety_categories, config.safety_head_hidden_scale
        )
        self.post_init()

    def get_vision_tower(self):
        return self.model.vision_tower

    def splice_images(self, input_ids, images):
        """Input embeddings with each row's image features and the meta token at -200; the
        meta token's positions."""
        features = self.model.mm_projector(self.get_vision_tower()(images))
        rows, positions = [], []
        for ids, image in zip(input_ids, features, strict=True):
            at = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0])
            embed = self.model.embed_tokens
            meta = self.model.safety_meta_token.to(image.dtype)
            rows.append(torch.cat([embed(ids[:at]), image, meta, embed(ids[at + 1 :])]))
            positions.append(at + len(image))
        return torch.stack(rows), torch.tensor(positions)

    def forward(self, input_ids=None, images=None, image_sizes=None, do_safety=False, **kwargs):
        if images is None:
            return super().forward(input_ids=input_ids, **kwargs)
        embeds, positions = self.splice_images(input_ids, images)
        kwargs.pop("attention_mask", None)
        out = super().forward(inputs_embeds=embeds, output_hidden_states=do_safety, **kwargs)
        if not do_safety:
            return out
        hidden = out.hidden_states[-1][torch.arange(len(positions)), positions]
        logits = self.img_safety_head(hidden)
        out["img_safety_logits"] = logits
        out["img_safety_probs"] = logits.float().softmax(-1)
        return out

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, **kwargs):
        """Generation from input embeddings, so the output holds the new tokens only."""
        if images is None:
            embeds = self.model.embed_tokens(inputs)
        else:
            embeds, _ = self.splice_images(inputs, images)
        return super().generate(inputs_embeds=embeds, **kwargs)
