"""`aeguard score`: batch-score image files, folders and globs with a bundle (onnxruntime, no torch)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from .common import reports_errors


@reports_errors
def score(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `aeguard fit`."),
    inputs: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) and glob patterns."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="CSV or JSON Lines file [default: CSV on stdout]."),
    format: Optional[str] = typer.Option(None, "--format", help="csv or jsonl [default: from the --output suffix]."),
    batch_size: int = typer.Option(64, min=1, help="Images per onnxruntime call."),
    threads: int = typer.Option(0, min=0, help="onnxruntime intra-op threads (0: all cores)."),
) -> None:
    """Write one row per input: path, score, threshold, is_anomaly, error. Unreadable files are reported, not fatal."""
    from aeguard.batch import score_paths
    from aeguard.data.images import iter_image_paths
    from aeguard.errors import ImageError
    from aeguard.outputs import RowWriter, infer_format
    from aeguard.runtime import Scorer

    scorer = Scorer(bundle, intra_op_threads=threads)
    fmt = infer_format(output, format)
    paths = iter_image_paths(inputs)
    started = time.perf_counter()
    writer = RowWriter(output, fmt)
    try:
        summary = score_paths(scorer, paths, writer, batch_size,
                              on_error=lambda message: print(f"aeguard: skipped {message}", file=sys.stderr))
    finally:
        writer.close()
    seconds = time.perf_counter() - started
    if summary.total == 0:
        print("aeguard: error: the inputs hold no image files", file=sys.stderr)
        raise typer.Exit(2)
    print(f"scored {summary.scored} images in {seconds:.1f}s ({summary.scored / max(seconds, 1e-9):,.0f} img/s): "
          f"{summary.anomalies} anomalies, {summary.errors} unreadable; threshold {scorer.threshold:.6g}"
          + (f"; rows in {output}" if output else ""), file=sys.stderr)
    if summary.errors:
        # Every row was written; the exit code still tells a script that some inputs were unreadable.
        raise typer.Exit(ImageError.exit_code)
