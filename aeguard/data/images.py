"""Image files -> the model's input under the preprocessing contract (data/contract.py). Pillow and numpy only.

This is the one decoder behind every front end: the CLI, the batch scorer, Ray, training folders and the daemon.
"""

from __future__ import annotations

import glob
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from aeguard.config import DEFAULT_MAX_PIXELS
from aeguard.data.contract import Orientation, Preprocessing, upright_size
from aeguard.errors import DataNotFoundError, ImageError, ImageTooLargeError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".pnm", ".pbm", ".tif", ".tiff", ".gif", ".webp"}
)

# Every raster format Pillow reads, but not EPS (its loader runs Ghostscript on the file) nor the
# containers that only ever hold one of the others badly (MPEG headers, PDF is write-only anyway).
DECODER_FORMATS = (
    "PNG",
    "JPEG",
    "MPO",
    "BMP",
    "DIB",
    "GIF",
    "TIFF",
    "WEBP",
    "PPM",
    "TGA",
    "ICO",
    "CUR",
    "ICNS",
    "IM",
    "SPIDER",
    "DDS",
    "BLP",
    "PCX",
    "DCX",
    "SGI",
    "QOI",
    "AVIF",
    "JPEG2000",
    "PSD",
    "FITS",
    "FLI",
    "FTEX",
    "GBR",
    "IMT",
    "MCIDAS",
    "PCD",
    "PIXAR",
    "SUN",
    "XBM",
    "XPM",
    "XVTHUMB",
    "WMF",
)

# Decompression-bomb guard: refuse anything above this many pixels (configurable per call), checked from the
# header. Pillow's own guard (its MAX_IMAGE_PIXELS, a process-wide setting left as it is) still refuses
# images above twice its limit, about 179 M pixels, whatever a caller allows.


def decode_image(
    source: Path | BinaryIO, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS, label: str | None = None
) -> np.ndarray:
    """Decode a file or an in-memory stream to (channels, height, width) float32 in [0, 1].

    The one decoder behind `aeguard score`, training folders and the daemon. The pixel limit is
    checked from the header, before any pixel is decoded. Every failure is an ImageError naming
    `label` (default: the path): Pillow's format plugins raise nearly any exception type on a
    damaged file (TypeError from an odd TIFF tag, NotImplementedError, AttributeError, ...), and
    one bad input must never end a run. Non-finite pixels (float TIFFs can hold NaN) are refused
    rather than scored, since a NaN score compares as "not an anomaly"; so are float or 32-bit pixels
    outside the range they are read in (PIXEL_RANGES), which clipping would turn into a different image.
    """
    return _decode(source, prep.to_array, max_pixels, label)


def decode_mask(
    source: Path | BinaryIO, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS, label: str | None = None
) -> np.ndarray:
    """Decode a ground-truth mask to (height, width) bool under `prep` (Preprocessing.to_mask: a defect wherever
    the mask is not 0), with decode_image's checks and errors."""
    return _decode(source, prep.to_mask, max_pixels, label)


