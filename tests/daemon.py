"""Start the real `aeguard serve` process on a free loopback port, for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daemon:
    def __init__(self, bundle: Path, *args: str, env: dict | None = None, log_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "aeguard.cli.main",
            "serve",
            str(bundle),
            "--port",
            str(self.port),
            "--watch-interval",
            "0.2",
            "--log-level",
            "warning",
            *args,
        ]
        self.log_path = log_path
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=self._log, stderr=self._log)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        self.wait_until(lambda: self.client.get("/v2/health/ready").status_code == 200, "daemon did not become ready")

    def wait_until(self, condition, message: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}: {self.log()}")
            try:
                if condition():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{message}: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def metric(self, name: str, **labels) -> float:
        """Value of one sample in /metrics; labels must match exactly the ones given (others ignored)."""
        total = None
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            series_name, _, label_text = series.partition("{")
            if series_name != name:
                continue
            found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part)
            found = {k: v.strip('"') for k, v in found.items()}
            if all(found.get(k) == str(v) for k, v in labels.items()):
                total = (total or 0.0) + float(value)
        if total is None:
            raise AssertionError(f"no sample {name}{labels} in /metrics")
        return total

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.client.close()
        if self.log_path:
            self._log.close()
        return code

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.client.close()
