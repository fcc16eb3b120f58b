"""The torch-free scorer: load a bundle, check it, score batches with onnxruntime.

Imports onnxruntime and numpy only; the CLI's score/evaluate and the daemon build on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import numpy as np
import onnxruntime as ort

from aeguard.bundle import MANIFEST_NAME, MODEL_NAME, bundle_file, read_manifest, read_plain_file
from aeguard.data.contract import Preprocessing
from aeguard.data.images import iter_image_paths, load_images, split_decoded
from aeguard.data.splits import as_model_input
from aeguard.errors import BundleError, DataNotFoundError, ModelOutputError, UsageError
from aeguard.scoring.providers import (
    CPU,
    check_provider_parity,
    check_session_provider,
    execution_providers,
    probe_images,
)
from aeguard.scoring.results import NON_FINITE_SCORE, ItemResult, is_anomalous, item_results, require_finite

SCORE_OUTPUT = "score"
ERROR_MAP_OUTPUT = "error_map"
RECONSTRUCTION_OUTPUT = "reconstruction"
CODE_OUTPUT = "code"  # the (first) model's latent code, for the latent-space plot
FILE_BATCH = 64  # images decoded and scored at a time by score_files


@dataclass
class ScoreBatch:
    scores: np.ndarray  # (N,) float32, higher = more anomalous
    error_maps: np.ndarray | None = None  # (N, C, H, W) anomaly map (draem: (N, 1, H, W), defect probability)
    reconstructions: np.ndarray | None = None  # (N, C, H, W)


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
    return ort.InferenceSession(str(model_path), sess_options=session_options(intra_op_threads, spin), providers=[CPU])


def _open(model_bytes: bytes, options: ort.SessionOptions, providers: list[str], where: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad graphs
        raise BundleError(f"onnxruntime cannot load the {MODEL_NAME} of {where}: {exc}") from None


def score_array(
    session: ort.InferenceSession, images: np.ndarray, batch_size: int = 512, output: str = SCORE_OUTPUT
) -> np.ndarray:
    """One output (the score by default) for a float32 NCHW array, run in batches to keep memory flat."""
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    input_name = session.get_inputs()[0].name
    parts = [
        session.run([output], {input_name: float_batch(images[i : i + batch_size])})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def float_batch(images: np.ndarray) -> np.ndarray:
    """Model input as float32; uint8 images (how training and evaluation sets are held) are scaled, never cast."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(images, dtype=np.float32)


MAX_INPUT_SIDE = 8192  # pixels per side of the model input; also bounds what evaluate allocates per image
MAX_CHANNELS = 4


def _finite_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _preprocessing(manifest: dict, where: str) -> Preprocessing:
    """The manifest's input spec, its types and bounds checked, as the contract the front ends decode by."""
    spec = manifest.get("input")
    if not isinstance(spec, dict):
        raise BundleError(f"{where} has no input spec (an object with channels, height and width)")
    values = [spec.get(key) for key in ("channels", "height", "width")]
    channels, height, width = values
    if not (type(channels) is int and type(height) is int and type(width) is int):  # a bool is no size
        raise BundleError(f"{where}: input channels, height and width must be integers, got {values}")
    if not (1 <= channels <= MAX_CHANNELS and 1 <= height <= MAX_INPUT_SIDE and 1 <= width <= MAX_INPUT_SIDE):
        raise BundleError(
            f"{where}: input {channels}x{height}x{width} is outside 1-{MAX_CHANNELS} channels "
            f"and 1-{MAX_INPUT_SIDE} pixels a side"
        )
    return Preprocessing.from_spec(spec, where)


def _threshold(manifest: dict, where: str) -> float:
    threshold, calibration = manifest.get("threshold"), manifest.get("calibration")
    if not _finite_number(threshold):
        raise BundleError(f"{where}: threshold {threshold!r} is not a finite number; calibrate the bundle again")
    if not (
        isinstance(calibration, dict)
        and all(_finite_number(calibration.get(k)) for k in ("target_fpr", "validation_fpr", "n_normal_validation"))
    ):
        raise BundleError(
            f"{where}: calibration is missing or incomplete (target_fpr, validation_fpr, n_normal_validation)"
        )
    return float(threshold)


