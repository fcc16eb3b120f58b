"""Trial: a share of draem's synthetic defects shaped as thin bending strokes, on the development folders.

Blob-shaped synthetic defects teach thin scratches least (benchmarks/results/textures.md). This fits the
default `aeguard fit --data DIR` on segmentation_score's development folders (texture_defects.py --seed 1,
not the benchmark's test images) with STROKE_SHARE of the synthetic defect masks replaced by a stroke: a
random walk of unit steps from the middle of the image whose turning rate drifts, 1.4-4 px wide. aeguard
itself is unchanged; the mask function is swapped in the fitting process only. The missing fits run side
by side, one torch thread each. The blob-only bundles of segmentation_score (same folders, same seed, fitted
one at a time on two threads) are the baseline.

    python -m benchmarks.segmentation_score --work /tmp/segdev      # the baseline bundles first
    python -m benchmarks.stroke_trial --work /tmp/segdev           # about 25 min on 2 cores

Writes benchmarks/results/stroke_trial.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

STROKE_SHARE = 0.3


def stroke_mask(height: int, width: int, generator, device):
    """(1, 1, H, W) in {0, 1}, or None when the walk left the image at once (under 4 pixels)."""
    import torch

    steps = int(torch.randint(40, 140, (1,), generator=generator))
    y = (0.2 + 0.6 * float(torch.rand(1, generator=generator))) * height
    x = (0.2 + 0.6 * float(torch.rand(1, generator=generator))) * width
    angle = float(torch.rand(1, generator=generator)) * 2 * math.pi
    radius = 0.7 + 1.3 * float(torch.rand(1, generator=generator))
    turn, points = 0.0, []
    for _ in range(steps):
        turn = 0.8 * turn + 0.15 * (float(torch.rand(1, generator=generator)) - 0.5)
        angle += turn
        y, x = y + math.sin(angle), x + math.cos(angle)
        points.append((y, x))
    path = torch.tensor(points, device=device)
    rows = torch.arange(height, device=device).view(1, -1, 1).float()
    cols = torch.arange(width, device=device).view(1, 1, -1).float()
    distance = ((rows - path[:, 0, None, None]) ** 2 + (cols - path[:, 1, None, None]) ** 2).min(dim=0).values
    mask = (distance <= radius**2).float()
    return mask[None, None] if mask.sum() >= 4 else None


def fit_with_strokes(argv: list[str]) -> None:
    """`aeguard fit ...` in this process with the stroke share swapped into the synthetic defects."""
    import torch

    from aeguard.cli.main import main
    from aeguard.train import synthetic

    blob_mask = synthetic.blob_mask

    def mask(height, width, generator, device):
        if float(torch.rand(1, generator=generator)) < STROKE_SHARE:
            stroke = stroke_mask(height, width, generator, device)
            if stroke is not None:
                return stroke
        return blob_mask(height, width, generator, device)

    synthetic.blob_mask = mask  # paste_defects looks it up at call time
    sys.argv = ["aeguard", *argv]
    main()


def strokes_bundle(work: Path, texture: str) -> Path:
    return work / f"{texture}-strokes-bundle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="segmentation_score's --work (its folders).")
    parser.add_argument("--textures", default="ihc,brick")
    args = parser.parse_args()
    from benchmarks import segmentation_score
    from benchmarks.fit_trial import max_reading, run_side_by_side
    from benchmarks.results_io import write_results

    textures = args.textures.split(",")
    commands = []
    for texture in textures:
        bundle = strokes_bundle(args.work, texture)
        if not (bundle / "manifest.json").is_file():
            command = ["fit", "--data", str(args.work / texture), "--out", str(bundle), "--force"]
            code = f"from benchmarks.stroke_trial import fit_with_strokes; fit_with_strokes({command!r})"
            commands.append(["-c", code])
    run_side_by_side(commands, "a stroke-trial fit")
    rows = []
    for texture in textures:
        baseline = segmentation_score.measure(texture, args.work, flips=False)
        trial = segmentation_score.score_bundle(args.work / texture, strokes_bundle(args.work, texture), flips=False)
        rows.append({"texture": texture, "blobs": max_reading(baseline), "strokes": max_reading(trial)})
        print(rows[-1], flush=True)
    print(write_results("stroke_trial", {"stroke_share": STROKE_SHARE, "rows": rows}, markdown(rows)))


def markdown(rows: list[dict]) -> str:
    from benchmarks.segmentation_score import DEVELOPMENT_SEED

    kinds = list(rows[0]["blobs"]["per_defect"])
    lines = [
        "# Trial: thin bending strokes among draem's synthetic defects",
        "",
        f"Development folders (texture_defects.py --seed {DEVELOPMENT_SEED}), default `aeguard fit --data DIR` "
        f"with {STROKE_SHARE:.0%} "
        "of the synthetic defect masks drawn as strokes instead of blobs; image AUROC of the graph's score (the "
        "map's max). Produced by `python -m benchmarks.stroke_trial` (after "
        "`python -m benchmarks.segmentation_score`).",
        "",
        "| texture | synthetic masks | image AUROC | " + " | ".join(kinds) + " |",
        "|---|---|---|" + "---|" * len(kinds),
    ]
    for row in rows:
        for name in ("blobs", "strokes"):
            cells = " | ".join(f"{row[name]['per_defect'][k]:.4f}" for k in kinds)
            lines.append(f"| {row['texture']} | {name} | {row[name]['image_auroc']:.4f} | {cells} |")
    for name in ("blobs", "strokes"):
        mean = sum(row[name]["image_auroc"] for row in rows) / len(rows)
        lines.append(f"| mean | {name} | {mean:.4f} |" + " |" * len(kinds))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
