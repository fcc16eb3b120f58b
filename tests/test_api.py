"""The Python API: Detector and Bundle, in the shape scikit-learn and PyOD users know."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aeguard import Bundle, Detector
from aeguard.bundle import MODEL_NAME
from aeguard.cli.main import app
from aeguard.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def discs(count: int = 120, size: int = 12, seed: int = 0) -> np.ndarray:
    """uint8 (N, size, size): a bright disc at varying places, what the tests call normal."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = []
    for _ in range(count):
        cy, cx = rng.uniform(3, size - 3, size=2)
        images.append((((yy - cy) ** 2 + (xx - cx) ** 2 < 9) * 255).astype(np.uint8))
    return np.stack(images)


def squares(count: int = 20, size: int = 12) -> np.ndarray:
    images = np.zeros((count, size, size), np.uint8)
    images[:, 2:10, 2:10] = 255
    return images


@pytest.fixture(scope="module")
def fitted() -> Detector:
    return Detector(model="dense", epochs=20, batch_size=16, seed=0, device="cpu").fit(discs())


def test_learned_state_exists_only_after_fit():
    detector = Detector(model="dense", epochs=1)
    assert not hasattr(detector, "threshold_") and not hasattr(detector, "history_")
    with pytest.raises(UsageError, match="not fitted yet"):
        detector.predict(discs(4))
    assert detector.get_params()["model"] == "dense" and detector.get_params()["epochs"] == 1


def test_fit_scores_and_flags_what_differs_from_normal(fitted):
    normal, anomalous = fitted.decision_function(discs(40, seed=1)), fitted.decision_function(squares())
    assert normal.shape == (40,) and normal.dtype == np.float32
    assert anomalous.min() > np.percentile(normal, 95)  # squares are far from every disc
    assert fitted.predict(squares()).all() and fitted.predict(discs(40, seed=1)).mean() < 0.2
    np.testing.assert_array_equal(fitted.predict(squares()), fitted.decision_function(squares()) > fitted.threshold_)
    metrics = fitted.evaluate(np.concatenate([discs(40, seed=1), squares()]), np.r_[np.zeros(40), np.ones(20)])
    assert metrics["auroc"] > 0.95
    assert fitted.anomaly_maps(squares(3)).shape == (3, 1, 12, 12)
    assert len(fitted.history_) == 1 and 1 <= len(fitted.history_[0]) <= 20


def test_report_is_a_separate_call_that_writes_plots_and_metrics(fitted, tmp_path):
    images = np.concatenate([discs(30, seed=3), squares(10)])
    report = fitted.report(tmp_path / "r", images, np.r_[np.zeros(30), np.ones(10)])
    assert report["metrics"]["auroc"] > 0.95
    assert {"report.json", "report.md", "roc.png", "score_histogram.png"} <= {
        p.name for p in (tmp_path / "r").iterdir()
    }


def test_fit_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Detector(model="dense", epochs=3, batch_size=16, device="cpu").fit(discs())
    assert list(tmp_path.iterdir()) == []


def test_arrays_of_every_accepted_kind_score_alike(fitted):
    images = discs(8, seed=2)
    expected = fitted.decision_function(images)
    np.testing.assert_allclose(fitted.decision_function(images[:, None]), expected)  # (N, C, H, W)
    np.testing.assert_allclose(fitted.decision_function(images[..., None]), expected)  # (N, H, W, C), as PIL gives
    np.testing.assert_allclose(fitted.decision_function(images / 255.0), expected, rtol=1e-6)  # floats in [0, 1]
    with pytest.raises(UsageError, match="within \\[0, 1\\]"):
        fitted.decision_function(images.astype(np.float32))  # 0-255 floats: a scaling mistake, refused
    with pytest.raises(UsageError, match="shape"):
        fitted.decision_function(images[0])


@pytest.mark.parametrize(
    "params, words",
    [
        ({"model": "gan"}, "unknown model .gan."),
        ({"noise_level": 0.3}, "noise_level needs a noise kind"),
        ({"noise": "erase", "noise_level": 2.0}, "0 < level <= 1"),
        ({"noise": "blur", "noise_level": 0.3}, "unknown noise 'blur'; choose one of gaussian, mask"),
        ({"activation": "tanh"}, "unknown activation 'tanh'; choose one of leaky-relu, relu"),
        ({"score": "elbo"}, "needs a variational model"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"target_fpr": 1.5}, "target_fpr must lie in"),
        ({"image_size": "16"}, "image_size='16' apply to a folder of images; an array is fitted at its own size"),
        ({"color": "rgb", "crop": "center"}, "color='rgb', crop='center' apply to a folder"),
    ],
)
def test_bad_parameters_are_refused_at_fit_with_their_name(params, words):
    with pytest.raises(UsageError, match=words):
        Detector(**params).fit(discs(10))


