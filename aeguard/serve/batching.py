"""Micro-batching: requests from many clients are gathered into one onnxruntime call.

When the daemon is quiet, the first request waits at most max_wait for company (or until
max_batch_size images are pending). When it is busy (a batch running, or the previous request less
than max_wait ago), the requests that arrived in the same event-loop turn go together at once; when every
inference worker is busy, requests pile up and go the moment one frees: batches grow with load, and a
busy daemon adds no waiting.

Where a batch runs depends on what it costs. A batch the model scores in under `inline_max_s` (timed
when the model loads) runs right on the event loop: handing it to a thread costs more than that (a
wake-up, two GIL hand-offs, a call back into the loop), and for small models that hand-off, not
inference, limited single-image throughput. Longer batches go to a thread pool of `workers` threads
(onnxruntime releases the GIL), so the event loop keeps accepting and parsing requests meanwhile.

The scheduling is plain event-loop callbacks rather than tasks with events, and request timeouts are
one periodic sweep rather than a timer per request: a single-image request costs the loop only a
future and two deque entries.
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
UINT8_SCALE = np.float32(255.0)


def model_input(parts: list[np.ndarray]) -> np.ndarray:
    """One float32 batch in [0, 1] from the requests' arrays: float32 ones as they are, uint8 ones (0-255,
    as the Open Inference Protocol's UINT8 tensors arrive) scaled here, once per batch rather than per request.
    The same float32 division as to_model_input and the image decoder."""
    joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if joined.dtype == np.uint8:  # every part was uint8 (one float32 part would have made it float32)
        return np.divide(joined, UINT8_SCALE, dtype=np.float32)
    if len(parts) == 1 or not any(part.dtype == np.uint8 for part in parts):
        return joined
    return np.concatenate([np.divide(p, UINT8_SCALE, dtype=np.float32) if p.dtype == np.uint8 else p for p in parts])


class BatchingScorer:
    """Scores image arrays for request handlers, batching them when configured to."""

    def __init__(
        self,
        store: ModelStore,
        metrics: Metrics,
        max_batch_size: int,
        max_wait_s: float,
        batching: bool,
        workers: int = 1,
        timeout_s: float = 30.0,
        inline_max_s: float = 0.001,
    ):
        self.store = store
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.batching = batching
        self.workers = workers
        self.timeout_s = timeout_s
        self.inline_max_s = inline_max_s
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aeguard-infer")
        self._running = 0  # batches handed to the executor and not finished
        self._last_arrival = -float("inf")  # event-loop time of the latest request
        self._pending: deque[Pending] = deque()
        self._pending_images = 0
        self._flush_handle: asyncio.Handle | None = None  # a scheduled _flush
        # (deadline, future) in arrival order: with one timeout for all, deadlines only grow
        self._deadlines: deque[tuple[float, asyncio.Future]] = deque()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._sweep_interval = min(max(timeout_s / 8, 0.001), 1.0)

    async def start(self) -> None:
        pass  # nothing runs until the first request: the scheduling lives in callbacks

    async def stop(self) -> None:
        for handle in (self._flush_handle, self._sweep_handle):
            if handle is not None:
                handle.cancel()
        self.executor.shutdown(wait=True)

    def _infer(self, model: LoadedModel, parts: list[np.ndarray]) -> np.ndarray:
        """One onnxruntime call, with its metrics (on an executor thread for long batches, off the event loop)."""
        started = time.perf_counter()
        images = model_input(parts)
        scores = model.scorer.score(images).scores
        seconds = time.perf_counter() - started
        self.metrics.observe_batch(len(images), seconds)
        self.metrics.observe_scores(scores, model.threshold)
        return scores

    def score(self, images: np.ndarray) -> asyncio.Future:
        """A future of the scores (a list of floats) for (N, C, H, W) images (float32 in [0, 1] or uint8 0-255)
        and the model that produced them: `scores, model = await scorer.score(images)`. (A plain function
        returning the future, not a coroutine: one frame less for the event loop to resume per request.)

        The future fails with RequestTimeoutError when the images are not scored within timeout_s (the request
        is then dropped from its batch if that batch has not started).
        """
        _ = self.store.current  # raises NotReadyError now rather than inside a batch
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        now = loop.time()
        self._deadlines.append((now + self.timeout_s, future))
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self._sweep_interval, self._sweep)
        if not self.batching or len(images) >= self.max_batch_size:
            self._launch([(images, future)])
        else:
            self._pending.append((images, future))
            self._pending_images += len(images)
            self._schedule(busy=self._running > 0 or now - self._last_arrival < self.max_wait_s)
        self._last_arrival = now
        return future

    def _sweep(self) -> None:
        """Fails the requests whose deadline has passed and drops finished ones from the front of the queue;
        runs every timeout/8 while any request is queued."""
        loop = asyncio.get_running_loop()
        now, deadlines = loop.time(), self._deadlines
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
            _, future = deadlines.popleft()
            if not future.done():
                future.set_exception(RequestTimeoutError(f"scoring took longer than {self.timeout_s:g}s"))
        self._sweep_handle = loop.call_later(self._sweep_interval, self._sweep) if deadlines else None

    def _schedule(self, busy: bool) -> None:
        """Called when work arrives: start a batch at once when it is full, else gather company first.

        A quiet daemon gives the first request max_wait to find company. A busy one waits only for the end of
        this event-loop iteration, which gathers every request that arrived with this one and adds no idle time
        (timing busyness from the last batch's end instead left the loop idle: answering a batch of 64 takes
        longer than max_wait, so the next requests looked like a quiet daemon's and waited).
        """
        if self._running >= self.workers:
            return  # the next batch starts when one finishes (_finish)
        if self._pending_images >= self.max_batch_size:
            self._flush()
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_soon(self._flush) if busy else loop.call_later(self.max_wait_s, self._flush)

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
        taken: list[Pending] = []
        count = 0
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
        except Exception as exc:  # noqa: BLE001 - NotReadyError or worse: every waiting request gets it
            self._fail(batch, exc)
            return
        parts = [images for images, _ in batch]
        count = sum(map(len, parts))
        loop = asyncio.get_running_loop()
        if count * model.seconds_per_image <= self.inline_max_s:
            try:
                scores = self._infer(model, parts)
            except Exception as exc:  # noqa: BLE001 - the daemon lives on; these requests get the failure
                self._fail(batch, exc)
            else:
                self._deliver(batch, model, scores)
            return
        self._running += 1
        done = loop.run_in_executor(self.executor, self._infer, model, parts)
        done.add_done_callback(functools.partial(self._finish, batch, model))

    def _finish(self, batch: list[Pending], model: LoadedModel, done: asyncio.Future) -> None:
        self._running -= 1
        error = done.exception()
        if error is not None:
            self._fail(batch, error)
        else:
            self._deliver(batch, model, done.result())
        if self._pending:
            self._flush()

    @staticmethod
    def _deliver(batch: list[Pending], model: LoadedModel, scores: np.ndarray) -> None:
        """Hand each request its share of the batch's scores (Python floats: what the replies are made of, and
        one conversion per batch instead of numpy calls per request)."""
        values = scores.tolist()
        offset = 0
        for images, future in batch:
            if not future.done():
                future.set_result((values[offset : offset + len(images)], model))
            offset += len(images)

    @staticmethod
    def _fail(batch: list[Pending], error: BaseException) -> None:
        """Every request of the batch still waiting gets the batch's failure."""
        for _, future in batch:
            if not future.done():
                future.set_exception(error)
