"""`holisafe eval --workers N`: N processes share one run in one store through the claims of
`holisafe.run.leases`, one GPU each for local models. Starting `holisafe eval` several times by hand
(or under a job scheduler) works the same.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from holisafe.run.evaluate import EvalOutcome, evaluate
from holisafe.store import Store, StoreError


def evaluate_in_workers(workers: int, **arguments: Any) -> EvalOutcome:
    """`holisafe.run.evaluate.evaluate(**arguments)` in `workers` processes sharing one run.

    An `hf/` model on a machine with GPUs gets one GPU per worker (worker k sees GPU k modulo
    their number through CUDA_VISIBLE_DEVICES): data parallel. The outcome adds up what the
    workers did, and reads what is still wrong from the store once all have ended.
    """
    if workers < 1:
        raise StoreError(f"--workers must be at least 1, got {workers}")
    gpus = _gpu_count() if str(arguments["model_spec"]).startswith("hf/") else 0
    context = multiprocessing.get_context("spawn")  # a fresh process: CUDA not yet started
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [
            pool.submit(_worker, k % gpus if gpus else None, arguments | {"progress": k == 0})
            for k in range(workers)
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


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _worker(gpu: int | None, arguments: dict[str, Any]) -> EvalOutcome:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return evaluate(**arguments)
