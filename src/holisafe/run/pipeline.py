"""One continuous pipeline for a whole run: answering and judging flow through bounded pools.

Each stage (the model answering; each judge) has a pool of `lanes` threads, fed with batches of
`batch` samples claimed from the store (see `holisafe.run.workers`). The calling thread alone talks
to the store: it commits every result as it arrives, queues each new answer for the judges at
once (so judging overlaps answering) and tops the pools up, keeping at most two calls per lane
submitted. A stage never waits for a slow batch-mate before it starts the next request.

An API model runs best with many requests of one sample in flight (`concurrency` lanes of one);
a local model with one batch of `batch_size` at a time on its device (one lane).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.progress import Progress

from holisafe.core.records import Model, Response
from holisafe.data import Sample
from holisafe.judges import Judge
from holisafe.models.endpoints import summary
from holisafe.run.leases import ANSWERING, Leases
from holisafe.store import Store

_CALLS_PER_LANE = 2
_POLL_S = 0.5  # how often a worker with nothing left to claim looks again, while others work


@dataclass(frozen=True)
class Feed:
    """How a stage is fed: `lanes` calls at once, each with up to `batch` samples."""

    lanes: int
    batch: int


def feed_of(backend: object, batch_size: int) -> Feed:
    """An API model (it has `concurrency`) gets that many lanes of one sample; anything else
    (a local model, the string judge) one lane of its `batch_size`, else of `batch_size`."""
    concurrency = getattr(backend, "concurrency", None)
    if concurrency:
        return Feed(lanes=concurrency, batch=1)
    return Feed(lanes=1, batch=getattr(backend, "batch_size", batch_size))


def _pool_of(backend: object) -> Any:
    """The backend's EndpointPool when it spreads requests over several endpoints."""
    pool = getattr(backend, "pool", None)
    return pool if pool is not None and len(pool.urls) > 1 else None


@dataclass
class _Stage:
    task: str  # ANSWERING, or a judge id
    # called before its first call: (feed, description, the EndpointPool of several or None)
    open: Callable[[], tuple[Feed, str, Any]]
    work: Callable[[list[Any]], list[Any]]  # a batch of items → one result per item
    commit: Callable[[list[str], list[Any]], None]  # (sample ids, results) → saved
    feed: Feed = Feed(1, 1)
    items: dict[str, Any] = field(default_factory=dict)  # sample id → its work item
    queue: deque[str] = field(default_factory=deque)  # candidates, not yet claimed
    held: deque[str] = field(default_factory=deque)  # claimed, not yet submitted
    attempted: set[str] = field(default_factory=set)  # never twice in one pass
    calls: int = 0  # submitted and not yet committed
    running: int = 0  # samples in those calls
    done: int = 0
    pool: ThreadPoolExecutor | None = None
    bar_task: int | None = None
    description: str = ""
    endpoints: Any = None  # the backend's EndpointPool, when it has several endpoints

    def offer(self, sample_id: str, item: Any) -> None:
        if sample_id not in self.attempted and sample_id not in self.items:
            self.items[sample_id] = item
            self.queue.append(sample_id)


