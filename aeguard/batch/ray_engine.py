"""`aeguard score --engine ray`: the same rows, scored on a Ray cluster (optional extra: aeguard[ray]).

Paths stream in windows so the driver's memory stays bounded; each window becomes a Ray Dataset
whose blocks an actor pool of onnxruntime sessions decodes and scores (the workers must see the
same file system). Rows come back in input order and go through the local engine's writer.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from aeguard.batch.engine import ScoreOptions, ScoreSummary, prepare_maps_folder, record_row, unscored, write_heatmap
from aeguard.batch.writers import RowWriter
from aeguard.errors import UsageError
from aeguard.scoring.results import ItemResult

WINDOW = 100_000  # paths per Ray Dataset


class _RayScorer:
    """One onnxruntime session per actor, built once and reused for every block it is given."""

    def __init__(self, bundle: str, max_pixels: int, save_maps: str | None, provider: str = "auto"):
        import ray

        from aeguard.scoring.scorer import Scorer

        self.node = ray.get_runtime_context().get_node_id()  # the summary counts the work of each node
        self.scorer = Scorer(Path(bundle), spin=False, provider=provider)  # decoding shares these cores
        self.max_pixels = max_pixels
        self.save_maps = Path(save_maps) if save_maps else None

    def __call__(self, batch: dict) -> dict:
        from aeguard.batch.decoding import decode_chunk

        paths = [str(p) for p in batch["file"]]  # absolute: a worker's working folder is not the driver's
        decoded = decode_chunk(paths, self.scorer.preprocessing, self.max_pixels)
        results, error_maps = self.scorer.score_decoded(decoded, error_maps=self.save_maps is not None)
        if self.save_maps is not None:
            for path, result, error_map in zip(map(str, batch["path"]), results, error_maps):  # named as given
                if result.is_anomaly and error_map is not None:
                    write_heatmap(self.save_maps, path, error_map, self.scorer.map_scale)
        # Ray blocks are columns: NaN / None stand for "no score" and "no verdict"
        return {
            "path": batch["path"],
            "score": np.array([np.nan if r.score is None else r.score for r in results], np.float64),
            "is_anomaly": np.array([r.is_anomaly for r in results], dtype=object),
            "error": np.array([r.error or "" for r in results], dtype=object),
            "node": np.array([self.node] * len(results), dtype=object),
        }


def score_paths_on_ray(
    bundle: Path,
    paths: Iterable[Path],
    writer: RowWriter,
    options: ScoreOptions,
    done: Counter | None,
    address: str | None = None,
    provider: str = "auto",
    on_error: Callable[[str], None] | None = None,
    num_cpus: int | None = None,
) -> ScoreSummary:
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'aeguard[ray]'") from None
    from aeguard.scoring.scorer import Scorer

    threshold = Scorer(bundle).threshold  # checks the bundle here before any cluster work
    if options.save_maps is not None:
        prepare_maps_folder(options.save_maps)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            # no address: a new instance of this machine's own, never whatever /tmp/ray last recorded (a
            # cluster stopped by a crash leaves its address there, and joining it waits forever)
            address=address or "local",
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in input order, as the local engine writes them
    context.enable_progress_bars = False
    summary = ScoreSummary()
    started = time.perf_counter()
    actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
    remaining = unscored(paths, Counter(done or ()), summary)
    try:
        while window := list(itertools.islice(remaining, WINDOW)):
            # rows keep each path as given; workers open it made absolute against the driver's folder
            items = [{"path": p, "file": os.path.abspath(p)} for p in window]
            dataset = ray.data.from_items(items).map_batches(
                _RayScorer,
                fn_constructor_args=(
                    str(Path(bundle).resolve()),
                    options.max_pixels,
                    str(options.save_maps.resolve()) if options.save_maps else None,
                    provider,
                ),
                batch_size=options.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=1,
            )
            for batch in dataset.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
                for path, score, flagged, error, node in zip(
                    batch["path"], batch["score"], batch["is_anomaly"], batch["error"], batch["node"]
                ):
                    result = ItemResult(error=str(error)) if error else ItemResult(float(score), bool(flagged))
                    record_row(writer, summary, str(path), threshold, result, on_error)
                    summary.by_node[str(node)] += 1
                writer.flush()
    finally:
        if started_here:
            ray.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary
