"""The demo's longest CPU step on one torch thread and on every available core, alone and
beside a competing CPU load.

    .venv/bin/python benchmarks/bench_threads.py [--images 1500] [--repeats 1]

Times `holisafe model tiny OUT --family llava --pretrain-vision N` (the demo's vision
pretraining, at a smaller scale) in a fresh process per run, with OMP_NUM_THREADS set to 1 and
to `holisafe.core.threads.available_cores()`, first with the machine as it is and then with one
busy-looping process per available core started beside it (the load a shared machine adds). The
four settings take turns `--repeats` times; each prints its median wall time and CPU time, and
the ratio of each wall time to the one-thread run under the same load.

Thread count also decides the bytes: the script reports whether the two thread counts wrote the
same weights (they need not: sums split over more threads are added in another order).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from benchkit import machine_lines

from holisafe.core.threads import available_cores


def spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


@contextmanager
def competing_load(processes: int):
    """`processes` busy-looping processes for the length of the block."""
    stop = multiprocessing.Event()
    workers = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join()


def pretrain(folder: Path, threads: int, images: int) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds and the weights' SHA-256 of one pretraining in a new process."""
    command = [sys.executable, "-m", "holisafe", "model", "tiny", str(folder), "--family", "llava"]
    command += ["--pretrain-vision", str(images)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    return wall, cpu, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    cores = available_cores()
    counts = sorted({1, cores})
    print(*machine_lines(), sep="\n")
    print(f"available cores: {cores}; load average at start: {os.getloadavg()[0]:.1f}")
    print(f"vision pretraining on {args.images} images")
    times: dict[tuple[str, int], list[tuple[float, float]]] = {}
    digests: dict[int, set[str]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for load in ("as it is", f"+{cores} busy processes"):
                with competing_load(cores if load != "as it is" else 0):
                    for threads in counts:
                        folder = Path(scratch) / f"r{repeat}-{threads}-{len(times)}"
                        wall, cpu, digest = pretrain(folder, threads, args.images)
                        times.setdefault((load, threads), []).append((wall, cpu))
                        digests.setdefault(threads, set()).add(digest)
    for load in dict.fromkeys(key[0] for key in times):
        one = statistics.median(wall for wall, _ in times[(load, 1)])
        for threads in counts:
            wall = statistics.median(w for w, _ in times[(load, threads)])
            cpu = statistics.median(c for _, c in times[(load, threads)])
            print(
                f"machine {load}: {threads} thread(s): {wall:6.1f} s wall, {cpu:6.1f} s CPU, "
                f"{wall / one:.2f}x the one-thread time"
            )
    same = len({d for found in digests.values() for d in found}) == 1
    print("weights identical across thread counts:", "yes" if same else "no")


if __name__ == "__main__":
    main()
