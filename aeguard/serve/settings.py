"""Daemon settings. The CLI fills them from flags, each of which falls back to an AEGUARD_* variable."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from aeguard.errors import UsageError
from aeguard.scoring.providers import PROVIDER_NAMES

# Worker processes get their settings through this variable (uvicorn starts them from an import string).
SETTINGS_ENV = "AEGUARD_SERVE_SETTINGS_JSON"


@dataclass(frozen=True)
class ServeSettings:
    bundle: Path
    host: str = "127.0.0.1"
    port: int = 8080
    metrics_port: int | None = None  # serve /metrics on its own port as well
    model_name: str | None = None  # default: the bundle's name
    workers: int = 1
    max_batch_size: int = 64  # images per onnxruntime call when micro-batching
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for company; 0 disables batching
    intra_op_threads: int = 1  # onnxruntime threads per call; 0 = its default (all cores)
    inference_workers: int = 0  # onnxruntime calls in flight at once; 0 = one per core
    provider: str = "auto"  # onnxruntime execution provider: auto, cpu, cuda or tensorrt
    inline_max_ms: float = 1.0  # batches the model scores faster than this run on the event loop; 0 = never
    max_body_bytes: int = 16 * 1024 * 1024
    max_images_per_request: int = 256
    max_pixels: int = 16_000_000  # per decoded image
    request_timeout_s: float = 30.0  # scoring, and reading a request's body
    header_timeout_s: float = 10.0  # a connection must send a whole request head this soon; 0 disables
    api_token: str | None = None  # bearer token for the scoring endpoints
    admin_token: str | None = None  # bearer token for POST /admin/reload; unset disables the endpoint
    watch_interval_s: float = 2.0  # poll the bundle's manifest for changes; 0 disables
    drain_seconds: float = 0.0  # after SIGTERM, report not-ready this long before closing the listener
    graceful_timeout_s: float = 30.0  # longest wait for in-flight requests when shutting down
    log_level: str = "info"

    def __post_init__(self):
        positive = ("port", "workers", "max_batch_size", "max_body_bytes", "max_images_per_request", "max_pixels")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"serve setting {name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "max_wait_ms",
            "inline_max_ms",
            "watch_interval_s",
            "drain_seconds",
            "intra_op_threads",
            "inference_workers",
            "header_timeout_s",
        ):
            if getattr(self, name) < 0:
                raise UsageError(f"serve setting {name} must not be negative, got {getattr(self, name)}")
        if self.provider not in PROVIDER_NAMES:
            raise UsageError(
                f"serve setting provider must be one of {', '.join(PROVIDER_NAMES)}, got {self.provider!r}"
            )
        if self.request_timeout_s <= 0:
            raise UsageError("serve setting request_timeout_s must be positive")
        for name in ("api_token", "admin_token"):
            if getattr(self, name) == "":  # an empty AEGUARD_API_TOKEN would otherwise mean "no token" in silence
                raise UsageError(f"serve setting {name} is set but empty; unset it to run without one")

    @property
    def batching(self) -> bool:
        return self.max_wait_ms > 0 and self.max_batch_size > 1

    def to_env(self) -> str:
        values = dataclasses.asdict(self)
        values["bundle"] = str(self.bundle)
        return json.dumps(values)

    @classmethod
    def from_env(cls) -> ServeSettings:
        try:
            values = json.loads(os.environ[SETTINGS_ENV])
        except (KeyError, json.JSONDecodeError) as exc:
            raise UsageError(f"{SETTINGS_ENV} is missing or not JSON: {exc}") from None
        values["bundle"] = Path(values["bundle"])
        return cls(**values)
