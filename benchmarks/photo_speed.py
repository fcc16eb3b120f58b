"""Speed at real image sizes: training and batch scoring at 28 px grey, 128 and 256 px colour.

Training: aeguard's loop (images held as uint8 on the device, scaled per batch, validation and best-weights
copy every epoch) against a bare PyTorch loop of the same model and objective on float32 tensors, in the
precision and layout the loop picks (bf16 autocast and channels-last for draem on a CPU with native bf16),
interleaved, best run of each. Models: the conv autoencoder at 28 px (MNIST's), draem at 128 and 256 px (the
--data default).

Scoring: `aeguard score`'s engine end to end (paths -> decode -> ONNX -> CSV) against its two limits, measured
in the same run: (a) decoding alone in the engine's process pool, (b) onnxruntime alone on decoded batches.
The images are crops of scikit-image's colour photographs written as PNG.

    python -m benchmarks.photo_speed [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aeguard.data.images import load_image
from aeguard.scoring.scorer import Scorer
from aeguard.train.models import default_config
from aeguard.train.objectives import objective_for
from aeguard.train.precision import autocast, resolve_precision, training_memory_format
from benchmarks.results_io import StealMeter, write_results
from benchmarks.score_folder import decode_rate, engine_rate, onnxruntime_rate
from benchmarks.texture_defects import photo
from benchmarks.train_throughput import measure

# size -> (channels, model, training images, scoring images)
SIZES = {28: (1, "conv", 2048, 4000), 128: (3, "draem", 128, 600), 256: (3, "draem", 48, 200)}
BATCH = {"conv": 128, "draem": 16}


def crops(size: int, channels: int, count: int, seed: int = 0) -> np.ndarray:
    """uint8 (count, C, size, size) crops of the colour photographs, resized from twice the size."""
    rng = np.random.default_rng(seed)
    sources = [photo(name) for name in ("ihc", "retina", "astronaut", "coffee")]
    out = np.empty((count, channels, size, size), np.uint8)
    for index in range(count):
        source = sources[index % len(sources)]
        side = min(2 * size, *source.shape[:2])
        y, x = rng.integers(0, source.shape[0] - side + 1), rng.integers(0, source.shape[1] - side + 1)
        image = Image.fromarray(np.rint(source[y : y + side, x : x + side] * 255).astype(np.uint8))
        image = image.resize((size, size), Image.Resampling.BILINEAR)
        if channels == 1:
            image = image.convert("L")
        array = np.asarray(image)
        out[index] = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return out


def bare_loop(model, images: np.ndarray, epochs: int, batch_size: int, device: torch.device) -> None:
    """Forward, backward and step of the same objective on float32 tensors, nothing else; in the precision and
    memory layout aeguard's loop picks for the model (aeguard/train/precision.py), so that the two loops differ
    in their bookkeeping only."""
    precision, memory = resolve_precision("auto", device, model), training_memory_format(device, model)
    model.to(memory_format=memory)
    objective = objective_for(model, default_training())
    x = torch.from_numpy(images.astype(np.float32) / 255.0).to(device)
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch_size):
            with autocast(precision, device):
                loss = objective(x[order[start : start + batch_size]].contiguous(memory_format=memory))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def default_training() -> dict:
    return {"noise": None, "l1": 0.0, "contraction": 0.0, "beta": 0.0}


def measure_training(size: int, repeats: int, epochs: int = 1) -> dict:
    """aeguard's loop on uint8 crops against the bare loop above, through train_throughput's interleaved runs."""
    channels, kind, count, _ = SIZES[size]
    images = crops(size, channels, count)
    held_out = max(2, count // 10)
    config = default_config(kind, channels, size, size)
    cpu = torch.device("cpu")
    return measure(config, images[held_out:], images[:held_out], epochs, BATCH[kind], repeats, cpu, bare=bare_loop)


def scoring_bundle(size: int, work: Path) -> Path:
    """A bundle of the size's model, trained one epoch (its speed does not depend on how well it is trained)."""
    import aeguard.train.fit as fit_module
    from aeguard import Detector

    # One epoch leaves the model nearly untrained, which the collapse check refuses; scoring speed does not
    # depend on the weights, so the check is switched off for these throwaway bundles only.
    fit_module.COLLAPSE_SPREAD = fit_module.COLLAPSE_EXPLAINED = 0.0
    channels, kind, count, _ = SIZES[size]
    out = work / f"bundle-{size}"
    detector = Detector(model=kind, epochs=1, batch_size=BATCH[kind], device="cpu")
    detector.fit(crops(size, channels, min(count, 64), seed=1)).save(out, force=True)
    return out


