"""Turn labelled uint8 images into the float arrays training and evaluation use."""

from __future__ import annotations

import numpy as np

from aeguard.errors import UsageError


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1]: the same contract as image files."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def train_validation_split(
    images: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a seeded random share of the normal training images for validation and calibration."""
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"--val-fraction must lie strictly between 0 and 1, got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, int(round(len(images) * val_fraction)))
    if len(images) - n_val < 1:
        raise UsageError(f"{len(images)} normal images are too few to hold out {val_fraction:.0%} for validation")
    return images[order[n_val:]], images[order[:n_val]]


def anomaly_labels(labels: np.ndarray, normal_classes: tuple[int, ...]) -> np.ndarray:
    """1 for images of a class outside `normal_classes`, else 0."""
    return (~np.isin(labels, normal_classes)).astype(np.int64)
