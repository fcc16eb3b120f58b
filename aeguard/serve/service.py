"""The daemon's data plane, MLServer-style: what the HTTP layer (app.py) calls, with no HTTP in it.

It owns the served model (load, all-or-nothing reload, the watcher, SIGHUP), readiness and draining, and
turns decoded images into scores and verdicts through the micro-batcher and the one anomaly rule.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading

import numpy as np
from prometheus_client import CollectorRegistry

from aeguard.data.images import split_decoded
from aeguard.errors import AeguardError, ModelNotFoundError, ModelOutputError, RequestError
from aeguard.scoring.results import ItemResult
from aeguard.serve import payloads
from aeguard.serve.batching import BatchingScorer, model_input
from aeguard.serve.metrics import Metrics
from aeguard.serve.model_store import LoadedModel, ModelStore
from aeguard.serve.settings import ServeSettings

log = logging.getLogger("aeguard.serve")


class ScoringService:
    """The daemon's data plane: the served model, its reloads, micro-batched scoring and the verdicts. No HTTP:
    the app translates requests into these calls and their results into replies."""

    def __init__(self, settings: ServeSettings, registry: CollectorRegistry | None):
        self.settings = settings
        self.metrics = Metrics(registry)
        self.store = ModelStore(
            settings.bundle, settings.model_name, settings.intra_op_threads, self.metrics, settings.provider
        )
        self.scorer = BatchingScorer(
            self.store,
            self.metrics,
            settings.max_batch_size,
            settings.max_wait_ms / 1000.0,
            settings.batching,
            settings.inference_workers or os.cpu_count() or 1,
            settings.request_timeout_s,
            settings.inline_max_ms / 1000.0,
        )
        self.draining = False
        self._watch_task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.store.loaded and not self.draining

    def begin_drain(self) -> None:
        """Readiness turns false first, so load balancers stop sending before the listener closes."""
        self.draining = True
        self.metrics.ready.set(0)
        log.info("draining: readiness is now false")

    async def reload(self, reason: str) -> LoadedModel:
        model = await asyncio.get_running_loop().run_in_executor(None, self.store.reload, reason)
        self.metrics.ready.set(1 if self.ready else 0)
        return model

    async def _reload_quietly(self, reason: str) -> None:
        try:
            await self.reload(reason)
        except AeguardError:
            pass  # logged and counted by the store; the old model keeps serving
        except Exception:  # noqa: BLE001 - a fault outside the store: logged, and the watcher lives on
            log.exception("model reload failed", extra={"fields": {"reason": reason}})

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            try:
                changed = self.store.changed_on_disk()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one check
                log.exception("checking the bundle on disk failed")
                continue
            if changed:
                await self._reload_quietly("bundle changed on disk")

    async def start(self) -> None:
        await self._reload_quietly("startup")
        await self.scorer.start()
        tune_garbage_collector()
        if self.settings.watch_interval_s > 0:
            self._watch_task = asyncio.create_task(self._watch())
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_quietly("SIGHUP")))

    async def stop(self) -> None:
        self.draining = True
        if self._watch_task is not None:
            self._watch_task.cancel()
        await self.scorer.stop()

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        """The served model, if `name` (and `version`, when given) are its own."""
        model = self.store.current
        if name != model.name:
            raise ModelNotFoundError(f"unknown model {name!r}; this daemon serves {model.name!r}")
        if version is not None and version != model.version:
            raise ModelNotFoundError(f"model {model.name!r} has no version {version!r}; it serves {model.version!r}")
        return model

    async def judge_items(
        self, items: list, labels: list[str], maps: bool = False
    ) -> tuple[LoadedModel, list[ItemResult], list[np.ndarray | None]]:
        """Encoded images or pixel arrays -> a result per item (one that cannot be read costs only its own) and,
        when `maps`, each readable item's anomaly map (C, H, W); else a None per item."""
        model = self.store.current
        prep, max_pixels = model.scorer.preprocessing, self.settings.max_pixels
        # Decoding is CPU work of unbounded cost (a 4000x4000 PNG takes most of a second): never on the loop.
        decoded = await asyncio.to_thread(payloads.decode_items, items, labels, prep, max_pixels)
        good, errors = split_decoded(decoded)
        if not good:
            raise RequestError(
                errors[0] if len(errors) == 1 else f"none of the {len(errors)} images could be read; first: {errors[0]}"
            )
        if maps:  # the map comes with its own score from one graph run, outside the batcher (few ask for it)
            results, per_item = await asyncio.to_thread(model.scorer.score_decoded, decoded, True)
            return model, results, per_item
        scores, model = await self.scorer.score(np.stack(good))
        return model, model.scorer.results(errors, scores), [None] * len(decoded)

    async def judge_tensor(
        self, images: np.ndarray, maps_of: LoadedModel | None = None
    ) -> tuple[LoadedModel, list[float], list[bool], np.ndarray | None]:
        """A batch of model inputs -> scores, verdicts and, with `maps_of` (the model the request was checked
        against), (N, H, W) anomaly maps. A non-finite score refuses the whole batch: a tensor reply has no
        place for one image's error, and a NaN must never read as normal."""
        maps = None
        if maps_of is not None:  # map and score from one graph run, outside the batcher (few ask for maps)
            model = maps_of
            batch = await asyncio.to_thread(model.scorer.score, model_input([images]), True)
            assert batch.error_maps is not None  # asked for
            scores, maps = batch.scores.tolist(), batch.error_maps.mean(axis=1)
        else:
            scores, model = await self.scorer.score(images)
        verdicts = model.scorer.results([None] * len(scores), scores)
        failed = next((i for i, v in enumerate(verdicts) if v.error is not None), None)
        if failed is not None:
            raise ModelOutputError(f"image {failed}: {verdicts[failed].error}")
        return model, scores, [bool(v.is_anomaly) for v in verdicts], maps


def tune_garbage_collector() -> None:
    """Requests allocate many short-lived containers, and CPython's default thresholds then run a collection
    every few requests, each walking every object of the process: onnxruntime's, numpy's and the model's
    included. Freezing what startup created (it lives as long as the process) takes those out of every walk,
    and a larger first threshold makes the young collections rarer. In one interleaved comparison (dense
    model, 64 clients sending single images) the daemon went from 0.44 to 0.51 of the do-nothing endpoint."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
