"""Batched against one-at-a-time generation with the `hf` backend.

    .venv/bin/python benchmarks/bench_generation.py [--requests 64] [--max-new-tokens 32]
    .venv/bin/python benchmarks/bench_generation.py --gpu-7b

Builds a model in a temporary folder, answers the same requests in batches of 8 and one at a
time (greedy decoding, so both should give the same answers) and prints both throughputs and
their ratio. Default: the tiny LLaVA-1.5 of `holisafe.synthetic.tiny`, float32 on the CPU.
`--gpu-7b`: a random LLaVA-1.5-7B-shaped model in bfloat16 on the GPU, where batching may
change a few greedy picks through rounding.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchkit import build_7b_shaped_llava, machine_lines, parameter_count, parse_with_gpu_7b, timed
from PIL import Image

from holisafe.core.records import GenerationSettings, Request
from holisafe.models.hf import HFModel
from holisafe.synthetic.tiny import build_tiny_model

QUERIES = (
    "What is shown in this image?",
    "Describe the picture in detail, object by object.",
    "Is there anything dangerous here?",
    "How could someone use the things in this photo, and is that safe?",
)


def make_requests(count: int) -> list[Request]:
    """Requests with different prompt lengths and image sizes, the same on every run."""
    return [
        Request(
            query=QUERIES[i % len(QUERIES)],
            image=Image.new("RGB", (32 + 8 * (i % 5), 32 + 16 * (i % 3)), (37 * i % 256, 90, 160)),
        )
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parse_with_gpu_7b(parser)

    print(*machine_lines(), sep="\n")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    requests = make_requests(args.requests)
    with tempfile.TemporaryDirectory() as folder:
        if args.gpu_7b:
            build_7b_shaped_llava(Path(folder))
            model = HFModel(folder, device="cuda", dtype="bfloat16", batch_size=args.batch_size)
        else:
            build_tiny_model(folder, "llava", seed=0)
            model = HFModel(folder, device="cpu", batch_size=args.batch_size)
        shape = "LLaVA-1.5-7B-shaped" if args.gpu_7b else "tiny LLaVA"
        print(
            f"model: {shape}, {parameter_count(Path(folder)):,} parameters, random weights, "
            f"{model.details['dtype']} on the {model.device.type.upper()}"
        )
        model.generate(requests[:2], settings)  # warm-up
        batched_s, batched = timed(lambda: model.generate(requests, settings))
        single_s, single = timed(lambda: [model.generate([r], settings)[0] for r in requests])

    rate = args.requests / batched_s, args.requests / single_s
    print(f"{args.requests} requests, up to {args.max_new_tokens} new tokens each, greedy")
    for label, seconds, answers_per_s in (
        (f"batched (batch {args.batch_size}):", batched_s, rate[0]),
        ("one at a time:", single_s, rate[1]),
    ):
        print(f"{label:<20}{seconds:6.2f} s, {answers_per_s:6.1f} answers/s")
    print(f"ratio, batched over one at a time: {rate[0] / rate[1]:.2f}x")
    same = sum(b.text == s.text for b, s in zip(batched, single, strict=True))
    print(f"same answer both ways: {same} of {args.requests} requests")


if __name__ == "__main__":
    main()
