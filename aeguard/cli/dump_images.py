"""`aeguard dump-images`: write images of a data set as PNG files, e.g. to try `aeguard score` on."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import reports_errors


@reports_errors
def dump_images(
    out: Path = typer.Argument(..., help="Folder to write PNGs into (created if missing).", file_okay=False),
    dataset: str = typer.Option("mnist", help="mnist or fashion-mnist."),
    split: str = typer.Option("test", help="train or test."),
    count: int = typer.Option(100, min=1, help="How many images, from the start of the split."),
    data_dir: Path | None = typer.Option(
        None, help="Where the IDX data sets live [default: $AEGUARD_DATA_DIR, then the user cache]."
    ),
    no_download: bool = typer.Option(False, "--no-download", help="Never download a missing data set."),
) -> None:
    """Write the first COUNT images of a split as OUT/<index>_<class>.png (8-bit grayscale, lossless)."""
    from PIL import Image

    from aeguard.data.catalog import get_spec, load_split

    spec = get_spec(dataset)
    data = load_split(spec.name, split, data_dir, allow_download=not no_download)
    out.mkdir(parents=True, exist_ok=True)
    n = min(count, len(data.labels))
    for index in range(n):
        label = spec.class_names[data.labels[index]].replace("/", "-").replace(" ", "-")
        Image.fromarray(data.images[index]).save(out / f"{index:06d}_{label}.png")
    typer.echo(f"wrote {n} {spec.name} {split} images to {out}")
