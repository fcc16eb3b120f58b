"""ONNX export with the score inside the graph, and the torch-vs-onnxruntime parity check."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from aeguard.train.models import build_model

from aeguard.artifact import WEIGHTS_NAME, read_manifest
from aeguard.errors import BundleError, ParityError
from aeguard.runtime import ERROR_MAP_OUTPUT, RECONSTRUCTION_OUTPUT, SCORE_OUTPUT, open_session

INPUT_NAME = "images"
OPSET = 17
PARITY_TOLERANCE = 1e-5
SCORE_DEFINITION = "mean over pixels of (image - reconstruction)^2"


class ScoringGraph(nn.Module):
    """The autoencoder plus its scoring step, so every runtime computes the same score."""

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reconstruction = self.autoencoder(images)
        error_map = (images - reconstruction) ** 2
        return error_map.mean(dim=(1, 2, 3)), error_map, reconstruction


def cpu_scoring_graph(model: nn.Module) -> ScoringGraph:
    """A float32 CPU copy in eval mode, whatever device and precision the model trained with."""
    return ScoringGraph(copy.deepcopy(model).float().cpu().eval())


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: Path) -> None:
    """Write model + score to ONNX with a dynamic batch axis, then run onnx.checker on it."""
    graph = cpu_scoring_graph(model)
    example = torch.rand(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[SCORE_OUTPUT, ERROR_MAP_OUTPUT, RECONSTRUCTION_OUTPUT],
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, SCORE_OUTPUT, ERROR_MAP_OUTPUT, RECONSTRUCTION_OUTPUT)},
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


@torch.no_grad()
def parity_max_abs_diff(model: nn.Module, onnx_path: Path, images: np.ndarray) -> dict:
    """Largest absolute difference between torch and onnxruntime on the score and the error map."""
    graph = cpu_scoring_graph(model)
    images = np.ascontiguousarray(images, dtype=np.float32)
    torch_score, torch_map, _ = graph(torch.from_numpy(images))
    session = open_session(onnx_path)
    ort_score, ort_map = session.run([SCORE_OUTPUT, ERROR_MAP_OUTPUT], {INPUT_NAME: images})
    return {
        "max_abs_diff": float(np.abs(torch_score.numpy() - ort_score).max()),
        "error_map_max_abs_diff": float(np.abs(torch_map.numpy() - ort_map).max()),
        "n_images": int(len(images)),
        "tolerance": PARITY_TOLERANCE,
    }


def check_parity(parity: dict) -> None:
    worst = max(parity["max_abs_diff"], parity["error_map_max_abs_diff"])
    if worst > PARITY_TOLERANCE:
        raise ParityError(
            f"torch and onnxruntime differ by {worst:.3g} on {parity['n_images']} images "
            f"(tolerance {PARITY_TOLERANCE}); the bundle was not written"
        )


def load_bundle_model(bundle_dir: Path) -> nn.Module:
    """Rebuild a bundle's torch model from its manifest config and weights (weights_only: no arbitrary unpickling)."""
    manifest = read_manifest(bundle_dir)
    model = build_model(manifest["model"])
    try:
        state = torch.load(Path(bundle_dir) / WEIGHTS_NAME, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # torch raises several unrelated types for bad or foreign files
        raise BundleError(f"cannot load {Path(bundle_dir) / WEIGHTS_NAME}: {exc}") from exc
    return model.eval()