def test_a_saved_bundle_scores_the_same_through_the_torch_free_scorer(fitted, tmp_path):
    manifest = fitted.save(tmp_path / "b")
    assert manifest["name"] == "b" and (tmp_path / "b" / MODEL_NAME).is_file()
    assert not (tmp_path / "b" / "report").exists()  # no report unless asked
    scorer = Bundle.load(tmp_path / "b").scorer()
    np.testing.assert_array_equal(scorer.decision_function(squares()), fitted.decision_function(squares()))
    assert scorer.threshold == fitted.threshold_
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from aeguard import Bundle
        flags = Bundle.load({str(tmp_path / "b")!r}).scorer().predict(np.full((2, 12, 12), 255, np.uint8))
        print("TORCH", "torch" in sys.modules, "FLAGS", flags.tolist())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "TORCH False" in done.stdout


def test_the_api_and_the_cli_write_the_same_model_for_the_same_data(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    images = discs()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    result = CliRunner().invoke(
        app,
        [
            "fit",
            "--data",
            str(folder),
            "--model",
            "dense",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--seed",
            "4",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert result.exit_code == 0, result.output
    detector = Detector(model="dense", epochs=3, batch_size=16, device="cpu", seed=4).fit(images)
    detector.save(tmp_path / "api")
    digests = {name: hashlib.sha256((tmp_path / name / MODEL_NAME).read_bytes()).hexdigest() for name in ("cli", "api")}
    assert digests["cli"] == digests["api"]
    assert detector.threshold_ == Bundle.load(tmp_path / "cli").threshold


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- tested by tests/test_api.py -->\n```python\n(.*?)```", text, re.S)
    assert match, "the README's Python example is marked for this test"
    return match.group(1)


def test_the_readme_python_example_runs(data_dir, tmp_path, monkeypatch):
    """The example as written, but with 3 epochs instead of its 20: the suite checks that it runs and gives a
    working detector (what its 20 epochs reach is the benchmarks' business) in a fraction of the time."""
    monkeypatch.chdir(tmp_path)
    example = readme_python_example()
    assert example.count("epochs=20") == 1, "the README example's epochs changed; update this test's shortcut"
    namespace: dict = {}
    exec(compile(example.replace("epochs=20", "epochs=3"), "README.md", "exec"), namespace)  # noqa: S102 - our README
    assert (tmp_path / "runs" / "digit0" / MODEL_NAME).is_file()
    assert namespace["metrics"]["auroc"] > 0.9
    assert os.environ.get("AEGUARD_DATA_DIR")  # where its load_split found MNIST


def test_the_photo_recipe_reaches_the_detector_whole():
    """`aeguard fit --data DIR` trains with photo_recipe(); Detector.from_config of it must carry every training
    value (the cosine schedule among them) and give back the same config."""
    from aeguard.config import photo_recipe

    recipe = photo_recipe()
    detector = Detector.from_config(recipe)
    params = detector.get_params()
    assert params["model"] == "draem" and params["lr_schedule"] == "cosine"
    assert (params["epochs"], params["batch_size"], params["patience"]) == (50, 16, 10)
    assert detector.config() == recipe
    assert Detector(model="draem").config().train.lr_schedule == "constant"  # the constructor's own defaults


def test_channels_last_arrays_are_turned_only_where_their_layout_is_unambiguous():
    from aeguard.data.splits import as_model_input

    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)  # (N, H, W, C)
    np.testing.assert_array_equal(as_model_input(rgb), rgb.transpose(0, 3, 1, 2) / np.float32(255))
    np.testing.assert_array_equal(as_model_input(rgb, channels=3), as_model_input(rgb))
    first = rgb.transpose(0, 3, 1, 2)  # already (N, C, H, W): left as it is
    np.testing.assert_array_equal(as_model_input(first), first / np.float32(255))
    square = np.zeros((1, 3, 4, 3), np.uint8)  # could be either: read as (N, C, H, W), as before
    assert as_model_input(square).shape == (1, 3, 4, 3)
    with pytest.raises(UsageError, match=r"shape \(2, 5, 7, 3\) have no axis of the model.s 1 channel"):
        as_model_input(rgb, channels=1)
    # a size that does not fit is named as the caller passed it, not as it was turned
    with pytest.raises(UsageError, match=r"shape \(2, 5, 7, 3\) do not fit this model: expected \(N, 3, 5, 6\) or"):
        as_model_input(rgb, channels=3, size=(5, 6))
    assert as_model_input(rgb, channels=3, size=(5, 7)).shape == (2, 3, 5, 7)
