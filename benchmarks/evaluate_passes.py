"""evaluate's inference: scores and maps in one pass of the graph, against the two passes it made before.

Times `aeguard.report.labelled.scores_and_maps` (one pass: each batch's score and error map together) against
`Scorer.score_many` followed by `anomaly_maps` over the masked images (what labelled metrics ran before), on a
bundle and its labelled folder, alternating the two, best of `--repeats`; checks they give the same numbers.

    python -m benchmarks.evaluate_passes --bundle runs/retina --data retina/   # a texture benchmark bundle
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from aeguard.data.sources import labelled_folder
from aeguard.report.labelled import anomaly_maps, scores_and_maps
from aeguard.scoring.scorer import Scorer
from benchmarks.results_io import current_commit, machine, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="Its labelled folder, with masks.")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    scorer = Scorer(args.bundle, intra_op_threads=1)
    images = labelled_folder(args.data, scorer.preprocessing)
    if images.has_mask is None:
        raise SystemExit(f"{args.data} has no masks: there are no maps to make")
    masked = images.has_mask

    def two_passes():
        return scorer.score_many(images.images), anomaly_maps(scorer, images.images[masked])

    def one_pass():
        return scores_and_maps(scorer, images.images, masked)

    seconds: dict[str, list[float]] = {"two passes": [], "one pass": []}
    for _ in range(args.repeats):
        for name, run in (("two passes", two_passes), ("one pass", one_pass)):
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    (scores_2, maps_2), (scores_1, maps_1) = two_passes(), one_pass()
    best = {name: min(values) for name, values in seconds.items()}
    payload = {
        "bundle": str(args.bundle),
        "data": str(args.data),
        "images": len(images.images),
        "masked": int(masked.sum()),
        "best_seconds": best,
        "speedup": best["two passes"] / best["one pass"],
        "max_abs_score_difference": float(np.abs(scores_2 - scores_1).max()),
        "max_abs_map_difference": float(np.abs(maps_2 - maps_1).max()),
        "commit": current_commit(),
        "machine": machine(),
    }
    markdown = "\n".join(
        [
            "# evaluate's inference: one pass for scores and maps",
            "",
            f"`python -m benchmarks.evaluate_passes --bundle {args.bundle} --data {args.data}`: {payload['images']} "
            f"images ({payload['masked']} with a mask), one onnxruntime thread, best of {args.repeats}, alternating.",
            "",
            "| inference | best of runs | speed-up |",
            "| --- | --- | --- |",
            f"| two passes (scores, then maps of the masked images; before) | {best['two passes']:.3f} s | 1.00x |",
            f"| one pass (scores_and_maps) | {best['one pass']:.3f} s | {payload['speedup']:.2f}x |",
            "",
            f"Same numbers: largest score difference {payload['max_abs_score_difference']:.3g}, largest map "
            f"difference {payload['max_abs_map_difference']:.3g}. Commit {payload['commit']}.",
            "",
        ]
    )
    print(write_results("evaluate_passes", payload, markdown))


if __name__ == "__main__":
    main()
