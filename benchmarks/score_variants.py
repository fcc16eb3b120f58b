"""Score functions compared on the same trained models: which way of turning error maps into one number separates best.

For each normal class it trains the erase-and-blur ensemble of the one-class benchmark once (the members
`aeguard fit --model conv --noise erase:0.25 --ensemble N` trains, same seeds, so the same weights), then
scores the full test set many ways in torch and records the AUROC of each:

- sigma: the Gaussian blur of the residual before squaring (0: plain squared error; `--score-sigma`)
- top:   the mean over the largest share of the error map's values (`--score-top`; 1: every pixel)
- m0 / xN: the first member alone, or the mean of the N members' error maps (`--ensemble`)
- knnK^A: times (mean distance from the latent code to its K nearest training codes) ** A (`--knn K` is A = 1)

Retraining dominates the cost, so comparing 100+ variants costs what one `fit` per class costs (about
70 s per class on 2 CPU cores with 3 members). The one-class benchmark then measures the chosen variant
through the real pipeline (ONNX export, onnxruntime) over several seeds; on seed 0 they agree to the
last digit. Results: benchmarks/results/score_variants_<dataset>.json / .md (resumable per class).

    python -m benchmarks.score_variants --dataset fashion-mnist --seed 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from aeguard import Detector
from aeguard.data.catalog import load_split
from aeguard.data.splits import as_model_input, train_validation_split
from aeguard.train.ensemble import members_mean
from aeguard.train.scoring import (
    MAX_REFERENCE_CODES,
    ErrorMap,
    largest_mean,
    nearest_distance,
    score_config,
    top_count,
)
from benchmarks.results_io import RESULTS_DIR, machine

SIGMAS = (0.0, 0.75, 1.0, 1.5, 2.0)
TOPS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)
NEIGHBOURS = (1, 5, 20)
EXPONENTS = (0.5, 1.0, 2.0, 3.0)
BATCH = 1000


def variant_name(sigma: float, top: float, members: str, knn: int = 0, exponent: float = 1.0) -> str:
    return f"sigma={sigma} top={top} {members}" + (f" knn{knn}^{exponent}" if knn else "")


def error_map(sigma: float, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """The graph's own error map: the blurred residual squared, or the plain one for sigma 0."""
    config = score_config("blur", sigma) if sigma else score_config("mse")
    return ErrorMap(config, images.shape[1])(images, reconstruction)


def variant_aurocs(
    is_anomaly: np.ndarray,
    images: torch.Tensor,
    reconstructions: list[torch.Tensor],
    distances: list[dict[int, torch.Tensor]],
) -> dict[str, float]:
    """AUROC of every variant, from each member's reconstruction and kNN distances (K -> distance per image)."""
    results = {}
    ensemble = f"x{len(reconstructions)}"
    for sigma in SIGMAS:
        with torch.no_grad():
            maps = [error_map(sigma, images, r) for r in reconstructions]
        for members, member_maps, member_distances in (("m0", maps[:1], distances[:1]), (ensemble, maps, distances)):
            averaged = members_mean(member_maps)
            for top in TOPS:
                # in logs, so an exponent weighs the two terms; ranks (and AUROC) are those of the product
                error = largest_mean(averaged, top_count(top, averaged[0].numel()))
                log_error = error.double().clamp(min=1e-300).log()
                results[variant_name(sigma, top, members)] = roc_auc_score(is_anomaly, log_error.numpy())
                for k in NEIGHBOURS:
                    distance = members_mean([d[k] for d in member_distances])
                    log_distance = distance.double().clamp(min=1e-300).log()
                    for exponent in EXPONENTS:
                        results[variant_name(sigma, top, members, k, exponent)] = roc_auc_score(
                            is_anomaly, (log_error + exponent * log_distance).numpy()
                        )
    return {name: round(float(auroc), 6) for name, auroc in results.items()}


