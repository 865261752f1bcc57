"""Throughput of one API model spread over 1, 2 and 3 endpoints of fixed latency.

    .venv/bin/python benchmarks/bench_endpoints.py [--requests 240] [--latency-ms 50]
        [--concurrency 4]

Starts three OpenAI-compatible stubs from tests/stub_servers.py, each in a process of its own
and answering every request after the same latency, and sends the same requests through the
`openai` backend to the first one, the first two, then all three, with the same concurrency
per endpoint. Prints each throughput and its ratio over one endpoint (the goal: >= 2.7x at 3).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import openai
from bench_api_concurrency import throughput as answers_per_second
from benchkit import machine_lines

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.stub_servers

from tests.stub_servers import openai_stub_process

from holisafe.core.records import GenerationSettings, Request
from holisafe.models.openai_api import OpenAIModel


def throughput(urls: list[str], concurrency: int, requests: list[Request]) -> float:
    """Answers per second; fails loudly if any request went unanswered."""
    model = OpenAIModel("stub-model", base_url=urls, api_key="k", concurrency=concurrency)
    model.generate(requests[: len(urls) * concurrency], GenerationSettings())  # warm-up
    return answers_per_second(model, requests)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=4, help="per endpoint")
    args = parser.parse_args()

    requests = [Request(query=f"question number {i}?") for i in range(args.requests)]
    print(*machine_lines(), f"openai {openai.__version__}", sep="\n")
    print(
        f"{args.requests} text requests; each endpoint a loopback OpenAI-compatible server in "
        f"its own process, {args.latency_ms:g} ms per request, {args.concurrency} at once"
    )
    with tempfile.TemporaryDirectory() as logs, ExitStack() as stack:
        stubs = [
            stack.enter_context(
                openai_stub_process(Path(logs) / f"{k}.log", latency_s=args.latency_ms / 1000)
            )
            for k in range(3)
        ]
        rates = {
            count: throughput([s.url for s in stubs[:count]], args.concurrency, requests)
            for count in (1, 2, 3)
        }
    ideal = 1000 / args.latency_ms * args.concurrency
    for count, rate in rates.items():
        print(
            f"{count} endpoint{'s' if count > 1 else ' '}  {rate:7.1f} answers/s "
            f"(ideal {ideal * count:5.0f}), {rate / rates[1]:4.2f}x one endpoint"
        )
    print(f"ratios side by side: 2/1 {rates[2] / rates[1]:.2f}x, 3/1 {rates[3] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
