"""Evaluation reports: report.json, a readable report.md, and PNG plots. No torch."""

from __future__ import annotations

from pathlib import Path

import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from aeguard.bundle import write_json_atomic
from aeguard.report.metrics import SUMMARY_METRICS


def _subplots(rows: int = 1, columns: int = 1, **kwargs):
    """A figure drawn off-screen: Figure objects render straight to files, so no pyplot and no backend switch
    (importing this module must not change a notebook's matplotlib backend)."""
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(rows, columns, **kwargs)


ROC_PLOT = "roc.png"
HISTOGRAM_PLOT = "score_histogram.png"
GRID_PLOT = "reconstructions.png"
LATENT_PLOT = "latent_pca.png"
PRIOR_SAMPLES_PLOT = "prior_samples.png"  # written on the training side (VAE decoder), listed when present
CLASS_ROC_PLOT = "roc_per_class.png"
LOCALIZATION_PLOT = "localization.png"


def plot_image_grid(images: np.ndarray, title: str, path: Path, columns: int = 8) -> None:
    rows = -(-len(images) // columns)
    fig, axes = _subplots(rows, columns, figsize=(1.1 * columns, 1.1 * rows + 0.4), squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index < len(images):
            ax.imshow(images[index, 0], cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pca_2d(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of `codes` on their first two principal axes, and the share of variance each explains."""
    centred = codes - codes.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    share = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return centred @ axes[:2].T, share


def plot_latent_pca(codes: np.ndarray, labels: np.ndarray, names: dict, path: Path) -> None:
    """2-D PCA of latent codes, one colour per class (or per normal/anomalous group)."""
    points, share = pca_2d(codes.astype(np.float64))
    fig, ax = _subplots(figsize=(6, 5))
    for value in np.unique(labels):
        chosen = labels == value
        ax.scatter(points[chosen, 0], points[chosen, 1], s=4, alpha=0.6, label=names.get(int(value), str(value)))
    ax.set(
        xlabel=f"PC 1 ({share[0]:.0%} of variance)",
        ylabel=f"PC 2 ({share[1]:.0%})",
        title="Latent codes, first two principal components",
    )
    ax.legend(markerscale=3, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_roc_per_class(
    scores: np.ndarray,
    class_labels: np.ndarray,
    normal: np.ndarray,
    names: dict,
    path: Path,
    title: str = "ROC per anomalous class",
) -> None:
    """One ROC curve per anomalous class: that class against the normal images."""
    fig, ax = _subplots(figsize=(5.5, 5))
    for value in np.unique(class_labels[~normal]):
        chosen = normal | (class_labels == value)
        fpr, tpr, _ = roc_curve((class_labels[chosen] == value).astype(int), scores[chosen])
        area = float(auc(fpr, tpr))
        ax.plot(fpr, tpr, linewidth=1, label=f"{names.get(int(value), value)} ({area:.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_roc(scores: np.ndarray, is_anomaly: np.ndarray, metrics: dict, path: Path) -> None:
    fpr, tpr, _ = roc_curve(is_anomaly, scores)
    fig, ax = _subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUROC {metrics['auroc']:.4f}")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.scatter([metrics["fpr_at_threshold"]], [metrics["recall"]], color="red", zorder=3, label="threshold")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_histogram(groups: dict[str, np.ndarray], threshold: float, path: Path) -> None:
    """Score histograms per group (normal / anomalous) on shared bins, with the threshold: log-spaced for
    error scores, linear when some score is not positive (the z-scored sum of --rotation)."""
    everything = np.concatenate([g for g in groups.values() if len(g)])
    logarithmic = float(everything.min()) > 0.0
    if logarithmic:
        low, high = float(everything.min()), float(everything.max()) * 1.01
        bins = np.geomspace(low, max(high, low * 1.01), 60)
    else:
        low, high = float(everything.min()), float(everything.max())
        bins = np.linspace(low, max(high, low + 1e-6), 60)
    fig, ax = _subplots(figsize=(7, 4))
    for name, scores in groups.items():
        # Fractions, not densities: on log-spaced bins a density would inflate the narrow low bins.
        ax.hist(
            np.clip(scores, low, None),
            bins=bins,
            alpha=0.55,
            weights=np.full(len(scores), 1 / len(scores)),
            label=f"{name} ({len(scores)})",
        )
    ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score", ylabel="fraction of group", title="Score distribution")
    if logarithmic:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_grid(
    images: np.ndarray,
    reconstructions: np.ndarray,
    error_maps: np.ndarray,
    scores: np.ndarray,
    titles: list[str],
    path: Path,
) -> None:
    """Rows: originals, reconstructions, per-pixel error maps (mean over channels); one column per example."""
    n = len(images)
    fig, axes = _subplots(3, n, figsize=(1.3 * n, 4.2), squeeze=False)
    maps = error_maps.mean(axis=1)
    vmax = float(maps.max()) or 1.0
    for col in range(n):
        for row, (data, kwargs) in enumerate(
            (
                *(picture(part[col]) for part in (images, reconstructions)),
                (maps[col], {"cmap": "inferno", "vmin": 0, "vmax": vmax}),
            )
        ):
            axes[row, col].imshow(data, **kwargs)
            axes[row, col].axis("off")
        axes[0, col].set_title(f"{titles[col]}\n{scores[col]:.4f}", fontsize=7)
    for row, label in enumerate(("original", "reconstruction", "error")):
        axes[row, 0].text(
            -0.15, 0.5, label, transform=axes[row, 0].transAxes, rotation=90, va="center", ha="right", fontsize=8
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def picture(image: np.ndarray) -> tuple[np.ndarray, dict]:
    """(C, H, W) in [0, 1] -> what imshow takes: a grey plane with its colour map, or (H, W, 3)."""
    if image.shape[0] == 3:
        return np.clip(image.transpose(1, 2, 0), 0, 1), {}
    return image[0], {"cmap": "gray", "vmin": 0, "vmax": 1}


def plot_localization(
    images: np.ndarray, maps: np.ndarray, masks: np.ndarray, titles: list[str], path: Path, vmax: float
) -> None:
    """Each image with its anomaly map laid over it and the ground-truth outline (cyan) drawn on both."""
    n = len(images)
    fig, axes = _subplots(2, n, figsize=(1.5 * n, 3.3), squeeze=False)
    for col in range(n):
        data, kwargs = picture(images[col])
        for row in (0, 1):
            axes[row, col].imshow(data, **kwargs)
            if masks[col].any():
                axes[row, col].contour(masks[col].astype(float), levels=[0.5], colors="cyan", linewidths=0.7)
            axes[row, col].axis("off")
        axes[1, col].imshow(maps[col], cmap="inferno", vmin=0, vmax=vmax or 1.0, alpha=0.6)
        axes[0, col].set_title(titles[col], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


NOT_USED_LISTED = 20  # report.md lists this many of the files an evaluation left out; report.json lists all


def render_markdown(report: dict) -> str:
    lines = [f"# aeguard report: {report['model_name']}", ""]
    lines += [
        f"- bundle: `{report['bundle']}`",
        f"- evaluated on: {report['evaluation']}",
        f"- threshold: {report['threshold']:.6g} (target FPR {report['calibration']['target_fpr']}, "
        f"validation FPR {report['calibration']['validation_fpr']:.4f} on "
        f"{report['calibration']['n_normal_validation']} held-out normal images)",
    ]
    if report.get("parity"):
        lines.append(f"- torch vs onnxruntime max |score difference|: {report['parity']['max_abs_diff']:.3g}")
    if report.get("threshold_warning"):
        lines.append(f"- **warning**: {report['threshold_warning']}")
    not_used = report.get("not_used") or []
    if not_used:
        files = f"{len(not_used)} file" + "s" * (len(not_used) != 1)
        lines.append(
            f"- left out: {files} (an image that cannot be read is in no figure; an image whose mask cannot be "
            "used is in the image figures, not the pixel ones):"
        )
        lines += [f"  - {message}" for message in not_used[:NOT_USED_LISTED]]
        if len(not_used) > NOT_USED_LISTED:
            lines.append(f"  - and {len(not_used) - NOT_USED_LISTED} more, listed in report.json")
    metrics = report.get("metrics")
    if metrics:
        lines += ["", "## Metrics (anomaly = positive class)", "", "| metric | value |", "| --- | --- |"]
        for key in (*SUMMARY_METRICS, "n_normal", "n_anomalous"):
            lines.append(f"| {key} | {_fmt(metrics[key])} |")
        cm = metrics["confusion_matrix"]
        lines += [
            "",
            "## Confusion matrix at the threshold",
            "",
            "| | predicted normal | predicted anomaly |",
            "| --- | --- | --- |",
            f"| normal | {cm['tn']} | {cm['fp']} |",
            f"| anomaly | {cm['fn']} | {cm['tp']} |",
        ]
        groups = report.get("per_defect")
        if groups:
            lines += ["", "## Per defect type (each against the normal test images)", ""]
            lines += ["| type | images | image AUROC | pixel AUROC |", "| --- | --- | --- | --- |"]
            for name, row in groups.items():
                pixel = row.get("pixel_auroc")
                lines.append(
                    f"| {name} | {row['n_images']} | {row['auroc']:.4f} | {'-' if pixel is None else f'{pixel:.4f}'} |"
                )
        local = report.get("localization")
        if local:
            lines += [
                "",
                "## Localization (anomaly map against the ground-truth masks)",
                "",
                f"- pixel AUROC: {local['pixel_auroc']:.4f}",
                f"- AUPRO (FPR up to {local['aupro_max_fpr']}, normalised): {local['aupro']:.4f}",
                f"- {local['n_images']} images with known masks, {local['n_regions']} defect regions"
                + (
                    f"; {local['n_without_mask']} anomalous images without a mask left out"
                    if local.get("n_without_mask")
                    else ""
                ),
            ]
    else:
        lines += ["", "No labelled evaluation data: only the calibration is reported."]
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in report["plots"]]
    return "\n".join(lines) + "\n"


def write_report(report_dir: Path, report: dict) -> Path:
    """Write report.json and report.md (plots are written by the caller into the same folder)."""
    report_dir = Path(report_dir)
    write_json_atomic(report_dir / "report.json", report)
    (report_dir / "report.md").write_text(render_markdown(report))
    return report_dir / "report.md"
