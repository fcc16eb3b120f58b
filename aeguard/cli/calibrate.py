"""`aeguard calibrate`: set a bundle's threshold again from normal images, without training (no torch)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import typer

from aeguard.config import DetectorConfig

from .common import reports_errors

DEFAULT_TARGET_FPR = DetectorConfig().target_fpr  # fit's default, stated once in the typed configuration


@reports_errors
def calibrate(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `aeguard fit`."),
    inputs: list[str] = typer.Argument(
        ..., help="Normal images, taken as those the bundle will score are: files, folders and glob patterns."
    ),
    target_fpr: float = typer.Option(
        DEFAULT_TARGET_FPR, help="Share of these normal images the threshold flags (the false-positive rate)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the recalibrated bundle here [default: replace BUNDLE, atomically]."
    ),
    force: bool = typer.Option(False, "--force", help="Replace --out when it already holds files."),
) -> None:
    """Set the threshold again from normal images: the score that flags --target-fpr of them.

    The model is unchanged. The report folder and the metrics measured at the old threshold are dropped:
    run `aeguard evaluate` for new ones. A serving daemon reloads the bundle when it changes.
    """
    from aeguard.data.sources import warn_skipped
    from aeguard.scoring.scorer import Bundle

    before = Bundle.load(bundle)
    skipped: list[str] = []

    def skip(message: str) -> None:
        skipped.append(message)
        warn_skipped([message])  # as fit and evaluate say what they leave out

    after = before.calibrate(inputs, target_fpr, out, force, on_skip=skip)
    calibration = after.manifest["calibration"]
    count = calibration["n_normal_validation"]
    if target_fpr * count < 1:
        enough = math.ceil(1 / target_fpr) if target_fpr else "a few hundred"
        print(
            f"note: {target_fpr:.1%} of {count} normal image{'s' * (count != 1)} is less than one image, so the "
            f"threshold is their highest score; at least {enough} make the target mean something",
            file=sys.stderr,
        )
    typer.echo(
        f"threshold: {before.threshold:.6g} -> {after.threshold:.6g} (flags {calibration['validation_fpr']:.2%} "
        f"of {count} normal images, target {target_fpr})"
        + (f"; {len(skipped)} unreadable image{'s' * (len(skipped) != 1)} skipped" if skipped else "")
    )
    typer.echo(f"bundle:    {after.path}")
