"""Vision pretraining: the tower learns to name pictograms, and nothing else in the folder moves."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from holisafe.synthetic.vision_pretrain import (
    VisionPretrainError,
    pictogram_vocabulary,
    pretrain_vision_tower,
)
from tests.modelfixtures import tiny_model_dir

SMALL = {"images": 4000, "epochs": 15, "batch_size": 32, "render_size": 48}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tiny_model_dir(tmp_path_factory.mktemp("tiny"), "llava")
    before = load_file(folder / "model.safetensors")
    stats = pretrain_vision_tower(folder, seed=0, **SMALL)
    return before, load_file(folder / "model.safetensors"), stats


@pytest.mark.slow
def test_naming_beats_the_most_common_pictogram(pretrained):
    _, _, stats = pretrained
    assert stats.images == SMALL["images"]
    assert stats.steps == SMALL["epochs"] * (SMALL["images"] // SMALL["batch_size"])
    # A tower that learned nothing can at best name the most common pictogram every time.
    assert stats.naming_accuracy > 2 * stats.chance


@pytest.mark.slow
def test_only_the_vision_tower_changes(pretrained):
    before, after, _ = pretrained
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed
    assert all(name.startswith("vision_tower.") for name in changed)


def test_vocabulary_names_every_pictogram_once():
    vocabulary = pictogram_vocabulary()
    assert len(vocabulary) == len(set(vocabulary)) > 200
    assert "\U0001f595" in vocabulary  # the middle finger, drawn only in harmful scenes


def test_other_families_and_folders_are_refused(tmp_path):
    with pytest.raises(VisionPretrainError, match="not a model folder"):
        pretrain_vision_tower(tmp_path)
    gemma = tiny_model_dir(tmp_path, "gemma3")
    with pytest.raises(VisionPretrainError, match="supports LLaVA"):
        pretrain_vision_tower(gemma)


def test_cli_pretrains_then_adds_the_module(tmp_path):
    from typer.testing import CliRunner

    from holisafe.cli import app

    out = tmp_path / "safe"
    args = ["model", "tiny", str(out), "--family", "llava", "--vgm", "image_mean"]
    result = CliRunner().invoke(app, [*args, "--pretrain-vision", "200"])
    assert result.exit_code == 0, result.output
    assert "pretrained on 200 images" in result.output
    assert "safety_categories" in (out / "config.json").read_text()


def test_the_same_seed_gives_the_same_tower(tmp_path):
    # The global RNG is left in different states before each run: only the seed may matter.
    towers = []
    for noise in (1, 2):
        torch.manual_seed(noise)
        folder = tiny_model_dir(tmp_path / str(noise), "llava")
        stats = pretrain_vision_tower(folder, seed=3, images=64, epochs=1, batch_size=32)
        towers.append((load_file(folder / "model.safetensors"), stats.final_loss))
    (first, first_loss), (second, second_loss) = towers
    assert first_loss == second_loss
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_images_drawn_in_chunks_are_those_drawn_at_once(tmp_path, monkeypatch):
    """Drawing in chunks bounds memory; the pixels and targets are those of one big batch."""
    from transformers import AutoProcessor

    from holisafe.core.progress import progress_bar
    from holisafe.synthetic import vision_pretrain

    folder = tiny_model_dir(tmp_path, "llava")
    processor = AutoProcessor.from_pretrained(folder).image_processor
    vocabulary = pictogram_vocabulary()

    def drawn(chunk: int):
        monkeypatch.setattr(vision_pretrain, "RENDER_CHUNK", chunk)
        with progress_bar(False) as bar:
            return vision_pretrain._rendered(25, 0, 2, 48, processor, vocabulary, bar)

    (pixels, targets), (at_once, at_once_targets) = drawn(7), drawn(100)
    assert pixels.shape[0] == 25
    assert torch.equal(pixels, at_once)
    assert torch.equal(targets, at_once_targets)
