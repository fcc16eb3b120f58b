import pytest
import torch

from aeguard.errors import UsageError
from aeguard.train.models import build_model, default_config


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("size", [(28, 28), (30, 17), (5, 64)])
def test_output_matches_input_shape_for_any_size(kind, size):
    model = build_model(default_config(kind, 1, *size))
    x = torch.rand(3, 1, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_config_widths_are_honoured():
    config = default_config("dense", 1, 28, 28) | {"hidden": [256, 64], "latent": 8}
    model = build_model(config)
    assert model.encode(torch.rand(2, 1, 28, 28)).shape == (2, 8)
    linears = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [256, 64, 8]


def test_unknown_kind():
    with pytest.raises(UsageError, match="unknown model 'gan'"):
        default_config("gan", 1, 28, 28)
