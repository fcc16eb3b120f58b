"""Every benchmark writes benchmarks/results/<name>.json and <name>.md through this."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import os

    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}


def write_results(name: str, payload: dict, markdown: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "run_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(markdown)
    return RESULTS_DIR / f"{name}.md"