def _decode(
    source: Path | BinaryIO, finish: Callable[[Image.Image], np.ndarray], max_pixels: int, label: str | None
) -> np.ndarray:
    label = label or str(source)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; aeguard's limit (checked next) is the one that decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source, formats=_available_formats())
        with image:
            if image.width * image.height > max_pixels:
                raise ImageTooLargeError(
                    f"{label}: {image.width}x{image.height} exceeds the pixel limit of {max_pixels}"
                )
            image.load()
            _check_pixel_range(image, label)
            return finish(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not a recognised image format") from None
    except MemoryError:
        raise ImageError(f"{label}: not enough memory to decode this image") from None
    except Image.DecompressionBombError as exc:  # above Pillow's own limit, whatever max_pixels allows
        raise ImageTooLargeError(
            f"{label}: exceeds the pixel limit of Pillow's decompression-bomb guard ({exc})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - see the docstring: any decoder failure is this input's error
        raise ImageError(f"{label}: cannot decode image ({type(exc).__name__}: {exc})") from None


# the range of pixel values each mode with no fixed range is read in: float planes (TIFF) are taken as they are,
# 32-bit integer ones as 16-bit; anything outside would be clipped, so it is refused (as the daemon refuses tensors)
PIXEL_RANGES = {"F": (0.0, 1.0), "I": (0, 65535)}


def _check_pixel_range(image: Image.Image, label: str) -> None:
    if image.mode not in PIXEL_RANGES:
        return
    pixels, (low, high) = np.asarray(image), PIXEL_RANGES[image.mode]
    if not np.isfinite(pixels).all():
        raise ImageError(f"{label}: the image holds non-finite pixel values (NaN or infinity)")
    if pixels.size and (pixels.min() < low or pixels.max() > high):
        raise ImageError(
            f"{label}: {'float' if image.mode == 'F' else '32-bit integer'} pixel values must lie in {low}-{high}, "
            f"this image holds {pixels.min()} to {pixels.max()}; scale it, or save it as 8- or 16-bit"
        )


def _available_formats() -> tuple[str, ...]:
    """DECODER_FORMATS that this Pillow build has (AVIF, JPEG2000 and WMF depend on optional libraries)."""
    Image.init()
    return tuple(name for name in DECODER_FORMATS if name in Image.OPEN)


def _os_reason(exc: OSError | ValueError) -> str:
    if isinstance(exc, ValueError):  # the OS was never asked: the name itself cannot be a path
        return "not a valid path (it holds a NUL byte)" if "null" in str(exc) else f"not a valid path ({exc})"
    return (exc.strerror or str(exc)).lower()


def load_image(path: Path, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one image file as (channels, height, width) float32; any failure becomes an ImageError naming the file."""
    path = Path(path)
    _check_file(path)
    return decode_image(path, prep, max_pixels)


def load_mask(path: Path, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one mask file as (height, width) bool (decode_mask); failures as load_image's."""
    path = Path(path)
    _check_file(path)
    return decode_mask(path, prep, max_pixels)


def _check_file(path: Path) -> None:
    """An ImageError unless `path` is a non-empty file that can be read: the messages a folder or a missing,
    empty or unreadable file deserve, which the decoder's own would not give."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:  # permission, symlink loop, ENOTDIR, ENAMETOOLONG, NUL in the name
        raise ImageError(f"{path}: cannot read ({_os_reason(exc)})") from None
    if stat.S_ISDIR(info.st_mode):
        try:
            os.listdir(path)
        except OSError as exc:
            raise ImageError(f"{path}: folder cannot be listed ({_os_reason(exc)}); its images were not read") from None
        raise ImageError(f"{path}: is a folder, not an image file")
    if info.st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")


def decode_each(decode, items, labels) -> list[np.ndarray | str]:
    """Apply `decode(item, label)` to every item on its own: one that fails costs only its own result.

    The one loop behind batch scoring's workers, training folders and the daemon's requests; an
    ImageError becomes that item's message, anything else propagates.
    """
    decoded: list[np.ndarray | str] = []
    for item, label in zip(items, labels):
        try:
            decoded.append(decode(item, label))
        except ImageError as exc:
            decoded.append(str(exc))
    return decoded


def split_decoded(decoded: Sequence[np.ndarray | str]) -> tuple[list[np.ndarray], list[str | None]]:
    """Decoded items -> the readable arrays, in order, and per item its error message (None where readable)."""
    return (
        [item for item in decoded if not isinstance(item, str)],
        [item if isinstance(item, str) else None for item in decoded],
    )


def load_images(paths, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[np.ndarray | str]:
    """Image files decoded one by one (see decode_each)."""
    return decode_each(lambda path, _: load_image(path, prep, max_pixels), paths, paths)


def image_size(path: Path, orientation: Orientation = Orientation.EXIF) -> tuple[int, int]:
    """(height, width) of an image file, read from its header, once turned as `orientation` says (by default
    upright by its EXIF tag, as a new contract reads it)."""
    try:
        with Image.open(path, formats=_available_formats()) as image:
            return upright_size(image, orientation)
    except Exception as exc:  # noqa: BLE001 - as in decode_image: any failure is this file's
        raise ImageError(f"{path}: cannot read image size ({type(exc).__name__}: {exc})") from None


def _is_dir(path: Path) -> bool:
    """Like Path.is_dir, but False for names the OS refuses (too long, NUL byte): those get an error row."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _walk_images(folder: Path, exclude: frozenset[Path]) -> Iterator[Path]:
    """Image files under `folder`, sorted; a subfolder that cannot be listed is yielded itself, so the
    loader reports it (an unreadable folder's images must not vanish from the results)."""
    unreadable: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable.append):
        while unreadable:
            yield Path(unreadable.pop(0).filename)
        dirnames[:] = sorted(d for d in dirnames if (Path(dirpath) / d) not in exclude and not d.startswith("."))
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(dirpath) / name
    while unreadable:
        yield Path(unreadable.pop(0).filename)


def iter_image_paths(inputs: Iterable[str | Path], exclude: Iterable[Path] = ()) -> Iterator[Path]:
    """Expand files, folders (recursively, image suffixes only) and glob patterns, in a stable order.

    A named file is yielded whatever its suffix, and even when it does not exist or cannot be a path,
    so a broken, missing or mislabelled file gets its own error row rather than vanishing or stopping
    the run. A glob pattern that matches nothing raises DataNotFoundError.
    """
    excluded = frozenset(Path(p) for p in exclude)
    for item in inputs:
        path = Path(item)
        if _is_dir(path):
            yield from _walk_images(path, excluded)
        elif _is_file(path):
            yield path
        elif any(char in str(item) for char in "*?["):
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise DataNotFoundError(f"pattern {item!r} matches no file")
            for match in matches:
                match_path = Path(match)
                if _is_dir(match_path):
                    yield from _walk_images(match_path, excluded)
                else:
                    yield match_path
        else:
            yield path
