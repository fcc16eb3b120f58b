import pytest
import torch

from aeguard.errors import UsageError
from aeguard.train.models import build_model, default_config
from aeguard.train.objectives import Objective, corrupt, parse_noise


def test_parse_noise():
    assert parse_noise("gaussian:0.3") == ("gaussian", 0.3)
    assert parse_noise("mask") == ("mask", 0.2)
    assert parse_noise(None) is None and parse_noise("none") is None
    for bad in ("blur:0.2", "mask:0", "gaussian:x", "erase:1.5"):
        with pytest.raises(UsageError, match="--noise must be"):
            parse_noise(bad)


def test_each_corruption_does_what_it_says():
    torch.manual_seed(0)
    ones = torch.ones(64, 1, 20, 20)
    masked = corrupt(ones, ("mask", 0.3))
    assert abs(float((masked == 0).float().mean()) - 0.3) < 0.02
    noisy = corrupt(torch.full((64, 1, 20, 20), 0.5), ("gaussian", 0.1))
    assert 0.08 < float(noisy.std()) < 0.12 and 0.0 <= float(noisy.min()) and float(noisy.max()) <= 1.0
    salted = corrupt(torch.full((64, 1, 20, 20), 0.5), ("salt-pepper", 0.2))
    hit = salted != 0.5
    assert abs(float(hit.float().mean()) - 0.2) < 0.02 and set(salted[hit].unique().tolist()) <= {0.0, 1.0}
    erased = corrupt(ones, ("erase", 0.25))
    assert ((erased == 0).sum(dim=(1, 2, 3)) == 25).all()  # one 5x5 square per image


@pytest.mark.parametrize("kind,term", [("sparse", "l1"), ("contractive", "contraction"), ("vae", "beta")])
def test_each_penalty_adds_to_the_reconstruction_loss(kind, term):
    config = default_config(kind, 1, 12, 12) | {"hidden": [32], "latent": 4}
    model = build_model(config)
    x = torch.rand(8, 1, 12, 12)
    with_term = dict(config["training"], **{term: 10.0})
    without = dict(config["training"], **{term: 0.0})
    torch.manual_seed(1)
    penalised = Objective(model, with_term)(x)
    torch.manual_seed(1)
    plain = Objective(model, without)(x)
    assert float(penalised.detach()) > float(plain.detach()) > 0
    penalised.backward()  # the contractive term's double backward must reach the weights
    assert all(p.grad is not None for p in model.parameters())


def test_denoising_target_is_the_clean_image():
    model = build_model(default_config("denoising", 1, 12, 12))
    objective = Objective(model, {"noise": "mask:0.5"})
    x = torch.rand(4, 1, 12, 12)
    seen = {}
    original = model.code_statistics

    def spy(inputs):
        seen["inputs"] = inputs
        return original(inputs)

    model.code_statistics = spy
    objective(x)
    assert (seen["inputs"] == 0).float().mean() > 0.4  # the model saw the corrupted copy
    assert (x == 0).float().mean() < 0.01  # the target was left alone
