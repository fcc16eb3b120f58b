"""Training precision and layout (aeguard/train/precision.py): what auto picks, that the losses stay fp32 inside
an autocast region, and that a bf16 fit leaves the fp32, standard-layout weights every bundle is exported from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aeguard.cli.main import app
from aeguard.config import ConfigError, TrainConfig
from aeguard.train import precision
from aeguard.train.loop import train
from aeguard.train.models import build_model, default_config
from aeguard.train.objectives import DraemObjective
from aeguard.train.precision import autocast, resolve_precision, training_memory_format

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device name: no GPU is needed to build one


def draem(size: int = 16, channels: int = 3):
    torch.manual_seed(0)
    return build_model(default_config("draem", channels, size, size))


def test_auto_is_bf16_only_for_draem_on_a_cpu_that_computes_bf16_natively(monkeypatch):
    conv = build_model(default_config("conv", 1, 28, 28))
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)
    assert resolve_precision("auto", CPU, draem()) == "bf16"
    assert resolve_precision("auto", CPU, conv) == "fp32"  # the MNIST models as their benchmark measured them
    assert resolve_precision("auto", CUDA, draem()) == "fp32"  # bf16 was slower there (cuda_step_variants)
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)  # bf16 would be emulated: not timed, so fp32
    assert resolve_precision("auto", CPU, draem()) == "fp32"
    for asked in ("fp32", "bf16"):  # an explicit choice is taken as it is, on any device and model
        assert {resolve_precision(asked, device, model) for device in (CPU, CUDA) for model in (conv, draem())} == {
            asked
        }


def test_channels_last_only_for_draem_on_the_cpu():
    assert training_memory_format(CPU, draem()) == torch.channels_last
    assert training_memory_format(CPU, build_model(default_config("conv", 1, 28, 28))) == torch.contiguous_format
    assert training_memory_format(CUDA, draem()) == torch.contiguous_format
    assert training_memory_format(CPU) == torch.channels_last  # no model: the rotation classifier's rule
    assert training_memory_format(CPU, draem(), distributed=True) == torch.contiguous_format


def test_an_unknown_precision_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        TrainConfig(precision="fp16")
    result = CliRunner().invoke(app, ["fit", "--precision", "fp16", "--out", "never"])
    assert result.exit_code == 2 and "precision must be one of auto, fp32, bf16" in result.output


def test_draems_loss_is_computed_in_fp32_inside_an_autocast_region(monkeypatch):
    """Only the networks run in bf16: the same restoration and logits give the same loss with autocast on or
    off. Computed under autocast, the SSIM's smoothing matrices would multiply in bf16, whose squared-mean
    differences cancel to noise (about 1e-3 here)."""
    model = draem()
    objective = DraemObjective(model)
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    restored = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    logits = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(model, "forward", lambda x: restored)
    monkeypatch.setattr(model, "defect_logits", lambda image, restoration: logits)
    plain = objective.loss(images, torch.Generator().manual_seed(0))
    with autocast("bf16", CPU):
        mixed = objective.loss(images, torch.Generator().manual_seed(0))
    assert mixed.dtype == torch.float32
    assert float(mixed) == pytest.approx(float(plain), abs=1e-6)


def test_the_objective_keeps_its_ssim_matrices_where_the_model_is():
    """The loop builds the objective after moving the model to its device; the SSIM's band matrices must follow,
    or a CUDA fit of draem fails at its first step (the meta device stands in for a GPU here)."""
    model = draem().to("meta")
    objective = DraemObjective(model)
    assert {buffer.device.type for buffer in objective.ssim.buffers()} == {"meta"}


def discs(count: int, size: int = 16) -> np.ndarray:
    """uint8 (count, 3, size, size): a coloured disc at a random place on a dark ground, learnt in a few epochs."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((count, 3, size, size), np.uint8)
    for index in range(count):
        cy, cx = rng.uniform(4, size - 4, size=2)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < 12
        out[index, :, inside] = rng.integers(120, 256, size=3)
    return out


def test_a_bf16_fit_trains_draem_and_leaves_fp32_weights_in_the_standard_layout():
    images = discs(40)
    model = draem()
    config = TrainConfig(epochs=4, batch_size=8, device="cpu", precision="bf16", learning_rate=3e-3)
    result = train(model, images[:32], images[32:], config)
    assert result.precision == "bf16"
    losses = [record.val_loss for record in result.history]
    assert all(np.isfinite(losses)) and min(losses[1:]) < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(tensor.is_contiguous() for tensor in model.state_dict().values())  # not channels-last


def disc_folder(folder: Path, count: int = 60) -> Path:
    """A folder of `count` PNGs of discs(): what a draem fit of a few epochs on 16 px learns."""
    folder.mkdir()
    for index, image in enumerate(discs(count)):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{index}.png")
    return folder


def test_fit_records_the_precision_it_resolved_to(tmp_path, monkeypatch):
    folder = disc_folder(tmp_path / "images")
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)
    runs = {"auto": "bf16", "fp32": "fp32"}
    for asked, resolved in runs.items():
        out = tmp_path / asked
        args = ["fit", "--data", str(folder), "--epochs", "3", "--device", "cpu", "--precision", asked]
        result = CliRunner().invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        training = json.loads((out / "manifest.json").read_text())["training"]
        assert (training["config"]["precision"], training["precision"]) == (asked, resolved)
