"""What a checkpoint is, read from its config alone: a Safe-VLM or not, what its safety head
reads, and whether it runs through code shipped with it. Every loader asks here.

A Safe-VLM's config carries `safety_categories`. What its head reads is recorded as
`safety_head_input` by this project (earlier as `safety_pooling`); a released checkpoint
records neither and reads the mean over the image tokens. A released checkpoint whose config
also has an `auto_map` runs through its own code; one that names `mm_vision_tower` is in the
original LLaVA code base's layout (SafeLLaVA).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from holisafe.core.records import ModelError

# Checkpoints written before `safety_head_input` existed recorded the `--vgm` mode as
# `safety_pooling`; its `mean` read the final states over the image tokens.
POOLING_BEFORE_HEAD_INPUT = {"meta_token": "meta_token", "mean": "image_mean"}
# A released checkpoint (SafeQwen2.5-VL / SafeGem format) records neither field.
RELEASED_HEAD_INPUT = "image_mean"
# The Auto classes a released checkpoint's auto_map may map to its code, the first one chosen.
AUTO_CLASSES = (
    "AutoModelForVision2Seq",
    "AutoModelForImageTextToText",
    "AutoModelForCausalLM",
    "AutoModel",
)


@dataclass(frozen=True)
class CheckpointKind:
    """The answer of `inspect_checkpoint`."""

    model_type: str | None
    safety_categories: tuple[str, ...] | None = None  # None: no safety head
    recorded_head_input: str | None = None  # None where the config records none
    auto_map: tuple[str, ...] = ()  # the classes the config maps to code shipped with it
    remote_class: str | None = None  # `module.Class` the first of AUTO_CLASSES maps to
    llava_layout: bool = False  # the original LLaVA code base's layout (SafeLLaVA)

    @property
    def is_safe_vlm(self) -> bool:
        return self.safety_categories is not None

    @property
    def head_input(self) -> str | None:
        """What the safety head reads (None without one): as recorded, else the released
        stock format's input. (A checkpoint in the LLaVA layout runs its own code, which
        decides; converted, it records its input.)"""
        if not self.is_safe_vlm:
            return None
        return self.recorded_head_input or RELEASED_HEAD_INPUT

    @property
    def runs_remote_code(self) -> bool:
        """A released Safe-VLM whose config maps its classes to code shipped with it."""
        return self.is_safe_vlm and bool(self.auto_map)


def inspect_checkpoint(checkpoint: str | Path | Mapping | object) -> CheckpointKind:
    """What `checkpoint` is: a folder or Hub id (its config read as data: no code runs), a
    config dict, or a transformers config object."""
    if isinstance(checkpoint, str | Path):
        checkpoint = _config_dict(str(checkpoint))
    if isinstance(checkpoint, Mapping):
        field = checkpoint.get
    else:

        def field(name: str) -> object:
            return getattr(checkpoint, name, None)

    categories = field("safety_categories")
    auto_map = field("auto_map") or {}
    mapped = [auto_map[c] for c in AUTO_CLASSES if isinstance(auto_map.get(c), str)]
    return CheckpointKind(
        model_type=field("model_type"),
        safety_categories=None if categories is None else tuple(categories),
        recorded_head_input=_recorded_head_input(
            field("safety_head_input"), field("safety_pooling")
        ),
        auto_map=tuple(auto_map),
        remote_class=mapped[0] if mapped else None,
        llava_layout=field("mm_vision_tower") is not None,
    )


def _recorded_head_input(head_input: str | None, pooling: str | None) -> str | None:
    if head_input is not None or pooling is None:
        return head_input
    if pooling not in POOLING_BEFORE_HEAD_INPUT:
        raise ModelError(f"unknown safety_pooling {pooling!r} in the model config")
    return POOLING_BEFORE_HEAD_INPUT[pooling]


def _config_dict(source: str) -> dict:
    from transformers import PretrainedConfig

    return PretrainedConfig.get_config_dict(source)[0]
