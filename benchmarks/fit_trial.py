"""Trial: the default `aeguard fit --data DIR` with extra fit options, on the development folders.

A candidate change to the photo recipe is tried here before the texture benchmark sees it: the default fit
plus TRIAL_OPTIONS on segmentation_score's development folders (texture_defects.py --seed 1, not the
benchmark's test images), against the plain default fitted on the same folders (segmentation_score's
bundles, made first). Image AUROC of the graph's score (the map's max), per texture and defect type, and
the epochs each fit ran. The missing trial fits run side by side, one torch thread each.

    python -m benchmarks.segmentation_score --work /tmp/segdev                          # the baseline first
    python -m benchmarks.fit_trial --work /tmp/segdev --name cosine --options=--lr-schedule=cosine

Writes benchmarks/results/fit_trial_<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks import segmentation_score
from benchmarks.results_io import write_results


def trial_bundle(work: Path, texture: str, name: str) -> Path:
    return work / f"{texture}-{name}-bundle"


def epochs_run(bundle: Path) -> int:
    return int(json.loads((bundle / "manifest.json").read_text())["training"]["epochs_run"])


def reading(folder: Path, bundle: Path) -> dict:
    """The graph's own score (the map's max): image AUROC overall and per defect type, and the epochs run."""
    result = segmentation_score.score_bundle(folder, bundle, flips=False)
    return {
        "image_auroc": result["image_auroc"]["max"],
        "per_defect": result["per_defect"]["max"],
        "epochs_run": epochs_run(bundle),
    }


def fit_missing(work: Path, textures: list[str], name: str, options: list[str]) -> None:
    fits = []
    for texture in textures:
        bundle = trial_bundle(work, texture, name)
        if not (bundle / "manifest.json").is_file():
            command = ["fit", "--data", str(work / texture), "--out", str(bundle), "--force", *options]
            env = os.environ | {"OMP_NUM_THREADS": "1"}
            fits.append(subprocess.Popen([sys.executable, "-m", "aeguard.cli.main", *command], env=env))
    if any([fit.wait() != 0 for fit in fits]):  # a list: wait for every fit
        raise SystemExit("a trial fit failed (its output is above)")


def markdown(name: str, options: list[str], rows: list[dict]) -> str:
    kinds = list(rows[0]["default"]["per_defect"])
    lines = [
        f"# Trial {name}: `aeguard fit --data DIR {shlex.join(options)}`",
        "",
        f"Development folders (texture_defects.py --seed {segmentation_score.DEVELOPMENT_SEED}, not the texture "
        "benchmark's test images); image AUROC of the graph's score (the map's max) for the default fit and for "
        f"the default plus `{shlex.join(options)}`. Produced by "
        f"`python -m benchmarks.fit_trial --name {name} --options={shlex.join(options)}` "
        "(after `python -m benchmarks.segmentation_score`).",
        "",
        "| texture | fit | image AUROC | epochs | " + " | ".join(kinds) + " |",
        "|---|---|---|---|" + "---|" * len(kinds),
    ]
    for row in rows:
        for fit in ("default", name):
            cells = " | ".join(f"{row[fit]['per_defect'][k]:.4f}" for k in kinds)
            lines.append(
                f"| {row['texture']} | {fit} | {row[fit]['image_auroc']:.4f} | {row[fit]['epochs_run']} | {cells} |"
            )
    for fit in ("default", name):
        mean = statistics.fmean(row[fit]["image_auroc"] for row in rows)
        lines.append(f"| mean | {fit} | {mean:.4f} | |" + " |" * len(kinds))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="segmentation_score's --work (its folders).")
    parser.add_argument("--name", required=True, help="The trial's name: its bundles and results file.")
    parser.add_argument("--options", required=True, help="The fit options tried, one shell-quoted string.")
    parser.add_argument("--textures", default="ihc,brick")
    args = parser.parse_args()
    textures, options = args.textures.split(","), shlex.split(args.options)
    fit_missing(args.work, textures, args.name, options)
    rows = []
    for texture in textures:
        folder, baseline = segmentation_score.fitted_bundle(texture, args.work)
        trial = trial_bundle(args.work, texture, args.name)
        rows.append({"texture": texture, "default": reading(folder, baseline), args.name: reading(folder, trial)})
        print(rows[-1], flush=True)
    data = {"name": args.name, "options": options, "rows": rows}
    print(write_results(f"fit_trial_{args.name}", data, markdown(args.name, options, rows)))


if __name__ == "__main__":
    main()
