"""Thread pools sized to the cores a process may use; the demo on a fixed count."""

import os

import pytest
import torch
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.core import threads
from holisafe.synthetic.demo import DemoError, run_demo


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000", 8), ("150000 100000", 2), ("50000 100000", 1), ("garbage", 8)],
)
def test_a_cgroup_quota_caps_the_cores(tmp_path, monkeypatch, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    monkeypatch.setattr(threads, "CGROUP_V2_QUOTA", tmp_path / "cpu.max")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert threads.available_cores() == expected


def test_omp_num_threads_is_set_only_when_missing(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 3)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads.limit_threads()
    assert os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    threads.limit_threads()
    assert os.environ["OMP_NUM_THREADS"] == "5"


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    with threads.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_the_demo_refuses_no_threads(tmp_path):
    with pytest.raises(DemoError, match="threads must be at least 1"):
        run_demo(tmp_path, quick=True, threads=0)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--threads", "0"])
    assert isinstance(result.exception, DemoError)