class Scorer:
    """A loaded, verified bundle ready to score (N, C, H, W) float32 batches in [0, 1].

    Loading checks everything a scoring run relies on, so a bad bundle is refused here with a BundleError
    rather than failing later: the manifest's input spec, threshold and calibration, the graph's input
    shape against the spec, and a probe that the graph gives a finite score for a blank image. On a GPU
    provider (`provider`: auto, cpu, cuda or tensorrt) a second probe compares its scores with the CPU's.
    """

    def __init__(
        self,
        bundle_dir: Path,
        intra_op_threads: int = 0,
        verify: bool = True,
        spin: bool = True,
        provider: str = "auto",
    ):
        self.bundle_dir: Path | None = Path(bundle_dir)
        manifest = read_manifest(self.bundle_dir, verify=verify)
        model_bytes = read_plain_file(bundle_file(self.bundle_dir, MODEL_NAME))
        self._load(manifest, model_bytes, str(self.bundle_dir / MANIFEST_NAME), intra_op_threads, spin, provider)

    @classmethod
    def from_contents(cls, contents, intra_op_threads: int = 0, provider: str = "auto") -> Scorer:
        """A scorer of a bundle still in memory (a fitted Detector's, before or without saving it)."""
        scorer = cls.__new__(cls)
        scorer.bundle_dir = None  # nothing on disk
        scorer._load(
            contents.manifest, contents.files[MODEL_NAME], "the fitted detector", intra_op_threads, True, provider
        )
        return scorer

    def _load(
        self, manifest: dict, model_bytes: bytes, where: str, intra_op_threads: int, spin: bool, provider: str
    ) -> None:
        self.manifest = manifest
        self.preprocessing = _preprocessing(self.manifest, where)
        score = self.manifest.get("score")
        function = score.get("function") if isinstance(score, dict) else None
        # The map value at which heat maps saturate: a defect probability's 1, or a squared error of 0.25
        # (a pixel off by half the range or more)
        self.map_scale = 1.0 if function == "segmentation" else 0.25
        self.threshold = _threshold(self.manifest, where)
        requested = execution_providers(provider)
        options = session_options(intra_op_threads, spin)
        self.session = _open(model_bytes, options, requested, where)
        self.provider = check_session_provider(self.session, requested, provider)  # cpu, cuda or tensorrt
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.outputs = frozenset(o.name for o in self.session.get_outputs())
        if SCORE_OUTPUT not in self.outputs:
            raise BundleError(f"{MODEL_NAME} has no {SCORE_OUTPUT!r} output (has {sorted(self.outputs)})")
        declared = list(graph_input.shape)
        if len(declared) != 4 or any(
            isinstance(d, int) and d != want for d, want in zip(declared[1:], self.input_shape)
        ):
            raise BundleError(
                f"{MODEL_NAME} takes input {declared}, but the manifest declares "
                f"[N, {self.channels}, {self.height}, {self.width}]"
            )
        self._probe(where)
        # the largest |score difference| from the CPU session on the probe images; None on the CPU itself
        self.provider_parity: float | None = None
        if self.provider != "cpu":
            reference = _open(model_bytes, options, [CPU], where)
            images = probe_images(self.input_shape)
            self.provider_parity = check_provider_parity(
                self.score(images).scores,
                reference.run([SCORE_OUTPUT], {self.input_name: images})[0],
                self.threshold,
                self.provider,
            )

    def _probe(self, where: str) -> None:
        try:
            probe = self.score(np.zeros((1, *self.input_shape), np.float32)).scores
        except Exception as exc:  # noqa: BLE001 - any failure of the graph on a valid input is the bundle's
            raise BundleError(f"the {MODEL_NAME} of {where} fails on a blank image: {exc}") from None
        if probe.shape != (1,) or not np.isfinite(probe).all():
            raise BundleError(f"{where}: the model gives no finite score for a blank image ({probe!r})")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocessing.shape

    @property
    def channels(self) -> int:
        return self.preprocessing.channels

    @property
    def height(self) -> int:
        return self.preprocessing.height

    @property
    def width(self) -> int:
        return self.preprocessing.width

    def check_shape(self, batch: np.ndarray) -> np.ndarray:
        """The batch as an array, refused unless it is (N, C, H, W) of the model's C, H and W."""
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise UsageError(
                f"expected a batch of shape (N, {self.channels}, {self.height}, {self.width}), got {batch.shape}"
            )
        return batch

    def model_input(self, images) -> np.ndarray:
        """A caller's array in any layout as_model_input reads, as this model's (N, C, H, W) float32 batch."""
        return as_model_input(images, self.channels, (self.height, self.width))

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        return float_batch(self.check_shape(batch))

    def score(self, batch: np.ndarray, error_maps: bool = False, reconstructions: bool = False) -> ScoreBatch:
        """Score one batch; ask for error maps / reconstructions only when needed (they cost copies)."""
        batch = self.check_batch(batch)
        if len(batch) == 0:
            empty = np.zeros((0, *self.input_shape), np.float32)
            return ScoreBatch(
                np.zeros(0, np.float32), empty if error_maps else None, empty if reconstructions else None
            )
        names = [SCORE_OUTPUT]
        if error_maps:
            names.append(ERROR_MAP_OUTPUT)
        if reconstructions:
            names.append(RECONSTRUCTION_OUTPUT)
        missing = [name for name in names if name not in self.outputs]
        if missing:  # aeguard's graphs have them all; a hand-made one may not
            raise BundleError(
                f"{MODEL_NAME} has no {' or '.join(map(repr, missing))} output (has {sorted(self.outputs)})"
            )
        results = dict(zip(names, self.session.run(names, {self.input_name: batch})))
        return ScoreBatch(results[SCORE_OUTPUT], results.get(ERROR_MAP_OUTPUT), results.get(RECONSTRUCTION_OUTPUT))

    def score_many(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Scores of a large in-memory array, in batches to keep memory flat (uint8 images are scaled batch by
        batch, never all at once)."""
        return score_array(self.session, self.check_shape(images), batch_size)

    @property
    def has_codes(self) -> bool:
        return CODE_OUTPUT in self.outputs

    def codes(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Latent codes (N, latent) of bundles that export them (those from aeguard 0.2 on)."""
        return score_array(self.session, self.check_shape(images), batch_size, output=CODE_OUTPUT)

    def decision_function(self, images, batch_size: int = 512) -> np.ndarray:
        """Scores of images given as an array: (N, H, W), (N, C, H, W) or (N, H, W, C), uint8 or float in [0, 1]."""
        return self.score_many(self.model_input(images), batch_size)

    def predict(self, images, batch_size: int = 512) -> np.ndarray:
        """True where the score is above the threshold; a non-finite score raises (it is no verdict)."""
        scores = require_finite(
            self.decision_function(images, batch_size), "images", "; score them one by one to find which"
        )
        return is_anomalous(scores, self.threshold)

    def anomaly_maps(self, images) -> np.ndarray:
        """Per-pixel error maps (N, C, H, W) of the bundle's score function."""
        maps = self.score(self.model_input(images), error_maps=True).error_maps
        assert maps is not None  # score() raises for a graph without them
        return maps

    def results(self, errors: Sequence[str | None], scores: Sequence[float] | np.ndarray) -> list[ItemResult]:
        return item_results(errors, scores, self.threshold)

    def score_decoded(
        self, decoded: Sequence[np.ndarray | str], error_maps: bool = False
    ) -> tuple[list[ItemResult], list[np.ndarray | None]]:
        """The one way a front end scores a batch of decoded items: each an array (C, H, W) in [0, 1] or the
        message of why it could not be read. Returns a result per item and, if asked, each item's error map
        (None for the unreadable ones; all None when not asked)."""
        good, errors = split_decoded(decoded)
        if not good:
            return [ItemResult(error=error) for error in errors], [None] * len(decoded)
        batch = self.score(np.stack(good), error_maps=error_maps)
        maps = iter(batch.error_maps) if batch.error_maps is not None else None
        per_item = [next(maps) if maps is not None and error is None else None for error in errors]
        return self.results(errors, batch.scores), per_item

    def score_files(
        self, inputs: Sequence[str | Path], on_skip: Callable[[str], None] = lambda message: None
    ) -> np.ndarray:
        """The scores of every readable image of `inputs` (files, folders, glob patterns), in order, for a
        caller that needs numbers and no rows (calibration): an unreadable image is passed to `on_skip` and left
        out; a non-finite score, or no readable image at all, is an error."""
        paths = list(iter_image_paths(inputs))
        scores: list[float] = []
        for start in range(0, len(paths), FILE_BATCH):
            chunk = paths[start : start + FILE_BATCH]
            results, _ = self.score_decoded(load_images(chunk, self.preprocessing))
            for path, result in zip(chunk, results):
                if result.error == NON_FINITE_SCORE:
                    raise ModelOutputError(f"{path}: {NON_FINITE_SCORE}")
                if result.score is None:
                    on_skip(str(result.error))
                else:
                    scores.append(result.score)
        if not scores:
            named = ", ".join(map(str, inputs[:3])) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
            raise DataNotFoundError(f"no readable images in {named}")
        return np.asarray(scores, np.float32)


class Bundle:
    """A bundle folder, opened and verified (schema, file names, checksums): `Bundle.load(path).scorer()`."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = Path(path), manifest

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        return cls(Path(path), read_manifest(Path(path)))

    @property
    def threshold(self) -> float:
        return _threshold(self.manifest, str(self.path / MANIFEST_NAME))

    def scorer(self, intra_op_threads: int = 0) -> Scorer:
        """The torch-free scorer: decision_function / predict / anomaly_maps on arrays, score on model inputs."""
        return Scorer(self.path, intra_op_threads=intra_op_threads)

    def calibrate(
        self,
        normal,
        target_fpr: float = 0.01,
        out: str | Path | None = None,
        force: bool = False,
        on_skip: Callable[[str], None] = lambda message: None,
    ) -> Bundle:
        """Set the threshold again from normal images taken as those it will score are: an array (in
        decision_function's layouts) or image files, folders and glob patterns (a str, a Path, or a list of
        them; unreadable files are left out, each message passed to `on_skip`). Writes the bundle to `out`
        (default: in place, atomically) with the threshold that flags `target_fpr` of them, and returns it
        loaded (aeguard.scoring.calibrate). An `out` that already holds files is replaced only with `force`."""
        from aeguard.bundle import check_out
        from aeguard.scoring.calibrate import recalibrate

        if not 0.0 <= target_fpr < 1.0:  # before any image is scored
            raise UsageError(f"--target-fpr must lie in [0, 1), got {target_fpr}")

        destination = Path(out) if out is not None else self.path
        if destination.resolve() != self.path.resolve():
            check_out(destination, force)
        scorer = self.scorer()
        if isinstance(normal, (str, Path)) or (
            isinstance(normal, list) and all(isinstance(n, (str, Path)) for n in normal)
        ):
            inputs = [normal] if isinstance(normal, (str, Path)) else list(normal)
            scores = scorer.score_files(inputs, on_skip)
            source = f"{len(scores)} images of {' '.join(map(str, inputs))} (Bundle.calibrate)"
        else:
            scores = scorer.decision_function(normal)
            source = f"an array of {len(scores)} images (Bundle.calibrate)"
        recalibrate(self.path, scores, target_fpr, destination, source)
        return Bundle.load(destination)
