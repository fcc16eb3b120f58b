"""End to end on the real MNIST files: fit -> bundle -> evaluate -> score a folder of PNGs."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from aeguard.cli.main import app
from aeguard.data.catalog import load_split
from aeguard.data.splits import to_model_input
from aeguard.scoring.scorer import Scorer
from aeguard.train.export import load_bundle_graph

runner = CliRunner()
AUROC_FLOOR = 0.93  # 3 epochs of the conv model on digit 0; 20 epochs reach about 0.99


def test_bundle_is_complete_and_honest(mnist_bundle):
    manifest = json.loads((mnist_bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["normal_classes"] == [0]
    assert manifest["input"]["height"] == 28 and manifest["input"]["range"] == [0.0, 1.0]
    assert manifest["parity"]["max_abs_diff"] < 1e-5 and manifest["parity"]["n_images"] == 512
    assert manifest["metrics"]["auroc"] >= AUROC_FLOOR
    assert manifest["calibration"]["validation_fpr"] <= 0.01
    assert manifest["threshold"] == manifest["calibration"]["threshold"]
    assert set(manifest["files"]) == {"model.onnx", "weights.pt", "validation_scores.npy"}
    for name in ("report.json", "report.md", "roc.png", "score_histogram.png", "reconstructions.png"):
        assert (mnist_bundle / "report" / name).stat().st_size > 0


def test_torch_weights_reload_and_agree_with_onnx(mnist_bundle, data_dir):
    images = to_model_input(load_split("mnist", "test", data_dir).images[:64])
    model = load_bundle_graph(mnist_bundle)
    with torch.no_grad():
        x = torch.from_numpy(images)
        torch_scores = ((x - model.members[0](x)) ** 2).mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(Scorer(mnist_bundle).score(images).scores, torch_scores, atol=1e-5)


def test_evaluate_reproduces_the_fit_metrics(mnist_bundle, tmp_path):
    result = runner.invoke(app, ["evaluate", str(mnist_bundle), "--report-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    manifest = json.loads((mnist_bundle / "manifest.json").read_text())
    assert report["metrics"]["n_normal"] == 980 and report["metrics"]["n_anomalous"] == 9020
    assert report["metrics"]["auroc"] == pytest.approx(manifest["metrics"]["auroc"], abs=1e-12)
    assert "auroc" in result.output


def test_score_a_folder_of_pngs(mnist_bundle, data_dir, tmp_path):
    folder = tmp_path / "photos"
    result = runner.invoke(app, ["dump-images", str(folder), "--count", "300", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    (folder / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "scores.csv"
    result = runner.invoke(app, ["score", str(mnist_bundle), str(folder), "--output", str(out)])
    assert result.exit_code == 3, result.output  # some inputs unreadable: rows written, exit says so
    assert "zz_corrupt.png" in result.stderr and "1 unreadable" in result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 301
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["path"].endswith("zz_corrupt.png") and bad[0]["score"] == ""
    good = [r for r in rows if not r["error"]]
    # PNGs are lossless, so scores from files equal scores from the IDX arrays
    expected = Scorer(mnist_bundle).score(to_model_input(load_split("mnist", "test", data_dir).images[:300]))
    np.testing.assert_allclose([float(r["score"]) for r in good], expected.scores, rtol=1e-6)
    truth = [not r["path"].split("_")[-1].startswith("0.") for r in good]
    assert roc_auc_score(truth, [float(r["score"]) for r in good]) >= AUROC_FLOOR
    assert all(r["is_anomaly"] == str(float(r["score"]) > float(r["threshold"])).lower() for r in good)


def test_score_jsonl_on_a_glob(mnist_bundle, data_dir, tmp_path):
    runner.invoke(app, ["dump-images", str(tmp_path / "p"), "--count", "10", "--data-dir", str(data_dir)])
    out = tmp_path / "s.jsonl"
    result = runner.invoke(app, ["score", str(mnist_bundle), str(tmp_path / "p" / "*_1.png"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["error"] is None and r["score"] > 0 for r in rows)


def test_fit_on_a_folder_of_images(data_dir, tmp_path):
    train, test = load_split("mnist", "train", data_dir), load_split("mnist", "test", data_dir)
    root = tmp_path / "mydata"
    for sub in ("good", "normal", "anomaly"):
        (root / sub).mkdir(parents=True)
    for i, image in enumerate(train.images[train.labels == 1][:400]):
        Image.fromarray(image).save(root / "good" / f"{i}.png")
    for i, image in enumerate(test.images[test.labels == 1][:60]):
        Image.fromarray(image).save(root / "normal" / f"{i}.png")
    for i, image in enumerate(test.images[test.labels != 1][:60]):
        Image.fromarray(image).save(root / "anomaly" / f"{i}.png")
    out = tmp_path / "bundle"
    result = runner.invoke(
        app, ["fit", "--data", str(root), "--model", "dense", "--epochs", "15", "--batch-size", "32", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["n_train"] + manifest["data"]["n_validation"] == 400
    assert manifest["metrics"]["n_normal"] == 60 and manifest["metrics"]["auroc"] >= 0.9
    result = runner.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 2 and "--data DIR" in result.stderr
    result = runner.invoke(app, ["evaluate", str(out), "--data", str(root)])
    assert result.exit_code == 0, result.output


# --- error paths: a clear message and a non-zero exit ---------------------------------------------


def test_fit_with_missing_data(tmp_path, monkeypatch):
    monkeypatch.setenv("AEGUARD_DATA_DIR", str(tmp_path / "nowhere"))
    result = runner.invoke(app, ["fit", "--no-download", "--out", str(tmp_path / "b")])
    assert result.exit_code == 3
    assert "mnist (train split) not found; looked in" in result.stderr
    assert not (tmp_path / "b").exists()


def test_fit_refuses_to_overwrite(mnist_bundle):
    result = runner.invoke(app, ["fit", "--epochs", "1", "--out", str(mnist_bundle)])
    assert result.exit_code == 2 and "--force" in result.stderr


@pytest.mark.parametrize("damage", ["no_manifest", "bad_json", "flipped_byte", "bad_onnx"])
def test_damaged_bundle_is_refused(mnist_bundle, data_dir, tmp_path, damage):
    bundle = tmp_path / "bundle"
    shutil.copytree(mnist_bundle, bundle)
    runner.invoke(app, ["dump-images", str(tmp_path / "p"), "--count", "2", "--data-dir", str(data_dir)])
    if damage == "no_manifest":
        (bundle / "manifest.json").unlink()
        expected = "no manifest.json"
    elif damage == "bad_json":
        (bundle / "manifest.json").write_text("{")
        expected = "cannot read"
    elif damage == "flipped_byte":
        data = bytearray((bundle / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bundle / "model.onnx").write_bytes(bytes(data))
        expected = "checksum mismatch"
    else:  # a consistent manifest around a file that is not ONNX
        from aeguard.bundle import read_manifest, write_manifest

        manifest = read_manifest(bundle)
        (bundle / "model.onnx").write_bytes(b"not a model")
        write_manifest(bundle, manifest, list(manifest["files"]))
        expected = "onnxruntime cannot load"
    for command in (["score", str(bundle), str(tmp_path / "p")], ["evaluate", str(bundle)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 4, (command, result.output)
        assert expected in result.stderr
        assert "Traceback" not in result.output


def test_score_of_one_corrupt_image(mnist_bundle, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = runner.invoke(app, ["score", str(mnist_bundle), str(tmp_path / "broken.jpg")])
    assert result.exit_code == 3
    assert "broken.jpg: cannot decode image" in result.stderr or "not a recognised" in result.stderr


def test_score_of_a_missing_input(mnist_bundle, tmp_path):
    result = runner.invoke(app, ["score", str(mnist_bundle), str(tmp_path / "absent")])
    assert result.exit_code == 3 and "absent: no such file" in result.stderr


def test_same_seed_gives_the_same_bundle(data_dir, tmp_path):
    from aeguard.config import DetectorConfig, TrainConfig
    from aeguard.train.job import FitOptions, run_fit

    manifests, models = [], []
    for run in ("a", "b"):
        config = DetectorConfig(model="dense", train=TrainConfig(epochs=1, device="cpu", seed=7))
        options = FitOptions(
            out=tmp_path / run, config=config, dataset="mnist", normal="1", data_dir=data_dir, allow_download=False
        )
        manifests.append(run_fit(options, log=lambda line: None))
        models.append(load_bundle_graph(tmp_path / run))
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert manifests[0]["metrics"]["auroc"] == manifests[1]["metrics"]["auroc"]
    assert manifests[0]["threshold"] == manifests[1]["threshold"]
