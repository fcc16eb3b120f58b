"""The one-class protocol on MNIST and Fashion-MNIST: train on one class, the nine others are anomalies.

For every (model, data set, normal class, seed) it runs aeguard's own `fit` pipeline (training split
of the normal class only, 10% of it held out for early stopping and calibration), so each AUROC is
the one `aeguard fit` reports: the full test set scored by the exported ONNX graph in onnxruntime.
Mean over the ten classes per seed, then mean +- std over seeds.

Results go to benchmarks/results/one_class_<dataset>.json / .md after every run, and a run already
in the JSON is not repeated, so an interrupted benchmark continues where it stopped.

    python -m benchmarks.one_class --models conv-erase-blur-top-x3 --datasets mnist --seeds 0   # the best MNIST model
    python -m benchmarks.one_class --models conv,conv-erase-blur-x3 --seeds 0,1,2
    python -m benchmarks.one_class --datasets mnist --classes 2 --models vae --seeds 0 --fresh
    python -m benchmarks.one_class --table --seeds 3 --jobs 2   # the best-model table, timed (issue 21)

--jobs N fits N classes at once, each process with cpus / N torch threads. The autoencoders are too small
for two threads to keep two cores busy: two MNIST classes of the best MNIST preset finished 1.11x sooner side
by side (job_split.md), and in the first timed table MNIST's ten took 39 minutes so against 43.6-45.4 one at a
time; the Fashion-MNIST preset, mostly the rotation classifier's larger convolutions, gained nothing. A run's
`seconds` is then its wall time beside the others: such runs count in the AUROCs, not in s/class; the table's
wall time is recorded on its own (one_class_table.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_curve

from aeguard import Detector
from aeguard.data.catalog import get_spec, load_split
from aeguard.report.metrics import evaluate_scores
from benchmarks.results_io import RESULTS_DIR, StealMeter, current_commit, machine, write_results

# Each preset is the `aeguard fit` command line it stands for; the README quotes them.
# Rows measured before LeakyReLU became the default activation name --activation relu: they were run that way.
PRESETS: dict[str, dict] = {
    "dense": {"model": "dense"},
    "conv": {"model": "conv"},
    "dense-relu": {"model": "dense", "activation": "relu"},
    "conv-relu": {"model": "conv", "activation": "relu"},
    "denoising": {"model": "denoising", "activation": "relu"},
    "sparse": {"model": "sparse", "activation": "relu"},
    "k-sparse": {"model": "k-sparse", "activation": "relu"},
    "contractive": {"model": "contractive", "activation": "relu"},
    "vae": {"model": "vae", "activation": "relu"},
    "conv-vae": {"model": "conv-vae", "activation": "relu"},
    "conv-blur": {"model": "conv", "activation": "relu", "score": "blur"},
    # restore an erased square, score the blurred residual
    "conv-erase-blur": {"model": "conv", "activation": "relu", "noise": "erase:0.25", "score": "blur"},
    # erase-and-blur with the default activation, three seeded models with their error maps averaged in
    # the graph (3x the training time)
    "conv-erase-blur-x3": {"model": "conv", "noise": "erase:0.25", "score": "blur", "ensemble": 3},
    # ... scored by the mean of the largest tenth of the averaged error map: the best measured on MNIST
    "conv-erase-blur-top-x3": {
        "model": "conv",
        "noise": "erase:0.25",
        "score": "blur",
        "score_top": 0.1,
        "ensemble": 3,
    },
    "conv-erase-blur-x3-relu": {
        "model": "conv",
        "activation": "relu",
        "noise": "erase:0.25",
        "score": "blur",
        "ensemble": 3,
    },
    # the score multiplied by the latent code's mean distance to its 5 nearest training codes
    "conv-erase-blur-knn": {"model": "conv", "activation": "relu", "noise": "erase:0.25", "score": "blur", "knn": 5},
    "conv-erase-blur-knn-x3": {"model": "conv", "noise": "erase:0.25", "score": "blur", "knn": 5, "ensemble": 3},
    "conv-erase-blur-knn-x3-relu": {
        "model": "conv",
        "activation": "relu",
        "noise": "erase:0.25",
        "score": "blur",
        "knn": 5,
        "ensemble": 3,
    },
    # issue 21: the z-scored sum with a rotation-prediction classifier's score (--rotation, 3 epochs)
    "conv-erase-blur-knn-rot": {
        "model": "conv",
        "activation": "relu",
        "noise": "erase:0.25",
        "score": "blur",
        "knn": 5,
        "rotation": True,
    },
    # ... the same rotation head beside the best MNIST reconstruction model
    "conv-erase-blur-top-x3-rot": {
        "model": "conv",
        "noise": "erase:0.25",
        "score": "blur",
        "score_top": 0.1,
        "ensemble": 3,
        "rotation": True,
    },
}
DEFAULT_EPOCHS = 20
# The best-model table the issues time: the best measured preset of each data set (--table).
BEST = {"mnist": "conv-erase-blur-top-x3-rot", "fashion-mnist": "conv-erase-blur-knn-rot"}
TABLE_MINUTES_LIMIT = 60  # issue 21: the 20-class, one-seed table within 60 minutes on 2 CPU cores
FPR_GRID = np.linspace(0.0, 1.0, 101)

PUBLISHED = [  # mean AUROC %, from-scratch methods, as the benchmark issues cite them (the last three: issue 21)
    ("Deep SVDD (Ruff et al. 2018)", 94.8, None),
    ("plain 4-layer conv AE (Lo et al., TPAMI 2022)", 96.4, 89.2),
    ("MemAE (Gong et al. 2019)", 97.5, None),
    ("GEOM (Golan & El-Yaniv 2018)", 98.0, 93.5),
    ("ARNet (Ye et al. 2022)", 98.3, 93.9),
    ("ESAD without labelled anomalies (Huang et al. 2020)", 98.5, 94.0),
    ("GOAD (Bergman & Hoshen, ICLR 2020)", None, 94.1),
    ("contrastive + distribution augmentation (Sohn et al., ICLR 2021)", None, 94.6),
]


def command_line(preset: dict, epochs: int) -> str:
    flags = " ".join(
        f"--{key.replace('_', '-')}" + ("" if value is True else f" {value}") for key, value in preset.items()
    )
    return f"aeguard fit {flags} --epochs {epochs}"


def run_one(dataset: str, normal: int, preset: dict, seed: int, epochs: int, device: str) -> dict:
    """One class of one seed through the public API: the same split, training and graph as `aeguard fit`."""
    train = load_split(dataset, "train", None, allow_download=False)
    test = load_split(dataset, "test", None, allow_download=False)
    detector = Detector(**preset, epochs=epochs, seed=seed, device=device)
    started = time.perf_counter()
    with StealMeter() as steal:
        detector.fit(train.images[train.labels == normal])
        scores = detector.decision_function(test.images)  # through onnxruntime, as a bundle scores
    seconds = time.perf_counter() - started
    truth = test.labels != normal
    fpr, tpr, _ = roc_curve(truth, scores)
    return {
        "normal": normal,
        "seed": seed,
        "auroc": evaluate_scores(scores, truth, detector.threshold_)["auroc"],  # what detector.evaluate returns
        "seconds": round(seconds, 1),
        "epochs_run": len(detector.history_[0]),
        "cpu_steal": steal.fraction,
        "device": detector.training_["device"],
        "torch_threads": torch.get_num_threads(),
        "roc_tpr": np.interp(FPR_GRID, fpr, tpr).round(4).tolist(),
    }


def summarise(runs: list[dict], classes: list[int]) -> dict:
    """Per-class mean over seeds; the mean over classes for each seed that has every class; mean +- std."""
    by_seed: dict[int, dict[int, dict]] = {}
    for run in runs:
        by_seed.setdefault(run["seed"], {})[run["normal"]] = run
    complete = {seed: values for seed, values in by_seed.items() if all(c in values for c in classes)}
    per_class = {
        c: statistics.fmean(v[c]["auroc"] for v in by_seed.values() if c in v)
        for c in classes
        if any(c in v for v in by_seed.values())
    }
    # A run fitted beside another (--jobs 2) took longer in wall time than it would alone: its time counts
    # in the timed table (one_class_table.md), not in s/class and min/seed.
    alone = [r for r in runs if r.get("jobs", 1) == 1]
    summary = {
        "per_class": per_class,
        "seeds": sorted(complete),
        "mean": None,
        "std": None,
        "seconds_per_class": statistics.fmean(r["seconds"] for r in alone) if alone else None,
    }
    if complete:
        means = [statistics.fmean(values[c]["auroc"] for c in classes) for values in complete.values()]
        timed = [v for v in complete.values() if all(v[c].get("jobs", 1) == 1 for c in classes)]
        summary.update(
            seed_means=means,
            mean=statistics.fmean(means),
            std=statistics.stdev(means) if len(means) > 1 else 0.0,
            minutes_per_seed=statistics.fmean(sum(v[c]["seconds"] for c in classes) / 60 for v in timed)
            if timed
            else None,
        )
    return summary


def render_markdown(dataset: str, payload: dict) -> str:
    spec = get_spec(dataset)
    classes = list(range(len(spec.class_names)))
    lines = [
        f"# One-class AUROC (%) on {spec.name}",
        "",
        "Train on one class (training split), score the full test set, the other nine classes are "
        "anomalies. Mean over the ten classes, then mean +- std over seeds. Produced by "
        "`python -m benchmarks.one_class`; every run is in the JSON beside this file.",
        "",
        "| model | " + " | ".join(spec.class_names[c] for c in classes) + " | mean | seeds | s/class | min/seed |",
        "|---" * (len(classes) + 5) + "|",
    ]
    for name, entry in payload["models"].items():
        summary = summarise(entry["runs"], classes)
        cells = [f"{100 * summary['per_class'][c]:.1f}" if c in summary["per_class"] else "" for c in classes]
        mean = (
            f"**{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f}**"
            if summary["mean"] is not None
            else "incomplete"
        )
        seconds = f"{summary['seconds_per_class']:.0f}" if summary["seconds_per_class"] else ""
        minutes = f"{summary['minutes_per_seed']:.1f}" if summary.get("minutes_per_seed") else ""
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {mean} | {len(summary['seeds'])} | {seconds} | {minutes} |"
        )
    column = 1 if dataset == "mnist" else 2
    lines += ["", "Published from-scratch means for comparison:", "", "| method | mean AUROC |", "|---|---|"]
    lines += [f"| {row[0]} | {row[column]} |" for row in PUBLISHED if row[column] is not None]
    lines += ["", "Command line of each model:", ""]
    lines += [f"- {name}: `{entry['command']}`" for name, entry in payload["models"].items()]
    host = payload["machine"]
    lines += [
        "",
        f"s/class: wall seconds of one `fit` (training, export, parity check, calibration, report), "
        "mean over the runs fitted one at a time; min/seed: the ten classes of one seed fitted one at a time "
        "(runs fitted side by side with `--jobs` are timed as a whole in one_class_table.md). "
        f"Machine: {host['cpus']} CPUs "
        f"({host['machine']}, Python {host['python']}), torch threads {payload['torch_threads']}, "
        f"{payload['epochs']} epochs at most (early stopping, patience 5). CPU steal (the share of CPU the "
        "hypervisor took) is recorded per run in the JSON.",
        "",
        f"![ROC curves per normal class](one_class_{dataset}_roc.png)",
        "",
    ]
    return "\n".join(lines)


def plot_roc_curves(dataset: str, payload: dict, path: Path) -> None:
    """One panel per model: the ROC curve of each normal class (first seed), its AUROC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = get_spec(dataset).class_names
    models = list(payload["models"].items())
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.4), squeeze=False)
    for ax, (name, entry) in zip(axes[0], models):
        runs = entry["runs"]
        first_seed = min((r["seed"] for r in runs), default=0)
        for run in sorted((r for r in runs if r["seed"] == first_seed), key=lambda r: r["normal"]):
            ax.plot(FPR_GRID, run["roc_tpr"], linewidth=1, label=f"{names[run['normal']]} ({100 * run['auroc']:.1f})")
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
        ax.set(title=f"{name} (seed {first_seed})", xlabel="false-positive rate", ylabel="true-positive rate")
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save(dataset: str, payload: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / f"one_class_{dataset}.json"
    temporary = json_path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(temporary, json_path)  # a kill mid-write never loses the runs already done
    (RESULTS_DIR / f"one_class_{dataset}.md").write_text(render_markdown(dataset, payload))
    plot_roc_curves(dataset, payload, RESULTS_DIR / f"one_class_{dataset}_roc.png")


def load(dataset: str, fresh: bool) -> dict:
    path = RESULTS_DIR / f"one_class_{dataset}.json"
    if path.is_file() and not fresh:
        return json.loads(path.read_text())
    return {"benchmark": f"one_class_{dataset}", "dataset": dataset, "models": {}}


def parse_list(text: str, kind=str) -> list:
    return [kind(part) for part in text.split(",") if part]


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_task(task: tuple) -> tuple:
    dataset, name, seed, normal, epochs, device = task
    return dataset, name, run_one(dataset, normal, PRESETS[name], seed, epochs, device)


def run_tasks(tasks: list[tuple], jobs: int, threads: int):
    """Yields (dataset, preset name, run) as each finishes: in this process, or in `jobs` worker processes."""
    if jobs == 1:
        for task in tasks:
            yield _run_task(task)
        return
    # spawn, not fork: a forked child would inherit this process's torch thread pool
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_limit_threads, initargs=(threads,)) as pool:
        for future in as_completed([pool.submit(_run_task, task) for task in tasks]):
            yield future.result()


