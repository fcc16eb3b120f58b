"""`aeguard score`: batch-score image files, folders, globs and path lists with a bundle (onnxruntime, no torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from aeguard.config import ScoreOptions

from .common import reports_errors

DEFAULTS = ScoreOptions()  # the engine's defaults, stated once there

EXIT_UNREADABLE = 3
EXIT_ANOMALY = 10


class _Progress:
    """Rate and ETA on a terminal; silent in pipes and logs."""

    def __init__(self, counter):
        self.counter = counter
        self.bar = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("scoring"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[rate]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.bar.add_task("score", total=None, rate="")
            self.bar.start()

    def update(self, summary) -> None:
        if self.bar is not None:
            total = self.counter.total if self.counter is not None else None
            self.bar.update(
                self.task,
                completed=summary.total + summary.skipped,
                total=total,
                rate=f"{summary.images_per_second:,.0f} img/s",
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@reports_errors
def score(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `aeguard fit`."),
    inputs: list[str] | None = typer.Argument(
        None, help="Image files, folders (searched recursively) and glob patterns."
    ),
    from_list: str | None = typer.Option(
        None, "--from-list", help="A text file of paths, one per line; - reads stdin."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="CSV, JSON Lines or Parquet file [default: CSV on stdout]."
    ),
    format: str | None = typer.Option(
        None, "--format", help="csv, jsonl or parquet [default: from the --output suffix]."
    ),
    resume: bool = typer.Option(False, "--resume", help="Skip paths already in --output and append the rest."),
    save_maps: Path | None = typer.Option(
        None, "--save-maps", help="Write a PNG heat map of the per-pixel error of each anomaly here.", file_okay=False
    ),
    max_pixels: int = typer.Option(
        DEFAULTS.max_pixels, help="Refuse images with more pixels (decompression-bomb guard)."
    ),
    batch_size: int = typer.Option(DEFAULTS.batch_size, help="Images per onnxruntime call."),
    workers: int = typer.Option(DEFAULTS.workers, help="Decoding processes (0: one per core)."),
    threads: int = typer.Option(0, min=0, help="onnxruntime intra-op threads (0: all cores)."),
    provider: str = typer.Option(
        "auto", help="onnxruntime execution provider: auto (CUDA when onnxruntime offers it), cpu, cuda or tensorrt."
    ),
    fail_on_anomaly: bool = typer.Option(
        False, "--fail-on-anomaly", help=f"Exit {EXIT_ANOMALY} when any image is anomalous (for CI gates)."
    ),
    engine: str = typer.Option("local", help="local, or ray to score on a Ray cluster."),
    address: str | None = typer.Option(
        None,
        help="Ray cluster for --engine ray: HOST:PORT of its head, or auto for the one `ray start` runs on this "
        "machine [default: a new Ray instance on this machine].",
    ),
) -> None:
    """Write one row per input: path, score, threshold, is_anomaly, error.

    Exit codes: 0 done; 2 bad usage; 3 some inputs unreadable (their rows are written);
    4 bad bundle; 10 anomalies found with --fail-on-anomaly (takes precedence over 3).
    """
    from aeguard.batch.engine import score_paths
    from aeguard.batch.inputs import BackgroundCount, iter_inputs
    from aeguard.batch.writers import RowWriter, infer_format, resume_point
    from aeguard.errors import UsageError
    from aeguard.scoring.scorer import Scorer

    inputs = inputs or []
    if not inputs and from_list is None:
        raise UsageError("give image files, folders or globs, or --from-list FILE")
    if resume and output is None:
        raise UsageError("--resume needs --output: the file to continue")
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine must be local or ray, got {engine!r}")
    # no spin-waiting between calls: the decode workers need those cores
    scorer = Scorer(bundle, intra_op_threads=threads, spin=False, provider=provider)
    fmt = infer_format(output, format)
    previous = resume_point(output, fmt) if resume and output is not None else None
    options = ScoreOptions(batch_size=batch_size, workers=workers, max_pixels=max_pixels, save_maps=save_maps)
    paths = iter_inputs(inputs, from_list)
    writer = RowWriter(output, fmt, resume=previous)
    done = previous.done if previous is not None else None
    complete = False
    progress = _Progress(BackgroundCount(inputs, from_list) if sys.stderr.isatty() else None)
    try:
        if engine == "ray":
            from aeguard.batch.ray_engine import score_paths_on_ray

            summary = score_paths_on_ray(
                bundle,
                paths,
                writer,
                options,
                done,
                address,
                provider=provider,
                on_error=lambda m: print(f"aeguard: skipped {m}", file=sys.stderr),
            )
        else:
            summary = score_paths(
                scorer,
                paths,
                writer,
                options,
                done,
                on_error=lambda m: print(f"aeguard: skipped {m}", file=sys.stderr),
                on_progress=progress.update,
            )
        complete = True
    finally:
        progress.close()
        writer.close(complete=complete)
    if summary.total == 0 and summary.skipped == 0:
        print("aeguard: error: the inputs hold no image files", file=sys.stderr)
        raise typer.Exit(2)
    print(
        f"scored {summary.scored} images in {summary.seconds:.1f}s ({summary.images_per_second:,.0f} img/s): "
        f"{summary.anomalies} anomalies, {summary.errors} unreadable"
        + (f", {summary.skipped} already done" if resume else "")
        + (f"; on {len(summary.by_node)} Ray node{'s' * (len(summary.by_node) != 1)}" if summary.by_node else "")
        + f"; threshold {scorer.threshold:.6g}"
        # Ray workers pick their provider on their own node; only the local engine's session is this one
        + (f" on {scorer.provider}" if engine == "local" else f"; workers' --provider {provider}")
        + (f"; rows in {output}" if output else ""),
        file=sys.stderr,
    )
    if fail_on_anomaly and summary.anomalies:
        raise typer.Exit(EXIT_ANOMALY)
    if summary.errors:
        # Every row was written; the exit code still tells a script that some inputs were unreadable.
        raise typer.Exit(EXIT_UNREADABLE)
