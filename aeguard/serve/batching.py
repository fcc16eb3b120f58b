"""Micro-batching: requests from many clients are gathered into one onnxruntime call.

The first request of a batch waits at most max_wait for others; a batch closes early once it
holds max_batch_size images. Inference runs on one worker thread (onnxruntime releases the GIL
and parallelises inside the call), so the event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from aeguard.serve.metrics import Metrics
from aeguard.serve.model_store import LoadedModel, ModelStore


class BatchingScorer:
    """Scores image arrays for request handlers, batching them when configured to."""

    def __init__(self, store: ModelStore, metrics: Metrics, max_batch_size: int, max_wait_s: float, batching: bool):
        self.store = store
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.batching = batching
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aeguard-infer")
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self.batching:
            self._queue = asyncio.Queue()
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
        model = self.store.current
        loop = asyncio.get_running_loop()
        if not self.batching or len(images) >= self.max_batch_size:
            scores = await loop.run_in_executor(self.executor, self._infer, model, images)
        else:
            future = loop.create_future()
            await self._queue.put((images, future))
            scores, model = await future
        self.metrics.observe_scores(scores.tolist(), model.threshold)
        return scores, model

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            count = len(items[0][0])
            deadline = loop.time() + self.max_wait_s
            while count < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                items.append(item)
                count += len(item[0])
            live = [(images, future) for images, future in items if not future.done()]  # skip timed-out callers
            if not live:
                continue
            try:
                model = self.store.current
                # every image of one batch goes through the same model, even if a reload lands meanwhile
                scores = await loop.run_in_executor(
                    self.executor, self._infer, model, np.concatenate([images for images, _ in live])
                )
            except Exception as exc:  # hand the failure to every waiting request; the loop lives on
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            offset = 0
            for images, future in live:
                if not future.done():
                    future.set_result((scores[offset : offset + len(images)], model))
                offset += len(images)
