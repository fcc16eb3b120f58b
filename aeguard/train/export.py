"""ONNX export with the score inside the graph, and the torch-vs-onnxruntime parity check."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import TypeGuard

import numpy as np
import onnx
import torch

from aeguard.bundle import WEIGHTS_NAME, read_manifest
from aeguard.errors import BundleError, ParityError
from aeguard.scoring.scorer import (
    CODE_OUTPUT,
    ERROR_MAP_OUTPUT,
    RECONSTRUCTION_OUTPUT,
    SCORE_OUTPUT,
    float_batch,
    open_session,
)
from aeguard.train.draem import DraemScoringGraph
from aeguard.train.models import backbone_of, build_model
from aeguard.train.rotation import RotationHead
from aeguard.train.scoring import ScoringGraph, score_config

AnyScoringGraph = ScoringGraph | DraemScoringGraph  # what goes to ONNX: an autoencoder's, or draem's

INPUT_NAME = "images"
OUTPUTS = (SCORE_OUTPUT, ERROR_MAP_OUTPUT, RECONSTRUCTION_OUTPUT, CODE_OUTPUT)
OPSET = 17
PARITY_TOLERANCE = 1e-5  # on the score, for every score function
# ... times the largest score when that is above 1: float32 keeps about 7 digits of a score of 20.
RELATIVE_ABOVE = 1.0
# A standardised score (--rotation) is in held-out standard deviations: (s - mean) / std turns the float32
# rounding of a score s with std << s into noise of 1e-6 s / std (measured 1e-4 for an untrained model whose
# held-out scores barely vary). A thousandth of a standard deviation moves no verdict.
STANDARDISED_TOLERANCE = 1e-3
# The SSIM map is a ratio of local moments computed as E[x^2] - E[x]^2: float32 cancellation in
# bright areas turns rounding-order differences between two correct runtimes into ~1e-4 per pixel
# (measured 4e-5 on 512 MNIST images). Averaged into the score they stay near 1e-7.
ERROR_MAP_TOLERANCE = {"ssim": 1e-3}


def cpu_scoring_graph(graph: AnyScoringGraph) -> AnyScoringGraph:
    """A float32 CPU copy in eval mode, whatever device and precision the model trained with."""
    return copy.deepcopy(graph).float().cpu().eval()


def export_onnx(graph: AnyScoringGraph, input_shape: tuple[int, int, int], path: Path) -> None:
    """Write model + score to ONNX with a dynamic batch axis, then run onnx.checker on it."""
    graph = cpu_scoring_graph(graph)
    example = torch.rand(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUTS)},
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


@torch.no_grad()
def parity_max_abs_diff(graph: AnyScoringGraph, onnx_path: Path, images: np.ndarray) -> dict:
    """Largest absolute difference between torch and onnxruntime on the score and the error map."""
    graph = cpu_scoring_graph(graph)
    images = float_batch(images)
    torch_score, torch_map, _, _ = graph(torch.from_numpy(images))
    session = open_session(onnx_path)
    ort_score, ort_map = session.run([SCORE_OUTPUT, ERROR_MAP_OUTPUT], {INPUT_NAME: images})
    largest = float(np.abs(torch_score.numpy()).max(initial=0.0))
    return {
        "max_abs_diff": float(np.abs(torch_score.numpy() - ort_score).max()),
        "error_map_max_abs_diff": float(np.abs(torch_map.numpy() - ort_map).max()),
        "n_images": int(len(images)),
        "tolerance": max(
            PARITY_TOLERANCE * max(RELATIVE_ABOVE, largest), STANDARDISED_TOLERANCE if standardised(graph) else 0.0
        ),
        "error_map_tolerance": ERROR_MAP_TOLERANCE.get(score_function(graph), PARITY_TOLERANCE),
    }


def standardised(graph) -> TypeGuard[ScoringGraph]:
    """Whether the graph's score is z-scored (a rotation head beside the reconstruction)."""
    return isinstance(graph, ScoringGraph) and graph.rotation is not None


def score_function(graph) -> str:
    return graph.error_map.function if isinstance(graph, ScoringGraph) else "segmentation"


def check_parity(parity: dict) -> None:
    map_tolerance = parity.get("error_map_tolerance", PARITY_TOLERANCE)
    for what, diff, tolerance in (
        ("scores", parity["max_abs_diff"], parity.get("tolerance", PARITY_TOLERANCE)),
        ("error maps", parity["error_map_max_abs_diff"], map_tolerance),
    ):
        if diff > tolerance:
            raise ParityError(
                f"torch and onnxruntime {what} differ by {diff:.3g} on {parity['n_images']} images "
                f"(tolerance {tolerance}); the bundle was not written"
            )


def scoring_graph(
    model_config: dict, score: dict | None, members: list | None = None, rotation: RotationHead | None = None
) -> AnyScoringGraph:
    """The graph a manifest describes: `ensemble` members of the model, scored by `score` (mse if absent);
    with a rotation entry in `score`, the rotation head too (a fresh one unless given)."""
    if members is None:
        members = [build_model(model_config) for _ in range(int(model_config.get("ensemble", 1)))]
    score = score or {}
    if backbone_of(model_config) == "draem":
        return DraemScoringGraph(members, score)
    config = score_config(
        score.get("function", "mse"), score.get("sigma"), score.get("beta", 1.0), score.get("knn", 0), score.get("top")
    )
    if config.get("knn"):
        config["references"] = int(score.get("references") or 1)  # how many codes the saved weights hold
    if not score.get("rotation"):
        rotation = None
    elif rotation is None:
        rotation = RotationHead(model_config["channels"])
    return ScoringGraph(members, config, model_config["channels"], rotation)


def load_bundle_graph(bundle_dir: Path) -> AnyScoringGraph:
    """Rebuild a bundle's torch graph from its manifest and weights (weights_only: no arbitrary unpickling)."""
    manifest = read_manifest(bundle_dir)
    graph = scoring_graph(manifest["model"], manifest.get("score"))
    try:
        state = torch.load(Path(bundle_dir) / WEIGHTS_NAME, map_location="cpu", weights_only=True)
        if not any(key.startswith("members.") for key in state):
            state = {f"members.0.{key}": value for key, value in state.items()}  # single-model bundles before 0.2
        graph.load_state_dict(state)
    except Exception as exc:  # torch raises several unrelated types for bad or foreign files
        raise BundleError(f"cannot load {Path(bundle_dir) / WEIGHTS_NAME}: {exc}") from exc
    return graph.eval()
