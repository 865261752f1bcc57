"""Training throughput with and without the visual guard module, on HoliSafe-Mini.

    .venv/bin/python benchmarks/bench_training.py [--steps 40] [--batch-size 16]
    .venv/bin/python benchmarks/bench_training.py --gpu-7b [--steps 20] [--repeats 1]

Trains the same model on the same batches with the module (`meta_token` and `image_mean` head
inputs) and without (`--vgm none`), through the library's own Trainer set-up, and
prints samples/s of each (the median of `--repeats` runs, the settings taking turns, so that
other load on the machine hits all alike) and their ratio to the run without the module. The
first steps of a run are a warm-up and are not timed.

Default: a tiny LLaVA-1.5 on the CPU, full fine-tuning. `--gpu-7b`: a randomly initialised
model shaped like LLaVA-1.5-7B (CLIP ViT-L/14-336, 576 image tokens, a 7B LLaMA), LoRA on a
bfloat16 base with bfloat16 autocast, on the GPU; it also prints the peak GPU memory and the
time one epoch of HoliSafe's 10,951 training pairs would take.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from benchkit import build_7b_shaped_llava, machine_lines, parse_with_gpu_7b
from transformers import AutoProcessor, PrinterCallback, TrainerCallback

from holisafe.data import load_samples
from holisafe.synthetic.mini import generate_mini
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.train import (
    SafetyTrainer,
    TrainSettings,
    collator_for,
    trainable_model,
    training_arguments,
)

HOLISAFE_TRAIN_PAIRS = 10_951
WARM_UP_STEPS = 3
VGM_RUNS = ("none", "image_mean", "meta_token")


class StepClock(TrainerCallback):
    """Wall time of each optimizer step's end."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


@dataclass(frozen=True)
class Throughput:
    vgm: str
    samples_per_s: float
    peak_memory_gib: float | None


def measure(base: Path, data: Path, out: Path, vgm: str, args) -> Throughput:
    settings = TrainSettings(
        base=f"hf/{base}",
        data=str(data),
        out=str(out),
        vgm=vgm,
        lora=args.gpu_7b,
        batch_size=args.batch_size,
        max_steps=args.steps + WARM_UP_STEPS,
        save_steps=10**9,
        log_steps=10**9,
    )
    processor = AutoProcessor.from_pretrained(base)
    model = trainable_model(settings, str(base), processor)
    clock = StepClock()
    trainer = SafetyTrainer(
        model=model,
        args=training_arguments(settings, out, has_eval=False),
        data_collator=collator_for(model, processor),
        train_dataset=load_samples(data).samples,
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)  # only the figures below go to the output
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = clock.ends[WARM_UP_STEPS - 1 :]
    samples_per_s = args.steps * args.batch_size / (timed[-1] - timed[0])
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Throughput(vgm, samples_per_s, peak)


def median_run(runs: list[Throughput]) -> Throughput:
    return sorted(runs, key=lambda run: run.samples_per_s)[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per run")
    parser.add_argument("--batch-size", type=int, help="default: 16 on the CPU, 4 with --gpu-7b")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, in turn")
    args = parse_with_gpu_7b(parser)
    args.batch_size = args.batch_size or (4 if args.gpu_7b else 16)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        pairs = (args.steps + WARM_UP_STEPS) * args.batch_size
        mini = generate_mini(root / "mini", train_pairs=pairs, bench_pairs=95)
        if args.gpu_7b:
            base = build_7b_shaped_llava(root / "model")
        else:
            base = build_tiny_model(root / "model", "llava")
        runs = [
            measure(base, mini.train_dir, root / f"{vgm}-{repeat}", vgm, args)
            for repeat in range(args.repeats)
            for vgm in VGM_RUNS
        ]
    results = [median_run([r for r in runs if r.vgm == vgm]) for vgm in VGM_RUNS]

    print(*machine_lines(), sep="\n")
    shape = "LLaVA-1.5-7B-shaped, LoRA, bfloat16 base" if args.gpu_7b else "tiny LLaVA, full"
    print(f"model: {shape}; batch {args.batch_size}, {args.steps} timed steps per run")
    print(f"median of {args.repeats} runs per setting, the settings taking turns")
    plain = results[0].samples_per_s
    for result in results:
        line = f"vgm {result.vgm:<11}{result.samples_per_s:8.2f} samples/s"
        line += f"   {result.samples_per_s / plain:.3f}x of no module"
        if result.peak_memory_gib is not None:
            epoch_h = HOLISAFE_TRAIN_PAIRS / result.samples_per_s / 3600
            line += f"   peak {result.peak_memory_gib:.1f} GiB, {epoch_h:.2f} h per 10,951 pairs"
        print(line)


if __name__ == "__main__":
    main()
