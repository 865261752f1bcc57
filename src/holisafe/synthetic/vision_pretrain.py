"""Pretrain a tiny model's vision tower to name the pictograms on HoliSafe-Mini-style images.

A real VLM's image encoder arrives pretrained (CLIP learned to name what web images show); a
tiny model's is random, and a Safe-VLM's safety head cannot learn to see from a thousand
images. This teaches the tower what a CLIP-style encoder knows before safety tuning: which
pictograms an image holds, as multi-label classification over every pictogram of the set.

The images are planned and drawn by HoliSafe-Mini's own generator from a seed stream that the
benchmark and training splits never use; the targets are pictogram names only, never safety
labels. The tower is trained on the features the VLM reads (LLaVA's `vision_feature_layer`,
patch tokens only), through a throwaway linear classifier over max-pooled patch scores.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import TextColumn
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor

from holisafe.core.progress import progress_bar
from holisafe.core.records import ModelError
from holisafe.synthetic.mini import DEFAULT_SIZE, ImagePlan, base_glyph, plan_split, render_image
from holisafe.synthetic.mini_content import SAFE_NAMES, THEMES

# HoliSafe-Mini draws its bench from seed stream 0 and its train split from 1 (mini.py).
PRETRAIN_STREAM = 2
HELDOUT_STREAM = 3
HELDOUT_IMAGES = 500
PAIRS_PER_IMAGE_PAIR = 5  # Mini plans an unsafe image (2 pairs) then a safe one (3 pairs)
RENDER_CHUNK = 1000  # images drawn and processed at a time


class VisionPretrainError(ModelError):
    """The vision tower of a model folder cannot be pretrained as asked."""


@dataclass(frozen=True)
class VisionPretrainStats:
    """What pretraining did. Naming accuracy is the share of held-out images whose top-scored
    pictogram is really on them; `chance` is that share for always naming the most common one."""

    images: int
    steps: int
    final_loss: float
    naming_accuracy: float
    chance: float
    seconds: float


def pictogram_vocabulary() -> tuple[str, ...]:
    """Every pictogram HoliSafe-Mini draws, without skin tones, in a fixed order."""
    scene_glyphs = {glyph for theme in THEMES.values() for s in theme.scenes for glyph in s.split()}
    return tuple(sorted({base_glyph(g) for g in SAFE_NAMES} | scene_glyphs))


def pretrain_vision_tower(
    model_dir: str | Path,
    *,
    seed: int = 0,
    images: int = 20_000,
    epochs: int = 20,
    batch_size: int = 128,
    learning_rate: float = 5e-3,
    render_size: int = DEFAULT_SIZE,
    progress: bool = False,
) -> VisionPretrainStats:
    """Train the vision tower of the LLaVA model in `model_dir` to name pictograms, and write
    the model back to the folder; nothing but the vision tower's weights changes.

    `images` are drawn once at `render_size` pixels (HoliSafe-Mini's size) and shown `epochs`
    times; the same seed gives the same images.
    """
    started = time.perf_counter()
    model_dir = Path(model_dir)
    model, image_processor = _load(model_dir)
    vocabulary = pictogram_vocabulary()
    with progress_bar(progress, TextColumn("{task.fields[loss]}")) as bar:
        pixels, targets = _rendered(
            images, seed, PRETRAIN_STREAM, render_size, image_processor, vocabulary, bar
        )
        heldout = _rendered(
            HELDOUT_IMAGES, seed, HELDOUT_STREAM, render_size, image_processor, vocabulary, bar
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # before the namer's classifier is built: it is random too
            namer = PictogramNamer(model, len(vocabulary))
            steps, loss = _train(namer, pixels, targets, epochs, batch_size, learning_rate, bar)
    model.save_pretrained(model_dir)
    return VisionPretrainStats(
        images=len(pixels),
        steps=steps,
        final_loss=loss,
        naming_accuracy=naming_accuracy(namer, *heldout),
        chance=most_common_accuracy(targets, heldout[1]),
        seconds=time.perf_counter() - started,
    )


class PictogramNamer(nn.Module):
    """Scores every pictogram on an image from the patch features the VLM reads: a linear score
    per patch, max-pooled over the patches (a pictogram is there if some patch shows it)."""

    def __init__(self, model, classes: int):
        super().__init__()
        self.tower = model.model.vision_tower
        self.layer = model.config.vision_feature_layer
        hidden = self.tower.config.hidden_size
        self.norm = nn.LayerNorm(hidden)
        self.scores = nn.Linear(hidden, classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        states = self.tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        patches = states[self.layer][:, 1:]  # LLaVA drops the class token ("default" strategy)
        return self.scores(self.norm(patches)).max(dim=1).values


def naming_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the pictograms present, spread evenly over them: softmax over many
    classes learns far faster here than one sigmoid per class (Mahajan et al., 2018)."""
    shares = targets / targets.sum(dim=1, keepdim=True)
    return -(torch.log_softmax(scores, dim=1) * shares).sum(dim=1).mean()


def naming_accuracy(namer: PictogramNamer, pixels: torch.Tensor, targets: torch.Tensor) -> float:
    namer.eval()
    with torch.no_grad():
        top = namer(pixels).argmax(dim=1)
    return targets[torch.arange(len(targets)), top].mean().item()


def most_common_accuracy(train_targets: torch.Tensor, heldout_targets: torch.Tensor) -> float:
    return heldout_targets[:, train_targets.sum(dim=0).argmax()].mean().item()


def _load(model_dir: Path):
    if not (model_dir / "config.json").is_file():
        raise VisionPretrainError(f"{model_dir} is not a model folder (no config.json)")
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=torch.float32, trust_remote_code=False
    )
    if model.config.model_type != "llava":
        raise VisionPretrainError(
            f"{model_dir}: vision pretraining supports LLaVA models, not {model.config.model_type}"
        )
    if model.config.vision_feature_select_strategy != "default":
        raise VisionPretrainError(
            f"{model_dir}: expected vision_feature_select_strategy 'default' (class token "
            f"dropped), got {model.config.vision_feature_select_strategy!r}"
        )
    return model, AutoProcessor.from_pretrained(model_dir, trust_remote_code=False).image_processor


