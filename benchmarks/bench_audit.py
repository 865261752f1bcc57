"""`holisafe serve --audit` against the same server without it, at 50 concurrent clients.

    .venv/bin/python benchmarks/bench_audit.py [--clients 50] [--per-client 4] [--rounds 5]

Builds the tiny LLaVA as a Safe-VLM (random weights), starts two `holisafe serve` processes on
loopback, one with `--audit STORE` and one without, and sends each the same image + question
requests from `clients` threads of its own, both servers at the same time, for `rounds`
rounds, so that load from other jobs falls on both alike. Prints each side's median throughput,
their ratio (the goal: audit costs at most 3%), the clients' median and 99th-percentile
latencies, each server's CPU time per request, and the longest a reply waited on the audit
(from /health), with what the writer committed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from benchkit import (
    add_visual_guard,
    free_port,
    machine_lines,
    picture_messages,
    released_together,
    start_server,
)

from holisafe.store import Store
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.vgm import VGMSettings

NAME = "bench-safe"
STARTUP_TIMEOUT_S = 600
GOAL = 0.97  # audit on keeps at least this share of the throughput
FLUSH_S = 1.5  # the audit's flush interval and some


def body(i: int, max_tokens: int) -> dict:
    return {
        "model": NAME,
        "messages": picture_messages(i),
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def load(root: str, bodies: list[dict], clients: int) -> tuple[float, list[float]]:
    """Seconds for `clients` threads, released together, to send the bodies; each latency."""
    latencies: list[float] = []

    def send(c: int) -> None:
        with httpx.Client(base_url=root, timeout=600, headers={"Authorization": "Bearer k"}) as h:
            for item in bodies[c::clients]:
                start = time.perf_counter()
                reply = h.post("/v1/chat/completions", json=item)
                latencies.append(time.perf_counter() - start)
                if reply.status_code != 200:
                    raise RuntimeError(reply.text[:200])

    return released_together(clients, send), latencies


def together(roots: dict[str, str], bodies: list[dict], clients: int) -> dict:
    """`load` on every server at the same time: other jobs' load falls on all of them alike."""
    results: dict[str, tuple[float, list[float]]] = {}

    def run(side: str) -> None:
        results[side] = load(roots[side], bodies, clients)

    threads = [threading.Thread(target=run, args=(side,)) for side in roots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(results) != len(roots):
        raise SystemExit("a load thread failed")
    return results


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux), all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each server")
    args = parser.parse_args()
    count = args.clients * args.per_client
    bodies = [body(i, args.max_tokens) for i in range(count)]

    print(*machine_lines(), sep="\n")
    with tempfile.TemporaryDirectory() as tmp:
        plain = build_tiny_model(Path(tmp) / "plain", "llava", seed=0)
        folder = add_visual_guard(plain, Path(tmp) / NAME, VGMSettings())
        store = Path(tmp) / "audit.sqlite"
        print(
            f"model: the tiny LLaVA as a Safe-VLM, random weights, float32 on the CPU, torch "
            f"threads {args.threads}; server max batch 8, batch wait 10 ms"
        )
        print(
            f"{args.rounds} rounds of {count} requests from {args.clients} clients at once to "
            f"each server, both loaded at the same time (a 64-112 px PNG + a question, "
            f"max_tokens {args.max_tokens}, greedy)"
        )
        common = ["--model", f"hf/{folder}", "--device", "cpu", "--served-model-name", NAME]
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
        roots, servers = {}, []
        try:
            for side, extra in (("off", []), ("on", ["--audit", str(store)])):
                port = free_port()
                servers.append(start_server([*common, *extra], port, STARTUP_TIMEOUT_S, env=env))
                roots[side] = f"http://127.0.0.1:{port}"
            for root in roots.values():
                load(root, bodies[: args.clients], args.clients)  # warm-up
            pids = {side: server.pid for side, server in zip(roots, servers, strict=True)}
            rates = {side: [] for side in roots}
            latencies = {side: [] for side in roots}
            cpu = dict.fromkeys(roots, 0.0)
            for _ in range(args.rounds):
                before = {side: cpu_seconds(pid) for side, pid in pids.items()}
                for side, (seconds, waited) in together(roots, bodies, args.clients).items():
                    rates[side].append(count / seconds)
                    latencies[side] += waited
                time.sleep(FLUSH_S)  # the round's last records committed (audit on)
                for side, pid in pids.items():
                    cpu[side] += cpu_seconds(pid) - before[side]
            audit = httpx.get(f"{roots['on']}/health").json()["audit"]
        finally:
            for server in servers:
                server.terminate()
                server.wait()
        with Store(store, create=False) as opened:
            stored = len(opened.records(opened.run_id("audit")))
    for side in roots:
        print(
            f"audit {side:>3}: {statistics.median(rates[side]):6.2f} requests/s (median of "
            f"{args.rounds}: {', '.join(f'{r:.2f}' for r in rates[side])}); latency median "
            f"{statistics.median(latencies[side]) * 1000:.0f} ms, 99th percentile "
            f"{percentile(latencies[side], 0.99) * 1000:.0f} ms"
        )
    ratio = statistics.median(rates["on"]) / statistics.median(rates["off"])
    paired = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    print(
        f"ratio, audit on over off: {ratio:.3f} (per round: "
        f"{', '.join(f'{r:.3f}' for r in paired)}); goal >= {GOAL}: "
        f"{'met' if ratio >= GOAL else 'not met'}"
    )
    per_request = {side: cpu[side] / (args.rounds * count) * 1000 for side in roots}
    print(
        f"server CPU per request: {per_request['off']:.2f} ms off, {per_request['on']:.2f} ms "
        f"on; ratio on over off {per_request['on'] / per_request['off']:.3f} (the audit's own "
        "work, all its writer's commits included; less sensitive to other jobs than "
        "throughput)"
    )
    print(
        f"the audit's own work (queuing, hashing, committing; the CPU time of the threads "
        "doing it, timed by the server): "
        f"{audit['work_ms'] / audit['written'] * 1000:.0f} us per request, "
        f"{audit['work_ms'] / audit['written'] / per_request['off'] * 100:.2f}% of the server's "
        "CPU per request with audit off"
    )
    print(
        f"audit writer: {audit['written']} records committed ({stored} in the store), "
        f"{audit['dropped']} dropped, {audit['failed']} lost; the longest a reply waited on the "
        f"audit: {audit['worst_record_ms']:.3f} ms to queue its record, plus "
        f"{audit['worst_image_ms']:.3f} ms to hash its image"
    )


if __name__ == "__main__":
    main()
