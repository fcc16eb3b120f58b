"""`aeguard serve`: the scoring daemon (onnxruntime, no torch). Every flag falls back to an AEGUARD_* variable."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import typer

from aeguard.serve.settings import ServeSettings

from .common import reports_errors

DEFAULTS = {field.name: field.default for field in dataclasses.fields(ServeSettings)}  # stated once, there


def _as_given(value: str | None, variable: str) -> str | None:
    return "" if value is None and os.environ.get(variable) == "" else value


@reports_errors
def serve(
    bundle: Path = typer.Argument(..., envvar="AEGUARD_BUNDLE", help="Bundle folder to serve."),
    host: str = typer.Option(DEFAULTS["host"], envvar="AEGUARD_HOST"),
    port: int = typer.Option(DEFAULTS["port"], envvar="AEGUARD_PORT"),
    metrics_port: int | None = typer.Option(
        DEFAULTS["metrics_port"], envvar="AEGUARD_METRICS_PORT", help="Also serve /metrics on this port."
    ),
    model_name: str | None = typer.Option(
        DEFAULTS["model_name"], envvar="AEGUARD_MODEL_NAME", help="Name in the API [default: the bundle's]."
    ),
    workers: int = typer.Option(
        DEFAULTS["workers"], envvar="AEGUARD_WORKERS", help="Worker processes; metrics are summed across them."
    ),
    max_batch_size: int = typer.Option(
        DEFAULTS["max_batch_size"],
        envvar="AEGUARD_MAX_BATCH_SIZE",
        help="Images per onnxruntime call when micro-batching.",
    ),
    max_wait_ms: float = typer.Option(
        DEFAULTS["max_wait_ms"],
        envvar="AEGUARD_MAX_WAIT_MS",
        help="Longest wait for a batch to fill; 0 turns micro-batching off.",
    ),
    threads: int = typer.Option(
        DEFAULTS["intra_op_threads"],
        envvar="AEGUARD_THREADS",
        help="onnxruntime threads per call (0: its default, all cores).",
    ),
    inference_workers: int = typer.Option(
        DEFAULTS["inference_workers"],
        envvar="AEGUARD_INFERENCE_WORKERS",
        help="onnxruntime calls in flight at once (0: one per core).",
    ),
    provider: str = typer.Option(
        DEFAULTS["provider"],
        envvar="AEGUARD_PROVIDER",
        help="onnxruntime execution provider: auto (CUDA when onnxruntime offers it), cpu, cuda or tensorrt.",
    ),
    inline_max_ms: float = typer.Option(
        DEFAULTS["inline_max_ms"],
        envvar="AEGUARD_INLINE_MAX_MS",
        help="Batches the model scores in under this many ms run on the event loop instead of a thread (0: never).",
    ),
    max_body_bytes: int = typer.Option(DEFAULTS["max_body_bytes"], envvar="AEGUARD_MAX_BODY_BYTES"),
    max_images: int = typer.Option(
        DEFAULTS["max_images_per_request"], envvar="AEGUARD_MAX_IMAGES", help="Images per request."
    ),
    max_pixels: int = typer.Option(
        DEFAULTS["max_pixels"], envvar="AEGUARD_MAX_PIXELS", help="Pixels per decoded image."
    ),
    request_timeout: float = typer.Option(
        DEFAULTS["request_timeout_s"],
        envvar="AEGUARD_REQUEST_TIMEOUT",
        help="Seconds before a scoring request fails with 504 (or a body still arriving with 408).",
    ),
    header_timeout: float = typer.Option(
        DEFAULTS["header_timeout_s"],
        envvar="AEGUARD_HEADER_TIMEOUT",
        help="Seconds a connection has to send a whole request head, after connecting or after its last response "
        "(0: no limit).",
    ),
    api_token: str | None = typer.Option(
        DEFAULTS["api_token"], envvar="AEGUARD_API_TOKEN", help="Bearer token the scoring endpoints require."
    ),
    admin_token: str | None = typer.Option(
        DEFAULTS["admin_token"],
        envvar="AEGUARD_ADMIN_TOKEN",
        help="Bearer token for POST /admin/reload (unset: disabled).",
    ),
    watch_interval: float = typer.Option(
        DEFAULTS["watch_interval_s"],
        envvar="AEGUARD_WATCH_INTERVAL",
        help="Seconds between checks of the bundle on disk; 0 disables.",
    ),
    drain_seconds: float = typer.Option(
        DEFAULTS["drain_seconds"],
        envvar="AEGUARD_DRAIN_SECONDS",
        help="After SIGTERM, stay up not-ready this long before closing.",
    ),
    graceful_timeout: float = typer.Option(
        DEFAULTS["graceful_timeout_s"],
        envvar="AEGUARD_GRACEFUL_TIMEOUT",
        help="Longest wait for in-flight requests at shutdown.",
    ),
    log_level: str = typer.Option(DEFAULTS["log_level"], envvar="AEGUARD_LOG_LEVEL"),
) -> None:
    """Serve a bundle over HTTP: /v1/score, Open Inference Protocol v2, /metrics. Reloads on SIGHUP or bundle change."""
    from aeguard.serve.model_store import load_model
    from aeguard.serve.server import run

    # Click reads an empty variable as unset; an operator who exported AEGUARD_API_TOKEN="" meant a token
    api_token = _as_given(api_token, "AEGUARD_API_TOKEN")
    admin_token = _as_given(admin_token, "AEGUARD_ADMIN_TOKEN")
    settings = ServeSettings(
        bundle=bundle,
        host=host,
        port=port,
        metrics_port=metrics_port,
        model_name=model_name,
        workers=workers,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        intra_op_threads=threads,
        inference_workers=inference_workers,
        provider=provider,
        inline_max_ms=inline_max_ms,
        max_body_bytes=max_body_bytes,
        max_images_per_request=max_images,
        max_pixels=max_pixels,
        request_timeout_s=request_timeout,
        header_timeout_s=header_timeout,
        api_token=api_token,
        admin_token=admin_token,
        watch_interval_s=watch_interval,
        drain_seconds=drain_seconds,
        graceful_timeout_s=graceful_timeout,
        log_level=log_level,
    )
    load_model(bundle, model_name, threads, provider)  # fail fast, with a clear message, on a bad bundle
    run(settings)
