"""Trial: the default draem fit with other values of aeguard's module settings, on the development folders.

A setting is a module-level constant that aeguard reads at call time: draem's synthetic defects
(aeguard/train/synthetic.py: CLEAN_SHARE, OPACITY_SPAN) and the model config's defaults
(aeguard/config.py: DRAEM_CONV_PADDING, DRAEM_SEGMENTER_INPUT). This fits the default `aeguard fit --data DIR` on
segmentation_score's development folders (texture_defects.py --seed 1, not the benchmark's test images)
with each `--set MODULE.NAME=VALUE` (MODULE under aeguard) swapped in the fitting process only; aeguard
itself is unchanged. The missing fits run side by side, one torch thread each. The baseline is the
default: segmentation_score's bundles for seed 0, fit_trial's `seedN` bundles for --seed N (fitted here
when missing). Those bundles are kept in DIR and reused: they hold the default of when they were fitted, so
after a default changes use a fresh DIR (each result records its commit).

    python -m benchmarks.segmentation_score --work /tmp/segdev      # the baseline bundles first
    python -m benchmarks.setting_trial --work /tmp/segdev --name clean70 --set train.synthetic.CLEAN_SHARE=0.7
    python -m benchmarks.setting_trial --work /tmp/segdev --name replicate \
        --set config.DRAEM_CONV_PADDING=replicate --seed 1

Two fits take about 15 min on 2 cores. Writes benchmarks/results/setting_trial_<name>.{json,md}
(setting_trial_<name>_seedN.* for --seed N).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType


def setting_home(path: str) -> tuple[ModuleType, str]:
    """ "train.synthetic.CLEAN_SHARE" -> (the module aeguard.train.synthetic, "CLEAN_SHARE")."""
    module_name, _, name = path.rpartition(".")
    return importlib.import_module(f"aeguard.{module_name}"), name


def parse_settings(pairs: list[str]) -> dict[str, float | str]:
    """["train.synthetic.CLEAN_SHARE=0.7"] -> {"train.synthetic.CLEAN_SHARE": 0.7}: the value takes the type
    of the setting's default; a name aeguard does not have, or a setting that is not a number or a word, is
    refused."""
    settings: dict[str, float | str] = {}
    for pair in pairs:
        path, _, value = pair.partition("=")
        try:
            current = getattr(*setting_home(path))
        except (ImportError, AttributeError, ValueError):
            raise SystemExit(f"--set {pair}: aeguard has no setting {path!r}") from None
        if not isinstance(current, (float, str)):
            raise SystemExit(f"--set {pair}: {path} is {current!r}, not a number or a word")
        settings[path] = type(current)(value)
    return settings


def fit_with_settings(settings: dict[str, float | str], argv: list[str]) -> None:
    """`aeguard fit ...` in this process with `settings` swapped into aeguard's modules."""
    from aeguard.cli.main import main

    for path, value in settings.items():
        setattr(*setting_home(path), value)  # read at call time
    sys.argv = ["aeguard", *argv]
    main()


def fit_process(settings: dict[str, float | str], argv: list[str]) -> list[str]:
    """What follows the interpreter to run `aeguard <argv>` in a new process with `settings` swapped in
    (none: plain `python -m aeguard.cli.main`)."""
    if not settings:
        return ["-m", "aeguard.cli.main", *argv]
    return ["-c", f"from benchmarks.setting_trial import fit_with_settings; fit_with_settings({settings!r}, {argv!r})"]


def trial_bundle(work: Path, texture: str, name: str, seed: int) -> Path:
    from benchmarks import fit_trial

    return fit_trial.trial_bundle(work, texture, f"{name}-seed{seed}" if seed else name)


def baseline_bundle(work: Path, texture: str, seed: int) -> Path:
    """segmentation_score's default bundle for seed 0, fit_trial's `seedN` trial bundle otherwise."""
    from benchmarks import fit_trial

    return fit_trial.trial_bundle(work, texture, f"seed{seed}") if seed else work / f"{texture}-bundle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="segmentation_score's --work (its folders).")
    parser.add_argument("--name", required=True, help="The trial's name: its bundles' and results' names.")
    parser.add_argument("--set", action="append", required=True, metavar="MODULE.NAME=VALUE", dest="settings")
    parser.add_argument("--textures", default="ihc,brick")
    parser.add_argument("--seed", type=int, default=0, help="The fits' --seed (default and trial alike).")
    args = parser.parse_args()
    from benchmarks import segmentation_score
    from benchmarks.fit_trial import max_reading, run_side_by_side
    from benchmarks.results_io import current_commit, write_results

    settings = parse_settings(args.settings)
    textures = args.textures.split(",")
    seed = ["--seed", str(args.seed)] if args.seed else []
    commands = []
    for texture in textures:
        folder = args.work / texture
        bundle = trial_bundle(args.work, texture, args.name, args.seed)
        if not (bundle / "manifest.json").is_file():
            fit = ["fit", "--data", str(folder), "--out", str(bundle), "--force", *seed]
            commands.append(fit_process(settings, fit))
        baseline = baseline_bundle(args.work, texture, args.seed)
        if args.seed and not (baseline / "manifest.json").is_file():
            fit = ["fit", "--data", str(folder), "--out", str(baseline), "--force", *seed]
            commands.append(fit_process({}, fit))
    run_side_by_side(commands, f"a {args.name} trial fit")
    rows = []
    for texture in textures:
        folder = args.work / texture
        if args.seed:
            baseline = segmentation_score.score_bundle(
                folder, baseline_bundle(args.work, texture, args.seed), flips=False
            )
        else:
            baseline = segmentation_score.measure(texture, args.work, flips=False)
        trial = segmentation_score.score_bundle(
            folder, trial_bundle(args.work, texture, args.name, args.seed), flips=False
        )
        rows.append({"texture": texture, "default": max_reading(baseline), "trial": max_reading(trial)})
        print(rows[-1], flush=True)
    result_name = f"setting_trial_{args.name}" + (f"_seed{args.seed}" if args.seed else "")
    results = {"name": args.name, "settings": settings, "seed": args.seed, "commit": current_commit(), "rows": rows}
    command = " ".join(
        ["python -m benchmarks.setting_trial --work DIR", f"--name {args.name}"]
        + [f"--set {pair}" for pair in args.settings]
        + ([f"--textures {args.textures}"] if args.textures != "ihc,brick" else [])
        + ([f"--seed {args.seed}"] if args.seed else [])
    )
    print(write_results(result_name, results, markdown(rows, settings, command, args.seed)))


def markdown(rows: list[dict], settings: dict[str, float | str], command: str, seed: int) -> str:
    from benchmarks.segmentation_score import DEVELOPMENT_SEED

    def default(path: str):
        return getattr(*setting_home(path))

    kinds = list(rows[0]["default"]["per_defect"])
    names = {
        "default": ", ".join(f"{path.rpartition('.')[2]} = {default(path)}" for path in settings) + " (default)",
        "trial": ", ".join(f"{path.rpartition('.')[2]} = {value}" for path, value in settings.items()),
    }
    lines = [
        "# Trial: the default draem fit with other values of aeguard's settings",
        "",
        f"Development folders (texture_defects.py --seed {DEVELOPMENT_SEED}), default `aeguard fit --data DIR` "
        f"with {', '.join(f'aeguard.{path} = {value}' for path, value in settings.items())} (swapped in the "
        "fitting process only); image AUROC of the graph's score (the map's max). Produced by "
        f"`{command}` (after `python -m benchmarks.segmentation_score`); every fit with seed {seed}.",
        "",
        "| texture | setting | image AUROC | " + " | ".join(kinds) + " |",
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
