"""The `hf` provider's loader: a local transformers model (`hf/<folder or Hub id>`) through the
toolkit's own classes, or a released Safe-VLM through its own code (`holisafe.models.remote`)."""

from __future__ import annotations

from holisafe.core.checkpoint import inspect_checkpoint
from holisafe.core.records import Model
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
) -> Model:
    """The `hf` backend for `name` (the registry's loader): the toolkit's own classes, or a
    released checkpoint's own code where its config maps to it (`holisafe.models.remote`)."""
    if load_from(name, inspect_checkpoint).runs_remote_code:
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
    )
