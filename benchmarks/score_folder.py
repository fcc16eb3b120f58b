"""Batch-scoring throughput against its two limits, and memory against the input count.

In one run, on a folder of real MNIST PNGs:
  (a) decode-only rate: the scorer's decoder in the same process pool, no scoring;
  (b) raw onnxruntime rate on already-decoded batches of the same size;
  (c) the scoring engine end to end (paths -> decode -> score -> CSV rows, fsync per batch).
Reports (c) / min(a, b) (target >= 0.8), best of interleaved rounds, for the dense and the conv
model. Then peak RSS of the `aeguard score` CLI for 20k and 200k inputs (the latter a path list
that reuses the files), which must not grow with the input count.

    python -m benchmarks.score_folder [--images 20000 --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from aeguard.batch.decoding import DecodePool
from aeguard.batch.engine import ScoreOptions, score_paths
from aeguard.batch.writers import RowWriter
from aeguard.data.catalog import load_split
from aeguard.data.contract import Preprocessing
from aeguard.data.images import DEFAULT_MAX_PIXELS, load_image
from aeguard.scoring.scorer import Scorer
from benchmarks.results_io import StealMeter, write_results

BATCH = 64
# VmHWM (peak RSS of this process image) rather than ru_maxrss, which survives exec and would
# report the forking parent's footprint.
MAXRSS_PROBE = (
    "import atexit, re, sys; atexit.register(lambda: print('VMHWM_KB', re.search(r'VmHWM:\\s+(\\d+)', "
    "open('/proc/self/status').read()).group(1), file=sys.stderr)); "
    "sys.argv = ['aeguard'] + sys.argv[1:]; from aeguard.cli.main import main; main()"
)


def write_pngs(folder: Path, count: int) -> list[Path]:
    images = load_split("mnist", "train").images
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.png"
        Image.fromarray(images[i % len(images)]).save(path)
        paths.append(path)
    return paths


def decode_rate(paths: list[Path], workers: int, prep: Preprocessing = Preprocessing(1, 28, 28)) -> float:
    """The engine's own decoding (same pool, same batches in flight), with nothing scored."""
    names = [str(p) for p in paths]
    pool = DecodePool(workers)
    try:
        pool.submit(names[:BATCH], prep, DEFAULT_MAX_PIXELS).result()  # workers started, as in a run
        started = time.perf_counter()
        window = []
        for start in range(0, len(names), BATCH):
            window.append(pool.submit(names[start : start + BATCH], prep, DEFAULT_MAX_PIXELS))
            if len(window) >= ScoreOptions().prefetch_batches:
                window.pop(0).result()
        for future in window:
            future.result()
        return len(names) / (time.perf_counter() - started)
    finally:
        pool.close()


def onnxruntime_rate(scorer: Scorer, decoded: np.ndarray) -> float:
    """One session with onnxruntime's default threads, batch after batch: the engine's own settings."""
    started = time.perf_counter()
    for start in range(0, len(decoded), BATCH):
        scorer.score(decoded[start : start + BATCH])
    return len(decoded) / (time.perf_counter() - started)


def onnxruntime_parallel_rate(bundle: Path, decoded: np.ndarray, callers: int) -> float:
    """`callers` single-threaded sessions scoring at once (onnxruntime releases the GIL): for small models
    this uses the cores better than one session's thread pool, so it is the machine's real inference
    capacity, and the honest number for the ceiling below."""
    scorers = [Scorer(bundle, intra_op_threads=1, spin=False) for _ in range(callers)]
    shares = np.array_split(np.arange(0, len(decoded), BATCH), callers)

    def run(scorer: Scorer, starts: np.ndarray) -> None:
        for start in starts:
            scorer.score(decoded[start : start + BATCH])

    threads = [threading.Thread(target=run, args=pair) for pair in zip(scorers, shares)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(decoded) / (time.perf_counter() - started)


def engine_rate(scorer: Scorer, paths: list[Path], out: Path) -> float:
    writer = RowWriter(out, "csv")
    try:
        summary = score_paths(scorer, paths, writer, ScoreOptions(batch_size=BATCH))
    finally:
        writer.close()
    assert summary.scored == len(paths), summary
    return summary.images_per_second


def peak_rss_mb(bundle: Path, list_file: Path, out: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-c", MAXRSS_PROBE, "score", str(bundle), "--from-list", str(list_file), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    line = next(entry for entry in done.stderr.splitlines() if entry.startswith("VMHWM_KB"))
    return int(line.split()[1]) / 1024


def fit_bundle(kind: str, directory: Path) -> Path:
    """A bundle of the given model kind fitted on MNIST digit 0 (1 epoch), through the public API."""
    from aeguard import Detector

    train = load_split("mnist", "train", None, allow_download=False)
    out = directory / kind
    Detector(model=kind, epochs=1, device="cpu").fit(train.images[train.labels == 0]).save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="aeguard-score-folder-"))
    paths = write_pngs(work / "pngs", args.images)
    workers = os.cpu_count() or 1
    decoded = np.stack([load_image(p, Preprocessing(1, 28, 28)) for p in paths])
    models = {}
    for kind in ("dense", "conv"):
        bundle = fit_bundle(kind, work)
        scorer = Scorer(bundle, spin=False)  # the session settings `aeguard score` uses
        rounds = {"a_decode": [], "b_onnxruntime": [], "b_onnxruntime_parallel": [], "c_engine": [], "steal": []}
        for _ in range(args.rounds):  # interleaved, so drift in machine speed hits all three alike
            with StealMeter() as steal:
                rounds["a_decode"].append(decode_rate(paths, workers))
                rounds["b_onnxruntime"].append(onnxruntime_rate(scorer, decoded))
                rounds["b_onnxruntime_parallel"].append(onnxruntime_parallel_rate(bundle, decoded, workers))
                rounds["c_engine"].append(engine_rate(scorer, paths, work / f"{kind}.csv"))
            rounds["steal"].append(steal.fraction)
        # best round of each: on a shared machine, slower rounds measure the neighbours, not the code
        a, b, c = (max(rounds[k]) for k in ("a_decode", "b_onnxruntime", "c_engine"))
        # The ceiling uses each stage's real capacity (the faster way of running onnxruntime): (a) and that
        # each fill every core, so an engine that shares the cores between them cannot pass
        # 1 / (1/a + 1/capacity) images per second, whatever it does.
        capacity = max(b, max(rounds["b_onnxruntime_parallel"]))
        ceiling = 1.0 / (1.0 / a + 1.0 / capacity)
        models[kind] = {
            "bundle": str(bundle),
            "a_decode_images_per_s": a,
            "b_onnxruntime_images_per_s": b,
            "b_onnxruntime_capacity_images_per_s": capacity,
            "c_engine_images_per_s": c,
            "ratio": c / min(a, b),
            "ceiling_ratio": ceiling / min(a, b),
            "share_of_ceiling": c / ceiling,
            "rounds": rounds,
        }
        print(f"{kind}: decode {a:,.0f}  onnxruntime {b:,.0f}  engine {c:,.0f} img/s  ratio {c / min(a, b):.2f}")

    memory = {}
    for count in (20_000, 200_000):
        listing = work / f"list-{count}.txt"
        listing.write_text("".join(f"{paths[i % len(paths)]}\n" for i in range(count)))
        memory[count] = peak_rss_mb(Path(models["conv"]["bundle"]), listing, work / f"mem-{count}.csv")
        print(f"peak RSS for {count:,} inputs: {memory[count]:.0f} MiB")

    lines = [
        "# Batch scoring: `aeguard score` against decoding and onnxruntime alone",
        "",
        f"{args.images:,} MNIST PNGs (28x28), batches of {BATCH}, {workers} decoding processes, "
        f"best of {args.rounds} interleaved rounds (every round is in the JSON), on a {workers}-core machine.",
        "",
        "| model | (a) decode only | (b) onnxruntime only | (c) engine end to end | (c) / min(a, b) (target >= 0.8) "
        "| onnxruntime capacity (b') | ceiling 1 / (1/a + 1/b'), over min(a, b) | (c) / ceiling "
        "| CPU steal per round |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, m in models.items():
        steal = ", ".join("n/a" if f is None else f"{f:.0%}" for f in m["rounds"]["steal"])
        lines.append(
            f"| {kind} | {m['a_decode_images_per_s']:,.0f} img/s | {m['b_onnxruntime_images_per_s']:,.0f} img/s "
            f"| {m['c_engine_images_per_s']:,.0f} img/s | **{m['ratio']:.2f}** "
            f"| {m['b_onnxruntime_capacity_images_per_s']:,.0f} img/s | {m['ceiling_ratio']:.2f} "
            f"| {m['share_of_ceiling']:.2f} | {steal} |"
        )
    lines += [
        "",
        "(b) runs one session with onnxruntime's default threads, as the engine does; (b') is the "
        f"better of that and {workers} single-threaded sessions at once, the machine's real inference capacity. "
        "Decoding and inference each fill every core on their own, so an engine that shares the cores "
        "between them cannot pass 1 / (1/a + 1/b'): that ceiling, as a share of min(a, b), is the best "
        "ratio any engine could reach on this machine.",
    ]
    lines += [
        "",
        "Peak resident memory of `aeguard score --from-list` (conv model, CSV output):",
        "",
        "| inputs | peak RSS |",
        "| --- | --- |",
    ]
    lines += [f"| {count:,} | {mb:.0f} MiB |" for count, mb in memory.items()]
    lines += ["", "Regenerate: `AEGUARD_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.score_folder`"]
    path = write_results(
        "score_folder",
        {"images": args.images, "batch_size": BATCH, "workers": workers, "models": models, "peak_rss_mib": memory},
        "\n".join(lines) + "\n",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
