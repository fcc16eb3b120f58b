"""What every command shares: turning aeguard errors into a message and an exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from aeguard.errors import AeguardError

F = TypeVar("F", bound=Callable)


EXIT_ENVIRONMENT = 1
EXIT_INTERRUPTED = 130


def reports_errors(command: F) -> F:
    """Print an error as one clear line on stderr and exit with its code, without a traceback.

    AeguardErrors carry their own code. An OSError that reaches here (a report folder that cannot be
    written, a disk that filled while saving weights) is the machine's, not the user's input: exit 1,
    with the file and the reason.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AeguardError as exc:
            print(f"aeguard: error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            print(f"aeguard: error: {exc.strerror or exc}{where}", file=sys.stderr)
            raise typer.Exit(EXIT_ENVIRONMENT) from None
        except KeyboardInterrupt:
            print("aeguard: interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


EXTRAS = {
    "sklearn": "report",
    "matplotlib": "report",
    "torch": "train",
    "onnx": "train",
    "pyarrow": "parquet",
    "ray": "ray",
}


def needs_extra(command: str, exc: ModuleNotFoundError) -> Exception:
    """An ImportError of an optional dependency as the install command that provides it."""
    from aeguard.errors import SetupError

    top = (exc.name or "").split(".")[0]
    if top not in EXTRAS:
        return exc
    return SetupError(
        f"aeguard {command} needs {top}, which the base install leaves out: pip install 'aeguard[{EXTRAS[top]}]'"
    )


def parse_int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    from aeguard.errors import UsageError

    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers such as 128,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} takes positive integers, got {text!r}")
    return tuple(values)
