"""Real photographs as an MVTec-layout folder: defect-free crops to train on, defects with masks to test.

Textures from scikit-image's bundled images (no download). Training crops come from the top 60 % of the
photo, test crops from the rest (disjoint pixels). Test defects, each with its exact mask:
- scratch: a thin curved stroke, lighter or darker than the surface;
- hole: a dark ellipse with a noisy floor (light on a dark surface);
- foreign: a patch of another photograph pasted in, in an irregular ellipse;
- stain: hue turned and tinted at equal brightness (colour textures: a colour-only defect that grayscale
  cannot see; the tint keeps it visible on white and grey parts, where a turn alone changes nothing), or a
  darker blotch (grey textures).
The shapes, sources and code are separate from aeguard's training defects (aeguard/train/synthetic.py).

    python -m benchmarks.texture_defects brick /tmp/brick   # writes train/good, test/<type>, ground_truth/<type>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

TEXTURES = {  # name -> (skimage.data function, colour, region (rows, cols) of the photo that is texture)
    "brick": ("brick", False, None),
    "ihc": ("immunohistochemistry", True, None),  # colour histology
    "retina": ("retina", True, ((200, 1200), (400, 1200))),  # fundus vessels, inside the circle, past the disc
    "gravel": ("gravel", False, None),
}
FOREIGN_SOURCES = ("astronaut", "coffee", "rocket", "chelsea")
TRAIN_SHARE = 0.6  # rows of the photo that training crops come from


def photo(name: str) -> np.ndarray:
    """The texture as float (H, W, 3) in [0, 1] (grey ones repeated on three channels)."""
    import skimage.data

    function, _, region = TEXTURES.get(name, (name, True, None))
    array = getattr(skimage.data, function)().astype(np.float32) / 255.0
    if region is not None:
        (top, bottom), (left, right) = region
        array = array[top:bottom, left:right]
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array[:, :, :3]


def crops(image: np.ndarray, size: int, count: int, rows: tuple[int, int], rng) -> list[np.ndarray]:
    top, bottom = rows
    out = []
    for _ in range(count):
        y = rng.integers(top, bottom - size + 1)
        x = rng.integers(0, image.shape[1] - size + 1)
        out.append(image[y : y + size, x : x + size].copy())
    return out


def irregular_ellipse(size: int, rng, low: float = 0.08, high: float = 0.22) -> np.ndarray:
    """A bool (size, size) ellipse with a wobbly edge at a random place."""
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    ry, rx = rng.uniform(low, high, 2) * size
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
    theta = np.arctan2(v, u)
    wobble = 1.0 + 0.15 * np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.1 * np.sin(5 * theta + rng.uniform(0, 6.3))
    return (u**2 + v**2) < wobble**2


def stroke(size: int, rng) -> np.ndarray:
    """A bool (size, size) thin curve (a quadratic Bezier, 1.5-3 px wide) across a good part of the crop."""
    points = rng.uniform(0.1, 0.9, (3, 2)) * size
    t = np.linspace(0, 1, 4 * size)[:, None]
    curve = (1 - t) ** 2 * points[0] + 2 * (1 - t) * t * points[1] + t**2 * points[2]
    width = rng.uniform(1.5, 3.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = np.zeros((size, size), bool)
    for y, x in curve[::2]:
        mask |= (yy - y) ** 2 + (xx - x) ** 2 <= (width / 2) ** 2
    return mask


def luma(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], np.float32)


def turn_hue(image: np.ndarray, angle: float, tint: float = 0.0) -> np.ndarray:
    """Rotate the chroma plane (YIQ) by `angle` radians and push it `tint` further along that direction,
    keeping the brightness Y of every pixel (up to clipping). The tint makes the stain visible on greys and
    whites too, where a turn alone changes nothing (they have no chroma to turn)."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
    yiq = image @ to_yiq.T
    c, s = np.cos(angle), np.sin(angle)
    i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
    yiq[..., 1], yiq[..., 2] = c * i - s * q + tint * c, s * i + c * q + tint * s
    return np.clip(yiq @ np.linalg.inv(to_yiq).T, 0.0, 1.0)


