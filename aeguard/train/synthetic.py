"""Synthetic defects for the draem model's training: pasted into normal images, with their masks.

Nothing is downloaded (DRAEM takes its defect sources from a texture data set): the sources are
procedural textures (colour noise at a random scale, stripes), the image's own content moved and
recoloured, and another image of the batch. The shapes are thresholded multi-scale noise (Perlin-like
blobs of 1-30 % of the image). Half the images stay clean, so the segmenter also learns that a normal
image has no defect. All on the training device, seeded by the caller's generator.

The test defects of the texture benchmark (benchmarks/texture_defects.py) are made by separate code with
other shapes (wobbly ellipses, curved strokes, pasted photographs, stains): the benchmark measures
generalisation from these, not recall of them. Thin scratches are what these blobs teach least
(benchmarks/results/textures.md). CutPaste's thin "scar" masks for a third of the defects were tried
(the draem-scars rows there): scratch maps got sharper, but the segmenter also answered to line-like
normal structure (brick's mortar joints), and mean image AUROC fell from 0.977 to 0.975 (both with the
constant learning rate of then). Bending strokes (benchmarks/stroke_trial.py) did worse on the histology
slide's scratches (0.825 -> 0.668 on a development folder): its normal images scored higher and its
scratches lower.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

CLEAN_SHARE = 0.5  # of the training images, left without a defect
OPACITY_SPAN = 0.8  # a pasted source's opacity is 1 - OPACITY_SPAN * U(0, 1): DRAEM's beta in [0, 0.8)


def _rand(generator: torch.Generator, *shape: int, device) -> torch.Tensor:
    return torch.rand(*shape, generator=generator).to(device)


def blob_mask(height: int, width: int, generator: torch.Generator, device) -> torch.Tensor:
    """(1, 1, H, W) in {0, 1}: thresholded sum of two octaves of smooth noise."""
    base = [2, 3, 4, 6, 8][int(torch.randint(0, 5, (1,), generator=generator))]
    field = torch.zeros(1, 1, height, width, device=device)
    for octave, weight in ((base, 1.0), (base * 2, 0.5)):
        noise = _rand(generator, 1, 1, octave + 1, octave + 1, device=device)
        field += weight * F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=True)
    share = 0.01 + 0.29 * float(torch.rand(1, generator=generator)) ** 2  # small defects more often
    bar = torch.quantile(field.flatten(), 1.0 - share)
    return (field > bar).float()


def procedural_texture(channels: int, height: int, width: int, generator: torch.Generator, device) -> torch.Tensor:
    """(1, C, H, W) in [0, 1]: colour noise at a random scale, or oriented stripes in two random colours."""
    if float(torch.rand(1, generator=generator)) < 0.5:
        cells = int(torch.randint(2, 64, (1,), generator=generator))
        noise = _rand(generator, 1, channels, cells, cells, device=device)
        return F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)
    angle = float(torch.rand(1, generator=generator)) * math.pi
    period = 2.0 + 30.0 * float(torch.rand(1, generator=generator))
    rows = torch.arange(height, device=device).view(-1, 1).float()
    cols = torch.arange(width, device=device).view(1, -1).float()
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * (cols * math.cos(angle) + rows * math.sin(angle)) / period)
    low, high = _rand(generator, channels, 1, 1, device=device), _rand(generator, channels, 1, 1, device=device)
    return (low + (high - low) * wave)[None]


def recoloured(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(C, H, W) -> the same content moved (rolled, maybe flipped) with its colours changed: a random
    channel mix for colour images (hue and saturation move), contrast, brightness and maybe inversion."""
    channels, height, width = image.shape
    device = image.device
    shift = (
        int(torch.randint(0, height, (1,), generator=generator)),
        int(torch.randint(0, width, (1,), generator=generator)),
    )
    out = torch.roll(image, shifts=shift, dims=(1, 2))
    if float(torch.rand(1, generator=generator)) < 0.5:
        out = out.flip(2)
    if channels == 3:
        mix = torch.eye(3, device=device) + 0.8 * (_rand(generator, 3, 3, device=device) - 0.5)
        mix = mix[torch.randperm(3, generator=generator).to(device)]
        out = torch.einsum("ij,jhw->ihw", mix, out)
    contrast = 0.5 + 1.5 * float(torch.rand(1, generator=generator))
    brightness = 0.4 * (float(torch.rand(1, generator=generator)) - 0.5)
    out = (out - out.mean()) * contrast + out.mean() + brightness
    if float(torch.rand(1, generator=generator)) < 0.2:
        out = 1.0 - out
    return out.clamp(0.0, 1.0)


def paste_defects(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (N, C, H, W) in [0, 1] -> (the images with defects pasted in, masks (N, 1, H, W) in {0, 1})."""
    n, channels, height, width = images.shape
    device = images.device
    defective, masks = images.clone(), torch.zeros(n, 1, height, width, device=device)
    for index in range(n):
        if float(torch.rand(1, generator=generator)) < CLEAN_SHARE:
            continue
        mask = blob_mask(height, width, generator, device)[0]
        kind = int(torch.randint(0, 3, (1,), generator=generator))
        if kind == 0:
            source = procedural_texture(channels, height, width, generator, device)[0]
        elif kind == 1:
            source = recoloured(images[index], generator)
        else:
            other = int(torch.randint(0, n, (1,), generator=generator))
            source = recoloured(images[other], generator)
        opacity = 1.0 - OPACITY_SPAN * float(torch.rand(1, generator=generator))
        blended = opacity * source + (1.0 - opacity) * images[index]
        defective[index] = images[index] * (1 - mask) + blended * mask
        masks[index] = mask
    return defective, masks
