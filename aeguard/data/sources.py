"""Where training and evaluation images come from: a known IDX data set or a user's image folder."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aeguard.data.catalog import get_spec, load_split, parse_classes
from aeguard.data.images import image_size, iter_image_paths, load_images, split_decoded
from aeguard.data.splits import anomaly_labels, as_model_input, to_model_input, train_validation_split
from aeguard.errors import DataNotFoundError, ImageError, UsageError

NORMAL_SUBDIR = "normal"
ANOMALY_SUBDIR = "anomaly"


@dataclass
class EvalSet:
    """Labelled images for evaluation: float32 NCHW, and 1 for anomalies."""

    images: np.ndarray
    is_anomaly: np.ndarray
    description: str
    class_labels: np.ndarray | None = None  # original class per image, for per-class plots


@dataclass
class TrainingData:
    train: np.ndarray
    validation: np.ndarray
    evaluation: EvalSet | None
    source: dict  # what the manifest records about the data
    skipped: list[str] = field(default_factory=list)

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


def readable_images(paths: list[Path], height: int, width: int) -> tuple[np.ndarray, list[str]]:
    """Decode what can be decoded; return the stack and one message per file that failed."""
    arrays, errors = split_decoded(load_images(paths, height, width))
    stack = np.stack(arrays) if arrays else np.zeros((0, 1, height, width), np.float32)
    return stack, [error for error in errors if error is not None]


def folder_eval_set(folder: Path, height: int, width: int) -> tuple[EvalSet | None, list[str]]:
    """DIR/normal and DIR/anomaly as an evaluation set, when both hold images."""
    normal_dir, anomaly_dir = Path(folder) / NORMAL_SUBDIR, Path(folder) / ANOMALY_SUBDIR
    if not (normal_dir.is_dir() and anomaly_dir.is_dir()):
        return None, []
    normal, bad_normal = readable_images(list(iter_image_paths([normal_dir])), height, width)
    anomalous, bad_anomalous = readable_images(list(iter_image_paths([anomaly_dir])), height, width)
    if len(normal) == 0 or len(anomalous) == 0:
        return None, bad_normal + bad_anomalous
    return (
        EvalSet(
            images=np.concatenate([normal, anomalous]),
            is_anomaly=np.r_[np.zeros(len(normal), np.int64), np.ones(len(anomalous), np.int64)],
            description=f"{folder}: {len(normal)} normal, {len(anomalous)} anomalous images",
        ),
        bad_normal + bad_anomalous,
    )


def folder_training_data(folder: Path, image_size_text: str | None, val_fraction: float, seed: int) -> TrainingData:
    """Normal images anywhere under DIR except DIR/normal and DIR/anomaly, which are kept for evaluation."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(f"--data {folder} is not a directory")
    paths = list(iter_image_paths([folder], exclude=[folder / NORMAL_SUBDIR, folder / ANOMALY_SUBDIR]))
    if not paths:
        raise DataNotFoundError(
            f"no training images under {folder} (outside its {NORMAL_SUBDIR}/ and {ANOMALY_SUBDIR}/ subfolders)"
        )
    size = parse_image_size(image_size_text) or first_readable_size(paths)
    images, skipped = readable_images(paths, *size)
    for message in skipped:
        print(f"warning: skipped {message}", file=sys.stderr)
    if len(images) < 2:
        raise DataNotFoundError(f"{folder} has {len(images)} readable training images; at least 2 are needed")
    fit_images, val_images = train_validation_split(images, val_fraction, seed)
    evaluation, bad_eval = folder_eval_set(folder, *size)
    return TrainingData(
        train=fit_images,
        validation=val_images,
        evaluation=evaluation,
        source={
            "folder": str(folder.resolve()),
            "n_train": int(len(fit_images)),
            "n_validation": int(len(val_images)),
            "n_skipped": len(skipped) + len(bad_eval),
        },
        skipped=skipped + bad_eval,
    )
