"""The seeded demo gives the same figures and weights whatever CPU kernels the machine offers.

Each demo runs in its own process, since torch and MKL read their kernel settings once, and
emulates a machine with fewer instruction sets through the libraries' own switches.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from holisafe.core.kernels import CPUINFO, cpu_supports_pinned_kernels

pytestmark = [
    pytest.mark.slow,  # four quick demos
    pytest.mark.skipif(not cpu_supports_pinned_kernels(), reason="needs an x86-64 CPU with AVX2"),
]


def _has_avx512() -> bool:
    try:
        return "avx512f" in CPUINFO.read_text()
    except OSError:  # not Linux: the module is skipped
        return False


# Two machines: one with AVX2 only, and this CPU's best (AVX-512) or, without it, a pre-AVX one.
AVX2_MACHINE = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
OTHER_MACHINE = (
    {
        "ATEN_CPU_CAPABILITY": "avx512",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
    }
    if _has_avx512()
    else {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
    }
)
KERNEL_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
)


def _demo(tmp_path, name: str, machine: dict[str, str], *options: str):
    """Run the quick demo in a fresh process on the emulated machine; return its printed
    figures and its models' weights."""
    out, cache = tmp_path / name, tmp_path / f"{name}-cache"
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
    env |= machine | {"HOLISAFE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "holisafe", "demo", "--quick", "--out", str(out), *options],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = [
        line.replace(str(out), "OUT")
        for line in done.stdout.splitlines()
        if "names a pictogram" in line or line.startswith(("|", "│"))
    ]
    weights = {p.parent.name: p.read_bytes() for p in out.glob("models/*/model.safetensors")}
    return done.stdout, figures, weights


def test_pinned_kernels_give_the_same_demo_on_both_machines(tmp_path):
    said, figures, weights = _demo(tmp_path, "avx2", AVX2_MACHINE)
    _, other_figures, other_weights = _demo(tmp_path, "other", OTHER_MACHINE)
    assert "CPU kernels pinned" in said
    assert len(figures) > 10 and len(weights) == 4
    assert other_figures == figures
    assert [name for name in weights if other_weights[name] != weights[name]] == []


def test_the_machines_differ_when_the_kernels_are_not_pinned(tmp_path):
    """Without the pin, the two emulated machines train other weights: the emulation is real."""
    _, _, weights = _demo(tmp_path, "avx2", AVX2_MACHINE, "--no-pin-kernels")
    _, _, other_weights = _demo(tmp_path, "other", OTHER_MACHINE, "--no-pin-kernels")
    assert weights.keys() == other_weights.keys()
    assert any(other_weights[name] != weights[name] for name in weights)
