"""Which CPU kernels torch and the math libraries under it run.

torch picks its CPU kernels by the machine's instruction set (AVX-512, AVX2 or neither), and
so do the MKL BLAS and the oneDNN library under it; MKL also by CPU vendor. Kernels for other
instruction sets add floats in another order, so a seeded training run writes other weights,
and after enough steps shows other figures, on a machine of another kind. torch and MKL each
read an environment variable that forces one code path, once, when torch first computes, so a
process must set them before it loads torch:

- `ATEN_CPU_CAPABILITY=avx2`: torch's own kernels for AVX2, which every x86-64 CPU of the last
  decade has (torch does not check: on a CPU without AVX2 it would crash, so `pin_kernels`
  checks first);
- `MKL_CBWR=COMPATIBLE,STRICT`: MKL's reproducible mode on its SSE2 path, the only branch MKL
  keeps the same on Intel and on other vendors' CPUs (its AVX2 branch falls back to the CPU's
  own on AMD), strict so that the alignment of the data does not matter either.

oneDNN (torch's convolutions on the CPU) has no such switch that covers its blocking by cache
size, so a pinned process runs its convolutions without it (`pinned_convolutions`).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KERNEL_SET = "AVX2"
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT"}
REQUIRED_CPU_FLAGS = ("avx2", "fma")  # what torch's AVX2 kernels are built for
CPUINFO = Path("/proc/cpuinfo")


def pin_kernels() -> str:
    """Make torch and MKL use the pinned kernel set from now on, where this process can, and
    return a line saying what was pinned or why nothing was."""
    if "torch" in sys.modules:
        return "CPU kernels not pinned: torch was loaded before the demo could choose them"
    if not cpu_supports_pinned_kernels():
        return (
            f"CPU kernels not pinned: this CPU does not report {' and '.join(REQUIRED_CPU_FLAGS)}"
        )
    os.environ.update(PINNED_KERNELS)
    return (
        f"CPU kernels pinned to torch's {KERNEL_SET} set and MKL's reproducible SSE2 path, "
        "convolutions without oneDNN: a seed gives the same figures on any x86-64 CPU with AVX2"
    )


def kernels_pinned() -> bool:
    """Whether this process runs the pinned kernel set (torch's and MKL's)."""
    import torch

    return torch.backends.cpu.get_cpu_capability() == KERNEL_SET and all(
        os.environ.get(name) == value for name, value in PINNED_KERNELS.items()
    )


def kernel_settings() -> dict[str, str | bool | None]:
    """What decides which CPU kernels this process runs."""
    import torch

    return {
        "torch": torch.backends.cpu.get_cpu_capability(),
        "onednn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        **{name: os.environ.get(name) for name in PINNED_KERNELS},
    }


@contextmanager
def pinned_convolutions(pinned: bool) -> Iterator[None]:
    """Run the block's convolutions without oneDNN when the kernels are pinned."""
    import torch

    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = before and not pinned
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def cpu_supports_pinned_kernels() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags_line = next(
            line for line in CPUINFO.read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return False
    flags = set(flags_line.partition(":")[2].split())
    return all(flag in flags for flag in REQUIRED_CPU_FLAGS)
