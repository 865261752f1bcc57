"""`eval --workers N` on GPUs: which GPUs each worker sees, checked without a GPU."""

from __future__ import annotations

import os

import pytest

from holisafe.core.records import ModelError
from holisafe.run import workers
from holisafe.run.workers import gpu_assignment, visible_gpus


@pytest.mark.parametrize(
    ("count", "visible", "device", "expected"),
    [
        (4, ["0", "1", "2", "3"], "cuda", ["0", "1", "2", "3"]),
        (3, ["0", "1"], "cuda", ["0", "1", "0"]),  # more workers than GPUs: shared in turn
        (2, ["4", "6"], "auto", ["4", "6"]),  # the ids the parent was given, not 0..n
        (2, ["0", "1", "2", "3"], "map", ["0,1", "2,3"]),
        (3, ["0", "1", "2", "3", "4", "5", "6", "7"], "map", ["0,1", "2,3,4", "5,6,7"]),
        (2, ["GPU-a", "GPU-b"], "map", ["GPU-a", "GPU-b"]),
        (2, ["0", "1"], "cpu", [None, None]),
        (2, ["0", "1"], "cuda:1", [None, None]),  # a device named by the user is kept
        (2, [], "cuda", [None, None]),  # no GPU: nothing to assign
    ],
)
def test_each_worker_gets_its_gpus(count, visible, device, expected):
    assert gpu_assignment(count, visible, device) == expected


def test_map_with_more_workers_than_gpus_is_an_error_that_says_what_to_do():
    with pytest.raises(ModelError, match="--device map with --workers 3 needs a GPU per worker"):
        gpu_assignment(3, ["0", "1"], "map")


def test_every_gpu_is_given_to_exactly_one_map_worker():
    visible = [str(i) for i in range(7)]
    groups = gpu_assignment(3, visible, "map")
    assert sorted(g for group in groups for g in group.split(",")) == visible


@pytest.mark.parametrize(
    ("listed", "count", "expected"),
    [
        (None, 2, ["0", "1"]),
        ("3,5", 2, ["3", "5"]),
        (" 3, 5 ,", 2, ["3", "5"]),
        ("-1", 0, []),
        ("", 0, []),
    ],
)
def test_visible_gpus_follow_cuda_visible_devices(monkeypatch, listed, count, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if listed is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert visible_gpus() == expected


def test_a_worker_sets_its_gpus_before_the_evaluation_starts(monkeypatch):
    seen = []
    monkeypatch.setattr(
        workers, "evaluate", lambda **_: seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    workers._worker("2,3", {"model_spec": "hf/x"})
    assert seen == ["2,3"]
