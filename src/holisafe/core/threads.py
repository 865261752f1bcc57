"""How many CPU threads torch and the BLAS libraries use.

torch starts one thread per core it sees. When a CPU quota or an affinity mask leaves a process
fewer cores, or other processes want the same cores, its threads queue for them and every
parallel step waits for the thread that is not running: the same work takes several times
longer (`benchmarks/bench_threads.py`). So the command line sizes the pool to the cores the
process may use (its affinity mask, capped by a cgroup CPU quota) unless OMP_NUM_THREADS says
otherwise, and the demo, whose figures are small models' figures, runs on one thread.

Thread count and determinism: a sum split over N threads is added in another order than over M,
so float results, and weights trained from them, depend on the thread count. A seeded run is
byte-identical for the same thread count, library versions and CPU instruction set (torch
picks its kernels by instruction set); the demo fixes its count (`--threads`, default 1) so that
its outputs are the same on every machine of one CPU kind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CGROUP_V2_QUOTA = Path("/sys/fs/cgroup/cpu.max")


def available_cores() -> int:
    """The cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_quota()
    return max(1, min(cores or 1, quota or cores or 1))


def _cgroup_quota() -> int | None:
    """The CPU quota in whole cores (rounded up), or None when there is none."""
    try:
        quota, period = CGROUP_V2_QUOTA.read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else math.ceil(int(quota) / int(period))


def limit_threads() -> None:
    """Size the thread pools of libraries loaded from now on to `available_cores()`, unless
    OMP_NUM_THREADS is already set (torch, OpenBLAS and MKL read it when they load)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cores()))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with torch on `count` threads, then restore the count it had."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
