"""The `aeguard` console script: one typer app, one small module per command."""

from __future__ import annotations

import typer

from aeguard import __version__

from . import calibrate, dump_images, evaluate, fit, score, serve

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: ...]"; Rich markup would take those for tags and drop them
    help="Anomaly detection from autoencoder reconstruction error: fit, evaluate, calibrate, score, serve.",
)


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"aeguard {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Anomaly detection from autoencoder reconstruction error: fit, evaluate, calibrate, score, serve."""


app.command()(fit.fit)
app.command()(evaluate.evaluate)
app.command()(calibrate.calibrate)
app.command()(score.score)
app.command("dump-images")(dump_images.dump_images)
app.command()(serve.serve)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