def add_defect(crop: np.ndarray, kind: str, colour: bool, foreign: list[np.ndarray], rng):
    """(defective crop, mask) for one defect kind."""
    size = crop.shape[0]
    out = crop.copy()
    if kind == "scratch":
        mask = stroke(size, rng)
        shift = (1 if crop.mean() < 0.5 else -1) * rng.uniform(0.25, 0.45)  # towards the side with room
        out[mask] = np.clip(crop[mask] + shift, 0, 1)
    elif kind == "hole":
        mask = irregular_ellipse(size, rng, 0.05, 0.14)
        floor = rng.uniform(0.02, 0.12) + 0.03 * rng.standard_normal((size, size, 1)).astype(np.float32)
        if crop.mean() < 0.3:  # on a dark surface a hole shows as what is behind it: light
            floor = 1.0 - floor
        out = np.where(mask[:, :, None], np.clip(floor, 0, 1), crop)
    elif kind == "foreign":
        mask = irregular_ellipse(size, rng)
        source = foreign[rng.integers(len(foreign))]
        y, x = rng.integers(0, source.shape[0] - size), rng.integers(0, source.shape[1] - size)
        patch = source[y : y + size, x : x + size]
        if not colour:
            patch = np.repeat(luma(patch)[:, :, None], 3, axis=2)
        out = np.where(mask[:, :, None], patch, crop)
    elif kind == "stain":
        mask = irregular_ellipse(size, rng, 0.1, 0.25)
        if colour:
            angle = rng.uniform(0.6, 1.2) * rng.choice([-1, 1])
            out = np.where(mask[:, :, None], turn_hue(crop, angle, tint=0.08), crop)
        else:
            out = np.where(mask[:, :, None], np.clip(crop * rng.uniform(0.55, 0.75), 0, 1), crop)
    else:
        raise ValueError(kind)
    return out, mask


DEFECT_KINDS = ("scratch", "hole", "foreign", "stain")


def save(array: np.ndarray, path: Path, colour: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.rint(np.clip(array, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(pixels if colour else pixels[:, :, 0]).save(path)


def write_texture_folder(
    name: str,
    out: Path,
    size: int = 128,
    n_train: int = 400,
    n_good: int = 60,
    per_defect: int = 20,
    seed: int = 0,
    n_validation: int = 0,
) -> dict:
    """Write DIR/train/good, DIR/test/{good,<kind>}, DIR/ground_truth/<kind>/<name>_mask.png; return counts.

    With `n_validation`, also DIR/validation/good: normal crops to set the threshold on, drawn after the others
    (the training and test images are the same as without them) from the test region, so that the model has
    never seen their pixels; training crops of one photo overlap each other, and a share held out of them is
    no new image."""
    rng = np.random.default_rng(seed)
    image = photo(name)
    colour = TEXTURES[name][1]
    split = int(image.shape[0] * TRAIN_SHARE)
    foreign = [photo(source) for source in FOREIGN_SOURCES]
    for index, crop in enumerate(crops(image, size, n_train, (0, split), rng)):
        save(crop, out / "train" / "good" / f"{index:04d}.png", colour)
    test_rows = (split, image.shape[0])
    for index, crop in enumerate(crops(image, size, n_good, test_rows, rng)):
        save(crop, out / "test" / "good" / f"{index:04d}.png", colour)
    for kind in DEFECT_KINDS:
        for index, crop in enumerate(crops(image, size, per_defect, test_rows, rng)):
            defective, mask = add_defect(crop, kind, colour, foreign, rng)
            save(defective, out / "test" / kind / f"{index:04d}.png", colour)
            mask_image = np.repeat(mask[:, :, None].astype(np.float32), 3, axis=2)
            save(mask_image, out / "ground_truth" / kind / f"{index:04d}_mask.png", False)
    for index, crop in enumerate(crops(image, size, n_validation, test_rows, rng)):
        save(crop, out / "validation" / "good" / f"{index:04d}.png", colour)
    return {
        "texture": name,
        "colour": colour,
        "train": n_train,
        "good": n_good,
        "per_defect": per_defect,
        "validation": n_validation,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texture", choices=sorted(TEXTURES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation", type=int, default=0, help="Normal crops for DIR/validation/good [none].")
    args = parser.parse_args()
    print(write_texture_folder(args.texture, args.out, args.size, seed=args.seed, n_validation=args.validation))


if __name__ == "__main__":
    main()
