"""Leases: work that one process holds for a while, so that no other process does it too.

A lease table (schema.LEASE_KEYS) has one row per lease: the columns that name what is held,
its holder (`worker`: `host/pid/nonce`) and when it expires (`expires_at`, seconds since the
epoch). A lease is free when it has no row, when it has expired, or at once when its holder is a
process of this machine that no longer exists, so that a rerun after `kill -9` need not wait
out the lease. A holder renews its leases while it works.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterable

from holisafe.store.connection import StoreError
from holisafe.store.schema import LEASE_KEYS


def new_worker_id() -> str:
    """`host/pid/nonce`: unique, and tells whether a lease's process still lives."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


def alive(worker: str) -> bool:
    """False only for a worker of this machine whose process no longer exists."""
    host, _, rest = worker.partition("/")
    if host != socket.gethostname():
        return True  # only its lease can tell
    try:
        os.kill(int(rest.partition("/")[0]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


class Lease:
    """The leases one holder keeps in one lease table, through a connection to the store.

    A key is the tuple of a lease's key columns. Take leases inside a `transaction` that first
    found them free, so that no other process takes them in between.
    """

    def __init__(self, db: sqlite3.Connection, table: str, lease_s: float):
        if lease_s <= 0:
            raise StoreError(f"a lease must last a positive time, got {lease_s} s")
        self.db, self.table, self.lease_s = db, table, lease_s
        self.key_columns = LEASE_KEYS[table]
        self.worker = new_worker_id()

    def held_by_others(self, **scope: object) -> list[tuple]:
        """The keys whose columns have the values in `scope` that another live holder holds."""
        where = "".join(f"{column} = ? AND " for column in scope)
        rows = self.db.execute(
            f"SELECT {', '.join(self.key_columns)}, worker FROM {self.table} "
            f"WHERE {where}worker <> ? AND expires_at > ?",
            (*scope.values(), self.worker, time.time()),
        ).fetchall()
        living = {worker for worker in {row[-1] for row in rows} if alive(worker)}
        return [tuple(row[:-1]) for row in rows if row[-1] in living]

    def take(self, keys: Iterable[tuple]) -> None:
        """Hold these keys until `lease_s` from now, whoever held them before."""
        columns = (*self.key_columns, "worker", "expires_at")
        expires_at = time.time() + self.lease_s
        self.db.executemany(
            f"INSERT OR REPLACE INTO {self.table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})",
            [(*key, self.worker, expires_at) for key in keys],
        )

    def renew(self) -> int:
        """Extend every lease this holder holds until `lease_s` from now; returns how many it
        holds (fewer than it took when another holder took some over after they expired)."""
        return self.db.execute(
            f"UPDATE {self.table} SET expires_at = ? WHERE worker = ?",
            (time.time() + self.lease_s, self.worker),
        ).rowcount

    def release(self, keys: Iterable[tuple]) -> None:
        where = " AND ".join(f"{column} = ?" for column in self.key_columns)
        self.db.executemany(
            f"DELETE FROM {self.table} WHERE {where} AND worker = ?",
            [(*key, self.worker) for key in keys],
        )

    def release_all(self) -> None:
        self.db.execute(f"DELETE FROM {self.table} WHERE worker = ?", (self.worker,))
