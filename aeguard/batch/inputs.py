"""Where `aeguard score` gets its paths: arguments (files, folders, globs) and --from-list files or stdin.

Paths are streamed, never collected, so memory does not grow with the number of inputs.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from aeguard.data.images import iter_image_paths
from aeguard.errors import DataNotFoundError


def _list_entries(list_file: str) -> Iterator[Path]:
    handle = sys.stdin if list_file == "-" else None
    if handle is None:
        try:
            handle = open(list_file, encoding="utf-8")
        except OSError as exc:
            raise DataNotFoundError(f"--from-list {list_file}: {exc.strerror}") from None
    try:
        for line in handle:
            line = line.rstrip("\r\n")
            if line.strip():
                yield Path(line)
    finally:
        if handle is not sys.stdin:
            handle.close()


def iter_inputs(arguments: list[str], list_file: str | None = None) -> Iterator[Path]:
    """Every path to score, in a stable order: the arguments expanded, then the list's lines as given.

    A listed path is yielded even if it is missing, so it gets a row saying so.
    """
    if arguments:
        yield from iter_image_paths(arguments)
    if list_file is not None:
        yield from _list_entries(list_file)


class BackgroundCount:
    """Counts the inputs on a side thread so a progress bar can show an ETA once the count is known."""

    def __init__(self, arguments: list[str], list_file: str | None):
        self.total: int | None = None
        if list_file == "-":
            return  # stdin can be read once only
        self._thread = threading.Thread(target=self._count, args=(arguments, list_file), daemon=True)
        self._thread.start()

    def _count(self, arguments: list[str], list_file: str | None) -> None:
        try:
            self.total = sum(1 for _ in iter_inputs(arguments, list_file))
        except Exception:  # noqa: BLE001 - the count is only for the bar; scoring reports real errors
            self.total = None
