"""The score-variant benchmark's arithmetic, on synthetic residuals whose answer is known."""

import numpy as np
import torch

from benchmarks import score_variants as sv


def synthetic(n=40, seed=0):
    """Normal images: a faint residual everywhere; anomalies: a strong 2x2 blob and nothing else, with the
    same mean squared error, so only a score that looks at the largest values separates them. The images
    are the residuals, against reconstructions of zeros."""
    generator = torch.Generator().manual_seed(seed)
    is_anomaly = np.arange(n) % 2 == 1
    residuals = torch.full((n, 1, 8, 8), 0.1) * (1 + 0.05 * torch.randn(n, 1, 8, 8, generator=generator))
    for i in np.flatnonzero(is_anomaly):
        residuals[i] = 0.0
        residuals[i, 0, 3:5, 3:5] = 0.4 * (1 + 0.05 * torch.randn(2, 2, generator=generator))
    # latent distances: larger for anomalies, as a code away from every normal code would be
    distance = torch.from_numpy(np.where(is_anomaly, 2.0, 1.0)) + 0.01 * torch.rand(n, generator=generator).double()
    return is_anomaly, residuals, {k: distance for k in sv.NEIGHBOURS}


def test_every_variant_is_scored_and_the_top_share_finds_a_local_anomaly():
    is_anomaly, residuals, distances = synthetic()
    zeros = torch.zeros_like(residuals)
    aurocs = sv.variant_aurocs(is_anomaly, residuals, [zeros, zeros.clone()], [distances, distances])
    per_members = len(sv.TOPS) * (1 + len(sv.NEIGHBOURS) * len(sv.EXPONENTS))
    assert len(aurocs) == len(sv.SIGMAS) * 2 * per_members
    assert aurocs[sv.variant_name(0.0, 1.0, "x2")] < 0.8  # the plain mean barely tells them apart
    assert aurocs[sv.variant_name(0.0, 0.1, "x2")] == 1.0  # the largest tenth does
    assert aurocs[sv.variant_name(0.0, 0.1, "m0")] == aurocs[sv.variant_name(0.0, 0.1, "x2")]  # identical members
    assert aurocs[sv.variant_name(0.0, 1.0, "x2", 5, 3.0)] == 1.0  # a heavy kNN term alone separates them


def test_markdown_lists_the_best_variant_first_and_always_the_baselines():
    is_anomaly, residuals, distances = synthetic()
    runs = [
        {
            "normal": c,
            "seed": 0,
            "members": 2,
            "epochs": 1,
            "seconds": 1.0,
            "auroc": sv.variant_aurocs(is_anomaly, residuals, [torch.zeros_like(residuals)] * 2, [distances] * 2),
        }
        for c in (3, 7)
    ]
    table = sv.render_markdown("mnist", runs, shown=2)
    rows = [line for line in table.splitlines() if line.startswith("| sigma=")]
    assert rows[0].split(" | ")[1] == "100.00"
    assert any("(fit's `--score blur`)" in row for row in rows)
    assert any("(fit's `--score blur` `--knn 5`)" in row for row in rows)
    assert len(rows) == 4 and all(row.count("|") == 5 for row in rows)  # name, mean, two classes
