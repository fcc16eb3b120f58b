"""A rotation-prediction score beside the reconstruction score (`aeguard fit --rotation`, issue 21).

A small classifier (RotNet / GEOM style: three conv blocks, global average pool, a linear layer) learns which
of the four rotations {0, 90, 180, 270} degrees was applied to a normal training image. What it learns is
what "upright" looks like for the normal class: a shirt's collar is at the top, a 3's open side faces left.
An image of another class gives it less confident, often wrong answers, so its anomaly score is the negative
log-likelihood of the right rotation, summed over the image's four rotated copies.

The graph adds it to the reconstruction score after standardising both on the held-out normal images
(train/scoring.py): on the hard one-class classes that z-score sum beat either score alone and their product
(benchmarks/results/rotation_probe.md).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from aeguard.train.loop import as_float, resolve_device
from aeguard.train.precision import training_memory_format

ROTATIONS = 4
BATCH_IMAGES = 64  # images per step; every one goes in four times, rotated
LEARNING_RATE = 1e-3
EVAL_BATCH = 500


def rotations(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) square images -> (4N, C, H, W): all N turned by 0 degrees, then all by 90, 180, 270.

    Written as transposes and flips (torch.rot90 is the same thing) so the ONNX graph is plain Transpose and
    Slice nodes."""
    turned = [images]
    for _ in range(ROTATIONS - 1):
        turned.append(turned[-1].transpose(2, 3).flip(2))  # 90 degrees counter-clockwise, as rot90(k=1)
    return torch.cat(turned)


def rotation_labels(count: int, device: torch.device | None = None) -> torch.Tensor:
    """Which rotation each row of rotations() of `count` images is."""
    return torch.arange(ROTATIONS, device=device).repeat_interleave(count)


def _block(inputs: int, outputs: int) -> nn.Module:
    # Pool, then ReLU: the same numbers as ReLU then pool (max commutes with a monotone function, and the
    # gradient reaches the same inputs), with the ReLU on a quarter of the values: 1.04-1.09x the training
    # steps per second on 2 CPU cores (benchmarks/results/rotation_step.md), the weights bit for bit the same.
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.MaxPool2d(2), nn.ReLU())


class RotationHead(nn.Module):
    """The rotation classifier and its anomaly score: forward(images) -> (N,) summed NLL of the right rotation."""

    def __init__(self, channels: int):
        super().__init__()
        self.classifier = nn.Sequential(
            _block(channels, 32),
            _block(32, 64),
            _block(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, ROTATIONS),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        count = images.shape[0]
        log_p = torch.log_softmax(self.classifier(rotations(images)), dim=1)  # (4N, 4)
        # row r * N + i is image i turned r times: pick column r of it, without a gather on a dynamic index
        right = (log_p.view(ROTATIONS, count, ROTATIONS) * torch.eye(ROTATIONS, device=images.device)[:, None]).sum(2)
        return -right.sum(dim=0)

    @torch.no_grad()
    def scores(self, images: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
        """forward() in batches, in eval mode; `images` uint8 or float, on the head's device."""
        self.eval()
        return torch.cat([self(as_float(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])


def train_rotation_head(
    train_images: np.ndarray,
    val_images: np.ndarray,
    epochs: int,
    seed: int,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> tuple[RotationHead, dict]:
    """Adam on batches of 64 normal images (256 rotated copies); keeps the epoch whose held-out normal images
    get the lowest mean score. Returns the head (on the CPU, eval mode, standard layout) and what its training
    recorded."""
    where = resolve_device(device)
    memory = training_memory_format(where)
    torch.manual_seed(seed)
    # Module.to takes memory_format at run time; torch's type stubs do not list it
    head = RotationHead(train_images.shape[1]).to(where, memory_format=memory)  # type: ignore[call-overload]
    optimiser = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE)
    train_x = torch.from_numpy(np.ascontiguousarray(train_images)).to(where)
    val_x = torch.from_numpy(np.ascontiguousarray(val_images)).to(where)
    generator = torch.Generator().manual_seed(seed)
    best_loss, best_state, history = float("inf"), copy.deepcopy(head.state_dict()), []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        head.train()
        order = torch.randperm(len(train_x), generator=generator).to(where)
        for start in range(0, len(order), BATCH_IMAGES):
            batch = as_float(train_x[order[start : start + BATCH_IMAGES]])
            logits = head.classifier(rotations(batch).contiguous(memory_format=memory))
            loss = nn.functional.cross_entropy(logits, rotation_labels(len(batch), where))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        held_out = float(head.scores(val_x).mean())
        history.append({"epoch": epoch, "val_score": held_out, "seconds": round(time.perf_counter() - started, 2)})
        log(f"rotation classifier epoch {epoch}/{epochs}: held-out normal score {held_out:.4f}")
        if held_out < best_loss:
            best_loss, best_state = held_out, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    best_epoch = min(history, key=lambda row: row["val_score"])["epoch"]
    record = {"epochs": epochs, "best_epoch": best_epoch, "device": str(where), "history": history}
    # the standard layout again, so the weights saved and exported are laid out as every other model's
    return head.to("cpu", memory_format=torch.contiguous_format).eval(), record
