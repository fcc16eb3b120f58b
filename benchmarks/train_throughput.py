"""Training throughput of aeguard's loop against a bare PyTorch loop of the same model and batch size.

Both run in this process, interleaved, on the real MNIST digit-0 training images; the figure is the
ratio of the best run's images/s of each (every run is kept in the JSON). aeguard's time includes
everything its loop does per epoch (validation loss, best-weights copy), the bare loop does only
forward, backward and step.

    python -m benchmarks.train_throughput [--epochs 3 --repeats 3 --device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from aeguard.data.catalog import load_split
from aeguard.data.splits import to_model_input, train_validation_split
from aeguard.train.loop import TrainConfig, resolve_device, train
from aeguard.train.models import build_model, default_config
from benchmarks.results_io import StealMeter, write_results


def bare_loop(
    model,
    images: np.ndarray,
    epochs: int,
    batch_size: int,
    device: torch.device,
    fused: bool | None = None,
    autocast: bool = False,
) -> None:
    """Forward, backward, step and nothing else. The optimizer is fused on CUDA, as aeguard's loop, unless
    `fused` says otherwise; `autocast` runs the forward pass in bf16 (benchmarks/cuda_step_variants.py)."""
    x = torch.from_numpy(images).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda" if fused is None else fused)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), device=device)
        for start in range(0, len(x), batch_size):
            batch = x[order[start : start + batch_size]]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = F.mse_loss(model(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    config: dict, train_x, val_x, epochs: int, batch_size: int, repeats: int, device: torch.device, bare=bare_loop
) -> dict:
    """Images/s of aeguard's loop and of `bare(model, images, epochs, batch_size, device)` on the model `config`
    describes, interleaved, best run of each (benchmarks/photo_speed.py passes its own bare loop)."""
    rates: dict[str, list[float]] = {"bare": [], "aeguard": []}
    for repeat in range(repeats):
        for name in ("bare", "aeguard"):  # interleaved so drift in machine load hits both alike
            torch.manual_seed(repeat)
            model = build_model(config).to(device)
            started = time.perf_counter()
            if name == "bare":
                bare(model, train_x, epochs, batch_size, device)
            else:
                # patience above the epoch count: both loops run exactly `epochs` epochs
                train(
                    model,
                    train_x,
                    val_x,
                    TrainConfig(
                        epochs=epochs, batch_size=batch_size, patience=epochs + 1, device=str(device), seed=repeat
                    ),
                    training_terms=config["training"],
                )
            rates[name].append(epochs * len(train_x) / (time.perf_counter() - started))
    # best run of each: on a shared machine, slower runs measure the neighbours, not the code
    fastest_bare, ours = max(rates["bare"]), max(rates["aeguard"])
    return {
        "model": config["kind"],
        "bare_images_per_s": fastest_bare,
        "aeguard_images_per_s": ours,
        "ratio": ours / fastest_bare,
        "all_rates": rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="dense,conv")
    args = parser.parse_args()
    device = resolve_device(args.device)
    split = load_split("mnist", "train")
    fit_images, val_images = train_validation_split(split.images[split.labels == 0], 0.1, seed=0)
    train_x, val_x = to_model_input(fit_images), to_model_input(val_images)
    results = []
    for kind in args.models.split(","):
        with StealMeter() as steal:
            config = default_config(kind, 1, 28, 28)
            result = measure(config, train_x, val_x, args.epochs, args.batch_size, args.repeats, device)
        result["cpu_steal"] = steal.fraction
        results.append(result)
        print(
            f"{kind}: bare {result['bare_images_per_s']:,.0f} img/s, aeguard "
            f"{result['aeguard_images_per_s']:,.0f} img/s, ratio {result['ratio']:.3f}"
        )
    settings = {
        "epochs": args.epochs,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "device": str(device),
        "torch": torch.__version__,
        "train_images": len(train_x),
        "torch_threads": torch.get_num_threads(),
    }
    lines = [
        "# Training throughput: aeguard loop vs bare PyTorch loop",
        "",
        f"MNIST digit 0, {len(train_x)} training images, batch {args.batch_size}, {args.epochs} epochs, "
        f"best of {args.repeats} interleaved runs (all runs in the JSON), device {device}, "
        f"torch {torch.__version__}.",
        "",
        "| model | bare loop (img/s) | aeguard loop (img/s) | ratio (target >= 0.9) | CPU steal |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['model']} | {r['bare_images_per_s']:,.0f} | {r['aeguard_images_per_s']:,.0f} | "
        f"{r['ratio']:.3f} | {'n/a' if r['cpu_steal'] is None else format(r['cpu_steal'], '.0%')} |"
        for r in results
    ]
    # CUDA results are kept beside the CPU ones rather than over them (CI and this repo's machine have no GPU).
    name, flag = ("train_throughput", "") if device.type == "cpu" else ("train_throughput_cuda", " --device cuda")
    lines += [
        "",
        f"Regenerate: `AEGUARD_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.train_throughput{flag}`",
    ]
    path = write_results(name, {"settings": settings, "results": results}, "\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
