"""Row writers for batch scoring: CSV, JSON Lines or Parquet, durable batch by batch, resumable.

CSV and JSON Lines are appended to and flushed (and fsynced) after every batch. Parquet cannot be
appended to, so its rows go to a JSON Lines spool beside the target (`<output>.partial.jsonl`)
and become the Parquet file when the run completes; a crash leaves the spool, which --resume
continues.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import IO

from aeguard.errors import UsageError

COLUMNS = ("path", "score", "threshold", "is_anomaly", "error")
FORMATS = ("csv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def infer_format(output: Path | None, requested: str | None) -> str:
    if requested:
        if requested not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {requested!r}")
        fmt = requested
    else:
        fmt = _SUFFIXES.get(output.suffix.lower(), "csv") if output is not None else "csv"
    if fmt == "parquet" and output is None:
        raise UsageError("Parquet output needs --output FILE")
    return fmt


def spool_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial.jsonl")


def _complete_lines(path: Path) -> bytes:
    """The file's bytes up to its last newline: a crash can leave half a row at the end."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def done_paths(output: Path, fmt: str) -> set[str]:
    """Paths already written by an earlier run of the same command (for --resume)."""
    if fmt == "parquet":
        if output.exists():
            raise UsageError(f"{output} is complete already; nothing to resume (remove it to score again)")
        target = spool_path(output)
    else:
        target = output
    if not target.exists():
        return set()
    text = _complete_lines(target).decode("utf-8")
    if fmt == "csv":
        rows = csv.DictReader(io.StringIO(text))
        if rows.fieldnames is not None and tuple(rows.fieldnames) != COLUMNS:
            raise UsageError(f"{output} is not an aeguard score CSV (columns {rows.fieldnames})")
        return {row["path"] for row in rows}
    return {json.loads(line)["path"] for line in text.splitlines() if line.strip()}


class RowWriter:
    """Writes score rows to a file (appending when resuming) or to stdout."""

    def __init__(self, output: Path | None, fmt: str, resume: bool = False):
        self.format = fmt
        self.output = output
        if fmt == "parquet":
            require_pyarrow()  # before any work, not after hours of scoring
        target = spool_path(output) if fmt == "parquet" else output
        self._owns = target is not None
        if target is None:
            self._handle: IO[str] = sys.stdout
            fresh = True
        else:
            fresh = not (resume and target.exists() and target.stat().st_size > 0)
            if not fresh:
                # drop a half-written last row left by a crash before appending
                complete = _complete_lines(target)
                with open(target, "r+b") as handle:
                    handle.truncate(len(complete))
            self._handle = open(target, "w" if fresh else "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._handle) if fmt == "csv" else None
        if self._csv is not None and fresh:
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
        if self._owns:
            os.fsync(self._handle.fileno())

    def close(self, complete: bool = True) -> None:
        """Close; a completed Parquet run turns its spool into the Parquet file."""
        self.flush()
        if self._owns:
            self._handle.close()
        if complete and self.format == "parquet":
            _spool_to_parquet(spool_path(self.output), self.output)


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UsageError("Parquet output needs pyarrow: pip install 'aeguard[parquet]'") from None


def _spool_to_parquet(spool: Path, output: Path) -> None:
    import pyarrow as pa
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("score", pa.float64()), ("threshold", pa.float64()),
                        ("is_anomaly", pa.bool_()), ("error", pa.string())])
    if spool.stat().st_size == 0:
        table = schema.empty_table()
    else:
        table = pa_json.read_json(spool, parse_options=pa_json.ParseOptions(explicit_schema=schema))
    partial = output.with_name(output.name + ".tmp")
    pq.write_table(table, partial)
    os.replace(partial, output)
    spool.unlink()
