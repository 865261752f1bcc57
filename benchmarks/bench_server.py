"""`holisafe serve` under concurrent clients against the same requests sent one at a time.

    .venv/bin/python benchmarks/bench_server.py [--clients 50] [--per-client 2] [--hidden 256]
    .venv/bin/python benchmarks/bench_server.py --gpu-7b [--clients 16]

Builds a small LLaVA (random weights, `--hidden` wide, `--layers` deep), starts `holisafe
serve` on it in its own process on loopback, and sends image + question requests through the
official openai client: first `clients * per-client` requests one after another, then the same
requests from `clients` threads at once. Prints both throughputs, their ratio and how the
server batched (from /health). `--gpu-7b`: the server runs a random LLaVA-1.5-7B-shaped model
in bfloat16 on the GPU instead.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx
import openai
from benchkit import (
    add_llava_size_options,
    build_7b_shaped_llava,
    build_llava,
    free_port,
    machine_lines,
    parameter_count,
    parse_with_gpu_7b,
    picture_messages,
    released_together,
    start_server,
)

NAME = "bench-llava"
STARTUP_TIMEOUT_S = 600


def ask(client: openai.OpenAI, i: int, max_tokens: int) -> None:
    completion = client.chat.completions.create(
        model=NAME, messages=picture_messages(i), max_tokens=max_tokens, temperature=0
    )
    if not isinstance(completion.choices[0].message.content, str):
        raise RuntimeError(f"request {i}: no answer")


def sequential(client: openai.OpenAI, count: int, max_tokens: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        ask(client, i, max_tokens)
    return time.perf_counter() - start


def concurrent(client: openai.OpenAI, clients: int, per_client: int, max_tokens: int) -> float:
    """Seconds for `clients` threads, released together, to send `per_client` requests each."""

    def send(c: int) -> None:
        for k in range(per_client):
            ask(client, c * per_client + k, max_tokens)

    return released_together(clients, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="the server's max batch")
    add_llava_size_options(parser)
    parser.add_argument(
        "--threads", type=int, help="torch threads in the server (default: torch's choice)"
    )
    args = parse_with_gpu_7b(parser)
    count = args.clients * args.per_client

    print(*machine_lines(), sep="\n")
    with tempfile.TemporaryDirectory() as tmp:
        if args.gpu_7b:
            folder = build_7b_shaped_llava(Path(tmp) / NAME)
            shape = "LLaVA-1.5-7B-shaped, bfloat16 on the GPU"
        else:
            folder = build_llava(Path(tmp) / NAME, args.hidden, args.layers)
            shape = f"LLaVA, language model {args.hidden} wide x {args.layers} layers, float32"
        print(
            f"model: {shape}, {parameter_count(folder) / 1e6:,.1f} M parameters, random "
            f"weights; server max batch {args.batch_size}, batch wait 10 ms, torch threads "
            f"{args.threads or 'default'}"
        )
        print(
            f"{count} requests, each a 64-112 px PNG + a question, max_tokens {args.max_tokens}, "
            "greedy, through the openai client on loopback"
        )
        port = free_port()
        device = ["--device", "cuda", "--dtype", "bfloat16"] if args.gpu_7b else ["--device", "cpu"]
        arguments = ["--model", f"hf/{folder}", "--batch-size", str(args.batch_size), *device]
        threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
        server = start_server(arguments, port, STARTUP_TIMEOUT_S, env=os.environ | threads)
        try:
            root = f"http://127.0.0.1:{port}"
            client = openai.OpenAI(base_url=f"{root}/v1", api_key="unused", timeout=600)
            sequential(client, 4, args.max_tokens)  # warm-up
            one_by_one = sequential(client, count, args.max_tokens)
            before = httpx.get(f"{root}/health").json()
            together = concurrent(client, args.clients, args.per_client, args.max_tokens)
            after = httpx.get(f"{root}/health").json()
        finally:
            server.terminate()
            server.wait()
    batches = after["batches"] - before["batches"]
    print(f"sequential (1 client):  {one_by_one:7.2f} s, {count / one_by_one:6.2f} requests/s")
    print(
        f"{args.clients} concurrent clients: {together:7.2f} s, {count / together:6.2f} "
        f"requests/s, {one_by_one / together:.2f}x sequential"
    )
    print(
        f"server batches while concurrent: {batches} model calls for {count} requests "
        f"(mean {count / batches:.1f}, largest {after['largest_batch']})"
    )


if __name__ == "__main__":
    main()
