"""The store: one SQLite file (WAL mode) that records runs, responses, verdicts and all else.

- `schema`: every table, as numbered migrations (`PRAGMA user_version`);
- `connection`: `connect()`, the one way to open the file (its settings, its migrations), and
  `transaction()`;
- `leases`: `Lease`, work held by one process for a while (sample claims, batch keepers);
- `runs`: `Store`, the runs with their samples, responses, verdicts and comparisons, and
  the audit runs of served traffic.
"""

from holisafe.store.connection import StoreError, connect, transaction
from holisafe.store.leases import Lease
from holisafe.store.runs import (
    AUDIT_BENCHMARK,
    EXPORT_FORMATS,
    AuditEntry,
    Run,
    RunRecord,
    SampleId,
    Store,
    StoredSample,
    bench_fingerprint,
)
from holisafe.store.schema import SCHEMA_VERSION

__all__ = [
    "AUDIT_BENCHMARK",
    "EXPORT_FORMATS",
    "SCHEMA_VERSION",
    "AuditEntry",
    "Lease",
    "Run",
    "RunRecord",
    "SampleId",
    "Store",
    "StoreError",
    "StoredSample",
    "bench_fingerprint",
    "connect",
    "transaction",
]
