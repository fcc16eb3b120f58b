"""The IDX data sets aeguard knows: where to find them on disk, and how to fetch them when missing.

Search order: --data-dir, then $AEGUARD_DATA_DIR, then the user cache. Inside each root both the
flat layout (<root>/fashion-mnist/train-images-idx3-ubyte.gz) and torchvision's
(<root>/FashionMNIST/raw/...) are accepted, gzipped or raw.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aeguard.bundle import sha256_file
from aeguard.data.idx import read_idx
from aeguard.errors import DataFormatError, DataNotFoundError, UsageError

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_name: str
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...]
    # sha256 of the canonical .gz files, checked on every download.
    sha256: dict[str, str]
    aliases: tuple[tuple[str, int], ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        torchvision_name="MNIST",
        class_names=tuple(str(d) for d in range(10)),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        sha256={
            "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        torchvision_name="FashionMNIST",
        class_names=(
            "t-shirt/top",
            "trouser",
            "pullover",
            "dress",
            "coat",
            "sandal",
            "shirt",
            "sneaker",
            "bag",
            "ankle boot",
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        aliases=(("tshirt", 0), ("t-shirt", 0), ("top", 0), ("boot", 9)),
    ),
}


@dataclass(frozen=True)
class Split:
    """One split of a labelled IDX data set: uint8 images (N, H, W) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def parse_classes(spec: DatasetSpec, text: str) -> tuple[int, ...]:
    """Turn '0,1' or 'sneaker,sandal' into sorted class indices.

    An index is ASCII digits only and a name matches a class name or alias exactly, ignoring case: a
    looser reading once trained digit 1 for '-1' and digit 8 for '#8'.
    """
    lookup = {n.lower(): i for i, n in enumerate(spec.class_names)}
    lookup.update(spec.aliases)
    chosen = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if re.fullmatch(r"[0-9]+", item) and int(item) < len(spec.class_names):
            chosen.add(int(item))
        elif item.lower() in lookup:
            chosen.add(lookup[item.lower()])
        else:
            raise UsageError(
                f"unknown class {item!r} for {spec.name}; use indices 0-{len(spec.class_names) - 1} "
                f"or names: {', '.join(spec.class_names)}"
            )
    if not chosen:
        raise UsageError("--normal names no class")
    if len(chosen) == len(spec.class_names):
        raise UsageError("--normal names every class, so nothing would count as an anomaly")
    return tuple(sorted(chosen))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aeguard" / "datasets"


def search_roots(data_dir: Path | None) -> list[Path]:
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    if os.environ.get("AEGUARD_DATA_DIR"):
        roots.append(Path(os.environ["AEGUARD_DATA_DIR"]))
    roots.append(default_cache_dir())
    return roots


def _candidate_dirs(spec: DatasetSpec, root: Path) -> list[Path]:
    return [root / spec.name, root / spec.torchvision_name / "raw", root / spec.torchvision_name]


def _find_file(directory: Path, stem: str) -> Path | None:
    # Some copies use the original "train-images.idx3-ubyte" spelling.
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                return candidate
    return None


def locate(spec: DatasetSpec, split: str, data_dir: Path | None = None) -> tuple[Path, Path] | None:
    """Return (images, labels) paths of a split if some search root holds both."""
    for root in search_roots(data_dir):
        for directory in _candidate_dirs(spec, root):
            images, labels = (_find_file(directory, stem) for stem in SPLIT_FILES[split])
            if images is not None and labels is not None:
                return images, labels
    return None


def _mirrors(spec: DatasetSpec) -> tuple[str, ...]:
    # An operator with an internal mirror (or a test with a loopback server) sets this.
    override = os.environ.get("AEGUARD_DATASET_MIRROR")
    return (override.rstrip("/") + "/",) if override else spec.mirrors


def download(spec: DatasetSpec, split: str, target_root: Path | None = None, timeout: float = 30.0) -> None:
    """Fetch a split's canonical .gz files into <target_root>/<name>/, verifying sha256 before keeping them."""
    target = (target_root or default_cache_dir()) / spec.name
    target.mkdir(parents=True, exist_ok=True)
    for stem in SPLIT_FILES[split]:
        final = target / f"{stem}.gz"
        if final.is_file() and sha256_file(final) == spec.sha256[stem]:
            continue
        failures = []
        for mirror in _mirrors(spec):
            url = f"{mirror}{stem}.gz"
            fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", dir=target)
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                    shutil.copyfileobj(response, out)
                actual = sha256_file(Path(tmp))
                if actual != spec.sha256[stem]:
                    raise DataFormatError(f"{url} has sha256 {actual}, expected {spec.sha256[stem]}")
                os.replace(tmp, final)
                break
            except (OSError, urllib.error.URLError, DataFormatError) as exc:
                failures.append(f"{url}: {exc}")
            finally:
                Path(tmp).unlink(missing_ok=True)
        else:
            raise DataNotFoundError(f"could not download {spec.name} {stem}.gz:\n  " + "\n  ".join(failures))


def _not_found_message(spec: DatasetSpec, split: str, data_dir: Path | None, why: str) -> str:
    looked = [str(d) for root in search_roots(data_dir) for d in _candidate_dirs(spec, root)]
    return (
        f"{spec.name} ({split} split) not found; looked in:\n  "
        + "\n  ".join(looked)
        + f"\n{why}\nPoint aeguard at the IDX files with --data-dir DIR or AEGUARD_DATA_DIR=DIR, where "
        f"DIR/{spec.name}/{SPLIT_FILES[split][0]}.gz (or torchvision's DIR/{spec.torchvision_name}/raw/) exists."
    )


@functools.lru_cache(maxsize=8)
def _read_split(images_path: Path, labels_path: Path) -> Split:
    images = read_idx(images_path)
    labels = read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataFormatError(
            f"{images_path} {images.shape} and {labels_path} {labels.shape} do not form an image/label pair"
        )
    images.setflags(write=False)
    labels.setflags(write=False)
    return Split(images, labels)


def load_split(name: str, split: str, data_dir: Path | None = None, allow_download: bool = True) -> Split:
    """Load a split of a known data set, downloading it into the user cache when missing and allowed."""
    spec = get_spec(name)
    if split not in SPLIT_FILES:
        raise UsageError(f"unknown split {split!r}; choose train or test")
    found = locate(spec, split, data_dir)
    if found is None:
        if not allow_download or os.environ.get("AEGUARD_NO_DOWNLOAD") == "1":
            raise DataNotFoundError(_not_found_message(spec, split, data_dir, "Downloading is turned off."))
        try:
            download(spec, split)
        except DataNotFoundError as exc:
            raise DataNotFoundError(_not_found_message(spec, split, data_dir, str(exc))) from exc
        found = locate(spec, split, data_dir)
        assert found is not None, "download finished but the files are not where locate() looks"
    return _read_split(*found)
