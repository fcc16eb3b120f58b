"""Multi-process training with DistributedDataParallel: under torchrun, or spawned by `aeguard fit --devices N`.

CUDA uses NCCL (one GPU per process); CPU uses gloo, so the same code runs and is tested anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from aeguard.errors import UsageError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> DistributedContext:
    """Join the process group torchrun (or `spawn_fit`) describes in RANK / WORLD_SIZE / MASTER_*."""
    context = DistributedContext(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    )
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(context.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return context


def process_device(context: DistributedContext, requested: str) -> str:
    """Each process gets its own GPU (cuda:LOCAL_RANK) or the CPU."""
    if requested == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{context.local_rank}"


def check_devices(devices: int, requested: str) -> None:
    if devices < 1:
        raise UsageError(f"--devices must be at least 1, got {devices}")
    if requested != "cpu" and torch.cuda.is_available() and devices > torch.cuda.device_count():
        raise UsageError(f"--devices {devices} but torch sees {torch.cuda.device_count()} CUDA devices")


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
