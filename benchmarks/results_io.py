"""Every benchmark writes benchmarks/results/<name>.json and <name>.md through this."""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import os

    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}


class StealMeter:
    """Share of CPU time the hypervisor took from this VM between start() and stop() (Linux /proc/stat).

    A shared cloud machine can lose much of its CPU to neighbours; every result records this so a
    reader can tell a slow run from slow code.
    """

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return (fields[7] if len(fields) > 7 else 0), sum(fields)

    def __enter__(self) -> StealMeter:
        self.start, self.fraction = self._read(), None
        return self

    def __exit__(self, *exc) -> None:
        end = self._read()
        if self.start and end and end[1] > self.start[1]:
            self.fraction = (end[0] - self.start[0]) / (end[1] - self.start[1])


def write_results(name: str, payload: dict, markdown: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(markdown)
    return RESULTS_DIR / f"{name}.md"


def current_commit() -> str | None:
    """The code a row measured (with a + when the tree had uncommitted changes)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "aeguard"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+" if dirty.stdout.strip() else "")
