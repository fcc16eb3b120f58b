"""Every model of the family through the whole fit pipeline, on a small real MNIST subset."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aeguard.cli.main import app
from aeguard.config import DetectorConfig, TrainConfig
from aeguard.data.sources import dataset_eval_set
from aeguard.scoring.scorer import Scorer
from aeguard.train.job import FitOptions, run_fit
from aeguard.train.models import MODEL_KINDS

runner = CliRunner()


def quick_fit(out, data_dir, model, seed=0, **extra):
    config = DetectorConfig(model=model, max_images=400, train=TrainConfig(epochs=2, device="cpu", seed=seed), **extra)
    options = FitOptions(out=out, config=config, dataset="mnist", normal="4", data_dir=data_dir, allow_download=False)
    return run_fit(options, log=lambda line: None)


@pytest.mark.parametrize("model", list(MODEL_KINDS))
def test_each_model_fits_exports_and_scores_through_the_runtime(model, data_dir, tmp_path):
    manifest = quick_fit(tmp_path / model, data_dir, model)
    expected_score = "segmentation" if model == "draem" else "mse"  # draem's only score
    assert manifest["model"]["kind"] == model and manifest["score"]["function"] == expected_score
    assert manifest["data"]["n_train"] + manifest["data"]["n_validation"] == 400
    assert manifest["parity"]["max_abs_diff"] < 1e-5
    # the runtime's scores of the test split give the AUROC the manifest reports
    from sklearn.metrics import roc_auc_score

    eval_set = dataset_eval_set("mnist", (4,), data_dir, allow_download=False)
    scores = Scorer(tmp_path / model).score_many(eval_set.images)
    assert roc_auc_score(eval_set.is_anomaly, scores) == pytest.approx(manifest["metrics"]["auroc"], abs=1e-9)
    if model != "draem":  # draem looks for local defects, not another digit: 0.48 here, and no claim is made
        assert manifest["metrics"]["auroc"] > 0.55  # better than chance after two short epochs
    plots = set(json.loads((tmp_path / model / "report" / "report.json").read_text())["plots"])
    assert {"latent_pca.png", "roc_per_class.png", "reconstructions.png"} <= plots
    assert ("prior_samples.png" in plots) == model.endswith("vae")
    for name in plots:
        assert (tmp_path / model / "report" / name).stat().st_size > 1000


@pytest.mark.parametrize(
    "model,extra",
    [("denoising", {}), ("vae", {"score": "elbo"}), ("dense", {"score": "ssim", "ensemble": 2, "noise": "erase:0.25"})],
)
def test_a_fixed_seed_gives_the_same_auroc_twice(model, extra, data_dir, tmp_path):
    first = quick_fit(tmp_path / "a", data_dir, model, seed=3, **extra)
    second = quick_fit(tmp_path / "b", data_dir, model, seed=3, **extra)
    assert first["metrics"]["auroc"] == second["metrics"]["auroc"]
    assert first["threshold"] == second["threshold"]
    assert first["score"]["function"] == extra.get("score", "mse")


def test_cli_records_model_options_and_refuses_bad_ones(data_dir, tmp_path):
    out = tmp_path / "ks"
    result = runner.invoke(
        app,
        [
            "fit",
            "--model",
            "k-sparse",
            "--k",
            "4",
            "--score",
            "blur",
            "--score-sigma",
            "2",
            "--score-top",
            "0.2",
            "--activation",
            "relu",
            "--max-images",
            "300",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
            "--no-download",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["k_sparse"] == 4 and manifest["model"]["activation"] == "relu"
    assert manifest["score"]["function"] == "blur" and manifest["score"]["sigma"] == 2.0
    assert manifest["score"]["top"] == 0.2 and "largest 0.2 share" in manifest["score"]["definition"]
    codes = Scorer(out).codes(np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32))
    assert ((codes != 0).sum(axis=1) <= 4).all()
    for args, message in (
        (["--model", "conv", "--score", "elbo"], "--score elbo needs a variational model"),
        (["--model", "dense", "--beta", "0.5"], "--beta applies to the variational models"),
        (["--model", "dense", "--noise", "blur:1"], "--noise must be"),
        (["--model", "k-sparse", "--k", "64"], "exceeds the code size"),
        (["--model", "conv", "--activation", "tanh"], "unknown activation 'tanh'"),
        (["--model", "conv", "--score-top", "0"], "--score-top must be a share"),
        (["--model", "conv", "--lr-schedule", "linear"], "--lr-schedule must be one of constant, cosine"),
        (["--model", "conv", "--augment", "rotate"], "--augment must be one of none, flip"),
    ):
        result = runner.invoke(
            app,
            [
                "fit",
                *args,
                "--out",
                str(tmp_path / "bad"),
                "--data-dir",
                str(data_dir),
                "--no-download",
                "--epochs",
                "1",
            ],
        )
        assert result.exit_code == 2 and message in result.stderr, (args, result.output)
        assert not (tmp_path / "bad").exists()


def _collapse_first_attempts(monkeypatch, attempts: int) -> list[int]:
    """Make fit's first `attempts` trainings end collapsed, as dead ReLUs leave them (seen with the conv model on
    MNIST digit 1): the decoder's first layer deaf to the code, one output image for every input."""
    import aeguard.train.fit as fit_module

    real_train, seen = fit_module.train, []

    def train(model, *args, **kwargs):
        result = real_train(model, *args, **kwargs)
        seen.append(len(seen))
        if len(seen) <= attempts:
            with torch.no_grad():
                model.decoder[0].weight.zero_()
        return result

    monkeypatch.setattr(fit_module, "train", train)
    return seen


