"""Micro-batching: requests from many clients are gathered into one onnxruntime call.

When no batch is running, the first request waits at most max_wait for company (or until
max_batch_size images are pending). When a batch is running and a worker is free, the requests that
arrived in the same event-loop turn go together at once; when every worker is busy, requests pile
up and go the moment one frees: batches grow with load, and a busy daemon adds no waiting. Up to
`workers` batches run at once on a thread pool (onnxruntime sessions are thread-safe and release
the GIL), so small calls do not wait on each other and the event loop keeps accepting and parsing
requests meanwhile.

The scheduling is plain event-loop callbacks (a timer, the executor's done callback) rather than a
task with events: a single-image request costs the loop only a future, a timer and a deque entry,
which is what lets the daemon keep up with the HTTP stack under many small requests.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from aeguard.errors import RequestTimeoutError
from aeguard.serve.metrics import Metrics
from aeguard.serve.model_store import LoadedModel, ModelStore

Pending = tuple[np.ndarray, asyncio.Future]


def _expire(future: asyncio.Future, timeout_s: float) -> None:
    if not future.done():
        future.set_exception(RequestTimeoutError(f"scoring took longer than {timeout_s:g}s"))


class BatchingScorer:
    """Scores image arrays for request handlers, batching them when configured to."""

    def __init__(self, store: ModelStore, metrics: Metrics, max_batch_size: int, max_wait_s: float, batching: bool,
                 workers: int = 1, timeout_s: float = 30.0):
        self.store = store
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.batching = batching
        self.workers = workers
        self.timeout_s = timeout_s
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aeguard-infer")
        self._running = 0  # batches handed to the executor and not finished
        self._pending: deque[Pending] = deque()
        self._pending_images = 0
        self._flush_handle: asyncio.Handle | None = None  # a scheduled _flush

    async def start(self) -> None:
        pass  # nothing runs until the first request: the scheduling lives in callbacks

    async def stop(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self.executor.shutdown(wait=True)

    def _infer(self, model: LoadedModel, images: np.ndarray) -> np.ndarray:
        """One onnxruntime call, on an executor thread; its metrics are written there too, off the event loop."""
        started = time.perf_counter()
        scores = model.scorer.score(images).scores
        seconds = time.perf_counter() - started
        self.metrics.observe_batch(len(images), seconds)
        self.metrics.observe_scores(scores, model.threshold)
        return scores

    async def score(self, images: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        """Scores for (N, C, H, W) float32 images, and the model that produced them.

        Raises RequestTimeoutError when they are not scored within timeout_s (the request is then dropped
        from its batch if that batch has not started).
        """
        self.store.current  # raises NotReadyError now rather than inside a batch
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        expiry = loop.call_later(self.timeout_s, _expire, future, self.timeout_s)
        if not self.batching or len(images) >= self.max_batch_size:
            self._launch([(images, future)])
        else:
            self._pending.append((images, future))
            self._pending_images += len(images)
            self._schedule()
        try:
            return await future
        finally:
            expiry.cancel()

    def _schedule(self) -> None:
        """Called when work arrives: start a batch at once when it is full, else gather company first.

        A quiet daemon gives the first request max_wait to find company. A busy one (a batch already running,
        a worker free) waits only for the end of this event-loop iteration, which gathers every request that
        arrived with this one and adds no idle time.
        """
        if self._running >= self.workers:
            return  # the next batch starts when one finishes (_finish)
        if self._pending_images >= self.max_batch_size:
            self._flush()
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            quiet = self._running == 0
            self._flush_handle = loop.call_later(self.max_wait_s, self._flush) if quiet else loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Start batches from the pending requests while inference workers are free."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        while self._pending and self._running < self.workers:
            batch = self._take_batch()
            if batch:
                self._launch(batch)

    def _take_batch(self) -> list[Pending]:
        """Pending requests up to max_batch_size images (at least one), oldest first; skips abandoned ones."""
        taken, count = [], 0
        while self._pending:
            images, future = self._pending[0]
            if taken and count + len(images) > self.max_batch_size:
                break
            self._pending.popleft()
            self._pending_images -= len(images)
            if not future.done():  # its caller timed out or went away
                taken.append((images, future))
                count += len(images)
        return taken

    def _launch(self, batch: list[Pending]) -> None:
        try:  # every image of one batch goes through the same model, even if a reload lands meanwhile
            model = self.store.current
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        images = batch[0][0] if len(batch) == 1 else np.concatenate([images for images, _ in batch])
        self._running += 1
        done = asyncio.get_running_loop().run_in_executor(self.executor, self._infer, model, images)
        done.add_done_callback(functools.partial(self._finish, batch, model))

    def _finish(self, batch: list[Pending], model: LoadedModel, done: asyncio.Future) -> None:
        """Hand each request its share of the batch's scores (or the failure: the daemon lives on)."""
        self._running -= 1
        error = done.exception()
        scores = done.result() if error is None else None
        offset = 0
        for images, future in batch:
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result((scores[offset : offset + len(images)], model))
            offset += len(images)
        if self._pending:
            self._flush()
