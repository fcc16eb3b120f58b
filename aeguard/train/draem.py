"""A DRAEM-style detector (Zavrtanik et al., ICCV 2021), small enough to train on a CPU: it localizes.

Two networks, trained together on normal images only:
- a reconstructive one, an autoencoder (no skip connections, so it cannot copy a defect through) taught to
  restore an image into which a synthetic defect was pasted (synthetic.py);
- a discriminative one, a U-Net that sees the image beside its restoration and segments where they
  disagree in a way a defect would: it learns what "defect" looks like from the pasted ones, and what the
  restoration's ordinary mistakes look like from every normal pixel.
The anomaly map is the discriminative net's defect probability; the image score is its largest value (DRAEM
takes it after a 21 x 21 mean; why not here: config.SEGMENTATION_POOL), both computed in the exported graph.

Far smaller than the paper's networks so that 400 crops of 128 px train in minutes on two CPU cores: the
restorer's channels widen from 16 by two per stage (at most 128, one convolution per stage), the segmenter
works at half resolution. Every convolution pads by repeating the edge pixels (config `conv_padding`;
bundles from before the key pad with zeros, under which the border was a place of its own: most normal
histology crops had their highest defect probability there, docs/measured.md).
"""

from __future__ import annotations

from typing import Literal, cast, get_args

import torch
from torch import nn
from torch.nn import functional as F

from aeguard.config import draem_segmenter_stages
from aeguard.train.ensemble import members_mean
from aeguard.train.padding import GridPadding

SEGMENTER_CHANNELS = [16, 32, 64, 128]
Padding = Literal["zeros", "replicate"]  # how every convolution pads (config conv_padding)
PADDINGS: tuple[Padding, ...] = get_args(Padding)
# what the segmenter reads (config segmenter_input): the image beside its restoration, or those and their
# absolute difference, which its first (stride-2) convolution cannot form: a thin scratch's difference can
# be of either sign across the kernel and cancel there
SegmenterInput = Literal["pair", "difference"]
SEGMENTER_INPUTS: tuple[SegmenterInput, ...] = get_args(SegmenterInput)


