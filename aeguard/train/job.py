"""A fit job as `aeguard fit` runs it: data from a data set or a folder, a Detector, the bundle and its report.

Also the launcher of DistributedDataParallel jobs on one machine (`--devices N`), which runs this same job in
every process.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aeguard.bundle import check_out
from aeguard.config import DetectorConfig
from aeguard.data.sources import TrainingData, dataset_training_data, folder_training_data, limit_images
from aeguard.detector import Detector
from aeguard.errors import UsageError
from aeguard.train.loop import BatchCallback, EpochCallback, format_epoch


@dataclass
class FitOptions:
    out: Path
    config: DetectorConfig = field(default_factory=DetectorConfig)
    dataset: str = "mnist"
    normal: str = "0"
    data: Path | None = None  # a folder of the user's own normal images, instead of the data set
    data_dir: Path | None = None
    image_size: str | None = None
    color: str | None = None  # grayscale or rgb for --data folders [the images' own]
    crop: str = "none"  # none or center, for --data folders
    force: bool = False
    allow_download: bool = True


def load_training_data(options: FitOptions) -> TrainingData:
    config = options.config
    if options.data is not None:
        data = folder_training_data(
            options.data, options.image_size, config.val_fraction, config.train.seed, options.color, options.crop
        )
    elif options.image_size is not None or options.color is not None or options.crop != "none":
        raise UsageError("--image-size, --color and --crop apply to --data folders; IDX data sets are 28 px grey")
    else:
        data = dataset_training_data(
            options.dataset,
            options.normal,
            options.data_dir,
            config.val_fraction,
            config.train.seed,
            options.allow_download,
        )
    return limit_images(data, config.max_images, config.val_fraction)


def run_fit(
    options: FitOptions,
    on_batch: BatchCallback | None = None,
    on_epoch: EpochCallback | None = None,
    log: Callable[[str], None] = print,
) -> dict | None:
    """Train, export and write the bundle with its report to options.out; return its manifest.

    Under torchrun (or `spawn_fit`) every process trains its share; rank 0 alone writes the bundle, and the
    other ranks return None.
    """
    check_out(Path(options.out), options.force)  # before any training time is spent
    data = load_training_data(options)
    detector = Detector.from_config(options.config, options.image_size, color=options.color, crop=options.crop)
    if not detector.fit_training_data(data, on_batch, on_epoch, log):
        return None
    manifest = detector.save(options.out, force=options.force, report=True, evaluation=data.evaluation)
    log(f"bundle written to {options.out}")
    return manifest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, options: FitOptions) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    run_fit(options, on_epoch=lambda record: say(format_epoch(record, options.config.train.epochs)), log=say)


def spawn_fit(options: FitOptions, devices: int) -> None:
    """Run the fit job in `devices` processes on this machine; rank 0 writes the bundle to options.out."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(devices, _free_port(), options), nprocs=devices, join=True)
