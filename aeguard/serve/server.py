"""Run the daemon under uvicorn: one process, or several workers with shared Prometheus metrics."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading

import uvicorn
from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from uvicorn.supervisors import Multiprocess

from aeguard.serve.logs import configure_logging
from aeguard.serve.protocol import configure
from aeguard.serve.settings import SETTINGS_ENV, ServeSettings

log = logging.getLogger("aeguard.serve")


class DrainingServer(uvicorn.Server):
    """On SIGTERM: readiness false first, then (after drain_seconds) uvicorn's graceful shutdown."""

    def __init__(self, config: uvicorn.Config, begin_drain, drain_seconds: float):
        super().__init__(config)
        self._begin_drain = begin_drain
        self._drain_seconds = drain_seconds
        self._draining = False

    def handle_exit(self, sig, frame) -> None:
        if sig != signal.SIGTERM:
            super().handle_exit(sig, frame)  # SIGINT keeps uvicorn's behaviour (twice = force)
            return
        # SIGTERM is handled here in full, not recorded for uvicorn to re-raise after shutdown:
        # a completed drain is a clean exit, status 0.
        if self._draining:
            return
        self._draining = True
        self._begin_drain()
        threading.Timer(self._drain_seconds, self._close).start()

    def _close(self) -> None:
        self.should_exit = True


def _uvicorn_options(settings: ServeSettings) -> dict:
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
        "lifespan": "on",
        "limit_concurrency": None,
        "server_header": False,
    }


def warn_if_open(settings: ServeSettings) -> None:
    """Scoring without a token is fine on loopback; anywhere else it is worth a line in the log."""
    if settings.api_token is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "the scoring endpoints are open to anyone who reaches %s:%d: set AEGUARD_API_TOKEN to "
            "require a bearer token",
            settings.host,
            settings.port,
        )


def run(settings: ServeSettings) -> None:
    configure_logging(settings.log_level)
    warn_if_open(settings)
    if settings.workers == 1:
        from aeguard.serve.app import create_app

        app = create_app(settings)
        state = app.state.aeguard
        if settings.metrics_port:
            start_http_server(settings.metrics_port, addr=settings.host, registry=state.metrics.registry)
        config = configure(uvicorn.Config(app, **_uvicorn_options(settings)), settings.header_timeout_s)
        server = DrainingServer(config, state.begin_drain, settings.drain_seconds)
        server.run()
        return

    # Several workers: each writes its metrics to files in a shared folder, and every scrape
    # (of any worker's /metrics, or of --metrics-port here) adds them up.
    metrics_dir = tempfile.mkdtemp(prefix="aeguard-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[SETTINGS_ENV] = settings.to_env()
    try:
        if settings.metrics_port:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
        # uvicorn.run, with the guarded protocol configured: the Config travels to every worker process
        config = configure(
            uvicorn.Config(
                "aeguard.serve.app:create_app_from_env",
                factory=True,
                workers=settings.workers,
                **_uvicorn_options(settings),
            ),
            settings.header_timeout_s,
        )
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
