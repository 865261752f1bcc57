"""Attention analysis on tiny models: figures checked against a teacher-forced forward pass."""

import csv

import pytest
import torch
from transformers import AutoProcessor, BatchFeature
from typer.testing import CliRunner

from holisafe.analysis import AnalysisError, attention_analysis
from holisafe.cli import app
from holisafe.data import load_samples
from holisafe.models import ModelOptions
from holisafe.vgm import VGMSettings, convert_folder, load_safe_vlm
from tests.datafixtures import write_official
from tests.modelfixtures import no_network, tiny_model_dir

CPU = ModelOptions(device="cpu", batch_size=1)
COLUMNS = ["sample_id", "step", "token", "layer", "meta_token", "visual_mean", "visual_total"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_official(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module", params=["llm", "vision"])
def safe_llava(tmp_path_factory, request):
    """A Safe-LLaVA with its meta token in either placement."""
    root = tmp_path_factory.mktemp("models")
    plain = tiny_model_dir(root, "llava")
    settings = VGMSettings(meta_token_placement=request.param)
    convert_folder(str(plain), str(root / "safe"), settings, seed=0)
    return root / "safe"


def read_rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_figures_match_a_teacher_forced_pass(safe_llava, bench, tmp_path):
    with no_network():
        report = attention_analysis(
            f"hf/{safe_llava}", bench, tmp_path, limit=2, max_new_tokens=3, options=CPU
        )
    assert report.has_meta_token
    assert [p.name for p in report.files] == [
        "attention.csv",
        "layers.csv",
        "heatmap.png",
        "layers.png",
    ]
    rows = read_rows(tmp_path / "attention.csv")
    assert list(rows[0]) == COLUMNS and len(rows) == len(report.rows)
    model = load_safe_vlm(str(safe_llava), attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(safe_llava)
    for sample in load_samples(bench).samples[:2]:
        expected = teacher_forced(model, processor, sample)
        got = {(r.step, r.layer): r for r in report.rows if r.sample_id == sample.id}
        assert got.keys() == expected.keys()
        for key, (meta, visual_mean, visual_total) in expected.items():
            assert got[key].meta_token == pytest.approx(meta, abs=1e-5)
            assert got[key].visual_mean == pytest.approx(visual_mean, abs=1e-5)
            assert got[key].visual_total == pytest.approx(visual_total, abs=1e-5)
    for layer in report.layers:
        group = [r for r in report.rows if r.layer == layer.layer]
        assert layer.tokens == len(group)
        assert layer.meta_token == pytest.approx(sum(r.meta_token for r in group) / len(group))


def teacher_forced(model, processor, sample) -> dict:
    """(step, layer) -> attention of the position predicting each greedy token, from one pass
    over the prompt and the answer with eager attention."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": sample.image.load()},
                {"type": "text", "text": sample.query},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    inputs = model.prepare_inputs(inputs, processor.tokenizer)
    prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        sequence = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        full = BatchFeature(
            {
                "input_ids": sequence,
                "attention_mask": torch.ones_like(sequence),
                "pixel_values": inputs["pixel_values"],
            }
        )
        attentions = model(**full, output_attentions=True).attentions
    ids = sequence[0, :prompt]
    meta = ids == model.vgm.meta_token_id
    visual = ids == model.config.image_token_id
    figures = {}
    for step in range(sequence.shape[1] - prompt):
        for layer, weights in enumerate(attentions):
            row = weights[0, :, prompt - 1 + step, :prompt].mean(0)
            figures[step, layer] = (
                row[meta].sum().item(),
                row[visual].mean().item(),
                row[visual].sum().item(),
            )
    return figures


@pytest.mark.parametrize(("family", "pooling"), [("qwen2_5_vl", None), ("gemma3", "image_mean")])
def test_models_without_a_meta_token_report_visual_tokens_only(family, pooling, bench, tmp_path):
    model_dir = tiny_model_dir(tmp_path, family)
    if pooling:
        convert_folder(str(model_dir), str(tmp_path / "safe"), VGMSettings(head_input=pooling))
        model_dir = tmp_path / "safe"
    with no_network():
        report = attention_analysis(
            f"hf/{model_dir}", bench, tmp_path / "out", limit=1, max_new_tokens=2, options=CPU
        )
    assert not report.has_meta_token
    rows = read_rows(tmp_path / "out" / "attention.csv")
    assert rows and all(r["meta_token"] == "" for r in rows)
    assert all(0 < float(r["visual_total"]) <= 1 for r in rows)
    assert (tmp_path / "out" / "heatmap.png").stat().st_size > 0
    assert all(layer.meta_token is None for layer in report.layers)


def test_only_local_models_are_analysed(bench, tmp_path):
    with pytest.raises(AnalysisError, match="local hf/ model"):
        attention_analysis("openai/gpt-4o", bench, tmp_path)


def test_cli_prints_the_layer_table(safe_llava, bench, tmp_path):
    arguments = ["analyze", "attention", "--model", f"hf/{safe_llava}", "--bench", str(bench)]
    arguments += ["--out", str(tmp_path), "--limit", "1", "--max-new-tokens", "2"]
    with no_network():
        result = CliRunner().invoke(app, [*arguments, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "meta token" in result.output and "layers.png" in result.output
    assert len(read_rows(tmp_path / "layers.csv")) == 2  # the tiny models have two layers
