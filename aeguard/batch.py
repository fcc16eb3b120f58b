"""Score a stream of image paths: parallel decoding, full onnxruntime batches, one row per input. No torch.

Decoding runs in worker processes (aeguard.decoding), one batch of paths per task, a few batches
ahead of the scorer and in input order. At most `prefetch_batches` batches are in flight, so
memory stays flat however many paths stream through.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aeguard.data.images import DEFAULT_MAX_PIXELS
from aeguard.decoding import DecodePool
from aeguard.heatmaps import save_heatmap
from aeguard.outputs import RowWriter
from aeguard.runtime import Scorer

# Squared pixel error that saturates the heat-map colours: a pixel off by half the range or more.
HEATMAP_SCALE = 0.25


@dataclass
class ScoreSummary:
    scored: int = 0
    anomalies: int = 0
    errors: int = 0
    skipped: int = 0  # already in the output (--resume)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.scored + self.errors

    @property
    def images_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ScoreOptions:
    batch_size: int = 64
    workers: int = 0  # decoding processes; 0 = one per core
    prefetch_batches: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_maps: Path | None = None


def record_row(writer: RowWriter, summary: ScoreSummary, path: str, threshold: float,
               score: float | None, error: str | None, on_error: Callable[[str], None] | None) -> bool:
    """Write one input's row and count it; returns whether it was flagged anomalous."""
    flagged = score is not None and score > threshold
    writer.write({"path": path, "score": score, "threshold": threshold,
                  "is_anomaly": None if score is None else flagged, "error": error})
    if score is None:
        summary.errors += 1
        if on_error is not None:
            on_error(error)
    else:
        summary.scored += 1
        summary.anomalies += int(flagged)
    return flagged


def unscored(paths: Iterable[Path], skip: set[str] | frozenset[str], summary: ScoreSummary) -> Iterable[str]:
    """Path strings not yet in the output; counts the ones skipped."""
    for path in paths:
        name = str(path)
        if name in skip:
            summary.skipped += 1
        else:
            yield name


def score_paths(
    scorer: Scorer,
    paths: Iterable[Path],
    writer: RowWriter,
    options: ScoreOptions | None = None,
    skip: set[str] | frozenset[str] = frozenset(),
    on_error: Callable[[str], None] | None = None,
    on_progress: Callable[[ScoreSummary], None] | None = None,
) -> ScoreSummary:
    """Decode, score and write rows in input order; unreadable files get a row with the reason."""
    options = options or ScoreOptions()
    summary = ScoreSummary()
    started = time.perf_counter()
    if options.save_maps is not None:
        options.save_maps.mkdir(parents=True, exist_ok=True)
    window: deque[tuple[list[str], Future]] = deque()
    decode_args = (scorer.height, scorer.width, options.max_pixels)
    pool = DecodePool(options.workers or os.cpu_count() or 1)

    def finish_batch() -> None:
        names, future = window.popleft()
        decoded = list(zip(names, pool.result(names, future, *decode_args)))
        good = [array for _, array in decoded if not isinstance(array, str)]
        result = scorer.score(np.stack(good), error_maps=options.save_maps is not None) if good else None
        position = 0
        for name, array in decoded:
            if isinstance(array, str):
                record_row(writer, summary, name, scorer.threshold, None, array, on_error)
                continue
            if record_row(writer, summary, name, scorer.threshold, float(result.scores[position]), None, on_error) \
                    and options.save_maps is not None:
                save_heatmap(options.save_maps, name, result.error_maps[position], HEATMAP_SCALE)
            position += 1
        writer.flush()  # a crash from here on loses at most the batch in flight
        summary.seconds = time.perf_counter() - started
        if on_progress is not None:
            on_progress(summary)

    try:
        chunk: list[str] = []
        for name in unscored(paths, skip, summary):
            chunk.append(name)
            if len(chunk) == options.batch_size:
                window.append((chunk, pool.submit(chunk, *decode_args)))
                chunk = []
                if len(window) >= options.prefetch_batches:
                    finish_batch()
        if chunk:
            window.append((chunk, pool.submit(chunk, *decode_args)))
        while window:
            finish_batch()
    finally:
        pool.close()
    summary.seconds = time.perf_counter() - started
    return summary
