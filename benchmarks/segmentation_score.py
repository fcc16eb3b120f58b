"""How a draem bundle's image score should be read from its defect map, chosen on development folders.

The texture benchmark's test images are not used for this choice: each texture gets a development folder
(benchmarks/texture_defects.py with --seed 1: other training crops, other test crops and defects), the
default `aeguard fit --data DIR` is fitted on it, and the anomaly maps its exported graph gives the test
images (through onnxruntime, as `aeguard evaluate` reads them) are reduced to one score per image in several
ways. Image AUROC of each, per texture and per defect type:

- max: the largest pixel (the graph's score up to now);
- top-k mean: the mean of the k largest pixels, so a single stray pixel of a normal image counts for little
  while a defect of k pixels or more keeps its full height;
- mean-3 max: the largest value after a 3 x 3 mean (DRAEM's reduction, at a size that keeps a 2-pixel scratch);
- flips ...: the same reductions of the mean of four maps, of the image and of its horizontal, vertical and
  double flip (each map flipped back): test-time augmentation, so a stray response of the segmenter to one
  orientation of normal structure is averaged down while a defect, there in every flip, keeps its height.

    python -m benchmarks.segmentation_score --work /tmp/segdev        # brick and ihc, about 25 min on 2 cores
    python -m benchmarks.segmentation_score --work /tmp/segdev --textures brick,ihc,retina

A bundle already in --work is reused. Writes benchmarks/results/segmentation_score.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from aeguard import Bundle
from aeguard.data.sources import mvtec_eval_set
from aeguard.report.labelled import anomaly_maps, per_defect_metrics
from benchmarks.results_io import write_results
from benchmarks.texture_defects import write_texture_folder

DEVELOPMENT_SEED = 1  # the benchmark's folders use seed 0
TOP_K = (4, 16, 64, 256)


def reductions(maps: np.ndarray) -> dict[str, np.ndarray]:
    """(N, H, W) maps -> {name: (N,) image scores}."""
    flat = maps.reshape(len(maps), -1)
    ranked = -np.sort(-flat, axis=1)
    out = {"max": ranked[:, 0]}
    out |= {f"top-{k} mean": ranked[:, :k].mean(axis=1) for k in TOP_K}
    padded = np.pad(maps, ((0, 0), (1, 1), (1, 1)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    out["mean-3 max"] = windows.mean(axis=(-1, -2)).reshape(len(maps), -1).max(axis=1)
    return out


def flip_mean_maps(scorer, images: np.ndarray) -> np.ndarray:
    """(N, H, W): the mean of the maps of the images flipped along no axis, W, H and both, each flipped back."""
    total = np.zeros((len(images), images.shape[2], images.shape[3]), np.float32)
    for axes in ((), (3,), (2,), (2, 3)):
        flipped = np.ascontiguousarray(np.flip(images, axes)) if axes else images
        maps = anomaly_maps(scorer, flipped)
        total += np.flip(maps, tuple(a - 1 for a in axes)) if axes else maps
    return total / 4


def fitted_bundle(texture: str, work: Path) -> tuple[Path, Path]:
    folder, bundle = work / texture, work / f"{texture}-bundle"
    if not folder.exists():
        write_texture_folder(texture, folder, seed=DEVELOPMENT_SEED)
    if not (bundle / "manifest.json").is_file():
        command = [sys.executable, "-m", "aeguard.cli.main", "fit", "--data", str(folder), "--out", str(bundle)]
        subprocess.run([*command, "--force"], check=True, capture_output=True, text=True)
    return folder, bundle


def measure(texture: str, work: Path, flips: bool = True) -> dict:
    return {"texture": texture, **score_bundle(*fitted_bundle(texture, work), flips=flips)}


def score_bundle(folder: Path, bundle_dir: Path, flips: bool = True) -> dict:
    """Image AUROC of each reduction, overall and per defect type, of a bundle's maps on a folder's test images;
    flips=False leaves out the flipped-map readings (four more passes of the graph)."""
    scorer = Bundle.load(bundle_dir).scorer()
    eval_set, problems = mvtec_eval_set(folder, scorer.preprocessing)
    assert eval_set is not None and not problems, problems
    scores = reductions(anomaly_maps(scorer, eval_set.images))
    if flips:
        scores |= {f"flips {name}": v for name, v in reductions(flip_mean_maps(scorer, eval_set.images)).items()}
    result: dict = {"image_auroc": {}, "per_defect": {}}
    for name, values in scores.items():
        result["image_auroc"][name] = float(roc_auc_score(eval_set.is_anomaly, values))
        result["per_defect"][name] = {kind: m["auroc"] for kind, m in per_defect_metrics(values, eval_set).items()}
    return result


def markdown(rows: list[dict]) -> str:
    names = list(rows[0]["image_auroc"])
    kinds = list(rows[0]["per_defect"]["max"])
    lines = [
        "# The draem image score: which reduction of the defect map",
        "",
        f"Development folders (benchmarks/texture_defects.py --seed {DEVELOPMENT_SEED}, not the texture benchmark's "
        "test images), the default `aeguard fit --data DIR` fitted on each; image AUROC of each way to reduce the "
        "exported graph's anomaly map to a score (flips: of the mean of the maps of the image and its three flips). "
        "Produced by `python -m benchmarks.segmentation_score`.",
        "",
        "| reduction | " + " | ".join(row["texture"] for row in rows) + " | mean |",
        "|---|" + "---|" * (len(rows) + 1),
    ]
    for name in names:
        values = [row["image_auroc"][name] for row in rows]
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {statistics.fmean(values):.4f} |")
    lines += ["", "Per defect type:", "", "| texture | reduction | " + " | ".join(kinds) + " |"]
    lines.append("|---|---|" + "---|" * len(kinds))
    for row in rows:
        for name in names:
            lines.append(
                f"| {row['texture']} | {name} | "
                + " | ".join(f"{row['per_defect'][name][k]:.4f}" for k in kinds)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="Folders and bundles (reused when present).")
    parser.add_argument("--textures", default="brick,ihc")
    args = parser.parse_args()
    rows = []
    for texture in args.textures.split(","):
        rows.append(measure(texture, args.work))
        print(rows[-1]["texture"], {k: round(v, 4) for k, v in rows[-1]["image_auroc"].items()}, flush=True)
    print(write_results("segmentation_score", {"development_seed": DEVELOPMENT_SEED, "rows": rows}, markdown(rows)))


if __name__ == "__main__":
    main()
