import numpy as np
import onnx
import pytest
import torch

from aeguard.errors import ParityError
from aeguard.runtime import open_session, score_array
from aeguard.train.export import (
    PARITY_TOLERANCE, ScoringGraph, check_parity, export_onnx, parity_max_abs_diff,
)
from aeguard.train.models import build_model, default_config


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_export_has_dynamic_batch_and_matches_torch(tmp_path, kind):
    shape = (1, 20, 13)
    torch.manual_seed(0)
    model = build_model(default_config(kind, *shape)).eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, shape, path)
    graph = onnx.load(str(path))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in graph.graph.output] == ["score", "error_map", "reconstruction"]
    images = np.random.default_rng(0).random((37, *shape), dtype=np.float32)
    parity = parity_max_abs_diff(model, path, images)
    assert parity["max_abs_diff"] < PARITY_TOLERANCE and parity["error_map_max_abs_diff"] < PARITY_TOLERANCE
    # batches of other sizes work too, and the in-graph score is the mean squared error
    scores = score_array(open_session(path), images, batch_size=5)
    with torch.no_grad():
        reference = ((torch.from_numpy(images) - model(torch.from_numpy(images))) ** 2).mean(dim=(1, 2, 3))
    np.testing.assert_allclose(scores, reference.numpy(), atol=1e-6)


def test_scoring_graph_outputs():
    model = build_model(default_config("dense", 1, 4, 4))
    score, error_map, reconstruction = ScoringGraph(model)(torch.rand(2, 1, 4, 4))
    assert score.shape == (2,) and error_map.shape == (2, 1, 4, 4) and reconstruction.shape == (2, 1, 4, 4)


def test_parity_failure_refuses():
    with pytest.raises(ParityError, match="differ by 0.001"):
        check_parity({"max_abs_diff": 1e-3, "error_map_max_abs_diff": 0.0, "n_images": 4})