def test_a_collapsed_training_is_trained_again_from_a_fresh_initialisation(data_dir, tmp_path, monkeypatch):
    from aeguard.train.fit import RETRY_SEED_STRIDE

    trainings = _collapse_first_attempts(monkeypatch, 1)
    lines = []
    config = DetectorConfig(model="dense", max_images=300, train=TrainConfig(epochs=1, device="cpu", seed=3))
    options = FitOptions(
        out=tmp_path / "b", config=config, dataset="mnist", normal="4", data_dir=data_dir, allow_download=False
    )
    manifest = run_fit(options, log=lines.append)
    assert len(trainings) == 2
    assert any("training collapsed (initialisation seed 3)" in line for line in lines)
    assert manifest["training"]["init_seed"] == 3 + RETRY_SEED_STRIDE and manifest["training"]["config"]["seed"] == 3
    assert any(line.startswith("best validation loss") and "reconstruction spread" in line for line in lines)


def test_a_training_that_keeps_collapsing_is_refused_with_its_reason(data_dir, tmp_path, monkeypatch):
    trainings = _collapse_first_attempts(monkeypatch, 99)
    out = tmp_path / "collapsed"
    result = runner.invoke(
        app,
        [
            "fit",
            "--model",
            "dense",
            "--max-images",
            "300",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
            "--no-download",
        ],
    )
    assert result.exit_code == 6, result.output
    assert "training collapsed 3 times" in result.stderr and "another --seed" in result.stderr
    assert len(trainings) == 3 and not out.exists()


def test_a_bundle_from_aeguard_0_1_still_loads_in_torch(mnist_bundle, tmp_path):
    """0.1 bundles kept one model's state dict and a config without backbone / variant / activation fields."""
    import shutil

    import torch

    from aeguard.bundle import MANIFEST_NAME, read_manifest, write_manifest
    from aeguard.train.export import load_bundle_graph

    bundle = tmp_path / "old"
    shutil.copytree(mnist_bundle, bundle)
    torch.save(load_bundle_graph(bundle).members[0].state_dict(), bundle / "weights.pt")
    manifest = read_manifest(bundle, verify=False)  # weights.pt was just replaced

    def rewrite(model_config: dict) -> None:
        manifest["model"] = model_config
        write_manifest(bundle, {k: v for k, v in manifest.items() if k != "files"}, list(manifest["files"]))

    rewrite({**manifest["model"], "activation": "relu"})  # what 0.1 trained, in today's terms
    current = load_bundle_graph(bundle)
    del manifest["score"]["function"]
    rewrite({key: manifest["model"][key] for key in ("kind", "channels", "height", "width", "conv_channels", "latent")})
    assert (bundle / MANIFEST_NAME).is_file()
    old = load_bundle_graph(bundle)
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(old(images)[0], current(images)[0])
    assert isinstance(old.members[0].encoder[1], torch.nn.ReLU)


def test_knn_score_stores_training_codes_and_reloads(data_dir, tmp_path):
    import torch

    from aeguard.train.export import load_bundle_graph

    manifest = quick_fit(tmp_path / "knn", data_dir, "conv", noise="erase:0.25", score="blur", knn=5)
    assert manifest["score"]["knn"] == 5 and manifest["score"]["references"] == manifest["data"]["n_train"]
    assert "nearest latent codes" in manifest["score"]["definition"]
    assert manifest["parity"]["max_abs_diff"] < 1e-5
    images = dataset_eval_set("mnist", (4,), data_dir, allow_download=False).images[:64]
    graph = load_bundle_graph(tmp_path / "knn")  # the codes come back with the weights
    np.testing.assert_allclose(
        graph(torch.from_numpy(images))[0].detach().numpy(), Scorer(tmp_path / "knn").score_many(images), rtol=1e-5
    )