@dataclass
class PipelineCounts:
    answered: int = 0
    judged: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Answers and judges one run of `store`; build with the stages, then call `run()`."""

    def __init__(
        self, store: Store, leases: Leases, run_id: int, samples: list[Sample], bar: Progress
    ):
        self.store = store
        self.leases = leases
        self.run_id = run_id
        self.by_id = {str(s.id): s for s in samples}
        self.order = [str(s.id) for s in samples]
        self.bar = bar
        self.answering: _Stage | None = None
        self.judging: list[_Stage] = []
        self._futures: dict[Future, tuple[_Stage, list[str]]] = {}

    def answer_with(
        self,
        load: Callable[[], Model],
        answer: Callable[[Model, list[Sample]], list[Response]],
        batch_size: int,
    ) -> None:
        """Answer the samples without a successful response, with the model `load` gives (it
        is called only when there is a sample to answer)."""
        loaded: list[Model] = []

        def open_model() -> tuple[Feed, str, Any]:
            loaded.append(load())
            description = f"answering with {loaded[0].spec}"
            return feed_of(loaded[0], batch_size), description, _pool_of(loaded[0])

        self.answering = _Stage(
            ANSWERING,
            open_model,
            lambda batch: answer(loaded[0], batch),
            self._save_responses,
        )

    def judge_with(self, judge: Judge, batch_size: int) -> None:
        backend = getattr(judge, "model", judge)
        feed = feed_of(backend, batch_size)
        stage = _Stage(
            judge.id,
            lambda: (feed, f"judging with {judge.id}", _pool_of(backend)),
            judge.judge,
            lambda ids, verdicts: self.store.save_verdicts(
                self.run_id, judge.id, zip(ids, verdicts, strict=True)
            ),
        )
        self.judging.append(stage)

    @property
    def _stages(self) -> list[_Stage]:
        return [s for s in (self.answering, *self.judging) if s is not None]

    def run(self) -> PipelineCounts:
        """Work until nothing is left that this worker may do; commits as results arrive."""
        try:
            self._refill()
            while True:
                for stage in self._stages:
                    self._top_up(stage)
                if self._futures:
                    self._collect()
                    self.leases.renew_if_due()
                elif self.leases.others_working(self.run_id):
                    time.sleep(_POLL_S)  # another worker holds what is left: it may die
                    self._refill()
                elif not self._refill():
                    break
        finally:
            for stage in self._stages:
                if stage.pool is not None:
                    stage.pool.shutdown(wait=False, cancel_futures=True)
            self.leases.release_all()
        return PipelineCounts(
            self.answering.done if self.answering else 0, {s.task: s.done for s in self.judging}
        )

    # --- feeding --------------------------------------------------------------------------

    def _refill(self) -> bool:
        """Queue what the store says is still to do; whether anything new was queued."""
        before = sum(len(s.queue) for s in self._stages)
        if self.answering is not None:
            for sample_id in self.store.pending_samples(self.run_id, self.order):
                self.answering.offer(sample_id, self.by_id[sample_id])
        for stage in self.judging:
            for sample_id, text in self.store.pending_verdicts(self.run_id, stage.task):
                stage.offer(sample_id, (self.by_id[sample_id], text))
        self._show()
        return sum(len(s.queue) for s in self._stages) > before

    def _top_up(self, stage: _Stage) -> None:
        if stage.queue and stage.pool is None:
            self._start(stage)
        if stage.pool is None:
            return
        most = stage.feed.lanes * _CALLS_PER_LANE
        room = most * stage.feed.batch - stage.running - len(stage.held)
        # Claims go in lots of at least half the room: one write per half a round of calls.
        if room >= min(most * stage.feed.batch // 2, len(stage.queue)):
            self._claim(stage, room)
        while stage.held and stage.calls < most:
            ids = [stage.held.popleft() for _ in range(min(stage.feed.batch, len(stage.held)))]
            stage.attempted.update(ids)
            batch = [stage.items.pop(i) for i in ids]
            self._futures[stage.pool.submit(stage.work, batch)] = (stage, ids)
            stage.calls += 1
            stage.running += len(ids)

    def _claim(self, stage: _Stage, count: int) -> None:
        while count > 0 and stage.queue:
            claimed, looked = self.leases.claim(self.run_id, stage.task, stage.queue, count)
            for _ in range(looked):
                sample_id = stage.queue.popleft()
                if sample_id not in claimed:
                    del stage.items[sample_id]  # done, or another worker's
            stage.held.extend(claimed)
            count -= len(claimed)

    def _start(self, stage: _Stage) -> None:
        stage.feed, stage.description, stage.endpoints = stage.open()
        stage.pool = ThreadPoolExecutor(stage.feed.lanes, thread_name_prefix="holisafe")
        stage.bar_task = self.bar.add_task(stage.description, total=None)

    def _collect(self) -> None:
        """Commit every call that has finished, waiting for at least one (or a renewal)."""
        timeout = self.leases.lease_s / 3
        finished, _ = wait(self._futures, timeout=timeout, return_when=FIRST_COMPLETED)
        results: dict[int, tuple[_Stage, list[str], list[Any]]] = {}
        for future in finished:
            stage, ids = self._futures.pop(future)
            stage.calls -= 1
            stage.running -= len(ids)
            _, stage_ids, stage_results = results.setdefault(id(stage), (stage, [], []))
            stage_ids.extend(ids)
            stage_results.extend(future.result())  # a fault that dooms the stage propagates
        for stage, ids, stage_results in results.values():  # one write per stage
            stage.commit(ids, stage_results)
            self.leases.release(self.run_id, stage.task, ids)
            stage.done += len(ids)
        self._show()

    def _save_responses(self, ids: list[str], responses: list[Response]) -> None:
        extras = {
            i: {"safety": asdict(r.safety), "unsafe_score": r.safety.unsafe, "gated": r.gated}
            for i, r in zip(ids, responses, strict=True)
            if r.safety is not None
        }
        self.store.save_responses(self.run_id, zip(ids, responses, strict=True), extras)
        for sample_id, response in zip(ids, responses, strict=True):
            if response.ok:
                for stage in self.judging:
                    stage.offer(sample_id, (self.by_id[sample_id], response.text))

    def _show(self) -> None:
        for stage in self._stages:
            if stage.bar_task is not None:
                left = len(stage.queue) + len(stage.held) + stage.running
                description = stage.description
                if stage.endpoints is not None:
                    description += f" ({summary(stage.endpoints.states())})"
                self.bar.update(
                    stage.bar_task,
                    completed=stage.done,
                    total=stage.done + left,
                    description=description,
                )
