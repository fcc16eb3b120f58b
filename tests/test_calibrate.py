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


def test_the_threshold_check_warns_only_when_the_target_rate_cannot_explain_the_false_alarms():
    from aeguard.report.labelled import threshold_check

    def metrics(n_normal, false_alarms):
        return {"n_normal": n_normal, "confusion_matrix": {"fp": false_alarms}}

    # the texture benchmark's brick, calibrated on crops of the photo its training crops came from
    assert "flags 35 of the 60 normal test images (58%), where it was set to flag 1%" in threshold_check(
        metrics(60, 35), 0.01
    )
    assert threshold_check(metrics(60, 2), 0.01) is None  # 2 of 60 happens to a 1 % threshold one time in eight
    assert threshold_check(metrics(60, 0), 0.01) is None
    assert threshold_check(metrics(1000, 15), 0.01) is None  # 1.5 %: within chance of 1 % on 1000 images
    assert threshold_check(metrics(1000, 25), 0.01) is not None  # 2.5 %: not (a binomial tail of about 1e-4)
    assert threshold_check(metrics(60, 9), 0.05) is None and threshold_check(metrics(60, 12), 0.05) is not None


def test_an_evaluation_whose_normal_images_are_flagged_carries_the_threshold_warning(tmp_path):
    from aeguard.data.sources import EvalSet
    from aeguard.report.labelled import labelled_metrics
    from aeguard.report.plots import render_markdown
    from aeguard.scoring.scorer import Scorer
    from tests.bundles import tiny_bundle

    scorer = Scorer(tiny_bundle(tmp_path / "b", (8, 8), threshold=0.1))  # score: mean squared distance from 0.5
    anomalies = np.zeros((20, 1, 8, 8), np.float32)  # score 0.25: flagged
    like_training = np.full((20, 1, 8, 8), 0.5, np.float32)  # score 0: not flagged
    truth = np.array([0] * 20 + [1] * 20)
    calm = labelled_metrics(scorer, EvalSet(np.concatenate([like_training, anomalies]), truth, "calm"))
    assert calm.threshold_warning is None and "threshold_warning" not in calm.summary()
    shifted = np.full((20, 1, 8, 8), 0.05, np.float32)  # normal, but scored as the anomalies are
    flagged = labelled_metrics(scorer, EvalSet(np.concatenate([shifted, anomalies]), truth, "shifted"))
    assert "flags 20 of the 20 normal test images" in flagged.summary()["threshold_warning"]
    report = {
        "model_name": "tiny",
        "bundle": "b",
        "evaluation": "shifted",
        "threshold": 0.1,
        "calibration": scorer.manifest["calibration"],
        "threshold_warning": flagged.threshold_warning,
        "metrics": None,
        "plots": [],
    }
    assert f"- **warning**: {flagged.threshold_warning}" in render_markdown(report)
