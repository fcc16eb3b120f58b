"""Score functions, written as torch modules so the exported ONNX graph computes exactly the same score.

Each maps (image, reconstruction) to a per-pixel error map whose mean over pixels is the score:
- mse:  (x - r)^2
- blur: (G_sigma * (x - r))^2: the residual is smoothed first, so one-pixel jitter along strokes
        counts little and a missing or extra part (a coherent residual blob) counts a lot
- ssim: 1 - SSIM(x, r) with a Gaussian window of width sigma: structure, not intensity
- elbo: (x - r)^2 plus beta * KL(q(z|x) || p(z)) / pixels, the negative ELBO of a VAE at its mean code
An ensemble averages its members' error maps (and scores).

With top = Q < 1 the score is the mean of the largest Q share of the error map's values instead of all of
them: an anomaly usually differs from the normal class in a part of the image (a missing loop, an extra
stroke), and averaging that part with the many pixels the model gets right dilutes it.

With knn = K the score is also multiplied by the mean distance from the image's latent code to its K
nearest codes of training images (stored in the graph): an image the decoder reconstructs well but
whose code lies away from every normal code is still flagged. A product needs no scale matching
between the two terms, and for an ensemble the distance is averaged over the members.

With a rotation head (train/rotation.py) the score is the sum of two z-scores: the reconstruction score
above and the rotation-prediction score, each standardised by its mean and standard deviation on the
held-out normal images (stored in the graph). The error map stays the reconstruction's.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from aeguard.config import DEFINITIONS, SCORE_FUNCTIONS, score_config  # noqa: F401 - re-exported
from aeguard.errors import TrainingCollapsedError
from aeguard.train.ensemble import members_mean
from aeguard.train.error_maps import ErrorMap  # noqa: F401 - re-exported
from aeguard.train.models import Autoencoder
from aeguard.train.objectives import kl_per_image
from aeguard.train.rotation import RotationHead

MAX_REFERENCE_CODES = 10_000  # bounds the graph's size and the per-image cost of the distance search
STANDARDISABLE = 1e-6  # a held-out std at most this share of the mean is rounding noise, not spread


def nearest_distance(codes: torch.Tensor, references: torch.Tensor, k: int) -> torch.Tensor:
    """Mean Euclidean distance from each code to its k nearest references: a matmul and TopK, as in ONNX.

    In float64: |a|^2 - 2ab + |b|^2 cancels, and in float32 torch and onnxruntime (which sum the matmul in
    different orders) then disagree by more than the 1e-5 parity tolerance.
    """
    codes, references = codes.double(), references.double()
    squared = (
        (codes * codes).sum(dim=1, keepdim=True)
        - 2.0 * codes @ references.T
        + (references * references).sum(dim=1)[None, :]
    )
    nearest = torch.topk(squared, k, dim=1, largest=False).values
    return nearest.clamp(min=0.0).sqrt().mean(dim=1).float()


def top_count(share: float, values: int) -> int:
    """How many of an error map's `values` the largest `share` of them is (at least one)."""
    return max(1, round(share * values))


def largest_mean(error_map: torch.Tensor, count: int) -> torch.Tensor:
    """Mean of each image's `count` largest error-map values: the --score-top score."""
    return error_map.flatten(1).topk(count, dim=1).values.mean(dim=1)


