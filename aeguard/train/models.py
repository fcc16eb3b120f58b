"""Autoencoders. A model is rebuilt from its config dict alone, which the manifest carries."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from aeguard.errors import UsageError

MODEL_KINDS = ("dense", "conv")


def default_config(kind: str, channels: int, height: int, width: int) -> dict:
    if kind == "dense":
        return {"kind": "dense", "channels": channels, "height": height, "width": width,
                "hidden": [128], "latent": 32}
    if kind == "conv":
        return {"kind": "conv", "channels": channels, "height": height, "width": width,
                "conv_channels": [32, 64], "latent": 32}
    raise UsageError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")


class DenseAutoencoder(nn.Module):
    """The 784-128-32 family: a mirrored MLP with a sigmoid output."""

    def __init__(self, channels: int, height: int, width: int, hidden: list[int], latent: int):
        super().__init__()
        self.shape = (channels, height, width)
        sizes = [channels * height * width, *hidden]
        encoder: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(sizes, sizes[1:]):
            encoder += [nn.Linear(n_in, n_out), nn.ReLU()]
        encoder.append(nn.Linear(sizes[-1], latent))
        decoder: list[nn.Module] = []
        widths = [latent, *reversed(hidden)]
        for n_in, n_out in zip(widths, widths[1:]):
            decoder += [nn.Linear(n_in, n_out), nn.ReLU()]
        decoder += [nn.Linear(widths[-1], sizes[0]), nn.Sigmoid()]
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)).view(-1, *self.shape)


class ConvAutoencoder(nn.Module):
    """Strided convolutions down to a dense code and transposed convolutions back up.

    Inputs of any size are zero-padded to a multiple of 2**depth and the output is cropped back,
    with the pad amounts fixed at construction so the ONNX graph stays static but for the batch axis.
    """

    def __init__(self, channels: int, height: int, width: int, conv_channels: list[int], latent: int):
        super().__init__()
        self.shape = (channels, height, width)
        factor = 2 ** len(conv_channels)
        self.padded = (math.ceil(height / factor) * factor, math.ceil(width / factor) * factor)
        self.pad = (0, self.padded[1] - width, 0, self.padded[0] - height)
        self.code_shape = (conv_channels[-1], self.padded[0] // factor, self.padded[1] // factor)
        widths = [channels, *conv_channels]
        down: list[nn.Module] = []
        for n_in, n_out in zip(widths, widths[1:]):
            down += [nn.Conv2d(n_in, n_out, 3, stride=2, padding=1), nn.ReLU()]
        flat = math.prod(self.code_shape)
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(flat, latent))
        up: list[nn.Module] = [nn.Linear(latent, flat), nn.ReLU(), nn.Unflatten(1, self.code_shape)]
        reversed_widths = list(reversed(widths))
        for i, (n_in, n_out) in enumerate(zip(reversed_widths, reversed_widths[1:])):
            up.append(nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1))
            up.append(nn.Sigmoid() if i == len(widths) - 2 else nn.ReLU())
        self.decoder = nn.Sequential(*up)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encode(x))
        return out[:, :, : self.shape[1], : self.shape[2]]


def build_model(config: dict) -> nn.Module:
    """Instantiate the model a config dict describes (as written by default_config and the manifest)."""
    kind = config.get("kind")
    shape = (config["channels"], config["height"], config["width"])
    if kind == "dense":
        return DenseAutoencoder(*shape, hidden=list(config["hidden"]), latent=config["latent"])
    if kind == "conv":
        return ConvAutoencoder(*shape, conv_channels=list(config["conv_channels"]), latent=config["latent"])
    raise UsageError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
