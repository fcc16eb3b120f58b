"""Image files -> the model's input: grayscale, resized, float32 in [0, 1]. Pillow and numpy only.

This is the one implementation of the preprocessing contract written into every manifest; the CLI,
the batch scorer and the daemon all call it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from typing import BinaryIO
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from aeguard.errors import DataNotFoundError, ImageError, ImageTooLargeError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".pnm", ".pbm", ".tif", ".tiff", ".gif", ".webp"}
)

# Decompression-bomb guard: refuse anything above this many pixels (configurable per call).
DEFAULT_MAX_PIXELS = 50_000_000
# Pillow's own guard would refuse (or warn about) images the caller's limit allows; ours applies instead.
Image.MAX_IMAGE_PIXELS = None


def preprocessing_spec(height: int, width: int) -> dict:
    """The contract recorded in the manifest; `image_to_array` implements it."""
    return {
        "layout": "NCHW",
        "dtype": "float32",
        "channels": 1,
        "height": height,
        "width": width,
        "color": "grayscale (ITU-R 601-2 luma); 16-bit images scaled by 1/65535",
        "resize": "bilinear",
        "range": [0.0, 1.0],
    }


def _to_grayscale_float(image: Image.Image) -> Image.Image:
    """Return a mode 'L' or 'F' image; 'F' images already hold values in [0, 1]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float32) / 65535.0
        return Image.fromarray(np.clip(array, 0.0, 1.0), mode="F")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0), mode="F")
    return image.convert("L")


def image_to_array(image: Image.Image, height: int, width: int) -> np.ndarray:
    """Convert a decoded Pillow image to a (1, height, width) float32 array in [0, 1]."""
    gray = _to_grayscale_float(image)
    if gray.size != (width, height):
        gray = gray.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(gray, dtype=np.float32)
    if gray.mode == "L":
        array = array / 255.0
    return array[None, :, :]


def decode_image(source: Path | BinaryIO, height: int, width: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 label: str | None = None) -> np.ndarray:
    """Decode a file or an in-memory stream to (1, height, width) float32 in [0, 1].

    The one decoder behind `aeguard score`, training folders and the daemon. The pixel limit is
    checked from the header, before any pixel is decoded. Every failure is an ImageError naming
    `label` (default: the path).
    """
    label = label or str(source)
    try:
        with Image.open(source) as image:
            if image.width * image.height > max_pixels:
                raise ImageTooLargeError(
                    f"{label}: {image.width}x{image.height} exceeds the pixel limit of {max_pixels}"
                )
            image.load()
            return image_to_array(image, height, width)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{label}: cannot decode image ({exc})") from None


def load_image(path: Path, height: int, width: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one image file as (1, height, width) float32; any failure becomes an ImageError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    return decode_image(path, height, width, max_pixels)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, UnidentifiedImageError) as exc:
        raise ImageError(f"{path}: cannot read image size ({exc})") from None


def _walk_images(folder: Path, exclude: frozenset[Path]) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if (Path(dirpath) / d) not in exclude and not d.startswith("."))
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(dirpath) / name


def iter_image_paths(inputs: Iterable[str | Path], exclude: Iterable[Path] = ()) -> Iterator[Path]:
    """Expand files, folders (recursively, image suffixes only) and glob patterns, in a stable order.

    A named file is yielded whatever its suffix, and even when it does not exist, so a broken,
    missing or mislabelled file gets its own error row rather than vanishing or stopping the run.
    A glob pattern that matches nothing raises DataNotFoundError.
    """
    excluded = frozenset(Path(p) for p in exclude)
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from _walk_images(path, excluded)
        elif path.is_file():
            yield path
        elif any(char in str(item) for char in "*?["):
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise DataNotFoundError(f"pattern {item!r} matches no file")
            for match in matches:
                match_path = Path(match)
                if match_path.is_dir():
                    yield from _walk_images(match_path, excluded)
                else:
                    yield match_path
        else:
            yield path
