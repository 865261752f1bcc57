"""The `hf` provider's loader: a local transformers model (`hf/<folder or Hub id>`) through the
toolkit's own classes, or a released Safe-VLM through its own code (`holisafe.models.remote`)."""

from __future__ import annotations

from holisafe.core.checkpoint import inspect_checkpoint
from holisafe.core.records import Model, ModelError
from holisafe.models.gating import Gate
from holisafe.models.hf import HFModel, load_from
from holisafe.models.remote import load_released


def load_hf_model(
    name: str,
    *,
    dtype: str,
    device: str,
    batch_size: int,
    trust_remote_code: bool,
    head_input: str | None = None,
    gate: float | None = None,
    gate_refusal: str | None = None,
) -> Model:
    """The `hf` backend for `name` (the registry's loader): the toolkit's own classes, or a
    released checkpoint's own code where its config maps to it (`holisafe.models.remote`)."""
    gating = Gate.of(gate, gate_refusal)
    kind = load_from(name, inspect_checkpoint)
    if gating is not None and not kind.is_safe_vlm:  # said before the weights load
        raise ModelError(f"--gate needs a Safe-VLM; hf/{name} has no safety head")
    if kind.runs_remote_code:
        if gating is not None:
            raise ModelError(
                f"hf model {name!r} runs its own code; --gate applies to the toolkit's classes "
                "(`holisafe model convert` first)"
            )
        return load_released(
            name,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            trust_remote_code=trust_remote_code,
            head_input=head_input,
        )
    return HFModel(
        name,
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        head_input=head_input,
        trust_remote_code=trust_remote_code,
        gate=gating,
    )
