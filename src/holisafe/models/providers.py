"""The provider registry: which module serves each `provider/name` spec, and with what options.

A backend's module is imported only when a model of its provider is loaded, so naming an API
model never imports torch, and a local model never imports the API SDKs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from typing import NamedTuple

from holisafe.core.records import Model, ModelError
from holisafe.models.gating import Gate
from holisafe.models.options import APIOptions, HFOptions, ModelOptions, VLLMOptions

API_REFUSAL = "--head-input applies to hf/ Safe-VLMs, not API models"


@dataclass(frozen=True)
class Provider:
    """One provider: the module that implements it and the options its backend reads."""

    name: str
    module: str  # imported on first use
    loader: str  # the module's callable: loader(name, **fields of `options`) -> Model
    options: type  # the backend's options class
    refused: tuple[str, ...] = ()  # ModelOptions fields the backend cannot honour when set
    refusal: str = ""  # the error for one of them

    def options_of(self, options: ModelOptions):
        """The part of the bundle this backend reads, as its own options class."""
        if any(getattr(options, name) for name in self.refused):
            raise ModelError(self.refusal)
        return self.options(**{f.name: getattr(options, f.name) for f in fields(self.options)})

    def load(self, name: str, options: ModelOptions) -> Model:
        backend_options = self.options_of(options)
        loader = getattr(importlib.import_module(self.module), self.loader)
        # its fields as they are (asdict would turn Endpoints into dicts)
        return loader(
            name, **{f.name: getattr(backend_options, f.name) for f in fields(self.options)}
        )


def _api(name: str, module: str, model_class: str) -> Provider:
    return Provider(name, module, model_class, APIOptions, ("head_input",), API_REFUSAL)


PROVIDERS = {
    provider.name: provider
    for provider in (
        Provider(
            "hf",
            "holisafe.models.local",
            "load_hf_model",
            HFOptions,
            ("base_url", "api_key"),
            "--base-url and --api-key apply to API models, not hf/ models",
        ),
        _api("openai", "holisafe.models.openai_api", "OpenAIModel"),
        _api("anthropic", "holisafe.models.anthropic_api", "AnthropicModel"),
        _api("google", "holisafe.models.google_api", "GoogleModel"),
        Provider(
            "vllm",
            "holisafe.models.vllm",
            "load_vllm_model",
            VLLMOptions,
            ("base_url", "api_key"),
            "vllm/ models start their own server; for a server already running use "
            "openai/<model> with --base-url",
        ),
    )
}


class ModelSpec(NamedTuple):
    """A parsed `provider/name` spec."""

    provider: Provider
    name: str


def parse_spec(spec: str) -> ModelSpec:
    """The provider a spec names and the model's name under it; ModelError for anything else."""
    provider, _, name = spec.partition("/")
    if provider not in PROVIDERS or not name:
        raise ModelError(
            f"model spec {spec!r} must be provider/name with provider one of "
            f"{', '.join(PROVIDERS)} (e.g. hf/llava-hf/llava-1.5-7b-hf, openai/gpt-4o)"
        )
    return ModelSpec(PROVIDERS[provider], name)


def load_model(spec: str, options: ModelOptions = ModelOptions()) -> Model:
    """The model a spec names, ready to answer: a model to evaluate, a judge's or a guard's."""
    provider, name = parse_spec(spec)
    gate_of(spec, options)
    return provider.load(name, options)


def gate_of(spec: str, options: ModelOptions) -> Gate | None:
    """The gate `options` ask of the model `spec` names (None: none); ModelError for a gate
    out of range or on a model that is not an hf/ model."""
    gate = Gate.of(options.gate, options.gate_refusal)
    if gate is not None and parse_spec(spec).provider.name != "hf":
        raise ModelError(f"--gate applies to hf/ Safe-VLMs; {spec} is not an hf/ model")
    return gate
