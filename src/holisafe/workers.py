"""Many workers, one store: samples are claimed with leases, so no two workers do the same work.

Any number of `holisafe eval` (or `judge`) processes on one machine may work on the same run in
one store. Before a worker answers (or judges) a sample it claims it in the store's `claims`
table, in a transaction that first checks the sample is neither done nor claimed by another
live worker. A claim is a lease (`holisafe.store.Lease`): it expires `lease_s` seconds after it
was last renewed, and a worker renews its claims while it lives. A claim held by a process of
this machine that no longer exists counts as expired at once, so a rerun after `kill -9` need not
wait out the lease.

The store is SQLite in WAL mode, which needs shared memory between its processes: workers must
run on one machine (a local disk); a network file system is not supported.

`evaluate_in_workers` (`holisafe eval --workers N`) starts such workers, one per GPU for local
models; starting `holisafe eval` several times by hand (or under a job scheduler) works the same.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

from holisafe.store import Lease, StoreError, connect, transaction

if TYPE_CHECKING:
    from holisafe.evaluate import EvalOutcome

DEFAULT_LEASE_S = 300.0
ANSWERING = ""  # the task of answering; a judge's task is its judge id
_WINDOW = 500  # candidates looked at per query (SQLite's limit on ? parameters is 999 and up)


class Leases:
    """This worker's claims in the store at `path` (its own connection, beside the Store's)."""

    def __init__(self, path: str | Path, lease_s: float = DEFAULT_LEASE_S):
        self._claims = Lease(connect(path), "claims", lease_s)
        self._db = self._claims.db
        self.worker = self._claims.worker
        self.lease_s = lease_s
        self.renewed_at = time.time()
        self._released: list[tuple[int, str, str]] = []

    def close(self) -> None:
        self.release_all()
        self._db.close()

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def claim(
        self, run_id: int, task: str, candidates: Iterable[str], count: int
    ) -> tuple[list[str], int]:
        """Claim up to `count` of `candidates`, in order: those not done and not claimed by
        another live worker. Returns (claimed ids, how many candidates were looked at); the
        ones looked at and not claimed are done or taken."""
        window = list(itertools.islice(candidates, _WINDOW))
        if not window or count < 1:
            return [], 0
        with transaction(self._db):
            self._write_releases()
            taken = {key[2] for key in self._claims.held_by_others(run_id=run_id, task=task)}
            unavailable = self._done(run_id, task, window) | taken
            claimed, looked = [], 0
            for sample_id in window:
                if len(claimed) == count:
                    break
                looked += 1
                if sample_id not in unavailable:
                    claimed.append(sample_id)
            self._claims.take((run_id, task, i) for i in claimed)
        return claimed, looked

    def _done(self, run_id: int, task: str, ids: list[str]) -> set[str]:
        marks = ",".join("?" * len(ids))
        if task == ANSWERING:
            query = (
                "SELECT sample_id FROM responses WHERE run_id = ? AND error IS NULL "
                f"AND text IS NOT NULL AND sample_id IN ({marks})"
            )
            return {row[0] for row in self._db.execute(query, (run_id, *ids))}
        query = (
            "SELECT sample_id FROM verdicts WHERE run_id = ? AND judge = ? AND error IS NULL "
            f"AND followed IS NOT NULL AND sample_id IN ({marks})"
        )
        return {row[0] for row in self._db.execute(query, (run_id, task, *ids))}

    def release(self, run_id: int, task: str, sample_ids: Sequence[str]) -> None:
        """Give up claims on samples now done; written with the next claim (one write)."""
        self._released.extend((run_id, task, i) for i in sample_ids)

    def _write_releases(self) -> None:
        self._claims.release(self._released)
        self._released.clear()

    def release_all(self) -> None:
        self._released.clear()
        self._claims.release_all()

    def renew_if_due(self) -> None:
        """Extend this worker's claims when a third of the lease has passed since the last
        renewal."""
        now = time.time()
        if now - self.renewed_at >= self.lease_s / 3:
            self._claims.renew()
            self.renewed_at = now

    def others_working(self, run_id: int) -> bool:
        """Whether another live worker holds claims in this run."""
        with transaction(self._db):
            self._write_releases()
        return bool(self._claims.held_by_others(run_id=run_id))


def evaluate_in_workers(workers: int, **arguments: Any) -> EvalOutcome:
    """`holisafe.evaluate.evaluate(**arguments)` in `workers` processes sharing one run.

    An `hf/` model on a machine with GPUs gets one GPU per worker (worker k sees GPU k modulo
    their number through CUDA_VISIBLE_DEVICES): data parallel. The outcome adds up what the
    workers did, and reads what is still wrong from the store once all have ended.
    """
    from holisafe.evaluate import EvalOutcome
    from holisafe.store import Store

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
    from holisafe.evaluate import evaluate

    return evaluate(**arguments)
