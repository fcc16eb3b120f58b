"""Draem's training step in fp32 or bf16 autocast, contiguous or channels-last: what `--precision auto` picks.

The texture model (draem, colour, batches of 16) at 128 and 256 px; four variants of one step, as aeguard's
loop runs it (benchmarks/draem_step.variant: the networks under autocast, the losses in fp32, Adam fused on
CUDA), their steps interleaved so that all see the same machine; the median step of each and its ratio to fp32
contiguous, the same run's baseline. On the CPU with 2 torch threads (this machine's cores); `--device cuda`
times the same on a GPU.

    python -m benchmarks.precision_step                 # about 2 minutes on 2 cores, run alone
    python -m benchmarks.precision_step --device cuda   # on a GPU machine

Writes benchmarks/results/precision_step.{json,md} (precision_step_cuda.* for --device cuda).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from aeguard.train.precision import native_cpu_bf16
from benchmarks.draem_step import BATCH, interleaved_steps, variant
from benchmarks.results_io import StealMeter, current_commit, write_results

VARIANTS = {
    "fp32, contiguous": ("fp32", torch.contiguous_format),
    "fp32, channels-last": ("fp32", torch.channels_last),
    "bf16 autocast, contiguous": ("bf16", torch.contiguous_format),
    "bf16 autocast, channels-last": ("bf16", torch.channels_last),
}
BASELINE = "fp32, contiguous"


def measure(size: int, device: str, steps: int) -> dict:
    runs = {
        name: variant(padding="replicate", shape=(3, size, size), device=device, precision=arithmetic, memory=memory)
        for name, (arithmetic, memory) in VARIANTS.items()
    }
    times = interleaved_steps(runs, steps, warm_ups=2)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "size": size,
        "steps": steps,
        "median_s": medians,
        "speedup": {name: medians[BASELINE] / median for name, median in medians.items()},
        "times_s": times,
    }


def where(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    native = "native bf16 (AMX or AVX512-BF16)" if native_cpu_bf16() else "no native bf16"
    return f"CPU with {native}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps of each variant [10 on CPU, 50 on CUDA].")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("precision_step --device cuda needs a CUDA device")
    if args.device == "cpu":
        torch.set_num_threads(2)
    steps = args.steps or (10 if args.device == "cpu" else 50)
    with StealMeter() as steal:
        rows = [measure(int(size), args.device, steps) for size in args.sizes.split(",")]
    lines = [
        "# Draem's training step: precision and memory layout",
        "",
        f"{where(args.device)}; colour images, batches of {BATCH}, median of {steps} interleaved steps of each "
        f"variant, ratio to {BASELINE} in the same run (higher is faster). Produced by "
        f"`python -m benchmarks.precision_step{' --device cuda' if args.device == 'cuda' else ''}`.",
        "",
        "| size | " + " | ".join(VARIANTS) + " |",
        "|---|" + "---|" * len(VARIANTS),
    ]
    for row in rows:
        cells = [f"{row['median_s'][name] * 1000:.0f} ms ({row['speedup'][name]:.2f}x)" for name in VARIANTS]
        lines.append(f"| {row['size']} px | " + " | ".join(cells) + " |")
    steal_note = "" if steal.fraction is None else f" CPU steal during the run: {steal.fraction:.1%}."
    lines += ["", f"Times are of this machine, for the ratios only.{steal_note}"]
    data = {"device": where(args.device), "rows": rows, "commit": current_commit(), "steal": steal.fraction}
    name = "precision_step" if args.device == "cpu" else "precision_step_cuda"
    print(write_results(name, data, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
