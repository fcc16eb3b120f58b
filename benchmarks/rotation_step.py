"""The rotation classifier's training step with its blocks' ReLU before or after the max-pool.

Both orders compute the same numbers (tests/test_rotation.py checks values and gradients bit for bit);
pooling first leaves the ReLU a quarter of the values. Timed alternately in one run on MNIST-sized
batches (64 images, 256 rotated copies):

    python -m benchmarks.rotation_step

Writes benchmarks/results/rotation_step.{json,md}.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from aeguard.train.rotation import BATCH_IMAGES, RotationHead, rotation_labels, rotations
from benchmarks.results_io import write_results

ROUNDS = 9
STEPS = 10


def relu_first(head: RotationHead) -> RotationHead:
    for block in head.classifier[:3]:
        block[2], block[3] = block[3], block[2]
    return head


def step_ms(head: RotationHead, images: torch.Tensor) -> float:
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-3)
    labels = rotation_labels(len(images))
    started = time.perf_counter()
    for _ in range(STEPS):
        loss = nn.functional.cross_entropy(head.classifier(rotations(images)), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return (time.perf_counter() - started) / STEPS * 1000


def main() -> None:
    torch.manual_seed(0)
    images = torch.rand(BATCH_IMAGES, 1, 28, 28)
    heads = {"pool then ReLU (aeguard)": RotationHead(1).train(), "ReLU then pool": relu_first(RotationHead(1).train())}
    for head in heads.values():
        step_ms(head, images)  # warm-up: oneDNN picks its kernels on the first steps
    times: dict[str, list[float]] = {name: [] for name in heads}
    for _ in range(ROUNDS):  # alternating, so a slow moment of the machine hits both
        for name, head in heads.items():
            times[name].append(step_ms(head, images))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ours, theirs = medians["pool then ReLU (aeguard)"], medians["ReLU then pool"]
    payload = {"torch_threads": torch.get_num_threads(), "steps_per_round": STEPS, "ms_per_step": times}
    payload["speedup"] = round(theirs / ours, 3)
    lines = [
        "# Rotation classifier: training step, pool then ReLU against ReLU then pool",
        "",
        f"Batches of {BATCH_IMAGES} 28 x 28 images (x4 rotations), Adam, {torch.get_num_threads()} torch threads; "
        f"median over {ROUNDS} alternating rounds of {STEPS} steps. Produced by `python -m benchmarks.rotation_step`.",
        "",
        "| block order | ms per step (median) |",
        "|---|---|",
        *[f"| {name} | {value:.1f} |" for name, value in medians.items()],
        "",
        f"Pool then ReLU: **{theirs / ours:.2f}x** the steps per second of ReLU then pool, with the same numbers.",
    ]
    print(write_results("rotation_step", payload, "\n".join(lines) + "\n").read_text())


if __name__ == "__main__":
    main()
