"""How an ensemble's members' outputs combine in a scoring graph (the autoencoders' and draem's alike)."""

from __future__ import annotations

import torch


def members_mean(parts: list[torch.Tensor]) -> torch.Tensor:
    """The ensemble's mean of one per-member output; a single member's output as it is (no extra graph nodes)."""
    return torch.stack(parts).mean(dim=0) if len(parts) > 1 else parts[0]
