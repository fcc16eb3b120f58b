"""The preprocessing contract: how a decoded image becomes the model's input. Pillow and numpy only.

Every manifest records it (`Preprocessing.spec`) and every front end rebuilds it from there
(`Preprocessing.from_spec`), so training, `aeguard score`, the daemon and Ray turn the same file into the
same array. Bundles written before colour support have `channels: 1` and no `crop` key: they read as
grayscale, resized without cropping, exactly as before; bundles without an `orientation` key read pixels as
stored, whatever a photo's EXIF tag says.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import ExifTags, Image
from PIL.Image import Transpose

from aeguard.errors import BundleError, UsageError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
GREY_MODES = ("1", "L", "F", *SIXTEEN_BIT_MODES)  # one plane, read as its values


class Color(StrEnum):
    GRAYSCALE = "grayscale"
    RGB = "rgb"


class Crop(StrEnum):
    NONE = "none"  # the whole image, resized (its aspect ratio may change)
    CENTER = "center"  # the largest centred region of the target's aspect ratio, then resized


class Orientation(StrEnum):
    # upright as the EXIF Orientation tag says, as photo viewers and annotation tools show a camera's JPEG:
    # a mask drawn on the photo the user sees lines up with the pixels the model sees
    EXIF = "exif"
    STORED = "stored"  # the pixels in the order the file stores them: bundles from before the key


# the EXIF Orientation values other than 1 (upright) and the transpose that undoes each (as ImageOps.exif_transpose)
UPRIGHT = {
    2: Transpose.FLIP_LEFT_RIGHT,
    3: Transpose.ROTATE_180,
    4: Transpose.FLIP_TOP_BOTTOM,
    5: Transpose.TRANSPOSE,
    6: Transpose.ROTATE_270,
    7: Transpose.TRANSVERSE,
    8: Transpose.ROTATE_90,
}


COLOR_TEXT = {
    1: "grayscale (ITU-R 601-2 luma); 16-bit images scaled by 1/65535",
    3: "rgb (grey images repeated on 3 channels, alpha dropped, palettes expanded); 16-bit images scaled by 1/65535",
}


@dataclass(frozen=True)
class Preprocessing:
    """channels (1 grayscale, 3 RGB), the model's height and width, whether to centre-crop first, and whether to
    turn a photo upright by its EXIF tag."""

    channels: int
    height: int
    width: int
    crop: Crop = Crop.NONE
    orientation: Orientation = Orientation.EXIF

    def __post_init__(self):
        if self.channels not in COLOR_TEXT:
            raise UsageError(f"images must have 1 (grayscale) or 3 (rgb) channels, got {self.channels}")
        object.__setattr__(self, "crop", Crop(self.crop))
        object.__setattr__(self, "orientation", Orientation(self.orientation))

    @classmethod
    def of(cls, color: Color | str, height: int, width: int, crop: Crop | str = Crop.NONE) -> Preprocessing:
        try:
            color, crop = Color(color), Crop(crop)
        except ValueError:
            raise UsageError(
                f"--color must be grayscale or rgb and --crop none or center, got {color!r}, {crop!r}"
            ) from None
        return cls(3 if color is Color.RGB else 1, height, width, crop)

    @property
    def color(self) -> Color:
        return Color.RGB if self.channels == 3 else Color.GRAYSCALE

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    def spec(self) -> dict:
        """The manifest's input entry."""
        return {
            "layout": "NCHW",
            "dtype": "float32",
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "color": COLOR_TEXT[self.channels],
            "crop": self.crop.value,
            "orientation": self.orientation.value,
            "resize": "bilinear",
            "range": [0.0, 1.0],
        }

    @classmethod
    def from_spec(cls, spec: dict, where: str = "the manifest") -> Preprocessing:
        crop = spec.get("crop", Crop.NONE.value)
        if not isinstance(crop, str) or crop not in {c.value for c in Crop}:
            raise BundleError(f"{where}: unknown input crop {crop!r}")
        orientation = spec.get("orientation", Orientation.STORED.value)
        if not isinstance(orientation, str) or orientation not in {o.value for o in Orientation}:
            raise BundleError(f"{where}: unknown input orientation {orientation!r}")
        try:
            return cls(spec["channels"], spec["height"], spec["width"], Crop(crop), Orientation(orientation))
        except UsageError as exc:
            raise BundleError(f"{where}: {exc}") from None

    def upright(self, image: Image.Image) -> Image.Image:
        """The image turned as its EXIF Orientation tag says (under Orientation.EXIF), else as it is."""
        turn = exif_turn(image) if self.orientation is Orientation.EXIF else None
        return image if turn is None else image.transpose(turn)

    def placed(self, image: Image.Image) -> Image.Image:
        """The image turned upright and cropped as the model reads it, before any resizing."""
        image = self.upright(image)
        return center_crop(image, self.height / self.width) if self.crop is Crop.CENTER else image

    def to_array(self, image: Image.Image) -> np.ndarray:
        """A decoded Pillow image -> (channels, height, width) float32 in [0, 1]."""
        planes = _unit_planes(self.placed(image), self.channels)
        if planes.size != (self.width, self.height):
            planes = planes.resize((self.width, self.height), Image.Resampling.BILINEAR)
        array = np.asarray(planes, dtype=np.float32)
        if planes.mode in ("L", "RGB"):
            array = array / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        if self.channels == 3 and array.shape[2] == 1:  # a float grey image, repeated on the three channels
            array = np.repeat(array, 3, axis=2)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def to_mask(self, image: Image.Image) -> np.ndarray:
        """A decoded ground-truth mask -> (height, width) bool, placed and resized as its image is.

        A pixel is a defect wherever the mask is not 0: MVTec AD's masks are 0/255, but VisA's, and those that
        label tools or numpy write, hold 0/1 or class numbers, which a threshold at half of 255 would read as
        an empty mask, every defect pixel counted as normal. (anomalib binarises VisA's masks the same way.)"""
        placed = self.placed(image)
        if placed.mode in GREY_MODES:
            values = np.asarray(placed)
        else:  # colour, palette or alpha: marked wherever any colour channel is
            values = np.asarray(placed.convert("RGB")).max(axis=2)
        marked = Image.fromarray(np.where(values != 0, 255, 0).astype(np.uint8), mode="L")
        if marked.size != (self.width, self.height):
            marked = marked.resize((self.width, self.height), Image.Resampling.BILINEAR)
        return np.asarray(marked) > 127


