"""The threshold, from the scores of held-out normal images only: post-processing that travels with the model.

numpy only, so a scoring host can recalibrate a bundle without the training or reporting extras.
"""

from __future__ import annotations

import numpy as np

from aeguard.errors import UsageError
from aeguard.scoring.results import is_anomalous

CALIBRATION_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999)


def threshold_at_fpr(normal_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest observed normal score that flags at most `target_fpr` of the normal images.

    An image is anomalous when score > threshold, so exactly the normal scores above the
    returned value are false positives; no anomalies are needed.
    """
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64))
    if scores.size == 0:
        raise UsageError("cannot calibrate on zero normal scores")
    if not 0.0 <= target_fpr < 1.0:
        raise UsageError(f"--target-fpr must lie in [0, 1), got {target_fpr}")
    allowed_false_positives = int(np.floor(target_fpr * scores.size))
    return float(scores[scores.size - 1 - allowed_false_positives])


def calibration_summary(normal_scores: np.ndarray, target_fpr: float) -> dict:
    scores = np.asarray(normal_scores, dtype=np.float64)
    threshold = threshold_at_fpr(scores, target_fpr)
    return {
        "target_fpr": target_fpr,
        "threshold": threshold,
        "validation_fpr": float(np.mean(is_anomalous(scores, threshold))),
        "n_normal_validation": int(scores.size),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "quantiles": {str(q): float(np.quantile(scores, q)) for q in CALIBRATION_QUANTILES},
    }
