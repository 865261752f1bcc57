"""Concurrent against sequential requests with the `openai` backend, on a loopback server.

    .venv/bin/python benchmarks/bench_api_concurrency.py [--requests 64] [--latency-ms 100]

Starts the OpenAI-compatible stub from tests/stub_servers.py with a fixed latency per request,
sends the same image + query requests one at a time (concurrency 1) and then 8 and 16 at a
time, and prints each throughput and its ratio over the sequential one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import openai
from benchkit import machine_lines
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.stub_servers

from tests.stub_servers import openai_stub

from holisafe.core.records import GenerationSettings, Request
from holisafe.models.openai_api import OpenAIModel


def make_requests(count: int) -> list[Request]:
    """Small images of a few sizes, so that every request also pays for its PNG encoding."""
    return [
        Request(
            query=f"What is shown in picture {i}?",
            image=Image.new("RGB", (64 + 16 * (i % 4), 64), (37 * i % 256, 90, 160)),
        )
        for i in range(count)
    ]


def throughput(model: OpenAIModel, requests: list[Request]) -> tuple[float, float]:
    """(seconds, answers per second); fails loudly if any request went unanswered."""
    start = time.perf_counter()
    responses = model.generate(requests, GenerationSettings(max_new_tokens=16))
    seconds = time.perf_counter() - start
    failed = [response.error for response in responses if not response.ok]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed, e.g. {failed[0]}")
    return seconds, len(requests) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16])
    args = parser.parse_args()

    requests = make_requests(args.requests)
    print(*machine_lines(), f"openai {openai.__version__}", sep="\n")
    print(
        f"{args.requests} requests with a 64-112 px image each, to a loopback "
        f"OpenAI-compatible server that takes {args.latency_ms:g} ms per request"
    )
    with openai_stub(latency_s=args.latency_ms / 1000) as stub:
        results = {}
        for concurrency in [1, *args.concurrency]:
            model = OpenAIModel(
                "stub-model", base_url=stub.url, api_key=stub.api_key, concurrency=concurrency
            )
            model.generate(requests[:2], GenerationSettings())  # warm-up: connections, imports
            stub.max_in_flight = 0
            results[concurrency] = (*throughput(model, requests), stub.max_in_flight)
    sequential = results[1][1]
    for concurrency, (seconds, rate, in_flight) in results.items():
        label = "sequential (concurrency 1)" if concurrency == 1 else f"concurrency {concurrency}"
        print(
            f"{label:<28}{seconds:6.2f} s, {rate:6.1f} answers/s, "
            f"{rate / sequential:5.2f}x sequential (ideal {concurrency}x), "
            f"at most {in_flight} at the server at once"
        )


if __name__ == "__main__":
    main()
