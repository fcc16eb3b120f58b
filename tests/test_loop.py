import numpy as np
import pytest
import torch

from aeguard.errors import UsageError
from aeguard.train.loop import (
    TrainConfig,
    format_epoch,
    reconstruction_loss,
    reconstruction_spread,
    resolve_device,
    train,
)
from aeguard.train.models import build_model, default_config


def fit_blobs(blobs, **overrides):
    model = build_model(default_config("dense", 1, 12, 12) | {"hidden": [32], "latent": 4})
    config = TrainConfig(**({"epochs": 15, "batch_size": 16, "device": "cpu", "seed": 3} | overrides))
    result = train(model, blobs[:48], blobs[48:], config)
    return model, result


def test_training_lowers_the_validation_loss(blobs):
    untrained = build_model(default_config("dense", 1, 12, 12) | {"hidden": [32], "latent": 4})
    before = reconstruction_loss(untrained, torch.from_numpy(blobs[48:]))
    model, result = fit_blobs(blobs, epochs=40, learning_rate=1e-2)
    assert result.best_val_loss < 0.5 * before
    assert result.best_val_loss == pytest.approx(reconstruction_loss(model, torch.from_numpy(blobs[48:])))


def test_same_seed_same_weights(blobs):
    first, _ = fit_blobs(blobs, epochs=3)
    second, _ = fit_blobs(blobs, epochs=3)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_early_stopping_restores_the_best_epoch(blobs):
    # A learning rate this large makes the loss bounce, so patience runs out well before 200 epochs.
    model, result = fit_blobs(blobs, epochs=200, learning_rate=0.5, patience=2)
    assert result.stopped_early
    assert len(result.history) < 200
    best = min(r.val_loss for r in result.history)
    assert result.best_val_loss == best
    assert reconstruction_loss(model, torch.from_numpy(blobs[48:])) == pytest.approx(best)


def test_callbacks_see_every_batch_and_epoch(blobs):
    batches, epochs = [], []
    model = build_model(default_config("conv", 1, 12, 12))
    train(
        model,
        blobs[:48],
        blobs[48:],
        TrainConfig(epochs=2, batch_size=20, device="cpu"),
        on_batch=lambda e, done, total: batches.append((e, done, total)),
        on_epoch=epochs.append,
    )
    assert batches[-1] == (2, 3, 3) and len(batches) == 6
    assert [r.epoch for r in epochs] == [1, 2]
    assert all(np.isfinite(r.train_loss) and r.images_per_second > 0 for r in epochs)


def test_device_names():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UsageError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA"):
            resolve_device("cuda")


def test_reconstruction_spread_tells_a_trained_model_from_a_dead_one(blobs):
    model, _ = fit_blobs(blobs, epochs=40, learning_rate=1e-2)
    images = torch.from_numpy(blobs[48:])
    assert reconstruction_spread(model, images) > 0.3
    # the decoder's first layer deaf to the code (as dead ReLUs leave it): one output image for every input
    with torch.no_grad():
        model.decoder[0].weight.zero_()
    assert reconstruction_spread(model, images) == pytest.approx(0.0, abs=1e-6)


def test_cosine_schedule_lowers_the_rate_each_epoch_and_constant_keeps_it(blobs):
    _, cosine = fit_blobs(blobs, epochs=6, patience=10, learning_rate=1e-2, lr_schedule="cosine")
    rates = [r.learning_rate for r in cosine.history]
    assert rates[0] == pytest.approx(1e-2)
    assert all(later < earlier for earlier, later in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(1e-2 * 0.5 * (1 + np.cos(np.pi * 5 / 6)))
    assert "lr 1.00e-02" in format_epoch(cosine.history[0], 6)  # the progress line shows it
    _, constant = fit_blobs(blobs, epochs=3, patience=10, learning_rate=1e-2)
    assert [r.learning_rate for r in constant.history] == pytest.approx([1e-2] * 3)


def test_unknown_lr_schedule_is_refused():
    from aeguard.config import ConfigError

    with pytest.raises(ConfigError, match="lr_schedule must be one of constant, cosine"):
        TrainConfig(lr_schedule="linear")


def test_random_flips_give_each_image_one_of_its_four_mirrors():
    from aeguard.train.augment import random_flips

    images = torch.rand(64, 2, 5, 7)
    flipped = random_flips(images, torch.Generator().manual_seed(0))
    mirrors = [images, images.flip(3), images.flip(2), images.flip(2).flip(3)]
    which = [next(k for k, m in enumerate(mirrors) if torch.equal(flipped[i], m[i])) for i in range(64)]
    assert set(which) == {0, 1, 2, 3}  # every mirror drawn, not one flip for the whole batch
    assert torch.equal(flipped, random_flips(images, torch.Generator().manual_seed(0)))  # seeded


def test_flip_augmentation_teaches_the_mirrored_images_too():
    # every training image is a left-to-right ramp: only a model trained with flips has seen the right-to-left one
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, 12, dtype=np.float32)[None, None, None, :].repeat(12, axis=2)
    images = np.clip(ramp + 0.05 * rng.standard_normal((64, 1, 12, 12)).astype(np.float32), 0, 1)
    mirrored = torch.from_numpy(images[48:, :, :, ::-1].copy())
    errors = {}
    for augment in ("none", "flip"):
        model, _ = fit_blobs(images, epochs=30, learning_rate=1e-2, patience=30, augment=augment)
        errors[augment] = reconstruction_loss(model, mirrored)
    assert errors["flip"] < 0.25 * errors["none"]


def test_unknown_augment_is_refused():
    from aeguard.config import ConfigError

    with pytest.raises(ConfigError, match="augment must be one of none, flip"):
        TrainConfig(augment="rotate")
