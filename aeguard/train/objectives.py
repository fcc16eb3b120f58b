"""What a model minimises: reconstruction of the clean image, plus the variant's penalty.

The objective is a module wrapping the autoencoder, so DistributedDataParallel can wrap it whole
and synchronise the gradients of every term.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from aeguard.config import NOISE_KINDS, parse_noise  # noqa: F401 - re-exported
from aeguard.errors import UsageError
from aeguard.train.error_maps import ErrorMap
from aeguard.train.models import Autoencoder
from aeguard.train.precision import full_precision
from aeguard.train.synthetic import paste_defects


def corrupt(images: torch.Tensor, noise: tuple[str, float] | None) -> torch.Tensor:
    """A corrupted copy for denoising training; the target stays the clean image."""
    if noise is None:
        return images
    kind, level = noise
    if kind == "gaussian":
        return (images + level * torch.randn_like(images)).clamp(0.0, 1.0)
    if kind == "mask":
        return images * (torch.rand_like(images) >= level).to(images.dtype)
    if kind == "salt-pepper":
        hit = torch.rand_like(images) < level
        salt = (torch.rand_like(images) < 0.5).to(images.dtype)
        return torch.where(hit, salt, images)
    # erase: one random square per image set to zero, so the model must restore a missing part.
    n, _, height, width = images.shape
    side_h, side_w = max(1, round(level * height)), max(1, round(level * width))
    top = torch.randint(0, height - side_h + 1, (n, 1, 1, 1), device=images.device)
    left = torch.randint(0, width - side_w + 1, (n, 1, 1, 1), device=images.device)
    rows = torch.arange(height, device=images.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, 1, width)
    inside = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
    return images * (~inside).to(images.dtype)


@torch.no_grad()
def reconstruction_loss(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean per-pixel squared error over `images`, in eval mode."""
    model.eval()
    total = torch.zeros((), device=images.device, dtype=torch.float64)
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        total += F.mse_loss(model(batch), batch, reduction="sum").double()
    return float(total) / images.numel()


def kl_per_image(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) for each row."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=1)


class Objective(nn.Module):
    """Per-pixel MSE to the clean image + l1 * |code| + contraction * ||dcode/dx||^2 + beta * KL / pixels."""

    def __init__(self, model: Autoencoder, training: dict | None = None):
        super().__init__()
        training = training or {}
        self.model = model
        self.noise = parse_noise(training.get("noise"))
        self.l1 = float(training.get("l1") or 0.0)
        self.contraction = float(training.get("contraction") or 0.0)
        self.beta = float(training.get("beta") or 0.0)
        if min(self.l1, self.contraction, self.beta) < 0:
            raise UsageError("--sparsity, --contraction and --beta must not be negative")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = corrupt(images, self.noise)
        if self.contraction:
            inputs = inputs.detach().requires_grad_(True)
        code, log_var = self.model.code_statistics(inputs)
        if log_var is not None:  # the reparameterisation trick: sample around the mean while training
            sample = code + torch.randn_like(code) * (0.5 * log_var).exp()
            reconstruction = self.model.decode(sample)
        else:
            reconstruction = self.model.decode(code)
        loss = F.mse_loss(reconstruction.float(), images)
        pixels = images[0].numel()
        if self.l1:
            loss = loss + self.l1 * code.float().abs().mean()
        if self.contraction:
            # ||J||_F^2 = E_u ||u^T J||^2 for u ~ N(0, I): one vector-Jacobian product per step
            # instead of the full Jacobian, with create_graph so the penalty trains the encoder.
            probe = torch.randn_like(code)
            (row,) = torch.autograd.grad((code * probe).sum(), inputs, create_graph=True)
            loss = loss + self.contraction * row.float().pow(2).sum(dim=(1, 2, 3)).mean() / pixels
        if log_var is not None and self.beta:
            loss = loss + self.beta * kl_per_image(code.float(), log_var.float()).mean() / pixels
        return loss

    def validation_loss(self, images: torch.Tensor) -> float:
        """What early stopping watches: the plain reconstruction error of clean images, whatever the variant."""
        return reconstruction_loss(self.model, images)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), as DRAEM trains its segmenter: defects cover few pixels, and the
    many easy normal pixels would otherwise dominate the gradient."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    agreement = torch.exp(-bce)  # the probability given to the right class
    return ((1.0 - agreement) ** gamma * bce).mean()


class DraemObjective(nn.Module):
    """Restore the clean image from one with synthetic defects pasted in (L2 + SSIM, as DRAEM), and segment
    the defects from (defective image, restoration) with the focal loss."""

    VALIDATION_SEED = 12345  # the same pasted defects on the validation images every epoch

    def __init__(self, model, seed: int = 0):
        super().__init__()
        self.model = model
        ssim = ErrorMap({"function": "ssim", "sigma": 1.5}, model.shape[0], size=model.shape[1:])
        # its band matrices where the model is: the loop builds the objective after moving the model there
        self.ssim = ssim.to(next(model.parameters()).device)
        self.generator = torch.Generator().manual_seed(seed)

    def loss(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        defective, masks = paste_defects(images, generator)
        restored = self.model(defective)  # the networks in whatever precision the caller runs them
        logits = self.model.defect_logits(defective, restored)
        with full_precision(images.device):  # the SSIM of bf16 images would be noise (train/precision.py)
            restored, logits = restored.float(), logits.float()
            restoration = F.mse_loss(restored, images) + self.ssim(images, restored).mean()
            return restoration + focal_loss(logits, masks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.loss(images, self.generator)

    @torch.no_grad()
    def validation_loss(self, images: torch.Tensor, batch_size: int = 64) -> float:
        self.model.eval()
        generator = torch.Generator().manual_seed(self.VALIDATION_SEED)
        total = 0.0
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            total += float(self.loss(batch, generator)) * len(batch)
        return total / max(1, len(images))


def objective_for(model, training: dict | None, seed: int = 0) -> Objective | DraemObjective:
    """The training objective of a model: the draem one for Draem, else reconstruction plus the variant's terms."""
    from aeguard.train.draem import Draem

    if isinstance(model, Draem):
        return DraemObjective(model, seed)
    return Objective(model, training)
