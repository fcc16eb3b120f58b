"""Score a stream of image paths in batches, one output row per input, bad files included. No torch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aeguard.data.images import load_image
from aeguard.errors import ImageError
from aeguard.outputs import RowWriter
from aeguard.runtime import Scorer


@dataclass
class ScoreSummary:
    scored: int = 0
    anomalies: int = 0
    errors: int = 0

    @property
    def total(self) -> int:
        return self.scored + self.errors


def score_paths(
    scorer: Scorer,
    paths: Iterable[Path],
    writer: RowWriter,
    batch_size: int = 64,
    on_error: Callable[[str], None] | None = None,
) -> ScoreSummary:
    """Decode, score and write rows in input order; unreadable files get a row with the reason."""
    summary = ScoreSummary()
    pending: list[tuple[Path, np.ndarray | None, str | None]] = []

    def flush() -> None:
        good = [array for _, array, _ in pending if array is not None]
        scores = iter(scorer.score(np.stack(good)).scores.tolist()) if good else iter(())
        for path, array, error in pending:
            score = next(scores) if array is not None else None
            flagged = None if score is None else bool(score > scorer.threshold)
            writer.write({"path": str(path), "score": score, "threshold": scorer.threshold,
                          "is_anomaly": flagged, "error": error})
            if score is None:
                summary.errors += 1
            else:
                summary.scored += 1
                summary.anomalies += int(flagged)
        writer.flush()
        pending.clear()

    for path in paths:
        try:
            pending.append((path, load_image(path, scorer.height, scorer.width), None))
        except ImageError as exc:
            pending.append((path, None, str(exc)))
            if on_error is not None:
                on_error(str(exc))
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return summary
