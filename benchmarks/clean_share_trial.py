"""Trial: a larger share of draem's training images left clean (no synthetic defect), on the development folders.

Brick's highest-scoring normal images light up at short mortar joints (docs/measured.md): the segmenter
answers to normal structure that its restorer redraws less well. Half the training images stay clean today
(aeguard/train/synthetic.py CLEAN_SHARE); more clean images give the segmenter more examples that such
restoration errors on normal structure are not defects, and fewer examples of defects. This fits the default
`aeguard fit --data DIR` on segmentation_score's development folders (texture_defects.py --seed 1, not the
benchmark's test images) with TRIAL_CLEAN_SHARE in place of CLEAN_SHARE. aeguard itself is unchanged; the
share is swapped in the fitting process only. The missing fits run side by side, one torch thread each.
The default bundles of segmentation_score (same folders, seed 0) are the baseline; with --seed N the
baseline is the default fitted with --seed N (fit_trial's `seedN` bundle), fitted here when missing.

    python -m benchmarks.segmentation_score --work /tmp/segdev      # the baseline bundles first
    python -m benchmarks.clean_share_trial --work /tmp/segdev      # about 15 min on 2 cores
    python -m benchmarks.clean_share_trial --work /tmp/segdev --seed 1   # 4 fits: about 30 min

Writes benchmarks/results/clean_share_trial.{json,md} (clean_share_trial_seedN.* for --seed N).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TRIAL_CLEAN_SHARE = 0.7


def fit_with_clean_share(argv: list[str]) -> None:
    """`aeguard fit ...` in this process with TRIAL_CLEAN_SHARE swapped into the synthetic defects."""
    from aeguard.cli.main import main
    from aeguard.train import synthetic

    synthetic.CLEAN_SHARE = TRIAL_CLEAN_SHARE  # paste_defects reads it at call time
    sys.argv = ["aeguard", *argv]
    main()


def trial_bundle(work: Path, texture: str, seed: int) -> Path:
    suffix = f"-seed{seed}" if seed else ""
    return work / f"{texture}-clean{round(TRIAL_CLEAN_SHARE * 100)}{suffix}-bundle"


def baseline_bundle(work: Path, texture: str, seed: int) -> Path:
    """segmentation_score's default bundle for seed 0, fit_trial's `seedN` trial bundle otherwise."""
    from benchmarks import fit_trial

    return fit_trial.trial_bundle(work, texture, f"seed{seed}") if seed else work / f"{texture}-bundle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="segmentation_score's --work (its folders).")
    parser.add_argument("--textures", default="ihc,brick")
    parser.add_argument("--seed", type=int, default=0, help="The fits' --seed (default and trial alike).")
    args = parser.parse_args()
    from benchmarks import segmentation_score
    from benchmarks.fit_trial import max_reading, run_side_by_side
    from benchmarks.results_io import write_results

    textures = args.textures.split(",")
    commands = []
    seed = ["--seed", str(args.seed)] if args.seed else []
    for texture in textures:
        folder = args.work / texture
        bundle = trial_bundle(args.work, texture, args.seed)
        if not (bundle / "manifest.json").is_file():
            command = ["fit", "--data", str(folder), "--out", str(bundle), "--force", *seed]
            code = f"from benchmarks.clean_share_trial import fit_with_clean_share; fit_with_clean_share({command!r})"
            commands.append(["-c", code])
        baseline = baseline_bundle(args.work, texture, args.seed)
        if args.seed and not (baseline / "manifest.json").is_file():
            fit = ["fit", "--data", str(folder), "--out", str(baseline), "--force", *seed]
            commands.append(["-m", "aeguard.cli.main", *fit])
    run_side_by_side(commands, "a clean-share trial fit")
    rows = []
    for texture in textures:
        folder = args.work / texture
        if args.seed:
            baseline = segmentation_score.score_bundle(
                folder, baseline_bundle(args.work, texture, args.seed), flips=False
            )
        else:
            baseline = segmentation_score.measure(texture, args.work, flips=False)
        trial = segmentation_score.score_bundle(folder, trial_bundle(args.work, texture, args.seed), flips=False)
        rows.append({"texture": texture, "default": max_reading(baseline), "trial": max_reading(trial)})
        print(rows[-1], flush=True)
    name = f"clean_share_trial_seed{args.seed}" if args.seed else "clean_share_trial"
    results = {"clean_share": TRIAL_CLEAN_SHARE, "seed": args.seed, "rows": rows}
    print(write_results(name, results, markdown(rows, args.seed)))


def markdown(rows: list[dict], seed: int) -> str:
    from aeguard.train.synthetic import CLEAN_SHARE
    from benchmarks.segmentation_score import DEVELOPMENT_SEED

    kinds = list(rows[0]["default"]["per_defect"])
    names = {"default": f"{CLEAN_SHARE:.0%} clean (default)", "trial": f"{TRIAL_CLEAN_SHARE:.0%} clean"}
    lines = [
        "# Trial: more of draem's training images left clean",
        "",
        f"Development folders (texture_defects.py --seed {DEVELOPMENT_SEED}), default `aeguard fit --data DIR` "
        f"with {TRIAL_CLEAN_SHARE:.0%} of the training images left without a synthetic defect instead of "
        f"{CLEAN_SHARE:.0%}; image AUROC of the graph's score (the map's max). Produced by "
        f"`python -m benchmarks.clean_share_trial{f' --seed {seed}' if seed else ''}` "
        f"(after `python -m benchmarks.segmentation_score`); every fit with seed {seed}.",
        "",
        "| texture | training images | image AUROC | " + " | ".join(kinds) + " |",
        "|---|---|---|" + "---|" * len(kinds),
    ]
    for row in rows:
        for key, name in names.items():
            cells = " | ".join(f"{row[key]['per_defect'][k]:.4f}" for k in kinds)
            lines.append(f"| {row['texture']} | {name} | {row[key]['image_auroc']:.4f} | {cells} |")
    for key, name in names.items():
        mean = sum(row[key]["image_auroc"] for row in rows) / len(rows)
        lines.append(f"| mean | {name} | {mean:.4f} |" + " |" * len(kinds))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
