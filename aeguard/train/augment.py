"""Training-time augmentation: what a batch may be turned into before the step sees it.

"flip" mirrors each image left-right and, independently, top-bottom, each with probability one half. For
textures a mirrored crop is as normal as the crop (brick's joints stay horizontal, a tissue slide has no
up), so the networks see four arrangements of every crop. It is off by default: a mirrored digit or
garment is no longer the normal class.
"""

from __future__ import annotations

import torch


def random_flips(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N, C, H, W) -> each image mirrored left-right and top-bottom at random (the draws come from the CPU
    `generator`, so they are the same on every device)."""
    n = len(batch)
    left_right, top_bottom = (torch.rand(n, 1, 1, 1, generator=generator).to(batch.device) < 0.5 for _ in "lt")
    batch = torch.where(left_right, batch.flip(3), batch)
    return torch.where(top_bottom, batch.flip(2), batch)


def augmented(batch: torch.Tensor, augment: str, generator: torch.Generator) -> torch.Tensor:
    """The batch as TrainConfig.augment (one of config.AUGMENTS) turns it."""
    return random_flips(batch, generator) if augment == "flip" else batch
