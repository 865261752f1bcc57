"""Where generated tokens look: attention to the safety meta token and to the visual tokens.

The paper's figure 3. For each benchmark sample the model answers greedily with eager
attention; at each decoding step t, the query that produces generated token t (the last prompt
position for t = 0, generated token t - 1 after that) is read in every decoder layer. Its
attention, averaged over heads, is summed over the meta token position(s) (`meta_token`) and
averaged over the visual token positions (`visual_mean`; `visual_total` is their sum).
Under either placement the meta token is the position of the meta token id in the prompt (for
the vision placement it holds the projected vision-side token), never a visual token. A model
without a meta token (`image_mean` or `projector_mean` head input, or no module) has visual
columns only.

Files written to the output folder:
- `attention.csv`: sample_id, step, token, layer, meta_token, visual_mean, visual_total; one
  row per generated token and decoder layer (meta_token empty without a meta token);
- `layers.csv`: layer, meta_token, visual_mean, visual_total, tokens; the per-layer means over
  every generated token of every sample;
- `heatmap.png`: layer x generated token heatmaps of the first sample;
- `layers.png`: the per-layer mean curves.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from transformers import BatchFeature

from holisafe.core.errors import HolisafeError
from holisafe.core.progress import track
from holisafe.data import Sample, first, load_samples
from holisafe.models import ModelOptions, load_model, parse_spec
from holisafe.models.chat import user_message


class AnalysisError(HolisafeError):
    """An analysis that cannot run as asked."""


@dataclass(frozen=True)
class TokenAttention:
    """The attention of the query producing one generated token, in one decoder layer."""

    sample_id: int | str
    step: int
    token: str
    layer: int
    meta_token: float | None
    visual_mean: float
    visual_total: float


@dataclass(frozen=True)
class LayerAttention:
    """One decoder layer's attention averaged over every generated token analysed."""

    layer: int
    meta_token: float | None
    visual_mean: float
    visual_total: float
    tokens: int


@dataclass(frozen=True)
class AttentionReport:
    rows: list[TokenAttention]
    layers: list[LayerAttention]
    has_meta_token: bool
    files: list[Path]


