"""Turn labelled uint8 images into the float arrays training and evaluation use."""

from __future__ import annotations

import numpy as np

from aeguard.errors import UsageError


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1]: the same contract as image files."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def as_model_input(images, channels: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Images as the model takes them: float32 (N, C, H, W) in [0, 1].

    Takes (N, H, W) (one channel), (N, C, H, W), or (N, H, W, C) as Pillow and most image libraries give
    it, where that is unambiguous: the last axis holds the channels (1 or 3; the model's, when `channels` is
    given) and the second does not. uint8 is scaled by 1/255, uint16 by 1/65535, floats must already be finite
    and within [0, 1]. `channels` and `size` (height, width), when given, must match; the error names the shape
    the caller passed, not the one it was turned into.
    """
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise UsageError(
            f"images must be an array of shape (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {array.shape}"
        )
    counts = (1, 3) if channels is None else (channels,)
    if array.shape[1] not in counts and array.shape[3] in counts:
        array = array.transpose(0, 3, 1, 2)  # channels last; the copy below makes it contiguous
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
        if array.size and (not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0):
            raise UsageError("float images must be finite and within [0, 1]; scale them (uint8 is scaled for you)")
    else:
        raise UsageError(f"images must be uint8, uint16 or float, got {array.dtype}")
    if channels is not None and array.shape[1] != channels:
        raise UsageError(
            f"images of shape {np.shape(images)} have no axis of the model's {channels} channel(s), "
            "neither first (N, C, H, W) nor last (N, H, W, C)"
        )
    if size is not None and array.shape[2:] != tuple(size):
        c, (h, w) = array.shape[1], size
        raise UsageError(
            f"images of shape {np.shape(images)} do not fit this model: expected (N, {c}, {h}, {w}) "
            f"or (N, {h}, {w}, {c})" + (f" (or (N, {h}, {w}))" if c == 1 else "")
        )
    return np.ascontiguousarray(array)


def train_validation_split(images: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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
