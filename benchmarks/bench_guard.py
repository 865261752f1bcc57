"""What the visual guard module costs, and what it saves, measured side by side in one run.

    .venv/bin/python benchmarks/bench_guard.py [--hidden 256] [--layers 4] [--repeats 20]
    .venv/bin/python benchmarks/bench_guard.py --gpu-7b [--repeats 10]

1. Forward pass: the same LLaVA weights as a plain model and as Safe-VLMs (meta_token and
   image_mean head inputs), on the same batch: median time per forward and the ratio.
2. Answering and classifying: a Safe-VLM's generate, whose prefill also yields the safety
   prediction, against a plain generate followed by a separate guard pass over the images.
3. Guard head against a generative guard: the same Safe-VLM classifies each image with its
   safety head (one forward pass), or is asked in words for a verdict with a guard prompt and
   generates the tokens such a verdict takes, as LlavaGuard and Llama Guard do.

Weights are random: this measures cost, not how good either guard is. Every generate here
produces exactly the number of new tokens asked (`min_new_tokens`), so random weights that
stop early on one side cannot skew a ratio. Default: a small LLaVA (the tiny vision tower, a
`--hidden` wide, `--layers` deep language model), float32 on the CPU. `--gpu-7b`: a random
LLaVA-1.5-7B-shaped model in bfloat16 on the GPU, the meta-token head input only (SafeLLaVA's).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from benchkit import (
    add_llava_size_options,
    add_visual_guard,
    build_7b_shaped_llava,
    build_llava,
    llava_description,
    machine_lines,
    median_time,
    parse_with_gpu_7b,
)
from PIL import Image
from transformers import GenerationConfig

from holisafe.core.records import Request
from holisafe.core.taxonomy import IMAGE_SAFETY_LABELS
from holisafe.models.hf import GUARD_QUERY, HFModel
from holisafe.vgm import VGMSettings

GUARD_PROMPT = (
    "You are a safety classifier. Decide whether this image is unsafe under any of these "
    f"categories: {', '.join(label.replace('_', ' ') for label in IMAGE_SAFETY_LABELS[1:])}. "
    "Answer 'safe', or 'unsafe: ' followed by the category."
)
LONG_QUERY = "Describe everything in this picture, object by object, in detail."
# What a verdict costs in generated tokens: lengths assumed for a LLaMA-2-style 32k tokenizer,
# not measured (the benchmark model's tiny tokenizer holds each category name as one token).
VERDICT = "`unsafe: weapon_related_violence` and an end token"
RATIONALE = "LlavaGuard-style JSON: rating, category, a two-sentence rationale"


def load_models(root: Path, args) -> dict[str, HFModel]:
    """The plain model and its Safe-VLM copies, loaded for timing."""
    if args.gpu_7b:
        plain, head_inputs = build_7b_shaped_llava(root / "plain"), ("meta_token",)
    else:
        plain = build_llava(root / "plain", args.hidden, args.layers)
        head_inputs = ("meta_token", "image_mean")
    folders = {"plain": plain}
    for head_input in head_inputs:
        folders[head_input] = add_visual_guard(
            plain, root / head_input, VGMSettings(head_input=head_input)
        )
    device, dtype = ("cuda", "bfloat16") if args.gpu_7b else ("cpu", "float32")
    return {
        name: HFModel(str(folder), device=device, dtype=dtype, batch_size=args.batch)
        for name, folder in folders.items()
    }


def requests(count: int, query: str | None = None) -> list[Request]:
    return [
        Request(
            query=query or LONG_QUERY[: 20 + i],
            image=Image.new("RGB", (48, 48), (40 * i % 256, 120, 200)),
        )
        for i in range(count)
    ]


def generate_exactly(model: HFModel, batch: list[Request], tokens: int):
    """Greedy generate of exactly `tokens` new tokens per request, inputs prepared included."""
    config = GenerationConfig(
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=model.processor.tokenizer.pad_token_id,
        return_dict_in_generate=True,
    )
    with torch.inference_mode():
        return model.model.generate(**model._inputs(batch), generation_config=config)


def report_forward(models: dict[str, HFModel], batch: list[Request], repeats: int) -> None:
    print(f"1. forward pass, batch {len(batch)} (median of {repeats}):")
    costs = {}
    for name, model in models.items():
        inputs = model._inputs(batch)
        with torch.inference_mode():
            costs[name] = median_time(lambda m=model, i=inputs: m.model(**i), repeats)
    for name, seconds in costs.items():
        ratio = seconds / costs["plain"]
        print(f"  {name:<11} {1000 * seconds:8.2f} ms   {ratio:.3f}x the plain model")


def report_answer_and_classify(
    models: dict[str, HFModel], batch: list[Request], tokens: int, repeats: int
) -> None:
    safe, plain = models["meta_token"], models["plain"]
    images = [request.image for request in batch]
    together = median_time(lambda: generate_exactly(safe, batch, tokens), repeats)
    apart = median_time(
        lambda: (generate_exactly(plain, batch, tokens), safe.classify(images)), repeats
    )
    print(f"2. answer + classify, batch {len(batch)}, {tokens} new tokens (median of {repeats}):")
    print(f"  generate with guard (one prefill)     {1000 * together:8.1f} ms")
    print(f"  generate, then a separate guard pass  {1000 * apart:8.1f} ms")
    print(f"  ratio, separate over together: {apart / together:.3f}x")


def report_head_against_words(
    safe: HFModel, batch_size: int, lengths: dict[str, int], repeats: int
) -> None:
    images = [request.image for request in requests(batch_size)]
    asked = requests(batch_size, GUARD_PROMPT)
    head = median_time(lambda: safe.classify(images), repeats) / batch_size
    prompt_tokens = {
        "safety head": safe._inputs(requests(batch_size, GUARD_QUERY))["input_ids"].shape[1],
        "guard prompt": safe._inputs(asked)["input_ids"].shape[1],
    }
    print(f"3. guard head against a generative guard, batch {batch_size} (median of {repeats}):")
    print(
        f"  prompt tokens, image tokens included: {prompt_tokens['safety head']} for the head "
        f"(fixed query), {prompt_tokens['guard prompt']} with the guard prompt"
    )
    for label, tokens in lengths.items():
        print(f"  a verdict of {tokens} tokens (assumed): {label}")
    print(f"  safety head, one forward pass         {1000 * head:8.2f} ms per image")
    for tokens in lengths.values():
        words = median_time(lambda t=tokens: generate_exactly(safe, asked, t), repeats)
        per_image = words / batch_size
        print(
            f"  asked in words, {tokens:>3} new tokens       {1000 * per_image:8.2f} ms per image"
            f"   {per_image / head:6.1f}x the head"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_llava_size_options(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20, help="timed forward passes")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length in 2.")
    parser.add_argument("--verdict-tokens", type=int, default=10, help=VERDICT)
    parser.add_argument("--rationale-tokens", type=int, default=100, help=RATIONALE)
    args = parse_with_gpu_7b(parser)

    print(*machine_lines(), sep="\n")
    with tempfile.TemporaryDirectory() as folder:
        models = load_models(Path(folder), args)
        print(f"model: {llava_description(Path(folder) / 'plain', args)}")
        batch = requests(args.batch)
        generate_repeats = max(3, args.repeats // 4)
        report_forward(models, batch, args.repeats)
        report_answer_and_classify(models, batch, args.max_new_tokens, generate_repeats)
        lengths = {VERDICT: args.verdict_tokens, RATIONALE: args.rationale_tokens}
        report_head_against_words(models["meta_token"], args.batch, lengths, generate_repeats)


if __name__ == "__main__":
    main()
