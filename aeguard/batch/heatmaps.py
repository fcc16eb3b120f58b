"""Per-pixel error maps as PNG heat maps (for `aeguard score --save-maps`)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

_LUT = (colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def heatmap(error_map: np.ndarray, scale: float) -> Image.Image:
    """(1, H, W) per-pixel errors (of the bundle's score function) -> an RGB image; `scale` is the top colour.

    A fixed scale per run (not per image) keeps maps comparable: the same colour means the same error.
    """
    levels = np.clip(error_map[0] / scale, 0.0, 1.0)
    return Image.fromarray(_LUT[(levels * 255).astype(np.uint8)], mode="RGB")


MAX_NAME = 200  # file systems allow 255 bytes a name


def map_name(path: str) -> str:
    """A flat, readable file name for an input path: separators and odd characters become '_'. A long path
    keeps its end (the file's own name) and a hash of the whole, so names stay unique and within the limit."""
    flat = re.sub(r"[^A-Za-z0-9._-]+", "_", path.strip("/"))
    if len(flat) > MAX_NAME:
        digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
        flat = f"{digest}_{flat[-(MAX_NAME - 17):]}"
    return flat + ".png"


def save_heatmap(folder: Path, path: str, error_map: np.ndarray, scale: float) -> Path:
    target = Path(folder) / map_name(path)
    heatmap(error_map, scale).save(target)
    return target
