"""Why aeguard trains in fp32 with the fused Adam on CUDA: images/s of one training loop in four variants.

The models are small (28x28 images, batch 128), so a CUDA step is bound by kernel launches rather than
arithmetic. Variants, interleaved in one process on random images the size of one MNIST class:
fp32 or bf16 autocast, times the default (foreach) Adam or the fused one. Needs a CUDA device.

    python -m benchmarks.cuda_step_variants [--repeats 3 --epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from aeguard.train.models import build_model, default_config
from benchmarks.results_io import write_results
from benchmarks.train_throughput import bare_loop

VARIANTS = {
    "fp32, Adam": (False, False),
    "fp32, fused Adam": (False, True),
    "bf16 autocast, Adam": (True, False),
    "bf16 autocast, fused Adam": (True, True),
}


def images_per_second(kind: str, autocast: bool, fused: bool, images: np.ndarray, epochs: int) -> float:
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = build_model(default_config(kind, 1, 28, 28)).to(device)
    started = time.perf_counter()
    bare_loop(model, images, epochs, 128, device, fused=fused, autocast=autocast)  # ends with a synchronize
    return epochs * len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_step_variants needs a CUDA device")
    images = np.random.default_rng(0).random((5400, 1, 28, 28), dtype=np.float32)
    images_per_second("conv", False, False, images, 1)  # warm-up: CUDA context, cuDNN autotuning
    results = {}
    for kind in ("dense", "conv"):
        runs = {name: [] for name in VARIANTS}
        for _ in range(args.repeats):
            for name, (autocast, fused) in VARIANTS.items():
                runs[name].append(images_per_second(kind, autocast, fused, images, args.epochs))
        results[kind] = {name: {"runs": rates, "median": statistics.median(rates)} for name, rates in runs.items()}
    base = "fp32, Adam"
    lines = [
        "# Training step variants on CUDA",
        "",
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}; batch 128, 5,400 images, {args.epochs} epochs, "
        f"median of {args.repeats} interleaved runs. Ratio: against fp32 with the default Adam, same run.",
        "",
        "| model | variant | images/s | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for kind, variants in results.items():
        for name, entry in variants.items():
            lines.append(
                f"| {kind} | {name} | {entry['median']:,.0f} | {entry['median'] / variants[base]['median']:.2f} |"
            )
    lines += ["", "Regenerate (on a CUDA machine): `python -m benchmarks.cuda_step_variants`"]
    print(
        write_results(
            "cuda_step_variants",
            {
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "epochs": args.epochs,
                "results": results,
            },
            "\n".join(lines) + "\n",
        )
    )


if __name__ == "__main__":
    main()
