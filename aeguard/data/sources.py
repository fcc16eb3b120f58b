"""Where training and evaluation images come from: a known IDX data set or a user's image folder."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aeguard.data.catalog import get_spec, load_split, parse_classes
from aeguard.data.contract import Color, Crop, Preprocessing, looks_colour
from aeguard.data.images import IMAGE_SUFFIXES, image_size, iter_image_paths, load_images, load_mask
from aeguard.data.splits import anomaly_labels, as_model_input, to_model_input, train_validation_split
from aeguard.errors import DataNotFoundError, ImageError, UsageError

NORMAL_SUBDIR = "normal"
ANOMALY_SUBDIR = "anomaly"
GOOD = "good"  # MVTec AD: DIR/train/good, DIR/test/good, DIR/test/<defect>, DIR/ground_truth/<defect>/<name>_mask.png
MASK_SUFFIX = "_mask"
TEST_SUBDIR = "test"
# MVTec AD 2's name for normal images kept apart to set the threshold on: when DIR/validation/good is there, it is
# the held-out set, and every training image is trained on
VALIDATION_SUBDIR = "validation"


@dataclass
class EvalSet:
    """Labelled images for evaluation: float32 NCHW, and 1 for anomalies."""

    images: np.ndarray
    is_anomaly: np.ndarray
    description: str
    class_labels: np.ndarray | None = None  # original class per image, for per-class plots
    groups: list[str] | None = None  # per image: "good" or its defect type (MVTec layout), for per-type results
    masks: np.ndarray | None = None  # (N, H, W) bool ground truth, all False for normal images
    has_mask: np.ndarray | None = None  # (N,) bool: the image's mask is known (normal ones always)
    not_used: list[str] = field(default_factory=list)  # files of the folder left out of it, each with why


@dataclass
class TrainingData:
    train: np.ndarray
    validation: np.ndarray
    evaluation: EvalSet | None
    source: dict  # what the manifest records about the data
    skipped: list[str] = field(default_factory=list)
    preprocessing: Preprocessing | None = None  # how files become these arrays [as the arrays' shape says]

    def __post_init__(self):
        if self.preprocessing is None:
            self.preprocessing = Preprocessing(*self.train.shape[1:])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])


def dataset_eval_set(
    name: str, normal_classes: tuple[int, ...], data_dir: Path | None, allow_download: bool = True
) -> EvalSet:
    """The full test split; every class outside `normal_classes` counts as anomalous."""
    test = load_split(name, "test", data_dir, allow_download)
    return EvalSet(
        images=to_model_input(test.images),
        is_anomaly=anomaly_labels(test.labels, normal_classes),
        description=f"{name} test split ({len(test.labels)} images)",
        class_labels=np.asarray(test.labels),
    )


def dataset_training_data(
    name: str, normal: str, data_dir: Path | None, val_fraction: float, seed: int, allow_download: bool = True
) -> TrainingData:
    spec = get_spec(name)
    normal_classes = parse_classes(spec, normal)
    train = load_split(name, "train", data_dir, allow_download)
    normal_images = train.images[np.isin(train.labels, normal_classes)]
    fit_images, val_images = train_validation_split(normal_images, val_fraction, seed)
    return TrainingData(
        train=to_model_input(fit_images),
        validation=to_model_input(val_images),
        evaluation=dataset_eval_set(name, normal_classes, data_dir, allow_download),
        source={
            "dataset": spec.name,
            "normal_classes": list(normal_classes),
            "normal_class_names": [spec.class_names[i] for i in normal_classes],
            "class_names": list(spec.class_names),
            "n_train": int(len(fit_images)),
            "n_validation": int(len(val_images)),
        },
    )


def array_training_data(images, val_fraction: float, seed: int) -> TrainingData:
    """Normal images given as an array (see as_model_input), split as a folder's are."""
    images = as_model_input(images)
    if len(images) < 2:
        raise DataNotFoundError(f"{len(images)} training images given; at least 2 are needed")
    fit_images, val_images = train_validation_split(images, val_fraction, seed)
    return TrainingData(
        train=fit_images,
        validation=val_images,
        evaluation=None,
        source={"arrays": True, "n_train": int(len(fit_images)), "n_validation": int(len(val_images))},
    )


