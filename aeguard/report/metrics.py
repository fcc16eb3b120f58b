"""Scores and labels -> ROC metrics at every threshold and at the bundle's. numpy and scikit-learn only.

Scores follow the detector convention: higher means more anomalous. Anomalies are the positive class.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from aeguard.errors import UsageError
from aeguard.scoring.results import is_anomalous

# The scalar metrics a report shows, in the order it shows them (the CLI prints the same).
SUMMARY_METRICS = (
    "auroc",
    "auprc",
    "tpr_at_fpr_1pct",
    "tpr_at_fpr_5pct",
    "fpr_at_tpr_95pct",
    "precision",
    "recall",
    "f1",
    "fpr_at_threshold",
)


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
    predicted = is_anomalous(scores, threshold)
    tn, fp, fn, tp = skm.confusion_matrix(truth, predicted, labels=[False, True]).ravel()
    precision, recall, f1, _ = skm.precision_recall_fscore_support(truth, predicted, average="binary", zero_division=0)
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
