"""Where a single-image request's CPU goes inside the daemon, step by step, without HTTP.

serve_load measures the daemon over loopback; this explains its (c) figure. The daemon's ASGI app is
called in this process by 64 concurrent in-process clients, each sending the binary Open Inference
Protocol request serve_load sends (one 28x28 UINT8 image). CPU time per request (all threads) is
taken for five variants, interleaved within each round, best round kept:

  bare       the do-nothing endpoint of benchmarks/bare_app.py (Starlette's router, plain ASGI endpoint);
  handling   the daemon with scoring replaced by a stub that returns at once: parsing, checks, reply,
             metrics, request id; no batching, no inference;
  batching   plus the micro-batcher (futures, the request's suspension and wake-up, the batch's
             assembly and split), the batch "scored" by a stub;
  full       the real daemon: onnxruntime, on the event loop for batches this small (batching.py).

Each step's cost is the difference from the one before. The HTTP server's own cost (uvicorn: parsing,
the connection, the ASGI messages) is not in these figures: it is the same for every endpoint and sits
in serve_load's (d).

    python -m benchmarks.serve_breakdown [--model dense] [--rounds 5] [--requests 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import uvloop

import aeguard.serve.batching as batching
from aeguard.serve.app import create_app
from aeguard.serve.settings import ServeSettings
from benchmarks.bare_app import app as bare_app
from benchmarks.results_io import StealMeter, write_results
from benchmarks.serve_load import fit_bundle

CLIENTS = 64
VARIANTS = ("bare", "handling", "batching", "full")


def infer_request() -> tuple[bytes, list]:
    pixels = np.random.default_rng(0).integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1, 1, 28, 28],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": pixels.size},
                }
            ]
        }
    ).encode()
    body = header + pixels.tobytes()
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"inference-header-content-length", b"%d" % len(header)),
    ]
    return body, headers


class Stubbed:
    """Replaces parts of the batcher for one variant (and puts them back): the daemon's code is otherwise as shipped."""

    def __init__(self, variant: str):
        self.variant, self.saved = variant, {}

    def __enter__(self):
        scorer = batching.BatchingScorer
        self.saved = {name: getattr(scorer, name) for name in ("score", "_infer")}
        if self.variant == "handling":

            async def score(self, images):
                return [0.0] * len(images), self.store.current

            scorer.score = score
        if self.variant == "batching":
            scorer._infer = lambda self, model, parts: np.zeros(sum(map(len, parts)), np.float32)
        return self

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            setattr(batching.BatchingScorer, name, value)


async def drive(app, path: str, body: bytes, headers: list, requests_per_client: int) -> float:
    """CPU seconds per request with CLIENTS clients sending requests_per_client requests each."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
    }

    async def one() -> None:
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        status = []

        async def send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope, app=app), receive, send)
        if status != [200]:
            raise RuntimeError(f"request failed with {status}")

    async def client(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*[client(10) for _ in range(CLIENTS)])  # warm-up
    started = time.process_time()
    await asyncio.gather(*[client(requests_per_client) for _ in range(CLIENTS)])
    return (time.process_time() - started) / (CLIENTS * requests_per_client)


async def with_lifespan(app, work):
    """Runs the app's startup (the model loads), then work(), then its shutdown."""
    inbox, outbox = asyncio.Queue(), asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"daemon failed to start: {started}")
    try:
        return await work()
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await task


def run(coroutine):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the daemon's loop under uvicorn
        return runner.run(coroutine)


def measure(bundle: Path, rounds: int, requests_per_client: int) -> dict:
    settings = ServeSettings(bundle=bundle, watch_interval_s=0, log_level="warning")
    body, headers = infer_request()
    path = f"/v2/models/{bundle.name}/infer"
    runs = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            if variant == "bare":
                app = bare_app
                seconds = run(drive(app, path, body, headers, requests_per_client))
            else:
                with Stubbed(variant):
                    app = create_app(settings)
                    seconds = run(
                        with_lifespan(app, lambda app=app: drive(app, path, body, headers, requests_per_client))
                    )
            runs[variant].append(seconds * 1e6)
    return {
        variant: {"best_us": min(values), "rounds_us": [round(v, 2) for v in values]}
        for variant, values in runs.items()
    }


def render_markdown(model: str, results: dict, steal: float | None) -> str:
    labels = {
        "bare": "do-nothing endpoint (router + plain ASGI endpoint)",
        "handling": "+ the daemon's request handling (parse, checks, reply, metrics, request id)",
        "batching": "+ the micro-batcher (futures, suspension and wake-up, the batch's assembly and split)",
        "full": "+ onnxruntime inference (the real daemon)",
    }
    lines = [
        "# Where a single-image request's CPU goes (in process, no HTTP)",
        "",
        f"Model: {model}, fitted for 2 epochs on MNIST digit 0. {CLIENTS} concurrent in-process clients send the "
        "binary Open Inference Protocol request of serve_load's (c); CPU time of all threads per request, best of "
        f"{len(results['bare']['rounds_us'])} interleaved rounds. CPU steal during the run: "
        f"{'n/a' if steal is None else format(steal, '.0%')}. The HTTP server's own cost (uvicorn) is not "
        "included: it is the same for every endpoint.",
        "",
        "| step | us per request | this step adds |",
        "| --- | --- | --- |",
    ]
    previous = None
    for variant in VARIANTS:
        value = results[variant]["best_us"]
        added = "" if previous is None else f"{value - previous:+.1f}"
        lines.append(f"| {labels[variant]} | {value:.1f} | {added} |")
        previous = value
    lines += ["", "Regenerate: `AEGUARD_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.serve_breakdown`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dense", help="model kind to fit for 2 epochs and serve")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100, help="requests per client per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aeguard-serve-breakdown-") as workdir:
        bundle = fit_bundle(args.model, Path(workdir))
        with StealMeter() as steal:
            results = measure(bundle, args.rounds, args.requests)
    text = render_markdown(args.model, results, steal.fraction)
    print(text, end="")
    print(
        write_results(
            "serve_breakdown",
            {"model": args.model, "clients": CLIENTS, "results": results, "cpu_steal": steal.fraction},
            text,
        )
    )


if __name__ == "__main__":
    main()
