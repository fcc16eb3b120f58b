"""Does a rotation-prediction score add to the reconstruction score on the hard one-class classes? (issue 21)

A first measurement on the hard classes, before anything becomes an `aeguard fit` option: beside the
best reconstruction recipe (`conv-erase-blur-knn`, fitted through the public API exactly as
benchmarks/one_class.py does), a small classifier (RotNet / GEOM-style, three conv blocks) learns which of
the four rotations {0, 90, 180, 270} was applied to a normal image. Its anomaly score is the negative
log-likelihood of the right rotation, summed over the four rotated copies. Both scores are combined by
z-scores against the held-out normal images (the split `fit` holds out for calibration; no test data, no
anomalies), and by their product.

    python -m benchmarks.rotation_probe                                   # Fashion-MNIST 0,2,4,6 and MNIST 2,3,8
    python -m benchmarks.rotation_probe --targets fashion-mnist:6 --epochs 2

Writes benchmarks/results/rotation_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from aeguard import Detector
from aeguard.data.catalog import load_split
from aeguard.data.splits import train_validation_split
from benchmarks.one_class import PRESETS
from benchmarks.results_io import StealMeter, write_results

RECIPE = "conv-erase-blur-knn"
DEFAULT_TARGETS = "fashion-mnist:0,fashion-mnist:2,fashion-mnist:4,fashion-mnist:6,mnist:2,mnist:3,mnist:8"
VAL_FRACTION = 0.1  # aeguard fit's default


def rotation_net() -> nn.Module:
    def block(inputs: int, outputs: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(), nn.MaxPool2d(2)
        )

    return nn.Sequential(
        block(1, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4)
    )


def rotated(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) -> its four rotations stacked (4N, 1, H, W) and which rotation each is."""
    return torch.cat([torch.rot90(batch, k, (2, 3)) for k in range(4)]), torch.arange(4).repeat_interleave(len(batch))


@torch.no_grad()
def rotation_scores(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    model.eval()
    parts = []
    for start in range(0, len(images), batch_size):
        inputs, labels = rotated(images[start : start + batch_size])
        log_p = torch.log_softmax(model(inputs), dim=1)[torch.arange(len(inputs)), labels]
        parts.append(-log_p.view(4, -1).sum(dim=0))
    return torch.cat(parts).numpy()


def train_rotation_net(fit_images: torch.Tensor, val_images: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    """Adam, batches of 64 images (256 rotated copies); keeps the epoch with the lowest held-out loss."""
    torch.manual_seed(seed)
    model = rotation_net()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    best_loss, best_state = float("inf"), None
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(fit_images))
        for start in range(0, len(order), 64):
            inputs, labels = rotated(fit_images[order[start : start + 64]])
            loss = nn.functional.cross_entropy(model(inputs), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        held_out = float(rotation_scores(model, val_images).mean())
        if held_out < best_loss:
            best_loss, best_state = held_out, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model


def z_scores(values: np.ndarray, normal: np.ndarray) -> np.ndarray:
    return (values - normal.mean()) / (normal.std() + 1e-12)


def run_one(dataset: str, normal: int, epochs: int, seed: int) -> dict:
    train = load_split(dataset, "train", None, allow_download=False)
    test = load_split(dataset, "test", None, allow_download=False)
    truth = test.labels != normal
    images = train.images[train.labels == normal]
    started = time.perf_counter()
    with StealMeter() as steal:
        detector = Detector(**PRESETS[RECIPE], epochs=20, seed=seed, val_fraction=VAL_FRACTION).fit(images)
        reconstruction_seconds = time.perf_counter() - started
        # the same held-out normal images fit used for early stopping and calibration
        fit_part, val_part = train_validation_split(images, VAL_FRACTION, seed)
        as_tensor = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
        model = train_rotation_net(as_tensor(fit_part), as_tensor(val_part), epochs, seed)
        rotation_seconds = time.perf_counter() - started - reconstruction_seconds
        rec, rec_val = detector.decision_function(test.images), detector.decision_function(val_part)
        rot, rot_val = rotation_scores(model, as_tensor(test.images)), rotation_scores(model, as_tensor(val_part))
    combined = {
        "reconstruction": rec,
        "rotation": rot,
        "z_sum": z_scores(rec, rec_val) + z_scores(rot, rot_val),
        "product": rec * rot,
    }
    return {
        "dataset": dataset,
        "normal": normal,
        "seed": seed,
        "epochs": epochs,
        "auroc": {name: round(100 * roc_auc_score(truth, score), 2) for name, score in combined.items()},
        "reconstruction_seconds": round(reconstruction_seconds, 1),
        "rotation_seconds": round(rotation_seconds, 1),
        "cpu_steal": steal.fraction,
    }


def markdown(rows: list[dict], epochs: int) -> str:
    lines = [
        "# Rotation prediction beside the reconstruction score, hard one-class classes",
        "",
        f"`python -m benchmarks.rotation_probe` (seed 0, one run per class). Reconstruction: `{RECIPE}` "
        "(`aeguard fit --model conv --activation relu --noise erase:0.25 --score blur --knn 5 --epochs 20`). "
        f"Rotation: a 3-block conv classifier of the 4 rotations, {epochs} epochs, its score the summed NLL of the "
        "right rotation. z-sum: both standardised on the held-out normal images and added; product: their product.",
        "",
        "| data set | normal class | reconstruction | rotation | z-sum | product | rotation time / fit time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        a = row["auroc"]
        ratio = row["rotation_seconds"] / row["reconstruction_seconds"]
        lines.append(
            f"| {row['dataset']} | {row['normal']} | {a['reconstruction']:.2f} | {a['rotation']:.2f} | "
            f"{a['z_sum']:.2f} | {a['product']:.2f} | {ratio:.1f}x |"
        )
    gains = [row["auroc"]["z_sum"] - row["auroc"]["reconstruction"] for row in rows]
    lines += ["", f"z-sum minus reconstruction, mean over these classes: {np.mean(gains):+.2f} points.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=DEFAULT_TARGETS, help="dataset:class, comma-separated")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for target in args.targets.split(","):
        dataset, normal = target.rsplit(":", 1)
        rows.append(run_one(dataset, int(normal), args.epochs, args.seed))
        print(rows[-1], flush=True)
        write_results("rotation_probe", {"recipe": RECIPE, "rows": rows}, markdown(rows, args.epochs))


if __name__ == "__main__":
    main()
