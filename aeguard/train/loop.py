"""The training loop: in-memory tensors, Adam, early stopping on the validation loss."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from aeguard.config import TrainConfig  # noqa: F401 - re-exported
from aeguard.errors import UsageError
from aeguard.train.augment import augmented
from aeguard.train.distributed import DistributedContext, all_reduce_sum
from aeguard.train.objectives import objective_for, reconstruction_loss  # noqa: F401 - re-exported
from aeguard.train.precision import autocast, resolve_precision, training_memory_format


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    images_per_second: float
    seconds: float
    learning_rate: float = 0.0  # the rate this epoch trained at (config.lr_schedule)


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    stopped_early: bool = False
    device: str = "cpu"
    precision: str = "fp32"  # the arithmetic the networks trained in (train/precision.py)
    init_seed: int | None = None  # the seed the initial weights were drawn with (set by fit)
    collapse_check: dict | None = None  # the measures that tell a collapsed model (set by fit)


def format_epoch(record: EpochRecord, epochs: int) -> str:
    return (
        f"epoch {record.epoch:3d}/{epochs}  train loss {record.train_loss:.6f}  "
        f"val loss {record.val_loss:.6f}  lr {record.learning_rate:.2e}  {record.images_per_second:,.0f} img/s"
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


@torch.no_grad()
def reconstruction_spread(model: nn.Module, images: torch.Tensor, limit: int = 512) -> float:
    """How much the reconstructions vary from image to image, relative to the images themselves.

    A healthy autoencoder scores near 1. A collapsed one (every ReLU of a layer dead, or the decoder
    stuck at the data's mean grey) outputs one image for every input and scores 0: its reconstruction
    error then only measures how bright an image is. Seen with the conv backbone on MNIST digit 1 (the
    denoising model, and the conv model with code size 8): AUROC 90 where a working model gets 92-99.9.
    """
    model.eval()
    sample = images[:limit]
    inputs = sample.std(dim=0).mean()
    if len(sample) < 2 or float(inputs) == 0.0:
        return 1.0  # nothing to compare: a single image, or identical images
    return float(model(sample).std(dim=0).mean() / inputs)


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images scaled to [0, 1]; float ones as they are."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


@torch.no_grad()
def explained_variation(model: nn.Module, images: torch.Tensor, limit: int = 512) -> float:
    """1 - sum (x - r)^2 / sum (x - mean image)^2: how much better than the data's mean image the model
    reconstructs. A model that outputs the mean image for every input scores 0 however much its outputs
    jitter (the 128 px texture model that passed the spread check with 0.01 scores 0.00 here); a healthy
    one scores well above 0 (MNIST conv models: about 0.9)."""
    model.eval()
    sample = images[:limit]
    baseline = (sample - sample.mean(dim=0, keepdim=True)).pow(2).sum()
    if len(sample) < 2 or float(baseline) == 0.0:
        return 1.0
    return float(1.0 - (sample - model(sample)).pow(2).sum() / baseline)


BatchCallback = Callable[[int, int, int], None]  # (epoch, batches done, batches in epoch)
EpochCallback = Callable[[EpochRecord], None]


def train(
    model: nn.Module,
    train_images: np.ndarray,
    val_images: np.ndarray,
    config: TrainConfig,
    on_batch: BatchCallback | None = None,
    on_epoch: EpochCallback | None = None,
    distributed: DistributedContext = DistributedContext(),
    training_terms: dict | None = None,
) -> TrainResult:
    """Fit `model` to reconstruct `train_images` (float32 NCHW in [0, 1]); restores the best-validation weights.

    `training_terms` (the model config's "training" entry) adds the variant's corruption and penalties;
    the validation loss is always the plain reconstruction error of clean images.

    With a distributed context, every process runs this on the same data: each takes its share of
    one shared shuffle with batch_size / world_size images per step, so the global batch stays
    batch_size, and DistributedDataParallel averages the gradients.
    """
    if config.epochs < 1 or config.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    device = resolve_device(config.device)
    seed_everything(config.seed)
    precision = resolve_precision(config.precision, device, model)
    memory = training_memory_format(device, model, distributed.enabled)
    # Module.to takes memory_format at run time; torch's type stubs do not list it
    model.to(device, memory_format=memory)  # type: ignore[call-overload]
    # The whole normal set lives on the device: no loader, no per-item Python work. Folders of 8-bit images
    # stay uint8 there (a quarter of float32's memory: 400 RGB crops of 256 px are 79 MB, not 315 MB) and
    # each batch is scaled as it is taken.
    train_x = torch.from_numpy(np.ascontiguousarray(train_images)).to(device)
    val_x = as_float(torch.from_numpy(np.ascontiguousarray(val_images)).to(device))
    world, rank = distributed.world_size, distributed.rank
    objective = objective_for(model, training_terms, config.seed)
    network: nn.Module = objective  # what the steps run: the objective, or DDP around it
    if distributed.enabled:
        network = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    # These models are small enough that a CUDA step is bound by kernel launches, not arithmetic: the
    # fused Adam (one kernel for all parameters) trains 1.4-1.6x faster there, and bf16 autocast was slower
    # (its casts add launches), so training on CUDA stays fp32 (measured on an H100: cuda_step_variants).
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, fused=device.type == "cuda")
    schedule = None
    if config.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)  # the same shuffle on every rank
    # its own draws, so that turning augmentation on leaves the shuffle as it was
    augment_generator = torch.Generator(device="cpu").manual_seed(config.seed + 1)
    per_rank = len(train_x) // world  # equal shares, so every rank takes the same number of steps
    step = max(1, config.batch_size // world)
    n_batches = (per_rank + step - 1) // step
    result = TrainResult(device=str(device), precision=precision)
    best_state = copy.deepcopy(model.state_dict())
    stale_epochs = 0
    for epoch in range(1, config.epochs + 1):
        network.train()
        started = time.perf_counter()
        order = torch.randperm(len(train_x), generator=generator)[: per_rank * world][rank::world].to(device)
        # Summed on the device so the loop never waits on a per-batch .item().
        running = torch.zeros((), device=device)
        for index in range(n_batches):
            batch = augmented(
                as_float(train_x[order[index * step : (index + 1) * step]]), config.augment, augment_generator
            )
            with autocast(precision, device):  # the forward pass; the objective computes its loss in fp32
                loss = network(batch.contiguous(memory_format=memory))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach() * len(batch)
            if on_batch is not None:
                on_batch(epoch, index + 1, n_batches)
        train_loss = float(all_reduce_sum(running)) / (per_rank * world)
        seconds = time.perf_counter() - started
        # every rank holds the same weights, so every rank computes the same loss and stops together
        val_loss = objective.validation_loss(val_x)  # the plain reconstruction error, or draem's own
        rate = optimizer.param_groups[0]["lr"]
        record = EpochRecord(epoch, train_loss, val_loss, per_rank * world / seconds, seconds, rate)
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if schedule is not None:
            schedule.step()
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
            stale_epochs = 0
        else:
            stale_epochs += 1
            if stale_epochs >= config.patience:
                result.stopped_early = True
                break
    model.load_state_dict(best_state)
    # the standard layout again, so the weights saved and exported are laid out as every other model's
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    model.eval()
    return result
