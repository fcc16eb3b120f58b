"""Row writers for batch scoring: CSV, JSON Lines or Parquet, durable batch by batch, resumable.

CSV and JSON Lines are appended to and flushed (and fsynced) after every batch. Parquet cannot be
appended to, so its rows go to a JSON Lines spool beside the target (`<output>.partial.jsonl`)
and become the Parquet file when the run completes; a crash leaves the spool, which --resume
continues.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from aeguard.errors import OutputError, UsageError

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
    _check_parquet_output(fmt, output)
    return fmt


def _check_parquet_output(fmt: str, output: Path | None) -> None:
    if fmt == "parquet" and output is None:
        raise UsageError("Parquet output needs --output FILE")


def spool_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial.jsonl")


def path_text(name: str) -> str:
    """A path as the text rows hold: valid UTF-8 always, so CSV, JSON Lines and Parquet can store it.

    POSIX file names are bytes; Python reads the ones that are not UTF-8 with lone surrogates, which no
    UTF-8 writer accepts. Those bytes are written as \\xNN escapes instead, the same way on every run,
    so --resume recognises the row.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass
class ResumePoint:
    """What an earlier run left in the output: how many rows each path has, and the intact bytes to keep."""

    done: Counter = field(default_factory=Counter)
    keep_bytes: int = 0
    has_header: bool = False


def _intact_csv(data: bytes, output: Path) -> ResumePoint:
    """Parse the CSV record by record: a cut can fall inside a quoted path that holds a newline, so
    the last newline is not the end of the last whole row."""
    lines = data.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()  # a row cut off before its line ended
    point, offsets = ResumePoint(), [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    text = [line.decode("utf-8", "backslashreplace") for line in lines]
    reader = csv.reader(text, strict=True)
    consumed = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error:
            if reader.line_num < len(lines):  # bad quoting before the end: not a file cut short
                raise UsageError(f"{output} is damaged at line {reader.line_num}; remove it to score again") from None
            break  # the last record was cut inside a quoted field
        if not point.has_header:
            if tuple(row) != COLUMNS:
                raise UsageError(f"{output} is not an aeguard score CSV (first row {row[:5]})")
            point.has_header = True
        elif len(row) != len(COLUMNS):
            raise UsageError(f"{output} is damaged at line {reader.line_num}: a row of {len(row)} columns")
        else:
            point.done[row[0]] += 1
        consumed = reader.line_num
    point.keep_bytes = offsets[consumed]
    return point


def _intact_jsonl(data: bytes, output: Path) -> ResumePoint:
    point = ResumePoint(has_header=True)
    end = data.rfind(b"\n") + 1  # a crash can leave half a row after the last newline
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            point.done[json.loads(line)["path"]] += 1
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{output} is damaged at line {number}: not an aeguard score row") from None
    point.keep_bytes = end
    return point


def resume_point(output: Path, fmt: str) -> ResumePoint:
    """The rows an earlier run of the same command wrote (for --resume), and where its intact part ends."""
    if fmt == "parquet":
        if output.exists():
            raise UsageError(f"{output} is complete already; nothing to resume (remove it to score again)")
        target = spool_path(output)
    else:
        target = output
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        return ResumePoint()
    except OSError as exc:
        raise OutputError(f"cannot read {target} to resume it: {exc.strerror or exc}") from None
    return _intact_csv(data, output) if fmt == "csv" else _intact_jsonl(data, output)


class RowWriter:
    """Writes score rows to a file (continuing an earlier run's intact rows when resuming) or to stdout.

    Every failure to open or write the output (a folder, a missing parent, no permission, a full disk,
    a file-size limit) is an OutputError naming the file; the rows flushed before it stay intact.
    """

    def __init__(self, output: Path | None, fmt: str, resume: ResumePoint | None = None):
        self.format = fmt
        self.output = output
        _check_parquet_output(fmt, output)
        # Parquet is written at the end, from a JSON Lines spool: (spool, the Parquet file)
        self._parquet = (spool_path(output), output) if fmt == "parquet" and output is not None else None
        if self._parquet is not None:
            require_pyarrow()  # before any work, not after hours of scoring
        target = self._parquet[0] if self._parquet is not None else output
        self.target = target  # None: standard output, which is neither synced nor closed here
        if target is None:
            self._handle: IO[str] = sys.stdout
            header = True
        else:
            header = resume is None or not resume.has_header
            try:
                if resume is not None and resume.keep_bytes:
                    with open(target, "r+b") as handle:  # drop what a crash left after the last whole row
                        handle.truncate(resume.keep_bytes)
                    self._handle = open(target, "a", newline="", encoding="utf-8")
                else:
                    self._handle = open(target, "w", newline="", encoding="utf-8")
            except OSError as exc:
                raise OutputError(f"cannot write {target}: {_reason(exc)}") from None
        self._csv = csv.writer(self._handle) if fmt == "csv" else None
        if self._csv is not None and header:
            self._guarded(self._csv.writerow, COLUMNS)

    def _guarded(self, action, *args) -> None:
        try:
            action(*args)
        except OSError as exc:
            raise OutputError(
                f"cannot write {self.target or 'standard output'}: {_reason(exc)}; "
                "the rows written before this point are intact (--resume continues)"
            ) from None

    def write(self, row: dict) -> None:
        path, error = path_text(row["path"]), row["error"] and path_text(row["error"])
        if self._csv is not None:
            score = row["score"]
            self._guarded(
                self._csv.writerow,
                [
                    path,
                    "" if score is None else f"{score:.8g}",
                    f"{row['threshold']:.8g}",
                    "" if row["is_anomaly"] is None else str(row["is_anomaly"]).lower(),
                    error or "",
                ],
            )
        else:
            values = {**{key: row[key] for key in COLUMNS}, "path": path, "error": error}
            self._guarded(self._handle.write, json.dumps(values, allow_nan=False) + "\n")

    def flush(self) -> None:
        self._guarded(self._handle.flush)
        if self.target is not None:
            self._guarded(_fsync, self._handle)

    def close(self, complete: bool = True) -> None:
        """Close; a completed Parquet run turns its spool into the Parquet file."""
        try:
            self.flush()
        finally:
            if self.target is not None:
                try:
                    self._handle.close()
                except OSError:
                    pass  # the flush above already reported why
        if complete and self._parquet is not None:
            self._guarded(_spool_to_parquet, *self._parquet)


def _fsync(handle: IO[str]) -> None:
    try:
        os.fsync(handle.fileno())
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a pipe or device that cannot be synced; nothing is lost
            raise


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno == errno.EFBIG:
        return "the file-size limit is reached"
    if exc.errno == errno.EISDIR:
        return "it is a folder; name a file"
    if exc.errno == errno.ENOENT:
        return "its folder does not exist"
    return (exc.strerror or str(exc)).lower()


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UsageError("Parquet output needs pyarrow: pip install 'aeguard[parquet]'") from None


def _spool_to_parquet(spool: Path, output: Path) -> None:
    import pyarrow as pa
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("path", pa.string()),
            ("score", pa.float64()),
            ("threshold", pa.float64()),
            ("is_anomaly", pa.bool_()),
            ("error", pa.string()),
        ]
    )
    if spool.stat().st_size == 0:
        table = schema.empty_table()
    else:
        table = pa_json.read_json(spool, parse_options=pa_json.ParseOptions(explicit_schema=schema))
    partial = output.with_name(output.name + ".tmp")
    pq.write_table(table, partial)
    os.replace(partial, output)
    spool.unlink()