def conv_block(n_in: int, n_out: int, stride: int = 1, padding: Padding = "zeros") -> nn.Sequential:
    conv = nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False, padding_mode=padding)
    return nn.Sequential(conv, nn.BatchNorm2d(n_out), nn.LeakyReLU(0.2))


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1 x 1 convolution to one channel as a weighted channel sum: the same numbers, and far faster than the
    CPU's convolution kernel for a single output channel (2 ms against 35 ms forward and back, measured on
    16 x 8 x 128 x 128; benchmarks/draem_step.py times the whole step)."""
    assert conv.bias is not None and conv.out_channels == 1
    return (x * conv.weight.view(1, -1, 1, 1)).sum(dim=1, keepdim=True) + conv.bias.view(1, 1, 1, 1)


class Upsample(nn.Module):
    """x2 nearest-neighbour upsampling then a 3x3 convolution: no checkerboard, one ONNX Resize."""

    def __init__(self, n_in: int, n_out: int, padding: Padding = "zeros"):
        super().__init__()
        self.conv = conv_block(n_in, n_out, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Restorer(nn.Module):
    """Encoder to a spatial code of `code_channels` on a grid 2**len(channels) times smaller, and back."""

    def __init__(self, image_channels: int, channels: list[int], code_channels: int, padding: Padding = "zeros"):
        super().__init__()
        stem = channels[0] // 2
        down: list[nn.Module] = [conv_block(image_channels, stem, padding=padding)]
        widths = [stem, *channels]
        down += [conv_block(a, b, stride=2, padding=padding) for a, b in zip(widths, widths[1:])]
        self.encoder = nn.Sequential(*down, nn.Conv2d(channels[-1], code_channels, 1))
        up: list[nn.Module] = [nn.Conv2d(code_channels, channels[-1], 1), nn.LeakyReLU(0.2)]
        back = list(reversed(widths))
        up += [Upsample(a, b, padding) for a, b in zip(back, back[1:])]
        last = nn.Conv2d(stem, image_channels, 3, padding=1, padding_mode=padding)
        self.decoder = nn.Sequential(*up, last, nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Segmenter(nn.Module):
    """A U-Net from (image, restoration) to one defect logit per pixel.

    It works at half resolution (its first convolution has stride 2) and its logits are upsampled bilinearly:
    the full-resolution layers were 70 % of a training step's time on the CPU. One narrow full-resolution
    layer before the head (8 channels reading the upsampled features beside the image and its restoration),
    tried for thin scratches, made image AUROC worse on both development folders (fit_trial_segmenter)."""

    def __init__(
        self, image_channels: int, channels: list[int], padding: Padding = "zeros", reads: SegmenterInput = "pair"
    ):
        super().__init__()
        self.down = nn.ModuleList()
        self.difference = reads == "difference"
        n_in = (3 if self.difference else 2) * image_channels
        for width in channels:
            block = (conv_block(n_in, width, stride=2, padding=padding), conv_block(width, width, padding=padding))
            self.down.append(nn.Sequential(*block))
            n_in = width
        self.upsample, self.merge = nn.ModuleList(), nn.ModuleList()
        for deep, skip in zip(reversed(channels), list(reversed(channels))[1:]):  # built in pairs: the order of
            self.upsample.append(Upsample(deep, skip, padding))  # initialisation is the one the benchmark measured
            self.merge.append(conv_block(2 * skip, skip, padding=padding))
        self.head = nn.Conv2d(channels[0], 1, 1)

    def forward(self, image: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        parts = [image, restored, (image - restored).abs()] if self.difference else [image, restored]
        x, skips = torch.cat(parts, dim=1), []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        for upsample, merge, skip in zip(self.upsample, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([upsample(x), skip], dim=1))
        return F.interpolate(pointwise(self.head, x), scale_factor=2.0, mode="bilinear", align_corners=False)


class Draem(nn.Module):
    """Restorer + segmenter. forward() is the restoration (what the training loop's validation and the
    collapse check look at); defect_logits() is the map."""

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        conv_channels: list[int],
        code_channels: int,
        segmenter_stages: int | None = None,
        padding: Padding = "zeros",
        segmenter_input: SegmenterInput = "pair",
    ):
        super().__init__()
        self.shape = (channels, height, width)
        # None: a bundle from before the key, whose segmenter followed the restorer it was given
        stages = segmenter_stages or draem_segmenter_stages(len(conv_channels))
        edge = "replicate" if padding == "replicate" else "constant"
        # both networks halve the image stage by stage, so it is padded for the deeper of the two (the segmenter,
        # two stages, below 17 px; a size it could not halve evenly was a crash there, so no bundle changes)
        self.padding = GridPadding(height, width, max(len(conv_channels), stages), edge)
        self.restorer = Restorer(channels, conv_channels, code_channels, padding)
        self.segmenter = Segmenter(channels, SEGMENTER_CHANNELS[:stages], padding, segmenter_input)
        self.latent = code_channels  # the code output: the spatial code averaged over its grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.padding.crop(self.restorer(self.padding.pad(x)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.restorer.encoder(self.padding.pad(x)).mean(dim=(2, 3))

    def defect_logits(self, image: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        return self.padding.crop(self.segmenter(self.padding.pad(image), self.padding.pad(restored)))


class DraemScoringGraph(nn.Module):
    """What goes to ONNX for a draem bundle: score (N,), error_map (N, 1, H, W) = defect probability (the
    members' mean), reconstruction (N, C, H, W) (the members' mean), code (N, code channels) of the first
    member."""

    def __init__(self, members: list[Draem], config: dict):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.pool = int(config.get("pool", 1))
        self.knn = 0  # no latent-distance term: the map is the score's only source

    @property
    def model(self) -> Draem:
        return cast(Draem, self.members[0])

    def forward(self, images: torch.Tensor):
        restorations, probabilities = [], []
        for member in cast(list[Draem], list(self.members)):
            restored = member(images)
            restorations.append(restored)
            probabilities.append(torch.sigmoid(member.defect_logits(images, restored)))
        # an ensemble's map is its members' mean defect probability: independently seeded fits differ (one fit
        # is one draw), and the mean of their maps differs less from one ensemble to the next
        probability, restored = members_mean(probabilities), members_mean(restorations)
        smoothed = probability
        if self.pool > 1:
            smoothed = F.avg_pool2d(probability, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)
        score = smoothed.flatten(1).max(dim=1).values
        return score, probability, restored, self.model.encode(images)
