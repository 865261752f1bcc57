"""Dynamic batching: requests that arrive together share one model call.

A collector task on the event loop takes the first waiting request, then gathers more for up
to `wait_s` or until `max_batch` are in hand. It groups them by what may share a call (the
same generation settings; guard requests together) and runs each group on one worker thread,
so the event loop keeps accepting requests while the model works; those pile up and form the
next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from holisafe.core.records import GenerationSettings, Model, Request, Response, SafetyPrediction
from holisafe.serve.errors import ApiError, ServeError

CLASSIFY = "classify"  # the group key of guard requests


@dataclass(frozen=True)
class BatchStats:
    """What the batcher has done so far; `largest_batch` counts requests in one model call."""

    batches: int = 0
    requests: int = 0
    largest_batch: int = 0


@dataclass
class _Job:
    key: Hashable  # jobs with equal keys may share a model call
    payload: Any  # a Request to answer, or a list of images to classify
    future: asyncio.Future


class DynamicBatcher:
    """Answers generate and classify calls from many coroutines with batched model calls."""

    def __init__(self, model: Model, *, max_batch: int, wait_s: float):
        self.model = model
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._collector: asyncio.Task | None = None
        self._worker: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="holisafe-model")
        self._collector = asyncio.create_task(self._collect_forever())

    async def stop(self) -> None:
        self._collector.cancel()
        await asyncio.gather(self._collector, return_exceptions=True)
        self._worker.shutdown(wait=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(ApiError(503, "the server is shutting down", "shutdown"))

    async def generate(self, request: Request, settings: GenerationSettings) -> Response:
        return await self._submit(settings, request)

    async def classify(self, images: list[Image.Image]) -> list[SafetyPrediction]:
        return await self._submit(CLASSIFY, images)

    async def _submit(self, key: Hashable, payload: Any) -> Any:
        if self._queue is None:
            raise ServeError("the batcher was not started")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(key, payload, future))
        return await future

    async def _collect_forever(self) -> None:
        while True:
            jobs = await self._collect()
            for key in dict.fromkeys(job.key for job in jobs):
                await self._dispatch(key, [job for job in jobs if job.key == key])

    async def _collect(self) -> list[_Job]:
        """The first waiting job and whatever else arrives within the wait window."""
        loop = asyncio.get_running_loop()
        jobs = [await self._queue.get()]
        deadline = loop.time() + self.wait_s
        while len(jobs) < self.max_batch:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return jobs

    async def _dispatch(self, key: Hashable, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if not job.future.done()]  # cancelled: the client left
        if not jobs:
            return
        self.stats = BatchStats(
            batches=self.stats.batches + 1,
            requests=self.stats.requests + len(jobs),
            largest_batch=max(self.stats.largest_batch, len(jobs)),
        )
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._worker, self._call, key, [job.payload for job in jobs]
            )
        except Exception as exc:  # the model failed the whole batch: each caller hears why
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, result in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)

    def _call(self, key: Hashable, payloads: list) -> list:
        """One model call for a group, on the worker thread; one result per payload."""
        if key != CLASSIFY:
            return self.model.generate(payloads, key)
        predictions = self.model.classify([image for images in payloads for image in images])
        results, start = [], 0
        for images in payloads:
            results.append(predictions[start : start + len(images)])
            start += len(images)
        return results
