"""The visual guard module's settings, stored as extra fields of the VLM's own config.

Field names follow the released HoliSafe checkpoints (`safety_categories`,
`num_safety_categories`, `safety_head_hidden_scale`, `safety_num_hidden_layers`,
`safety_loss_lambda`); `safety_head_input`, `safety_meta_token_placement` and
`safety_meta_token_id` are this project's additions.
"""

from __future__ import annotations

from dataclasses import dataclass

from holisafe.core.checkpoint import inspect_checkpoint
from holisafe.core.errors import HolisafeError
from holisafe.core.taxonomy import IMAGE_SAFETY_LABELS

# What the safety head reads:
# - meta_token: the final language-model state of the safety meta token (SafeLLaVA);
# - image_mean: the mean final language-model state over the image tokens (SafeQwen / SafeGem);
# - projector_mean: the mean over the image tokens of the projector's output (the language
#   model's input there).
HEAD_INPUTS = ("meta_token", "image_mean", "projector_mean")
# Where the meta token enters: `llm`, a token of the language model's input only; `vision`, a
# learnable token appended to the vision encoder's patches and carried through the projector
# (the paper's placement, LLaVA only).
PLACEMENTS = ("llm", "vision")
META_TOKEN = "<|safety_meta|>"


class VGMError(HolisafeError):
    """A visual guard module that cannot be built or used as asked."""


@dataclass(frozen=True)
class VGMSettings:
    head_input: str = "meta_token"
    meta_token_placement: str = "llm"  # read only with the meta_token head input
    categories: tuple[str, ...] = IMAGE_SAFETY_LABELS
    hidden_scale: float = 0.5
    num_hidden_layers: int = 1
    loss_lambda: float = 1.0
    meta_token_id: int | None = None  # set when the meta token is added to the tokenizer

    def __post_init__(self) -> None:
        if self.head_input not in HEAD_INPUTS:
            raise VGMError(
                f"unknown safety head input {self.head_input!r}; "
                f"expected one of {', '.join(HEAD_INPUTS)}"
            )
        if self.meta_token_placement not in PLACEMENTS:
            raise VGMError(
                f"unknown meta token placement {self.meta_token_placement!r}; "
                f"expected one of {', '.join(PLACEMENTS)}"
            )
        if self.meta_token_placement == "vision" and self.head_input != "meta_token":
            raise VGMError(
                f"the vision placement is a meta token placement; the {self.head_input} "
                "head input has no meta token"
            )
        if self.num_hidden_layers < 1 or self.hidden_scale <= 0 or len(self.categories) < 2:
            raise VGMError(
                "the safety head needs >= 1 hidden layer, a positive scale, >= 2 classes"
            )

    @property
    def uses_meta_token(self) -> bool:
        return self.head_input == "meta_token"

    @classmethod
    def from_config(cls, config) -> VGMSettings | None:
        """The settings stored in a model config, or None for a model without the module."""
        kind = inspect_checkpoint(config)
        if not kind.is_safe_vlm:
            return None
        return cls(
            head_input=kind.head_input,
            meta_token_placement=getattr(config, "safety_meta_token_placement", None) or "llm",
            categories=kind.safety_categories,
            hidden_scale=float(getattr(config, "safety_head_hidden_scale", 0.5)),
            num_hidden_layers=int(getattr(config, "safety_num_hidden_layers", 1)),
            loss_lambda=float(getattr(config, "safety_loss_lambda", 1.0)),
            meta_token_id=getattr(config, "safety_meta_token_id", None),
        )

    def config_fields(self) -> dict:
        return {
            "safety_head_input": self.head_input,
            "safety_meta_token_placement": (
                self.meta_token_placement if self.uses_meta_token else None
            ),
            "safety_categories": list(self.categories),
            "num_safety_categories": len(self.categories),
            "safety_head_hidden_scale": self.hidden_scale,
            "safety_num_hidden_layers": self.num_hidden_layers,
            "safety_loss_lambda": self.loss_lambda,
            "safety_meta_token_id": self.meta_token_id,
        }

    def describe(self) -> str:
        """The head input in words, with the placement for a meta token: `meta_token (vision)`."""
        if self.uses_meta_token:
            return f"{self.head_input} ({self.meta_token_placement} placement)"
        return self.head_input
