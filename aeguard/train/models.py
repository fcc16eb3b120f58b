"""Autoencoders. A model is rebuilt from its config dict alone, which the manifest carries.

Every model is an encoder to a code and a decoder back, on a dense or a convolutional backbone.
The variants differ in what they do to the code (variational: a mean and a log-variance;
k-sparse: only the k largest units survive) and in how they train (see objectives.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from aeguard.config import DEFAULT_ACTIVATION, MODEL_KINDS, default_config  # noqa: F401 - re-exported
from aeguard.errors import UsageError
from aeguard.train.draem import PADDINGS, SEGMENTER_INPUTS, Draem, Padding, SegmenterInput
from aeguard.train.padding import GridPadding

# Hidden-layer activations by name (the default and why: aeguard/config.py).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "leaky-relu": lambda: nn.LeakyReLU(0.2)}


def activation_layer(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UsageError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def dense_layers(sizes: list[int], activation: str) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(n_in, n_out), activation_layer(activation)]
    return layers


class Autoencoder(nn.Module):
    """Encoder -> code -> decoder, with the code step chosen by the variant.

    forward() is the deterministic reconstruction every runtime computes (the mean code for a VAE);
    code_statistics() gives the training objective what it needs beyond that.
    """

    shape: tuple[int, int, int]  # (C, H, W) of the images, set by each architecture

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent: int,
        variational: bool = False,
        k_sparse: int | None = None,
    ):
        super().__init__()
        if k_sparse is not None and not 1 <= k_sparse <= latent:
            raise UsageError(f"k-sparse k must be between 1 and the code size {latent}, got {k_sparse}")
        self.encoder, self.decoder = encoder, decoder
        self.latent, self.variational, self.k_sparse = latent, variational, k_sparse

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def code_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(code, log-variance); the log-variance is None unless the model is variational."""
        features = self.encoder(self._prepare(x))
        if self.variational:
            mean, log_var = features.chunk(2, dim=1)
            return mean, log_var.clamp(-10.0, 10.0)
        if self.k_sparse is not None:
            # The k-th largest value of each row is the bar; TopK exports to ONNX as one op.
            bar = torch.topk(features, self.k_sparse, dim=1).values[:, -1:]
            features = features * (features >= bar).to(features.dtype)
        return features, None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.code_statistics(x)[0]

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self._finish(self.decoder(code))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class DenseAutoencoder(Autoencoder):
    """A mirrored MLP with a sigmoid output (784-256-128-32 by default)."""

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        hidden: list[int],
        latent: int,
        variational: bool = False,
        k_sparse: int | None = None,
        *,
        activation: str,
    ):
        self.shape = (channels, height, width)
        sizes = [channels * height * width, *hidden]
        encoder = nn.Sequential(
            nn.Flatten(), *dense_layers(sizes, activation), nn.Linear(sizes[-1], latent * (2 if variational else 1))
        )
        widths = [latent, *reversed(hidden)]
        decoder = nn.Sequential(*dense_layers(widths, activation), nn.Linear(widths[-1], sizes[0]), nn.Sigmoid())
        super().__init__(encoder, decoder, latent, variational, k_sparse)

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        return out.view(-1, *self.shape)


class ConvAutoencoder(Autoencoder):
    """Strided convolutions down to a code and transposed convolutions back up.

    The code is dense (`latent` units) or, with spatial_code, `latent` channels on the last feature map's
    grid (a 1x1 convolution), flattened so the variants treat both alike. Inputs of any size are zero-padded
    to a multiple of 2**depth and the output is cropped back, with the pad amounts fixed at construction so
    the ONNX graph stays static but for the batch axis.
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        conv_channels: list[int],
        latent: int,
        variational: bool = False,
        k_sparse: int | None = None,
        *,
        activation: str,
        spatial_code: bool = False,
    ):
        self.shape = (channels, height, width)
        padding = GridPadding(height, width, len(conv_channels))
        factor, padded = 2 ** len(conv_channels), padding.padded
        code_shape = (conv_channels[-1], padded[0] // factor, padded[1] // factor)
        widths = [channels, *conv_channels]
        down: list[nn.Module] = []
        for n_in, n_out in zip(widths, widths[1:]):
            down += [nn.Conv2d(n_in, n_out, 3, stride=2, padding=1), activation_layer(activation)]
        flat = math.prod(code_shape)
        code_channels = latent * (2 if variational else 1)
        if spatial_code:
            grid = code_shape[1:]
            encoder = nn.Sequential(*down, nn.Conv2d(conv_channels[-1], code_channels, 1), nn.Flatten())
            up: list[nn.Module] = [
                nn.Unflatten(1, (latent, *grid)),
                nn.Conv2d(latent, conv_channels[-1], 1),
                activation_layer(activation),
            ]
            latent = latent * math.prod(grid)  # the flattened code's length
        else:
            encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(flat, code_channels))
            up = [nn.Linear(latent, flat), activation_layer(activation), nn.Unflatten(1, code_shape)]
        reversed_widths = list(reversed(widths))
        for i, (n_in, n_out) in enumerate(zip(reversed_widths, reversed_widths[1:])):
            up.append(nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1))
            up.append(nn.Sigmoid() if i == len(widths) - 2 else activation_layer(activation))
        super().__init__(encoder, nn.Sequential(*up), latent, variational, k_sparse)
        self.padding, self.code_shape = padding, code_shape

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.padding.pad(x)

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        return self.padding.crop(out)


def backbone_of(config: dict) -> str:
    # Bundles written before the model family existed name only "dense" or "conv" as their kind.
    return config.get("backbone") or MODEL_KINDS.get(config.get("kind", ""), "")


def build_model(config: dict) -> Autoencoder | Draem:
    """Instantiate the model a config dict describes (as written by default_config and the manifest)."""
    backbone = backbone_of(config)
    shape = (config["channels"], config["height"], config["width"])
    extra = {
        "variational": bool(config.get("variational", False)),
        "k_sparse": config.get("k_sparse"),
        "activation": config.get("activation", "relu"),
    }  # no key: a bundle from before the option, a ReLU net
    if backbone == "dense":
        return DenseAutoencoder(*shape, hidden=list(config["hidden"]), latent=config["latent"], **extra)
    if backbone == "conv":
        return ConvAutoencoder(
            *shape,
            conv_channels=list(config["conv_channels"]),
            latent=config["latent"],
            spatial_code=bool(config.get("spatial_code", False)),  # no key: a bundle from before 0.3, dense
            **extra,
        )
    if backbone == "draem":
        padding = config.get("conv_padding", "zeros")  # no key: a bundle from before it, zero-padded
        if padding not in PADDINGS:
            raise UsageError(f"unknown draem conv_padding {padding!r}; choose one of {', '.join(PADDINGS)}")
        reads = config.get("segmenter_input", "pair")  # no key: a bundle from before it, image and restoration
        if reads not in SEGMENTER_INPUTS:
            raise UsageError(f"unknown draem segmenter_input {reads!r}; choose one of {', '.join(SEGMENTER_INPUTS)}")
        return Draem(
            *shape,
            conv_channels=list(config["conv_channels"]),
            code_channels=config["latent"],
            segmenter_stages=config.get("segmenter_stages"),
            padding=cast(Padding, padding),
            segmenter_input=cast(SegmenterInput, reads),
        )
    raise UsageError(f"unknown model {config.get('kind')!r}; choose one of {', '.join(MODEL_KINDS)}")
