"""What a safety-tuning run is asked to do."""

from __future__ import annotations

from dataclasses import dataclass

from holisafe.core.errors import HolisafeError
from holisafe.vgm import HEAD_INPUTS, PLACEMENTS

VGM_CHOICES = (*HEAD_INPUTS, "none")
# LLaVA-1.5's fine-tuning rates: full fine-tuning, and LoRA.
FULL_LEARNING_RATE = 2e-5
LORA_LEARNING_RATE = 2e-4


class TrainError(HolisafeError):
    """A training run that cannot start or go on as asked."""


@dataclass(frozen=True)
class TrainSettings:
    """One safety-tuning run.

    `base` is an `hf/` spec (Hub id or folder) of a plain VLM or a Safe-VLM; `data` any source
    the data layer reads whose samples carry responses. `vgm` adds the visual guard module whose
    head reads that input (`none`: the same recipe without it); `meta_token_placement` says
    where its meta token enters (`llm` or `vision`). `learning_rate` None picks 2e-4 with LoRA,
    2e-5 without. `max_steps` (optimizer steps) overrides `epochs`; `limit` keeps the first N
    training samples. Checkpoints go to `out/checkpoints` every `save_steps` steps, at most
    `keep_checkpoints` of them; `resume` continues from the last one. A model already in `out`
    is replaced only with `overwrite`.
    """

    base: str
    data: str
    out: str
    vgm: str = "meta_token"
    meta_token_placement: str = "llm"
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    freeze_vision: bool = True
    safety_lambda: float = 1.0
    learning_rate: float | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    seed: int = 0
    limit: int | None = None
    eval_data: str | None = None
    save_steps: int = 500
    keep_checkpoints: int | None = 2
    log_steps: int = 10
    resume: bool = False
    overwrite: bool = False
    merge: bool = False
    skip_invalid: bool = False
    report_to: str = "none"
    trust_remote_code: bool = False  # a released base is converted first (models.convert)

    def __post_init__(self) -> None:
        if self.vgm not in VGM_CHOICES:
            raise TrainError(
                f"unknown --vgm {self.vgm!r}; expected one of {', '.join(VGM_CHOICES)}"
            )
        if self.meta_token_placement not in PLACEMENTS:
            raise TrainError(
                f"unknown --meta-token-placement {self.meta_token_placement!r}; "
                f"expected one of {', '.join(PLACEMENTS)}"
            )
        if self.meta_token_placement != "llm" and self.vgm != "meta_token":
            raise TrainError(
                f"--meta-token-placement {self.meta_token_placement} needs --vgm meta_token"
            )
        if self.resume and self.overwrite:
            raise TrainError("--resume continues the run in OUT, --overwrite replaces it: pick one")
        if self.merge and not self.lora:
            raise TrainError("--merge applies to --lora training; full fine-tuning writes a model")
        if self.lora and not self.freeze_vision:
            raise TrainError("--lora trains the language model only; drop --no-freeze-vision")
        positive = {
            "batch size": self.batch_size,
            "gradient accumulation": self.grad_accum,
            "epochs": self.epochs,
            "save steps": self.save_steps,
            "log steps": self.log_steps,
            "LoRA rank": self.lora_rank,
        }
        optional = {
            "max steps": self.max_steps,
            "limit": self.limit,
            "checkpoints kept": self.keep_checkpoints,
        }
        positive |= {name: value for name, value in optional.items() if value is not None}
        for name, value in positive.items():
            if value <= 0:
                raise TrainError(f"{name} must be positive, got {value}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise TrainError(f"learning rate must be positive, got {self.learning_rate}")
        if self.safety_lambda < 0:
            raise TrainError(f"safety lambda must be >= 0, got {self.safety_lambda}")

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_LEARNING_RATE if self.lora else FULL_LEARNING_RATE

    @property
    def base_name(self) -> str:
        return self.base.removeprefix("hf/")
