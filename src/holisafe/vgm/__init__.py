"""The visual guard module: a safety head (and optional safety meta token) for real VLMs."""

from holisafe.vgm.config import HEAD_INPUTS, META_TOKEN, PLACEMENTS, VGMError, VGMSettings
from holisafe.vgm.inputs import add_meta_tokens
from holisafe.vgm.model import (
    SAFE_CLASSES,
    SafetyPrediction,
    attach_visual_guard,
    convert_folder,
    is_safe_vlm,
    load_safe_vlm,
    safety_predictions,
)

__all__ = [
    "HEAD_INPUTS",
    "META_TOKEN",
    "PLACEMENTS",
    "SAFE_CLASSES",
    "SafetyPrediction",
    "VGMError",
    "VGMSettings",
    "add_meta_tokens",
    "attach_visual_guard",
    "convert_folder",
    "is_safe_vlm",
    "load_safe_vlm",
    "safety_predictions",
]
