"""Per-pixel error maps as PNG heat maps (for `aeguard score --save-maps`)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

# matplotlib's "inferno" colour map at 256 levels (RGB bytes), kept here so batch scoring needs no matplotlib:
# (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8).tobytes().hex()
_INFERNO_HEX = (
    "00000300000400000601000701010901010b02010e02021003021204031404031605041806041b07051d08061f0906210a07230b07260d08"
    "280e082a0f092d10092f120a32130a34140b36160b39170b3b190b3e1a0b401c0c431d0c451f0c47200c4a220b4c240b4e260b50270b5229"
    "0b542b0a562d0a582e0a5a300a5c32095d34095f3509603709613909623b09643c09653e0966400966410967430a68450a69460a69480b6a"
    "4a0b6a4b0c6b4d0c6b4f0d6c500d6c520e6c530e6d550f6d570f6d58106d5a116d5b116e5d126e5f126e60136e62146e63146e65156e6615"
    "6e68166e6a176e6b176e6d186e6e186e70196e72196d731a6d751b6d761b6d781c6d7a1c6d7b1d6c7d1d6c7e1e6c801f6b811f6b83206b85"
    "206a86216a88216a8922698b22698d23698e24689024689125679325679526669626669827659928649b28649c29639e2963a02a62a12b61"
    "a32b61a42c60a62c5fa72d5fa92e5eab2e5dac2f5cae305baf315bb1315ab23259b43358b53357b73456b83556ba3655bb3754bd3753be38"
    "52bf3951c13a50c23b4fc43c4ec53d4dc73e4cc83e4bc93f4acb4049cc4148cd4247cf4446d04544d14643d24742d44841d54940d64a3fd7"
    "4b3ed94d3dda4e3bdb4f3adc5039dd5238de5337df5436e05634e25733e35832e45a31e55b30e65c2ee65e2de75f2ce8612be9622aea6428"
    "eb6527ec6726ed6825ed6a23ee6c22ef6d21f06f1ff0701ef1721df2741cf2751af37719f37918f47a16f57c15f57e14f68012f68111f783"
    "10f7850ef8870df8880cf88a0bf98c09f98e08f99008fa9107fa9306fa9506fa9706fb9906fb9b06fb9d06fb9e07fba007fba208fba40afb"
    "a60bfba80dfbaa0efbac10fbae12fbb014fbb116fbb318fbb51afbb71cfbb91efabb21fabd23fabf25fac128f9c32af9c52cf9c72ff8c931"
    "f8cb34f8cd37f7cf3af7d13cf6d33ff6d542f5d745f5d948f4db4bf4dc4ff3de52f3e056f3e259f2e45df2e660f1e864f1e968f1eb6cf1ed"
    "70f1ee74f1f079f1f27df2f381f2f485f3f689f4f78df5f891f6fa95f7fb99f9fc9dfafda0fcfea4"
)
_LUT = np.frombuffer(bytes.fromhex(_INFERNO_HEX), np.uint8).reshape(256, 3)


def heatmap(error_map: np.ndarray, scale: float) -> Image.Image:
    """(C, H, W) per-pixel errors (of the bundle's score function) -> an RGB image of their mean over channels;
    `scale` is the top colour.

    A fixed scale per run (not per image) keeps maps comparable: the same colour means the same error.
    """
    levels = np.clip(error_map.mean(axis=0) / scale, 0.0, 1.0)
    return Image.fromarray(_LUT[(levels * 255).astype(np.uint8)], mode="RGB")


MAX_NAME = 200  # file systems allow 255 bytes a name


def map_name(path: str) -> str:
    """A flat, readable file name for an input path: separators and odd characters become '_'. A long path
    keeps its end (the file's own name) and a hash of the whole, so names stay unique and within the limit."""
    flat = re.sub(r"[^A-Za-z0-9._-]+", "_", path.strip("/"))
    if len(flat) > MAX_NAME:
        digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
        flat = f"{digest}_{flat[-(MAX_NAME - 17) :]}"
    return flat + ".png"


def save_heatmap(folder: Path, path: str, error_map: np.ndarray, scale: float) -> Path:
    target = Path(folder) / map_name(path)
    heatmap(error_map, scale).save(target)
    return target
