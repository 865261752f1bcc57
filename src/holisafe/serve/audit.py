"""The audit of served traffic (`holisafe serve --audit STORE`): every answered request is
recorded in the store, as a sample of the served model's audit run.

The reply path only puts a record on a queue; a writer thread takes whatever is queued once a
second and commits it in one transaction. So a crashed server (kill -9) loses at most the
records of its last second, and a slow disk never slows a reply. The queue is bounded: when it
is full (the disk cannot keep up), a record is dropped and counted rather than held, and the
server logs a warning with the count. Requests refused before they reach the model (a
malformed body, a limit, a missing key) are not recorded; uvicorn's access log has them.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import Headers

from holisafe.core.records import Response, SafetyPrediction
from holisafe.serve.errors import ServeError
from holisafe.serve.protocol import safety_json
from holisafe.store import AuditEntry, Store

FLUSH_INTERVAL_S = 1.0  # the most a record waits before it is committed
MAX_QUEUED = 50_000  # records waiting for the writer; more are dropped and counted
MAX_QUEUED_IMAGE_BYTES = 256 * 2**20  # and the images they hold (--audit-images)
RETENTION_INTERVAL_S = 3600.0  # how often --audit-days deletes what has aged
DAY_S = 86_400
ANONYMOUS = "anonymous"

log = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class AuditSettings:
    """Where the audit goes, whether it keeps the images, and for how many days."""

    store: Path
    images: bool = False
    days: float | None = None  # None: keep every record

    def __post_init__(self) -> None:
        if self.days is not None and self.days <= 0:
            raise ServeError(f"--audit-days must be more than 0, got {self.days:g}")


@dataclass(frozen=True)
class AuditedImage:
    """A request's image as the audit keeps it: its SHA-256, and its file with --audit-images."""

    sha256: str
    data: bytes | None


