import numpy as np
import onnx
import pytest
import torch

from aeguard.errors import ParityError, UsageError
from aeguard.scoring.scorer import open_session, score_array
from aeguard.train.export import (
    OUTPUTS,
    PARITY_TOLERANCE,
    check_parity,
    export_onnx,
    parity_max_abs_diff,
    scoring_graph,
)
from aeguard.train.models import MODEL_KINDS, default_config
from aeguard.train.scoring import score_config


def exported(tmp_path, kind, score=None, shape=(1, 20, 13), ensemble=1):
    torch.manual_seed(0)
    config = default_config(kind, *shape) | {"ensemble": ensemble}
    graph = scoring_graph(config, score).eval()
    path = tmp_path / "model.onnx"
    export_onnx(graph, shape, path)
    return graph, path


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_every_model_exports_with_dynamic_batch_and_matches_torch(tmp_path, kind):
    shape = (1, 20, 13)
    graph, path = exported(tmp_path, kind, shape=shape)
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in model.graph.output] == list(OUTPUTS)
    images = np.random.default_rng(0).random((37, *shape), dtype=np.float32)
    parity = parity_max_abs_diff(graph, path, images)
    assert parity["max_abs_diff"] < PARITY_TOLERANCE and parity["error_map_max_abs_diff"] < PARITY_TOLERANCE
    # batches of other sizes work too, and the in-graph score is the mean squared error (draem: the map's max)
    scores = score_array(open_session(path), images, batch_size=5)
    if kind == "draem":
        maps = score_array(open_session(path), images, batch_size=5, output="error_map")
        assert maps.shape == (37, 1, *shape[1:]) and 0.0 <= maps.min() and maps.max() <= 1.0
        np.testing.assert_allclose(scores, maps.max(axis=(1, 2, 3)), atol=1e-6)
        return
    with torch.no_grad():
        member = graph.members[0]
        reference = ((torch.from_numpy(images) - member(torch.from_numpy(images))) ** 2).mean(dim=(1, 2, 3))
    np.testing.assert_allclose(scores, reference.numpy(), atol=1e-6)


@pytest.mark.parametrize("kind,function", [("conv", "blur"), ("conv", "ssim"), ("vae", "elbo"), ("conv-vae", "elbo")])
def test_every_score_function_is_computed_in_the_graph(tmp_path, kind, function):
    graph, path = exported(tmp_path, kind, score_config(function), shape=(1, 28, 28))
    images = np.random.default_rng(1).random((9, 1, 28, 28), dtype=np.float32)
    parity = parity_max_abs_diff(graph, path, images)
    check_parity(parity)
    assert parity["max_abs_diff"] < PARITY_TOLERANCE
    mse = ((images - graph.members[0](torch.from_numpy(images)).detach().numpy()) ** 2).mean(axis=(1, 2, 3))
    assert not np.allclose(score_array(open_session(path), images), mse)  # not silently plain MSE


def test_ssim_score_is_zero_for_a_perfect_reconstruction():
    from aeguard.train.scoring import ErrorMap

    images = torch.rand(3, 1, 28, 28)
    error = ErrorMap(score_config("ssim"), channels=1)(images, images.clone())
    assert float(error.abs().max()) < 1e-4


@pytest.mark.parametrize("function", ["ssim", "blur"])
def test_band_matrix_smoothing_gives_the_convolutions_numbers(function):
    """Training's error map (draem's SSIM loss) smooths by matrix products, the exported graph by a depthwise
    convolution: the same map, borders (zero padding) included, on a non-square colour image."""
    from aeguard.train.error_maps import ErrorMap

    config = score_config(function)
    images, reconstruction = torch.rand(4, 3, 21, 34), torch.rand(4, 3, 21, 34)
    by_convolution = ErrorMap(config, channels=3)(images, reconstruction)
    by_matrices = ErrorMap(config, channels=3, size=(21, 34))(images, reconstruction)
    assert torch.allclose(by_matrices, by_convolution, atol=1e-5)
    assert float((by_matrices - ErrorMap(config, channels=3)(images, images)).abs().max()) > 0.01  # not trivial


def test_ensemble_averages_its_members(tmp_path):
    graph, path = exported(tmp_path, "dense", ensemble=3, shape=(1, 12, 12))
    images = torch.rand(5, 1, 12, 12)
    with torch.no_grad():
        each = [((images - member(images)) ** 2).mean(dim=(1, 2, 3)) for member in graph.members]
        torch.testing.assert_close(graph(images)[0], torch.stack(each).mean(dim=0))
    assert len({float(m.decoder[0].weight.detach().sum()) for m in graph.members}) == 3  # three different models
    parity = parity_max_abs_diff(graph, path, images.numpy())
    assert parity["max_abs_diff"] < PARITY_TOLERANCE


