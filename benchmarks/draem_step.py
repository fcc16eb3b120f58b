"""Draem's training step on the CPU: the SSIM loss by band matrices and the 1 x 1 head as a channel sum,
against the depthwise-convolution SSIM and the convolution head they replaced (the same numbers).

One 128 px colour model (the texture benchmark's), batches of 16, the steps of the two variants interleaved
so that both see the same machine; the median step time of each and their ratio, at 1 and 2 torch threads.

    python -m benchmarks.draem_step            # about a minute on 2 cores, run alone

Writes benchmarks/results/draem_step.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from unittest import mock

import torch

from aeguard.config import default_config
from aeguard.train import draem
from aeguard.train.error_maps import ErrorMap
from aeguard.train.models import build_model
from aeguard.train.objectives import DraemObjective
from benchmarks.results_io import StealMeter, current_commit, write_results

SHAPE = (3, 128, 128)
BATCH = 16


def convolution_head(conv, x):
    return conv(x)


def variant(replaced: bool):
    """(one training step, a closure) of a fresh model: replaced=True is the code before the change."""
    torch.manual_seed(0)
    model = build_model(default_config("draem", *SHAPE))
    objective = DraemObjective(model)
    if replaced:
        objective.ssim = ErrorMap({"function": "ssim", "sigma": 1.5}, SHAPE[0])  # the depthwise convolution
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, *SHAPE, generator=torch.Generator().manual_seed(1))

    def step() -> None:
        with mock.patch.object(draem, "pointwise", convolution_head) if replaced else contextlib.nullcontext():
            loss = objective.loss(images, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return step


def measure(threads: int, steps: int) -> dict:
    torch.set_num_threads(threads)
    runs = {"before": variant(replaced=True), "now": variant(replaced=False)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(steps):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"threads": threads, "steps": steps, "median_s": medians, "speedup": medians["before"] / medians["now"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with StealMeter() as steal:
        rows = [measure(threads, args.steps) for threads in (1, 2)]
    lines = [
        "# Draem's training step: band-matrix SSIM and channel-sum head",
        "",
        f"128 px colour, batches of {BATCH}; median of {args.steps} interleaved steps of each variant. "
        "before: the SSIM loss by depthwise convolution and the 1 x 1 head by convolution; now: by band "
        "matrices and a weighted channel sum (the same numbers). Produced by `python -m benchmarks.draem_step`.",
        "",
        "| torch threads | step before | step now | speed-up |",
        "|---|---|---|---|",
    ]
    for row in rows:
        before, now = row["median_s"]["before"], row["median_s"]["now"]
        lines.append(f"| {row['threads']} | {before * 1000:.0f} ms | {now * 1000:.0f} ms | {row['speedup']:.2f}x |")
    steal_note = "" if steal.fraction is None else f" CPU steal during the run: {steal.fraction:.1%}."
    lines += ["", f"Times are of this machine, for the ratio only.{steal_note}"]
    data = {"rows": rows, "commit": current_commit(), "steal": steal.fraction}
    print(write_results("draem_step", data, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