def limit_images(data: TrainingData, max_images: int | None, val_fraction: float) -> TrainingData:
    """At most `max_images` normal images in all, for quick trials; the split is already shuffled, so the same
    share stays held out, taken from the front of each part."""
    if max_images is None:
        return data
    held_out = max(1, round(max_images * val_fraction))
    data.train, data.validation = data.train[: max_images - held_out], data.validation[:held_out]
    data.source.update(n_train=int(len(data.train)), n_validation=int(len(data.validation)), max_images=max_images)
    return data


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """'28' -> (28, 28); '32x48' -> (32, 48) as (height, width); None stays None."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise UsageError(f"--image-size must look like 28 or 32x48 (height x width), got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 4 or max(parts) > 4096:
        raise UsageError(f"--image-size must be one or two sizes between 4 and 4096, got {text!r}")
    return parts[0], parts[1]


def first_readable_size(paths: list[Path]) -> tuple[int, int]:
    """(height, width) of the first image whose header can be read: one broken file must not stop a fit."""
    for path in paths:
        try:
            return image_size(path)
        except ImageError:
            continue
    raise DataNotFoundError(f"none of the {len(paths)} training images can be read")


COLOUR_PROBE = 16  # training images looked at to tell a colour folder from a grey one


def folder_color(paths: list[Path], height: int, width: int) -> Color:
    """rgb when any of the first readable training images is in colour, else grayscale."""
    probe = Preprocessing(3, height, width)
    looked = 0
    for path in paths:
        decoded = load_images([path], probe)[0]
        if isinstance(decoded, str):
            continue
        if looks_colour(decoded):
            return Color.RGB
        looked += 1
        if looked >= COLOUR_PROBE:
            break
    return Color.GRAYSCALE


class CompactStack:
    """Decoded images gathered one at a time: as uint8 while each is exactly 8-bit (a quarter of float32's
    memory), as float32 from the first that is not (a 16-bit source). Only the stack is held, never a float32
    copy of every image: 10,000 RGB images of 256 px are 2 GB, not the 8 GB of their floats."""

    def __init__(self, capacity: int, shape: tuple[int, int, int]):
        self._array: np.ndarray = np.empty((capacity, *shape), np.uint8)
        self.count = 0

    def add(self, image: np.ndarray) -> None:
        if self._array.dtype == np.uint8:
            as_bytes = np.rint(image * 255.0).astype(np.uint8)
            if np.allclose(as_bytes / np.float32(255.0), image, atol=1e-6):
                self._array[self.count] = as_bytes
                self.count += 1
                return
            self._array = self._array.astype(np.float32) / np.float32(255.0)  # the decoder's division
        self._array[self.count] = image
        self.count += 1

    def array(self) -> np.ndarray:
        """The images added, in order (a copy only when fewer were added than there was room for)."""
        return self._array if self.count == len(self._array) else self._array[: self.count].copy()


def readable_images(paths: list[Path], prep: Preprocessing) -> tuple[np.ndarray, list[str]]:
    """Decode what can be decoded, one file at a time into a CompactStack; return the stack and one message per
    file that failed."""
    stack, errors = CompactStack(len(paths), prep.shape), []
    for path in paths:
        decoded = load_images([path], prep)[0]
        if isinstance(decoded, str):
            errors.append(decoded)
        else:
            stack.add(decoded)
    return stack.array(), errors


def is_mvtec(folder: Path) -> bool:
    return (Path(folder) / "train" / GOOD).is_dir()


def mask_path(folder: Path, defect: str, image: Path) -> Path:
    return Path(folder) / "ground_truth" / defect / f"{image.stem}{MASK_SUFFIX}.png"


def read_mask(path: Path, image: Path, prep: Preprocessing) -> np.ndarray | str:
    """A mask image -> (H, W) bool at the model's size (turned, cropped and resized as its image is), or why not.

    A pixel is a defect wherever the mask is not 0 (Preprocessing.to_mask). A mask must be the size of its
    image: one of another size (the mask of another picture, or drawn on the photo turned another way than the
    model reads it) would be resized onto the wrong pixels in silence."""
    try:
        mask_size, image_size_ = image_size(path, prep.orientation), image_size(image, prep.orientation)
        if mask_size != image_size_:
            return (
                f"{path} is {mask_size[1]}x{mask_size[0]} (width x height) but its image is "
                f"{image_size_[1]}x{image_size_[0]}; the mask was not used"
            )
        return load_mask(path, prep)
    except ImageError as exc:
        return str(exc)


def orphan_masks(folder: Path, groups: list[tuple[str, list[Path]]]) -> list[str]:
    """The files under ground_truth/<group>/ that are no image's mask: a naming that does not follow
    <image name>_mask.png (another data set's, or a renamed image) would otherwise leave every mask unused, with
    nothing but a count of anomalous images without a mask to show for it."""
    messages = []
    for group, paths in groups:
        where = Path(folder) / "ground_truth" / group
        if group == GOOD or not where.is_dir():
            continue
        expected = {mask_path(folder, group, path).name for path in paths}
        for mask in sorted(where.iterdir()):
            if mask.name not in expected and not mask.name.startswith(".") and not mask.is_dir():
                messages.append(
                    f"{mask}: the mask of no image in {group}/ (a mask is named <image name>{MASK_SUFFIX}.png)"
                )
    return messages


def _labelled_set(
    groups: list[tuple[str, list[Path]]],
    prep: Preprocessing,
    folder: Path,
    description: str,
    problems: list[str] | None = None,
) -> tuple[EvalSet | None, list[str]]:
    """Images of several groups ("good" = normal) as one EvalSet, with the masks found under folder/ground_truth,
    and the list of the files it could not use (after `problems`, the caller's)."""
    images = CompactStack(sum(len(paths) for _, paths in groups), prep.shape)
    names, masks, known, problems = [], [], [], list(problems or [])
    for group, paths in groups:
        for path in paths:
            item = load_images([path], prep)[0]
            if isinstance(item, str):
                problems.append(item)
                continue
            mask, have = np.zeros(prep.shape[1:], bool), group == GOOD
            where = mask_path(folder, group, path) if group != GOOD else None
            if where is not None and where.is_file():
                read = read_mask(where, path, prep)
                if isinstance(read, str):
                    problems.append(f"mask of {path}: {read}")
                else:
                    mask, have = read, True
            images.add(item)
            names.append(group)
            masks.append(mask)
            known.append(have)
    problems += orphan_masks(folder, groups)
    is_anomaly = np.array([name != GOOD for name in names], np.int64)
    if not names or is_anomaly.all() or not is_anomaly.any():
        return None, problems
    any_mask = any(k for k, name in zip(known, names) if name != GOOD)
    counts = ", ".join(f"{group} {names.count(group)}" for group, _ in groups if names.count(group))
    return (
        EvalSet(
            images=images.array(),
            is_anomaly=is_anomaly,
            description=f"{description}: {counts}",
            groups=names,
            masks=np.stack(masks) if any_mask else None,
            has_mask=np.array(known) if any_mask else None,
            not_used=list(problems),
        ),
        problems,
    )


def mvtec_eval_set(folder: Path, prep: Preprocessing) -> tuple[EvalSet | None, list[str]]:
    """DIR/test/good and DIR/test/<defect>/, with masks from DIR/ground_truth/<defect>/<name>_mask.png."""
    test = Path(folder) / TEST_SUBDIR
    if not test.is_dir():
        return None, []
    kinds = sorted(p.name for p in test.iterdir() if p.is_dir() and not p.name.startswith("."))
    kinds = [GOOD] * (GOOD in kinds) + [k for k in kinds if k != GOOD]
    groups = [(kind, list(iter_image_paths([test / kind]))) for kind in kinds]
    loose = sorted(p for p in test.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    unlabelled = [f"{path}: not in test/{GOOD}/ or a test/<defect>/ folder, so it has no label" for path in loose]
    return _labelled_set(groups, prep, folder, f"{folder} (MVTec layout)", unlabelled)


def folder_eval_set(folder: Path, prep: Preprocessing) -> tuple[EvalSet | None, list[str]]:
    """The evaluation set of a folder: MVTec layout (DIR/test/...), or DIR/normal and DIR/anomaly (masks, when
    there are any, in DIR/ground_truth/anomaly/<name>_mask.png)."""
    if is_mvtec(folder) or (Path(folder) / TEST_SUBDIR).is_dir():
        return mvtec_eval_set(folder, prep)
    normal_dir, anomaly_dir = Path(folder) / NORMAL_SUBDIR, Path(folder) / ANOMALY_SUBDIR
    if not (normal_dir.is_dir() and anomaly_dir.is_dir()):
        return None, []
    groups = [(GOOD, list(iter_image_paths([normal_dir]))), (ANOMALY_SUBDIR, list(iter_image_paths([anomaly_dir])))]
    return _labelled_set(groups, prep, folder, str(folder))


def warn_skipped(messages: list[str]) -> None:
    for message in messages:
        print(f"warning: skipped {message}", file=sys.stderr)


def labelled_folder(folder: Path, prep: Preprocessing) -> EvalSet:
    """folder_eval_set, each file it could not use warned about on stderr (as a training folder's are); a
    DataNotFoundError when the folder holds no labelled set of normal and anomalous images."""
    eval_set, problems = folder_eval_set(folder, prep)
    warn_skipped(problems)
    if eval_set is None:
        raise DataNotFoundError(
            f"{folder} needs normal/ and anomaly/ subfolders, or the MVTec layout (test/good/ and test/<defect>/), "
            "that hold both normal and anomalous images"
        )
    return eval_set


def training_paths(folder: Path) -> list[Path]:
    """MVTec: DIR/train/good. Otherwise every image under DIR except the evaluation's: DIR/normal, DIR/anomaly,
    DIR/ground_truth and DIR/test, which folder_eval_set reads as an MVTec test set whenever it is there (a
    folder with train/ but no train/good/ once trained on its own test anomalies as normal images)."""
    if is_mvtec(folder):
        return list(iter_image_paths([folder / "train" / GOOD]))
    excluded = [folder / NORMAL_SUBDIR, folder / ANOMALY_SUBDIR, folder / "ground_truth", folder / TEST_SUBDIR]
    return list(iter_image_paths([folder], exclude=[*excluded, validation_folder(folder)]))


def validation_folder(folder: Path) -> Path:
    return Path(folder) / VALIDATION_SUBDIR / GOOD


def held_out_images(
    folder: Path, images: np.ndarray, prep: Preprocessing, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) normal images: DIR/validation/good when it is there, and then every training image is
    trained on; otherwise a seeded random `val_fraction` of the training images.

    The held-out images set the threshold, so they must be like the images it will score. A random share of
    crops of the same few photos, or of frames of one video, need not be: on the texture benchmark's brick,
    crops held out of the region the training crops cover set a threshold that flagged 58 % of the normal
    test crops, from another region of the photo (benchmarks/results/textures.md)."""
    where = validation_folder(folder)
    if not where.is_dir():
        return train_validation_split(images, val_fraction, seed)
    held_out, skipped = readable_images(list(iter_image_paths([where])), prep)
    warn_skipped(skipped)
    if len(held_out) == 0:
        raise DataNotFoundError(
            f"{where} holds no readable images; put normal images there to set the threshold on, or remove it to "
            "hold out a share of the training images instead"
        )
    print(
        f"note: the threshold is set on the {len(held_out)} images of {where}; every training image is trained on",
        file=sys.stderr,
    )
    return images[np.random.default_rng(seed).permutation(len(images))], held_out


# The default model size's longest side: a folder of camera photos (4000 x 3000) trained at its own size
# would need gigabytes per batch and days on a CPU; 256 is what anomaly-detection models are usually fed.
DEFAULT_LONGEST_SIDE = 256


def default_image_size(height: int, width: int) -> tuple[int, int]:
    """The images' own (height, width), scaled down to DEFAULT_LONGEST_SIDE on the longer side when above it."""
    longest = max(height, width)
    if longest <= DEFAULT_LONGEST_SIDE:
        return height, width
    scale = DEFAULT_LONGEST_SIDE / longest
    return max(4, round(height * scale)), max(4, round(width * scale))


def folder_preprocessing(
    paths: list[Path], image_size_text: str | None, color: Color | str | None, crop: Crop | str
) -> Preprocessing:
    """The contract a folder's model is trained under: the size asked for (or the first image's, at most
    DEFAULT_LONGEST_SIDE across), the colour asked for (or the images' own), and the crop."""
    size = parse_image_size(image_size_text)
    if size is None:
        own = first_readable_size(paths)
        size = default_image_size(*own)
        if size != own:
            print(
                f"note: the training images are {own[1]}x{own[0]} (width x height); fitting at {size[1]}x{size[0]}, "
                f"the default of at most {DEFAULT_LONGEST_SIDE} px across (choose with --image-size)",
                file=sys.stderr,
            )
    height, width = size
    chosen = Color(color) if color is not None else folder_color(paths, height, width)
    return Preprocessing.of(chosen, height, width, crop)


def folder_training_data(
    folder: Path,
    image_size_text: str | None,
    val_fraction: float,
    seed: int,
    color: Color | str | None = None,
    crop: Crop | str = Crop.NONE,
) -> TrainingData:
    """A user's folder: normal images for training, held-out ones for calibration, and the evaluation set."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(f"--data {folder} is not a directory")
    paths = training_paths(folder)
    if not paths:
        where = (
            "in train/good/"
            if is_mvtec(folder)
            else f"outside its {NORMAL_SUBDIR}/, {ANOMALY_SUBDIR}/, {TEST_SUBDIR}/ and ground_truth/ subfolders"
        )
        raise DataNotFoundError(f"no training images under {folder} ({where})")
    prep = folder_preprocessing(paths, image_size_text, color, crop)
    images, skipped = readable_images(paths, prep)
    warn_skipped(skipped)
    if len(images) < 2:
        raise DataNotFoundError(f"{folder} has {len(images)} readable training images; at least 2 are needed")
    fit_images, val_images = held_out_images(folder, images, prep, val_fraction, seed)
    evaluation, bad_eval = folder_eval_set(folder, prep)
    warn_skipped(bad_eval)  # the report lists them too: its figures are of the files that could be read
    return TrainingData(
        train=fit_images,
        validation=val_images,
        evaluation=evaluation,
        source={
            "folder": str(folder.resolve()),
            "layout": "mvtec" if is_mvtec(folder) else "folder",
            "color": prep.color.value,
            "n_train": int(len(fit_images)),
            "n_validation": int(len(val_images)),
            "validation": f"{VALIDATION_SUBDIR}/{GOOD}" if validation_folder(folder).is_dir() else "held out",
            "n_skipped": len(skipped) + len(bad_eval),
        },
        skipped=skipped + bad_eval,
        preprocessing=prep,
    )
