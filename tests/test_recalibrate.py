"""`aeguard calibrate` and Bundle.calibrate: the threshold set again from normal images, the model untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aeguard.bundle import MODEL_NAME, VALIDATION_SCORES_NAME, read_manifest
from aeguard.cli.main import app
from aeguard.errors import ModelOutputError, UsageError
from aeguard.scoring.scorer import Bundle
from tests.bundles import edit_manifest, tiny_bundle


def levels(*values: float) -> np.ndarray:
    """Grey 8 x 8 images, one per value; the tiny bundle scores each (value - 0.5)^2."""
    return np.stack([np.full((1, 8, 8), v, np.float32) for v in values])


def test_an_array_sets_the_threshold_and_the_model_is_copied_byte_for_byte(tmp_path):
    path = tiny_bundle(tmp_path / "b", (8, 8), threshold=0.001)
    edit_manifest(path, lambda m: m.update(metrics={"auroc": 0.9}, threshold_warning="old"))
    (path / "report").mkdir()
    before = (path / MODEL_NAME).read_bytes()
    normal = levels(*np.linspace(0.3, 0.7, 201))  # scores 0 to 0.04
    bundle = Bundle.load(path).calibrate(normal, target_fpr=0.05)
    expected = np.sort((np.linspace(0.3, 0.7, 201) - 0.5) ** 2)[-1 - 10]  # 10 of 201 above it
    assert bundle.threshold == pytest.approx(expected, rel=1e-5)
    assert bundle.scorer().predict(normal).sum() == 10
    manifest = read_manifest(path)  # checksums verified
    assert (path / MODEL_NAME).read_bytes() == before
    assert manifest["calibration"]["n_normal_validation"] == 201 and manifest["calibration"]["target_fpr"] == 0.05
    assert manifest["recalibrated"]["previous_threshold"] == 0.001
    assert manifest["metrics"] is None and "threshold_warning" not in manifest  # measured at the old threshold
    assert not (path / "report").exists()
    saved = np.load(path / VALIDATION_SCORES_NAME)
    assert saved.shape == (201,) and saved.max() == pytest.approx(0.04, rel=1e-5)


def test_another_out_is_written_beside_and_replaced_only_with_force(tmp_path):
    source = tiny_bundle(tmp_path / "b", (8, 8), threshold=0.001)
    copy = Bundle.load(source).calibrate(levels(0.4, 0.5, 0.6), target_fpr=0.0, out=tmp_path / "c")
    assert copy.threshold == pytest.approx(0.01) and Bundle.load(source).threshold == 0.001
    with pytest.raises(UsageError, match="already holds files"):
        Bundle.load(source).calibrate(levels(0.5), out=tmp_path / "c")
    assert Bundle.load(source).calibrate(levels(0.5), out=tmp_path / "c", force=True).threshold == 0.0


def test_what_cannot_set_a_threshold_is_refused_and_changes_nothing(tmp_path):
    path = tiny_bundle(tmp_path / "b", (8, 8), kind="nan_when_bright", threshold=0.3)
    before = (path / "manifest.json").read_bytes()
    with pytest.raises(ModelOutputError, match="non-finite score"):
        Bundle.load(path).calibrate(levels(0.2, 0.9))  # the bright one scores NaN
    with pytest.raises(UsageError, match="target-fpr must lie in"):
        Bundle.load(path).calibrate(levels(0.2), target_fpr=1.0)
    assert (path / "manifest.json").read_bytes() == before


def test_the_command_reads_folders_skips_what_it_cannot_read_and_says_what_changed(tmp_path):
    path = tiny_bundle(tmp_path / "b", (8, 8), threshold=0.001)
    folder = tmp_path / "normal"
    folder.mkdir()
    for i, value in enumerate(range(80, 176)):  # 96 grey images
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(folder / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    result = CliRunner().invoke(app, ["calibrate", str(path), str(folder), "--target-fpr", "0.05"])
    assert result.exit_code == 0, result.output
    assert "broken.png: not a recognised image format" in result.output
    assert "threshold: 0.001 -> " in result.output and "of 96 normal images" in result.output
    assert "1 unreadable image skipped" in result.output
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["calibration"]["images"].startswith(f"96 images of {folder}")
    scores = np.sort(((np.arange(80, 176) / 255) - 0.5) ** 2)
    assert manifest["threshold"] == pytest.approx(scores[-1 - 4], rel=1e-4)  # floor(0.05 * 96) = 4 above it
    few = CliRunner().invoke(app, ["calibrate", str(path), str(folder / "000.png")])
    assert few.exit_code == 0 and "1.0% of 1 normal image is less than one image" in few.output
    empty = CliRunner().invoke(app, ["calibrate", str(path), str(tmp_path / "missing")])
    assert empty.exit_code == 3 and "no readable images in" in empty.output


def test_a_fitted_detector_is_calibrated_in_memory_and_saves_the_new_threshold(tmp_path):
    from aeguard import Detector
    from tests.test_api import discs

    detector = Detector(model="dense", epochs=3, batch_size=16, seed=0, device="cpu").fit(discs(60))
    fitted_threshold = detector.threshold_
    new_normal = discs(200, seed=1)
    assert detector.calibrate(new_normal, target_fpr=0.05) is detector
    scores = detector.decision_function(new_normal)
    assert detector.predict(new_normal).sum() == 10 and detector.threshold_ != fitted_threshold
    assert detector.threshold_ == pytest.approx(np.sort(scores)[-11])
    assert detector.calibration_["n_normal_validation"] == 200 and detector.calibration_["target_fpr"] == 0.05
    detector.save(tmp_path / "b")
    saved = Bundle.load(tmp_path / "b")
    assert saved.threshold == pytest.approx(detector.threshold_)
    assert saved.manifest["recalibrated"]["previous_threshold"] == pytest.approx(fitted_threshold)


def test_a_fit_whose_threshold_fails_on_its_test_images_warns_and_calibrate_mends_it(tmp_path):
    """The story end to end: held-out images unlike the normal test ones (noisier, as another camera's are),
    the warning at fit, a calibration on images taken as the test ones are, then no warning."""
    rng = np.random.default_rng(0)

    def save(path, noise, spot=False):
        pixels = rng.normal(0.4, noise, (16, 16))
        if spot:
            pixels[4:8, 4:8] = 1.0
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels.clip(0, 1) * 255).astype(np.uint8)).save(path)

    root = tmp_path / "d"
    for i in range(60):
        save(root / "train" / "good" / f"{i:03d}.png", 0.02)
    for i in range(20):
        save(root / "test" / "good" / f"{i:03d}.png", 0.08)
        save(root / "test" / "spot" / f"{i:03d}.png", 0.02, spot=True)
    for i in range(200):
        save(tmp_path / "today" / f"{i:03d}.png", 0.08)  # normal images taken as the test ones are
    bundle = tmp_path / "b"
    runner = CliRunner()
    fitted = runner.invoke(app, ["fit", "--data", str(root), "--model", "conv", "--epochs", "3", "--out", str(bundle)])
    assert fitted.exit_code == 0, fitted.output
    assert "warning: the threshold flags" in fitted.output
    assert "aeguard calibrate" in json.loads((bundle / "manifest.json").read_text())["threshold_warning"]
    calibrated = runner.invoke(app, ["calibrate", str(bundle), str(tmp_path / "today")])
    assert calibrated.exit_code == 0, calibrated.output
    evaluated = runner.invoke(app, ["evaluate", str(bundle), "--data", str(root)])
    assert evaluated.exit_code == 0 and "warning" not in evaluated.output
    report = json.loads((bundle / "report" / "report.json").read_text())
    assert report["metrics"]["fpr_at_threshold"] <= 0.1 and "threshold_warning" not in report