class ScoringGraph(nn.Module):
    """The autoencoder(s) plus the scoring step: what goes to ONNX.

    Outputs: score (N,), error_map (N, C, H, W), reconstruction (N, C, H, W), code (N, latent) of the
    first member (for the latent-space plot).
    """

    def __init__(self, members: list[Autoencoder], config: dict, channels: int, rotation: RotationHead | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.error_map = ErrorMap(config, channels)
        self.beta = float(config.get("beta", 0.0)) if config["function"] == "elbo" else 0.0
        self.knn = int(config.get("knn") or 0)
        self.top = float(config.get("top") or 1.0)
        # how many error-map values the score averages: a bundle's image size is fixed, so k is a graph constant
        self.top_values = top_count(self.top, math.prod(members[0].shape))
        if self.knn:
            # (members, references, latent); filled by set_reference_codes, saved with the weights
            shape = (len(members), int(config.get("references") or 1), members[0].latent)
            self.register_buffer("reference_codes", torch.zeros(shape))
        self.rotation = rotation
        if rotation is not None:
            # rows: reconstruction, rotation; columns: mean, std on the held-out normal images (set_standardisation)
            self.register_buffer("standardisation", torch.tensor([[0.0, 1.0], [0.0, 1.0]]))

    @property
    def autoencoders(self) -> list[Autoencoder]:
        return cast(list[Autoencoder], list(self.members))

    @torch.no_grad()
    def set_reference_codes(self, images: torch.Tensor, seed: int = 0, batch_size: int = 1024) -> int:
        """Store every member's codes of (at most MAX_REFERENCE_CODES of) the training images; returns the count."""
        if len(images) > MAX_REFERENCE_CODES:
            keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:MAX_REFERENCE_CODES]
            images = images[keep.sort().values]
        codes = [
            torch.cat([member.encode(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
            for member in self.autoencoders
        ]
        self.reference_codes = torch.stack(codes).float()
        return len(images)

    @torch.no_grad()
    def set_standardisation(self, images: torch.Tensor, batch_size: int = 1024) -> dict:
        """Measure both scores' mean and std on `images` (the held-out normal ones) and store them."""
        assert self.rotation is not None
        self.eval()
        batches = range(0, len(images), batch_size)
        reconstruction = torch.cat([self.reconstruction_score(images[i : i + batch_size])[0] for i in batches])
        rotation = self.rotation.scores(images)
        rows = [[float(s.double().mean()), float(s.double().std(correction=0))] for s in (reconstruction, rotation)]
        for name, (mean, std) in zip(("reconstruction", "rotation"), rows):
            # a score that is (nearly) the same for every held-out image has no scale to standardise by: dividing
            # by its rounding noise would make that noise the anomaly score
            if not std > STANDARDISABLE * abs(mean):
                raise TrainingCollapsedError(
                    f"the {name} score is the same for every held-out normal image (mean {mean:.6g}, std {std:.3g}), "
                    "so it cannot be standardised for --rotation; are the held-out images copies of training "
                    "images? Fit without --rotation, or on more varied images"
                )
        self.standardisation = torch.tensor(rows)
        return {"reconstruction": rows[0], "rotation": rows[1]}

    def forward(self, images: torch.Tensor):
        score, error_map, reconstruction, first_code = self.reconstruction_score(images)
        if self.rotation is not None:
            (rec_mean, rec_std), (rot_mean, rot_std) = self.standardisation
            score = (score - rec_mean) / rec_std + (self.rotation(images) - rot_mean) / rot_std
        return score, error_map, reconstruction, first_code

    def reconstruction_score(self, images: torch.Tensor):
        maps, reconstructions, extras, distances, first_code = [], [], [], [], None
        for index, member in enumerate(self.autoencoders):
            code, log_var = member.code_statistics(images)
            reconstruction = member.decode(code)
            maps.append(self.error_map(images, reconstruction))
            reconstructions.append(reconstruction)
            if self.beta and log_var is not None:
                extras.append(self.beta * kl_per_image(code, log_var) / images[0].numel())
            if self.knn:
                references = self.reference_codes[index]
                distances.append(nearest_distance(code, references, min(self.knn, len(references))))
            if first_code is None:
                first_code = code
        error_map = members_mean(maps)
        if self.top < 1.0:
            score = largest_mean(error_map, self.top_values)
        else:
            score = error_map.mean(dim=(1, 2, 3))
        if extras:
            score = score + members_mean(extras)
        if distances:
            score = score * members_mean(distances)
        return score, error_map, members_mean(reconstructions), first_code
