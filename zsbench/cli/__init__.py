"""The ``zsbench`` command line: a thin Typer layer over the library.

Each command group lives in its own module and only parses options, calls library functions
and prints with rich.
"""

from __future__ import annotations

import logging

import typer
from rich.logging import RichHandler

from zsbench import __version__
from zsbench.cli import (
    data,
    evidence,
    leaderboard,
    methods,
    predict,
    protocols,
    results,
    run,
    sweep,
)
from zsbench.cli.console import App

app = App(
    name="zsbench",
    help="Benchmark zero-shot anomaly detection methods on CLIP: datasets, methods, protocols, "
    "exact metrics and a static leaderboard.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(methods.app, name="methods")
app.add_typer(data.app, name="data")
app.add_typer(protocols.app, name="protocols")
app.add_typer(results.app, name="results")
app.add_typer(leaderboard.app, name="leaderboard")
run.register(app)
predict.register(app)
sweep.register(app)
evidence.register(app)
leaderboard.register_submit(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zsbench {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True,
                                help="More log output (-v info, -vv debug)."),
) -> None:
    """zsbench: zero-shot anomaly detection benchmark."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False)], force=True)


def main() -> None:
    app()
