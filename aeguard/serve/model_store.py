"""The served model: load, check beside the old one, swap atomically; a bad bundle never replaces a good one."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aeguard import __version__
from aeguard.bundle import MANIFEST_NAME, MODEL_NAME, sha256_file
from aeguard.errors import AeguardError, BundleError, NotReadyError
from aeguard.scoring.scorer import Scorer
from aeguard.serve.metrics import Metrics

log = logging.getLogger("aeguard.serve")


@dataclass(frozen=True)
class LoadedModel:
    scorer: Scorer
    name: str
    version: str  # first 12 hex digits of model.onnx's sha256: changes whenever the graph does
    bundle_sha256: str  # sha256 of manifest.json, which itself pins every bundle file
    seconds_per_image: float  # onnxruntime time per image in a batch of 64, timed at load; picks where batches run

    @property
    def threshold(self) -> float:
        return self.scorer.threshold


def load_model(bundle: Path, name: str | None, intra_op_threads: int, provider: str = "auto") -> LoadedModel:
    # checks the bundle, probes included (a blank image; on a GPU, parity with the CPU)
    scorer = Scorer(bundle, intra_op_threads=intra_op_threads, spin=False, provider=provider)
    return LoadedModel(
        scorer=scorer,
        name=name or scorer.manifest.get("name") or Path(bundle).resolve().name,
        version=scorer.manifest["files"][MODEL_NAME]["sha256"][:12],
        bundle_sha256=sha256_file(Path(bundle) / MANIFEST_NAME),
        seconds_per_image=time_per_image(scorer),
    )


def time_per_image(scorer: Scorer, images: int = 64, repeats: int = 3) -> float:
    """Best of a few timed calls on a blank batch of the default micro-batch size (tens of milliseconds at load)."""
    batch = np.zeros((images, *scorer.input_shape), np.float32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        scorer.score(batch)
        best = min(best, time.perf_counter() - started)
    return best / images


def manifest_signature(bundle: Path) -> tuple | None:
    """Cheap change detector: identity, size and mtime of manifest.json (fit swaps whole directories)."""
    try:
        stat = (Path(bundle) / MANIFEST_NAME).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class ModelStore:
    def __init__(self, bundle: Path, name: str | None, intra_op_threads: int, metrics: Metrics, provider: str = "auto"):
        self.bundle = Path(bundle)
        self.name = name
        self.intra_op_threads = intra_op_threads
        self.provider = provider
        self.metrics = metrics
        self._current: LoadedModel | None = None
        self._reload_lock = threading.Lock()
        self.signature: tuple | None = None
        self.last_error: str | None = None  # the message of the last refused reload (logs, /admin/reload)
        self.last_error_type: str | None = None  # its kind, the part an unauthenticated probe may see

    @property
    def current(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise NotReadyError("no model is loaded")
        return model

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def reload(self, reason: str) -> LoadedModel:
        """Load the bundle beside the served model and swap; on failure keep serving the old one and raise.

        All or nothing: everything that can fail (the bundle, its probe, the values the metrics show) is
        done before the swap, and any exception, not only aeguard's, is a refused reload that is counted,
        logged and shown by the readiness endpoint. It is raised as a BundleError.
        """
        with self._reload_lock:
            signature = manifest_signature(self.bundle)
            try:
                candidate = load_model(self.bundle, self.name, self.intra_op_threads, self.provider)
                validation_fpr = float(candidate.scorer.manifest["calibration"]["validation_fpr"])
            except Exception as exc:  # noqa: BLE001 - see the docstring
                error = (
                    exc
                    if isinstance(exc, AeguardError)
                    else BundleError(f"{self.bundle}: cannot load the bundle ({type(exc).__name__}: {exc})")
                )
                self.signature = signature  # do not retry the same broken files on every poll
                self.last_error = str(error)
                self.last_error_type = type(error).__name__
                self.metrics.reloads.labels(result="failure").inc()
                log.error(
                    "model reload refused",
                    extra={"fields": {"reason": reason, "error": str(error), "still_serving": self.serving_version}},
                )
                if error is exc:
                    raise
                raise error from exc
            previous = self.serving_version
            self._current = candidate  # one reference assignment: requests see the old or the new model
            self.signature = signature
            self.last_error = self.last_error_type = None
            self.metrics.reloads.labels(result="success").inc()
            self.metrics.set_model(
                candidate.name,
                candidate.version,
                candidate.bundle_sha256,
                __version__,
                candidate.scorer.provider,
                candidate.threshold,
                validation_fpr,
            )
            log.info(
                "model loaded",
                extra={
                    "fields": {
                        "reason": reason,
                        "model": candidate.name,
                        "version": candidate.version,
                        "provider": candidate.scorer.provider,
                        "previous": previous,
                    }
                },
            )
            return candidate

    def changed_on_disk(self) -> bool:
        return manifest_signature(self.bundle) != self.signature

    @property
    def serving_version(self) -> str | None:
        """Version of the model being served, None before the first successful load."""
        return self._current.version if self._current is not None else None
