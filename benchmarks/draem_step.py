"""Draem's training step on the CPU, two variants against each other.

- `--compare ssim` (the default): the SSIM loss by band matrices and the 1 x 1 head as a channel sum, against
  the depthwise-convolution SSIM and the convolution head they replaced (the same numbers), both with the
  zero padding of then;
- `--compare padding`: convolutions padded by repeating edge pixels (today's default) against zeros.

One 128 px colour model (the texture benchmark's), batches of 16, the steps of the two variants interleaved
so that both see the same machine; the median step time of each and their ratio, at 1 and 2 torch threads.

    python -m benchmarks.draem_step                      # about a minute on 2 cores, run alone
    python -m benchmarks.draem_step --compare padding

Writes benchmarks/results/draem_step.{json,md} (draem_step_padding.* for --compare padding).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch

from aeguard.config import default_config
from aeguard.train import draem
from aeguard.train.error_maps import ErrorMap
from aeguard.train.models import build_model
from aeguard.train.objectives import DraemObjective
from aeguard.train.precision import autocast
from benchmarks.results_io import StealMeter, current_commit, write_results

SHAPE = (3, 128, 128)
BATCH = 16


def convolution_head(conv, x):
    return conv(x)


def variant(
    replaced: bool = False,
    padding: str = "zeros",
    shape: tuple[int, int, int] = SHAPE,
    device: str = "cpu",
    precision: str = "fp32",
    memory: torch.memory_format = torch.contiguous_format,
):
    """One training step of a fresh model, as a closure: replaced=True is the code before the SSIM change;
    precision and memory are the arithmetic and layout of the step as aeguard's loop runs it
    (benchmarks/precision_step.py). The step waits for the device, so that it can be timed."""
    torch.manual_seed(0)
    where = torch.device(device)
    model = build_model({**default_config("draem", *shape), "conv_padding": padding})
    model.to(where, memory_format=memory)  # type: ignore[call-overload]
    objective = DraemObjective(model)
    if replaced:
        objective.ssim = ErrorMap({"function": "ssim", "sigma": 1.5}, shape[0])  # the depthwise convolution
    objective.to(where)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=where.type == "cuda")  # as the loop's
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, *shape, generator=torch.Generator().manual_seed(1)).to(where)
    images = images.contiguous(memory_format=memory)

    def step() -> None:
        with mock.patch.object(draem, "pointwise", convolution_head) if replaced else contextlib.nullcontext():
            with autocast(precision, where):
                loss = objective.loss(images, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if where.type == "cuda":
            torch.cuda.synchronize()

    return step


# comparison -> (the variant before, the variant now), each as variant()'s arguments
COMPARISONS = {
    "ssim": ({"replaced": True}, {"replaced": False}),
    "padding": ({"padding": "zeros"}, {"padding": "replicate"}),
}


def interleaved_steps(runs: dict[str, Callable[[], None]], steps: int, warm_ups: int = 1) -> dict[str, list[float]]:
    """Each run's step times, the runs taking turns step by step so that all see the same machine."""
    for run in runs.values():
        for _ in range(warm_ups):  # oneDNN's and cuDNN's kernel choice
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(steps):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def measure(threads: int, steps: int, compare: str) -> dict:
    torch.set_num_threads(threads)
    before, now = COMPARISONS[compare]
    times = interleaved_steps({"before": variant(**before), "now": variant(**now)}, steps)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"threads": threads, "steps": steps, "median_s": medians, "speedup": medians["before"] / medians["now"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compare", choices=COMPARISONS, default="ssim")
    args = parser.parse_args()
    with StealMeter() as steal:
        rows = [measure(threads, args.steps, args.compare) for threads in (1, 2)]
    what = {
        "ssim": "before: the SSIM loss by depthwise convolution and the 1 x 1 head by convolution; now: by band "
        "matrices and a weighted channel sum (the same numbers), both zero-padded. Produced by "
        "`python -m benchmarks.draem_step`.",
        "padding": "before: every convolution padded with zeros; now: padded by repeating the edge pixels "
        "(the default since). Produced by `python -m benchmarks.draem_step --compare padding`.",
    }[args.compare]
    title = {"ssim": "band-matrix SSIM and channel-sum head", "padding": "replicate against zero padding"}
    lines = [
        f"# Draem's training step: {title[args.compare]}",
        "",
        f"128 px colour, batches of {BATCH}; median of {args.steps} interleaved steps of each variant. {what}",
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
    name = "draem_step" if args.compare == "ssim" else f"draem_step_{args.compare}"
    print(write_results(name, data, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