@torch.no_grad()
def batched(function, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([function(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])


def run_class(dataset: str, normal: int, seed: int, members: int, epochs: int) -> dict:
    """Fit the erase-and-blur ensemble through the public API, then score its members' outputs many ways."""
    started = time.perf_counter()
    train, test = (load_split(dataset, split, None, allow_download=False) for split in ("train", "test"))
    normal_images = train.images[train.labels == normal]
    detector = Detector(
        model="conv",
        noise="erase",
        noise_level=0.25,
        score="blur",
        ensemble=members,
        epochs=epochs,
        seed=seed,
        device="cpu",
    ).fit(normal_images)
    # the training split fit held its validation images out of: the kNN references, as in the graph
    fit_images, _ = train_validation_split(as_model_input(normal_images), detector.val_fraction, seed)
    images = torch.from_numpy(as_model_input(test.images))
    train_images = torch.from_numpy(fit_images[:MAX_REFERENCE_CODES])
    reconstructions, distances = [], []
    for model in detector.models_:  # seeded seed, seed + 1, ... as fit seeds its members
        model = model.cpu().eval()
        reconstructions.append(batched(model, images))
        codes, references = batched(model.encode, images), batched(model.encode, train_images)
        distances.append({k: nearest_distance(codes, references, k) for k in NEIGHBOURS})
    aurocs = variant_aurocs(np.asarray(test.labels != normal), images, reconstructions, distances)
    return {
        "normal": normal,
        "seed": seed,
        "members": members,
        "epochs": epochs,
        "seconds": round(time.perf_counter() - started, 1),
        "auroc": aurocs,
    }


def render_markdown(dataset: str, runs: list[dict], shown: int = 15) -> str:
    classes = sorted({r["normal"] for r in runs})
    variants = set.intersection(*(set(r["auroc"]) for r in runs))
    means = sorted(((statistics.fmean(r["auroc"][v] for r in runs), v) for v in variants), reverse=True)
    members = f"x{runs[0]['members']}"
    baselines = [variant_name(1.0, 1.0, members), variant_name(1.0, 1.0, members, 5, 1.0)]
    lines = [
        f"# Score variants on {dataset}: one trained ensemble per class, scored many ways",
        "",
        f"Classes {classes}, seed(s) {sorted({r['seed'] for r in runs})}, {runs[0]['members']} members, "
        f"{runs[0]['epochs']} epochs at most. AUROC (%) mean over the classes, then per class. "
        "Produced by `python -m benchmarks.score_variants`; names: see its docstring.",
        "",
        "| variant | mean | " + " | ".join(str(r["normal"]) for r in runs) + " |",
        "|---" * (len(runs) + 2) + "|",
    ]
    rows = means[:shown] + [(m, v) for m, v in means if v in baselines and (m, v) not in means[:shown]]
    for mean, variant in rows:
        label = variant + (
            " (fit's `--score blur`" + (" `--knn 5`)" if "knn" in variant else ")") if variant in baselines else ""
        )
        lines.append(
            f"| {label} | {100 * mean:.2f} | " + " | ".join(f"{100 * r['auroc'][variant]:.2f}" for r in runs) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))  # as the one-class benchmark runs
    path = RESULTS_DIR / f"score_variants_{args.dataset}.json"
    payload = json.loads(path.read_text()) if path.exists() else {"benchmark": path.stem, "runs": []}
    for normal in (int(c) for c in args.classes.split(",")):
        if any(
            r["normal"] == normal and r["seed"] == args.seed and r["members"] == args.members for r in payload["runs"]
        ):
            continue
        run = run_class(args.dataset, normal, args.seed, args.members, args.epochs)
        payload["runs"].append(run)
        payload["machine"] = machine()
        path.write_text(json.dumps(payload, indent=1) + "\n")
        path.with_suffix(".md").write_text(render_markdown(args.dataset, payload["runs"]))
        best = max(run["auroc"], key=run["auroc"].get)
        print(
            f"{args.dataset} class {normal}: {run['seconds']:.0f} s, best {best} {100 * run['auroc'][best]:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