def _plans(images: int, seed: int, stream: int, size: int) -> list[ImagePlan]:
    pairs = math.ceil(images / 2) * PAIRS_PER_IMAGE_PAIR
    return plan_split(pairs, size, np.random.default_rng([seed, stream]))[:images]


def _rendered(images, seed, stream, size, image_processor, vocabulary, bar):
    """Pixel values as the model's processor makes them, and which pictograms each image holds.

    Images are drawn and processed a chunk at a time into one tensor: processing 40,000 drawn
    images at once took 4 GB, their pixel values at the tower's input size take 0.5 GB.
    """
    index = {glyph: i for i, glyph in enumerate(vocabulary)}
    plans = _plans(images, seed, stream, size)
    targets = torch.zeros(len(plans), len(vocabulary))
    pixels = torch.empty(0)
    task = bar.add_task("drawing pictogram images", total=len(plans), loss="")
    for start in range(0, len(plans), RENDER_CHUNK):
        chunk = plans[start : start + RENDER_CHUNK]
        drawn = []
        for row, plan in enumerate(chunk, start=start):
            drawn.append(render_image(plan, size))
            for pictogram in (*plan.subjects, *plan.distractors):
                targets[row, index[base_glyph(pictogram.glyph)]] = 1
            bar.advance(task)
        values = image_processor(drawn, return_tensors="pt")["pixel_values"]
        if start == 0:
            pixels = values.new_empty((len(plans), *values.shape[1:]))
        pixels[start : start + len(chunk)] = values
    return pixels, targets


def _train(namer, pixels, targets, epochs, batch_size, learning_rate, bar) -> tuple[int, float]:
    batches = len(pixels) // batch_size
    if batches == 0 or epochs <= 0:
        raise VisionPretrainError(
            f"nothing to train: {len(pixels)} images, batch size {batch_size}, {epochs} epochs"
        )
    steps = epochs * batches
    optimizer = torch.optim.AdamW(namer.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, learning_rate, total_steps=steps, pct_start=0.1
    )
    task = bar.add_task("naming pictograms", total=steps, loss="")
    namer.train()
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        order = torch.randperm(len(pixels))
        for batch in order[: batches * batch_size].split(batch_size):
            loss = naming_loss(namer(pixels[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(task, advance=1, loss=f"loss {loss.item():.3f}")
    return steps, loss.item()
