"""Set a bundle's threshold again from normal images, without training: `aeguard calibrate` and
`Bundle.calibrate`. numpy, onnxruntime and Pillow only, as scoring is.

`fit` sets the threshold on images held out of the training set. When those are not like the images the
bundle scores (nearer to the training images, as crops of the same photos or frames of one video are, or
taken under other conditions), the threshold flags far more normal images than it was set for; evaluations
say so (report/labelled.py: threshold_check). This sets it again on normal images taken as the production
images are, and keeps everything else of the bundle.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from aeguard.bundle import VALIDATION_SCORES_NAME, BundleContents, bundle_file, read_manifest, read_plain_file
from aeguard.errors import DataNotFoundError
from aeguard.scoring.results import require_finite
from aeguard.scoring.threshold import calibration_summary

# Manifest entries measured at the old threshold (precision, recall, the confusion matrix, the warning): a
# recalibrated bundle drops them, with its report, rather than carry figures of a threshold it no longer has.
THRESHOLD_BOUND = ("metrics", "per_defect", "localization", "threshold_warning")


def checked_scores(scores, what: str) -> np.ndarray:
    """float32 scores, refused when one is not finite: no quantile can be taken of it."""
    scores = require_finite(np.asarray(scores, np.float32), what, "; no threshold can be set")
    if scores.size == 0:
        raise DataNotFoundError(f"no {what} to set a threshold on")
    return scores


def recalibrated(contents: BundleContents, normal_scores: np.ndarray, target_fpr: float, source: str) -> BundleContents:
    """The same bundle with the threshold that flags `target_fpr` of `normal_scores`: the model and weights
    unchanged, validation_scores.npy these scores, a calibration that records `source`, and without the
    entries measured at the old threshold (THRESHOLD_BOUND)."""
    scores = checked_scores(normal_scores, "normal images")
    buffer = io.BytesIO()
    np.save(buffer, scores, allow_pickle=False)
    calibration = {**calibration_summary(scores, target_fpr), "images": source}
    manifest = contents.manifest
    kept = {key: value for key, value in manifest.items() if key not in (*THRESHOLD_BOUND, "files", "schema_version")}
    history = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "previous_threshold": manifest.get("threshold"),
        "previous_calibration": {
            key: manifest.get("calibration", {}).get(key) for key in ("target_fpr", "n_normal_validation", "images")
        },
    }
    new = {**kept, "threshold": calibration["threshold"], "calibration": calibration, "metrics": None}
    return BundleContents(
        {**new, "recalibrated": history}, {**contents.files, VALIDATION_SCORES_NAME: buffer.getvalue()}
    )


def recalibrate(bundle_dir: Path, normal_scores: np.ndarray, target_fpr: float, out: Path, source: str) -> dict:
    """Write the bundle at `bundle_dir` to `out`, recalibrated (it may be the same folder: replaced atomically,
    as a fit replaces one, its report folder dropped with the figures of the old threshold); return the new
    manifest. The files are read through their verified checksums and copied byte for byte."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    files = {name: read_plain_file(bundle_file(bundle_dir, name)) for name in manifest["files"]}
    return recalibrated(BundleContents(manifest, files), normal_scores, target_fpr, source).write(Path(out), force=True)
