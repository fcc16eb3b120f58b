"""Score a stream of image paths: parallel decoding, full onnxruntime batches, one row per input. No torch.

Decoding runs in worker processes (aeguard.batch.decoding), one batch of paths per task, a few batches
ahead of the scorer and in input order. At most `prefetch_batches` batches are in flight, so
memory stays flat however many paths stream through.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aeguard.batch.decoding import DecodePool
from aeguard.batch.heatmaps import save_heatmap
from aeguard.batch.writers import RowWriter, path_text
from aeguard.config import ScoreOptions  # noqa: F401 - re-exported: the engine's options
from aeguard.errors import OutputError
from aeguard.scoring.results import NON_FINITE_SCORE, ItemResult
from aeguard.scoring.scorer import Scorer


@dataclass
class ScoreSummary:
    scored: int = 0
    anomalies: int = 0
    errors: int = 0
    skipped: int = 0  # already in the output (--resume)
    seconds: float = 0.0
    by_node: Counter = field(default_factory=Counter)  # inputs each Ray node scored (Ray engine only)

    @property
    def total(self) -> int:
        return self.scored + self.errors

    @property
    def images_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


def prepare_maps_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--save-maps {folder}: {exc.strerror or exc}") from None


def write_heatmap(folder: Path, name: str, error_map: np.ndarray, scale: float) -> None:
    """One anomaly's heat map; a failure to write it stops the run like any output failure (exit 7)."""
    try:
        save_heatmap(folder, name, error_map, scale)
    except OSError as exc:
        raise OutputError(
            f"cannot write the heat map of {path_text(name)} into {folder}: {exc.strerror or exc}"
        ) from None


def record_row(
    writer: RowWriter,
    summary: ScoreSummary,
    path: str,
    threshold: float,
    result: ItemResult,
    on_error: Callable[[str], None] | None,
) -> None:
    """Write one input's row and count it."""
    writer.write(
        {
            "path": path,
            "score": result.score,
            "threshold": threshold,
            "is_anomaly": result.is_anomaly,
            "error": result.error,
        }
    )
    if result.error is not None:
        summary.errors += 1
        if on_error is not None:
            on_error(f"{path_text(path)}: {result.error}" if result.error == NON_FINITE_SCORE else result.error)
    else:
        summary.scored += 1
        if result.is_anomaly:
            summary.anomalies += 1


def unscored(paths: Iterable[Path], done: Counter, summary: ScoreSummary) -> Iterable[str]:
    """Path strings not yet in the output; counts the ones skipped.

    `done` counts the rows each path already has, so a path listed twice gets two rows whether the run
    was interrupted or not.
    """
    for path in paths:
        name = str(path)
        key = path_text(name)
        if done[key] > 0:
            done[key] -= 1
            summary.skipped += 1
        else:
            yield name


def score_paths(
    scorer: Scorer,
    paths: Iterable[Path],
    writer: RowWriter,
    options: ScoreOptions | None = None,
    done: Counter | None = None,
    on_error: Callable[[str], None] | None = None,
    on_progress: Callable[[ScoreSummary], None] | None = None,
) -> ScoreSummary:
    """Decode, score and write rows in input order; unreadable files get a row with the reason."""
    options = options or ScoreOptions()
    summary = ScoreSummary()
    started = time.perf_counter()
    if options.save_maps is not None:
        prepare_maps_folder(options.save_maps)
    window: deque[tuple[list[str], Future]] = deque()
    decode_args = (scorer.preprocessing, options.max_pixels)
    pool = DecodePool(options.workers or os.cpu_count() or 1)

    def finish_batch() -> None:
        names, future = window.popleft()
        decoded = pool.result(names, future, *decode_args)
        results, error_maps = scorer.score_decoded(decoded, error_maps=options.save_maps is not None)
        for name, result, error_map in zip(names, results, error_maps):
            record_row(writer, summary, name, scorer.threshold, result, on_error)
            if result.is_anomaly and options.save_maps is not None and error_map is not None:
                write_heatmap(options.save_maps, name, error_map, scorer.map_scale)
        writer.flush()  # a crash from here on loses at most the batch in flight
        summary.seconds = time.perf_counter() - started
        if on_progress is not None:
            on_progress(summary)

    try:
        chunk: list[str] = []
        for name in unscored(paths, Counter(done or ()), summary):
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
