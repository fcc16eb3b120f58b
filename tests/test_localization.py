"""Localization: AUPRO against a brute-force reference, pixel AUROC, the draem model's map and its export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aeguard.report.localization import aupro, defect_regions, localization_metrics, pro_curve


def reference_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """The definition, written the slow way: every distinct map value as a threshold, every region on its own
    (scipy labels them 8-connected), the curve interpolated at max_fpr and the area divided by max_fpr."""
    from scipy import ndimage

    regions = []
    for image_index, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(image_index, labels == k) for k in range(1, count + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for threshold in sorted(set(maps.ravel().tolist()), reverse=True):
        above = maps >= threshold
        fpr = above[normal].mean()
        pro = np.mean([above[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    xs, ys = np.array(points).T
    keep = xs <= max_fpr
    x_cut = np.append(xs[keep], max_fpr)
    y_cut = np.append(ys[keep], np.interp(max_fpr, xs, ys))
    return float(np.trapezoid(y_cut, x_cut) / max_fpr)


@pytest.mark.parametrize("seed", range(6))
def test_aupro_equals_the_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 12), bool)
    for image in range(3):  # the fourth image is normal
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, 9, 2)
            masks[image, y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
    maps = rng.random(masks.shape) + 0.7 * masks  # informative but imperfect
    if seed % 2:
        maps = np.round(maps, 1)  # many ties: thresholds pass tied pixels together
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), abs=1e-9)


def test_aupro_is_one_for_a_perfect_map_and_normalised_by_the_limit():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 1:3, 1:3] = masks[1, 5:8, 5:8] = True
    assert aupro(masks.astype(float), masks) == pytest.approx(1.0)
    # a map that ranks every normal pixel above every defect reaches PRO 1 only at FPR 1: its area up to 0.3 is 0
    assert aupro((~masks).astype(float), masks) == pytest.approx(0.0)
    fpr, pro = pro_curve(np.random.default_rng(0).random(masks.shape), masks)
    assert fpr[0] == pro[0] == 0.0 and fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)


def test_regions_are_counted_per_image_and_eight_connected():
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[0, 4, 4] = True
    masks[1, 2, 2] = True
    assert defect_regions(masks).max() == 3


def test_localization_metrics_reports_pixel_auroc_and_aupro():
    rng = np.random.default_rng(3)
    masks = np.zeros((5, 16, 16), bool)
    masks[:3, 4:9, 4:9] = True
    maps = rng.random(masks.shape) * 0.5 + masks * 0.6
    metrics = localization_metrics(maps, masks)
    assert metrics["pixel_auroc"] > 0.95 and 0.5 < metrics["aupro"] <= 1.0
    assert metrics["n_regions"] == 3 and metrics["n_images"] == 5


def test_the_collapse_measure_flags_a_mean_image_model_the_spread_check_passed():
    """The 128 px case of the issue: outputs that jitter 1 % around the mean image passed the spread check
    (spread 0.01); the explained variation says the model learned nothing but the mean."""
    from aeguard.train.fit import COLLAPSE_EXPLAINED, COLLAPSE_SPREAD
    from aeguard.train.loop import explained_variation, reconstruction_spread

    images = torch.rand(64, 3, 32, 32)
    mean = images.mean(dim=0, keepdim=True)

    class MeanImage(torch.nn.Module):
        def forward(self, x):
            return mean + 0.01 * (x - mean)

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    assert reconstruction_spread(MeanImage(), images) >= COLLAPSE_SPREAD  # the old check let it through
    assert explained_variation(MeanImage(), images) < COLLAPSE_EXPLAINED
    assert explained_variation(Identity(), images) == pytest.approx(1.0)


def striped_texture(count: int) -> np.ndarray:
    """`count` 32 x 32 colour images of horizontal stripes at random phases, with a little noise."""
    rng = np.random.default_rng(0)
    rows = np.arange(32)[:, None]
    images = []
    for _ in range(count):
        phase = rng.uniform(0, 2 * np.pi)
        stripes = 0.5 + 0.3 * np.sin(rows / 3.0 + phase) + 0.03 * rng.standard_normal((32, 32))
        images.append(np.stack([stripes, 0.6 * stripes, np.full((32, 32), 0.3)]))
    return np.clip(np.array(images, np.float32), 0, 1)


def test_draem_trains_exports_with_parity_and_maps_its_defects(tmp_path):
    """A few epochs on a generated colour texture: the exported graph's score and map match torch (parity is
    checked at export), and the map is a probability per pixel."""
    from aeguard import Detector
    from aeguard.train.synthetic import paste_defects

    images = striped_texture(48)
    detector = Detector(model="draem", epochs=4, batch_size=8, seed=0).fit(images)
    parity = detector.contents_.manifest["parity"]
    assert parity["max_abs_diff"] <= 1e-5 and parity["error_map_max_abs_diff"] <= 1e-5
    clean = torch.from_numpy(images[:16])
    defective, masks = paste_defects(clean, torch.Generator().manual_seed(1))
    maps = detector.anomaly_maps(defective.numpy())
    assert maps.shape == (16, 1, 32, 32) and 0.0 <= maps.min() and maps.max() <= 1.0
    assert detector.scorer_.map_scale == 1.0
    assert detector.contents_.manifest["score"]["function"] == "segmentation"


def test_a_detector_evaluates_an_mvtec_folder_as_aeguard_evaluate_does(tmp_path):
    """Detector.evaluate(folder) returns the numbers `aeguard evaluate BUNDLE --data DIR` writes: image metrics,
    per defect type AUROC and, with masks, pixel AUROC and AUPRO; a test image it cannot read is left out of
    both, and the report lists it."""
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from aeguard import Detector
    from aeguard.cli.main import app
    from aeguard.errors import UsageError

    def save(path, image):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(np.moveaxis(image, 0, -1) * 255).astype(np.uint8)).save(path)

    images = striped_texture(60)
    root = tmp_path / "stripes"
    for i, image in enumerate(images[:48]):
        save(root / "train" / "good" / f"{i:03d}.png", image)
    for i, image in enumerate(images[48:54]):
        save(root / "test" / "good" / f"{i:03d}.png", image)
    for i, image in enumerate(images[54:]):
        spotted, mask = image.copy(), np.zeros((32, 32), np.uint8)
        spotted[:, 10:16, 12:20], mask[10:16, 12:20] = 1.0, 1  # a 0/1 mask, as numpy writes one
        save(root / "test" / "spot" / f"{i:03d}.png", spotted)
        (root / "ground_truth" / "spot").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    detector = Detector(model="draem", epochs=4, batch_size=8, seed=0).fit(root)
    measured = detector.evaluate(root)
    assert set(measured["per_defect"]) == {"spot"} and measured["per_defect"]["spot"]["n_images"] == 6
    assert {"pixel_auroc", "aupro"} <= set(measured["localization"])
    detector.save(tmp_path / "bundle")
    (root / "test" / "spot" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # left out, and said so
    assert "not_used" not in measured and "truncated.png: not a recognised" in detector.evaluate(root)["not_used"][0]
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "bundle"), "--data", str(root)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bundle" / "report" / "report.json").read_text())
    assert len(report["not_used"]) == 1 and "truncated.png" in report["not_used"][0]
    assert (
        "left out: 1 file (an image that cannot be read is in no figure"
        in (tmp_path / "bundle" / "report" / "report.md").read_text()
    )
    assert measured["auroc"] == pytest.approx(report["metrics"]["auroc"])
    assert measured["per_defect"]["spot"] == pytest.approx(report["per_defect"]["spot"])
    assert measured["localization"]["pixel_auroc"] == pytest.approx(report["localization"]["pixel_auroc"])
    assert measured["localization"]["aupro"] == pytest.approx(report["localization"]["aupro"])
    with pytest.raises(UsageError, match="labels come from its layout"):
        detector.evaluate(root, np.zeros(12))
    with pytest.raises(UsageError, match="needs y"):
        detector.evaluate(images)


def test_a_draem_ensemble_maps_its_members_mean_probability_and_exports_with_parity(tmp_path):
    """--ensemble 2 on draem: the graph's map is the mean of what each member alone maps, its score that map's
    max, and the trained bundle reloads with both members and matches onnxruntime."""
    from aeguard import Bundle, Detector
    from aeguard.config import DetectorConfig, model_config
    from aeguard.train.draem import DraemScoringGraph
    from aeguard.train.export import load_bundle_graph
    from aeguard.train.models import build_model

    config = model_config(DetectorConfig(model="draem", ensemble=2), (3, 32, 32))
    torch.manual_seed(0)
    members = [build_model(config).eval() for _ in range(2)]
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        together = DraemScoringGraph(members, {})(images)
        alone = [DraemScoringGraph([member], {})(images) for member in members]
    torch.testing.assert_close(together[1], (alone[0][1] + alone[1][1]) / 2)
    torch.testing.assert_close(together[0], together[1].flatten(1).max(dim=1).values)
    assert not torch.allclose(alone[0][1], alone[1][1])  # two members that differ, so the mean is a real one

    textures = striped_texture(40)
    detector = Detector(model="draem", ensemble=2, epochs=4, batch_size=8, seed=0).fit(textures)
    manifest = detector.contents_.manifest
    assert manifest["model"]["ensemble"] == 2 and len(manifest["training"]["members"]) == 1  # the ones after the first
    assert manifest["parity"]["error_map_max_abs_diff"] <= 1e-5
    detector.save(tmp_path / "bundle")
    graph = load_bundle_graph(tmp_path / "bundle")
    assert len(graph.members) == 2
    with torch.no_grad():
        torch_scores = graph(torch.from_numpy(textures[:8]))[0].numpy()
    onnx_scores = Bundle.load(tmp_path / "bundle").scorer().decision_function(textures[:8])
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-5)


@pytest.mark.parametrize(("size", "hidden", "stages"), [(32, None, 2), (128, None, 4), (128, (16, 32, 64), 4)])
def test_draem_segmenter_depth_follows_the_image_size_not_the_restorer(size, hidden, stages):
    """--hidden sets the restorer's stages; the segmenter keeps the depth its image size gives it, so a trial
    of another restorer changes nothing else. A manifest without the key (older bundles) builds the old rule."""
    from aeguard.config import DetectorConfig, model_config
    from aeguard.train.models import build_model

    config = model_config(DetectorConfig(model="draem", hidden=hidden), (3, size, size))
    assert config["segmenter_stages"] == stages
    assert len(build_model(config).segmenter.down) == stages
    older = {key: value for key, value in config.items() if key != "segmenter_stages"}
    assert len(build_model(older).segmenter.down) == max(2, min(4, len(config["conv_channels"])))


def _mean_image_fit(monkeypatch, stopped_early: bool):
    """train_member on a model that outputs the training mean image with 1 % jitter (the 128 px case)."""
    import aeguard.train.fit as fit_module
    from aeguard.config import TrainConfig
    from aeguard.data.sources import array_training_data
    from aeguard.train.distributed import DistributedContext
    from aeguard.train.loop import TrainResult

    data = array_training_data(np.random.default_rng(0).random((40, 3, 16, 16), dtype=np.float32), 0.25, 0)
    mean = torch.from_numpy(data.train.mean(axis=0, keepdims=True))

    class MeanImage(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.01))

        def forward(self, x):
            return mean + self.scale * (x - mean)

    monkeypatch.setattr(fit_module, "build_model", lambda config: MeanImage())
    monkeypatch.setattr(fit_module, "train", lambda *args, **kwargs: TrainResult(stopped_early=stopped_early))
    lines: list[str] = []
    outcome = fit_module.train_member(
        {"training": {}}, data, TrainConfig(epochs=1), None, None, DistributedContext(), lines.append
    )
    return outcome, lines


def test_a_converged_model_that_learned_only_the_mean_image_is_caught(monkeypatch):
    from aeguard.errors import TrainingCollapsedError

    with pytest.raises(TrainingCollapsedError, match="no better than their mean image"):
        _mean_image_fit(monkeypatch, stopped_early=True)


def test_an_undertrained_model_is_kept_with_a_warning_to_train_longer(monkeypatch):
    (model, result), lines = _mean_image_fit(monkeypatch, stopped_early=False)
    assert result.collapse_check["warning"] == "undertrained"
    assert any("train longer" in line for line in lines)


@pytest.mark.parametrize("size", [32, 30])  # 30: padded up to the grid and cropped back
def test_draem_pads_its_convolutions_as_its_config_says_and_older_bundles_pad_with_zeros(size):
    """conv_padding "replicate": no border is special, so a uniform image is restored and mapped uniformly,
    which zero padding does not do. A manifest without the key (older bundles) builds zero padding."""
    from aeguard.config import DRAEM_CONV_PADDING, DetectorConfig, model_config
    from aeguard.errors import UsageError
    from aeguard.train.models import build_model

    config = model_config(DetectorConfig(model="draem"), (3, size, size))
    assert config["conv_padding"] == DRAEM_CONV_PADDING
    uniform = torch.full((1, 3, size, size), 0.4)
    spreads = {}
    for padding in ("zeros", "replicate"):
        torch.manual_seed(0)
        model = build_model({**config, "conv_padding": padding}).eval()
        with torch.no_grad():
            restored = model(uniform)
            logits = model.defect_logits(uniform, restored)
        spreads[padding] = (float(restored.std(dim=(2, 3)).max()), float(logits.std(dim=(2, 3)).max()))
    assert max(spreads["replicate"]) < 1e-5 < min(spreads["zeros"])
    older = {key: value for key, value in config.items() if key != "conv_padding"}
    convolutions = [
        m for m in build_model(older).modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    modes = {conv.padding_mode for conv in convolutions}
    assert modes == {"zeros"}
    with pytest.raises(UsageError, match="conv_padding 'circular'"):
        build_model({**config, "conv_padding": "circular"})


def test_draem_segmenter_reads_the_difference_only_when_its_config_says_and_exports_with_parity(tmp_path):
    """segmenter_input "difference": the segmenter also reads |image - restoration|, and the graph exports with
    parity. A manifest without the key (older bundles) builds the image-and-restoration segmenter."""
    from aeguard.config import DRAEM_SEGMENTER_INPUT, DetectorConfig, model_config
    from aeguard.errors import UsageError
    from aeguard.train.draem import DraemScoringGraph
    from aeguard.train.export import export_onnx, parity_max_abs_diff
    from aeguard.train.models import build_model

    config = model_config(DetectorConfig(model="draem"), (3, 30, 29))
    assert config["segmenter_input"] == DRAEM_SEGMENTER_INPUT
    older = {key: value for key, value in config.items() if key != "segmenter_input"}
    torch.manual_seed(0)
    pair, difference = build_model(older).eval(), build_model({**config, "segmenter_input": "difference"}).eval()
    assert pair.segmenter.down[0][0][0].in_channels == 6 and difference.segmenter.down[0][0][0].in_channels == 9
    with pytest.raises(UsageError, match="segmenter_input 'sum'"):
        build_model({**config, "segmenter_input": "sum"})
    graph = DraemScoringGraph([difference], {"pool": 1}).eval()
    export_onnx(graph, (3, 30, 29), tmp_path / "model.onnx")
    parity = parity_max_abs_diff(graph, tmp_path / "model.onnx", np.random.default_rng(0).random((3, 3, 30, 29)))
    assert parity["max_abs_diff"] < 1e-5 and parity["error_map_max_abs_diff"] < 1e-5


def test_evaluate_runs_the_graph_once_per_batch_for_scores_and_maps_together(tmp_path):
    from aeguard.report.labelled import anomaly_maps, scores_and_maps
    from aeguard.scoring.scorer import Scorer
    from tests.bundles import tiny_bundle

    scorer = Scorer(tiny_bundle(tmp_path / "b", size=(8, 8), channels=3))
    images = np.random.default_rng(0).integers(0, 256, (10, 3, 8, 8), dtype=np.uint8)
    keep = np.zeros(10, bool)
    keep[[1, 2, 7]] = True
    expected_scores, expected_maps = scorer.score_many(images), anomaly_maps(scorer, images[keep])

    class Counting:
        def __init__(self, session):
            self.session, self.calls = session, 0

        def run(self, names, feeds):
            self.calls += 1
            return self.session.run(names, feeds)

    scorer.session = counting = Counting(scorer.session)
    scores, maps = scores_and_maps(scorer, images, keep, batch_size=4)
    assert counting.calls == 3  # ceil(10 / 4) batches, not a second pass for the maps
    np.testing.assert_array_equal(scores, expected_scores)
    assert maps.shape == (3, 8, 8)
    np.testing.assert_array_equal(maps, expected_maps)
