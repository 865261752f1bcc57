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
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from holisafe.store import Lease, connect, transaction

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
