"""Own-images benchmark: real photographs, MVTec layout, image and pixel metrics, through `aeguard fit`.

For each texture (benchmarks/texture_defects.py: scikit-image's brick, colour histology and retina), writes the
MVTec-layout folder (400 training crops of 128 px from the top 60 % of the photo, 60 normal and 80 defective
test crops from the rest), then runs the `aeguard fit` command of each recipe on it and reads the report it
writes: image AUROC, pixel AUROC, AUPRO, per defect type, and the fit's wall time on this machine.

Recipes: `default` is `aeguard fit --data DIR` with no other option (the draem model); `conv-erase-blur` is the
best MNIST recipe on the size-scaled conv autoencoder, for comparison; `draem-constant` is the default with the
constant learning rate it had before; `default-seed1` to `default-seed4` are further draws of the default
(`--seed 1` to `--seed 4`); `draem-difference` (and its `-seed1`, `-seed2` draws) is the default with a module
setting swapped in the fitting process (RECIPE_SETTINGS), a trial. Rows of earlier recipes are kept under
their names (`draem-zeros`: zero-padded convolutions); every draw of a recipe (DRAWS) is averaged per texture
at the end, the figure to quote, as one fit is one draw.

Results go to benchmarks/results/textures.json / .md after every run; a run already there is not repeated.

    python -m benchmarks.textures                       # every texture and CPU recipe (hours on 2 cores)
    python -m benchmarks.textures --textures brick --recipes default --fresh
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_io import RESULTS_DIR, StealMeter, current_commit, machine
from benchmarks.setting_trial import fit_process
from benchmarks.texture_defects import TEXTURES, write_texture_folder

RECIPES = {
    "default": [],
    "conv-erase-blur": ["--model", "conv", "--noise", "erase:0.25", "--score", "blur"],
    "draem-constant": ["--lr-schedule", "constant"],
    "default-seed1": ["--seed", "1"],  # a second draw of the default: how far one fit is from another
    "default-seed2": ["--seed", "2"],  # a third draw
    "default-seed3": ["--seed", "3"],  # a fourth and fifth draw, to narrow the mean
    "default-seed4": ["--seed", "4"],
    "draem-x2": ["--ensemble", "2"],  # two members (seeds 0 and 1), their maps averaged: fit_trial_ensemble
    "default-cuda": ["--device", "cuda"],  # the default's time on a GPU (benchmarks/gpu_checks.sh)
    # bf16 autocast with channels-last tensors (aeguard/train/precision.py), five draws
    "draem-bf16": ["--precision", "bf16"],
    "draem-bf16-seed1": ["--precision", "bf16", "--seed", "1"],
    "draem-bf16-seed2": ["--precision", "bf16", "--seed", "2"],
    "draem-bf16-seed3": ["--precision", "bf16", "--seed", "3"],
    "draem-bf16-seed4": ["--precision", "bf16", "--seed", "4"],
    # fp32 on the machine the bf16 draws ran on: their fit time against the same machine's
    "draem-fp32": ["--precision", "fp32"],
    # where the threshold lands on test/good: set on a share held out of train/good (as every recipe above), or
    # on DIR/validation/good, crops the model never saw (FOLDER_VALIDATION)
    "threshold-heldout": [],
    "threshold-validation": [],
    "draem-difference": [],  # with RECIPE_SETTINGS' setting: setting_trial_difference
    "draem-difference-seed1": ["--seed", "1"],
    "draem-difference-seed2": ["--seed", "2"],
}
# aeguard module settings swapped in a recipe's fitting process (benchmarks/setting_trial.py), for a trial that
# is not a command-line option
DIFFERENCE = {"config.DRAEM_SEGMENTER_INPUT": "difference"}
RECIPE_SETTINGS: dict[str, dict[str, float | str]] = {
    "draem-difference": DIFFERENCE,
    "draem-difference-seed1": DIFFERENCE,
    "draem-difference-seed2": DIFFERENCE,
}
# recipes fitted on the texture's folder with this many DIR/validation/good crops (texture_defects.py); the
# training and test images are those of every other recipe
FOLDER_VALIDATION = {"threshold-validation": 40}
DEFAULT_TEXTURES = ("brick", "ihc", "retina")
GPU_RECIPES = ("default-cuda",)  # run when named (benchmarks/gpu_checks.sh), not by default: they need a GPU
# Rows of earlier code, kept so the table shows what each change did; each row records its commit.
RECIPE_NOTES = {
    "default": "`aeguard fit --data DIR`: the draem model, 50 epochs (at most) of batches of 16, the learning "
    "rate falling along half a cosine, every convolution padded by repeating the edge pixels; these rows trained "
    "in fp32 and the standard layout, before `--precision auto` (on a CPU with native bf16 the same command now "
    "trains as draem-bf16 does; on other CPUs in fp32 with channels-last tensors, as draem-fp32 did)",
    "default-seed1": "the default with `--seed 1` (split, initialisation, batch order and synthetic defects): "
    "another draw of the same recipe",
    "default-seed2": "the default with `--seed 2`: a third draw",
    "default-seed3": "the default with `--seed 3`: a fourth draw (its fits ran beside test runs on the same cores, "
    "so their times are not the recipe's; the commits between its rows change no 128 px fit)",
    "default-seed4": "the default with `--seed 4`: a fifth draw",
    "default-cuda": "the default with `--device cuda`: its time on a GPU (benchmarks/gpu_checks.sh); fp32, as "
    "`--precision auto` trains on CUDA",
    "draem-bf16": "the default with `--precision bf16`: the forward pass in bf16 autocast with channels-last "
    "tensors (losses, weights and validation in fp32; aeguard/train/precision.py), what `--precision auto` picks "
    "for draem on a CPU with native bf16 such as this one (brick's fits of seeds 0 and 1 ran beside test runs on "
    "the same cores, so their times are not the recipe's)",
    "draem-bf16-seed1": "draem-bf16 with `--seed 1`: another draw of it",
    "draem-bf16-seed2": "draem-bf16 with `--seed 2`: a third draw",
    "draem-bf16-seed3": "draem-bf16 with `--seed 3`: a fourth draw",
    "draem-bf16-seed4": "draem-bf16 with `--seed 4`: a fifth draw",
    "draem-fp32": "the default with `--precision fp32` (channels-last tensors, as draem trains on any CPU now), on "
    "the machine and in the session the draem-bf16 draws ran on: fp32's fit time there, against draem-bf16's",
    "threshold-heldout": "`aeguard fit --data DIR` as it runs on this machine (draem-bf16's command and seed, "
    "and its figures), its threshold set on 10 % of train/good held out, as in every row above: crops of the "
    "region of the photo the training crops cover, overlapping them (ihc's fit ran beside other fits on the "
    "same cores, so its time is not the recipe's)",
    "threshold-validation": "the same command on the same training and test images, with DIR/validation/good: "
    "40 normal crops of the test region, which the model never trained on, that set the threshold and stop "
    "the training instead (brick stopped after 41 epochs), all 400 training crops trained on (ihc's and "
    "retina's fits ran beside test runs on the same cores, so their times are not the recipe's)",
    "draem-zeros": "the default before its convolutions padded by repeating edge pixels: zero padding "
    '(commit 6419e8c; aeguard.config.DRAEM_CONV_PADDING = "zeros")',
    "draem-zeros-seed1": "draem-zeros with `--seed 1`: another draw of it (commit 28f74fe)",
    "draem-zeros-8296c14": "draem-zeros at commit 8296c14, before draem's SSIM loss was computed by band "
    "matrices (the same numbers to float rounding, so another draw of the same recipe)",
    "draem-constant": "draem-zeros with the constant learning rate before the cosine schedule "
    "(`--lr-schedule constant`), measured then (commits 3b3d084 and 89ef4d7)",
    "conv-erase-blur": "`--model conv --noise erase:0.25 --score blur`: MNIST's best recipe, size-scaled conv net",
    "draem-x2": "draem-zeros with `--ensemble 2`: two members (seeds 0 and 1) whose defect maps are averaged, "
    "twice the training and scoring work; ahead of single fits on the development folders (fit_trial_ensemble), "
    "not here, so not kept (brick's fit ran alone; ihc's ran beside a CI run on the same cores, so its time is "
    "not the recipe's; the retina was not run)",
    "draem-difference": "the default with its segmenter reading |image - restoration| beside the image and its "
    'restoration (aeguard.config.DRAEM_SEGMENTER_INPUT = "difference", swapped in the fitting process)',
    "draem-difference-seed1": "draem-difference with `--seed 1`: another draw of it",
    "draem-difference-seed2": "draem-difference with `--seed 2`: a third draw",
    "draem-scars": "draem-zeros with a third of its synthetic defects in CutPaste's scar shape (thin rotated "
    "rectangles; commit 8fcf212): scratch maps sharper, image AUROC lower, so not kept",
}
NAME = "textures"
# Draws of one recipe: another seed, or earlier code with the same numbers to float rounding.
DRAWS = {
    # what `aeguard fit --data DIR` trains on a CPU with native bf16 (`--precision auto`), as on this machine
    "the default recipe in bf16": tuple(["draem-bf16"] + [f"draem-bf16-seed{seed}" for seed in range(1, 5)]),
    "the default recipe in fp32 (on other CPUs, and before --precision auto)": (
        "default",
        "default-seed1",
        "default-seed2",
        "default-seed3",
        "default-seed4",
    ),
    "the zero-padded recipe before it": ("draem-zeros", "draem-zeros-seed1", "draem-zeros-8296c14"),
    "the difference trial": ("draem-difference", "draem-difference-seed1", "draem-difference-seed2"),
}


def run_one(texture: str, recipe: str, work: Path, seed: int) -> dict:
    n_validation = FOLDER_VALIDATION.get(recipe, 0)
    folder = work / (f"{texture}-validation{n_validation}" if n_validation else texture)
    if not folder.exists():
        write_texture_folder(texture, folder, seed=seed, n_validation=n_validation)
    out = work / f"{texture}-{recipe}"
    command = ["aeguard", "fit", "--data", str(folder), "--out", str(out), "--force", *RECIPES[recipe]]
    settings = RECIPE_SETTINGS.get(recipe, {})
    started = time.perf_counter()
    with StealMeter() as steal:
        result = subprocess.run(
            [sys.executable, *fit_process(settings, command[1:])], capture_output=True, text=True, check=False
        )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    report = json.loads((out / "report" / "report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    local = report.get("localization") or {}
    return {
        "texture": texture,
        "colour": TEXTURES[texture][1],
        "recipe": recipe,
        "command": " ".join(command) + "".join(f" (with aeguard.{k} = {v!r})" for k, v in settings.items()),
        "model": manifest["model"]["kind"],
        "image_auroc": report["metrics"]["auroc"],
        "pixel_auroc": local.get("pixel_auroc"),
        "aupro": local.get("aupro"),
        "per_defect": report.get("per_defect"),
        # the threshold on test/good: the share of normal test images it flags, against the rate it was set for
        "threshold_fpr": report["metrics"]["fpr_at_threshold"],
        "target_fpr": report["calibration"]["target_fpr"],
        "held_out": f"{manifest['data']['n_validation']} ({manifest['data'].get('validation', 'held out')})",
        "fit_seconds": seconds,
        "epochs_run": manifest["training"]["epochs_run"],
        "device": manifest["training"]["device"],
        "steal": steal.fraction,
        "commit": current_commit(),
    }


def summarise(rows: list[dict]) -> dict:
    out = {}
    for recipe in dict.fromkeys(row["recipe"] for row in rows):
        chosen = [row for row in rows if row["recipe"] == recipe]
        out[recipe] = {
            key: statistics.fmean(row[key] for row in chosen) if all(row[key] is not None for row in chosen) else None
            for key in ("image_auroc", "pixel_auroc", "aupro", "fit_seconds")
        }
        out[recipe]["textures"] = [row["texture"] for row in chosen]
    return out


def draws_table(rows: list[dict], fmt, recipe: str, names: tuple[str, ...]) -> list[str]:
    """Per texture, the mean of every draw of a recipe, and the mean of those means."""
    draws = [row for row in rows if row["recipe"] in names]
    textures = list(dict.fromkeys(row["texture"] for row in draws))
    if not textures:
        return []
    lines = ["", f"Every draw of {recipe} ({', '.join(names)}), mean per texture:", ""]
    lines += ["| texture | draws | image AUROC | pixel AUROC | AUPRO |", "| --- | --- | --- | --- | --- |"]
    means = []
    for texture in textures:
        chosen = [row for row in draws if row["texture"] == texture]
        mean = {key: statistics.fmean(row[key] for row in chosen) for key in ("image_auroc", "pixel_auroc", "aupro")}
        means.append(mean)
        cells = " | ".join(fmt(mean[key]) for key in mean)
        lines.append(f"| {texture} | {len(chosen)} ({', '.join(row['recipe'] for row in chosen)}) | {cells} |")
    overall = " | ".join(fmt(statistics.fmean(mean[key] for mean in means)) for key in means[0])
    lines.append(f"| **mean** | | {overall} |")
    return lines


def threshold_table(rows: list[dict], fmt) -> list[str]:
    """The rows that recorded where their threshold landed: the share of test/good it flags (rows from before
    this column did not record it)."""
    chosen = [row for row in rows if row.get("threshold_fpr") is not None]
    if not chosen:
        return []
    lines = ["", "The threshold on the normal test images (what `fit` sets from normal images alone):", ""]
    lines += ["| texture | recipe | set on | normal test images flagged | aimed for | image AUROC |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for row in chosen:
        lines.append(
            f"| {row['texture']} | {row['recipe']} | {row['held_out']} | {row['threshold_fpr']:.1%} | "
            f"{row['target_fpr']:.0%} | {fmt(row['image_auroc'])} |"
        )
    return lines


def markdown(results: dict) -> str:
    lines = [
        "# Own-images benchmark: textures from real photographs",
        "",
        "`python -m benchmarks.textures` (MVTec layout written by benchmarks/texture_defects.py; 400 training crops",
        "of 128 px, 60 normal + 80 defective test crops from a disjoint region of the photo; defects: scratch, hole,",
        "foreign material, stain — a hue turn and tint at equal brightness on the colour textures). Every row",
        "records the commit it measured (in the JSON); rows of earlier commits were measured in earlier sessions,",
        "on other 2-core machines, and one fit is one draw: the same seed can end elsewhere on another CPU.",
        "",
        "| texture | colour | recipe | image AUROC | pixel AUROC | AUPRO | fit time | epochs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(value):
        return "-" if value is None else f"{value:.4f}"

    for row in results["rows"]:
        lines.append(
            f"| {row['texture']} | {'yes' if row['colour'] else 'no'} | {row['recipe']} | "
            f"{fmt(row['image_auroc'])} | {fmt(row['pixel_auroc'])} | {fmt(row['aupro'])} | "
            f"{row['fit_seconds'] / 60:.1f} min | {row['epochs_run']} |"
        )
    lines += ["", "Recipes:", ""]
    lines += [f"- {name}: {RECIPE_NOTES.get(name, '')}" for name in results["summary"]]
    lines += ["", "Mean over textures:", "", "| recipe | image AUROC | pixel AUROC | AUPRO | fit time |"]
    lines.append("| --- | --- | --- | --- | --- |")
    every = max(len(row["textures"]) for row in results["summary"].values())
    for recipe, row in results["summary"].items():
        name = recipe if len(row["textures"]) == every else f"{recipe} ({', '.join(row['textures'])} only)"
        lines.append(
            f"| {name} | {fmt(row['image_auroc'])} | {fmt(row['pixel_auroc'])} | {fmt(row['aupro'])} | "
            f"{row['fit_seconds'] / 60:.1f} min |"
        )
    for recipe, names in DRAWS.items():
        lines += draws_table(results["rows"], fmt, recipe, names)
    lines += threshold_table(results["rows"], fmt)
    lines += ["", "Image AUROC per defect type:", "", "| texture | recipe | scratch | hole | foreign | stain |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for row in results["rows"]:
        per = row["per_defect"] or {}
        cells = " | ".join(fmt(per.get(kind, {}).get("auroc")) for kind in ("scratch", "hole", "foreign", "stain"))
        lines.append(f"| {row['texture']} | {row['recipe']} | {cells} |")
    info = results["machine"]
    lines += ["", f"Machine: {info['cpus']} CPUs, Python {info['python']}; fit time is wall time of the whole command."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--textures", default=",".join(DEFAULT_TEXTURES))
    parser.add_argument("--recipes", default=",".join(name for name in RECIPES if name not in GPU_RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="Where folders and bundles go [a temporary folder].")
    parser.add_argument("--fresh", action="store_true", help="Forget earlier results.")
    args = parser.parse_args()
    path = RESULTS_DIR / f"{NAME}.json"
    results = {"rows": []} if args.fresh or not path.exists() else json.loads(path.read_text())
    work = args.work or Path(tempfile.mkdtemp(prefix="aeguard-textures-"))
    done = {(row["texture"], row["recipe"]) for row in results["rows"]}
    for recipe in args.recipes.split(","):
        for texture in args.textures.split(","):
            if (texture, recipe) in done:
                continue
            print(f"{texture} / {recipe} ...", flush=True)
            row = run_one(texture, recipe, work, args.seed)
            print(json.dumps({k: v for k, v in row.items() if k != "per_defect"}), flush=True)
            results["rows"].append(row)
            results["summary"] = summarise(results["rows"])
            results["machine"] = machine()
            RESULTS_DIR.mkdir(exist_ok=True)
            path.write_text(json.dumps(results, indent=2) + "\n")
            (RESULTS_DIR / f"{NAME}.md").write_text(markdown(results))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
