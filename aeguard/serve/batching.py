"""Micro-batching: requests from many clients are gathered into one onnxruntime call.

When no batch is running, the first request waits at most max_wait for company (or until
max_batch_size images are pending). While batches run, new requests pile up and are taken the
moment an inference worker frees up, without further waiting: batches grow with load and add no
delay when quiet. Up to `workers` batches run at once on a thread pool (onnxruntime sessions are
thread-safe and release the GIL), so small calls do not wait on each other and the event loop
keeps accepting and parsing requests meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from aeguard.serve.metrics import Metrics
from aeguard.serve.model_store import LoadedModel, ModelStore


class BatchingScorer:
    """Scores image arrays for request handlers, batching them when configured to."""

    def __init__(self, store: ModelStore, metrics: Metrics, max_batch_size: int, max_wait_s: float, batching: bool,
                 workers: int = 1):
        self.store = store
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.batching = batching
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aeguard-infer")
        self._slots = asyncio.Semaphore(workers)
        self._running = 0
        self._in_flight: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        self._pending: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._pending_images = 0
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self.batching:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    def _infer(self, model: LoadedModel, images: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        scores = model.scorer.score(images).scores
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(images))
        return scores

    async def score(self, images: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        """Scores for (N, C, H, W) float32 images, and the model that produced them."""
        loop = asyncio.get_running_loop()
        if not self.batching or len(images) >= self.max_batch_size:
            model = self.store.current
            scores = await loop.run_in_executor(self.executor, self._infer, model, images)
        else:
            self.store.current  # raises NotReadyError now rather than inside a batch
            future = loop.create_future()
            self._pending.append((images, future))
            self._pending_images += len(images)
            self._has_work.set()
            if self._pending_images >= self.max_batch_size:
                self._full.set()
            scores, model = await future
        self.metrics.observe_scores(scores.tolist(), model.threshold)
        return scores, model

    def _take_batch(self) -> list[tuple[np.ndarray, asyncio.Future]]:
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

    async def _run(self) -> None:
        while True:
            await self._has_work.wait()
            if self._running == 0 and self._pending_images < self.max_batch_size:
                self._full.clear()
                try:
                    async with asyncio.timeout(self.max_wait_s):
                        await self._full.wait()
                except TimeoutError:
                    pass
            while self._pending:
                await self._slots.acquire()
                batch = self._take_batch()
                if not batch:
                    self._slots.release()
                    continue
                self._running += 1
                task = asyncio.create_task(self._execute(batch))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            self._has_work.clear()

    async def _execute(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        """Score one batch and hand each request its share; failures go to every waiting request."""
        try:
            # every image of one batch goes through the same model, even if a reload lands meanwhile
            model = self.store.current
            scores = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._infer, model, np.concatenate([images for images, _ in batch])
            )
        except Exception as exc:  # the daemon lives on; the requests get the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._running -= 1
            self._slots.release()
        offset = 0
        for images, future in batch:
            if not future.done():
                future.set_result((scores[offset : offset + len(images)], model))
            offset += len(images)
