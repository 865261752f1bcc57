"""How to run a model: each backend's own options, and the bundle a user fills in.

A user (the CLI, a notebook) fills in one `ModelOptions`, whatever the model; the provider
registry (`holisafe.models.providers`) hands each backend the part it reads, as that backend's
own options class, whose fields are keyword parameters of the backend's loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from holisafe.models.endpoints import Endpoint


@dataclass(frozen=True)
class HFOptions:
    """A local transformers model (`hf/`)."""

    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = 8
    trust_remote_code: bool = False  # run code shipped with a released checkpoint
    head_input: str | None = None  # what a Safe-VLM's head reads, where its checkpoint is silent
    gate: float | None = None  # refuse at this unsafe score or above (models.gating)
    gate_refusal: str | None = None  # the refusal text, or `generate` (default: DEFAULT_REFUSAL)


@dataclass(frozen=True)
class ClientOptions:
    """How requests reach a model served over HTTP."""

    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5


@dataclass(frozen=True)
class APIOptions(ClientOptions):
    """A model behind a provider's API (`openai/`, `anthropic/`, `google/`). `base_url` is
    one server, or several to spread the requests over (`holisafe.models.endpoints`)."""

    base_url: str | Sequence[str | Endpoint] | None = None
    api_key: str | None = None


@dataclass(frozen=True)
class VLLMOptions(ClientOptions):
    """A model served by a `vllm serve` started for the run (`vllm/`)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None


@dataclass(frozen=True)
class ModelOptions(HFOptions, APIOptions, VLLMOptions):
    """Every backend's options in one bundle: what a user fills in, whatever the model."""
