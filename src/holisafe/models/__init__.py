"""Model backends, chosen by a `provider/name` spec as in inspect_ai.

- `hf/<Hub id or folder>`: a local transformers vision-language model (Safe-VLMs included);
- `openai/<model>`: OpenAI or any OpenAI-compatible server given `base_url` (vLLM, SGLang,
  `holisafe serve`);
- `anthropic/<model>`, `google/<model>`: through their official SDKs;
- `vllm/<Hub id or folder>`: a `vllm serve` started for the run, reached as `openai/` is.

`load_model` serves models, judges and guards alike (`holisafe.models.providers`);
`inspect_checkpoint` tells what a checkpoint is (`holisafe.core.checkpoint`).
"""

from __future__ import annotations

from holisafe.core.checkpoint import CheckpointKind, inspect_checkpoint
from holisafe.core.records import (
    GenerationSettings,
    Model,
    ModelError,
    Request,
    Response,
    SafetyPrediction,
)
from holisafe.models.options import APIOptions, HFOptions, ModelOptions, VLLMOptions
from holisafe.models.providers import (
    PROVIDERS,
    ModelSpec,
    Provider,
    gate_of,
    load_model,
    parse_spec,
)

__all__ = [
    "PROVIDERS",
    "APIOptions",
    "CheckpointKind",
    "GenerationSettings",
    "HFOptions",
    "Model",
    "ModelError",
    "ModelOptions",
    "ModelSpec",
    "Provider",
    "Request",
    "Response",
    "SafetyPrediction",
    "VLLMOptions",
    "gate_of",
    "inspect_checkpoint",
    "load_model",
    "parse_spec",
]
