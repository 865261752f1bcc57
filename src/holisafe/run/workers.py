"""`holisafe eval --workers N`: N processes share one run in one store through the claims of
`holisafe.run.leases`, one GPU (or, with `--device map`, a group of GPUs) each for local models.
Starting `holisafe eval` several times by hand (or under a job scheduler) works the same.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from holisafe.core.records import ModelError
from holisafe.run.evaluate import EvalOutcome, evaluate
from holisafe.store import Store, StoreError


def evaluate_in_workers(workers: int, **arguments: Any) -> EvalOutcome:
    """`holisafe.run.evaluate.evaluate(**arguments)` in `workers` processes sharing one run.

    An `hf/` model on a machine with GPUs gets its GPUs per worker through
    CUDA_VISIBLE_DEVICES (see `gpu_assignment`): data parallel. The outcome adds up what the
    workers did, and reads what is still wrong from the store once all have ended.
    """
    if workers < 1:
        raise StoreError(f"--workers must be at least 1, got {workers}")
    local = str(arguments["model_spec"]).startswith("hf/")
    device = arguments["options"].device
    gpus = gpu_assignment(workers, visible_gpus() if local else [], device)
    context = multiprocessing.get_context("spawn")  # a fresh process: CUDA not yet started
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [
            pool.submit(_worker, gpus[k], arguments | {"progress": k == 0}) for k in range(workers)
        ]
        try:
            outcomes = [future.result() for future in futures]
        except BrokenProcessPool:
            raise StoreError(
                "a worker process died (killed, or out of memory); the work the workers "
                "stored is kept: run the same command again to finish"
            ) from None
    with Store(arguments["store_path"], create=False) as store:
        run = store.get_run(outcomes[0].run.id)
        total = EvalOutcome(run=run, skipped=outcomes[0].skipped, notes=outcomes[0].notes)
        total.generated = sum(o.generated for o in outcomes)
        for judge in outcomes[0].judged:
            total.judged[judge] = sum(o.judged[judge] for o in outcomes)
            total.verdict_errors[judge] = store.verdict_errors(run.id, judge)
        total.response_errors = store.response_errors(run.id)
    return total


def gpu_assignment(workers: int, visible: Sequence[str], device: str) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES each of `workers` starts with, given the `visible` GPU ids
    (None: as the parent's).

    `auto` and `cuda`: worker k gets GPU k modulo their number (more workers than GPUs share
    them). `map`: the GPUs split into `workers` groups of consecutive ids, as even as they go,
    each worker's model spread over its group; fewer GPUs than workers is an error. `cpu` and
    `cuda:N` name their device themselves: left alone.
    """
    if not visible or device not in ("auto", "cuda", "map"):
        return [None] * workers
    if device == "map":
        if workers > len(visible):
            raise ModelError(
                f"--device map with --workers {workers} needs a GPU per worker at least; "
                f"{len(visible)} visible ({','.join(visible)}): use at most {len(visible)} "
                "workers, or --device cuda to give each worker one GPU"
            )
        bounds = [k * len(visible) // workers for k in range(workers + 1)]
        return [",".join(visible[bounds[k] : bounds[k + 1]]) for k in range(workers)]
    return [visible[k % len(visible)] for k in range(workers)]


def visible_gpus() -> list[str]:
    """The ids of the GPUs this process may use: CUDA_VISIBLE_DEVICES's (as many as CUDA
    counts), else 0 to the count. Counting does not start CUDA in this process."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [gpu.strip() for gpu in listed.split(",") if gpu.strip()][:count]


def _worker(gpus: str | None, arguments: dict[str, Any]) -> EvalOutcome:
    if gpus is not None:  # before torch starts CUDA in this fresh process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    return evaluate(**arguments)
