"""Per-pixel error maps of a reconstruction, as torch modules (the exported graph computes the same).

mse: (x - r)^2; blur: (G_sigma * (x - r))^2; ssim: 1 - SSIM(x, r) with a Gaussian window (see scoring.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def gaussian_line(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    line = torch.exp(-(steps**2) / (2 * sigma**2))
    return line / line.sum()


def gaussian_kernel(sigma: float, channels: int) -> torch.Tensor:
    line = gaussian_line(sigma)
    return (line[:, None] * line[None, :]).expand(channels, 1, -1, -1).contiguous()


def band_matrix(size: int, line: torch.Tensor) -> torch.Tensor:
    """(size, size) B with (B @ v)[i] = sum_k line[k] v[i + k - radius], zero beyond the ends: the 1-D
    convolution of a column with zero padding, as a matrix."""
    radius = len(line) // 2
    offsets = torch.arange(size)[None, :] - torch.arange(size)[:, None] + radius
    inside = (offsets >= 0) & (offsets < len(line))
    return torch.where(inside, line[offsets.clamp(0, len(line) - 1)], torch.zeros(()))


class ErrorMap(nn.Module):
    """Per-pixel error of one reconstruction under the chosen score function.

    Given the image `size` (H, W), the Gaussian is applied as two band matrices, rows @ x @ columns: the same
    numbers as the depthwise convolution (to float rounding) in a fifth of its time on a CPU, where the
    convolution of draem's SSIM loss was a quarter of a training step. Without it (the exported graphs, whose
    numbers bundles were checked with) the convolution stays."""

    kernel: torch.Tensor  # buffers (register_buffer), declared for the type checker
    rows: torch.Tensor | None
    columns: torch.Tensor | None

    def __init__(self, config: dict, channels: int, size: tuple[int, int] | None = None):
        super().__init__()
        self.function = config["function"]
        self.channels = channels
        sigma = config.get("sigma", 1.0)
        self.register_buffer("kernel", gaussian_kernel(sigma, channels), persistent=False)
        self.padding = self.kernel.shape[-1] // 2
        line = gaussian_line(sigma)
        rows = None if size is None else band_matrix(size[0], line)
        columns = None if size is None else band_matrix(size[1], line).T.contiguous()
        self.register_buffer("rows", rows, persistent=False)  # buffers, so .to(device) moves them
        self.register_buffer("columns", columns, persistent=False)

    def _smooth(self, x: torch.Tensor) -> torch.Tensor:
        if self.rows is not None and self.columns is not None:
            return self.rows @ x @ self.columns
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