QUARTER_TURNS = (Transpose.TRANSPOSE, Transpose.ROTATE_270, Transpose.TRANSVERSE, Transpose.ROTATE_90)


def exif_turn(image: Image.Image) -> Transpose | None:
    """The transpose that makes a photo upright, None when its tag says it is (or it has no usable tag). A damaged
    EXIF block reads as no tag, as viewers show such a photo, rather than making the pixels unreadable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types on a damaged block
        return None
    return UPRIGHT.get(value) if isinstance(value, int) else None


def upright_size(image: Image.Image, orientation: Orientation) -> tuple[int, int]:
    """(height, width) of an opened image once turned as `orientation` says; from the header, no pixel decoded."""
    turned = orientation is Orientation.EXIF and exif_turn(image) in QUARTER_TURNS
    return (image.width, image.height) if turned else (image.height, image.width)


def center_crop(image: Image.Image, aspect: float) -> Image.Image:
    """The largest centred box of height / width = aspect."""
    width, height = image.size
    if height / width > aspect:
        new_height, new_width = max(1, round(width * aspect)), width
    else:
        new_height, new_width = height, max(1, round(height / aspect))
    left, top = (width - new_width) // 2, (height - new_height) // 2
    return image.crop((left, top, left + new_width, top + new_height))


def _unit_planes(image: Image.Image, channels: int) -> Image.Image:
    """An image of mode 'L' or 'RGB' (8-bit) or 'F' (one float plane already in [0, 1])."""
    if image.mode in SIXTEEN_BIT_MODES:
        array = np.asarray(image, dtype=np.float32) / 65535.0
        return Image.fromarray(np.clip(array, 0.0, 1.0), mode="F")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0), mode="F")
    target = "RGB" if channels == 3 else "L"
    try:
        return image.convert(target)
    except ValueError:  # a mode Pillow turns into RGB only: CIELAB (TIFF) to grey goes through RGB
        return image.convert("RGB").convert(target)


def looks_colour(array: np.ndarray, tolerance: float = 8 / 255, share: float = 0.01) -> bool:
    """True when more than `share` of an RGB (3, H, W) image's pixels differ between channels by more than
    `tolerance`: a grey photo saved as RGB (or a JPEG's chroma rounding) stays grey."""
    spread = array.max(axis=0) - array.min(axis=0)
    return bool(np.mean(spread > tolerance) > share)
