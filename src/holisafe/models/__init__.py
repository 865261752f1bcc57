"""Model backends, chosen by a `provider/name` spec as in inspect_ai.

- `hf/<Hub id or folder>`: a local transformers vision-language model (Safe-VLMs included);
- `openai/<model>`: OpenAI or any OpenAI-compatible server given `base_url` (vLLM, SGLang,
  `holisafe serve`);
- `anthropic/<model>`, `google/<model>`: through their official SDKs;
- `vllm/<Hub id or folder>`: a `vllm serve` started for the run, reached as `openai/` is.
"""

from __future__ import annotations

from dataclasses import dataclass

from holisafe.models.base import (
    GenerationSettings,
    Model,
    ModelError,
    Request,
    Response,
    SafetyPrediction,
)

PROVIDERS = ("hf", "openai", "anthropic", "google", "vllm")


@dataclass(frozen=True)
class ModelOptions:
    """How to run a model: local settings for `hf`, client settings for the API providers."""

    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = 8
    base_url: str | None = None
    api_key: str | None = None
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5
    trust_remote_code: bool = False  # run code shipped with a released checkpoint (hf)
    head_input: str | None = None  # what a Safe-VLM's head reads, where its checkpoint is silent
    # vllm/ models: how `vllm serve` runs them
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None


def parse_spec(spec: str) -> tuple[str, str]:
    provider, _, name = spec.partition("/")
    if provider not in PROVIDERS or not name:
        raise ModelError(
            f"model spec {spec!r} must be provider/name with provider one of "
            f"{', '.join(PROVIDERS)} (e.g. hf/llava-hf/llava-1.5-7b-hf, openai/gpt-4o)"
        )
    return provider, name


def load_model(spec: str, options: ModelOptions = ModelOptions()) -> Model:
    """The backend a spec names, ready to answer."""
    provider, name = parse_spec(spec)
    if provider == "hf":
        if options.base_url or options.api_key:
            raise ModelError("--base-url and --api-key apply to API models, not hf/ models")
        from holisafe.models.remote import load_hf_model

        return load_hf_model(
            name,
            dtype=options.dtype,
            device=options.device,
            batch_size=options.batch_size,
            trust_remote_code=options.trust_remote_code,
            head_input=options.head_input,
        )
    if provider == "vllm":
        return _vllm(name, options)
    if options.head_input is not None:
        raise ModelError("--head-input applies to hf/ Safe-VLMs, not API models")
    if provider == "openai":
        from holisafe.models.openai_api import OpenAIModel as backend
    elif provider == "anthropic":
        from holisafe.models.anthropic_api import AnthropicModel as backend
    else:
        from holisafe.models.google_api import GoogleModel as backend
    return backend(
        name,
        base_url=options.base_url,
        api_key=options.api_key,
        concurrency=options.concurrency,
        timeout_s=options.timeout_s,
        max_retries=options.max_retries,
    )


def _vllm(name: str, options: ModelOptions) -> Model:
    if options.base_url or options.api_key:
        raise ModelError(
            "vllm/ models start their own server; for a server already running use "
            "openai/<model> with --base-url"
        )
    from holisafe.models.vllm import VLLMModel, VLLMSettings

    settings = VLLMSettings(
        options.tensor_parallel_size, options.gpu_memory_utilization, options.max_model_len
    )
    return VLLMModel(
        name,
        settings,
        concurrency=options.concurrency,
        timeout_s=options.timeout_s,
        max_retries=options.max_retries,
    )


__all__ = [
    "PROVIDERS",
    "GenerationSettings",
    "Model",
    "ModelError",
    "ModelOptions",
    "Request",
    "Response",
    "SafetyPrediction",
    "load_model",
    "parse_spec",
]
