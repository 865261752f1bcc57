"""`holisafe serve` with and without `--gate` on traffic that is half unsafe, many clients at once.

    .venv/bin/python benchmarks/bench_gate.py [--clients 50] [--per-client 2] [--rounds 5]

Builds a small Safe-VLM (a random LLaVA, `--hidden` wide, `--layers` deep, with a seeded visual
guard module whose last head layer is rewritten so that it scores a pool of pictures from about
0.1 to 0.9), and takes as the gate the midpoint between the pool's lower and upper halves: half
the pictures score above it ("unsafe"), half below. Two servers of that model run
side by side on loopback, one with `--gate` and one without; `clients` threads at once send
them `clients * per-client` image + question requests, unsafe and safe pictures taking turns,
through the official openai client. The servers take turns for `--rounds` rounds; prints each
one's median throughput, their ratio, each round's ratio and their median, and how many replies
the gating server refused.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import os
import statistics
import tempfile
from pathlib import Path

import openai
import torch
from benchkit import (
    add_llava_size_options,
    add_visual_guard,
    build_llava,
    free_port,
    machine_lines,
    parameter_count,
    released_together,
    start_server,
)
from PIL import Image
from run_all import cpu_model

from holisafe.core.records import GenerationSettings, Request
from holisafe.models.hf import HFModel
from holisafe.vgm import VGMSettings

NAME = "bench-safe-llava"
STARTUP_TIMEOUT_S = 600
POOL = 16  # pictures scored; the upper half is the unsafe traffic
SPAN = 4.4  # the pool's safe logits, from lowest to highest: scores from about 0.1 to 0.9
QUERY = "What is shown in this picture?"


def pictures(count: int) -> list[Image.Image]:
    colours = [(37 * i % 256, 90 + 9 * i, 160 - 7 * i) for i in range(count)]
    return [Image.new("RGB", (64, 64), colour) for colour in colours]


def predictions(model: HFModel, pool: list[Image.Image]) -> list:
    """The head's prediction on each picture, asked the clients' question."""
    requests = [Request(query=QUERY, image=image) for image in pool]
    return [r.safety for r in model.generate(requests, GenerationSettings(max_new_tokens=1))]


def control_head(folder: Path, pool: list[Image.Image]) -> None:
    """Rewrite the saved head's last layer so that it scores the pool around 0.5: only its
    `safe` logit varies, along the direction its weights had, scaled and shifted so that the
    pool's logits span SPAN around their median (the other labels' logits are 0)."""
    model = HFModel(f"hf/{folder}", device="cpu")
    last = model.model.img_safety_head.mlp[-1]
    safe = model.safety_categories.index("safe")
    others = len(model.safety_categories) - 1
    with torch.no_grad():
        direction = last.weight[safe].clone()
        last.weight.zero_()
        last.bias.zero_()
        last.weight[safe] = direction
    # p(safe) = e^l / (e^l + others), so l = log(others * p / (1 - p))
    logits = [
        math.log(others * p.probs["safe"] / (1 - p.probs["safe"])) for p in predictions(model, pool)
    ]
    scale = SPAN / (max(logits) - min(logits))
    with torch.no_grad():
        last.weight[safe] *= scale
        last.bias[safe] = math.log(others) - scale * statistics.median(logits)
    model.model.save_pretrained(folder)


def split_by_score(folder: Path, pool: list[Image.Image]) -> tuple[list, list, float]:
    """(unsafe pictures, safe pictures, the gate between them), as the head scores the requests
    the clients will send."""
    model = HFModel(f"hf/{folder}", device="cpu")
    scores = [p.unsafe for p in predictions(model, pool)]
    ranked = sorted(zip(scores, range(POOL), strict=True))
    half = POOL // 2
    below, above = ranked[half - 1][0], ranked[half][0]
    if above - below < 1e-4:  # too close for both servers' floating point to agree
        raise SystemExit(f"the head scores the pool too close together: {below}, {above}")
    gate = (below + above) / 2
    unsafe = [pool[i] for _, i in ranked[half:]]
    safe = [pool[i] for _, i in ranked[:half]]
    return unsafe, safe, gate


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def concurrent(client: openai.OpenAI, urls: list[str], clients: int, max_tokens: int) -> tuple:
    """(seconds, replies the server gated) for `clients` threads, released together, sending
    the requests of `urls` (request k goes to thread k % clients)."""
    gated: list[bool] = []

    def send(c: int) -> None:
        for url in urls[c::clients]:
            content = [{"type": "image_url", "image_url": {"url": url}}]
            content.append({"type": "text", "text": QUERY})
            reply = client.chat.completions.create(
                model=NAME,
                messages=[{"role": "user", "content": content}],
                max_tokens=max_tokens,
                temperature=0,
            )
            gated.append(bool((reply.model_extra.get("holisafe") or {}).get("gated")))

    return released_together(clients, send), sum(gated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="turns each server takes")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="the servers' max batch")
    add_llava_size_options(parser)
    args = parser.parse_args()
    count = args.clients * args.per_client

    print(*machine_lines(), sep="\n")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"cpu: {cpu_model()}, shared with other jobs; load average at the start: {load}")
    with tempfile.TemporaryDirectory() as tmp:
        plain = build_llava(Path(tmp) / "plain", args.hidden, args.layers)
        folder = add_visual_guard(plain, Path(tmp) / NAME, VGMSettings())
        pool = pictures(POOL)
        control_head(folder, pool)
        unsafe, safe, gate = split_by_score(folder, pool)
        print(
            f"model: Safe-LLaVA (meta token), language model {args.hidden} wide x {args.layers} "
            f"layers, float32 on the CPU, {parameter_count(plain) / 1e6:,.1f} M parameters "
            f"before the module, random weights; server max batch {args.batch_size}, "
            "batch wait 10 ms"
        )
        print(
            f"{count} requests from {args.clients} concurrent clients, each a 64 px PNG + a "
            f"question, max_tokens {args.max_tokens}, greedy; half the pictures score above the "
            f"gate {gate:.4f} (unsafe), half below"
        )
        turns = [unsafe if k % 2 == 0 else safe for k in range(count)]
        traffic = [data_url(side[k // 2 % len(side)]) for k, side in enumerate(turns)]
        common = ["--model", f"hf/{folder}", "--batch-size", str(args.batch_size)]
        common += ["--device", "cpu", "--served-model-name", NAME]
        ports = {"ungated": free_port(), "gated": free_port()}
        flags = {"ungated": [], "gated": ["--gate", repr(gate)]}
        servers = {}
        try:
            for name, port in ports.items():
                servers[name] = start_server([*common, *flags[name]], port, STARTUP_TIMEOUT_S)
            clients = {
                name: openai.OpenAI(
                    base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600
                )
                for name, port in ports.items()
            }
            for client in clients.values():  # warm-up
                concurrent(client, traffic[:4], 4, args.max_tokens)
            seconds: dict[str, list[float]] = {name: [] for name in ports}
            refused: dict[str, int] = {}
            for _ in range(args.rounds):
                for name, client in clients.items():
                    took, refused[name] = concurrent(client, traffic, args.clients, args.max_tokens)
                    seconds[name].append(took)
        finally:
            for server in servers.values():
                server.terminate()
                server.wait()
    rates = {name: count / statistics.median(times) for name, times in seconds.items()}
    print(f"median of {args.rounds} rounds per server, the servers taking turns")
    for name in ports:
        print(
            f"{name:8s} {statistics.median(seconds[name]):7.2f} s  {rates[name]:6.2f} requests/s  "
            f"{refused[name]} of {count} replies gated  (rounds: "
            + ", ".join(f"{t:.2f}" for t in seconds[name])
            + " s)"
        )
    # each round's two measurements ran back to back, so their ratio is the least disturbed by
    # load that comes and goes on a shared machine
    ratios = [u / g for u, g in zip(seconds["ungated"], seconds["gated"], strict=True)]
    each = ", ".join(f"{r:.2f}" for r in ratios)
    print(
        f"gated / ungated throughput: {rates['gated'] / rates['ungated']:.2f}x of the medians; "
        f"per round {each}, median {statistics.median(ratios):.2f}x"
    )


if __name__ == "__main__":
    main()
