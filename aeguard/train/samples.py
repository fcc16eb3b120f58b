"""Images drawn from a VAE's prior: what the model thinks a normal image looks like."""

from __future__ import annotations

from pathlib import Path

import torch

from aeguard.report import plots as reports
from aeguard.train.models import Autoencoder

PRIOR_SAMPLES = 32


@torch.no_grad()
def write_prior_samples(model: Autoencoder, report_dir: Path, seed: int = 0, count: int = PRIOR_SAMPLES) -> Path:
    """Decode `count` codes drawn from N(0, I) and save them as a grid in the report folder."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randn(count, model.latent, generator=generator)
    model = model.cpu().eval()
    images = model.decode(codes).numpy()
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / reports.PRIOR_SAMPLES_PLOT
    reports.plot_image_grid(images, "samples from the prior N(0, I), decoded", path)
    return path