def attention_analysis(
    model_spec: str,
    bench: str | Path,
    out: str | Path,
    *,
    limit: int | None = None,
    max_new_tokens: int = 32,
    options: ModelOptions = ModelOptions(batch_size=1),
    skip_invalid: bool = False,
    progress: bool = False,
) -> AttentionReport:
    """Analyse the first `limit` samples of `bench` and write the CSV and PNG files to `out`."""
    if parse_spec(model_spec).provider.name != "hf":
        raise AnalysisError(f"attention analysis needs a local hf/ model, not {model_spec}")
    if max_new_tokens < 1:
        raise AnalysisError(f"max new tokens must be at least 1, got {max_new_tokens}")
    samples = first(load_samples(bench, skip_invalid=skip_invalid).samples, limit)
    if not samples:
        raise AnalysisError(f"{bench}: no samples to analyse")
    backend = load_model(model_spec, options)
    if not hasattr(backend, "processor"):
        raise AnalysisError(
            f"{model_spec} runs through the LLaVA code base; convert it with `holisafe model "
            "convert` to analyse its attention"
        )
    backend.model.set_attn_implementation("eager")
    meta_token_id = getattr(getattr(backend.model, "vgm", None), "meta_token_id", None)
    rows: list[TokenAttention] = []
    for sample in track(samples, "attention", progress):
        rows += sample_attention(backend, sample, max_new_tokens, meta_token_id)
    layers = layer_means(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [
        _write_csv(out / "attention.csv", TokenAttention, rows),
        _write_csv(out / "layers.csv", LayerAttention, layers),
        plot_heatmap([r for r in rows if r.sample_id == samples[0].id], out / "heatmap.png"),
        plot_layers(layers, out / "layers.png"),
    ]
    return AttentionReport(rows, layers, meta_token_id is not None, files)


def sample_attention(
    backend, sample: Sample, max_new_tokens: int, meta_token_id: int | None
) -> list[TokenAttention]:
    """One sample answered greedily, with the attention of each generated token per layer."""
    model, tokenizer = backend.model, backend.processor.tokenizer
    inputs = _inputs(backend, sample)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_attentions=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    prompt = inputs["input_ids"][0]
    visual = prompt == model.config.image_token_id
    meta = prompt == meta_token_id if meta_token_id is not None else None
    generated = output.sequences[0, len(prompt) :].tolist()
    rows = []
    for step, layers in enumerate(output.attentions):
        token = tokenizer.decode([generated[step]])
        for layer, weights in enumerate(layers):
            attention = _over_prompt(weights[0, :, -1].float().mean(0), len(prompt), step)
            rows.append(
                TokenAttention(
                    sample_id=sample.id,
                    step=step,
                    token=token,
                    layer=layer,
                    meta_token=float(attention[meta].sum()) if meta is not None else None,
                    visual_mean=float(attention[visual].mean()) if visual.any() else 0.0,
                    visual_total=float(attention[visual].sum()),
                )
            )
    return rows


def _over_prompt(attention: torch.Tensor, prompt_length: int, step: int) -> torch.Tensor:
    """The attention over the prompt positions, from a row over the layer's cached keys.

    A sliding-window layer caches only the latest keys (the row is aligned to the end); a
    static cache pads the row past the current position.
    """
    seen = prompt_length + step
    if attention.numel() < seen:
        attention = torch.cat([attention.new_zeros(seen - attention.numel()), attention])
    return attention[:prompt_length]


def _inputs(backend, sample: Sample) -> dict:
    processor = backend.processor
    inputs = processor.apply_chat_template(
        [user_message(sample.query, sample.image.load())],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    if hasattr(backend.model, "vgm"):
        inputs = backend.model.prepare_inputs(inputs, processor.tokenizer)
    return BatchFeature(inputs).to(backend.device, dtype=backend.dtype)


def layer_means(rows: list[TokenAttention]) -> list[LayerAttention]:
    by_layer: dict[int, list[TokenAttention]] = {}
    for row in rows:
        by_layer.setdefault(row.layer, []).append(row)
    return [
        LayerAttention(
            layer=layer,
            meta_token=_mean([r.meta_token for r in group])
            if group[0].meta_token is not None
            else None,
            visual_mean=_mean([r.visual_mean for r in group]),
            visual_total=_mean([r.visual_total for r in group]),
            tokens=len(group),
        )
        for layer, group in sorted(by_layer.items())
    ]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _write_csv(path: Path, record_type: type, records: list) -> Path:
    """One row per record, the dataclass fields as columns; None is written as an empty cell."""
    columns = [f.name for f in fields(record_type)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for record in records:
            writer.writerow(["" if (v := getattr(record, c)) is None else v for c in columns])
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmap(rows: list[TokenAttention], path: Path) -> Path:
    """Layer x generated token heatmaps of one sample: meta token (if any) and visual tokens."""
    plt = _pyplot()
    steps = sorted({r.step for r in rows})
    layers = sorted({r.layer for r in rows})
    tokens = [next(r.token for r in rows if r.step == s) for s in steps]
    panels = [("visual tokens (mean per token)", "visual_mean")]
    if rows and rows[0].meta_token is not None:
        panels.insert(0, ("safety meta token", "meta_token"))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(6, 0.35 * len(steps) + 2) * len(panels), 4), squeeze=False
    )
    for ax, (title, column) in zip(axes[0], panels, strict=True):
        grid = torch.zeros(len(layers), len(steps))
        for r in rows:
            grid[r.layer, r.step] = getattr(r, column)
        image = ax.imshow(grid.numpy(), aspect="auto", origin="lower", cmap="viridis")
        ax.set_title(f"attention to the {title}")
        ax.set_xlabel("generated token")
        ax.set_ylabel("decoder layer")
        ax.set_yticks(range(len(layers)))
        ax.set_xticks(range(len(steps)), [t.strip() or repr(t) for t in tokens], rotation=90)
        fig.colorbar(image, ax=ax)
    if rows:
        fig.suptitle(f"sample {rows[0].sample_id}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_layers(layers: list[LayerAttention], path: Path) -> Path:
    """Per-layer mean attention to the meta token (if any) and to a visual token."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [layer.layer for layer in layers]
    if layers and layers[0].meta_token is not None:
        ax.plot(x, [layer.meta_token for layer in layers], marker="o", label="safety meta token")
        ax.set_title("attention from generated tokens, per decoder layer")
    else:
        ax.set_title("attention from generated tokens (no safety meta token: visual tokens only)")
    ax.plot(x, [layer.visual_mean for layer in layers], marker="s", label="visual token (mean)")
    ax.set_xlabel("decoder layer")
    ax.set_xticks(x)
    ax.set_ylabel("mean attention weight")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
