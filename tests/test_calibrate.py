import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from aeguard.errors import UsageError
from aeguard.report.metrics import evaluate_scores
from aeguard.scoring.threshold import calibration_summary, threshold_at_fpr


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2])
def test_threshold_keeps_false_positive_rate_at_or_below_target(target):
    normal = np.random.default_rng(1).normal(size=1000)
    threshold = threshold_at_fpr(normal, target)
    fpr = np.mean(normal > threshold)
    assert fpr <= target
    # and it is tight: one step lower would break the target
    assert np.mean(normal >= threshold) > target


def test_threshold_rejects_bad_target():
    with pytest.raises(UsageError, match="target-fpr"):
        threshold_at_fpr(np.ones(5), 1.5)


def test_summary_reports_validation_fpr_and_quantiles():
    normal = np.linspace(0, 1, 201)
    summary = calibration_summary(normal, 0.05)
    assert summary["validation_fpr"] <= 0.05
    assert summary["quantiles"]["0.5"] == pytest.approx(0.5)
    assert summary["n_normal_validation"] == 201


def test_metrics_on_a_hand_checked_example():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6, 0.7])
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = evaluate_scores(scores, truth, threshold=0.45)
    assert result["auroc"] == pytest.approx(roc_auc_score(truth, scores))
    assert result["auroc"] == pytest.approx(15 / 16)
    assert result["confusion_matrix"] == {"tn": 4, "fp": 0, "fn": 1, "tp": 3}
    assert result["precision"] == 1.0 and result["recall"] == 0.75
    assert result["tpr_at_fpr_1pct"] == 0.75  # 0.35 sits below the normal 0.4
    assert result["fpr_at_tpr_95pct"] == 0.25  # catching 0.35 costs one of four normals


def test_metrics_need_both_classes():
    with pytest.raises(UsageError, match="both normal and anomalous"):
        evaluate_scores(np.ones(3), np.zeros(3), 0.5)
