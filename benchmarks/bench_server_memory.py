"""`holisafe serve`'s memory under concurrent maximum-size image requests, against its bound.

    .venv/bin/python benchmarks/bench_server_memory.py [--clients 96] [--max-pending 64]

Starts `holisafe serve` on the tiny LLaVA in its own process on loopback, with the default
limits (`--max-pending` aside), and fires `--clients` chat requests at once, each carrying an
image at both image limits (16,000,000 pixels in a PNG just under 8 MiB). Meanwhile it samples
the server's resident memory and times GET /health. Prints the server's memory at rest and at
its peak (the kernel's high-water mark), the bound `ServeLimits.memory_bound` states for what
requests hold, the answers by status (requests past `--max-pending` get 503) and /health's
latency. Exits with status 1 when the peak goes past the bound, /health fails, or no request
was refused although more were sent than the server admits.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from benchkit import free_port, machine_lines, start_server
from PIL import Image

from holisafe.serve import ServeLimits
from holisafe.synthetic.tiny import build_tiny_model

NAME = "bench-tiny"
STARTUP_TIMEOUT_S = 300
LOAD_TIMEOUT_S = 900  # the whole burst must be answered within this
SAMPLE_S = 0.02
HEALTH_EVERY_S = 0.1
MiB = 2**20


def largest_image(limits: ServeLimits) -> bytes:
    """A PNG with exactly `max_image_pixels` pixels (square) whose file is just under
    `max_image_bytes`: noise rows, which do not compress, then a plain area."""
    side = int(limits.max_image_pixels**0.5)
    rows = int(0.97 * limits.max_image_bytes / (3 * side))
    pixels = os.urandom(rows * side * 3) + bytes((side - rows) * side * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    if len(data) > limits.max_image_bytes:
        raise SystemExit(f"the test image is {len(data):,} bytes, over the image limit")
    return data


def chat_body(image: bytes) -> bytes:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
    message = {"role": "user", "content": content}
    return json.dumps({"model": NAME, "messages": [message], "max_tokens": 4}).encode()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the most resident so far) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


class Watch:
    """Samples the server's resident memory and times /health until stopped."""

    def __init__(self, pid: int, root: str):
        self.pid, self.root = pid, root
        self.most_rss_kib = 0
        self.health_s: list[float] = []
        self.health_failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.sample), threading.Thread(target=self.poll)]

    def __enter__(self) -> Watch:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def sample(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            self.most_rss_kib = max(self.most_rss_kib, memory_kib(self.pid)["VmRSS"])

    def poll(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.wait(HEALTH_EVERY_S):
                start = time.perf_counter()
                try:
                    http.get(f"{self.root}/health").raise_for_status()
                    self.health_s.append(time.perf_counter() - start)
                except httpx.HTTPError as exc:
                    self.health_failures.append(repr(exc))


def burst(root: str, body: bytes, clients: int) -> Counter:
    """Status of each of `clients` requests sent at once (`error` for no answer)."""
    statuses: Counter = Counter()
    barrier = threading.Barrier(clients)
    headers = {"Content-Type": "application/json"}

    def send() -> None:
        barrier.wait()
        try:
            reply = httpx.post(
                f"{root}/v1/chat/completions",
                content=body,
                headers=headers,
                timeout=LOAD_TIMEOUT_S,
            )
            statuses[reply.status_code] += 1
        except httpx.HTTPError:
            statuses["error"] += 1

    threads = [threading.Thread(target=send) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=96)
    parser.add_argument("--max-pending", type=int, default=ServeLimits().max_pending)
    args = parser.parse_args()
    limits = ServeLimits(max_pending=args.max_pending)

    print(*machine_lines(), sep="\n")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"memory: {memory:.0f} GiB; server and clients on this machine, over loopback")
    image = largest_image(limits)
    body = chat_body(image)
    print(
        f"{args.clients} concurrent chat requests, each a {int(limits.max_image_pixels**0.5)}"
        f" px square PNG of {len(image) / MiB:.2f} MiB ({limits.max_image_pixels:,} pixels) "
        f"in a {len(body) / MiB:.2f} MiB body, max_tokens 4"
    )
    print(f"server: tiny LLaVA on the CPU, default limits but --max-pending {args.max_pending}")
    print(f"limits: {limits.summary()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_model(Path(tmp) / NAME, "llava", seed=0)
        port = free_port()
        root = f"http://127.0.0.1:{port}"
        arguments = ["--model", f"hf/{folder}", "--device", "cpu"]
        arguments += ["--max-pending", str(args.max_pending)]
        server = start_server(arguments, port, STARTUP_TIMEOUT_S, stderr=subprocess.PIPE)
        try:
            warm_up = burst(root, body, 1)  # one maximum-size request: the model's own work
            if warm_up[200] != 1:
                raise SystemExit(f"the warm-up request failed: {dict(warm_up)}")
            rest_kib = memory_kib(server.pid)["VmRSS"]
            start = time.perf_counter()
            with Watch(server.pid, root) as watch:
                statuses = burst(root, body, args.clients)
            seconds = time.perf_counter() - start
            peak_kib = max(memory_kib(server.pid)["VmHWM"], watch.most_rss_kib)
        finally:
            server.terminate()
            server.wait()
    added = (peak_kib - rest_kib) * 1024
    bound = limits.memory_bound
    counts = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items(), key=str))
    print(f"answered in {seconds:.1f} s; answers by status: {counts}")
    print(f"server memory at rest (after one such request): {rest_kib / 1024:7.0f} MiB")
    print(f"server memory at its peak (high-water mark):     {peak_kib / 1024:7.0f} MiB")
    print(
        f"added by the burst: {added / MiB:.0f} MiB; the bound on what requests hold: "
        f"{bound / MiB:.0f} MiB; within the bound: {'yes' if added <= bound else 'NO'}"
    )
    times = sorted(watch.health_s)
    if times:
        print(
            f"/health during the burst: {len(times)} answers, median "
            f"{statistics.median(times) * 1000:.0f} ms, slowest {times[-1] * 1000:.0f} ms, "
            f"{len(watch.health_failures)} failures"
        )
    refused_expected = args.clients > args.max_pending
    failed = (
        added > bound
        or watch.health_failures
        or not times
        or (refused_expected and not statuses[503])
        or set(statuses) - {200, 503}
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
