"""Trials: the default `aeguard fit --data DIR` with extra fit options, on the development folders.

A candidate change to the photo recipe is tried here before the texture benchmark sees it: the default fit
plus each trial's options on segmentation_score's development folders (texture_defects.py --seed 1, not the
benchmark's test images), against the plain default fitted on the same folders (segmentation_score's
bundles). Image AUROC of the graph's score (the map's max), per texture and defect type, and the epochs each
fit ran. The missing fits, the default's included, run side by side, one torch thread each.

A trial that only changes --seed measures how far two fits of one recipe differ: the yardstick for the
others (one fit is one draw).

    python -m benchmarks.fit_trial --work /tmp/segdev --name segmenter --trial "full=--segmenter full"
    python -m benchmarks.fit_trial --work /tmp/segdev --name cosine --trial "seed1=--seed 1" \
        --trial "cosine=--lr-schedule cosine"

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
from benchmarks.texture_defects import write_texture_folder


def trial_bundle(work: Path, texture: str, name: str) -> Path:
    return work / f"{texture}-{name}-bundle"


def epochs_run(bundle: Path) -> int:
    return int(json.loads((bundle / "manifest.json").read_text())["training"]["epochs_run"])


def max_reading(result: dict) -> dict:
    """The graph's own score (the map's max) out of a segmentation_score result."""
    return {"image_auroc": result["image_auroc"]["max"], "per_defect": result["per_defect"]["max"]}


def reading(folder: Path, bundle: Path) -> dict:
    """The graph's own score: image AUROC overall and per defect type, and the epochs run."""
    result = segmentation_score.score_bundle(folder, bundle, flips=False)
    return {**max_reading(result), "epochs_run": epochs_run(bundle)}


def run_side_by_side(commands: list[list[str]], what: str) -> None:
    """Python processes (each command is what follows the interpreter) started together, one torch thread
    each, as the trials' fits were measured; waits for every one."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, *command], env=env) for command in commands]
    if any([process.wait() != 0 for process in processes]):  # a list: wait for every process
        raise SystemExit(f"{what} failed (its output is above)")


def fit_missing(work: Path, textures: list[str], trials: dict[str, list[str]]) -> None:
    """Every missing fit, the default's included, side by side."""
    commands = []
    for texture in textures:
        folder, default = work / texture, work / f"{texture}-bundle"  # segmentation_score.fitted_bundle's
        if not folder.exists():
            write_texture_folder(texture, folder, seed=segmentation_score.DEVELOPMENT_SEED)
        bundles = {default: [], **{trial_bundle(work, texture, name): options for name, options in trials.items()}}
        for bundle, options in bundles.items():
            if not (bundle / "manifest.json").is_file():
                fit = ["fit", "--data", str(folder), "--out", str(bundle), "--force", *options]
                commands.append(["-m", "aeguard.cli.main", *fit])
    run_side_by_side(commands, "a trial fit")


def markdown(name: str, trials: dict[str, list[str]], rows: list[dict]) -> str:
    fits = ["default", *trials]
    kinds = list(rows[0]["default"]["per_defect"])
    arguments = " ".join(f'--trial "{trial}={shlex.join(options)}"' for trial, options in trials.items())
    lines = [
        f"# Fit trials: {name}",
        "",
        f"Development folders (texture_defects.py --seed {segmentation_score.DEVELOPMENT_SEED}, not the texture "
        "benchmark's test images); image AUROC of the graph's score (the map's max) for the default "
        "`aeguard fit --data DIR` and for the default plus each trial's options:",
        "",
        *(f"- {trial}: `{shlex.join(options)}`" for trial, options in trials.items()),
        "",
        f"Produced by `python -m benchmarks.fit_trial --work /tmp/segdev --name {name} {arguments}`.",
        "",
        "| texture | fit | image AUROC | epochs | " + " | ".join(kinds) + " |",
        "|---|---|---|---|" + "---|" * len(kinds),
    ]
    for row in rows:
        for fit in fits:
            cells = " | ".join(f"{row[fit]['per_defect'][k]:.4f}" for k in kinds)
            lines.append(
                f"| {row['texture']} | {fit} | {row[fit]['image_auroc']:.4f} | {row[fit]['epochs_run']} | {cells} |"
            )
    for fit in fits:
        mean = statistics.fmean(row[fit]["image_auroc"] for row in rows)
        lines.append(f"| mean | {fit} | {mean:.4f} | |" + " |" * len(kinds))
    return "\n".join(lines) + "\n"


def parse_trial(text: str) -> tuple[str, list[str]]:
    name, _, options = text.partition("=")
    if not name or not options or name == "default" or "/" in name:
        raise argparse.ArgumentTypeError(f"a trial is NAME=OPTIONS (NAME not 'default'), got {text!r}")
    return name, shlex.split(options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="segmentation_score's --work (its folders).")
    parser.add_argument("--name", required=True, help="The results file's name.")
    parser.add_argument("--trial", type=parse_trial, action="append", required=True, help="NAME=OPTIONS")
    parser.add_argument("--textures", default="ihc,brick")
    args = parser.parse_args()
    textures, trials = args.textures.split(","), dict(args.trial)
    fit_missing(args.work, textures, trials)
    rows = []
    for texture in textures:
        folder, baseline = segmentation_score.fitted_bundle(texture, args.work)
        row = {"texture": texture, "default": reading(folder, baseline)}
        row |= {name: reading(folder, trial_bundle(args.work, texture, name)) for name in trials}
        rows.append(row)
        print(rows[-1], flush=True)
    data = {"name": args.name, "trials": trials, "rows": rows}
    print(write_results(f"fit_trial_{args.name}", data, markdown(args.name, trials, rows)))


if __name__ == "__main__":
    main()
