"""`evaluate()` itself against a loopback server whose answer times are long-tailed.

    .venv/bin/python benchmarks/bench_eval_pipeline.py [--samples 480] [--median-ms 50] [--sigma 1]

The OpenAI-compatible stub from tests/stub_servers.py waits, before each answer, a time drawn
from a lognormal distribution (median `--median-ms`, shape `--sigma`; with the defaults the mean
is 82 ms, the 90th percentile 180 ms and the 99th 512 ms). The draw is seeded by the question,
so every configuration below waits the same times for the same samples. Timed, each on a fresh
store:

1. the ideal single pool: the `openai` backend's `generate` over every request at once, 16 in
   flight, with no store and no judge; and, for reference, the lower bound of 16 lanes (the
   waits alone, scheduled greedily in order);
2. `evaluate()` (answer, store, judge with the string judge) at concurrency 16;
3. `evaluate()` at concurrency 1.

1 and 2 are the median of `--repeats` runs (the machine may be shared), 3 is run once. The
goals: 2 within 1.25x of 1, and at least 12x faster than 3.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchkit import machine_lines, median_time

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.*

from tests.datafixtures import official_records, write_official
from tests.stub_servers import openai_stub

from holisafe.core.records import Request
from holisafe.data import load_samples
from holisafe.models import GenerationSettings, ModelOptions
from holisafe.models.openai_api import OpenAIModel
from holisafe.run.evaluate import evaluate

CONCURRENCY = 16
SETTINGS = GenerationSettings(max_new_tokens=16)


def write_bench(root: Path, count: int) -> Path:
    base = official_records()
    records = [
        base[k % len(base)] | {"id": k + 1, "query": f"question number {k + 1}?"}
        for k in range(count)
    ]
    return write_official(root, records)


def latency_of(median_s: float, sigma: float):
    """The stub's wait for a request: lognormal, seeded by the request's question."""

    def latency(body: dict) -> float:
        question = body["messages"][-1]["content"][-1]["text"]
        seed = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
        return random.Random(seed).lognormvariate(math.log(median_s), sigma)

    return latency


def lower_bound(waits: list[float], lanes: int) -> float:
    """The makespan of the waits on `lanes` lanes, each taking the next wait when free."""
    free = [0.0] * lanes
    for wait in waits:
        heapq.heappush(free, heapq.heappop(free) + wait)
    return max(free)


def timed_eval(bench: Path, url: str, concurrency: int, folder: Path) -> float:
    options = ModelOptions(base_url=url, api_key="k", concurrency=concurrency)
    start = time.perf_counter()
    folder.mkdir(exist_ok=True)
    outcome = evaluate(
        "openai/stub-model",
        bench,
        folder / f"c{concurrency}.db",
        settings=SETTINGS,
        options=options,
    )
    seconds = time.perf_counter() - start
    if outcome.response_errors or outcome.verdict_errors["string"]:
        raise SystemExit(f"failures: {outcome.response_errors[:3]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--median-ms", type=float, default=50.0)
    parser.add_argument("--sigma", type=float, default=1.0)
    args = parser.parse_args()

    latency = latency_of(args.median_ms / 1000, args.sigma)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bench = write_bench(folder / "bench", args.samples)
        samples = load_samples(bench).samples
        waits = [latency({"messages": [{"content": [{"text": s.query}]}]}) for s in samples]
        print(*machine_lines(), sep="\n")
        print(
            f"{args.samples} samples; waits lognormal, median {args.median_ms:g} ms, sigma "
            f"{args.sigma:g}: mean {1000 * sum(waits) / len(waits):.0f} ms, max "
            f"{1000 * max(waits):.0f} ms, total {sum(waits):.1f} s"
        )
        with openai_stub(api_key=None, latency_s=latency, reply="I can't help with that.") as stub:
            model = OpenAIModel("stub-model", base_url=stub.url, concurrency=CONCURRENCY)
            requests = [Request(query=s.query, image=s.image.load()) for s in samples]
            model.generate(requests[:2], SETTINGS)  # warm-up: connections, imports
            pool = median_time(lambda: model.generate(requests, SETTINGS), args.repeats)
            pipeline = statistics.median(
                timed_eval(bench, stub.url, CONCURRENCY, folder / str(k))
                for k in range(args.repeats)
            )
            sequential = timed_eval(bench, stub.url, 1, folder)
    bound = lower_bound(waits, CONCURRENCY)
    print(f"lower bound, {CONCURRENCY} lanes (waits only)   {bound:7.2f} s")
    print(f"ideal single pool, {CONCURRENCY} in flight        {pool:7.2f} s")
    print(
        f"evaluate(), concurrency {CONCURRENCY}             {pipeline:7.2f} s   "
        f"{pipeline / pool:.2f}x the single pool (goal <= 1.25x)"
    )
    print(
        f"evaluate(), concurrency 1              {sequential:7.2f} s   "
        f"{sequential / pipeline:.1f}x slower than concurrency {CONCURRENCY} (goal >= 12x)"
    )


if __name__ == "__main__":
    main()
