"""How a training step runs on its device: the arithmetic (fp32 or bf16 autocast) and the tensors' memory layout.

Both are chosen where they were measured to be faster at no loss of quality, and left alone elsewhere:
- draem on a CPU with native bf16 (AMX or AVX512-BF16, as oneDNN uses them) trains in bf16 autocast with
  channels-last tensors: 1.39x (128 px) and 1.51x (256 px) the fp32 standard-layout step of the texture
  model, 1.19x / 1.22x the fp32 channels-last one (benchmarks/results/precision_step.md; a whole fit
  1.14-1.15x), and over five draws of the texture benchmark its figures held
  (image / pixel AUROC / AUPRO 0.980 / 0.997 / 0.983 against fp32's 0.980 / 0.997 / 0.985; textures.md);
- draem on any other CPU keeps fp32 (bf16 without those units is emulated: not timed here) but still channels-last
  (in one process: the loop keeps the standard layout under DistributedDataParallel);
- on CUDA everything stays fp32 and contiguous: bf16 autocast was slower for the small models at 28 px
  (benchmarks/results/cuda_step_variants.md); draem's variants at 128 and 256 px are timed by
  `python -m benchmarks.precision_step --device cuda` (in benchmarks/gpu_checks.sh), not yet run on a GPU;
- the MNIST models keep fp32 and the contiguous layout on every device, as the one-class benchmark measured them.

The forward pass runs under autocast (the networks, and the colour mix of draem's synthetic defects, an einsum,
which autocast also takes to bf16); the losses are computed in fp32 (the SSIM loss subtracts squared means,
which bf16's 8-bit mantissa would cancel to noise); the weights and optimiser state stay fp32; and the
validation loss that early stopping watches is computed in fp32 throughout.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch import nn

from aeguard.train.draem import Draem


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16). The probes are private to torch,
    so a torch without them counts as no."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(requested: str, device: torch.device, model: nn.Module) -> Literal["fp32", "bf16"]:
    """The arithmetic a training run uses: `requested` unless it is auto, which picks as the module doc says."""
    if requested == "auto":
        requested = "bf16" if device.type == "cpu" and isinstance(model, Draem) and native_cpu_bf16() else "fp32"
    return "bf16" if requested == "bf16" else "fp32"


def training_memory_format(
    device: torch.device, model: nn.Module | None = None, distributed: bool = False
) -> torch.memory_format:
    """Channels-last for convolutions on the CPU, where oneDNN runs them faster that way (the rotation
    classifier's step 1.31-1.38x, benchmarks/results/rotation_step.md; draem's 1.17-1.23x in fp32,
    precision_step.md); the same function up to float rounding. With a model given, only for draem: the MNIST
    models keep the layout their benchmark was measured with. Untimed on CUDA, so left as it is there. Not
    under DistributedDataParallel, which wants each gradient laid out as its parameter: draem's 1 x 1 head (a
    view in draem.pointwise) gets standard strides, and DDP warned at every step."""
    if device.type != "cpu" or distributed or (model is not None and not isinstance(model, Draem)):
        return torch.contiguous_format
    return torch.channels_last


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a network's forward pass runs in: bf16 autocast, or nothing."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """The context a loss is computed in: autocast off, whatever encloses it."""
    return torch.autocast(device_type=device.type, enabled=False)