def client_id(headers: Headers) -> str:
    """A short id of the client's API key that does not reveal it (the first 12 hex digits of
    its SHA-256), or `anonymous` when the request carries none."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return ANONYMOUS
    return "key-" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:12]


@dataclass(frozen=True)
class Served:
    """What the route knows of one request when its reply is ready."""

    endpoint: str  # chat or guard
    client: str
    received_at: float  # seconds since the epoch
    latency_s: float
    query: str = ""
    system: str | None = None
    stream: bool = False
    image: AuditedImage | None = None


class AuditWriter:
    """The queue the routes put records on and the thread that commits them."""

    def __init__(self, settings: AuditSettings, model: str):
        self.settings = settings
        self.model = model
        self.written = 0
        self.dropped = 0
        self.failed = 0  # records a failed commit lost
        self.worst_record_s = 0.0  # the longest a reply waited for `record`
        self.worst_image_s = 0.0  # the longest hashing one image took (on a decoding thread)
        self.work_s = 0.0  # the CPU time of queuing, hashing and committing records
        self._timing = threading.Lock()  # three kinds of threads add to the times and bytes
        self._queued_bytes = 0  # of the images on the queue
        self._queue: queue.Queue[AuditEntry] = queue.Queue(MAX_QUEUED)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        with Store(self.settings.store) as store:  # a store that cannot be used fails here
            self._run_id = store.open_audit_run(self.model).id
            self._delete_aged(store)

    def start(self) -> None:
        """Start the writer, and say what a crash may lose."""
        self._thread = threading.Thread(
            target=self._write_forever, name="holisafe-audit", daemon=True
        )
        self._thread.start()
        kept = "with" if self.settings.images else "without"
        days = "forever" if self.settings.days is None else f"{self.settings.days:g} days"
        log.info(
            "auditing every answered request to %s (run %d, %s images, kept %s); written once "
            "a second: a crash loses at most the last second's requests",
            self.settings.store,
            self._run_id,
            kept,
            days,
        )

    def stop(self) -> None:
        """Commit what is queued and stop the writer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def image(self, data: bytes) -> AuditedImage:
        """A request's image as the audit keeps it."""
        with self._timed("worst_image_s"):
            kept = data if self.settings.images else None
            return AuditedImage(hashlib.sha256(data).hexdigest(), kept)

    def record(
        self,
        served: Served,
        response: Response | None = None,
        prediction: SafetyPrediction | None = None,
    ) -> None:
        """Queue one answered request (a chat `response`, or a guard `prediction`)."""
        with self._timed("worst_record_s"):
            self._queue_record(served, response, prediction)

    def _queue_record(
        self, served: Served, response: Response | None, prediction: SafetyPrediction | None
    ) -> None:
        safety = response.safety if response is not None else prediction
        extra = {
            "endpoint": served.endpoint,
            "client": served.client,
            "stream": served.stream,
            "system": served.system,
            "gated": bool(response is not None and response.gated),
            "safety": safety_json(safety),
        }
        image = served.image
        entry = AuditEntry(
            sample_id=uuid.uuid4().hex,
            received_at=served.received_at,
            query=served.query,
            image_sha256=None if image is None else image.sha256,
            image=None if image is None else image.data,
            text=None if response is None else response.text,
            error=None if response is None else response.error,
            latency_s=served.latency_s,
            extra=extra,
        )
        size = len(entry.image or b"")
        with self._timing:  # only this thread puts: a queue with room takes the entry
            room = not self._queue.full() and self._queued_bytes + size <= MAX_QUEUED_IMAGE_BYTES
            if room:
                self._queued_bytes += size
                self._queue.put_nowait(entry)
        if not room:
            self._drop()

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped in (1, 10) or self.dropped % 1000 == 0:
            log.warning(
                "audit: %d record(s) dropped so far: the store %s does not keep up (%d records "
                "or %d MiB of images waiting are the most held)",
                self.dropped,
                self.settings.store,
                MAX_QUEUED,
                MAX_QUEUED_IMAGE_BYTES // 2**20,
            )

    @contextmanager
    def _timed(self, worst: str | None = None) -> Iterator[None]:
        """Add the block's CPU time to the audit's work, and its wall time to the `worst`
        figure it names (what a reply waited, whatever else the machine did meanwhile)."""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            waited, worked = time.perf_counter() - wall, time.thread_time() - cpu
            with self._timing:
                self.work_s += worked
                if worst is not None:
                    setattr(self, worst, max(getattr(self, worst), waited))

    def counters(self) -> dict:
        """For /health: what the audit has written, dropped and lost, and its worst cost."""
        return {
            "run": self._run_id,
            "written": self.written,
            "queued": self._queue.qsize(),
            "dropped": self.dropped,
            "failed": self.failed,
            "worst_record_ms": self.worst_record_s * 1000,
            "worst_image_ms": self.worst_image_s * 1000,
            "work_ms": self.work_s * 1000,
        }

    def _write_forever(self) -> None:
        with Store(self.settings.store) as store:
            retain_at = time.monotonic() + RETENTION_INTERVAL_S
            while not self._stop.wait(FLUSH_INTERVAL_S):
                self._flush(store)
                if time.monotonic() >= retain_at:
                    self._delete_aged(store)
                    retain_at = time.monotonic() + RETENTION_INTERVAL_S
            self._flush(store)

    def _flush(self, store: Store) -> None:
        entries = []
        while True:
            try:
                entries.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not entries:
            return
        with self._timing:
            self._queued_bytes -= sum(len(entry.image or b"") for entry in entries)
        try:
            with self._timed():
                store.save_audit(self._run_id, entries)
        except Exception as exc:  # the server goes on answering; the log says what was lost
            self.failed += len(entries)
            log.error("audit: %d record(s) lost, the store refused them: %s", len(entries), exc)
            return
        self.written += len(entries)

    def _delete_aged(self, store: Store) -> None:
        if self.settings.days is None:
            return
        deleted = store.delete_audit_before(self._run_id, time.time() - self.settings.days * DAY_S)
        if deleted:
            log.info("audit: deleted %d request(s) older than %g days", deleted, self.settings.days)
