"""The numbers of a labelled set, without files: image metrics, per defect type AUROC, pixel AUROC and AUPRO.
What `aeguard evaluate` reports (report/evaluate.py draws and writes them) and `Detector.evaluate` returns. No
torch, no matplotlib."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom
from sklearn.metrics import roc_auc_score

from aeguard.data.sources import EvalSet
from aeguard.errors import ModelOutputError
from aeguard.report.localization import localization_metrics
from aeguard.report.metrics import evaluate_scores
from aeguard.scoring.results import require_finite
from aeguard.scoring.scorer import Scorer


@dataclass
class LabelledMetrics:
    """What a labelled set measures: per image scores and the ROC metrics, per defect type AUROC (with groups),
    and pixel AUROC / AUPRO (where masks are known), with the maps of the masked images they came from."""

    scores: np.ndarray
    metrics: dict
    per_defect: dict | None = None
    localization: dict | None = None
    maps: np.ndarray | None = None  # (N, H, W) anomaly maps of the images with a known mask, in order
    not_used: list[str] | None = None  # the folder's files these figures leave out, each with why
    threshold_warning: str | None = None  # why the threshold does not hold on these normal images (threshold_check)

    def summary(self) -> dict:
        """The ROC metrics, with "per_defect", "localization", "not_used" and "threshold_warning" where there are
        any (no scores or maps)."""
        measured = {
            "per_defect": self.per_defect,
            "localization": self.localization,
            "not_used": self.not_used,
            "threshold_warning": self.threshold_warning,
        }
        return {**self.metrics, **{key: value for key, value in measured.items() if value is not None}}


def labelled_metrics(scorer: Scorer, eval_set: EvalSet) -> LabelledMetrics:
    """The numbers of a report, without its files: what `aeguard evaluate` and `Detector.evaluate` return."""
    localize = eval_set.masks is not None and bool(eval_set.masks[eval_set.has_mask].any())  # else no regions
    scores, maps = scores_and_maps(scorer, eval_set.images, eval_set.has_mask if localize else None)
    require_finite(scores, "evaluation images")  # sklearn would fail on them, and a NaN compares as "normal"
    result = LabelledMetrics(scores, evaluate_scores(scores, eval_set.is_anomaly, scorer.threshold))
    result.not_used = list(eval_set.not_used) or None
    result.threshold_warning = threshold_check(result.metrics, scorer.manifest["calibration"]["target_fpr"])
    if eval_set.groups is not None:
        result.per_defect = per_defect_metrics(scores, eval_set)
    if maps is not None:
        _localize(eval_set, result, maps)
    return result


# The threshold check fails when so many normal test images are flagged that a threshold whose false-positive rate
# were the calibration's target would flag that many with less than this probability: one in a thousand evaluations
# of a well-calibrated threshold warns, where a rule on the rate alone would warn on small test sets by chance.
THRESHOLD_CHECK_P = 1e-3


def threshold_check(metrics: dict, target_fpr: float) -> str | None:
    """Why the threshold does not hold on these normal images, or None.

    The threshold is the quantile of the held-out normal images' scores that leaves `target_fpr` above it. When
    the normal test images are flagged far more often (a binomial tail below THRESHOLD_CHECK_P), the held-out
    images were not like them: for instance likelier to look like the training images (crops of the same
    photos, frames of one video), or taken under other conditions than the test images."""
    n, false_alarms = metrics["n_normal"], metrics["confusion_matrix"]["fp"]
    if n == 0 or false_alarms == 0 or binom.sf(false_alarms - 1, n, target_fpr) >= THRESHOLD_CHECK_P:
        return None
    return (
        f"the threshold flags {false_alarms} of the {n} normal test images ({false_alarms / n:.0%}), where it was "
        f"set to flag {target_fpr:.0%}: the held-out normal images it was set on are not like these (for instance "
        "nearer to the training images, as crops of the same photos or frames of one video are, or taken on "
        "another day). Set it on normal images taken as those it will score: `aeguard calibrate BUNDLE IMAGES`, "
        "or DIR/validation/good/ for the next fit (docs/own-images.md)"
    )


def _localize(eval_set: EvalSet, result: LabelledMetrics, maps: np.ndarray) -> None:
    """Pixel AUROC and AUPRO over the images whose mask is known (`maps` are theirs), per defect type too."""
    assert eval_set.masks is not None and eval_set.has_mask is not None  # the caller checked
    has_mask = eval_set.has_mask
    known = np.flatnonzero(has_mask)
    masks = eval_set.masks[known]
    if not np.isfinite(maps).all():
        raise ModelOutputError("the model's anomaly map holds non-finite values")
    local = localization_metrics(maps, masks)
    local["n_without_mask"] = int(((eval_set.is_anomaly == 1) & ~has_mask).sum())
    if result.per_defect:
        groups = np.asarray(eval_set.groups)[known]
        normal = eval_set.is_anomaly[known] == 0
        for name, row in result.per_defect.items():
            chosen = normal | (groups == name)
            if (groups == name).any() and masks[groups == name].any():
                row["pixel_auroc"] = float(roc_auc_score(masks[chosen].ravel(), maps[chosen].ravel()))
    result.localization, result.maps = local, maps


def per_defect_metrics(scores: np.ndarray, eval_set: EvalSet) -> dict:
    """Image AUROC of each defect type against the normal images."""
    groups = np.asarray(eval_set.groups)
    normal = eval_set.is_anomaly == 0
    out = {}
    for name in dict.fromkeys(groups[~normal]):
        chosen = normal | (groups == name)
        out[str(name)] = {
            "n_images": int((groups == name).sum()),
            "auroc": float(roc_auc_score(eval_set.is_anomaly[chosen], scores[chosen])),
        }
    return out


def anomaly_maps(scorer: Scorer, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, H, W) anomaly maps: the graph's error map, averaged over channels, in batches."""
    maps = scores_and_maps(scorer, images, np.ones(len(images), bool), batch_size)[1]
    assert maps is not None  # asked for every image
    return maps


def scores_and_maps(
    scorer: Scorer, images: np.ndarray, keep: np.ndarray | None, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray | None]:
    """Every image's score and, for the images `keep` marks, their (N, H, W) anomaly maps, in one pass of the
    graph (a second pass for the maps made evaluate run the model twice over each masked image)."""
    if keep is None:
        return scorer.score_many(images), None
    scores, maps = [], []
    for start in range(0, len(images), batch_size):
        chosen = keep[start : start + batch_size]
        batch = scorer.score(images[start : start + batch_size], error_maps=bool(chosen.any()))
        scores.append(batch.scores)
        if batch.error_maps is not None:
            maps.append(batch.error_maps[chosen].mean(axis=1))
    empty = np.zeros((0, scorer.height, scorer.width), np.float32)
    return (np.concatenate(scores) if scores else np.zeros(0, np.float32)), (np.concatenate(maps) if maps else empty)
