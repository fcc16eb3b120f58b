"""Tiny hand-built bundles for tests that need a loadable bundle but no training: ONNX graphs made with onnx.helper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aeguard.bundle import MANIFEST_NAME, MODEL_NAME, write_manifest


def score_graph(channels: int, height: int, width: int, kind: str = "brightness") -> onnx.ModelProto:
    """images (N, C, H, W) -> score (N,) and error_map (N, C, H, W).

    brightness: score = mean((x - 0.5)^2); nan_when_bright: score = sqrt(0.5 - mean(x)), finite for a blank
    image (so it passes the load probe) and NaN for a bright one, as a broken model would give; nan_always:
    sqrt(mean(x) - 0.5), NaN for a blank image too.
    """
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    axes = numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")
    # channel c's error counts (c + 1) / channels: a swapped channel order or layout changes the score
    weights = numpy_helper.from_array(
        (np.arange(1, channels + 1, dtype=np.float32) / channels).reshape(1, channels, 1, 1), "weights"
    )
    nodes = [
        helper.make_node("Sub", ["images", "half"], ["centred"]),
        helper.make_node("Mul", ["centred", "centred"], ["squared"]),
        helper.make_node("Mul", ["squared", "weights"], ["error_map"]),
    ]
    if kind == "brightness":
        nodes.append(helper.make_node("ReduceMean", ["error_map", "axes"], ["score"], keepdims=0))
    elif kind in ("nan_when_bright", "nan_always"):
        nodes += [
            helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=0),
            helper.make_node("Sub", ["half", "mean"] if kind == "nan_when_bright" else ["mean", "half"], ["room"]),
            helper.make_node("Sqrt", ["room"], ["score"]),
        ]
    else:
        raise ValueError(kind)
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", channels, height, width])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("error_map", TensorProto.FLOAT, ["N", channels, height, width]),
        ],
        initializer=[half, axes, weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def manifest_fields(channels: int, height: int, width: int, threshold: float) -> dict:
    return {
        "name": "tiny",
        "input": {
            "layout": "NCHW",
            "dtype": "float32",
            "channels": channels,
            "height": height,
            "width": width,
            "range": [0.0, 1.0],
        },
        "threshold": threshold,
        "calibration": {"threshold": threshold, "target_fpr": 0.01, "validation_fpr": 0.01, "n_normal_validation": 100},
    }


def tiny_bundle(
    folder: Path,
    size: tuple[int, int] = (28, 28),
    kind: str = "brightness",
    threshold: float = 0.1,
    channels: int = 1,
    **overrides,
) -> Path:
    """A loadable bundle at `folder`; `overrides` replace manifest fields (the checksums stay right)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(score_graph(channels, *size, kind), str(folder / MODEL_NAME))
    write_manifest(folder, {**manifest_fields(channels, *size, threshold), **overrides}, [MODEL_NAME])
    return folder


def edit_manifest(bundle: Path, change) -> None:
    """Apply `change(manifest)` to the manifest on disk, checksums untouched."""
    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
