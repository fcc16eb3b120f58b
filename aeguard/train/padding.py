"""Images of any size through networks that halve it `depth` times: pad the right and bottom edges up to a
multiple of 2**depth (zeros, or the edge pixels repeated for networks whose convolutions pad that way, so
that no black band becomes part of the image), and crop the output back. The amounts are fixed when the
network is built, so the ONNX graph stays static but for the batch axis."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


class GridPadding:
    def __init__(self, height: int, width: int, depth: int, mode: str = "constant"):
        factor = 2**depth
        self.size = (height, width)
        self.padded = (math.ceil(height / factor) * factor, math.ceil(width / factor) * factor)
        self.amounts = (0, self.padded[1] - width, 0, self.padded[0] - height)  # F.pad's order: W, then H
        self.mode = mode

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.amounts, mode=self.mode) if any(self.amounts) else x

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : self.size[0], : self.size[1]]
