"""The paper's placement of the safety meta token: a learnable token in the vision encoder.

The token is appended to the vision encoder's embedded patch sequence, so it attends to the
patches in every encoder layer; the projector maps it like any patch, and the language model
receives it right after the image's tokens, at the position `prepare_inputs` marks with the
meta token. The safety head reads its final language-model state there.
"""

from __future__ import annotations

import torch
from torch import nn

from holisafe.vgm.config import VGMError


class VisionMetaToken(nn.Module):
    """A learnable vector appended to a batch of embedded patch sequences."""

    def __init__(self, width: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(width))

    def forward(self, patch_embeddings: torch.Tensor) -> torch.Tensor:
        token = self.embedding.to(patch_embeddings.dtype)
        return torch.cat([patch_embeddings, token.expand(len(patch_embeddings), 1, -1)], 1)


def require_vision_placement(config) -> None:
    """Raise VGMError unless the model is a LLaVA with a CLIP vision tower."""
    vision = getattr(config, "vision_config", None)
    if config.model_type != "llava" or getattr(vision, "model_type", None) != "clip_vision_model":
        raise VGMError(
            "the vision placement of the meta token is built for LLaVA with a CLIP vision tower; "
            f"this model is {config.model_type!r} (use the llm placement)"
        )


def vision_embeddings(model) -> nn.Module:
    """The module that embeds the patches (and the class token) of a LLaVA's CLIP tower."""
    return model.model.vision_tower.embeddings


def start_as_class_token(token: VisionMetaToken, embeddings: nn.Module) -> None:
    """A new token starts as a second class token (the class embedding at its position), the
    tower's own whole-image summary, which training then tells apart."""
    with torch.no_grad():
        token.embedding.copy_(embeddings.class_embedding + embeddings.position_embedding.weight[0])
