"""--rotation: a rotation-prediction classifier's score, z-scored beside the reconstruction score in the graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aeguard import Bundle, Detector
from aeguard.cli.main import app
from aeguard.config import ConfigError, DetectorConfig
from aeguard.errors import TrainingCollapsedError
from aeguard.report.plots import HISTOGRAM_PLOT
from aeguard.train import rotation
from aeguard.train.export import check_parity, export_onnx, load_bundle_graph, parity_max_abs_diff, scoring_graph
from aeguard.train.models import default_config
from aeguard.train.rotation import RotationHead, rotation_labels, rotations, train_rotation_head
from aeguard.train.scoring import score_config


def corners(count: int = 160, size: int = 16, seed: int = 0) -> np.ndarray:
    """uint8 (N, 1, size, size): a bright L-shaped corner at the top left, jittered and noisy: 'upright' is
    learnable, and no two images are alike."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(count, 1, size, size)).astype(np.uint8)
    for image in images:
        top, left = rng.integers(1, 4, size=2)
        long, wide = rng.integers(8, 12), rng.integers(2, 4)
        image[0, top : top + wide, left : left + long] = 255
        image[0, top : top + long, left : left + wide] = 255
    return images


def test_rotations_are_the_four_quarter_turns_in_order():
    images = torch.rand(3, 2, 5, 5)
    turned = rotations(images)
    expected = torch.cat([torch.rot90(images, k, (2, 3)) for k in range(4)])
    torch.testing.assert_close(turned, expected, rtol=0, atol=0)
    assert rotation_labels(3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_head_score_is_the_summed_nll_of_the_right_rotation():
    torch.manual_seed(0)
    head = RotationHead(channels=1).eval()
    images = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        log_p = torch.log_softmax(head.classifier(rotations(images)), dim=1)
        expected = -log_p[torch.arange(20), rotation_labels(5)].view(4, 5).sum(dim=0)
        torch.testing.assert_close(head(images), expected)


def test_pool_before_relu_gives_the_same_values_and_gradients_as_relu_before_pool():
    """The blocks pool before the ReLU for speed; the results measured with the other order must still hold."""
    torch.manual_seed(0)
    head = RotationHead(channels=1).train()
    reference = RotationHead(channels=1).train()
    reference.load_state_dict(head.state_dict())
    for block in reference.classifier[:3]:
        conv, norm, pool, relu = block
        assert isinstance(pool, torch.nn.MaxPool2d) and isinstance(relu, torch.nn.ReLU)
        block[2], block[3] = relu, pool  # the order the benchmarks of issue 21 were first run with
    images = torch.rand(8, 1, 28, 28)  # 7 x 7 in the last block: MaxPool2d drops the odd row and column
    labels = rotation_labels(8)
    for model in (head, reference):
        torch.nn.functional.cross_entropy(model.classifier(rotations(images)), labels).backward()
    assert torch.equal(head.classifier(rotations(images)), reference.classifier(rotations(images)))
    for (name, ours), theirs in zip(head.named_parameters(), reference.parameters()):
        assert torch.equal(ours.grad, theirs.grad), name


def test_a_trained_head_scores_turned_images_above_upright_ones():
    normal = corners(400, size=12)
    head, record = train_rotation_head(normal[:360], normal[360:], epochs=3, seed=0, device="cpu", log=lambda _: None)
    assert record["epochs"] == 3 and 1 <= record["best_epoch"] <= 3 and len(record["history"]) == 3
    held_out = torch.from_numpy(normal[360:])
    upright = head.scores(held_out)
    turned = head.scores(torch.rot90(held_out, 1, (2, 3)).contiguous())  # the same shapes, lying on their side
    assert upright.mean() < 0.5 * turned.mean(), (upright.mean(), turned.mean())


def test_channels_last_training_gives_the_standard_layout_head_up_to_rounding(monkeypatch):
    """The CPU trains the head channels-last for speed: the head it returns is laid out as usual and scores as
    standard-layout training's does, but for float rounding (which Adam turns into small weight differences:
    the conv biases before BatchNorm get only rounding noise as gradient, so they are not compared)."""
    normal = corners(200, size=12)
    assert rotation.training_memory_format(torch.device("cpu")) == torch.channels_last
    fast, fast_record = train_rotation_head(normal[:160], normal[160:], 2, seed=0, device="cpu", log=lambda _: None)
    monkeypatch.setattr(rotation, "training_memory_format", lambda device: torch.contiguous_format)
    plain, plain_record = train_rotation_head(normal[:160], normal[160:], 2, seed=0, device="cpu", log=lambda _: None)
    assert all(tensor.is_contiguous() for tensor in fast.state_dict().values())
    for ours, theirs in zip(fast_record["history"], plain_record["history"]):
        assert ours["val_score"] == pytest.approx(theirs["val_score"], rel=1e-2)
    images = torch.from_numpy(normal[160:])
    torch.testing.assert_close(fast.scores(images), plain.scores(images), rtol=2e-2, atol=2e-2)
    upright, turned = fast.scores(images).mean(), fast.scores(torch.rot90(images, 1, (2, 3)).contiguous()).mean()
    assert abs(float(upright - plain.scores(images).mean())) < 0.01 * float(turned - upright)


def graph_with_rotation():
    torch.manual_seed(0)
    model = default_config("conv", 1, 16, 16) | {"ensemble": 2}
    return scoring_graph(model, score_config("blur", knn=2, rotation_epochs=3)).eval()


def test_graph_score_is_the_sum_of_both_z_scores_and_exports_with_parity(tmp_path):
    graph = graph_with_rotation()
    normal = torch.from_numpy(corners(60).astype(np.float32) / 255)
    graph.set_reference_codes(normal[:30])
    statistics = graph.set_standardisation(normal[30:])
    images = torch.rand(7, 1, 16, 16)
    with torch.no_grad():
        score = graph(images)[0]
        reconstruction = graph.reconstruction_score(images)[0]
        rotation = graph.rotation(images)
        on_normal = graph(normal[30:])[0]
    (rec_mean, rec_std), (rot_mean, rot_std) = statistics["reconstruction"], statistics["rotation"]
    expected = (reconstruction - rec_mean) / rec_std + (rotation - rot_mean) / rot_std
    torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-5)
    # standardised on those very images: each term has mean 0 there, so their sum does too
    assert abs(float(on_normal.mean())) < 1e-4
    path = tmp_path / "model.onnx"
    export_onnx(graph, (1, 16, 16), path)
    parity = parity_max_abs_diff(graph, path, torch.cat([images, normal]).numpy())
    check_parity(parity)
    assert parity["tolerance"] == 1e-3  # a thousandth of a held-out standard deviation


