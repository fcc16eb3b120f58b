"""Per-pixel error maps of a reconstruction, as torch modules (the exported graph computes the same).

mse: (x - r)^2; blur: (G_sigma * (x - r))^2; ssim: 1 - SSIM(x, r) with a Gaussian window (see scoring.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def gaussian_kernel(sigma: float, channels: int) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    line = torch.exp(-(steps**2) / (2 * sigma**2))
    line = line / line.sum()
    return (line[:, None] * line[None, :]).expand(channels, 1, -1, -1).contiguous()


class ErrorMap(nn.Module):
    """Per-pixel error of one reconstruction under the chosen score function."""

    def __init__(self, config: dict, channels: int):
        super().__init__()
        self.function = config["function"]
        self.channels = channels
        sigma = config.get("sigma", 1.0)
        self.register_buffer("kernel", gaussian_kernel(sigma, channels), persistent=False)
        self.padding = self.kernel.shape[-1] // 2

    def _smooth(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel, padding=self.padding, groups=self.channels)

    def forward(self, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        if self.function == "blur":
            return self._smooth(images - reconstruction) ** 2
        if self.function == "ssim":
            c1, c2 = 0.01**2, 0.03**2
            mean_x, mean_r = self._smooth(images), self._smooth(reconstruction)
            var_x = self._smooth(images * images) - mean_x**2
            var_r = self._smooth(reconstruction * reconstruction) - mean_r**2
            covariance = self._smooth(images * reconstruction) - mean_x * mean_r
            similarity = ((2 * mean_x * mean_r + c1) * (2 * covariance + c2)) / (
                (mean_x**2 + mean_r**2 + c1) * (var_x + var_r + c2)
            )
            return 1.0 - similarity
        return (images - reconstruction) ** 2
