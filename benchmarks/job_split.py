"""Two cores, two ways: one fit at a time with two torch threads, or two fits at once with one thread each.

Why `benchmarks.one_class --jobs 2` exists: the one-class models are small (28 x 28 images, batches of 64),
and torch's second intra-op thread keeps the second core only partly busy. This fits the same classes
both ways in one run, so the ratio is measured on one machine in one state:

    python -m benchmarks.job_split                       # MNIST classes 2 and 8, the best MNIST preset, 5 epochs
    python -m benchmarks.job_split --classes 0,1,2,3 --epochs 20

Writes benchmarks/results/job_split.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.one_class import BEST, run_tasks
from benchmarks.results_io import write_results


def fit_all(tasks: list[tuple], jobs: int, threads: int) -> tuple[list[dict], float]:
    """The runs in class order (run_tasks yields them as they finish) and the wall seconds they took."""
    started = time.perf_counter()
    runs = [run for _, _, run in run_tasks(tasks, jobs, threads)]
    return sorted(runs, key=lambda run: run["normal"]), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--preset", default=None, help="default: the data set's best preset")
    parser.add_argument("--classes", default="2,8")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    preset = args.preset or BEST[args.dataset]
    classes = [int(c) for c in args.classes.split(",")]
    cores = torch.get_num_threads()
    tasks = [(args.dataset, preset, args.seed, normal, args.epochs, "cpu") for normal in sorted(classes)]
    one_at_a_time, sequential = fit_all(tasks, jobs=1, threads=cores)  # in this process, `cores` torch threads
    side_by_side, parallel = fit_all(tasks, jobs=cores, threads=1)

    rows = [
        {
            "normal": a["normal"],
            "auroc_one_at_a_time": a["auroc"],
            "auroc_side_by_side": b["auroc"],
            "seconds_one_at_a_time": a["seconds"],
            "seconds_side_by_side": b["seconds"],
        }
        for a, b in zip(one_at_a_time, side_by_side)
    ]
    payload = {
        "dataset": args.dataset,
        "preset": preset,
        "epochs": args.epochs,
        "seed": args.seed,
        "cores": cores,
        "wall_seconds_one_at_a_time": round(sequential, 1),
        "wall_seconds_side_by_side": round(parallel, 1),
        "speedup": round(sequential / parallel, 2),
        "classes": rows,
    }
    lines = [
        "# One fit with two threads, or two fits with one thread each",
        "",
        f"{args.dataset}, preset `{preset}`, {args.epochs} epochs at most, seed {args.seed}, classes {classes}, "
        f"{cores} cores. Produced by `python -m benchmarks.job_split`.",
        "",
        f"- one at a time, {cores} torch threads: **{sequential:.0f} s**",
        f"- {cores} at once, 1 torch thread each: **{parallel:.0f} s**",
        f"- speed-up of side by side: **{sequential / parallel:.2f}x**",
        "",
        (
            "The same recipe and seed give the same AUROC both ways:"
            if all(r["auroc_one_at_a_time"] == r["auroc_side_by_side"] for r in rows)
            else "The recipe and the seed are the same; where the AUROC differs, a different thread count summed "
            "in a different order:"
        ),
        "",
        "| class | AUROC, one at a time | AUROC, side by side | s, one at a time | s, side by side |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['normal']} | {100 * r['auroc_one_at_a_time']:.2f} | {100 * r['auroc_side_by_side']:.2f} "
        f"| {r['seconds_one_at_a_time']:.0f} | {r['seconds_side_by_side']:.0f} |"
        for r in rows
    ]
    print(write_results("job_split", payload, "\n".join(lines) + "\n").read_text())


if __name__ == "__main__":
    main()