def measure_scoring(size: int, work: Path, repeats: int) -> dict:
    channels, kind, _, count = SIZES[size]
    folder = work / f"png-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(crops(size, channels, count, seed=2)):
        path = folder / f"{index:05d}.png"
        Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0)).save(path)
        paths.append(path)
    bundle = scoring_bundle(size, work)
    scorer = Scorer(bundle, spin=False)
    prep = scorer.preprocessing
    decoded = np.stack([load_image(p, prep) for p in paths])
    rounds: dict[str, list[float]] = {"decode": [], "onnxruntime": [], "engine": []}
    for _ in range(repeats):
        rounds["decode"].append(decode_rate(paths, 2, prep))
        rounds["onnxruntime"].append(onnxruntime_rate(scorer, decoded))
        rounds["engine"].append(engine_rate(scorer, paths, work / f"scores-{size}.csv"))
    a, b, c = (max(rounds[k]) for k in ("decode", "onnxruntime", "engine"))
    return {
        "model": kind,
        "decode_images_per_s": a,
        "onnxruntime_images_per_s": b,
        "engine_images_per_s": c,
        "ratio": c / min(a, b),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", default="28,128,256")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aeguard-photo-speed-"))
    results = {}
    for size in map(int, args.sizes.split(",")):
        with StealMeter() as steal:
            results[size] = {
                "training": measure_training(size, args.repeats),
                "scoring": measure_scoring(size, work, args.repeats),
            }
        results[size]["steal"] = steal.fraction
        t, s = results[size]["training"], results[size]["scoring"]
        print(
            f"{size} px: train {t['aeguard_images_per_s']:.1f} vs bare {t['bare_images_per_s']:.1f} img/s; "
            f"score {s['engine_images_per_s']:.0f} vs decode {s['decode_images_per_s']:.0f} "
            f"/ onnxruntime {s['onnxruntime_images_per_s']:.0f} img/s"
        )
    lines = [
        "# Speed at real sizes: training and batch scoring, 28 px grey to 256 px colour",
        "",
        f"Best of {args.repeats} interleaved runs (all in the JSON), CPU ({torch.get_num_threads()} torch threads), "
        "torch " + torch.__version__ + ".",
        "",
        "| size | model | train: aeguard loop | bare loop | ratio | score: engine | decode only | onnxruntime only "
        "| engine / min | CPU steal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size, row in results.items():
        t, s = row["training"], row["scoring"]
        channels = "grey" if SIZES[size][0] == 1 else "RGB"
        steal = "n/a" if row["steal"] is None else f"{row['steal']:.0%}"
        lines.append(
            f"| {size} px {channels} | {t['model']} | {t['aeguard_images_per_s']:,.1f} img/s | "
            f"{t['bare_images_per_s']:,.1f} img/s | **{t['ratio']:.2f}** | {s['engine_images_per_s']:,.0f} img/s | "
            f"{s['decode_images_per_s']:,.0f} img/s | {s['onnxruntime_images_per_s']:,.0f} img/s | "
            f"**{s['ratio']:.2f}** | {steal} |"
        )
    lines += [
        "",
        "The aeguard loop's time includes its per-epoch validation loss and best-weights copy; the bare loop does "
        "forward, backward and step only. Training images are held as uint8 (a quarter of float32's memory).",
        "",
        "Regenerate: `.venv/bin/python -m benchmarks.photo_speed`",
    ]
    print(write_results("photo_speed", {"repeats": args.repeats, "results": results}, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
