"""Does the anomaly map point at the defect? Pixel AUROC and AUPRO against ground-truth masks. numpy, scipy, sklearn.

AUPRO (Bergmann et al., MVTec AD): at each threshold on the map, the per-region overlap (PRO) is the mean,
over every connected defect region of every test image, of the share of that region's pixels above the
threshold; the false-positive rate is the share of normal pixels (outside every mask, over all images)
above it. AUPRO is the area under PRO(FPR) from 0 to `max_fpr` (0.3), interpolated at the limit, divided by
the limit: 1 is perfect. anomalib up to 2.2 divided by the last FPR its curve reached instead, which
inflates the score when the curve stops short of the limit (its issue #3718); this follows the reference.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

AUPRO_MAX_FPR = 0.3
CONNECTIVITY = np.ones((3, 3), bool)  # 8-connected regions, as the MVTec AD evaluation code labels them


def defect_regions(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, H, W) int region ids, 0 outside, 1.. numbered across all images."""
    regions = np.zeros(masks.shape, np.int64)
    offset = 0
    for index, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=CONNECTIVITY)
        regions[index] = np.where(labels > 0, labels + offset, 0)
        offset += count
    return regions


def area_up_to(fpr: np.ndarray, pro: np.ndarray, max_fpr: float) -> float:
    """Trapezoidal area under pro(fpr) for fpr in [0, max_fpr], the curve interpolated at max_fpr, / max_fpr.

    `fpr` must be non-decreasing and start at 0 (the threshold above every value)."""
    inside = fpr <= max_fpr
    xs, ys = fpr[inside], pro[inside]
    if xs[-1] < max_fpr and inside.sum() < len(fpr):
        after = np.flatnonzero(~inside)[0]
        x0, x1, y0, y1 = fpr[after - 1], fpr[after], pro[after - 1], pro[after]
        y = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        xs, ys = np.append(xs, max_fpr), np.append(ys, y)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0) / max_fpr)


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct map value as threshold (a pixel counts when its value >= the threshold),
    from the highest down, with (0, 0) first. One sort of all pixels: each normal pixel adds 1 / #normal
    pixels to the FPR and each defect pixel 1 / (#regions x its region's size) to the PRO."""
    regions = defect_regions(masks).ravel()
    values = np.asarray(maps, np.float64).ravel()
    count = int(regions.max())
    sizes = np.bincount(regions, minlength=count + 1)
    normal = regions == 0
    if count == 0 or not normal.any():
        raise ValueError("AUPRO needs at least one defect region and one normal pixel")
    fpr_step = np.where(normal, 1.0 / normal.sum(), 0.0)
    pro_step = np.where(normal, 0.0, 1.0 / (count * np.maximum(sizes[regions], 1)))
    order = np.argsort(-values, kind="stable")
    fpr, pro, sorted_values = np.cumsum(fpr_step[order]), np.cumsum(pro_step[order]), values[order]
    last_of_value = np.r_[sorted_values[1:] != sorted_values[:-1], True]  # ties pass a threshold together
    return np.r_[0.0, fpr[last_of_value]], np.r_[0.0, pro[last_of_value]]


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = AUPRO_MAX_FPR) -> float:
    fpr, pro = pro_curve(maps, masks)
    return area_up_to(np.minimum(fpr, 1.0), pro, max_fpr)


def localization_metrics(maps: np.ndarray, masks: np.ndarray) -> dict:
    """Pixel AUROC and AUPRO of (N, H, W) anomaly maps against (N, H, W) bool masks."""
    truth = masks.ravel().astype(bool)
    return {
        "pixel_auroc": float(roc_auc_score(truth, np.asarray(maps, np.float64).ravel())),
        "aupro": aupro(maps, masks),
        "aupro_max_fpr": AUPRO_MAX_FPR,
        "n_images": int(len(masks)),
        "n_regions": int(defect_regions(masks).max()),
    }
