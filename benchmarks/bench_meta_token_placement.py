"""What the meta token's vision placement costs over its llm placement, side by side in one run.

    .venv/bin/python benchmarks/bench_meta_token_placement.py [--hidden 256] [--layers 4]
    .venv/bin/python benchmarks/bench_meta_token_placement.py --gpu-7b [--repeats 10]

The same LLaVA weights as two Safe-VLMs whose head reads the meta token: the `llm` placement (a
token of the language model's input only) and the `vision` placement (a token appended to the
vision encoder's patches, carried through the projector and placed right after the image's
tokens). Both give the language model one token more per image; the vision placement adds one
token to the vision encoder's sequence besides. Timed on the same batch, the two models taking
turns so that other load on the machine hits both alike: (1) the forward pass (what training
and the image guard pay), (2) the vision encoder and projector alone, (3) generate with a fixed
number of new tokens. Medians and the ratio vision / llm are printed.

Weights are random: this measures cost only. Default: a small LLaVA (the tiny vision tower, a
`--hidden` wide, `--layers` deep language model), float32 on the CPU. `--gpu-7b`: a random
LLaVA-1.5-7B-shaped model (CLIP ViT-L/14 at 336 px, 576 patches) in bfloat16 on the GPU.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from benchkit import (
    add_llava_size_options,
    add_visual_guard,
    build_7b_shaped_llava,
    build_llava,
    llava_description,
    machine_lines,
    parse_with_gpu_7b,
    timed,
)
from PIL import Image
from transformers import GenerationConfig

from holisafe.core.records import Request
from holisafe.models.hf import HFModel
from holisafe.vgm import VGMSettings

PLACEMENTS = ("llm", "vision")


def load_models(root: Path, args) -> dict[str, HFModel]:
    """The same base weights with the module in each placement (same seed: the same head)."""
    plain = (
        build_7b_shaped_llava(root / "plain")
        if args.gpu_7b
        else build_llava(root / "plain", args.hidden, args.layers)
    )
    device, dtype = ("cuda", "bfloat16") if args.gpu_7b else ("cpu", "float32")
    models = {}
    for placement in PLACEMENTS:
        settings = VGMSettings(meta_token_placement=placement)
        folder = add_visual_guard(plain, root / placement, settings)
        models[placement] = HFModel(str(folder), device=device, dtype=dtype, batch_size=args.batch)
    return models


def requests(count: int) -> list[Request]:
    return [
        Request(
            query="Describe this picture in detail."[: 16 + i],
            image=Image.new("RGB", (48, 48), (40 * i % 256, 120, 200)),
        )
        for i in range(count)
    ]


def medians_taking_turns(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each call, after one untimed round; the calls take turns, in reversed
    order every other round, so that neither always runs first."""
    for call in calls.values():
        call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats):
        names = list(calls) if round_ % 2 == 0 else list(reversed(calls))
        for name in names:
            seconds[name].append(timed(calls[name])[0])
    return {name: statistics.median(values) for name, values in seconds.items()}


def report(title: str, medians: dict[str, float]) -> None:
    print(title)
    for name, seconds in medians.items():
        print(f"  {name:<7} {1000 * seconds:9.2f} ms")
    print(f"  ratio, vision over llm: {medians['vision'] / medians['llm']:.3f}x")


def forward(model: HFModel, inputs) -> Callable[[], object]:
    def call():
        with torch.inference_mode():
            return model.model(**inputs)

    return call


def encode_images(model: HFModel, inputs) -> Callable[[], object]:
    def call():
        with torch.inference_mode():
            return model.model.model.get_image_features(inputs["pixel_values"])

    return call


def generate(model: HFModel, inputs, tokens: int) -> Callable[[], object]:
    config = GenerationConfig(
        max_new_tokens=tokens,
        min_new_tokens=tokens,  # exactly `tokens` each, so early stops cannot skew the ratio
        do_sample=False,
        pad_token_id=model.processor.tokenizer.pad_token_id,
    )

    def call():
        with torch.inference_mode():
            return model.model.generate(**inputs, generation_config=config)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_llava_size_options(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per figure")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length in 3.")
    args = parse_with_gpu_7b(parser)

    print(*machine_lines(), sep="\n")
    with tempfile.TemporaryDirectory() as folder:
        models = load_models(Path(folder), args)
        print(f"model: {llava_description(Path(folder) / 'plain', args)}")
        batch = requests(args.batch)
        inputs = {name: model._inputs(batch) for name, model in models.items()}
        lengths = {name: tuple(i["input_ids"].shape) for name, i in inputs.items()}
        vision_tokens = {
            name: len(encode_images(model, inputs[name])().pooler_output[0])
            for name, model in models.items()
        }
        print(f"batch {args.batch}; language model input (batch, tokens): {lengths}")
        print(f"vision features per image (to the language model): {vision_tokens}")
        generate_repeats = max(3, args.repeats // 4)
        figures = [
            ("1. forward pass", forward, args.repeats),
            ("2. vision encoder + projector", encode_images, args.repeats),
            (
                f"3. generate, {args.max_new_tokens} new tokens",
                functools.partial(generate, tokens=args.max_new_tokens),
                generate_repeats,
            ),
        ]
        for title, make, repeats in figures:
            calls = {name: make(model, inputs[name]) for name, model in models.items()}
            report(f"{title} (median of {repeats}):", medians_taking_turns(calls, repeats))


if __name__ == "__main__":
    main()
