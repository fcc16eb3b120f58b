"""Row writers for batch scoring: CSV or JSON Lines, flushed after every batch."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import IO

from aeguard.errors import UsageError

COLUMNS = ("path", "score", "threshold", "is_anomaly", "error")
FORMATS = ("csv", "jsonl")


def infer_format(output: Path | None, requested: str | None) -> str:
    if requested:
        if requested not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {requested!r}")
        return requested
    if output is not None and output.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "csv"


class RowWriter:
    """Writes score rows to a file or stdout; `flush` after each batch so a crash loses at most one batch."""

    def __init__(self, output: Path | None, fmt: str):
        self.format = fmt
        self._owns = output is not None
        self._handle: IO[str] = open(output, "w", newline="") if output is not None else sys.stdout
        self._csv = csv.writer(self._handle) if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(COLUMNS)

    def write(self, row: dict) -> None:
        if self._csv is not None:
            score = row["score"]
            self._csv.writerow([
                row["path"], "" if score is None else f"{score:.8g}", f"{row['threshold']:.8g}",
                "" if row["is_anomaly"] is None else str(row["is_anomaly"]).lower(), row["error"] or "",
            ])
        else:
            self._handle.write(json.dumps({key: row[key] for key in COLUMNS}) + "\n")

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self.flush()
        if self._owns:
            self._handle.close()
