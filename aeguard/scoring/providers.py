"""Which onnxruntime execution provider scores: `--provider auto|cpu|cuda|tensorrt`.

A GPU session is only trusted after it agrees with the CPU session, which is the one the bundle's
torch parity was checked against at export: `check_provider_parity` runs a short probe on both.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import numpy as np
import onnxruntime as ort

from aeguard.errors import BundleError, UsageError

log = logging.getLogger("aeguard")

ProviderName = Literal["auto", "cpu", "cuda", "tensorrt"]
PROVIDER_NAMES: tuple[str, ...] = get_args(ProviderName)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# What each choice asks onnxruntime for, first choice first; CPU always last, for the nodes a GPU
# provider does not implement.
_CHAINS = {"cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TENSORRT, CUDA, CPU]}
GPU_HINT = (
    "install onnxruntime-gpu in place of onnxruntime on a machine with CUDA: "
    "pip install 'aeguard[gpu]' && pip uninstall -y onnxruntime && pip install --force-reinstall onnxruntime-gpu"
)

# GPU kernels sum in other orders than the CPU's (and may use TF32), so scores cannot be expected to match
# bit for bit (not measured here: no GPU). A thousandth of the threshold still keeps every verdict that is
# not within that distance of it.
PARITY_RTOL = 1e-3
PARITY_PROBE_IMAGES = 4


def execution_providers(provider: str, available: list[str] | None = None) -> list[str]:
    """The onnxruntime provider list for a choice; `auto` is CUDA when the installed onnxruntime offers it."""
    if provider not in PROVIDER_NAMES:
        raise UsageError(f"--provider must be one of {', '.join(PROVIDER_NAMES)}, got {provider!r}")
    offered = ort.get_available_providers() if available is None else available
    if provider == "auto":
        return _CHAINS["cuda"] if CUDA in offered else _CHAINS["cpu"]
    chain = _CHAINS[provider]
    if chain[0] not in offered:
        clash = " (onnxruntime and onnxruntime-gpu are both installed, and the CPU build's files won)"
        raise UsageError(
            f"--provider {provider}: this onnxruntime offers only {', '.join(offered)}"
            + (clash if _both_builds_installed() else "")
            + f"; {GPU_HINT}"
        )
    return chain


def _both_builds_installed() -> bool:
    """Both wheels write the one `onnxruntime` package; whichever was installed last decides what it offers."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("onnxruntime")
        distribution("onnxruntime-gpu")
    except PackageNotFoundError:
        return False
    return True


def short_name(provider: str) -> str:
    """CUDAExecutionProvider -> cuda: the name summaries, metadata and metrics show."""
    names = {chain[0]: name for name, chain in _CHAINS.items()}
    return names.get(provider, provider.removesuffix("ExecutionProvider"))


def check_session_provider(session: ort.InferenceSession, requested: list[str], choice: str) -> str:
    """The provider the session really runs on; an explicit GPU choice onnxruntime fell back from is an error.

    onnxruntime-gpu without a working CUDA (no driver, missing cuDNN) does not fail: it logs an error and
    opens a CPU session. `auto` accepts that, with a warning; `cuda` and `tensorrt` were asked for by name.
    """
    running = session.get_providers()[0]
    if running != requested[0]:
        message = f"onnxruntime could not start {requested[0]} and runs on {running} instead"
        if choice != "auto":
            raise UsageError(f"--provider {choice}: {message}; check the CUDA driver and libraries ({GPU_HINT})")
        log.warning("%s (--provider auto)", message)
    return short_name(running)


def probe_images(shape: tuple[int, int, int], count: int = PARITY_PROBE_IMAGES) -> np.ndarray:
    """A blank image and smooth random ones: fixed, so every load probes the same inputs."""
    rng = np.random.default_rng(20)
    channels, height, width = shape
    coarse = rng.random((count - 1, channels, 4, 4), dtype=np.float32)
    rows = np.linspace(0, 3, height).round().astype(int)
    cols = np.linspace(0, 3, width).round().astype(int)
    smooth = coarse[:, :, rows][:, :, :, cols]
    return np.concatenate([np.zeros((1, *shape), np.float32), smooth])


def check_provider_parity(candidate: np.ndarray, reference: np.ndarray, threshold: float, provider: str) -> float:
    """Refuse a provider whose probe scores differ from the CPU's by more than PARITY_RTOL of the threshold."""
    diff = float(np.max(np.abs(candidate.astype(np.float64) - reference.astype(np.float64)), initial=0.0))
    tolerance = PARITY_RTOL * max(abs(threshold), float(np.max(np.abs(reference), initial=0.0)))
    if not np.isfinite(candidate).all() or diff > tolerance:
        raise BundleError(
            f"scores on {provider} differ from the CPU's by {diff:.3g} on {len(reference)} probe images "
            f"(tolerance {tolerance:.3g}); score with --provider cpu"
        )
    return diff
