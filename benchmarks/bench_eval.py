"""String judging throughput, end-to-end evaluation throughput, and a full HoliSafe-Bench run
extrapolated from it.

    .venv/bin/python benchmarks/bench_eval.py [--bench-pairs 570] [--max-new-tokens 128]
    .venv/bin/python benchmarks/bench_eval.py --gpu-7b [--samples 64]

1. String judging: the published string-matching judge over HoliSafe-Mini's reference
   responses (short refusals and answers) and over the same responses made about 2,000
   characters long (a long answer without a refusal phrase is the judge's slowest case):
   verdicts/s.
2. End to end: `holisafe.run.evaluate.evaluate` (generate, store each batch, judge with the string
   judge) of a model on HoliSafe-Mini's benchmark: samples/s, and the wall time a run over
   HoliSafe-Bench's 4,031 samples would take at that rate. Loading the model is not timed.

Default: the tiny LLaVA of `holisafe.synthetic.tiny` on the CPU, so the rate is mostly what the
harness around the model costs (image decoding, preprocessing, the store, judging), not what a
real model's run takes. `--gpu-7b`: a random LLaVA-1.5-7B-shaped model in bfloat16 on the GPU,
timed on the first `--samples` samples and extrapolated. Random weights answer noise and often
run to `--max-new-tokens`; the mean answer length is printed beside the rate.
"""

from __future__ import annotations

import argparse
import datetime
import math
import tempfile
from pathlib import Path

from benchkit import (
    HOLISAFE_BENCH_SAMPLES,
    build_7b_shaped_llava,
    machine_lines,
    parameter_count,
    parse_with_gpu_7b,
    timed,
)

from holisafe.core.records import GenerationSettings
from holisafe.data import Sample, load_samples
from holisafe.judges import StringJudge
from holisafe.models import ModelOptions
from holisafe.models.hf import HFModel
from holisafe.run.evaluate import evaluate
from holisafe.store import Store
from holisafe.synthetic.mini import generate_mini
from holisafe.synthetic.tiny import build_tiny_model

LONG_ANSWER_CHARS = 2_000


def judging_items(samples: list[Sample], count: int) -> list[tuple[Sample, str]]:
    """`count` (sample, reference response) pairs, cycling through `samples`."""
    return [(samples[i % len(samples)], samples[i % len(samples)].response) for i in range(count)]


def long_answers(samples: list[Sample], count: int) -> list[tuple[Sample, str]]:
    """`count` pairs of a safe sample and its helpful answer repeated to about 2,000 characters."""
    helpful = [s for s in samples if s.type == "SSS"]
    return [
        (sample, " ".join([text] * math.ceil(LONG_ANSWER_CHARS / len(text))))
        for sample, text in judging_items(helpful, count)
    ]


def report_judging(samples: list[Sample], count: int) -> None:
    print(f"1. string judge, {count:,} verdicts per set:")
    judge = StringJudge()
    sets = {
        "reference responses": judging_items(samples, count),
        "long helpful answers": long_answers(samples, count),
    }
    for label, items in sets.items():
        seconds, verdicts = timed(lambda items=items: judge.judge(items))
        mean_chars = sum(len(text) for _, text in items) / len(items)
        refused = sum(v.raw != "no refusal phrase" for v in verdicts) / len(verdicts)
        print(
            f"  {label:<20} {count / seconds:10,.0f} verdicts/s   mean {mean_chars:,.0f} "
            f"characters, {100 * refused:.0f}% refusals"
        )


def mean_answer_chars(store_path: Path, run_id: int) -> float:
    with Store(store_path, create=False) as store:
        texts = [r.response.text or "" for r in store.records(run_id) if r.response is not None]
    return sum(len(text) for text in texts) / len(texts)


def report_evaluation(bench_dir: Path, model: HFModel, options: ModelOptions, args) -> None:
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)

    def run(store: Path, limit: int | None):
        return evaluate(
            model.spec,
            bench_dir,
            store,
            settings=settings,
            options=options,
            limit=limit,
            model=model,
        )

    run(bench_dir.parent / "warm-up.sqlite", options.batch_size)
    store = bench_dir.parent / "runs.sqlite"
    seconds, outcome = timed(lambda: run(store, args.samples))
    if outcome.response_errors:
        failed = outcome.response_errors
        raise SystemExit(f"{len(failed)} responses failed, e.g. {failed[0]}")
    samples = outcome.generated
    rate = samples / seconds
    full = datetime.timedelta(seconds=round(HOLISAFE_BENCH_SAMPLES / rate))
    print(
        f"2. evaluate (generate, store, string judge), batch {options.batch_size}, up to "
        f"{args.max_new_tokens} new tokens, greedy:"
    )
    print(
        f"  {samples} samples in {seconds:.1f} s: {rate:.2f} samples/s, mean answer "
        f"{mean_answer_chars(store, outcome.run.id):,.0f} characters"
    )
    print(
        f"  a {HOLISAFE_BENCH_SAMPLES:,}-sample HoliSafe-Bench run at this rate: {full} (h:mm:ss), "
        f"{'this 7B-shaped model' if args.gpu_7b else 'the tiny model'} on this machine"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdicts", type=int, default=50_000, help="verdicts per judging set")
    parser.add_argument("--bench-pairs", type=int, default=570, help="HoliSafe-Mini bench size")
    parser.add_argument("--image-size", type=int, default=512, help="HoliSafe-Mini image side")
    parser.add_argument("--samples", type=int, help="samples to evaluate (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parse_with_gpu_7b(parser)
    if args.gpu_7b and args.samples is None:
        args.samples = 64

    print(*machine_lines(), sep="\n")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        mini = generate_mini(
            root / "mini", train_pairs=570, bench_pairs=args.bench_pairs, size=args.image_size
        )
        print(
            f"HoliSafe-Mini: {mini.bench_pairs} bench samples over {mini.bench_images} images "
            f"of {args.image_size} px; judging uses its {mini.train_pairs} reference responses"
        )
        report_judging(load_samples(mini.train_dir).samples, args.verdicts)
        if args.gpu_7b:
            options = ModelOptions(device="cuda", dtype="bfloat16", batch_size=args.batch_size)
            base, shape = build_7b_shaped_llava(root / "model"), "LLaVA-1.5-7B-shaped, bfloat16"
        else:
            options = ModelOptions(device="cpu", dtype="float32", batch_size=args.batch_size)
            base, shape = build_tiny_model(root / "model", "llava"), "tiny LLaVA, float32"
        model = HFModel(
            str(base), device=options.device, dtype=options.dtype, batch_size=options.batch_size
        )
        print(
            f"model: {shape} on the {model.device.type.upper()}, "
            f"{parameter_count(base) / 1e6:,.2f} M parameters, random weights"
        )
        report_evaluation(mini.bench_dir, model, options, args)


if __name__ == "__main__":
    main()
