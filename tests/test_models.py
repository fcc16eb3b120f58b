import pytest
import torch
from torch import nn

from aeguard.errors import UsageError
from aeguard.train.models import MODEL_KINDS, build_model, default_config


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
@pytest.mark.parametrize("size", [(28, 28), (30, 17), (5, 64)])
def test_output_matches_input_shape_for_any_size(kind, size):
    model = build_model(default_config(kind, 1, *size)).eval()
    x = torch.rand(3, 1, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


@pytest.mark.parametrize("channels", [1, 3])
def test_draem_restores_and_segments_every_small_size(channels):
    # below 17 px the restorer halves once and the segmenter twice: sizes it could not halve evenly crashed
    for height in range(4, 41):
        for width in (height, height + 3):
            model = build_model(default_config("draem", channels, height, width)).eval()
            x = torch.rand(2, channels, height, width)
            with torch.no_grad():
                restored = model(x)
                logits = model.defect_logits(x, restored)
            assert restored.shape == x.shape and logits.shape == (2, 1, height, width), (height, width)


def test_config_widths_are_honoured():
    config = default_config("dense", 1, 28, 28) | {"hidden": [256, 64], "latent": 8}
    model = build_model(config)
    assert model.encode(torch.rand(2, 1, 28, 28)).shape == (2, 8)
    linears = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [256, 64, 8]


def test_k_sparse_code_keeps_exactly_k_units():
    model = build_model(default_config("k-sparse", 1, 28, 28) | {"k_sparse": 5})
    code = model.encode(torch.rand(16, 1, 28, 28))
    assert ((code != 0).sum(dim=1) == 5).all()


def test_variational_model_decodes_its_mean_code_deterministically():
    torch.manual_seed(0)
    model = build_model(default_config("conv-vae", 1, 28, 28)).eval()
    x = torch.rand(4, 1, 28, 28)
    mean, log_var = model.code_statistics(x)
    assert mean.shape == log_var.shape == (4, model.latent)
    torch.testing.assert_close(model(x), model(x))
    torch.testing.assert_close(model(x), model.decode(mean))


def test_bundles_from_before_the_model_family_still_build():
    # 0.1 manifests carried only kind/channels/height/width/widths/latent
    old = {"kind": "conv", "channels": 1, "height": 28, "width": 28, "conv_channels": [32, 64], "latent": 32}
    model = build_model(old)
    assert not model.variational and model.k_sparse is None
    assert activations(model) == {nn.ReLU}


def activations(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))}


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_hidden_layers_use_the_configured_activation(kind):
    config = default_config(kind, 1, 28, 28)
    assert config["activation"] == "leaky-relu" and activations(build_model(config)) == {nn.LeakyReLU}
    assert activations(build_model(config | {"activation": "relu"})) == {nn.ReLU}
    with pytest.raises(UsageError, match="unknown activation 'gelu'"):
        build_model(config | {"activation": "gelu"})


def test_unknown_kind():
    with pytest.raises(UsageError, match="unknown model 'gan'"):
        default_config("gan", 1, 28, 28)


def test_k_larger_than_the_code_is_refused():
    with pytest.raises(UsageError, match="k-sparse k must be between 1 and the code size"):
        build_model(default_config("k-sparse", 1, 28, 28) | {"k_sparse": 40})
