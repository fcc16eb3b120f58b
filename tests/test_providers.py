"""--provider auto|cpu|cuda|tensorrt: resolution, fallbacks, and the parity probe against the CPU session.

This machine's onnxruntime offers only the CPU; a GPU build is simulated where a test says so, and the
probe itself runs for real (a CPU session standing in for the GPU one).
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from aeguard.cli.main import app
from aeguard.errors import BundleError, UsageError
from aeguard.scoring import providers
from aeguard.scoring.providers import CPU, CUDA, TENSORRT, check_provider_parity, execution_providers, probe_images
from aeguard.scoring.scorer import Scorer
from tests.bundles import tiny_bundle


def test_auto_takes_cuda_only_when_onnxruntime_offers_it():
    assert execution_providers("auto", [CPU]) == [CPU]
    assert execution_providers("auto", [TENSORRT, CUDA, CPU]) == [CUDA, CPU]
    assert execution_providers("cpu", [CUDA, CPU]) == [CPU]
    assert execution_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]
    assert execution_providers("tensorrt", [TENSORRT, CUDA, CPU]) == [TENSORRT, CUDA, CPU]


def test_a_gpu_provider_onnxruntime_does_not_offer_is_a_usage_error():
    with pytest.raises(UsageError, match="offers only AzureExecutionProvider, CPUExecutionProvider.*onnxruntime-gpu"):
        execution_providers("cuda", ["AzureExecutionProvider", CPU])
    with pytest.raises(UsageError, match="--provider tensorrt"):
        execution_providers("tensorrt", [CUDA, CPU])
    with pytest.raises(UsageError, match="one of auto, cpu, cuda, tensorrt"):
        execution_providers("gpu", [CPU])


def test_scorer_on_this_machine_runs_on_the_cpu(tmp_path):
    bundle = tiny_bundle(tmp_path / "b")
    scorer = Scorer(bundle)  # auto
    assert scorer.provider == "cpu" and scorer.provider_parity is None
    assert scorer.session.get_providers() == [CPU]
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        Scorer(bundle, provider="cuda")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_gpu_session_onnxruntime_fell_back_from(tmp_path, monkeypatch, caplog):
    """onnxruntime-gpu without a working CUDA opens a CPU session; auto says so, an explicit cuda refuses."""
    bundle = tiny_bundle(tmp_path / "b")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with caplog.at_level(logging.WARNING, logger="aeguard"):
        scorer = Scorer(bundle, provider="auto")
    assert scorer.provider == "cpu" and scorer.provider_parity is None
    assert "could not start CUDAExecutionProvider" in caplog.text
    with pytest.raises(UsageError, match="--provider cuda: onnxruntime could not start CUDAExecutionProvider"):
        Scorer(bundle, provider="cuda")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_gpu_session_is_probed_against_the_cpu(tmp_path, monkeypatch):
    bundle = tiny_bundle(tmp_path / "b", size=(20, 24), channels=3)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    # the session is the CPU's (no GPU here), taken for CUDA's: the probe compares two real sessions
    monkeypatch.setattr("aeguard.scoring.scorer.check_session_provider", lambda session, requested, choice: "cuda")
    scorer = Scorer(bundle, provider="cuda")
    assert scorer.provider == "cuda"
    assert scorer.provider_parity == 0.0


def test_the_parity_probe_refuses_scores_that_drift_or_are_not_finite():
    reference = np.array([0.02, 0.5, 0.7, 0.9], np.float32)
    threshold = 0.05
    assert check_provider_parity(reference * (1 + 1e-5), reference, threshold, "cuda") < 1e-5
    with pytest.raises(BundleError, match="scores on cuda differ from the CPU's by 0.0045.*--provider cpu"):
        check_provider_parity(reference + np.float32(0.0045), reference, threshold, "cuda")
    with pytest.raises(BundleError, match="differ"):
        check_provider_parity(np.array([0.02, np.nan, 0.7, 0.9], np.float32), reference, threshold, "cuda")


def test_probe_images_are_fixed_and_span_the_range():
    first, second = probe_images((3, 17, 9)), probe_images((3, 17, 9))
    assert first.shape == (providers.PARITY_PROBE_IMAGES, 3, 17, 9) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert not first[0].any() and 0 <= first.min() and first.max() <= 1 and first[1:].std() > 0.1


def test_score_cli_shows_and_checks_the_provider(tmp_path):
    from PIL import Image

    bundle = tiny_bundle(tmp_path / "b")
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(tmp_path / "grey.png")
    done = CliRunner().invoke(app, ["score", str(bundle), str(tmp_path / "grey.png"), "--provider", "cpu"])
    assert done.exit_code == 0, done.output
    assert "on cpu" in done.stderr
    refused = CliRunner().invoke(app, ["score", str(bundle), str(tmp_path / "grey.png"), "--provider", "cuda"])
    assert refused.exit_code == 2 and "onnxruntime-gpu" in refused.output
