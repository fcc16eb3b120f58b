"""The anomaly rule and per-item results: the one place that decides what a score means. numpy only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aeguard.errors import ModelOutputError

NON_FINITE_SCORE = "the model gave a non-finite score (NaN or infinity) for this image, so it cannot be judged"


def require_finite(scores: np.ndarray, what: str, then: str = "") -> np.ndarray:
    """`scores`, unless one is NaN or infinite: a ModelOutputError counting them among `what`, then `then`.
    For the callers that need every score of a batch (a verdict, a metric, a quantile), not one per item."""
    if not np.isfinite(scores).all():
        bad = int(np.count_nonzero(~np.isfinite(scores)))
        raise ModelOutputError(f"the model gave {bad} of {len(scores)} {what} a non-finite score{then}")
    return scores


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One input's outcome: a score and its verdict, or the reason it has none."""

    score: float | None = None
    is_anomaly: bool | None = None
    error: str | None = None


def is_anomalous(scores: np.ndarray | float, threshold: float) -> np.ndarray:
    """The anomaly rule for arrays: a score above the threshold. (NaN compares as False here: callers that can
    meet one go through `judge`, which makes it an error instead.)"""
    return np.asarray(scores) > threshold


def judge(score: float, threshold: float) -> ItemResult:
    """One score's verdict: anomalous above the threshold; a NaN or infinite score is an error, never 'normal'."""
    score = float(score)
    if not math.isfinite(score):
        return ItemResult(error=NON_FINITE_SCORE)
    return ItemResult(score, bool(is_anomalous(score, threshold)))


def item_results(
    errors: Sequence[str | None], scores: Sequence[float] | np.ndarray, threshold: float
) -> list[ItemResult]:
    """Per-item results of a batch: the scores, in order, of the items without an error, and each error."""
    results, remaining = [], iter(scores)
    for error in errors:
        results.append(ItemResult(error=error) if error is not None else judge(next(remaining), threshold))
    return results
