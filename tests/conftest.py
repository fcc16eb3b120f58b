"""Shared fixtures: where the real IDX files are, and small generated data for unit tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


def real_data_dir() -> Path | None:
    value = os.environ.get("AEGUARD_DATA_DIR")
    if not value:
        return None
    path = Path(value).resolve()
    return path if (path / "mnist" / "t10k-images-idx3-ubyte.gz").is_file() else None


# Modules that start processes, build environments or fuzz for long: left out of the fast lane (make test-fast).
SLOW_MODULES = {"test_slim_install", "test_api_fuzz", "test_deploy", "test_distributed", "test_serve_lifecycle"}


def pytest_collection_modifyitems(items):
    """Mark the end-to-end tests (those reading the real MNIST files) and the slow modules, so the edit-test
    loop can leave them out with -m "not e2e and not slow"."""
    for item in items:
        if "data_dir" in item.fixturenames or "mnist_bundle" in item.fixturenames:
            item.add_marker(pytest.mark.e2e)
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real MNIST / Fashion-MNIST files. Missing data fails the run in CI and skips elsewhere."""
    path = real_data_dir()
    if path is None:
        message = "AEGUARD_DATA_DIR does not point at the MNIST / Fashion-MNIST files"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory, request):
    """No test may download, and none sees the developer's own cache."""
    monkeypatch.setenv("AEGUARD_NO_DOWNLOAD", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    resolved = real_data_dir()
    if resolved is not None:
        monkeypatch.setenv("AEGUARD_DATA_DIR", str(resolved))


@pytest.fixture
def blobs() -> np.ndarray:
    """64 small 'normal' images: a bright disc at varying places, float32 NCHW in [0, 1]."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:12, :12]
    images = []
    for _ in range(64):
        cy, cx = rng.uniform(4, 8, size=2)
        images.append(((yy - cy) ** 2 + (xx - cx) ** 2 < 9).astype(np.float32))
    return np.stack(images)[:, None]


@pytest.fixture(scope="session")
def mnist_bundle(data_dir, tmp_path_factory) -> Path:
    """A conv bundle fitted through the CLI on real MNIST digit 0 (short training)."""
    from typer.testing import CliRunner

    from aeguard.cli.main import app

    out = tmp_path_factory.mktemp("runs") / "mnist0"
    result = CliRunner().invoke(
        app,
        [
            "fit",
            "--dataset",
            "mnist",
            "--normal",
            "0",
            "--model",
            "conv",
            "--epochs",
            "3",
            "--data-dir",
            str(data_dir),
            "--no-download",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return out
