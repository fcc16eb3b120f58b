"""Scores (and labels, when known) -> threshold and ROC metrics. numpy and scikit-learn only.

Scores follow the detector convention: higher means more anomalous. Anomalies are the positive class.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from aeguard.errors import UsageError

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
        "validation_fpr": float(np.mean(scores > threshold)),
        "n_normal_validation": int(scores.size),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "quantiles": {str(q): float(np.quantile(scores, q)) for q in CALIBRATION_QUANTILES},
    }


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Best true-positive rate among operating points whose false-positive rate is at most `target`."""
    return float(tpr[fpr <= target].max())


def fpr_at_tpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Lowest false-positive rate among operating points that catch at least `target` of the anomalies."""
    return float(fpr[tpr >= target].min())


def evaluate_scores(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float) -> dict:
    """ROC metrics over all thresholds, and the confusion matrix at `threshold`."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(is_anomaly).astype(bool)
    if truth.all() or not truth.any():
        raise UsageError("evaluation needs both normal and anomalous images")
    fpr, tpr, _ = skm.roc_curve(truth, scores)
    predicted = scores > threshold
    tn, fp, fn, tp = skm.confusion_matrix(truth, predicted, labels=[False, True]).ravel()
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        truth, predicted, average="binary", zero_division=0
    )
    return {
        "n_normal": int((~truth).sum()),
        "n_anomalous": int(truth.sum()),
        "auroc": float(skm.roc_auc_score(truth, scores)),
        "auprc": float(skm.average_precision_score(truth, scores)),
        "tpr_at_fpr_1pct": tpr_at_fpr(fpr, tpr, 0.01),
        "tpr_at_fpr_5pct": tpr_at_fpr(fpr, tpr, 0.05),
        "fpr_at_tpr_95pct": fpr_at_tpr(fpr, tpr, 0.95),
        "threshold": float(threshold),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "fpr_at_threshold": float(fp / (fp + tn)),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }
