"""Daemon throughput and latency over loopback, against in-process onnxruntime and a do-nothing endpoint.

All in one run, on the same machine:
  (a) onnxruntime in-process, batches of 256 images;
  (b) the daemon, requests of 256 images (target >= 0.7 x a);
  (c) single-image requests from 64 concurrent clients, with and without micro-batching;
  (d) the same HTTP stack (Starlette on uvicorn) with an endpoint that does no work (target c >= 0.6 x d).
Load comes from wrk (Debian package `wrk`). Requests are Open Inference Protocol v2 infer calls.

    python -m benchmarks.serve_load [--bundle DIR] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from aeguard.data.catalog import load_split
from aeguard.data.splits import to_model_input
from aeguard.runtime import Scorer
from benchmarks.results_io import write_results
from tests.daemon import free_port

ROOT = Path(__file__).resolve().parents[1]


def raw_onnxruntime(bundle: Path, images: np.ndarray, seconds: float) -> float:
    scorer = Scorer(bundle)
    scorer.score(images)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        scorer.score(images)
        count += len(images)
    return count / (time.perf_counter() - started)


def start(command: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/v2/models/x/infer", content=b"{}", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{command} did not start")


def daemon(bundle: Path, port: int, *args: str) -> subprocess.Popen:
    return start([sys.executable, "-m", "aeguard.cli.main", "serve", str(bundle), "--port", str(port),
                  "--log-level", "warning", "--watch-interval", "0", *args], port)


def bare(port: int) -> subprocess.Popen:
    return start([sys.executable, "-m", "uvicorn", "benchmarks.bare_app:app", "--port", str(port),
                  "--log-level", "warning", "--no-access-log"], port)


def wrk(url: str, body: bytes, connections: int, seconds: float, workdir: Path) -> dict:
    body_path = workdir / f"body-{len(body)}.json"
    body_path.write_bytes(body)
    script = workdir / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f'wrk.body = io.open("{body_path}", "rb"):read("*a")\n')
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    def latency(p):
        value, unit = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": latency(50), "p99_ms": latency(99),
            "non_2xx": int(errors.group(1)) if errors else 0, "connections": connections}


def infer_body(pixels: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "images", "shape": [len(pixels), 1, 28, 28], "datatype": "UINT8",
                                   "data": pixels.ravel().tolist()}]}).encode()


def fit_bundle(kind: str, directory: Path) -> Path:
    from aeguard.train.fit import FitOptions, fit
    from aeguard.train.loop import TrainConfig

    out = directory / kind
    fit(FitOptions(out=out, model=kind, train=TrainConfig(epochs=2, device="cpu")), log=lambda line: None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle to serve [default: fit a conv model for 2 epochs]")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("serve_load needs wrk: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="aeguard-serve-load-"))
    bundle = args.bundle or fit_bundle("conv", workdir)
    name = json.loads((bundle / "manifest.json").read_text())["name"]
    pixels = load_split("mnist", "test").images
    results: dict = {"bundle": str(bundle), "model": json.loads((bundle / "manifest.json").read_text())["model"]}

    results["a_onnxruntime_images_per_s"] = raw_onnxruntime(bundle, to_model_input(pixels[:256]), args.seconds)
    port = free_port()
    path = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
    single, batch = infer_body(pixels[:1]), infer_body(pixels[:256])

    process = bare(port)
    try:
        results["d_bare_single"] = wrk(path.replace(name, "x"), single, 64, args.seconds, workdir)
    finally:
        process.terminate(), process.wait()
    for label, extra in (("c_batched_single", ()), ("c_unbatched_single", ("--max-wait-ms", "0"))):
        process = daemon(bundle, port, *extra)
        try:
            results[label] = wrk(path, single, 64, args.seconds, workdir)
            if label == "c_batched_single":
                results["b_daemon_batch256"] = wrk(path, batch, 2, args.seconds, workdir)
        finally:
            process.terminate(), process.wait()

    a = results["a_onnxruntime_images_per_s"]
    b = results["b_daemon_batch256"]["requests_per_s"] * 256
    d = results["d_bare_single"]["requests_per_s"]
    results["ratios"] = {
        "b_over_a": b / a,
        "c_batched_over_d": results["c_batched_single"]["requests_per_s"] / d,
        "c_unbatched_over_d": results["c_unbatched_single"]["requests_per_s"] / d,
    }
    rows = [("(a) onnxruntime in-process, batch 256", f"{a:,.0f} img/s", "", ""),
            ("(b) daemon, 256-image requests, 2 clients", f"{b:,.0f} img/s",
             f"{results['b_daemon_batch256']['p50_ms']:.1f}", f"{results['b_daemon_batch256']['p99_ms']:.1f}")]
    for key, text in (("c_batched_single", "(c) daemon, 1-image requests, 64 clients, micro-batching"),
                      ("c_unbatched_single", "(c) daemon, 1-image requests, 64 clients, no batching"),
                      ("d_bare_single", "(d) same stack, endpoint doing no work, 64 clients")):
        r = results[key]
        rows.append((text, f"{r['requests_per_s']:,.0f} req/s", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"))
    r = results["ratios"]
    lines = ["# Daemon load: aeguard serve over loopback", "",
             f"Model: {results['model']['kind']} autoencoder, 28x28. Load from wrk (1 thread) on the same "
             f"{__import__('os').cpu_count()}-core machine, {args.seconds:.0f} s per scenario; requests are "
             "Open Inference Protocol v2 infer calls with UINT8 tensors; daemon log level warning.", "",
             "| scenario | throughput | p50 ms | p99 ms |", "| --- | --- | --- | --- |"]
    lines += [f"| {a_} | {b_} | {c_} | {d_} |" for a_, b_, c_, d_ in rows]
    lines += ["", f"- (b) / (a) = **{r['b_over_a']:.2f}** (target >= 0.7)",
              f"- (c) micro-batching / (d) = **{r['c_batched_over_d']:.2f}** (target >= 0.6); "
              f"without micro-batching: {r['c_unbatched_over_d']:.2f}", "",
              "Regenerate: `AEGUARD_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.serve_load`"]
    path_md = write_results("serve_load", results, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path_md}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