def test_scoring_graph_outputs():
    graph = scoring_graph(default_config("dense", 1, 4, 4), None)
    score, error_map, reconstruction, code = graph(torch.rand(2, 1, 4, 4))
    assert score.shape == (2,) and error_map.shape == (2, 1, 4, 4) and reconstruction.shape == (2, 1, 4, 4)
    assert code.shape == (2, 32)


def test_unknown_score_function():
    with pytest.raises(UsageError, match="--score must be one of"):
        score_config("psnr")


def test_parity_failure_refuses():
    with pytest.raises(ParityError, match="scores differ by 0.001"):
        check_parity({"max_abs_diff": 1e-3, "error_map_max_abs_diff": 0.0, "n_images": 4})
    with pytest.raises(ParityError, match="error maps differ by 2e-05"):
        check_parity({"max_abs_diff": 0.0, "error_map_max_abs_diff": 2e-5, "n_images": 4})
    # the SSIM map has its own, looser tolerance; its score does not
    check_parity({"max_abs_diff": 0.0, "error_map_max_abs_diff": 2e-5, "error_map_tolerance": 1e-3, "n_images": 4})


def test_knn_term_multiplies_the_error_by_the_latent_distance(tmp_path):
    torch.manual_seed(0)
    config = default_config("conv", 1, 28, 28) | {"ensemble": 2}
    graph = scoring_graph(config, score_config("blur", knn=3)).eval()
    training = torch.rand(50, 1, 28, 28)
    assert graph.set_reference_codes(training) == 50 and graph.reference_codes.shape == (2, 50, 16)
    images = torch.rand(7, 1, 28, 28)
    with torch.no_grad():
        score, error_map, _, _ = graph(images)
        distances = []
        for member, references in zip(graph.members, graph.reference_codes):
            pairwise = torch.cdist(member.encode(images).double(), references.double())
            distances.append(pairwise.topk(3, largest=False).values.mean(dim=1))
        expected = error_map.mean(dim=(1, 2, 3)).double() * torch.stack(distances).mean(dim=0)
    torch.testing.assert_close(score.double(), expected, rtol=1e-5, atol=0)
    path = tmp_path / "model.onnx"
    export_onnx(graph, (1, 28, 28), path)
    check_parity(parity_max_abs_diff(graph, path, torch.cat([images, training[:5]]).numpy()))


def test_knn_reference_codes_are_capped_and_knn_must_not_be_negative(monkeypatch):
    from aeguard.train import scoring

    graph = scoring_graph(default_config("dense", 1, 4, 4), score_config("mse", knn=2)).eval()
    monkeypatch.setattr(scoring, "MAX_REFERENCE_CODES", 10)
    assert graph.set_reference_codes(torch.rand(25, 1, 4, 4)) == 10
    with pytest.raises(UsageError, match="--knn must be 0"):
        score_config("mse", knn=-1)


def test_top_share_score_is_the_mean_of_the_largest_error_map_values(tmp_path):
    score = score_config("blur", top=0.1, knn=2)
    assert score["top"] == 0.1 and "largest 0.1 share of pixels" in score["definition"]
    assert "top" not in score_config("blur", top=1.0)  # the plain mean: bundles stay as they were
    graph, path = exported(tmp_path, "conv", score, shape=(1, 28, 28), ensemble=2)
    graph.set_reference_codes(torch.rand(20, 1, 28, 28))
    export_onnx(graph, (1, 28, 28), path)
    plain = scoring_graph(
        default_config("conv", 1, 28, 28) | {"ensemble": 2}, score_config("blur", knn=2) | {"references": 20}
    )
    plain.load_state_dict(graph.state_dict())  # the same members and codes, scored over every pixel
    images = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        result, error_map, _, _ = graph(images)
        plain_result = plain(images)[0]
    knn_factor = plain_result / error_map.mean(dim=(1, 2, 3))
    largest = error_map.flatten(1).sort(dim=1, descending=True).values[:, :78]  # round(0.1 * 784)
    torch.testing.assert_close(result, largest.mean(dim=1) * knn_factor, rtol=1e-5, atol=0)
    assert (result > plain_result).all()  # the largest tenth of a map averages above the whole map
    check_parity(parity_max_abs_diff(graph, path, images.numpy()))
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(UsageError, match="--score-top must be a share of the pixels"):
            score_config("mse", top=bad)
