"""The torch-free scorer: load a bundle, check it, score batches with onnxruntime.

Imports onnxruntime and numpy only; the CLI's score/evaluate and the daemon build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from aeguard.artifact import MODEL_NAME, read_manifest
from aeguard.errors import BundleError, UsageError

SCORE_OUTPUT = "score"
ERROR_MAP_OUTPUT = "error_map"
RECONSTRUCTION_OUTPUT = "reconstruction"
CODE_OUTPUT = "code"  # the (first) model's latent code, for the latent-space plot


@dataclass
class ScoreBatch:
    scores: np.ndarray  # (N,) float32, higher = more anomalous
    error_maps: np.ndarray | None = None  # (N, 1, H, W) per-pixel squared error
    reconstructions: np.ndarray | None = None  # (N, 1, H, W)


def session_options(intra_op_threads: int = 0, spin: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads  # 0 lets onnxruntime use every core
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        # Idle pool threads spin-wait for the next call by default; in a server that shares its
        # cores with request handling, that spinning takes the CPU the event loop needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(model_path: Path, intra_op_threads: int = 0, spin: bool = True) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(model_path), sess_options=session_options(intra_op_threads, spin), providers=["CPUExecutionProvider"]
    )


def score_array(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 512,
                output: str = SCORE_OUTPUT) -> np.ndarray:
    """One output (the score by default) for a float32 NCHW array, run in batches to keep memory flat."""
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    input_name = session.get_inputs()[0].name
    parts = [
        session.run([output], {input_name: np.ascontiguousarray(images[i : i + batch_size], np.float32)})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class Scorer:
    """A loaded, verified bundle ready to score (N, 1, H, W) float32 batches in [0, 1]."""

    def __init__(self, bundle_dir: Path, intra_op_threads: int = 0, verify: bool = True, spin: bool = True):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = read_manifest(self.bundle_dir, verify=verify)
        spec = self.manifest.get("input", {})
        try:
            self.channels, self.height, self.width = int(spec["channels"]), int(spec["height"]), int(spec["width"])
            self.threshold = float(self.manifest["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{self.bundle_dir}/manifest.json lacks a valid input spec or threshold: {exc}") from exc
        try:
            self.session = open_session(self.bundle_dir / MODEL_NAME, intra_op_threads, spin)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise BundleError(f"onnxruntime cannot load {self.bundle_dir / MODEL_NAME}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        outputs = {o.name for o in self.session.get_outputs()}
        if SCORE_OUTPUT not in outputs:
            raise BundleError(f"{MODEL_NAME} has no {SCORE_OUTPUT!r} output (has {sorted(outputs)})")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise UsageError(
                f"expected a batch of shape (N, {self.channels}, {self.height}, {self.width}), got {batch.shape}"
            )
        return np.ascontiguousarray(batch, dtype=np.float32)

    def score(self, batch: np.ndarray, error_maps: bool = False, reconstructions: bool = False) -> ScoreBatch:
        """Score one batch; ask for error maps / reconstructions only when needed (they cost copies)."""
        batch = self.check_batch(batch)
        if len(batch) == 0:
            empty = np.zeros((0, *self.input_shape), np.float32)
            return ScoreBatch(np.zeros(0, np.float32), empty if error_maps else None, empty if reconstructions else None)
        names = [SCORE_OUTPUT]
        if error_maps:
            names.append(ERROR_MAP_OUTPUT)
        if reconstructions:
            names.append(RECONSTRUCTION_OUTPUT)
        results = dict(zip(names, self.session.run(names, {self.input_name: batch})))
        return ScoreBatch(results[SCORE_OUTPUT], results.get(ERROR_MAP_OUTPUT), results.get(RECONSTRUCTION_OUTPUT))

    def score_many(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Scores of a large in-memory array, in batches to keep memory flat."""
        return score_array(self.session, self.check_batch(images), batch_size)

    @property
    def has_codes(self) -> bool:
        return CODE_OUTPUT in {o.name for o in self.session.get_outputs()}

    def codes(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Latent codes (N, latent) of bundles that export them (those from aeguard 0.2 on)."""
        return score_array(self.session, self.check_batch(images), batch_size, output=CODE_OUTPUT)

    def is_anomaly(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold
