"""What every command shares: turning aeguard errors into a message and an exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from aeguard.errors import AeguardError

F = TypeVar("F", bound=Callable)


def reports_errors(command: F) -> F:
    """Print an AeguardError as one clear line on stderr and exit with its code, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AeguardError as exc:
            print(f"aeguard: error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def parse_int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    from aeguard.errors import UsageError

    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers such as 128,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} takes positive integers, got {text!r}")
    return values
