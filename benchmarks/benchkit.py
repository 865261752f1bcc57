"""What the benchmark scripts share: the models they build, timing, the machine they run on.

The scripts run as `.venv/bin/python benchmarks/<script>.py`, which puts this folder on the
import path, so they import this module as `benchkit`.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import torch
import transformers
from PIL import Image
from transformers import AutoConfig, AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

from holisafe.synthetic.tiny import build_tiny_model
from holisafe.vgm import VGMSettings, convert_folder

T = TypeVar("T")

HOLISAFE_BENCH_SAMPLES = 4_031
# LLaVA-1.5-7B: a LLaMA-2-7B language model behind CLIP ViT-L/14 at 336 px (576 image tokens).
TEXT_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "max_position_embeddings": 4096,
    "vocab_size": 32064,
}
VISION_7B = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}
GPU_7B_HELP = "a random LLaVA-1.5-7B-shaped model in bfloat16 on the GPU"


def parse_with_gpu_7b(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments, with `--gpu-7b` added; asking for it without a GPU is a usage error."""
    parser.add_argument("--gpu-7b", action="store_true", help=GPU_7B_HELP)
    args = parser.parse_args()
    if args.gpu_7b and not torch.cuda.is_available():
        parser.error("--gpu-7b needs a CUDA GPU")
    return args


def synchronize() -> None:
    """Wait for queued GPU work, so that a timer around it measures it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function: Callable[[], T]) -> tuple[float, T]:
    """(seconds, result) of one call."""
    synchronize()
    start = time.perf_counter()
    result = function()
    synchronize()
    return time.perf_counter() - start, result


def median_time(function: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls, after one untimed warm-up call."""
    function()
    return statistics.median(timed(function)[0] for _ in range(repeats))


def picture_messages(i: int) -> list[dict]:
    """Chat messages asking about a PNG picture of its own: 64-112 px wide, colour by `i`."""
    image = Image.new("RGB", (64 + 16 * (i % 4), 64), (37 * i % 256, 90, 160))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}]
    content.append({"type": "text", "text": f"What is shown in picture {i}?"})
    return [{"role": "user", "content": content}]


def released_together(clients: int, work: Callable[[int], object]) -> float:
    """Seconds for `clients` threads, released at once, each to run `work(c)`; any error a
    client raised ends the benchmark."""
    barrier = threading.Barrier(clients + 1)
    failures: list[BaseException] = []

    def run(c: int) -> None:
        barrier.wait()
        try:
            work(c)
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} clients failed, e.g. {failures[0]!r}")
    return seconds


def machine_lines() -> list[str]:
    """What the figures were measured on, for the first lines of a script's output."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads()
    return [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{threads} torch thread{'s' if threads > 1 else ''}, {device}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
    ]


def parameter_count(folder: Path) -> int:
    """Parameters of the model saved in `folder`, counted without loading its weights."""
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


def add_llava_size_options(parser: argparse.ArgumentParser) -> None:
    """`--hidden` and `--layers`: the CPU model's language model size (`build_llava`)."""
    parser.add_argument("--hidden", type=int, default=256, help="language model width (CPU)")
    parser.add_argument("--layers", type=int, default=4, help="language model depth (CPU)")


def llava_description(folder: Path, args: argparse.Namespace) -> str:
    """What the model a run built in `folder` is, for its `model:` line."""
    if args.gpu_7b:
        shape = "LLaVA-1.5-7B-shaped, bfloat16 on the GPU"
    else:
        shape = f"LLaVA, text {args.hidden} wide x {args.layers} layers, float32 on the CPU"
    return f"{shape}, {parameter_count(folder) / 1e6:,.1f} M parameters, random weights"


def build_llava(folder: Path, hidden: int, layers: int) -> Path:
    """A LLaVA with the tiny model's vision tower and tokenizer and a language model `hidden`
    wide and `layers` deep, random weights (seed 0), float32."""
    tiny = build_tiny_model(folder.with_name(folder.name + "-tiny"), "llava", seed=0)
    config = AutoConfig.from_pretrained(tiny)
    text = config.text_config
    text.hidden_size, text.intermediate_size = hidden, 4 * hidden
    text.num_hidden_layers, text.num_attention_heads = layers, max(1, hidden // 64)
    text.num_key_value_heads = text.num_attention_heads
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    AutoProcessor.from_pretrained(tiny).save_pretrained(folder)
    return folder


def fill_vocabulary(tokenizer, vocab_size: int) -> None:
    """Add words `w<id>` to `tokenizer` until it has `vocab_size` tokens, so that every id a
    model with that vocabulary emits decodes to text (the tiny tokenizer has far fewer ids than
    LLaVA's 32,064, and an unknown id decodes to nothing: an empty answer, an error)."""
    missing = vocab_size - len(tokenizer)
    if missing > 0:
        tokenizer.add_tokens([f" w{i}" for i in range(len(tokenizer), vocab_size)])


def build_7b_shaped_llava(folder: Path, device: str = "cuda") -> Path:
    """A random LLaVA-1.5-7B-shaped model in bfloat16 with the tiny tokenizer filled up to the
    7B vocabulary, built on `device` (a 7B model takes a long time to initialise on a CPU)."""
    build_tiny_model(folder, "llava")
    processor = AutoProcessor.from_pretrained(folder)
    fill_vocabulary(processor.tokenizer, TEXT_7B["vocab_size"])
    side, patch = VISION_7B["image_size"], VISION_7B["patch_size"]
    processor.image_processor.size = {"shortest_edge": side}
    processor.image_processor.crop_size = {"height": side, "width": side}
    processor.patch_size = patch
    tokenizer = processor.tokenizer
    config = LlavaConfig(
        text_config=TEXT_7B | {"pad_token_id": tokenizer.pad_token_id},
        vision_config=VISION_7B,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(side // patch) ** 2,
    )
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        model = LlavaForConditionalGeneration(config)
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def add_visual_guard(plain: Path, out: Path, settings: VGMSettings) -> Path:
    """A Safe-VLM copy of the model in `plain`: the same weights plus a new, seeded module."""
    convert_folder(str(plain), str(out), settings)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(arguments: list[str], port: int, timeout_s: float, **popen) -> subprocess.Popen:
    """`holisafe serve ARGUMENTS --port PORT` in a child process, once its /health answers."""
    command = [sys.executable, "-m", "holisafe", "serve", *arguments, "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--log-level", "warning"], stdout=subprocess.DEVNULL, **popen
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            why = server.stderr.read().decode()[-2000:] if server.stderr else ""
            raise SystemExit(f"the server exited with status {server.returncode}: {why}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"the server did not answer within {timeout_s} s")