def test_parity_tolerance_stays_absolute_for_small_scores_and_grows_with_large_ones(tmp_path):
    graph = graph_with_rotation()
    normal = torch.from_numpy(corners(40).astype(np.float32) / 255)
    graph.set_reference_codes(normal)
    graph.standardisation = torch.tensor([[0.0, 1e-5], [0.0, 1e-5]])  # scores far above 100
    path = tmp_path / "model.onnx"
    export_onnx(graph, (1, 16, 16), path)
    parity = parity_max_abs_diff(graph, path, normal.numpy())
    with torch.no_grad():
        largest = float(graph(normal)[0].abs().max())
    assert largest > 1000 and parity["tolerance"] == pytest.approx(1e-5 * largest, rel=1e-6)
    with pytest.raises(Exception, match="differ by"):
        check_parity(parity | {"max_abs_diff": 2 * parity["tolerance"]})


def test_rotation_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="rotation does not apply to the draem model"):
        DetectorConfig(model="draem", rotation=True)
    with pytest.raises(ConfigError, match="rotation_epochs must be a positive integer"):
        DetectorConfig(rotation=True, rotation_epochs=0)
    with pytest.raises(ConfigError, match="rotation needs square images"):
        Detector(rotation=True, epochs=1).fit(np.zeros((20, 12, 16), np.uint8))


def test_a_score_without_spread_on_the_held_out_images_is_refused_not_divided_by():
    with pytest.raises(TrainingCollapsedError, match="score is the same for every held-out normal image"):
        Detector(rotation=True, rotation_epochs=1, epochs=1, device="cpu").fit(np.full((40, 16, 16), 128, np.uint8))


def test_fit_with_rotation_records_it_and_scores_alike_everywhere(tmp_path):
    normal = corners(200)
    detector = Detector(model="conv", knn=3, rotation=True, rotation_epochs=2, epochs=2, device="cpu", seed=1)
    detector.fit(normal)
    manifest = detector.contents_.manifest
    assert manifest["score"]["rotation"]["epochs"] == 2
    assert set(manifest["score"]["rotation"]["mean_std_on_held_out"]) == {"reconstruction", "rotation"}
    assert "rotation classifier" in manifest["score"]["definition"]
    assert manifest["training"]["rotation"]["best_epoch"] in (1, 2)
    turned = np.rot90(normal[:20], 1, axes=(2, 3)).copy()
    assert detector.decision_function(turned).mean() > detector.decision_function(normal[:20]).mean()
    detector.save(tmp_path / "b")
    scorer = Bundle.load(tmp_path / "b").scorer()  # torch-free: the head is inside model.onnx
    np.testing.assert_array_equal(scorer.decision_function(turned), detector.decision_function(turned))
    graph = load_bundle_graph(tmp_path / "b")  # the torch graph rebuilt from manifest + weights
    with torch.no_grad():
        rebuilt = graph(torch.from_numpy(turned.astype(np.float32) / 255))[0].numpy()
    np.testing.assert_allclose(rebuilt, detector.decision_function(turned), rtol=1e-4, atol=1e-4)
    # the report's histogram copes with the z-scored sum's negative scores (log-spaced bins cannot hold them)
    assert detector.decision_function(normal[:20]).min() < 0
    report = detector.report(tmp_path / "report", np.concatenate([normal[:20], turned]), np.repeat([0, 1], 20))
    assert report["metrics"]["auroc"] > 0.5 and (tmp_path / "report" / HISTOGRAM_PLOT).stat().st_size > 0


def test_cli_flag_reaches_the_bundle(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(corners(60)):
        Image.fromarray(image[0]).save(folder / f"{i:03d}.png")
    result = CliRunner().invoke(
        app,
        ["fit", "--data", str(folder), "--model", "conv", "--rotation", "--rotation-epochs", "1", "--epochs", "1"]
        + ["--device", "cpu", "--out", str(tmp_path / "b")],
    )
    assert result.exit_code == 0, result.output
    assert "rotation classifier epoch 1/1" in result.output
    assert Bundle.load(tmp_path / "b").manifest["score"]["rotation"]["epochs"] == 1
