"""The rotation classifier's training step: block order and memory layout.

Pool then ReLU computes the same numbers as ReLU then pool (tests/test_rotation.py checks values and
gradients bit for bit) and leaves the ReLU a quarter of the values. Channels-last (how aeguard trains the head
on the CPU) computes the same function with oneDNN's faster kernels, up to float rounding. Timed alternately in
one run on MNIST-sized batches (64 images, 256 rotated copies), at 1 torch thread (each of the two jobs of the
timed one-class table) and 2:

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
THREADS = (1, 2)
OURS = "pool then ReLU, channels-last (aeguard on the CPU)"
STANDARD = "pool then ReLU, standard layout"
RELU_FIRST = "ReLU then pool, standard layout"


def relu_first(head: RotationHead) -> RotationHead:
    for block in head.classifier[:3]:
        block[2], block[3] = block[3], block[2]
    return head


def step_ms(head: RotationHead, images: torch.Tensor, memory: torch.memory_format) -> float:
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-3)
    labels = rotation_labels(len(images))
    started = time.perf_counter()
    for _ in range(STEPS):
        loss = nn.functional.cross_entropy(head.classifier(rotations(images).contiguous(memory_format=memory)), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return (time.perf_counter() - started) / STEPS * 1000


def main() -> None:
    torch.manual_seed(0)
    images = torch.rand(BATCH_IMAGES, 1, 28, 28)
    variants = {
        OURS: (RotationHead(1).train().to(memory_format=torch.channels_last), torch.channels_last),
        STANDARD: (RotationHead(1).train(), torch.contiguous_format),
        RELU_FIRST: (relu_first(RotationHead(1).train()), torch.contiguous_format),
    }
    payload: dict = {"steps_per_round": STEPS, "by_threads": {}}
    lines = [
        "# Rotation classifier: training step, block order and memory layout",
        "",
        f"Batches of {BATCH_IMAGES} 28 x 28 images (x4 rotations), Adam; median over {ROUNDS} alternating rounds of "
        f"{STEPS} steps. Produced by `python -m benchmarks.rotation_step`.",
        "",
        "| torch threads | variant | ms per step (median) | steps/s against ReLU then pool's |",
        "|---|---|---|---|",
    ]
    for threads in THREADS:
        torch.set_num_threads(threads)
        for head, memory in variants.values():
            step_ms(head, images, memory)  # warm-up: oneDNN picks its kernels on the first steps
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(ROUNDS):  # alternating, so a slow moment of the machine hits all alike
            for name, (head, memory) in variants.items():
                times[name].append(step_ms(head, images, memory))
        medians = {name: statistics.median(values) for name, values in times.items()}
        baseline = medians[RELU_FIRST]
        payload["by_threads"][str(threads)] = {
            "ms_per_step": times,
            "speedup_over_relu_first": {name: round(baseline / value, 3) for name, value in medians.items()},
        }
        lines += [
            f"| {threads} | {name} | {value:.1f} | {baseline / value:.2f}x |"
            for name, value in sorted(medians.items(), key=lambda item: -item[1])
        ]
    lines += [
        "",
        "Pool first gives the same numbers; channels-last the same function up to float rounding "
        "(tests/test_rotation.py checks both).",
    ]
    print(write_results("rotation_step", payload, "\n".join(lines) + "\n").read_text())


if __name__ == "__main__":
    main()
