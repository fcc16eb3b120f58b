"""Images of any size through networks that halve it `depth` times: zero-pad the right and bottom edges up
to a multiple of 2**depth, and crop the output back. The amounts are fixed when the network is built, so
the ONNX graph stays static but for the batch axis."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


class GridPadding:
    def __init__(self, height: int, width: int, depth: int):
        factor = 2**depth
        self.size = (height, width)
        self.padded = (math.ceil(height / factor) * factor, math.ceil(width / factor) * factor)
        self.amounts = (0, self.padded[1] - width, 0, self.padded[0] - height)  # F.pad's order: W, then H

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.amounts) if any(self.amounts) else x

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : self.size[0], : self.size[1]]
