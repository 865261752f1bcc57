"""Pinning the CPU kernel set: before torch loads, only on CPUs that have it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from holisafe.core import kernels
from holisafe.core.kernels import PINNED_KERNELS, cpu_supports_pinned_kernels, pin_kernels

PIN_THEN_LOAD_TORCH = """
import os
from holisafe.core.kernels import kernels_pinned, pin_kernels
print(pin_kernels())
import torch
print(torch.backends.cpu.get_cpu_capability(), kernels_pinned())
"""


@pytest.mark.skipif(not cpu_supports_pinned_kernels(), reason="needs an x86-64 CPU with AVX2")
def test_pinning_before_torch_loads_sets_torchs_kernel_set():
    env_without_pins = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", PIN_THEN_LOAD_TORCH],
        env=env_without_pins,
        capture_output=True,
        text=True,
        check=True,
    )
    said, loaded = done.stdout.splitlines()
    assert said.startswith("CPU kernels pinned")
    assert loaded == "AVX2 True"


def test_nothing_is_pinned_once_torch_is_loaded(monkeypatch):
    import torch  # noqa: F401  (loaded, as in a test run or a notebook)

    for name in PINNED_KERNELS:
        monkeypatch.delenv(name, raising=False)
    assert "torch was loaded" in pin_kernels()
    assert not any(name in kernels.os.environ for name in PINNED_KERNELS)


@pytest.mark.parametrize(
    ("flags", "supported"),
    [("fpu sse2 avx avx2 fma avx512f", True), ("fpu sse2 avx fma", False), (None, False)],
)
def test_the_kernel_set_is_pinned_only_where_the_cpu_has_it(
    tmp_path, monkeypatch, flags, supported
):
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(kernels, "CPUINFO", cpuinfo)
    monkeypatch.setattr(kernels.platform, "machine", lambda: "x86_64")
    assert cpu_supports_pinned_kernels() is supported
