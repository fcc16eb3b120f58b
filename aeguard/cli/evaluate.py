"""`aeguard evaluate`: ROC metrics of a bundle on a labelled set, through onnxruntime (no torch)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import needs_extra, reports_errors


@reports_errors
def evaluate(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `aeguard fit`."),
    dataset: str | None = typer.Option(
        None, help="Data set to evaluate on [default: the one the bundle was fitted on]."
    ),
    normal: str | None = typer.Option(None, help="Normal classes [default: the bundle's]."),
    data: Path | None = typer.Option(
        None,
        help="A labelled folder instead of a data set: normal/ + anomaly/, or the MVTec AD layout (test/good/, "
        "test/<defect>/, ground_truth/<defect>/<name>_mask.png).",
        file_okay=False,
    ),
    data_dir: Path | None = typer.Option(
        None, help="Where the IDX data sets live [default: $AEGUARD_DATA_DIR, then the user cache]."
    ),
    report_dir: Path | None = typer.Option(None, help="Where to write the report [default: BUNDLE/report]."),
    no_download: bool = typer.Option(False, "--no-download", help="Never download a missing data set."),
) -> None:
    """Score a labelled test set with the bundle and write report.json, report.md and plots."""
    from aeguard.data.catalog import get_spec, parse_classes
    from aeguard.data.sources import dataset_eval_set, labelled_folder
    from aeguard.errors import UsageError

    try:
        from aeguard.report.evaluate import evaluate_bundle
    except ModuleNotFoundError as exc:
        raise needs_extra("evaluate", exc) from None
    from aeguard.report.metrics import SUMMARY_METRICS
    from aeguard.scoring.scorer import Scorer

    scorer = Scorer(bundle)
    fitted_on = scorer.manifest.get("data", {})
    if data is not None:
        eval_set = labelled_folder(data, scorer.preprocessing)
    else:
        name = dataset or fitted_on.get("dataset")
        if name is None:
            raise UsageError("this bundle was fitted on a folder: pass --data DIR or --dataset NAME")
        spec = get_spec(name)
        if normal is not None:
            classes = parse_classes(spec, normal)
        elif fitted_on.get("dataset") == spec.name:
            classes = tuple(fitted_on["normal_classes"])
        else:
            raise UsageError(f"pass --normal: the bundle's normal classes are not classes of {spec.name}")
        if (scorer.height, scorer.width) != (28, 28):
            raise UsageError(f"{spec.name} images are 28x28 but the bundle expects {scorer.height}x{scorer.width}")
        eval_set = dataset_eval_set(spec.name, classes, data_dir, allow_download=not no_download)
    report = evaluate_bundle(scorer, eval_set, report_dir or bundle / "report")
    metrics = report["metrics"]
    typer.echo(f"evaluated on {report['evaluation']}")
    for key in SUMMARY_METRICS:
        typer.echo(f"{key:>18}: {metrics[key]:.4f}")
    cm = metrics["confusion_matrix"]
    typer.echo(
        f"{'confusion':>18}: tn={cm['tn']} fp={cm['fp']} fn={cm['fn']} tp={cm['tp']} "
        f"at threshold {report['threshold']:.6g}"
    )
    for name, row in (report.get("per_defect") or {}).items():
        pixel = row.get("pixel_auroc")
        typer.echo(
            f"{name:>18}: image AUROC {row['auroc']:.4f}"
            + (f", pixel AUROC {pixel:.4f}" if pixel is not None else "")
            + f" ({row['n_images']} images)"
        )
    local = report.get("localization")
    if local:
        typer.echo(f"{'pixel_auroc':>18}: {local['pixel_auroc']:.4f}")
        typer.echo(f"{'aupro':>18}: {local['aupro']:.4f} (FPR up to {local['aupro_max_fpr']})")
    typer.echo(f"report: {Path(report_dir or bundle / 'report') / 'report.md'}")
    if report.get("threshold_warning"):
        typer.echo(f"warning: {report['threshold_warning']}", err=True)