def record_table(seeds: list[int], jobs: int, threads: int, wall_seconds: float, runs: int) -> None:
    """Appends this timed best-model table to one_class_table.{json,md}."""
    path = RESULTS_DIR / "one_class_table.json"
    timings = json.loads(path.read_text())["timings"] if path.is_file() else []
    timings.append(
        {
            "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "models": BEST,
            "seeds": seeds,
            "classes_fitted": runs,
            "jobs": jobs,
            "torch_threads_per_job": threads,
            "wall_minutes": round(wall_seconds / 60, 1),
            "commit": current_commit(),
        }
    )
    write_table(timings)


def write_table(timings: list[dict]) -> None:
    models = ", ".join(f"{dataset} `{name}`" for dataset, name in BEST.items())
    lines = [
        "# The best-model table, timed",
        "",
        f"Every class of both data sets, one seed, with the best preset of each ({models}); the issue's limit is "
        f"{TABLE_MINUTES_LIMIT} minutes on 2 CPU cores. Produced by `python -m benchmarks.one_class --table "
        "--seeds S --jobs J`; the AUROCs are in one_class_<dataset>.md beside the other seeds.",
        "",
        "| run at | code | seeds | classes fitted | jobs x torch threads | wall minutes | within the limit |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in timings:
        within = "yes" if t["wall_minutes"] <= TABLE_MINUTES_LIMIT * len(t["seeds"]) else "no"
        lines.append(
            f"| {t['run_at']} | {t.get('commit') or '-'} | {t['seeds']} | {t['classes_fitted']} "
            f"| {t['jobs']} x {t['torch_threads_per_job']} | {t['wall_minutes']} | {within} |"
        )
    write_results("one_class_table", {"timings": timings}, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="mnist,fashion-mnist")
    parser.add_argument("--models", default="conv-erase-blur", help=f"comma-separated presets: {', '.join(PRESETS)}")
    parser.add_argument("--table", action="store_true", help=f"Each data set's best preset ({BEST}), timed.")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="Classes fitted at once, in separate processes.")
    parser.add_argument("--fresh", action="store_true", help="Forget earlier results instead of continuing them.")
    args = parser.parse_args()
    models, seeds, classes = parse_list(args.models), parse_list(args.seeds, int), parse_list(args.classes, int)
    datasets = parse_list(args.datasets)
    unknown = [m for m in models if m not in PRESETS]
    if unknown:
        parser.error(f"unknown model preset(s) {unknown}; choose from {', '.join(PRESETS)}")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    every_class = (args.classes, args.datasets) == (parser.get_default("classes"), parser.get_default("datasets"))
    if args.table and (args.fresh or not every_class):
        parser.error(
            "--table fits every class of both data sets and keeps earlier runs: drop --classes, --datasets and --fresh"
        )
    wanted = {dataset: [BEST[dataset]] if args.table else models for dataset in datasets}
    threads = max(1, torch.get_num_threads() // args.jobs)
    payloads, tasks = {}, []
    for dataset, names in wanted.items():
        payload = payloads[dataset] = load(dataset, args.fresh)
        payload.update(machine=machine(), torch_threads=torch.get_num_threads(), epochs=args.epochs)
        for name in names:
            entry = payload["models"].setdefault(name, {"runs": []})
            entry["command"] = command_line(PRESETS[name], args.epochs)
            if entry.get("epochs", args.epochs) != args.epochs:
                raise SystemExit(
                    f"{dataset}/{name} was measured with --epochs {entry['epochs']}; pass the same or --fresh"
                )
            entry["epochs"] = args.epochs
            done = {(r["seed"], r["normal"]) for r in entry["runs"]}
            tasks += [
                (dataset, name, seed, normal, args.epochs, args.device)
                for seed in seeds
                for normal in classes
                if (seed, normal) not in done
            ]
    if args.table and len(tasks) != len(seeds) * sum(len(classes) for _ in datasets):
        raise SystemExit("--table times a whole table: some of these seeds are already in the JSON; pick new seeds")
    started = time.perf_counter()
    for dataset, name, run in run_tasks(tasks, args.jobs, threads):
        run["jobs"] = args.jobs
        entry = payloads[dataset]["models"][name]
        entry["runs"].append(run)
        entry["summary"] = summarise(entry["runs"], list(range(10)))
        save(dataset, payloads[dataset])
        print(
            f"{dataset} {name} class {run['normal']} seed {run['seed']}: AUROC {100 * run['auroc']:.2f} "
            f"({run['seconds']:.0f} s, steal {run['cpu_steal'] or 0:.0%})",
            flush=True,
        )
    wall = time.perf_counter() - started
    if args.table and tasks:
        record_table(seeds, args.jobs, threads, wall, len(tasks))
        print(f"best-model table: {len(tasks)} classes in {wall / 60:.1f} minutes", flush=True)
    for dataset, names in wanted.items():
        for name in names:
            entry = payloads[dataset]["models"][name]
            summary = entry["summary"] = summarise(entry["runs"], list(range(10)))
            save(dataset, payloads[dataset])
            if summary["mean"] is not None:
                print(
                    f"{dataset} {name}: mean AUROC {100 * summary['mean']:.2f} ± {100 * summary['std']:.2f} "
                    f"over seeds {summary['seeds']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
