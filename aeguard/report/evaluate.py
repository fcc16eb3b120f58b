"""Score a labelled set with a bundle's ONNX graph, compute metrics, write the report. No torch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from aeguard.bundle import VALIDATION_SCORES_NAME, read_plain_file
from aeguard.data.sources import EvalSet
from aeguard.errors import BundleError
from aeguard.report import plots as reports
from aeguard.report.labelled import LabelledMetrics, labelled_metrics
from aeguard.scoring.scorer import Scorer, float_batch

GRID_EXAMPLES_PER_GROUP = 8
LATENT_PLOT_IMAGES = 3000


def _grid_indices(is_anomaly: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = []
    for value in (0, 1):
        members = np.flatnonzero(is_anomaly == value)
        picks.append(rng.choice(members, size=min(GRID_EXAMPLES_PER_GROUP, len(members)), replace=False))
    return np.concatenate(picks)


def validation_scores(bundle_dir: Path) -> np.ndarray | None:
    """The held-out normal images' scores saved at fit (for the histogram); None in bundles without them."""
    path = Path(bundle_dir) / VALIDATION_SCORES_NAME
    if not path.exists() and not path.is_symlink():
        return None
    try:
        scores = np.load(io.BytesIO(read_plain_file(path)), allow_pickle=False)
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy's loader raises many types on a damaged file
        raise BundleError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if scores.ndim != 1 or scores.dtype.kind != "f":
        raise BundleError(f"{path} holds {scores.dtype} of shape {scores.shape}, not one score per image")
    return scores


def evaluate_bundle(
    scorer: Scorer,
    eval_set: EvalSet | None,
    report_dir: Path,
    bundle_label: Path | str | None = None,
    val_scores: np.ndarray | None = None,
) -> dict:
    """Write report.json/.md and plots for `scorer`'s bundle; metrics only when `eval_set` is given.

    The held-out normal scores for the histogram come from the bundle folder, or `val_scores` for a
    scorer of a bundle still in memory."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    manifest = scorer.manifest
    report = {
        "model_name": manifest.get("name") or (scorer.bundle_dir.name if scorer.bundle_dir else "detector"),
        "bundle": str(bundle_label or scorer.bundle_dir),
        "evaluation": eval_set.description if eval_set else "none",
        "threshold": scorer.threshold,
        "calibration": manifest["calibration"],
        "parity": manifest.get("parity"),
        "metrics": None,
        "plots": [],
    }
    if val_scores is None and scorer.bundle_dir is not None:
        val_scores = validation_scores(scorer.bundle_dir)
    if eval_set is None:
        if val_scores is not None:
            reports.plot_histogram(
                {"normal (validation)": val_scores}, scorer.threshold, report_dir / reports.HISTOGRAM_PLOT
            )
            report["plots"].append(reports.HISTOGRAM_PLOT)
        reports.write_report(report_dir, report)
        return report

    result = labelled_metrics(scorer, eval_set)
    scores, truth, metrics = result.scores, eval_set.is_anomaly, result.metrics
    report["metrics"] = metrics
    reports.plot_roc(scores, truth, metrics, report_dir / reports.ROC_PLOT)
    reports.plot_histogram(
        {"normal": scores[truth == 0], "anomalous": scores[truth == 1]},
        scorer.threshold,
        report_dir / reports.HISTOGRAM_PLOT,
    )
    picks = _grid_indices(truth)
    detail = scorer.score(eval_set.images[picks], error_maps=True, reconstructions=True)
    assert detail.reconstructions is not None and detail.error_maps is not None  # score() raises without them
    titles = ["anomaly" if truth[i] else "normal" for i in picks]
    if eval_set.class_labels is not None:
        titles = [f"{t} ({eval_set.class_labels[i]})" for t, i in zip(titles, picks)]
    reports.plot_grid(
        float_batch(eval_set.images[picks]),
        detail.reconstructions,
        detail.error_maps,
        detail.scores,
        titles,
        report_dir / reports.GRID_PLOT,
    )
    report["plots"] += [reports.ROC_PLOT, reports.HISTOGRAM_PLOT, reports.GRID_PLOT]
    report["plots"] += _class_plots(scorer, eval_set, scores, report_dir)
    if result.not_used:
        report["not_used"] = result.not_used
    if result.threshold_warning:
        report["threshold_warning"] = result.threshold_warning
    if result.per_defect is not None:
        report["per_defect"] = result.per_defect
    if result.localization is not None:
        report["localization"] = result.localization
        _plot_localization(eval_set, result, report_dir)
        report["plots"].append(reports.LOCALIZATION_PLOT)
    if (report_dir / reports.PRIOR_SAMPLES_PLOT).is_file():
        report["plots"].append(reports.PRIOR_SAMPLES_PLOT)
    reports.write_report(report_dir, report)
    return report


def _plot_localization(eval_set: EvalSet, result: LabelledMetrics, report_dir: Path) -> None:
    """Anomalous images with a known mask, their map laid over them and the mask outlined."""
    assert result.maps is not None and eval_set.masks is not None and eval_set.has_mask is not None
    known, maps = np.flatnonzero(eval_set.has_mask), result.maps
    anomalous = [i for i, index in enumerate(known) if eval_set.is_anomaly[index] == 1]
    picks = np.random.default_rng(0).permutation(np.asarray(anomalous, np.int64))[:GRID_EXAMPLES_PER_GROUP]
    names = eval_set.groups or ["anomaly"] * len(eval_set.images)
    reports.plot_localization(
        float_batch(eval_set.images[known[picks]]),
        maps[picks],
        eval_set.masks[known[picks]],
        [names[known[i]] for i in picks],
        report_dir / reports.LOCALIZATION_PLOT,
        vmax=float(np.quantile(maps, 0.999)),
    )


def _class_plots(scorer: Scorer, eval_set: EvalSet, scores: np.ndarray, report_dir: Path) -> list[str]:
    """Per-class ROC curves and the latent-space PCA, where class labels and codes are available."""
    names = dict(enumerate(scorer.manifest.get("data", {}).get("class_names") or []))
    labels = eval_set.class_labels
    normal = eval_set.is_anomaly == 0
    plots = []
    if labels is not None and len(np.unique(labels[~normal])) > 1:
        reports.plot_roc_per_class(scores, labels, normal, names, report_dir / reports.CLASS_ROC_PLOT)
        plots.append(reports.CLASS_ROC_PLOT)
    if scorer.has_codes:
        picks = np.random.default_rng(0).permutation(len(eval_set.images))[:LATENT_PLOT_IMAGES]
        if labels is not None:
            colours = labels[picks]
            normal_classes = set(np.unique(labels[normal]).tolist())
            names = {
                c: f"{names.get(c, c)} (normal)" if c in normal_classes else str(names.get(c, c))
                for c in np.unique(labels).tolist()
            }
        else:
            colours, names = eval_set.is_anomaly[picks], {0: "normal", 1: "anomalous"}
        reports.plot_latent_pca(scorer.codes(eval_set.images[picks]), colours, names, report_dir / reports.LATENT_PLOT)
        plots.append(reports.LATENT_PLOT)
    return plots
